"""The ComfyUI client against the simulated ComfyUI, over real HTTP and WebSockets, checked against
what ../shared/comfyui/PROTOCOL.md says a real server does."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from nodes.clients import ServiceError
from nodes.clients.comfyui import (
    FINISHED,
    GONE,
    QUEUED,
    RUNNING,
    ComfyUI,
    Events,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionSuccess,
    HistoryEntry,
    Message,
    Preview,
    Progress,
    Status,
    Text,
    WorkflowRejected,
    failure,
    outputs_of,
    parse_binary,
    parse_text,
    succeeded,
)
from nodes.sim.comfyui import SimComfyUI
from tests.conftest import ended

WORKFLOWS = Path(__file__).resolve().parents[2] / "shared" / "comfyui" / "workflows"
if not WORKFLOWS.is_dir():
    WORKFLOWS = Path("/work/shared/comfyui/workflows")


def workflow(name: str, **changes: Any) -> dict[str, Any]:
    """A workflow from the shared folder; changes like {"1.color": 5} set one input."""
    wf: dict[str, Any] = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for key, value in changes.items():
        node, name_ = key.split(".")
        wf[node]["inputs"][name_] = value
    return wf


def new_id() -> str:
    return uuid.uuid4().hex


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


def raw(sim: SimComfyUI, method: str, path: str, **kwargs: Any) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.request(method, sim.url + path, timeout=5, **kwargs)


def collect(ev: Events, until: Callable[[Message], bool], timeout: float = 10) -> list[Message]:
    """Messages up to and including the first that `until` accepts, within a deadline."""
    deadline = time.monotonic() + timeout
    seen: list[Message] = []
    while time.monotonic() < deadline:
        message = ev.receive(deadline - time.monotonic())
        if message is None:
            continue
        seen.append(message)
        if until(message):
            return seen
    raise AssertionError(f"timed out; saw {[m.type for m in seen]}")


def drain(ev: Events, quiet: float = 0.3) -> list[Message]:
    """Everything that arrives until the socket stays quiet for `quiet` seconds."""
    seen = []
    while (message := ev.receive(quiet)) is not None:
        seen.append(message)
    return seen


def done(prompt_id: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Executing) and m.node is None and m.prompt_id == prompt_id


def eventually(check: Callable[[], Any], timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
    return result


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimComfyUI]:
    # These tests read the protocol's messages and the history right after a run: no lag behind
    # execution_success here (the lag has tests of its own, which set it).
    with SimComfyUI(
        root=tmp_path / "sim", seconds_per_node=0.01, max_side=64, upscale_steps=5, history_lag=0.0
    ) as server:
        yield server


@pytest.fixture
def client(sim: SimComfyUI) -> ComfyUI:
    return ComfyUI(sim.url, timeout=5)


def run(client: ComfyUI, wf: dict[str, Any], timeout: float = 15) -> HistoryEntry:
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id, timeout=timeout) as ev:
        client.submit(wf, prompt_id=prompt_id, client_id=client_id)
        collect(ev, done(prompt_id), timeout)
    return ended(client, prompt_id, timeout)


# Every shared workflow, as PROTOCOL.md's table describes its outcome.

SUCCESSES = [
    ("still_image", ".png", False),
    ("still_image_slow", ".png", False),
    ("animated_webp", ".webp", True),
    ("animated_png", ".png", True),
    ("video_webm", ".webm", True),
    ("video_mp4", ".mp4", True),
    ("progress_upscale_random_model", ".png", False),
    ("load_uploaded_image", ".png", False),
]


def looks_like(data: bytes, suffix: str) -> bool:
    if suffix == ".png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if suffix == ".webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if suffix == ".mp4":
        return data[4:8] == b"ftyp"
    return data.startswith(b"\x1a\x45\xdf\xa3")  # EBML: webm


@pytest.mark.parametrize("name, suffix, animated", SUCCESSES)
def test_each_workflow_succeeds_with_a_file_that_can_be_viewed_and_downloaded(
    client: ComfyUI, tmp_path: Path, name: str, suffix: str, animated: bool
) -> None:
    if name == "load_uploaded_image":
        assert client.upload_image("peer_upload.png", png_bytes((200, 10, 10)))["name"] == "peer_upload.png"
    entry = run(client, workflow(name))
    assert succeeded(entry) and entry["status"]["completed"] is True
    (file,) = outputs_of(entry)
    assert file["subfolder"] == "peer" and file["type"] == "output"
    assert file["filename"].endswith(f"_00001_{suffix}")
    data = client.view(file["filename"], file["subfolder"])
    assert looks_like(data, suffix)
    saved = client.download(file["filename"], file["subfolder"], "output", tmp_path)
    assert saved == tmp_path / file["filename"] and saved.read_bytes() == data
    (output,) = entry["outputs"].values()
    assert output.get("animated") == ([True] if animated else None)
    if name == "animated_png":
        assert b"acTL" in data  # an APNG, not a still PNG
    if name == "load_uploaded_image":
        assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == (55, 245, 245)


def test_still_image_events_arrive_in_the_real_order(client: ComfyUI) -> None:
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        client.submit(workflow("still_image"), prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    kinds = [m.type for m in seen]
    assert isinstance(seen[0], Status) and seen[0].sid == client_id
    assert kinds.index("execution_start") < kinds.index("execution_cached") < kinds.index("executing")
    executing = [m.node for m in seen if isinstance(m, Executing)]
    assert executing == ["1", "2", None]
    (executed,) = [m for m in seen if isinstance(m, Executed)]
    assert executed.node == "2" and executed.output["images"][0]["filename"] == "still_00001_.png"
    # The classic "done" signal comes after execution_success and the status broadcast.
    success = kinds.index("execution_success")
    last_status = max(i for i, m in enumerate(seen) if isinstance(m, Status))
    assert success < last_status < len(seen) - 1
    final = seen[last_status]
    assert isinstance(final, Status) and final.queue_remaining == 0
    entry = client.history(prompt_id)
    assert entry is not None
    assert [kind for kind, _ in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["prompt"][3] == {"client_id": client_id}


def test_progress_ws_sends_progress_then_a_preview_per_frame(client: ComfyUI) -> None:
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        client.submit(workflow("progress_ws"), prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    steps = [(m, seen[i + 2]) for i, m in enumerate(seen) if isinstance(m, Progress)]
    assert [p.value for p, _ in steps] == list(range(16)) and {p.max for p, _ in steps} == {16}
    for _, preview in steps:
        assert isinstance(preview, Preview) and preview.image.startswith(b"\x89PNG")
        assert preview.metadata and preview.metadata["node_id"] == "3" and preview.prompt_id == prompt_id
    assert not [m for m in seen if isinstance(m, Executed)]  # SaveImageWebsocket sends none
    entry = client.history(prompt_id)
    assert entry is not None and succeeded(entry) and entry["outputs"] == {} and entry["meta"] == {}


def test_without_the_feature_flag_previews_come_as_plain_png_frames(client: ComfyUI, sim: SimComfyUI) -> None:
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id, metadata=False) as ev:
        client.submit(workflow("progress_ws", **{"1.batch_size": 2}), prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    previews = [m for m in seen if isinstance(m, Preview)]
    assert len(previews) == 2 and all(p.format == "image/png" and p.metadata is None for p in previews)
    assert not any(m.type == "feature_flags" for m in seen)


def test_binary_frames_are_parsed_by_type() -> None:
    meta = json.dumps({"node_id": "7", "prompt_id": "p", "image_type": "image/jpeg"}).encode()
    preview = parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"JPEGDATA", "ws")
    assert isinstance(preview, Preview) and preview.format == "image/jpeg" and preview.image == b"JPEGDATA"
    assert preview.prompt_id == "p"
    plain = parse_binary(struct.pack(">II", 1, 1) + b"\xff\xd8", "ws")
    assert isinstance(plain, Preview) and plain.format == "image/jpeg" and plain.image == b"\xff\xd8"
    text = parse_binary(struct.pack(">II", 3, 2) + b"12" + "héllo".encode(), "ws")
    assert isinstance(text, Text) and text.node == "12" and text.text == "héllo"
    with pytest.raises(ServiceError) as e:
        parse_binary(struct.pack(">II", 4, 99) + b"{}", "ws")
    assert e.value.permanent


# Validation, in the real shapes.


def test_a_rejected_workflow_says_which_node_is_wrong_and_why(client: ComfyUI) -> None:
    with pytest.raises(WorkflowRejected) as e:
        client.submit(workflow("validation_error"), prompt_id=new_id(), client_id="c")
    rejected = e.value
    assert rejected.permanent and rejected.status == 400
    assert rejected.error["type"] == "prompt_outputs_failed_validation"
    assert set(rejected.node_errors) == {"1", "2"}
    width = rejected.node_errors["1"]["errors"][0]
    assert width["type"] == "value_smaller_than_min" and width["extra_info"]["received_value"] == 0
    assert rejected.node_errors["1"]["dependent_outputs"] == ["2"]
    assert rejected.node_errors["2"]["errors"][0]["type"] == "required_input_missing"
    assert "node 1 (EmptyImage): Value 0 smaller than min of 1" in str(rejected)
    assert "node 2 (SaveImage): Required input is missing: filename_prefix" in str(rejected)
    assert client.queue().pending == [] and client.queue().running == []


@pytest.mark.parametrize(
    "name, kind",
    [
        ("validation_error_unknown_class", "invalid_prompt"),
        ("validation_error_no_outputs", "prompt_no_outputs"),
    ],
)
def test_unknown_classes_and_missing_outputs_are_rejected(client: ComfyUI, name: str, kind: str) -> None:
    with pytest.raises(WorkflowRejected) as e:
        client.submit(workflow(name), prompt_id=new_id(), client_id="c")
    assert e.value.error["type"] == kind and e.value.node_errors == {}
    if kind == "invalid_prompt":
        assert "NoSuchNode does not exist" in str(e.value)


def test_bad_bodies_get_the_real_answers(sim: SimComfyUI) -> None:
    missing = raw(sim, "POST", "/prompt", json={"client_id": "c"})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "no_prompt"
    garbled = raw(sim, "POST", "/prompt", data=b"{not json")
    assert garbled.status_code == 500 and garbled.headers["Content-Type"].startswith("text/plain")
    assert garbled.text.startswith("500 Internal Server Error")


def test_a_bad_combo_value_and_a_missing_upload_are_node_errors(client: ComfyUI) -> None:
    wf = workflow("still_image_slow", **{"4.upscale_method": "magic"})
    with pytest.raises(WorkflowRejected) as e:
        client.submit(wf, prompt_id=new_id(), client_id="c")
    assert e.value.node_errors["4"]["errors"][0]["type"] == "value_not_in_list"
    with pytest.raises(WorkflowRejected) as e:
        client.submit(workflow("load_uploaded_image"), prompt_id=new_id(), client_id="c")
    error = e.value.node_errors["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: peer_upload.png"


def test_partial_validation_queues_the_good_branch_and_reports_the_bad(client: ComfyUI) -> None:
    prompt_id = new_id()
    answer = client.submit(workflow("validation_partial"), prompt_id=prompt_id, client_id="c")
    assert answer["prompt_id"] == prompt_id
    assert answer["node_errors"]["3"]["class_type"] == "EmptyImage"
    assert answer["node_errors"]["3"]["dependent_outputs"] == ["4"]
    entry = ended(client, prompt_id, 10)
    assert succeeded(entry) and list(entry["outputs"]) == ["2"]
    assert entry["prompt"][4] == ["2"]


def test_an_execution_error_ends_the_run_with_the_exception(client: ComfyUI) -> None:
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        client.submit(workflow("exec_error"), prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    (error,) = [m for m in seen if isinstance(m, ExecutionError)]
    assert error.node == "3" and error.node_type == "ImageBlend" and error.exception_type == "RuntimeError"
    assert "size of tensor a (2) must match the size of tensor b (3)" in error.exception_message
    assert sorted(error.data["executed"]) == ["1", "2"]
    assert not [m for m in seen if isinstance(m, ExecutionSuccess)]
    entry = client.history(prompt_id)
    assert entry is not None and entry["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False and entry["outputs"] == {}
    assert (failure(entry) or {})["type"] == "execution_error"


# Who receives what.


def test_only_the_submitting_client_gets_run_events(client: ComfyUI) -> None:
    prompt_id = new_id()
    with client.events("client-a") as a, client.events("client-b") as b, client.events("") as anonymous:
        client.submit(workflow("still_image"), prompt_id=prompt_id, client_id="client-a")
        collect(a, done(prompt_id))
        for other in (b, anonymous):
            assert {m.type for m in drain(other)} <= {"status", "feature_flags"}


def test_without_client_id_only_progress_and_previews_are_broadcast(client: ComfyUI, sim: SimComfyUI) -> None:
    prompt_id = new_id()
    with client.events("watcher") as ev:
        body = {"prompt": workflow("progress_ws", **{"1.batch_size": 3}), "prompt_id": prompt_id}
        assert raw(sim, "POST", "/prompt", json=body).status_code == 200
        seen = collect(ev, lambda m: isinstance(m, Status) and m.queue_remaining == 0 and m.sid is None)
        seen += drain(ev)
    kinds = {m.type for m in seen}
    assert {"progress", "progress_state", "preview"} <= kinds
    assert not kinds & {"execution_start", "execution_cached", "executing", "executed", "execution_success"}
    # A waiter sees only the queue draining, and still gets the result.
    entry = ended(client, prompt_id, 5)
    assert succeeded(entry) and entry["prompt"][3] == {}


def test_a_client_id_nobody_listens_on_still_runs(client: ComfyUI) -> None:
    prompt_id = new_id()
    client.submit(workflow("still_image"), prompt_id=prompt_id, client_id="ghost-not-connected")
    assert succeeded(ended(client, prompt_id, 5))


def test_a_second_socket_with_the_same_client_id_goes_silent_when_the_first_closes(client: ComfyUI) -> None:
    first = client.events("twin")
    first.open()
    with client.events("twin") as second:
        assert isinstance(second.receive(2), Status)
        first.close()
        time.sleep(0.1)  # let the server run the old socket's cleanup before the prompt starts
        prompt_id = new_id()
        client.submit(workflow("still_image"), prompt_id=prompt_id, client_id="twin")
        assert succeeded(ended(client, prompt_id, 5))
        assert [m.type for m in drain(second)] in ([], ["feature_flags"])


def test_a_reconnecting_client_is_told_which_node_is_running(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.seconds_per_node = 0.4
    prompt_id = new_id()
    with client.events("again") as ev:
        client.submit(workflow("still_image"), prompt_id=prompt_id, client_id="again")
        collect(ev, lambda m: isinstance(m, Executing) and m.node == "1")
    with client.events("again") as ev:
        told = collect(ev, lambda m: isinstance(m, Executing))[-1]
        assert isinstance(told, Executing) and told.node in ("1", "2") and told.prompt_id is None
        collect(ev, done(prompt_id))


# Queue and history.


def test_history_is_empty_until_the_prompt_ends(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.seconds_per_node = 0.3
    prompt_id = new_id()
    client.submit(workflow("still_image"), prompt_id=prompt_id, client_id="c")
    eventually(lambda: client.queue().running)
    assert client.history(prompt_id) is None
    assert raw(sim, "GET", f"/history/{prompt_id}").json() == {}
    assert client.queue().position(prompt_id) == 0 and client.queue_remaining() == 1
    assert succeeded(ended(client, prompt_id, 5))
    assert prompt_id not in client.queue()


def test_where_a_prompt_stands_is_asked_of_the_node_and_a_late_history_entry_is_waited_for(
    client: ComfyUI, sim: SimComfyUI
) -> None:
    sim.knobs.seconds_per_node = 0.3
    first, second = new_id(), new_id()
    for prompt_id in (first, second):
        client.submit(workflow("still_image", **{"1.color": len(prompt_id)}), prompt_id=prompt_id, client_id="c")
    eventually(lambda: client.queue().running)
    assert client.standing(first).where == RUNNING and client.standing(second).where == QUEUED
    client.delete_queued([second])  # taken off the queue before it ran
    # The run ends; its history entry comes 3 s later: in neither /queue nor /history meanwhile.
    sim.knobs.history_lag = 3.0
    eventually(lambda: first not in client.queue())
    assert client.history(first) is None
    found = client.standing(first)
    assert found.where == FINISHED and found.entry is not None and succeeded(found.entry)
    assert client.standing(second, settle=1.5).where == GONE
    assert client.standing(new_id(), settle=0).where == GONE  # never sent


def test_the_queue_runs_by_number_and_front_jumps_it(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.seconds_per_node = 0.5
    ids = [new_id() for _ in range(4)]
    numbers = [client.submit(workflow("still_image"), prompt_id=i, client_id="c")["number"] for i in ids]
    assert numbers == [0, 1, 2, 3]
    eventually(lambda: client.queue().running)
    first = client.submit(workflow("still_image"), prompt_id="urgent", client_id="c", front=True)
    assert first["number"] == -4
    queue = client.queue()
    assert [item.prompt_id for item in queue.running] == [ids[0]]
    assert [item.prompt_id for item in queue.pending] == ["urgent", *ids[1:]]
    assert all(item.client_id == "c" for item in queue.pending)
    server_order = [item[0] for item in raw(sim, "GET", "/queue").json()["queue_pending"]]
    assert sorted(server_order) == [-4, 1, 2, 3] and server_order[0] == -4  # a heap, not sorted
    client.delete_queued([ids[2]])
    assert [item.prompt_id for item in client.queue().pending] == ["urgent", ids[1], ids[3]]
    client.clear_queue()
    queue = client.queue()
    assert queue.pending == [] and [item.prompt_id for item in queue.running] == [ids[0]]
    client.interrupt()
    assert client.history(ids[2]) is None
    eventually(lambda: client.history(ids[0]))


def test_a_reused_prompt_id_is_accepted_and_history_keeps_one_entry(client: ComfyUI, sim: SimComfyUI) -> None:
    client.submit(workflow("still_image"), prompt_id="my-own-id-0001", client_id="c")
    client.submit(workflow("still_image", **{"1.color": 1}), prompt_id="my-own-id-0001", client_id="c")
    eventually(lambda: client.queue_remaining() == 0)
    history = raw(sim, "GET", "/history").json()
    assert list(history) == ["my-own-id-0001"]
    assert history["my-own-id-0001"]["prompt"][0] == 1  # overwritten by the second run


def test_an_identical_prompt_is_answered_from_the_cache(client: ComfyUI) -> None:
    first = run(client, workflow("still_image"))
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        client.submit(workflow("still_image"), prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    (cached,) = [m for m in seen if isinstance(m, ExecutionCached)]
    assert sorted(cached.nodes) == ["1", "2"]
    assert [m.node for m in seen if isinstance(m, Executing)] == [None]
    (executed,) = [m for m in seen if isinstance(m, Executed)]
    assert executed.output == first["outputs"]["2"]


def test_a_node_shared_by_prompt_after_prompt_stays_cached(client: ComfyUI) -> None:
    """The cache is the last prompt's outputs, cached ones included: a node every prompt shares
    runs once, not every other time."""
    for prefix in ("a", "b", "c"):
        entry = run(client, workflow("still_image", **{"2.filename_prefix": prefix}))
    stamps = dict(entry["status"]["messages"])
    assert stamps["execution_cached"]["nodes"] == ["1"]


def test_history_can_be_deleted_and_cleared(client: ComfyUI) -> None:
    entries = [run(client, workflow("still_image", **{"1.color": c})) for c in (1, 2)]
    ids = [e["prompt"][1] for e in entries]
    client.delete_history([ids[0]])
    assert client.history(ids[0]) is None and client.history(ids[1]) is not None
    client.clear_history()
    assert client.history(ids[1]) is None


# Interrupt.


def test_interrupt_stops_the_run_at_the_next_progress_update(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.upscale_steps = 50
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        # Nodes other than the running one are left alone; an interrupt while idle does not leak.
        client.interrupt()
        sim.knobs.seconds_per_node = 0.5  # 10 ms per progress step of the upscale
        client.submit(workflow("progress_upscale_random_model"), prompt_id=prompt_id, client_id=client_id)
        collect(ev, lambda m: isinstance(m, Progress) and m.value >= 2)
        client.interrupt("not-this-one")
        collect(ev, lambda m: isinstance(m, Progress) and m.value >= 3)
        asked = time.monotonic()
        client.interrupt(prompt_id)
        seen = collect(ev, done(prompt_id))
    assert time.monotonic() - asked < 1.0
    (stopped,) = [m for m in seen if isinstance(m, ExecutionInterrupted)]
    assert stopped.node == "4" and stopped.node_type == "ImageUpscaleWithModel"
    assert sorted(stopped.executed) == ["1", "2", "3"]
    entry = client.history(prompt_id)
    assert entry is not None and entry["status"]["status_str"] == "error"
    assert (failure(entry) or {})["type"] == "execution_interrupted"


# Files.


def test_uploads_are_renamed_only_when_the_bytes_differ(client: ComfyUI) -> None:
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    assert client.upload_image("peer_upload.png", red)["name"] == "peer_upload.png"
    assert client.upload_image("peer_upload.png", red)["name"] == "peer_upload.png"
    assert client.upload_image("peer_upload.png", blue)["name"] == "peer_upload (1).png"
    assert client.upload_image("peer_upload.png", png_bytes((0, 9, 0)))["name"] == "peer_upload (2).png"
    assert client.upload_image("peer_upload.png", blue, overwrite=True)["name"] == "peer_upload.png"
    assert client.view("peer_upload.png", type="input") == blue
    sub = client.upload_image("peer_upload.png", red, subfolder="peersub")
    assert sub == {"name": "peer_upload.png", "subfolder": "peersub", "type": "input"}
    with pytest.raises(ServiceError):
        client.upload_image("../escape.png", red)


def test_view_refuses_traversal_and_remote_names_never_become_paths(
    client: ComfyUI, sim: SimComfyUI, tmp_path: Path
) -> None:
    assert raw(sim, "GET", "/view", params={"filename": "../x.png"}).status_code == 400
    missing = raw(sim, "GET", "/view", params={"filename": "nope.png"})
    assert missing.status_code == 404 and missing.content == b""
    with pytest.raises(ServiceError) as e:
        client.view("nope.png")
    assert e.value.status == 404
    dest = tmp_path / "downloads"
    dest.mkdir()
    for name in ("../x.png", "a/b.png", "..", "a\\b.png", ""):
        with pytest.raises(ServiceError) as e:
            client.download(name, "", "output", dest)
        assert e.value.permanent
    assert list(dest.iterdir()) == []


def test_view_serves_the_right_content_types(client: ComfyUI, sim: SimComfyUI) -> None:
    entry = run(client, workflow("animated_webp"))
    (file,) = outputs_of(entry)
    answer = raw(sim, "GET", "/view", params={**file})
    assert answer.headers["Content-Type"] == "image/webp"
    assert f'filename="{file["filename"]}"' in answer.headers["Content-Disposition"]
    assert "ETag" in answer.headers and "Last-Modified" in answer.headers


def test_outputs_count_up_per_prefix(client: ComfyUI) -> None:
    names = [outputs_of(run(client, workflow("still_image", **{"1.color": c})))[0]["filename"] for c in (1, 2)]
    assert names == ["still_00001_.png", "still_00002_.png"]


def test_a_download_larger_than_the_limit_leaves_no_file(client: ComfyUI, tmp_path: Path) -> None:
    (file,) = outputs_of(run(client, workflow("video_mp4")))
    dest = tmp_path / "downloads"
    dest.mkdir()
    with pytest.raises(ServiceError) as e:
        client.download(file["filename"], file["subfolder"], "output", dest / "v.mp4", limit=1000)
    assert e.value.permanent and "too large" in str(e.value)
    assert list(dest.iterdir()) == []


# Inventory.


def test_inventory_answers_in_the_real_shapes(client: ComfyUI, sim: SimComfyUI) -> None:
    stats = client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.64" and stats["devices"][0]["type"] == "cuda"
    sim.knobs.devices = [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 1, "vram_free": 1}]
    assert client.system_stats()["devices"][0]["name"] == "cpu"
    assert "checkpoints" in client.model_folders() and "upscale_models" in client.model_folders()
    assert client.models("upscale_models") == ["random_compact_x2.safetensors"]
    sim.knobs.models["checkpoints"] = ["mine.safetensors"]
    assert client.models("checkpoints") == ["mine.safetensors"]
    with pytest.raises(ServiceError) as e:
        client.models("no-such-folder")
    assert e.value.status == 404
    assert client.embeddings() == [] and client.features()["supports_preview_metadata"] is True
    info = client.object_info()
    needed = {n["class_type"] for f in WORKFLOWS.glob("*.json") for n in json.loads(f.read_text()).values()}
    assert needed - {"NoSuchNode"} <= set(info)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [["mine.safetensors"]]
    empty = client.object_info("EmptyImage")["EmptyImage"]
    assert empty["input_order"] == {"required": ["width", "height", "batch_size", "color"]}
    assert empty["input"]["required"]["width"] == ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}]
    assert info["ImageBlend"]["input"]["required"]["blend_mode"][0] == "COMBO"
    assert isinstance(info["ImageScale"]["input"]["required"]["crop"][0], list)
    assert client.object_info("NoSuchNode") == {}


def test_an_object_info_of_tens_of_megabytes_is_refused(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.bloat_mb = 20
    with pytest.raises(ServiceError) as e:
        client.object_info()
    assert e.value.permanent and "too large" in str(e.value)


def test_several_servers_run_at_once_on_their_own_addresses(tmp_path: Path) -> None:
    with SimComfyUI("127.0.0.2", root=tmp_path / "a") as a, SimComfyUI("127.0.0.3", root=tmp_path / "b") as b:
        a.knobs.models["checkpoints"] = ["a.safetensors"]
        assert ComfyUI(a.url).models("checkpoints") == ["a.safetensors"]
        assert ComfyUI(b.url).models("checkpoints") != ["a.safetensors"]
        assert a.url.startswith("http://127.0.0.2:") and b.url.startswith("http://127.0.0.3:")


# Faults.


def test_out_of_memory_is_an_execution_error_like_the_real_one(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.fail = "oom"
    entry = run(client, workflow("still_image_slow"))
    error = failure(entry)
    assert error is not None and error["type"] == "execution_error"
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("Allocation on device")


def test_a_dropped_websocket_is_a_retryable_error(client: ComfyUI, sim: SimComfyUI) -> None:
    with client.events("c", timeout=5) as ev:
        assert isinstance(next(ev), Status)
        sim.drop_websockets()
        with pytest.raises(ServiceError) as e:
            for _ in ev:
                pass
    assert not e.value.permanent


def test_a_stopped_server_refuses_and_comes_back_on_the_same_port(client: ComfyUI, sim: SimComfyUI) -> None:
    port = sim.port
    sim.stop()
    with pytest.raises(ServiceError) as e:
        client.system_stats()
    assert not e.value.permanent and "refused" in str(e.value)
    with pytest.raises(ServiceError) as e:
        client.events("c").open()
    assert not e.value.permanent
    sim.start()
    assert sim.port == port and client.system_stats()["system"]["comfyui_version"]


def test_a_hanging_server_times_out(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.hang = True
    started = time.monotonic()
    with pytest.raises(ServiceError) as e:
        client.system_stats(timeout=0.5)
    assert time.monotonic() - started < 3
    assert not e.value.permanent and "no answer in time" in str(e.value)


def test_garbage_answers_are_a_permanent_error(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.garbage = True
    with pytest.raises(ServiceError) as e:
        client.system_stats()
    assert e.value.permanent and "HTML" in str(e.value)
    with pytest.raises(ServiceError) as e:
        client.submit(workflow("still_image"), prompt_id=new_id(), client_id="c")
    assert e.value.permanent
    with pytest.raises(ServiceError) as e:
        client.events("c").open()
    assert e.value.permanent


def nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_answers_nested_hundreds_deep_are_a_permanent_error(client: ComfyUI, sim: SimComfyUI) -> None:
    # Walked later (repr, deepcopy, json.dumps into the database), they would raise RecursionError.
    sim.knobs.devices = [{"name": nested(700)}]
    with pytest.raises(ServiceError) as e:
        client.system_stats()
    assert e.value.permanent
    assert "/system_stats: answered JSON nested 703 levels deep, over the limit of 64" in str(e.value)
    # Another client's prompt in the queue, echoed back to everyone who asks.
    sim.knobs.seconds_per_node = 5
    client.submit(workflow("still_image"), prompt_id=new_id(), client_id="c", extra_data={"note": nested(700)})
    with pytest.raises(ServiceError) as e:
        client.queue()
    assert e.value.permanent and "/queue: answered JSON nested" in str(e.value)


def test_websocket_messages_nested_too_deeply_are_a_permanent_error() -> None:
    deep = "[" * 700 + "]" * 700
    with pytest.raises(ServiceError) as e:
        parse_text('{"type": "executed", "data": {"node": "9", "output": {"text": ' + deep + "}}}", "ws")
    assert e.value.permanent and "ws: the WebSocket sent JSON nested 703 levels deep, over the limit of 64" in str(
        e.value
    )
    with pytest.raises(ServiceError) as e:
        parse_text("[" * 5000 + "]" * 5000, "ws")  # deeper than json itself reads
    assert e.value.permanent and "nested too deeply to read" in str(e.value)
    meta = ('{"prompt_id": "p", "node_id": ' + deep + "}").encode()
    with pytest.raises(ServiceError) as e:
        parse_binary(struct.pack(">II", 4, len(meta)) + meta + b"PNG", "ws")
    assert e.value.permanent and "metadata is JSON nested 701 levels deep" in str(e.value)


def test_a_restart_forgets_queue_and_history(client: ComfyUI, sim: SimComfyUI) -> None:
    done_id = run(client, workflow("still_image"))["prompt"][1]
    sim.knobs.seconds_per_node = 5
    queued = new_id()
    client.submit(workflow("still_image", **{"1.color": 9}), prompt_id=queued, client_id="c")
    sim.knobs.seconds_per_node = 0.01
    sim.restart()
    assert client.history(done_id) is None and client.queue().pending == [] and client.queue().running == []
    # Neither queued nor finished: the node has forgotten it.
    eventually(lambda: client.standing(queued).where == GONE)
    # Files survive, and counting goes on from them.
    entry = run(client, workflow("still_image", **{"1.color": 3}))
    assert outputs_of(entry)[0]["filename"] == "still_00002_.png"


def test_the_first_prompt_after_a_start_waits_for_the_model_to_load(tmp_path: Path) -> None:
    with SimComfyUI(root=tmp_path, seconds_per_node=0.01, max_side=32, load_delay=0.6) as sim:
        client = ComfyUI(sim.url)
        times = []
        for color in (1, 2):
            started = time.monotonic()
            run(client, workflow("still_image", **{"1.color": color}))
            times.append(time.monotonic() - started)
    assert times[0] >= 0.6 > times[1]


def test_unknown_message_types_pass_through() -> None:
    message = parse_text('{"type": "crystools.monitor", "data": {"cpu": 3}}', "ws")
    assert type(message) is Message and message.type == "crystools.monitor" and message.data == {"cpu": 3}
    with pytest.raises(ServiceError) as e:
        parse_text("<html>", "ws")
    assert e.value.permanent


def test_a_checkpoint_workflow_reports_sampler_steps(client: ComfyUI, sim: SimComfyUI) -> None:
    sim.knobs.models["checkpoints"] = ["sd15.safetensors"]
    wf: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a spoon", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0], "seed": 1, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sd/spoon"}},
    }  # fmt: skip
    prompt_id, client_id = new_id(), new_id()
    with client.events(client_id) as ev:
        client.submit(wf, prompt_id=prompt_id, client_id=client_id)
        seen = collect(ev, done(prompt_id))
    assert [(m.node, m.value, m.max) for m in seen if isinstance(m, Progress)] == [("5", i, 4) for i in range(1, 5)]
    entry = client.history(prompt_id)
    assert entry is not None and outputs_of(entry)[0]["subfolder"] == "sd"
    wf["1"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(WorkflowRejected) as e:
        client.submit(wf, prompt_id=new_id(), client_id=client_id)
    assert e.value.node_errors["1"]["errors"][0]["type"] == "value_not_in_list"
    wf["1"]["inputs"]["ckpt_name"] = "sd15.safetensors"
    wf["6"]["inputs"]["vae"] = ["1", 1]  # a CLIP where a VAE belongs
    with pytest.raises(WorkflowRejected) as e:
        client.submit(wf, prompt_id=new_id(), client_id=client_id)
    assert e.value.node_errors["6"]["errors"][0]["type"] == "return_type_mismatch"
