"""The node pool without the network: placement, claims, health transitions, forms, pages."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections
from django.test import Client
from django.urls import reverse

from nodes.discovery import TargetError, expand
from nodes.models import Capability, Lease, Node, Requirements, place, place_and_claim

COMFY_INVENTORY = {
    "classes": ["EmptyImage", "SaveImage", "KSampler"],
    "files": {"checkpoints": ["sdxl.safetensors"]},
}


def node(name: str, *, ollama: dict | None = None, comfyui: dict | None = None, enabled: bool = True) -> Node:
    n = Node.objects.create(name=name, host=f"{name}.lab", enabled=enabled)
    for kind, spec in ((Capability.OLLAMA, ollama), (Capability.COMFYUI, comfyui)):
        if spec is not None:
            spec = {"status": Capability.ONLINE, **spec}
            Capability.objects.create(node=n, kind=kind, port=Capability.DEFAULT_PORTS[kind], **spec)
    return n


def ollama_inventory(*models: str, loaded: tuple[str, ...] = ()) -> dict:
    return {"models": [{"name": m} for m in models], "loaded": list(loaded)}


@pytest.mark.django_db
def test_placement_only_offers_nodes_that_have_what_is_required() -> None:
    node("a", ollama={"inventory": ollama_inventory("llama3.2:3b")})
    node("b", ollama={"inventory": ollama_inventory("qwen2.5:7b")})
    node("c", ollama={"inventory": ollama_inventory("qwen2.5:7b"), "status": Capability.OFFLINE})
    node("d", ollama={"inventory": ollama_inventory("qwen2.5:7b")}, enabled=False)
    node("e", comfyui={"inventory": COMFY_INVENTORY})

    best = place(Capability.OLLAMA, Requirements(model="qwen2.5:7b"))
    assert best is not None and best.node.name == "b"
    assert place(Capability.OLLAMA, Requirements(model="mistral")) is None
    assert place(Capability.COMFYUI, Requirements(classes=("KSampler",), files=(("checkpoints", "sdxl.safetensors"),)))
    assert place(Capability.COMFYUI, Requirements(classes=("NoSuchNode",))) is None
    assert place(Capability.COMFYUI, Requirements(files=(("loras", "x.safetensors"),))) is None


@pytest.mark.django_db
def test_placement_prefers_the_story_node_then_a_loaded_model_then_the_least_loaded_then_the_fastest() -> None:
    inv = ollama_inventory("m")
    slow = node("slow", ollama={"inventory": inv, "latency": 80, "limit": 2})
    fast = node("fast", ollama={"inventory": inv, "latency": 10, "limit": 2})
    loaded = node("loaded", ollama={"inventory": ollama_inventory("m", loaded=("m",)), "latency": 90, "limit": 2})
    need = Requirements(model="m")

    assert place(Capability.OLLAMA, need, story_node=slow.pk).node == slow
    assert place(Capability.OLLAMA, need).node == loaded
    assert place(Capability.OLLAMA, Requirements()).node == fast  # no model asked: fastest of the idle
    fast.ollama.claim("job-1")
    assert place(Capability.OLLAMA, Requirements()).node == slow  # fast is half full now
    assert loaded.ollama.claim("job-2") and loaded.ollama.claim("job-3")
    assert place(Capability.OLLAMA, need).node == slow  # loaded is full


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_overbook_a_node() -> None:
    cap = node("gpu", comfyui={"inventory": COMFY_INVENTORY, "limit": 2}).comfyui
    assert cap is not None
    got: list[Lease | None] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        try:
            start.wait()
            got.append(place_and_claim(Capability.COMFYUI, f"job-{i}"))
        finally:
            close_old_connections()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 8
    assert len([lease for lease in got if lease]) == 2
    assert Lease.objects.filter(capability=cap).count() == 2


@pytest.mark.django_db
def test_a_capability_goes_offline_after_repeated_failures_and_back_when_it_answers() -> None:
    cap = node("box", ollama={}).ollama
    assert cap is not None
    assert cap.record_check(False, error="connection refused") is False  # one blip: still online
    assert (cap.status, cap.last_error) == (Capability.ONLINE, "connection refused")
    cap.record_check(False, error="connection refused")
    assert cap.record_check(False, error="connection refused") is True
    assert cap.status == Capability.OFFLINE
    assert cap.record_check(True, ms=12, version="0.6.0") is True
    assert (cap.status, cap.last_error, cap.failures, cap.version) == (Capability.ONLINE, "", 0, "0.6.0")
    assert cap.record_check(False, slow=True, error="no answer in time") is True
    assert cap.status == Capability.LOADING  # slow while a model loads is not offline


@pytest.mark.django_db
def test_busy_is_derived_from_leases() -> None:
    cap = node("box", comfyui={"limit": 1}).comfyui
    assert cap is not None and cap.display_status == "online"
    lease = cap.claim("render-1")
    assert lease and cap.display_status == "busy"
    assert cap.claim("render-2") is None
    lease.release()
    assert cap.display_status == "online"


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        ("", "Name at least one"),
        ("10.0.0.0/8", "at most a /16"),
        ("192.168.1.0/33", "not an address range"),
        ("bad_host!", "neither an address nor a host name"),
    ],
)
def test_bad_discovery_targets_are_refused_with_a_reason(targets: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        expand(targets)


def test_targets_expand_to_hosts_once_each() -> None:
    assert expand("127.0.0.1, 127.0.0.1 gpu-box.local 192.168.1.0/30") == [
        "127.0.0.1",
        "gpu-box.local",
        "192.168.1.1",
        "192.168.1.2",
    ]
    assert len(expand("172.16.0.0/16")) == 65534


@pytest.mark.django_db
def test_adding_a_node_checks_its_input_and_makes_nothing_when_wrong(logged_in: Client) -> None:
    url = reverse("nodes:add")
    for data, says in (
        ({"name": "x", "host": "10.0.0.0/24", "ollama_port": 11434}, "not a range"),
        ({"name": "x", "host": "gpu", "ollama_port": 70000}, "less than or equal to 65535"),
        ({"name": "x", "host": "gpu"}, "Give the Ollama port, the ComfyUI port or both"),
    ):
        answer = logged_in.post(url, {"ollama_limit": 1, "comfyui_limit": 1, **data})
        assert answer.status_code == 200
        assert says in answer.content.decode()
    assert not Node.objects.exists() and not Capability.objects.exists()

    ok = logged_in.post(
        url, {"name": "gpu", "host": "GPU.lab", "comfyui_port": 8188, "ollama_limit": 1, "comfyui_limit": 2}
    )
    assert ok.status_code == 302
    gpu = Node.objects.get()
    assert (gpu.host, gpu.ollama, gpu.comfyui.limit) == ("gpu.lab", None, 2)
    again = logged_in.post(
        url, {"name": "gpu", "host": "gpu.lab", "comfyui_port": 8188, "ollama_limit": 1, "comfyui_limit": 1}
    )
    assert "already exists" in again.content.decode()
    assert Node.objects.count() == 1


@pytest.mark.django_db
def test_a_node_with_work_running_is_not_removed(logged_in: Client) -> None:
    gpu = node("gpu", comfyui={})
    lease = gpu.comfyui.claim("render-1")
    answer = logged_in.get(reverse("nodes:remove", args=[gpu.code]))
    assert "1 job running on it" in answer.content.decode()
    logged_in.post(reverse("nodes:remove", args=[gpu.code]))
    assert Node.objects.filter(pk=gpu.pk).exists()
    lease.release()
    logged_in.post(reverse("nodes:remove", args=[gpu.code]))
    assert not Node.objects.filter(pk=gpu.pk).exists()


@pytest.mark.django_db
def test_the_nodes_page_shows_both_capabilities_with_a_constant_number_of_queries(
    logged_in: Client, django_assert_max_num_queries: object
) -> None:
    node(
        "a",
        ollama={"inventory": ollama_inventory("llama3.2:3b")},
        comfyui={"inventory": COMFY_INVENTORY, "last_error": "<b>x</b>"},
    )
    logged_in.get(reverse("nodes:index"))  # warm the session
    with django_assert_max_num_queries(12) as few:  # type: ignore[operator]
        html = logged_in.get(reverse("nodes:index")).content.decode()
    for i in range(30):
        node(f"n{i}", ollama={}, comfyui={})
    with django_assert_max_num_queries(len(few.captured_queries)):  # type: ignore[operator]
        logged_in.get(reverse("nodes:index"))
    assert "llama3.2:3b" in html and "3 node classes" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html


@pytest.mark.django_db
def test_an_empty_pool_says_how_to_add_machines(logged_in: Client) -> None:
    assert "No machines yet" in logged_in.get(reverse("nodes:index")).content.decode()
    assert "No machines yet" in logged_in.get(reverse("dashboard")).content.decode()
