"""The simulated ComfyUI's fault knobs, seen from a client's side over real HTTP and WebSockets:
what a real ComfyUI and hostile or slow nodes do (../shared/comfyui/PROTOCOL.md, "Surprises
worth testing against"), so that the engine's tests can reproduce it. Then what the render graph
needs of it: files loaded by annotated name, videos, RIFE, uploads counted, and the film's sounds
(music and speech) saved as ComfyUI's audio nodes save them."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
import requests
import websocket
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image

from nodes.sim.comfyui import SimComfyUI
from tests.conftest import wait_until
from tests.test_comfyui import png_bytes, workflow

HOST = "127.0.50.21"
MB = 1024 * 1024

Message = dict[str, Any]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimComfyUI]:
    with SimComfyUI(HOST, root=tmp_path / "sim", seconds_per_node=0.01, max_side=64) as server:
        yield server


def http(sim: SimComfyUI, method: str, path: str, **kwargs: Any) -> requests.Response:
    """Like requests.request (a session of its own, closed after), with no proxy from the
    environment."""
    with requests.Session() as s:
        s.trust_env = False
        return s.request(method, sim.url + path, **{"timeout": 5, **kwargs})


def submit(sim: SimComfyUI, wf: dict[str, Any], client_id: str | None = None) -> str:
    prompt_id = uuid.uuid4().hex
    body: dict[str, Any] = {"prompt": wf, "prompt_id": prompt_id}
    if client_id:
        body["client_id"] = client_id
    answer = http(sim, "POST", "/prompt", json=body)
    assert answer.status_code == 200, answer.text
    return prompt_id


def history(sim: SimComfyUI, prompt_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = http(sim, "GET", f"/history/{prompt_id}").json()
    return answer


def finished(sim: SimComfyUI, prompt_id: str, timeout: float = 10) -> dict[str, Any]:
    answer = wait_until(lambda: history(sim, prompt_id), timeout, f"{prompt_id} in /history")
    entry: dict[str, Any] = answer[prompt_id]
    return entry


def connect(sim: SimComfyUI, client_id: str) -> websocket.WebSocket:
    """A socket as a client opens it; its first message, the status with its sid, is read."""
    ws = websocket.create_connection(f"ws://{sim.host}:{sim.port}/ws?clientId={client_id}", timeout=5)
    first = json.loads(ws.recv())
    assert first["type"] == "status" and first["data"]["sid"] == client_id
    return ws


def receive(ws: websocket.WebSocket, until: Callable[[Message], bool], timeout: float = 5) -> list[Message]:
    """Text messages up to and including the first that `until` accepts; binary frames skipped."""
    deadline = time.monotonic() + timeout
    seen: list[Message] = []
    while True:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            raw = ws.recv()
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"timed out after {timeout:g} s; saw {[m['type'] for m in seen]}") from None
        if isinstance(raw, bytes):
            continue
        seen.append(json.loads(raw))
        if until(seen[-1]):
            return seen


def silent(ws: websocket.WebSocket, quiet: float = 0.5) -> bool:
    """Whether nothing arrives for `quiet` seconds (only after what would have been sent is known
    to have been sent, so the wait is for a message that is late, not one that is coming)."""
    ws.settimeout(quiet)
    try:
        ws.recv()
    except websocket.WebSocketTimeoutException:
        return True
    return False


def kind(name: str, prompt_id: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == name and m["data"].get("prompt_id") == prompt_id


def done(prompt_id: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id


# History lag (surprise 12).


def test_history_can_lag_behind_execution_success_while_the_next_prompt_starts(sim: SimComfyUI) -> None:
    sim.knobs.history_lag = 0.6
    ws = connect(sim, "lag")
    first = submit(sim, workflow("still_image", **{"1.color": 1}), "lag")
    second = submit(sim, workflow("still_image", **{"1.color": 2}), "lag")
    seen = receive(ws, kind("execution_success", first))
    succeeded = time.monotonic()
    assert history(sim, first) == {}
    queue = http(sim, "GET", "/queue").json()
    assert first not in json.dumps(queue) and first not in http(sim, "GET", "/history").json()
    seen += receive(ws, kind("execution_start", second))
    assert [m["type"] for m in seen].count("status") >= 1 and any(done(first)(m) for m in seen)
    assert history(sim, first) == {}  # neither queued nor in history, and the next one runs
    entry = finished(sim, first, timeout=3)
    assert time.monotonic() - succeeded >= 0.4
    assert entry["status"]["status_str"] == "success"
    ws.close()


# A client that stops reading (surprise 13).


def stall_a_client(sim: SimComfyUI) -> tuple[websocket.WebSocket, str]:
    """A socket that stopped reading while its SaveImageWebsocket run sent it 8 binary frames of
    about 1.5 MB (1024² PNGs), far more than the kernel buffers hold; its run still ends."""
    sim.knobs.max_side = 1024
    reader = connect(sim, "stops-reading")
    prompt_id = submit(sim, workflow("progress_ws", **{"1.batch_size": 8}), "stops-reading")
    finished(sim, prompt_id)
    return reader, prompt_id


def test_a_client_that_stops_reading_stalls_every_client_until_it_closes(sim: SimComfyUI) -> None:
    sim.knobs.stall_unread = True
    stalled, _ = stall_a_client(sim)
    other = connect(sim, "other")  # a socket's first status is sent by its own handler
    prompt_id = submit(sim, workflow("still_image"), "other")
    assert finished(sim, prompt_id)["status"]["status_str"] == "success"  # prompts still run
    assert silent(other)
    stalled.shutdown()  # closed without reading what it was sent
    seen = receive(other, done(prompt_id))
    assert any(kind("execution_success", prompt_id)(m) for m in seen)
    other.close()


def test_a_client_that_reads_again_releases_the_others(sim: SimComfyUI) -> None:
    sim.knobs.stall_unread = True
    stalled, stalled_id = stall_a_client(sim)
    other = connect(sim, "other")
    prompt_id = submit(sim, workflow("still_image"), "other")
    finished(sim, prompt_id)
    assert silent(other)
    receive(stalled, done(stalled_id))
    receive(other, done(prompt_id))
    stalled.close()
    other.close()


def test_a_stalled_client_does_not_keep_the_server_from_stopping(sim: SimComfyUI) -> None:
    sim.knobs.stall_unread = True
    stalled, _ = stall_a_client(sim)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 3
    stalled.settimeout(5)  # what the kernel holds for it arrives, then the end
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            stalled.recv()


def test_without_the_knob_a_client_that_stops_reading_stalls_nobody(sim: SimComfyUI) -> None:
    stalled, _ = stall_a_client(sim)
    other = connect(sim, "other")
    prompt_id = submit(sim, workflow("still_image"), "other")
    receive(other, done(prompt_id))
    stalled.shutdown()
    other.close()


# Down after a restart (surprise 15).


def test_a_restart_refuses_connections_for_a_while_then_answers_again(sim: SimComfyUI) -> None:
    sim.knobs.down_after_restart = 1.0
    prompt_id = submit(sim, workflow("still_image"), "c")
    finished(sim, prompt_id)
    port = sim.port
    started = time.monotonic()
    sim.restart()
    assert time.monotonic() - started < 0.8  # the caller does not wait for the node to come back
    with pytest.raises(requests.ConnectionError, match="refused"):
        http(sim, "GET", "/system_stats")
    with pytest.raises(ConnectionRefusedError):
        websocket.create_connection(f"ws://{sim.host}:{port}/ws?clientId=c", timeout=2)
    sim.wait_up(timeout=5)
    assert time.monotonic() - started >= 1.0
    assert sim.port == port and http(sim, "GET", "/system_stats").status_code == 200
    assert history(sim, prompt_id) == {}  # forgotten, as after any restart
    # Stopping while it is down cancels its coming back.
    sim.knobs.down_after_restart = 30
    sim.restart()
    started = time.monotonic()
    sim.close()
    assert time.monotonic() - started < 1
    with pytest.raises(TimeoutError):
        sim.wait_up(timeout=0.1)


# Slow answers.


def read_with_deadline(sim: SimComfyUI, path: str, deadline: float) -> tuple[int, int]:
    """(bytes read, Content-Length) of an answer read a byte at a time until a total deadline."""
    started = time.monotonic()
    with http(sim, "GET", path, stream=True, timeout=(2, 2)) as answer:
        length = int(answer.headers["Content-Length"])
        got = 0
        for chunk in answer.iter_content(1):
            got += len(chunk)
            if time.monotonic() - started > deadline:
                break
    return got, length


def test_a_trickling_answer_is_cut_only_by_the_clients_own_deadline(sim: SimComfyUI) -> None:
    sim.knobs.trickle = {"/system_stats": 0.05}
    assert http(sim, "GET", "/queue", timeout=1).json() == {"queue_running": [], "queue_pending": []}
    # A read timeout between bytes never fires; only the total deadline gives up.
    started = time.monotonic()
    got, length = read_with_deadline(sim, "/system_stats", 1.0)
    assert 1.0 <= time.monotonic() - started < 2
    assert 5 < got < length
    # A client that keeps reading keeps getting bytes, and the server still stops at once.
    progress: list[int] = []
    ended: list[BaseException] = []

    def keep_reading() -> None:
        try:
            with http(sim, "GET", "/system_stats", stream=True, timeout=(2, 5)) as answer:
                for chunk in answer.iter_content(1):
                    progress.append(len(chunk))
        except requests.RequestException as e:
            ended.append(e)

    reader = threading.Thread(target=keep_reading, daemon=True)
    reader.start()
    wait_until(lambda: len(progress) >= 5, 3, "a few bytes")
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2
    reader.join(timeout=5)
    assert not reader.is_alive() and ended and len(progress) < length


def test_views_and_history_can_trickle_too(sim: SimComfyUI) -> None:
    prompt_id = submit(sim, workflow("still_image"), "c")
    (image,) = finished(sim, prompt_id)["outputs"]["2"]["images"]
    sim.knobs.trickle = {"/view": 0.05, "/history": 0.05}
    got, length = read_with_deadline(sim, f"/view?filename={image['filename']}&subfolder=peer", 0.3)
    assert got < length == (sim.output_dir / "peer" / image["filename"]).stat().st_size
    got, length = read_with_deadline(sim, f"/history/{prompt_id}", 0.3)
    assert got < length


# Big answers and many or big files.


def test_history_answers_can_be_padded_to_many_megabytes(sim: SimComfyUI) -> None:
    ids = [submit(sim, workflow("still_image", **{"1.color": c}), "c") for c in (1, 2)]
    for prompt_id in ids:
        finished(sim, prompt_id)
    sim.knobs.history_padding_mb = 3
    one = http(sim, "GET", f"/history/{ids[0]}")
    assert 3 * MB <= len(one.content) < 3 * MB + 64 * 1024
    entry = one.json()[ids[0]]
    assert entry["status"]["status_str"] == "success" and entry["prompt"][3]["client_id"] == "c"
    everything = http(sim, "GET", "/history")
    assert 3 * MB <= len(everything.content) < 3 * MB + 64 * 1024 and set(everything.json()) == set(ids)
    sim.knobs.history_padding_mb = 0
    assert len(http(sim, "GET", "/history").content) < 64 * 1024  # what is stored stays small


def test_a_save_node_can_list_thousands_of_files(sim: SimComfyUI) -> None:
    sim.knobs.output_files = 5000
    prompt_id = submit(sim, workflow("still_image"), "c")
    images = finished(sim, prompt_id)["outputs"]["2"]["images"]
    assert len(images) == 5001
    assert images[0]["filename"] == "still_00001_.png" and images[-1]["filename"] == "still_05001_.png"
    first = http(sim, "GET", "/view", params=images[0]).content
    assert first.startswith(b"\x89PNG") and http(sim, "GET", "/view", params=images[-1]).content == first
    assert (sim.output_dir / "peer" / "still_00001_.png").stat().st_nlink == 5001  # links, not copies
    sim.knobs.output_files = 0
    again = finished(sim, submit(sim, workflow("still_image", **{"1.color": 7}), "c"))
    assert [i["filename"] for i in again["outputs"]["2"]["images"]] == ["still_05002_.png"]


def test_a_save_node_can_write_a_gibibyte_of_zeros(sim: SimComfyUI) -> None:
    sim.knobs.output_bytes = 1024 * MB
    prompt_id = submit(sim, workflow("still_image"), "c")
    (image,) = finished(sim, prompt_id)["outputs"]["2"]["images"]
    path = sim.output_dir / image["subfolder"] / image["filename"]
    assert path.stat().st_size == 1024 * MB and path.stat().st_blocks * 512 < MB  # sparse on disk
    with http(sim, "GET", "/view", params=image, stream=True) as answer:
        assert int(answer.headers["Content-Length"]) == 1024 * MB
        assert answer.raw.read(8) == b"\x89PNG\r\n\x1a\n"  # the image's own bytes, then zeros
    with path.open("rb") as f:
        f.seek(1024 * MB - 4096)
        assert f.read() == bytes(4096)


# Surprises 10 and 6, as PROTOCOL.md describes them.


def test_a_second_socket_with_the_same_client_id_goes_silent_when_the_first_closes(sim: SimComfyUI) -> None:
    older, newer, witness = connect(sim, "same"), connect(sim, "same"), connect(sim, "witness")
    prompt_id = submit(sim, workflow("still_image", **{"1.color": 1}), "same")
    seen = receive(newer, done(prompt_id))
    assert any(kind("execution_success", prompt_id)(m) for m in seen)
    receive(witness, lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0)
    assert silent(older, 0.2)  # replaced: not even the status broadcasts
    older.close()  # returns once the server answered the close
    prompt_id = submit(sim, workflow("still_image", **{"1.color": 2}), "same")
    finished(sim, prompt_id)
    receive(witness, lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0)
    assert silent(newer, 0.2)  # still open, but its clientId's entry went with the older one
    newer.close()
    witness.close()


def test_a_prompt_with_one_invalid_branch_is_accepted_and_runs_the_valid_one(sim: SimComfyUI) -> None:
    answer = http(sim, "POST", "/prompt", json={"prompt": workflow("validation_partial"), "client_id": "c"})
    assert answer.status_code == 200
    body = answer.json()
    errors = body["node_errors"]
    assert list(errors) == ["3"] and errors["3"]["dependent_outputs"] == ["4"]
    assert errors["3"]["class_type"] == "EmptyImage"
    assert errors["3"]["errors"][0]["type"] == "value_smaller_than_min"
    entry = finished(sim, body["prompt_id"])
    assert entry["status"]["status_str"] == "success" and entry["prompt"][4] == ["2"]
    assert list(entry["outputs"]) == ["2"]
    assert sorted(p.name for p in (sim.output_dir / "peer").iterdir()) == ["partial_00001_.png"]


# Loading files: uploads, annotated names ("x.png [output]") and videos.


def mp4(frames: int = 5, size: tuple[int, int] = (32, 16), fps: float = 12.5) -> bytes:
    """An h264 MP4 whose frames go from black to red."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(round(fps * 1000), 1000))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", size, (255 * i // max(frames - 1, 1), 0, 0))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode(None))
    return out.getvalue()


def probe(data: bytes) -> tuple[int, tuple[int, int], Fraction]:
    """Frames, size and frame rate of a video."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return len(frames), frames[0].size, Fraction(stream.average_rate or 0)


def upload(sim: SimComfyUI, name: str, data: bytes, **form: str) -> dict[str, Any]:
    answer = http(sim, "POST", "/upload/image", files={"image": (name, data)}, data=form)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def only_output(entry: dict[str, Any]) -> dict[str, Any]:
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    ((output,),) = [node["images"] for node in entry["outputs"].values()]
    return dict(output)


def view(sim: SimComfyUI, output: dict[str, Any]) -> bytes:
    answer = http(sim, "GET", "/view", params=output)
    assert answer.status_code == 200
    return answer.content


def rejected(sim: SimComfyUI, wf: dict[str, Any]) -> dict[str, Any]:
    answer = http(sim, "POST", "/prompt", json={"prompt": wf, "client_id": "c"})
    assert answer.status_code == 400, answer.text
    body: dict[str, Any] = answer.json()
    return body


def scaled(source: str, by: float = 2.0) -> dict[str, Any]:
    """LoadVideo → GetVideoComponents → ImageScaleBy → CreateVideo at the source's rate → SaveVideo."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": source}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "lanczos", "scale_by": by}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": ["2", 2]}},
        "5": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["4", 0], "filename_prefix": "peer/scaled", "format": "auto", "codec": "auto"},
        },
    }


