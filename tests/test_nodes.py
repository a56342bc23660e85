"""The node pool without the network: placement, claims, health transitions, forms, pages."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import close_old_connections, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from nodes.discovery import TargetError, expand
from nodes.models import Capability, Discovery, Node, Requirements, place, place_and_claim
from renders.models import RenderJob
from spoonfeeder import relay
from spoonfeeder.dashboard import broker
from spoonfeeder.models import Event
from tests.conftest import communicator, holding, session_for

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
    holding(fast.ollama)
    assert place(Capability.OLLAMA, Requirements()).node == slow  # fast is half full now
    holding(loaded.ollama), holding(loaded.ollama)
    assert place(Capability.OLLAMA, need).node == slow  # loaded is full


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_overbook_a_node() -> None:
    cap = node("gpu", comfyui={"inventory": COMFY_INVENTORY, "limit": 2}).comfyui
    assert cap is not None
    jobs = [holding(cap) for _ in range(8)]
    RenderJob.objects.update(status=RenderJob.QUEUED, capability=None)
    got: list[Capability | None] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        def take(c: Capability) -> bool:
            rows = RenderJob.objects.filter(pk=jobs[i].pk, status=RenderJob.QUEUED)
            return bool(rows.update(status=RenderJob.ASSIGNED, capability=c))

        try:
            start.wait()
            got.append(place_and_claim(Capability.COMFYUI, take))
        finally:
            close_old_connections()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 8
    assert len([c for c in got if c]) == 2
    assert cap.holders() == 2 == RenderJob.objects.filter(status=RenderJob.ASSIGNED, capability=cap).count()


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
def test_busy_is_derived_from_the_rows_that_hold_a_node() -> None:
    cap = node("box", comfyui={"limit": 1}).comfyui
    assert cap is not None and cap.display_status == "online"
    job = holding(cap)
    assert cap.display_status == "busy"
    with cap.room() as free:
        assert not free
    job.release()
    assert cap.display_status == "online"
    with cap.room() as free:
        assert free


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
    job = holding(gpu.comfyui)
    answer = logged_in.get(reverse("nodes:remove", args=[gpu.code]))
    assert "1 job running on it" in answer.content.decode()
    logged_in.post(reverse("nodes:remove", args=[gpu.code]))
    assert Node.objects.filter(pk=gpu.pk).exists()
    job.release()
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


@pytest.mark.django_db
def test_discover_from_the_page_queues_a_run_or_says_what_is_wrong(
    logged_in: Client, django_capture_on_commit_callbacks: Any
) -> None:
    broker().purge_queue()
    bad = logged_in.post(
        reverse("nodes:discover"), {"targets": "10.0.0.0/8", "ollama_port": 11434, "comfyui_port": 8188}
    )
    assert bad.status_code == 400 and "at most a /16" in bad.content.decode()
    assert not Discovery.objects.exists() and broker().queue_size() == 0

    with django_capture_on_commit_callbacks(execute=True):
        ok = logged_in.post(
            reverse("nodes:discover"),
            {"targets": "127.0.0.1 127.0.0.2", "ollama_port": 11434, "comfyui_port": 8188},
            follow=True,
        )
    assert "Discovering 2 address(es)" in ok.content.decode()
    assert Discovery.objects.get().targets == "127.0.0.1 127.0.0.2"
    assert broker().queue_size() == 1
    broker().purge_queue()


def test_a_finished_discovery_says_which_hosts_were_new_and_which_were_in_the_pool(logged_in: Client) -> None:
    Discovery.objects.create(
        targets="127.0.0.1-3",
        finished=timezone.now(),
        probed=3,
        found=[
            {"host": "127.0.0.1", "node": "127.0.0.1", "new": True, "ollama": "0.12.6", "comfyui": "", "error": ""},
            {"host": "127.0.0.2", "node": "big gpu", "new": False, "ollama": "", "comfyui": "0.3.64", "error": ""},
            {"host": "127.0.0.3", "error": "HTTP 502 from a proxy"},
        ],
    )
    html = logged_in.get(reverse("nodes:index")).content.decode()
    assert '<div id="discoveries">\n    <h3>Discoveries</h3>' in html  # the runs under their own heading
    assert "probed 3: 1 new: 127.0.0.1; 1 already in the pool: big gpu" in html
    assert "127.0.0.1: Ollama 0.12.6 (new)" in html
    assert "127.0.0.2: ComfyUI 0.3.64 (already in the pool as big gpu)" in html


@pytest.mark.django_db
def test_htmx_buttons_answer_with_a_message_and_change_the_rows(
    logged_in: Client, django_capture_on_commit_callbacks: Any
) -> None:
    from renders.management.commands.load_templates import load

    load()
    broker().purge_queue()
    gpu = node("gpu", comfyui={})
    htmx = {"HX-Request": "true"}
    answer = logged_in.post(reverse("nodes:toggle", args=[gpu.code]), headers=htmx)
    assert (
        'id="messages" hx-swap-oob="true"' in answer.content.decode() and "gpu is disabled" in answer.content.decode()
    )
    gpu.refresh_from_db()
    assert not gpu.enabled
    with django_capture_on_commit_callbacks(execute=True):
        logged_in.post(reverse("nodes:check", args=[gpu.code]), headers=htmx)
        answer = logged_in.post(reverse("renders:test-render", args=[gpu.code]), headers=htmx)
    assert "Test render queued on gpu" in answer.content.decode()
    test = RenderJob.objects.get(pin=gpu, target="test")  # an ordinary render job, on that node alone
    assert (test.status, test.template.name, test.priority) == ("queued", "test-still-image", 1000)
    # The check, and the cluster told to feed the pool (a sweeper with it: none runs here).
    assert broker().queue_size() == 3
    assert Event.objects.filter(topic="nodes").exists()
    broker().purge_queue()


@pytest.mark.django_db
def test_editing_a_node_changes_its_services(logged_in: Client) -> None:
    gpu = node("gpu", comfyui={})
    logged_in.post(
        reverse("nodes:edit", args=[gpu.code]),
        {
            "name": "gpu-1",
            "host": "gpu.lab",
            "enabled": "on",
            "ollama_port": 11500,
            "ollama_limit": 2,
            "comfyui_limit": 1,
        },
    )
    gpu.refresh_from_db()
    assert gpu.name == "gpu-1"
    assert [(c.kind, c.port, c.limit) for c in gpu.capabilities.all()] == [("ollama", 11500, 2)]


@pytest.mark.django_db
def test_admin_actions_and_refused_removal(admin_client: Client) -> None:
    gpu = node("gpu", comfyui={})
    url = reverse("admin:nodes_node_changelist")
    admin_client.post(url, {"action": "disable", "_selected_action": [gpu.pk]})
    gpu.refresh_from_db()
    assert not gpu.enabled
    assert gpu.comfyui is not None
    holding(gpu.comfyui)
    answer = admin_client.post(url, {"action": "remove", "_selected_action": [gpu.pk]}, follow=True)
    assert Node.objects.filter(pk=gpu.pk).exists()
    assert "was not removed: 1 job running on it" in answer.content.decode()


@pytest.mark.django_db(transaction=True)
async def test_a_status_change_reaches_the_nodes_page_live(user: User) -> None:
    from asgiref.sync import sync_to_async

    gpu = await sync_to_async(node)("gpu", comfyui={"status": Capability.UNKNOWN})
    ws = communicator(await sync_to_async(session_for)(user), topics="nodes")
    assert (await ws.connect())[0]
    snapshot = await ws.receive_from(timeout=10)
    assert f'id="node-{gpu.code}"' in snapshot and "unknown" in snapshot

    def went_online() -> None:
        cap = Capability.objects.get(node=gpu)
        with transaction.atomic():
            cap.record_check(True, ms=5, version="0.3.64")
            gpu.changed()

    await sync_to_async(went_online)()
    while True:
        html = await ws.receive_from(timeout=10)
        if 'class="status online"' in html:
            break
    await ws.disconnect()
    await relay.stop()