def test_an_annotated_output_path_loads_what_an_earlier_prompt_saved(sim: SimComfyUI) -> None:
    still = only_output(finished(sim, submit(sim, workflow("still_image"), "c")))  # 0xFF8000, 64² here
    assert still == {"filename": "still_00001_.png", "subfolder": "peer", "type": "output"}
    inverted = workflow("load_uploaded_image", **{"1.image": "peer/still_00001_.png [output]"})
    made = only_output(finished(sim, submit(sim, inverted, "c")))
    with Image.open(io.BytesIO(view(sim, made))) as image:
        assert image.size == (64, 64) and image.convert("RGB").getpixel((5, 5)) == (0, 127, 255)
    assert sim.uploaded == []  # nothing went over the wire but the prompts


def test_a_name_that_leaves_its_folder_is_refused(sim: SimComfyUI) -> None:
    Image.new("RGB", (8, 8)).save(sim.root / "secret.png")  # beside the input and output folders
    (sim.root / "secret.mp4").write_bytes(mp4())
    outside = ("../secret.png", "../secret.png [output]", "peer/../../secret.png [temp]", str(sim.root / "secret.png"))
    for name in outside:
        body = rejected(sim, workflow("load_uploaded_image", **{"1.image": name}))
        assert body["node_errors"]["1"]["errors"][0]["details"] == f"image - Invalid image file: {name}"
    body = rejected(sim, scaled("../secret.mp4 [output]"))
    assert body["node_errors"]["1"]["errors"][0]["details"] == "file - Invalid video file: ../secret.mp4 [output]"


def test_a_missing_file_fails_validation_with_the_real_message(sim: SimComfyUI) -> None:
    body = rejected(sim, workflow("load_uploaded_image", **{"1.image": "peer/still_00009_.png [output]"}))
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["1"]["errors"]
    assert error["type"] == "custom_validation_failed" and error["message"] == "Custom validation failed for node"
    assert error["details"] == "image - Invalid image file: peer/still_00009_.png [output]"
    body = rejected(sim, scaled("nothing.mp4"))
    assert body["node_errors"]["1"]["class_type"] == "LoadVideo"
    assert body["node_errors"]["1"]["errors"][0]["details"] == "file - Invalid video file: nothing.mp4"


def test_a_video_scaled_by_two_keeps_its_frame_count_and_rate(sim: SimComfyUI) -> None:
    source = {"1.width": 32, "1.height": 16, "1.batch_size": 5, "3.fps": 12.5, "4.filename_prefix": "peer/source"}
    made = only_output(finished(sim, submit(sim, workflow("video_mp4", **source), "c")))
    assert probe(view(sim, made)) == (5, (32, 16), Fraction(25, 2))
    bigger = only_output(finished(sim, submit(sim, scaled("peer/source_00001_.mp4 [output]"), "c")))
    assert bigger["filename"].endswith(".mp4")
    assert probe(view(sim, bigger)) == (5, (64, 32), Fraction(25, 2))
    # Frames stay within the max_side knob, as made images do.
    capped = only_output(finished(sim, submit(sim, scaled("peer/source_00001_.mp4 [output]", 4.0), "c")))
    assert probe(view(sim, capped)) == (5, (64, 32), Fraction(25, 2))


def rife(source: list[Any], multiplier: int) -> dict[str, Any]:
    return {
        "class_type": "RIFE VFI",
        "inputs": {
            "ckpt_name": "rife47.pth",
            "frames": source,
            "clear_cache_after_n_frames": 10,
            "multiplier": multiplier,
            "fast_mode": True,
            "ensemble": True,
            "scale_factor": 1.0,
        },
    }


def test_rife_puts_in_betweens_after_every_frame_but_the_last(sim: SimComfyUI) -> None:
    upload(sim, "clip.mp4", mp4(frames=5, fps=16))
    interpolated = scaled("clip.mp4", 1.0)
    interpolated["3"] = rife(["2", 0], 2)
    interpolated["4"]["inputs"]["fps"] = 32.0
    made = only_output(finished(sim, submit(sim, interpolated, "c")))
    assert probe(view(sim, made)) == (9, (32, 16), Fraction(32))  # 2n - 1
    # The in-betweens go from one frame to the next: black, 1/4, 1/2, 3/4 of the way, white.
    ends = {
        str(i): {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": c}}
        for i, c in ((1, 0), (2, 0xFFFFFF))
    }
    stills = {
        **ends,
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": rife(["3", 0], 4),
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "peer/rife"}},
    }
    entry = finished(sim, submit(sim, stills, "c"))
    levels = []
    for output in entry["outputs"]["5"]["images"]:
        with Image.open(io.BytesIO(view(sim, output))) as image:
            levels.append(image.convert("L").getpixel((0, 0)))
    assert levels == [0, 63, 127, 191, 255]
    # It needs two frames at least, as the real one asserts.
    one = {**stills, "4": rife(["1", 0], 2)}
    entry = finished(sim, submit(sim, one, "c"))
    error = entry["status"]["messages"][-1][1]
    assert error["exception_type"] == "AssertionError" and "at least 2 frames" in error["exception_message"]


def test_a_node_without_the_frame_interpolation_custom_nodes_lacks_rife(sim: SimComfyUI) -> None:
    assert "RIFE VFI" in http(sim, "GET", "/object_info").json()
    ckpts = http(sim, "GET", "/object_info/RIFE VFI").json()["RIFE VFI"]["input"]["required"]["ckpt_name"]
    assert {"rife47.pth", "rife49.pth"} <= set(ckpts[0]) and ckpts[1] == {"default": "rife47.pth"}
    assert "rife47.pth" not in json.dumps(http(sim, "GET", "/models/checkpoints").json())  # no model folder
    sim.knobs.custom_nodes = []
    assert http(sim, "GET", "/object_info/RIFE VFI").json() == {}
    interpolated = scaled("clip.mp4")
    interpolated["3"] = rife(["2", 0], 2)
    body = rejected(sim, interpolated)
    assert body["error"]["message"] == "Cannot execute because node RIFE VFI does not exist."


def test_uploads_are_counted_in_files_and_bytes(sim: SimComfyUI) -> None:
    clip, still = mp4(), png_bytes((10, 20, 30))
    upload(sim, "clip.mp4", clip)
    upload(sim, "clip.mp4", clip)  # the same file again: not stored twice, but sent twice
    stored = upload(sim, "still.png", still, subfolder="refs")
    assert stored == {"name": "still.png", "subfolder": "refs", "type": "input"}
    assert [(u.name, u.subfolder, u.size) for u in sim.uploaded] == [
        ("clip.mp4", "", len(clip)),
        ("clip.mp4", "", len(clip)),
        ("still.png", "refs", len(still)),
    ]
    assert sim.uploaded_bytes == 2 * len(clip) + len(still)
    sim.restart()  # the count is the object's, as the files are the disk's
    assert sim.uploaded_bytes == 2 * len(clip) + len(still)


def test_an_uploaded_video_loads_with_load_video(sim: SimComfyUI) -> None:
    clip = mp4(frames=4, size=(24, 16), fps=10)
    for name in ("clip.mp4", "clip.mov", "clip.webm"):
        assert upload(sim, name, clip)["name"] == name  # any file: ComfyUI does not look inside
    upload(sim, "still.png", png_bytes((10, 20, 30)))
    info = http(sim, "GET", "/object_info").json()
    assert info["LoadVideo"]["input"]["required"]["file"] == [
        "COMBO",
        {"options": ["clip.mov", "clip.mp4", "clip.webm"], "video_upload": True, "multiselect": False},
    ]
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["still.png"]
    assert info["LoadVideo"]["output"] == ["VIDEO"]
    assert info["GetVideoComponents"]["output"] == ["IMAGE", "AUDIO", "FLOAT"]
    straight = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mov"}},
        "2": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["1", 0], "filename_prefix": "peer/again", "format": "auto", "codec": "auto"},
        },
    }
    made = only_output(finished(sim, submit(sim, straight, "c")))
    assert probe(view(sim, made)) == (4, (24, 16), Fraction(10))


def test_a_file_changed_under_the_same_name_is_a_new_input(sim: SimComfyUI) -> None:
    upload(sim, "clip.mp4", mp4(frames=3))
    ws = connect(sim, "c")
    first = submit(sim, scaled("clip.mp4"), "c")
    receive(ws, done(first))
    again = submit(sim, scaled("clip.mp4"), "c")
    seen = receive(ws, done(again))
    assert next(m for m in seen if m["type"] == "execution_cached")["data"]["nodes"] == ["1", "2", "3", "4", "5"]
    upload(sim, "clip.mp4", mp4(frames=4), overwrite="true")
    changed = submit(sim, scaled("clip.mp4"), "c")
    seen = receive(ws, done(changed))
    assert next(m for m in seen if m["type"] == "execution_cached")["data"]["nodes"] == []
    assert probe(view(sim, only_output(finished(sim, changed))))[0] == 4
    ws.close()


# Sounds: comfy_extras/nodes_audio.py, Stable Audio's graph, and comfyui-kokoro's voice.


def wav(seconds: float, rate: int = 22050) -> bytes:
    """A mono 16-bit WAV of a 441 Hz square wave."""
    samples = round(seconds * rate)
    half = rate // 882
    pcm = b"".join((5000 if (i // half) % 2 else -5000).to_bytes(2, "little", signed=True) for i in range(samples))
    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def listen(data: bytes) -> tuple[float, int, int, bytes]:
    """Seconds, sample rate, channels and the 16-bit samples of a sound file's first audio stream."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        layout = "mono" if stream.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="s16", layout=layout, rate=stream.rate)
        pcm = b"".join(
            bytes(out.planes[0])[: out.samples * 2 * stream.channels]
            for frame in [*container.decode(stream), None]
            for out in resampler.resample(frame)
        )
        return len(pcm) / (2 * stream.channels * stream.rate), stream.rate, stream.channels, pcm


def sounds(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The files a finished prompt's audio nodes list, under "audio" as ComfyUI's save_audio does."""
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    return [dict(f) for node in entry["outputs"].values() for f in node["audio"]]


def music(seconds: float = 3.0, seed: int = 1, batch: int = 1) -> dict[str, Any]:
    """Stable Audio Open, as ComfyUI's example graph has it (the checkpoint's VAE decodes)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "stable_audio_open_1.0.safetensors"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5_base.safetensors", "type": "stable_audio"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "sea shanty, accordion", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "5": {
            "class_type": "ConditioningStableAudio",
            "inputs": {"positive": ["3", 0], "negative": ["4", 0], "seconds_start": 0.0, "seconds_total": seconds},
        },
        "6": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": seconds, "batch_size": batch}},
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 4.98,
                "sampler_name": "dpmpp_3m_sde_gpu",
                "scheduler": "exponential",
                "positive": ["5", 0],
                "negative": ["5", 1],
                "latent_image": ["6", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveAudio", "inputs": {"audio": ["8", 0], "filename_prefix": "audio/music"}},
    }


def speech(text: str, voice: str = "bm_george", speed: float = 1.0) -> dict[str, Any]:
    return {
        "1": {"class_type": "KokoroSpeaker", "inputs": {"speaker_name": voice}},
        "2": {
            "class_type": "KokoroGenerator",
            "inputs": {"text": text, "speaker": ["1", 0], "speed": speed, "lang": "English (British)"},
        },
        "3": {"class_type": "SaveAudio", "inputs": {"audio": ["2", 0], "filename_prefix": "audio/speech"}},
    }


def test_save_audio_nodes_write_flac_mp3_and_opus_listed_under_audio(sim: SimComfyUI) -> None:
    upload(sim, "line.wav", wav(1.5))
    saves = {
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/line"}},
        "3": {
            "class_type": "SaveAudioMP3",
            "inputs": {"audio": ["1", 0], "filename_prefix": "audio/line", "quality": "V0"},
        },
        "4": {
            "class_type": "SaveAudioOpus",
            "inputs": {"audio": ["1", 0], "filename_prefix": "audio/line", "quality": "64k"},
        },
        "5": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}},
    }
    ws = connect(sim, "c")
    prompt_id = submit(sim, {"1": {"class_type": "LoadAudio", "inputs": {"audio": "line.wav"}}, **saves}, "c")
    executed = [m for m in receive(ws, done(prompt_id)) if m["type"] == "executed"]
    ws.close()
    entry = finished(sim, prompt_id)
    assert {m["data"]["node"]: m["data"]["output"] for m in executed} == entry["outputs"]
    assert entry["outputs"]["2"] == {
        "audio": [{"filename": "line_00001_.flac", "subfolder": "audio", "type": "output"}]
    }
    assert [f["filename"] for f in sounds(entry)][1:3] == ["line_00002_.mp3", "line_00003_.opus"]
    (preview,) = entry["outputs"]["5"]["audio"]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    heads = {b"fLaC": "audio/flac", b"ID3\x04": "audio/mpeg", b"OggS": "audio/ogg"}
    for made in sounds(entry):
        answer = http(sim, "GET", "/view", params=made)
        assert answer.status_code == 200 and heads[answer.content[:4]] == answer.headers["Content-Type"]
        seconds, rate, channels, _ = listen(answer.content)
        # Opus goes up to the next rate it takes; MP3 pads its end a little.
        assert rate == (48000 if made["filename"].endswith(".opus") else 22050) and channels == 1
        assert seconds == pytest.approx(1.5, abs=0.06)


def test_load_audio_offers_the_input_folders_sounds_and_videos_and_checks_the_file(sim: SimComfyUI) -> None:
    upload(sim, "line.wav", wav(0.2))
    upload(sim, "clip.mp4", mp4())
    upload(sim, "still.png", png_bytes((1, 2, 3)))
    spec = http(sim, "GET", "/object_info/LoadAudio").json()["LoadAudio"]
    assert spec["input"]["required"]["audio"] == [["clip.mp4", "line.wav"], {"audio_upload": True}]
    assert spec["output"] == ["AUDIO"] and spec["python_module"] == "comfy_extras.nodes_audio"
    missing = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "gone.wav"}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/x"}},
    }
    (error,) = rejected(sim, missing)["node_errors"]["1"]["errors"]
    assert (error["type"], error["details"]) == ("custom_validation_failed", "audio - Invalid audio file: gone.wav")


def test_stable_audio_is_as_long_as_its_latent_and_its_seed_picks_the_sound(sim: SimComfyUI) -> None:
    first = sounds(finished(sim, submit(sim, music(3.0, seed=1), "c")))
    again = sounds(finished(sim, submit(sim, music(3.0, seed=1, batch=2), "c")))
    other = sounds(finished(sim, submit(sim, music(3.0, seed=2), "c")))
    assert [f["filename"] for f in first + again + other] == [f"music_0000{i}_.flac" for i in range(1, 5)]
    seconds, rate, channels, pcm = listen(view(sim, first[0]))
    # An even number of latent frames of 2048 samples: 3 s is 64 of them.
    assert (seconds, rate, channels) == (64 * 2048 / 44100, 44100, 2)
    assert max(pcm) > 0  # a sound, not silence
    assert listen(view(sim, again[0]))[3] == pcm  # the same seed sounds the same
    assert listen(view(sim, again[1]))[3] != pcm  # a batch's next clip is the next seed's
    assert listen(view(sim, other[0]))[3] == listen(view(sim, again[1]))[3]
    spec = http(sim, "GET", "/object_info/KSampler").json()["KSampler"]["input"]["required"]
    assert "dpmpp_3m_sde_gpu" in spec["sampler_name"][0] and "exponential" in spec["scheduler"][0]
    # An image's latent does not decode as sound, as the real VAE's shapes do not fit.
    wrong = music()
    wrong["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    error = finished(sim, submit(sim, wrong, "c"))["status"]["messages"][-1][1]
    assert error["node_type"] == "VAEDecodeAudio" and error["exception_type"] == "RuntimeError"


def test_empty_audio_is_silence_as_long_as_asked(sim: SimComfyUI) -> None:
    quiet = {
        "1": {"class_type": "EmptyAudio", "inputs": {"duration": 2.25, "sample_rate": 24000, "channels": 1}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/quiet"}},
    }
    (made,) = sounds(finished(sim, submit(sim, quiet, "c")))
    seconds, rate, channels, pcm = listen(view(sim, made))
    assert (seconds, rate, channels) == (2.25, 24000, 1) and not any(pcm)


def test_kokoro_speaks_as_long_as_its_text_takes_at_its_speed(sim: SimComfyUI) -> None:
    line = "The keeper climbed the stairs."  # 30 characters: 2.1 s at speed 1
    (slow,) = sounds(finished(sim, submit(sim, speech(line), "c")))
    (fast,) = sounds(finished(sim, submit(sim, speech(line, speed=2.0), "c")))
    (woman,) = sounds(finished(sim, submit(sim, speech(line, voice="af_heart"), "c")))
    seconds, rate, channels, pcm = listen(view(sim, slow))
    assert (seconds, rate, channels) == (pytest.approx(2.1), 24000, 1) and max(pcm) > 0
    assert listen(view(sim, fast))[0] == pytest.approx(1.05)
    assert listen(view(sim, woman))[3] != pcm  # another voice
    voices = http(sim, "GET", "/object_info/KokoroSpeaker").json()["KokoroSpeaker"]["input"]["required"]
    assert "bm_george" in voices["speaker_name"][0] and voices["speaker_name"][1] == {"default": "af_sarah"}
    # With nothing to say the pack hands on None, and SaveAudio fails on it.
    error = finished(sim, submit(sim, speech("  "), "c"))["status"]["messages"][-1][1]
    assert (error["node_type"], error["exception_type"]) == ("SaveAudio", "TypeError")


def test_a_node_without_comfyui_kokoro_cannot_speak(sim: SimComfyUI) -> None:
    sim.knobs.custom_nodes = ["ComfyUI-Frame-Interpolation"]
    assert http(sim, "GET", "/object_info/KokoroGenerator").json() == {}
    body = rejected(sim, speech("Hello."))
    assert body["error"]["message"] == "Cannot execute because node KokoroSpeaker does not exist."
