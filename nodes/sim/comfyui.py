"""A simulated ComfyUI: real HTTP and WebSocket endpoints that answer as ComfyUI 0.3.64 does
(../shared/comfyui/PROTOCOL.md), validate workflows against the /object_info it serves, run one
prompt at a time for a configurable time with progress events, and write real PNG, WEBP, APNG,
MP4 and WEBM files, and FLAC, MP3 and Opus sounds, that /view serves. LoadImage, LoadVideo and
LoadAudio read uploads and, with an annotated name ("peer/still_00001_.png [output]"), what earlier
prompts saved; `uploaded` counts the uploads.

    with SimComfyUI(seconds_per_node=0.05) as sim:
        ComfyUI(sim.url).submit(workflow, prompt_id=..., client_id=...)

Images are made with pillow at most `max_side` pixels wide or high, so a 3072² workflow stays cheap.
Sounds are tones, not music or words: a model's sound (VAEDecodeAudio, KokoroGenerator) is a pitch
its seed or voice picks, as long as the request says (seconds of music; SPEECH_SECONDS a character
of text, at Kokoro's speed), so a test can tell them apart by ear and by length.
The faults of real servers and of hostile or slow nodes are `Knobs` too, all off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import io
import json
import logging
import math
import os
import random
import re
import shutil
import struct
import tempfile
import threading
import time
import uuid
import zlib
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
from aiohttp import WSMsgType, web
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image, ImageChops, ImageFilter, ImageOps

from nodes.sim.comfyui_nodes import CUSTOM_NODES, MODEL_FOLDERS, classes
from nodes.sim.runner import Server

log = logging.getLogger(__name__)

VERSION = "0.3.64"
MAX_UPLOAD = 104857600
# Binary WebSocket event types (big-endian u32 first in every binary frame).
PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
PNG_FORMAT = 2
# With the stall_unread knob, a socket with more than this waiting to go out (beyond what the
# kernel already holds) makes the one send loop wait for it, as ComfyUI's does.
STALL_BYTES = 1024 * 1024
# The write-buffer high-water mark of every socket, so aiohttp itself never makes a send wait:
# the send loop does, with the knob. Without it a client that stops reading only costs memory.
UNBOUNDED = 1 << 40
# A filename a save node wrote ("still_00001_.png"), for the output_files knob's extra names.
SAVED_NAME = re.compile(r"^(.*)_(\d+)_(\.[^.]+)$")
OOM_MESSAGE = (
    "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."
)
CONTENT_TYPES = {
    ".png": "image/png",
    ".webp": "image/webp",
    ".jpg": "image/jpeg",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
}
IMAGE_METHODS = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Inputs that name a file their node checks itself (VALIDATE_INPUTS), and the file's kind as its
# message says it: "image - Invalid image file: x.png".
FILE_INPUTS = {("LoadImage", "image"): "image", ("LoadVideo", "file"): "video", ("LoadAudio", "audio"): "audio"}
# What the loaders' IS_CHANGED reads: the input that names the file.
LOADERS = {"LoadImage": "image", "LoadVideo": "file", "LoadAudio": "audio"}
# Sounds: a Stable Audio VAE decodes 44.1 kHz stereo in latent frames of 2048 samples; Kokoro speaks
# 24 kHz mono, here 0.07 s a character at speed 1 (about 14 characters a second, as people talk).
STABLE_AUDIO_RATE = 44100
LATENT_AUDIO_SAMPLES = 2048
KOKORO_RATE = 24000
SPEECH_SECONDS = 0.07
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# folder_paths.annotated_filepath: "name [output]" is a file in the output folder, and so on.
ANNOTATIONS = {"[output]": "output", "[input]": "input", "[temp]": "temp"}

Item = list[Any]  # [number, prompt_id, prompt, extra_data, outputs_to_execute], as /queue shows it
Values = tuple[Any, ...]
UI = dict[str, Any]


def cuda_device(name: str = "NVIDIA GeForce RTX 4090", vram_gb: float = 24.0, free_gb: float = 22.5) -> dict[str, Any]:
    total, free = int(vram_gb * 1024**3), int(free_gb * 1024**3)
    return {
        "name": f"cuda:0 {name} : cudaMallocAsync",
        "type": "cuda",
        "index": 0,
        "vram_total": total,
        "vram_free": free,
        "torch_vram_total": total,
        "torch_vram_free": free,
    }


def default_models() -> dict[str, list[str]]:
    return {
        "checkpoints": [
            "sd_xl_base_1.0.safetensors",
            "v1-5-pruned-emaonly.safetensors",
            "stable_audio_open_1.0.safetensors",
        ],
        "loras": ["detail_tweaker.safetensors"],
        "vae": ["sdxl_vae.safetensors"],
        "upscale_models": ["random_compact_x2.safetensors"],
        "text_encoders": ["t5_base.safetensors"],
        "embeddings": [],
    }


@dataclass
class Knobs:
    """What a test or a demo may change at any time, from any thread."""

    seconds_per_node: float = 0.01
    # When set, each prompt takes this long in all, spread over the nodes that really run.
    run_seconds: float | None = None
    # Extra time for the first prompt after a start, like loading a model into VRAM.
    load_delay: float = 0.0
    # Progress updates ("tiles") of ImageUpscaleWithModel.
    upscale_steps: int = 8
    max_side: int = 1024
    fail: str | None = None  # "oom": every prompt ends in torch.OutOfMemoryError
    hang: bool = False  # accept connections, never answer
    garbage: bool = False  # answer every request with an HTML page
    # Megabytes of junk classes added to /object_info (for the "tens of MB" fault).
    bloat_mb: int = 0
    # Seconds between execution_success and the entry appearing in /history (surprise 12);
    # meanwhile the prompt is in neither /queue nor /history, and the next one may start. The
    # tests set SPOONFEEDER_SIM_HISTORY_LAG, so every test meets the lag a real ComfyUI has.
    history_lag: float = field(default_factory=lambda: float(os.environ.get("SPOONFEEDER_SIM_HISTORY_LAG") or 0))
    # A socket its client stopped reading stalls every message to every client once more than
    # STALL_BYTES wait for it, until it reads again or closes (surprise 13). Prompts still run.
    stall_unread: bool = False
    # Seconds restart() leaves nothing listening before the server answers again (surprise 15).
    down_after_restart: float = 0.0
    # Path prefix -> seconds between bytes: those answers' bodies trickle out a byte at a time.
    trickle: dict[str, float] = field(default_factory=dict)
    # Megabytes of junk in each /history and /history/{id} answer (for the "80 MB /history" fault).
    history_padding_mb: int = 0
    # Extra files each save node lists (hard links to its first), and a size for every file it
    # writes (its bytes, then zeros, sparse): the "5,000 files" and "1 GiB of zeros" faults.
    output_files: int = 0
    output_bytes: int = 0
    devices: list[dict[str, Any]] = field(default_factory=lambda: [cuda_device()])
    models: dict[str, list[str]] = field(default_factory=default_models)
    # The custom node packs installed (of comfyui_nodes.CUSTOM_NODES): without one, its classes
    # are missing from /object_info, as on a node where nobody installed it.
    custom_nodes: list[str] = field(default_factory=lambda: list(CUSTOM_NODES))


class Upload(NamedTuple):
    """One POST /upload/image that carried a file, whether or not it was kept (same name, same bytes)."""

    name: str
    subfolder: str
    type: str
    size: int


@dataclass
class Video:
    """A VIDEO: what LoadVideo read or CreateVideo made. The simulation holds the frames, not a file."""

    frames: list[Image.Image]
    fps: float
    audio: Any = None


@dataclass
class Audio:
    """An AUDIO: a batch of clips, each 16-bit samples (channels interleaved) at `rate`. The
    simulation holds PCM bytes, not a tensor."""

    clips: list[bytes]
    rate: int
    channels: int


class ExecError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Interrupted(Exception):
    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


# Whether a socket announced supports_preview_metadata (its previews then carry JSON metadata).
METADATA = web.ResponseKey("supports_preview_metadata", bool)
# The connection under a socket, whose write buffer decides when sending it waits.
TRANSPORT = web.ResponseKey("transport", asyncio.Transport)
# What the send loop sends: a text message, or a preview (PNG, metadata) framed per socket.
Outgoing = tuple[str | tuple[bytes, bytes], str | None]


class State:
    """One server's memory; a restart makes a new one (the files on disk stay)."""

    def __init__(self, knobs: Knobs, root: Path, uploads: list[Upload] | None = None) -> None:
        self.knobs = knobs
        self.dirs = {kind: root / kind for kind in ("output", "input", "temp")}
        self.uploads = [] if uploads is None else uploads  # kept over restarts, as the files are
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.pending: list[Item] = []  # a heap, shown to clients in heap order as the real one is
        self.running: Item | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.counter = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.open: set[web.WebSocketResponse] = set()
        self.client_id: str | None = None
        self.current_node: str | None = None
        self.interrupted = False
        self.loaded = False
        self.cache: dict[str, tuple[Values, UI | None]] = {}
        self.wake: asyncio.Event | None = None
        self.worker: asyncio.Task[None] | None = None
        self.outbox: asyncio.Queue[Outgoing] | None = None
        self.publisher: asyncio.Task[None] | None = None
        self.stopping: asyncio.Event | None = None

    def remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    def object_info(self) -> dict[str, Any]:
        inputs = sorted(p.name for p in self.dirs["input"].iterdir() if p.is_file())
        info = classes(self.knobs.models, inputs, self.knobs.custom_nodes)
        for i in range(self.knobs.bloat_mb):
            junk = f"JunkNode{i}"
            info[junk] = {**info["ImageInvert"], "name": junk, "description": "x" * 1048576}
        return info

    # Sending, as ComfyUI's send_sync: messages are queued for one loop (publish) that sends them
    # in order, looking the sockets up as it goes. A run never waits for a socket.

    async def send(self, kind: str, data: dict[str, Any], sid: str | None) -> None:
        """To `sid` if it is connected; to everybody when sid is None."""
        assert self.outbox is not None
        self.outbox.put_nowait((json.dumps({"type": kind, "data": data}), sid))

    def targets(self, sid: str | None) -> list[web.WebSocketResponse]:
        if sid is None:
            return list(self.sockets.values())
        ws = self.sockets.get(sid)
        return [ws] if ws else []

    async def status(self) -> None:
        await self.send("status", {"status": {"exec_info": {"queue_remaining": self.remaining()}}}, None)

    async def preview(self, png: bytes, node: str, prompt_id: str, sid: str | None) -> None:
        assert self.outbox is not None
        meta = json.dumps(
            {
                "node_id": node,
                "prompt_id": prompt_id,
                "display_node_id": node,
                "parent_node_id": None,
                "real_node_id": node,
                "image_type": "image/png",
            }
        ).encode()
        self.outbox.put_nowait(((png, meta), sid))


async def publish(state: State) -> None:
    """ComfyUI's publish_loop: every message to every socket goes out from this one loop, a socket
    at a time, so a socket that makes sending wait holds up all that follows (surprise 13). A
    socket that goes away mid-send is the client's problem, not the run's."""
    assert state.outbox is not None
    while True:
        message, sid = await state.outbox.get()
        for ws in state.targets(sid):
            with contextlib.suppress(ConnectionError, RuntimeError):
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    png, meta = message
                    if ws.get(METADATA):
                        frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + png
                    else:
                        frame = struct.pack(">II", PREVIEW_IMAGE, PNG_FORMAT) + png
                    await ws.send_bytes(frame)
            await drained(ws, state.knobs)


async def drained(ws: web.WebSocketResponse, knobs: Knobs) -> None:
    """With the stall_unread knob, wait while more than STALL_BYTES wait to go out to this socket,
    as aiohttp's drain makes ComfyUI's send loop wait: until its client reads or goes away."""
    transport = ws.get(TRANSPORT)
    while (
        knobs.stall_unread
        and transport is not None
        and not transport.is_closing()
        and transport.get_write_buffer_size() > STALL_BYTES
    ):
        await asyncio.sleep(0.01)


async def hang_up(ws: web.WebSocketResponse) -> None:
    """Close a socket, and drop the connection when its client has not answered within a second
    or has not read all it was sent (one that stopped reading never will)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.close(), 1.0)
    transport = ws.get(TRANSPORT)
    if transport is not None and transport.get_write_buffer_size():
        transport.abort()


def now_ms() -> int:
    return int(time.time() * 1000)


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


# Validation, in the shapes and with the messages of the real server.


def problem(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def check_value(name: str, spec: list[Any], value: Any, state: State, class_type: str) -> dict[str, Any] | None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    file_kind = FILE_INPUTS.get((class_type, name))
    if file_kind:
        # The node validates its own input, so the file list check is skipped for it: any file
        # of the input folder, or of another with an annotation, will do.
        if not (isinstance(value, str) and annotated_file(state, value)):
            return problem(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name} - Invalid {file_kind} file: {value}",
                input_name=name,
                input_config=spec,
                received_value=value,
            )
        return None
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if value not in choices:
            shown = choices if len(choices) <= 20 else [*choices[:20], "..."]
            return problem(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {shown}",
                input_name=name,
                input_config=spec,
                received_value=value,
            )
        return None
    if kind in ("INT", "FLOAT"):
        try:
            number: float = int(value) if kind == "INT" else float(value)
        except (TypeError, ValueError) as e:
            return problem(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, {e}",
                input_name=name,
                input_config=spec,
                received_value=value,
                exception_message=str(e),
            )
        if "min" in options and number < options["min"]:
            return problem(
                "value_smaller_than_min",
                f"Value {number} smaller than min of {options['min']}",
                name,
                input_name=name,
                input_config=spec,
                received_value=number,
            )
        if "max" in options and number > options["max"]:
            return problem(
                "value_bigger_than_max",
                f"Value {number} bigger than max of {options['max']}",
                name,
                input_name=name,
                input_config=spec,
                received_value=number,
            )
    return None


def validate(prompt: dict[str, Any], state: State) -> tuple[int, dict[str, Any], list[str]]:
    """(HTTP status, answer body without prompt_id/number, outputs to execute)."""
    info = state.object_info()
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type is None:
            error = problem(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
            return 400, {"error": error, "node_errors": {}}, []
        if class_type not in info:
            error = problem(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
            return 400, {"error": error, "node_errors": {}}, []
    outputs = [n for n, node in prompt.items() if info[node["class_type"]]["output_node"]]
    if not outputs:
        error = problem("prompt_no_outputs", "Prompt has no outputs", "")
        return 400, {"error": error, "node_errors": {}}, []

    checked: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def check(node_id: str) -> bool:
        if node_id in checked:
            return checked[node_id][0]
        checked[node_id] = (True, [])  # a cycle is not this simulation's problem
        node = prompt[node_id]
        spec = info[node["class_type"]]["input"]
        inputs = node.get("inputs", {})
        errors: list[dict[str, Any]] = []
        ok = True
        for name in spec["required"]:
            if name not in inputs:
                errors.append(problem("required_input_missing", "Required input is missing", name, input_name=name))
        for name, input_spec in {**spec["required"], **spec.get("optional", {})}.items():
            if name not in inputs:
                continue
            value = inputs[name]
            if is_link(value):
                source = value[0]
                if source not in prompt:
                    errors.append(
                        problem(
                            "exception_during_validation",
                            "Exception when validating node",
                            f"'{source}'",
                            exception_type="KeyError",
                            traceback=[f"KeyError: '{source}'\n"],
                        )
                    )
                    continue
                produced = info[prompt[source]["class_type"]]["output"]
                got = produced[value[1]] if value[1] < len(produced) else None
                want = input_spec[0]
                if got != want and want != "*" and not (isinstance(want, list) and got == "COMBO"):
                    errors.append(
                        problem(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({got}) mismatch input_type({want})",
                            input_name=name,
                            input_config=input_spec,
                            received_type=got,
                            linked_node=value,
                        )
                    )
                    continue
                if not check(source):
                    ok = False
            else:
                err = check_value(name, input_spec, value, state, node["class_type"])
                if err:
                    errors.append(err)
        ok = ok and not errors
        checked[node_id] = (ok, errors)
        return ok

    good: list[str] = []
    bad: list[str] = []
    for out in outputs:
        (good if check(out) else bad).append(out)
    node_errors: dict[str, Any] = {}
    for out in bad:
        for node_id in sorted(ancestors(prompt, out)):
            errors = checked.get(node_id, (True, []))[1]
            if errors:
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": errors, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(out)
    if not good:
        reasons = [f"{e['message']}: {e['details']}" for out in bad for e in checked[out][1]]
        details = "\n".join(reasons) if reasons else ""
        error = problem("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return 400, {"error": error, "node_errors": node_errors}, []
    return 200, {"node_errors": node_errors}, good


def ancestors(prompt: dict[str, Any], node_id: str) -> list[str]:
    """node_id and every node it depends on, dependencies first (the order they run in)."""
    seen: set[str] = set()
    order: list[str] = []

    def visit(n: str) -> None:
        if n in seen or n not in prompt:
            return
        seen.add(n)
        for value in prompt[n].get("inputs", {}).values():
            if is_link(value):
                visit(value[0])
        order.append(n)

    visit(node_id)
    return order


def annotated_file(state: State, name: str) -> Path | None:
    """The file an input names, as folder_paths.get_annotated_filepath finds it ("sub/x.png
    [output]" in the output folder, no annotation in the input folder), or None when there is
    no such file or the name leads out of its folder ("../x.png", "/etc/passwd")."""
    base = state.dirs["input"]
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            # ComfyUI cuts the annotation and the space before it by length, and so do we.
            name, base = name[: -len(suffix) - 1], state.dirs[kind]
            break
    if not name or "\0" in name:
        return None
    root = base.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def changed(class_type: str, inputs: dict[str, Any], state: State) -> Any:
    """What the loaders' IS_CHANGED says of the file they read: LoadImage and LoadAudio hash its
    content, LoadVideo (fingerprint_inputs) takes its modification time. A new file is a new input."""
    name = inputs.get(LOADERS[class_type])
    path = annotated_file(state, name) if isinstance(name, str) else None
    if path is None:
        return None
    if class_type in ("LoadImage", "LoadAudio"):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return path.stat().st_mtime_ns


def signatures(prompt: dict[str, Any], state: State) -> dict[str, str]:
    """A key per node that changes when the node or anything upstream changes: the result cache."""
    sigs: dict[str, str] = {}

    def sig(n: str) -> str:
        if n not in sigs:
            node = prompt[n]
            inputs = {k: [sig(v[0]), v[1]] if is_link(v) else v for k, v in sorted(node.get("inputs", {}).items())}
            if node["class_type"] in LOADERS:
                inputs["_changed"] = changed(node["class_type"], inputs, state)
            sigs[n] = json.dumps([n, node["class_type"], inputs], sort_keys=True, default=str)
        return sigs[n]

    for n in prompt:
        sig(n)
    return sigs


# The node implementations: small pillow and PyAV stand-ins that make real, visible files.


def fit(width: int, height: int, limit: int) -> tuple[int, int]:
    scale = min(1.0, limit / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 255, (color >> 8) & 255, color & 255


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    data = random.Random(seed).randbytes(size[0] * size[1])
    return Image.frombytes("L", size, data).convert("RGB")


def output_path(state: State, prefix: str, kind: str = "output") -> tuple[Path, str, str, int]:
    """Folder, subfolder, base name and next counter for a filename prefix ("peer/still")."""
    base = state.dirs[kind]
    subfolder, name = os.path.split(os.path.normpath(prefix))
    folder = (base / subfolder).resolve()
    if os.path.commonpath([folder, base.resolve()]) != str(base.resolve()):
        raise ExecError("Exception", f"**** ERROR: Saving image outside the output folder is not allowed.\n {prefix}")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(name)}_(\d+)_")
    counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return folder, subfolder.replace(os.sep, "/"), name, max(counters, default=0) + 1


def saved(name: str, subfolder: str, kind: str = "output") -> dict[str, str]:
    return {"filename": name, "subfolder": subfolder, "type": kind}


def save_images(state: State, images: list[Image.Image], prefix: str, kind: str = "output") -> UI:
    folder, subfolder, name, counter = output_path(state, prefix, kind)
    files = []
    for i, img in enumerate(images):
        filename = f"{name}_{counter + i:05}_.png"
        img.save(folder / filename, compress_level=1 if kind == "temp" else 4)
        files.append(saved(filename, subfolder, kind))
    return {"images": files}


def save_animated(state: State, images: list[Image.Image], prefix: str, ext: str, **options: Any) -> UI:
    folder, subfolder, name, counter = output_path(state, prefix)
    filename = f"{name}_{counter:05}_.{ext}"
    images[0].save(folder / filename, save_all=True, append_images=images[1:], **options)
    return {"images": [saved(filename, subfolder)], "animated": [True]}


def save_video(state: State, images: list[Image.Image], prefix: str, fps: float, ext: str) -> UI:
    folder, subfolder, name, counter = output_path(state, prefix)
    filename = f"{name}_{counter:05}_.{ext}"
    # yuv420p wants even sizes.
    width, height = images[0].width // 2 * 2 or 2, images[0].height // 2 * 2 or 2
    codec = "libx264" if ext == "mp4" else "libvpx-vp9"
    with av.open(str(folder / filename), "w", format=ext) as container:
        # As ComfyUI's: to the thousandth of a frame per second, so 12.5 and 23.976 stay what they are.
        stream = container.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if ext == "webm":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}  # vp9's default is slow
        for img in images:
            frame = av.VideoFrame.from_image(img.convert("RGB").resize((width, height)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return {"images": [saved(filename, subfolder)], "animated": [True]}


def load_video(path: Path, limit: int) -> Video:
    """Every frame of the file's first video stream, at most `limit` pixels wide or high, and its
    average frame rate, as VideoFromFile.get_components reads them. Audio is left out."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            img = frame.to_image()
            size = fit(img.width, img.height, limit)
            frames.append(img if size == img.size else img.resize(size))
        rate = stream.average_rate
    return Video(frames, float(rate) if rate else 1.0)


def interpolate(frames: list[Image.Image], multiplier: int) -> list[Image.Image]:
    """RIFE VFI's frame loop: each frame, then multiplier - 1 in-betweens (blends here, not a
    model's flow) towards the next; the last frame ends it. n frames give (n - 1) * multiplier + 1."""
    if len(frames) < 2:
        raise ExecError(
            "AssertionError",
            f"Most VFI models require at least 2 frames to work with, only found {len(frames)}. "
            "Please check the frame input using PreviewImage.",
        )
    out = []
    for a, b in zip(frames, frames[1:], strict=False):
        out.append(a)
        out += [Image.blend(a, b.resize(a.size), k / multiplier) for k in range(1, multiplier)]
    return [*out, frames[-1]]


def pitch(key: int | str) -> float:
    """A note of the two octaves above A2 (110 Hz) that a seed or a voice's name picks, the same
    every time."""
    step = (key if isinstance(key, int) else zlib.crc32(key.encode())) % 24
    return 110 * 2 ** (step / 12)


def tone(seconds: float, rate: int, channels: int, hz: float) -> bytes:
    """`seconds` of a sine at about `hz` (a whole number of samples a period, so one period is
    repeated) at a third of full scale: 16-bit samples, channels interleaved."""
    period = max(2, round(rate / hz))
    wave = [round(10000 * math.sin(2 * math.pi * i / period)) for i in range(period)]
    one = array("h", (value for value in wave for _ in range(channels)))
    frames = max(0, round(seconds * rate))
    whole, rest = divmod(frames, period)
    return one.tobytes() * whole + one[: rest * channels].tobytes()


def load_audio(path: Path) -> Audio:
    """The file's first audio stream as 16-bit samples at its own rate, as ComfyUI's load() reads
    it (more than two channels are mixed down to two here)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ExecError("ValueError", "No audio stream found in the file.")
        stream: AudioStream = container.streams.audio[0]
        channels = 1 if stream.channels == 1 else 2
        resampler = av.AudioResampler(format="s16", layout="mono" if channels == 1 else "stereo", rate=stream.rate)
        pcm = bytearray()
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2 * channels]
        for out in resampler.resample(None):
            pcm += bytes(out.planes[0])[: out.samples * 2 * channels]
    if not pcm:
        raise ExecError("ValueError", "No audio frames decoded.")
    return Audio([bytes(pcm)], stream.rate, channels)


def write_audio(path: Path, pcm: bytes, rate: int, channels: int, fmt: str, bit_rate: int | None) -> None:
    """One clip as ComfyUI's save_audio writes it: FLAC, MP3 or Opus (in Ogg, at the next rate
    Opus takes), one frame that PyAV cuts and converts for the encoder."""
    layout = "mono" if channels == 1 else "stereo"
    codec = {"flac": "flac", "mp3": "libmp3lame", "opus": "libopus"}[fmt]
    out_rate = rate
    if fmt == "opus" and rate not in OPUS_RATES:
        out_rate = next((r for r in OPUS_RATES if r > rate), 48000)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        assert isinstance(stream, AudioStream)
        if bit_rate:
            stream.bit_rate = bit_rate
        samples = len(pcm) // (2 * channels)
        if samples:
            frame = AudioFrame(format="s16", layout=layout, samples=samples)
            frame.planes[0].update(pcm[: samples * 2 * channels])
            frame.sample_rate, frame.pts = rate, 0
            if out_rate != rate:
                resampler = av.AudioResampler(format="s16", layout=layout, rate=out_rate)
                for out in [*resampler.resample(frame), *resampler.resample(None)]:
                    out.pts = None
                    container.mux(stream.encode(out))
            else:
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def save_audio(state: State, audio: Audio | None, prefix: str, fmt: str, quality: str = "", kind: str = "output") -> UI:
    """A file per clip of the batch, listed under "audio" as SaveAudio's ui lists them."""
    if audio is None:  # what a generator that failed quietly (comfyui-kokoro) hands on
        raise ExecError("TypeError", "'NoneType' object is not subscriptable")
    folder, subfolder, name, counter = output_path(state, prefix, kind)
    bit_rate = {"64k": 64000, "96k": 96000, "128k": 128000, "192k": 192000, "320k": 320000}.get(quality)
    files = []
    for i, clip in enumerate(audio.clips):
        filename = f"{name}_{counter + i:05}_.{fmt}"
        write_audio(folder / filename, clip, audio.rate, audio.channels, fmt, bit_rate)
        files.append(saved(filename, subfolder, kind))
    return {"audio": files}


def more_outputs(state: State, ui: UI) -> UI:
    """The output_files and output_bytes knobs, on what a save node wrote. The extra files are
    hard links to its first and sizes are set with truncate, so thousands of files or a GiB of
    zeros take next to no disk."""
    knobs = state.knobs
    files = list(ui["images"])
    first = files[0]
    folder = state.dirs[first["type"]] / first["subfolder"]
    last = SAVED_NAME.match(files[-1]["filename"])
    if knobs.output_files and last:
        name, counter, ext = last.group(1), int(last.group(2)) + 1, last.group(3)
        for i in range(knobs.output_files):
            filename = f"{name}_{counter + i:05}_{ext}"
            try:
                os.link(folder / first["filename"], folder / filename)
            except OSError:
                shutil.copyfile(folder / first["filename"], folder / filename)
            files.append(saved(filename, first["subfolder"], first["type"]))
    if knobs.output_bytes:
        for f in files:
            os.truncate(folder / f["filename"], knobs.output_bytes)
    return {**ui, "images": files}


def run_node(state: State, class_type: str, inputs: dict[str, Any]) -> tuple[Values, UI | None]:
    """The work of one node, in a thread. Raises ExecError as the real node would fail."""
    limit = state.knobs.max_side
    match class_type:
        case "EmptyImage":
            size = fit(int(inputs["width"]), int(inputs["height"]), limit)
            return ([Image.new("RGB", size, rgb(int(inputs["color"])))] * int(inputs["batch_size"]),), None
        case "ImageAddNoise":
            strength, seed = float(inputs["strength"]), int(inputs["seed"])
            out = [Image.blend(img, noise(img.size, seed + i), strength) for i, img in enumerate(inputs["image"])]
            return (out,), None
        case "ImageBlur":
            blur = ImageFilter.GaussianBlur(float(inputs["sigma"]))
            return ([img.filter(blur) for img in inputs["image"]],), None
        case "ImageScale":
            first = inputs["image"][0]
            width, height = int(inputs["width"]), int(inputs["height"])
            if not width or not height:  # 0 keeps the aspect ratio
                width = width or round(first.width * height / first.height)
                height = height or round(first.height * width / first.width)
            size = fit(width, height, limit)
            method = IMAGE_METHODS.get(inputs["upscale_method"], Image.Resampling.BILINEAR)
            return ([img.resize(size, method) for img in inputs["image"]],), None
        case "ImageScaleBy":
            scale = float(inputs["scale_by"])
            method = IMAGE_METHODS.get(inputs["upscale_method"], Image.Resampling.BILINEAR)
            out = [
                img.resize(fit(round(img.width * scale), round(img.height * scale), limit), method)
                for img in inputs["image"]
            ]
            return (out,), None
        case "ImageUpscaleWithModel":
            return ([img.resize(fit(img.width * 2, img.height * 2, limit)) for img in inputs["image"]],), None
        case "RepeatImageBatch":
            return (list(inputs["image"]) * int(inputs["amount"]),), None
        case "ImageBatch":
            # The second batch is fitted to the first's size (ComfyUI scales it, cropping the centre).
            first, second = inputs["image1"], inputs["image2"]
            size = first[0].size
            fitted = [img if img.size == size else ImageOps.fit(img, size, Image.Resampling.BILINEAR) for img in second]
            return ([*first, *fitted],), None
        case "RIFE VFI":
            return (interpolate(inputs["frames"], int(inputs["multiplier"])),), None
        case "ImageBlend":
            a, b = inputs["image1"], inputs["image2"]
            if len(a) != len(b) and 1 not in (len(a), len(b)):
                raise ExecError(
                    "RuntimeError",
                    f"The size of tensor a ({len(a)}) must match the size of tensor b ({len(b)}) "
                    "at non-singleton dimension 0\n",
                )
            blend = {
                "multiply": ImageChops.multiply,
                "screen": ImageChops.screen,
                "difference": ImageChops.difference,
            }
            out = []
            for i in range(max(len(a), len(b))):
                x, y = a[min(i, len(a) - 1)], b[min(i, len(b) - 1)].resize(a[0].size)
                mixed = blend.get(inputs["blend_mode"], lambda p, q: q)(x, y)
                out.append(Image.blend(x, mixed, float(inputs["blend_factor"])))
            return (out,), None
        case "ImageInvert":
            return ([ImageOps.invert(img) for img in inputs["image"]],), None
        case "LoadImage":
            path = annotated_file(state, inputs["image"])
            if path is None:  # gone since the prompt was validated
                raise ExecError("FileNotFoundError", f"No such file: {inputs['image']}")
            with Image.open(path) as img:
                loaded = img.convert("RGB")
            return ([loaded], None), None
        case "LoadVideo":
            path = annotated_file(state, inputs["file"])
            if path is None:
                raise ExecError("FileNotFoundError", f"No such file: {inputs['file']}")
            return (load_video(path, limit),), None
        case "GetVideoComponents":
            video = inputs["video"]
            return (video.frames, video.audio, video.fps), None
        case "SaveImage":
            return (), save_images(state, inputs["images"], str(inputs["filename_prefix"]))
        case "PreviewImage":
            return (), save_images(state, inputs["images"], f"ComfyUI_temp_{uuid.uuid4().hex[:5]}", "temp")
        case "SaveAnimatedWEBP":
            effort = {"default": 4, "fastest": 0, "slowest": 6}.get(inputs["method"], 4)
            ui = save_animated(
                state,
                inputs["images"],
                str(inputs["filename_prefix"]),
                "webp",
                duration=round(1000 / float(inputs["fps"])),
                lossless=bool(inputs["lossless"]),
                quality=int(inputs["quality"]),
                method=effort,
            )
            return (), ui
        case "SaveAnimatedPNG":
            ui = save_animated(
                state,
                inputs["images"],
                str(inputs["filename_prefix"]),
                "png",
                duration=round(1000 / float(inputs["fps"])),
                compress_level=int(inputs["compress_level"]),
            )
            return (), ui
        case "SaveWEBM":
            return (), save_video(state, inputs["images"], str(inputs["filename_prefix"]), float(inputs["fps"]), "webm")
        case "CreateVideo":
            return (Video(inputs["images"], float(inputs["fps"]), inputs.get("audio")),), None
        case "SaveVideo":
            video = inputs["video"]
            return (), save_video(state, video.frames, str(inputs["filename_prefix"]), video.fps, "mp4")
        case "SaveImageWebsocket":
            return (), None  # its frames went out as progress previews
        case "UpscaleModelLoader":
            return (f"upscale:{inputs['model_name']}",), None
        case "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            return (f"model:{name}", f"clip:{name}", f"vae:{name}"), None
        case "VAELoader":
            return (f"vae:{inputs['vae_name']}",), None
        case "LoraLoader":
            return (inputs["model"], inputs["clip"]), None
        case "CLIPTextEncode":
            return (str(inputs["text"]),), None
        case "EmptyLatentImage":
            latent = {"width": int(inputs["width"]), "height": int(inputs["height"])}
            return ({**latent, "batch_size": int(inputs["batch_size"]), "seed": 0},), None
        case "KSampler":
            return ({**inputs["latent_image"], "seed": int(inputs["seed"])},), None
        case "VAEDecode":
            latent = inputs["samples"]
            if latent.get("type") == "audio":
                raise ExecError("RuntimeError", "VAEDecode cannot decode an audio latent: use VAEDecodeAudio")
            size = fit(latent["width"], latent["height"], limit)
            images = [noise(size, latent["seed"] + i) for i in range(latent["batch_size"])]
            return (images,), None
        case "CLIPLoader":
            return (f"clip:{inputs['clip_name']}",), None
        case "EmptyLatentAudio":
            # As ComfyUI's: an even number of latent frames, each LATENT_AUDIO_SAMPLES long.
            frames = round(float(inputs["seconds"]) * STABLE_AUDIO_RATE / LATENT_AUDIO_SAMPLES / 2) * 2
            sound = {"type": "audio", "samples": frames * LATENT_AUDIO_SAMPLES, "batch_size": int(inputs["batch_size"])}
            return ({**sound, "seed": 0},), None
        case "ConditioningStableAudio":
            return (inputs["positive"], inputs["negative"]), None
        case "VAEDecodeAudio":
            latent = inputs["samples"]
            if latent.get("type") != "audio":
                raise ExecError("RuntimeError", "VAEDecodeAudio needs an audio latent (EmptyLatentAudio)")
            seconds, seed = latent["samples"] / STABLE_AUDIO_RATE, latent["seed"]
            clips = [tone(seconds, STABLE_AUDIO_RATE, 2, pitch(seed + i)) for i in range(latent["batch_size"])]
            return (Audio(clips, STABLE_AUDIO_RATE, 2),), None
        case "EmptyAudio":
            rate, channels = int(inputs["sample_rate"]), int(inputs["channels"])
            silence = bytes(int(round(float(inputs["duration"]) * rate)) * 2 * channels)
            return (Audio([silence], rate, channels),), None
        case "LoadAudio":
            path = annotated_file(state, inputs["audio"])
            if path is None:
                raise ExecError("FileNotFoundError", f"No such file: {inputs['audio']}")
            return (load_audio(path),), None
        case "SaveAudio":
            return (), save_audio(state, inputs["audio"], str(inputs["filename_prefix"]), "flac")
        case "SaveAudioMP3":
            return (), save_audio(state, inputs["audio"], str(inputs["filename_prefix"]), "mp3", inputs["quality"])
        case "SaveAudioOpus":
            return (), save_audio(state, inputs["audio"], str(inputs["filename_prefix"]), "opus", inputs["quality"])
        case "PreviewAudio":
            return (), save_audio(state, inputs["audio"], f"ComfyUI_temp_{uuid.uuid4().hex[:5]}", "flac", kind="temp")
        case "KokoroSpeaker":
            return ({"speaker": inputs["speaker_name"]},), None
        case "KokoroSpeakerCombiner":
            a, b, weight = inputs["speaker_a"]["speaker"], inputs["speaker_b"]["speaker"], float(inputs["weight"])
            return ({"speaker": f"{a}*{weight:g}+{b}*{1 - weight:g}"},), None
        case "KokoroGenerator":
            text = str(inputs["text"])
            if not text.strip():
                return (None,), None  # the pack logs the error and hands on nothing
            seconds = len(text) * SPEECH_SECONDS / float(inputs["speed"])
            voice = pitch(str(inputs["speaker"]["speaker"])) * 2  # a speaking voice, above the music
            return (Audio([tone(seconds, KOKORO_RATE, 1, voice)], KOKORO_RATE, 1),), None
    raise ExecError("RuntimeError", f"the simulated ComfyUI cannot run {class_type}")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def progress_steps(class_type: str, inputs: dict[str, Any], knobs: Knobs) -> list[tuple[int, int]]:
    """(value, max) of each ProgressBar update the real node makes."""
    if class_type == "SaveImageWebsocket":
        count = len(inputs["images"])
        return [(i, count) for i in range(count)]  # it never reaches max
    if class_type == "ImageUpscaleWithModel":
        return [(i, knobs.upscale_steps) for i in range(1, knobs.upscale_steps + 1)]
    if class_type == "KSampler":
        steps = int(inputs["steps"])
        return [(i, steps) for i in range(1, steps + 1)]
    return []


# Running prompts, one at a time, as ComfyUI's prompt_worker does.


async def worker(state: State) -> None:
    assert state.wake is not None
    while True:
        while not state.pending:
            state.wake.clear()
            await state.wake.wait()
        item = heapq.heappop(state.pending)
        state.running = item
        await state.status()
        try:
            await execute(state, item)
        except Exception:
            log.exception("simulated ComfyUI: prompt %s crashed", item[1])
        finally:
            state.running = None
            state.client_id = None
            state.current_node = None


async def execute(state: State, item: Item) -> None:
    number, prompt_id, prompt, extra, outputs = item
    client = extra.get("client_id")
    state.client_id = client
    state.interrupted = False  # an interrupt while idle does not leak into this prompt
    loop = asyncio.get_running_loop()
    messages: list[list[Any]] = []

    async def lifecycle(kind: str, data: dict[str, Any], record: bool = True) -> None:
        # Without a client_id these go to nobody (PROTOCOL.md, "Who receives what").
        if record:
            messages.append([kind, data])
        if client is not None:
            await state.send(kind, data, client)

    begun = time.monotonic()
    await lifecycle("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()})
    order: list[str] = []
    for out in outputs:
        order += [n for n in ancestors(prompt, out) if n not in order]
    sigs = signatures(prompt, state)
    cached = [n for n in order if sigs[n] in state.cache]
    await lifecycle("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": now_ms()})
    values: dict[str, Values] = {}
    ui: dict[str, UI] = {}
    fresh: dict[str, tuple[Values, UI | None]] = {}
    for n in cached:
        values[n], node_ui = fresh[sigs[n]] = state.cache[sigs[n]]
        if node_ui is not None:
            ui[n] = node_ui
            await lifecycle(
                "executed", {"node": n, "display_node": n, "output": node_ui, "prompt_id": prompt_id}, False
            )
    executed = list(cached)
    todo = [n for n in order if n not in cached]
    per_node = state.knobs.seconds_per_node
    if state.knobs.run_seconds is not None:
        per_node = state.knobs.run_seconds / max(len(todo), 1)
    heavy = [n for n in todo if n not in outputs] or todo
    # Each node ends per_node after the previous one's end, on one clock that starts with the
    # prompt, so neither our own bookkeeping nor the small overshoot of every sleep adds up: the
    # knob is the node's speed, as a GPU on a machine of its own would have it.
    due = begun
    if not state.loaded:
        # The first prompt after a start loads its models: a long first node, as on a real GPU.
        due += state.knobs.load_delay
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        state.loaded = True
    progress: dict[str, dict[str, Any]] = {}

    async def report(n: str, value: float, top: float, status: str) -> None:
        progress[n] = {
            "value": value,
            "max": top,
            "state": status,
            "node_id": n,
            "prompt_id": prompt_id,
            "display_node_id": n,
            "parent_node_id": None,
            "real_node_id": n,
        }
        await state.send("progress_state", {"prompt_id": prompt_id, "nodes": dict(progress)}, client)

    current = ""
    inputs: dict[str, Any] = {}
    end: str
    try:
        for n in todo:
            current = n
            if state.interrupted:
                raise Interrupted(n)
            class_type = prompt[n]["class_type"]
            await report(n, 0.0, 1.0, "running")
            await lifecycle("executing", {"node": n, "display_node": n, "prompt_id": prompt_id}, False)
            state.current_node = n
            inputs = {k: values[v[0]][v[1]] if is_link(v) else v for k, v in prompt[n].get("inputs", {}).items()}
            if state.knobs.fail == "oom" and n == heavy[-1]:
                await asyncio.sleep(per_node)
                raise ExecError("torch.OutOfMemoryError", OOM_MESSAGE)
            started, due = due, due + per_node
            steps = progress_steps(class_type, inputs, state.knobs)
            for i, (value, top) in enumerate(steps):
                await asyncio.sleep(max(0.0, started + per_node * (i + 1) / len(steps) - time.monotonic()))
                # ComfyUI checks for an interrupt in every ProgressBar update.
                if state.interrupted:
                    raise Interrupted(n)
                await state.send("progress", {"value": value, "max": top, "prompt_id": prompt_id, "node": n}, client)
                await report(n, float(value), float(top), "running")
                if class_type == "SaveImageWebsocket":
                    frame = await loop.run_in_executor(None, png, inputs["images"][i])
                    await state.preview(frame, n, prompt_id, client)
            result, node_ui = await loop.run_in_executor(None, run_node, state, class_type, inputs)
            if node_ui and node_ui.get("images") and (state.knobs.output_files or state.knobs.output_bytes):
                node_ui = await loop.run_in_executor(None, more_outputs, state, node_ui)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            values[n] = result
            fresh[sigs[n]] = (result, node_ui)
            executed.append(n)
            if node_ui is not None:
                ui[n] = node_ui
                await lifecycle(
                    "executed",
                    {"node": n, "display_node": n, "output": node_ui, "prompt_id": prompt_id},
                    False,
                )
            await report(n, 1.0, 1.0, "finished")
        await lifecycle("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()})
        end = "success"
    except Interrupted as e:
        data = {
            "prompt_id": prompt_id,
            "node_id": e.node,
            "node_type": prompt[e.node]["class_type"],
            "executed": executed,
            "timestamp": now_ms(),
        }
        messages.append(["execution_interrupted", data])
        await state.send("execution_interrupted", data, client)  # broadcast without a client_id
        end = "error"
    except Exception as e:
        kind, message = (e.kind, e.message) if isinstance(e, ExecError) else (type(e).__name__, str(e))
        data = {
            "prompt_id": prompt_id,
            "node_id": current,
            "node_type": prompt[current]["class_type"] if current else "",
            "executed": executed,
            "exception_message": message,
            "exception_type": kind,
            "traceback": [
                '  File "/ComfyUI/execution.py", line 496, in execute\n',
                f"{kind}: {message}",
            ],
            "current_inputs": {k: [repr(v)[:200]] for k, v in inputs.items()},
            "current_outputs": [],
            "timestamp": now_ms(),
        }
        await lifecycle("execution_error", data)
        end = "error"
    state.cache = fresh
    state.current_node = None
    entry = {
        "prompt": item,
        "outputs": ui,
        "status": {"status_str": end, "completed": end == "success", "messages": messages},
        "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui},
    }
    if state.knobs.history_lag > 0:
        # Surprise 12: the prompt leaves the queue now and reaches history later, the next
        # prompt meanwhile free to start.
        loop.call_later(state.knobs.history_lag, state.history.__setitem__, prompt_id, entry)
    else:
        # History and the queue change together, so a poller never sees a prompt in neither.
        state.history[prompt_id] = entry
    state.running = None
    await state.status()
    if client is not None:
        await state.send("executing", {"node": None, "prompt_id": prompt_id}, client)


# HTTP and WebSocket endpoints.

STATE = web.AppKey("state", State)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and ".." not in name and "\0" not in name


def inside(base: Path, subfolder: str) -> Path | None:
    folder = (base / subfolder).resolve()
    return folder if os.path.commonpath([folder, base.resolve()]) == str(base.resolve()) else None


@web.middleware
async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    knobs = state.knobs
    while knobs.hang:
        await asyncio.sleep(0.05)
    if knobs.garbage:
        page = "<!DOCTYPE html><html><head><title>Router</title></head><body>It works!</body></html>"
        response: web.StreamResponse = web.Response(text=page, content_type="text/html")
    else:
        response = await handler(request)
    pause = trickling(request, knobs)
    if pause is None or response.prepared or not isinstance(response, web.Response):
        return response
    if not isinstance(response.body, bytes):
        return response
    return await trickle(request, response.body, response, pause, state)


def trickling(request: web.Request, knobs: Knobs) -> float | None:
    """Seconds between the bytes of this request's answer (the trickle knob; the longest prefix
    wins), or None to answer at once."""
    matches = [(len(prefix), pause) for prefix, pause in list(knobs.trickle.items()) if request.path.startswith(prefix)]
    return max(matches)[1] if matches else None


async def trickle(
    request: web.Request, body: bytes, answer: web.Response, pause: float, state: State
) -> web.StreamResponse:
    """A slow-loris node: the headers (with the full Content-Length) at once, then the body a
    byte at a time for as long as the client reads; only the client's own deadline ends it. A
    server that stops hangs up instead."""
    assert state.stopping is not None
    out = web.StreamResponse(status=answer.status, reason=answer.reason, headers=answer.headers)
    out.content_length = len(body)
    try:
        await out.prepare(request)
        for i in range(len(body)):
            await out.write(body[i : i + 1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), pause)
            if state.stopping.is_set():
                if request.transport is not None:
                    request.transport.close()
                break
    except ConnectionError:
        pass  # the client gave up
    return out


async def post_prompt(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError(body)
    except ValueError:
        return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
    if "number" in body:
        number = float(body["number"])
    else:
        number = -state.counter if body.get("front") else state.counter
        state.counter += 1
    prompt = body.get("prompt")
    if "prompt" not in body or not isinstance(prompt, dict):
        error = problem("no_prompt", "No prompt provided", "No prompt provided")
        return answer({"error": error, "node_errors": {}}, 400)
    status, result, outputs = validate(prompt, state)
    if status != 200:
        return answer(result, status)
    prompt_id = str(body.get("prompt_id") or uuid.uuid4())
    extra = dict(body.get("extra_data") or {})
    if body.get("client_id"):
        extra["client_id"] = body["client_id"]
    heapq.heappush(state.pending, [number, prompt_id, prompt, extra, outputs])
    assert state.wake is not None
    state.wake.set()
    await state.status()
    return answer({"prompt_id": prompt_id, "number": number, "node_errors": result["node_errors"]})


async def get_prompt(request: web.Request) -> web.Response:
    return answer({"exec_info": {"queue_remaining": request.app[STATE].remaining()}})


async def get_queue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    running = [state.running] if state.running else []
    return answer({"queue_running": running, "queue_pending": list(state.pending)})


async def post_queue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.json()
    if body.get("clear"):
        state.pending.clear()
    if "delete" in body:
        gone = set(body["delete"])
        state.pending[:] = [item for item in state.pending if item[1] not in gone]
        heapq.heapify(state.pending)
    await state.status()
    return web.Response()


async def get_history(request: web.Request) -> web.Response:
    state = request.app[STATE]
    history = state.history
    count = int(request.query.get("max_items", len(history)) or len(history))
    return answer(padded(dict(list(history.items())[-count:]) if count else {}, state.knobs))


async def get_history_item(request: web.Request) -> web.Response:
    state = request.app[STATE]
    prompt_id = request.match_info["prompt_id"]
    entry = state.history.get(prompt_id)
    return answer(padded({prompt_id: entry}, state.knobs) if entry else {})


def padded(entries: dict[str, Any], knobs: Knobs) -> dict[str, Any]:
    """The history_padding_mb knob: the answer's entries share that many MB of junk, put where a
    real frontend's whole UI graph goes (extra_data's extra_pnginfo). The stored entries stay."""
    if not knobs.history_padding_mb or not entries:
        return entries
    share = knobs.history_padding_mb * 1024 * 1024 // len(entries)
    out = {}
    for prompt_id, entry in entries.items():
        number, pid, prompt, extra, outputs = entry["prompt"]
        pnginfo = extra.get("extra_pnginfo")
        pnginfo = {**(pnginfo if isinstance(pnginfo, dict) else {}), "padding": "x" * share}
        out[prompt_id] = {**entry, "prompt": [number, pid, prompt, {**extra, "extra_pnginfo": pnginfo}, outputs]}
    return out


async def post_history(request: web.Request) -> web.Response:
    history = request.app[STATE].history
    body = await request.json()
    if body.get("clear"):
        history.clear()
    for prompt_id in body.get("delete", []):
        history.pop(prompt_id, None)
    return web.Response()


async def view(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    name = request.query.get("filename", "")
    if not name:
        return web.Response(status=404)
    if name.startswith("/") or ".." in name or "\\" in name:
        return web.Response(status=400)
    base = state.dirs.get(request.query.get("type", "output"))
    if base is None:
        return web.Response(status=400)
    folder = inside(base, request.query.get("subfolder", ""))
    if folder is None:
        return web.Response(status=403)
    path = folder / os.path.basename(name)
    if not path.is_file():
        return web.Response(status=404)
    disposition = {"Content-Disposition": f'filename="{path.name}"'}
    preview = request.query.get("preview", "")
    if preview.startswith("webp") and path.suffix in (".png", ".webp", ".jpg"):
        quality = int(preview.split(";")[1]) if ";" in preview else 90
        buf = io.BytesIO()
        with Image.open(path) as img:
            img.convert("RGB").save(buf, "WEBP", quality=quality)
        return web.Response(body=buf.getvalue(), content_type="image/webp", headers=disposition)
    content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    if trickling(request, state.knobs) is not None:
        # The trickle knob slows answers whose body it can read; a FileResponse has none.
        return web.Response(body=path.read_bytes(), content_type=content_type, headers=disposition)
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


async def upload_image(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    image = form.get("image")
    if not isinstance(image, web.FileField):
        return web.Response(status=400)
    kind = str(form.get("type") or "input")
    subfolder = str(form.get("subfolder") or "")
    overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
    base = state.dirs.get(kind)
    folder = inside(base, subfolder) if base else None
    name = image.filename or ""
    if folder is None or not safe_name(name):
        return web.Response(status=400)
    data = image.file.read()
    state.uploads.append(Upload(name, subfolder, kind, len(data)))
    folder.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(name)
    path, i = folder / name, 1
    # The same bytes under the same name are the same upload, left as they are (so LoadVideo's
    # modification time stays); different bytes get "name (1).png".
    while not overwrite and path.exists() and path.read_bytes() != data:
        path, i = folder / f"{stem} ({i}){ext}", i + 1
    if overwrite or not path.exists():
        path.write_bytes(data)
    return answer({"name": path.name, "subfolder": subfolder, "type": kind})


async def interrupt(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {}
    if request.can_read_body:
        with contextlib.suppress(ValueError):
            body = await request.json() or {}
    wanted = body.get("prompt_id") if isinstance(body, dict) else None
    if wanted is None or (state.running and state.running[1] == wanted):
        state.interrupted = True
    else:
        log.info("simulated ComfyUI: interrupt for %s, which is not running", wanted)
    return web.Response()


async def system_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ram = 64 * 1024**3
    system = {
        "os": "posix",
        "ram_total": ram,
        "ram_free": ram // 2,
        "comfyui_version": VERSION,
        "required_frontend_version": "1.27.10",
        "installed_templates_version": "0.1.95",
        "required_templates_version": "0.1.95",
        "python_version": "3.11.7 (simulated)",
        "pytorch_version": "2.14.1+cu130",
        "embedded_python": False,
        "argv": ["main.py", "--listen", request.host.rsplit(":", 1)[0], "--simulated"],
    }
    return answer({"system": system, "devices": state.knobs.devices})


async def object_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    info = await asyncio.get_running_loop().run_in_executor(None, state.object_info)
    name = request.match_info.get("node_class")
    if name is not None:
        return answer({name: info[name]} if name in info else {})
    return answer(info)


async def model_folders(request: web.Request) -> web.Response:
    return answer(MODEL_FOLDERS)


async def models(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    return answer(request.app[STATE].knobs.models.get(folder, []))


async def embeddings(request: web.Request) -> web.Response:
    names = request.app[STATE].knobs.models.get("embeddings", [])
    return answer([os.path.splitext(n)[0] for n in names])


async def features(request: web.Request) -> web.Response:
    return answer({"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD})


async def free(request: web.Request) -> web.Response:
    return web.Response()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if request.transport is not None:
        ws[TRANSPORT] = request.transport
        request.transport.set_write_buffer_limits(high=UNBOUNDED)
    sid = request.query.get("clientId") or uuid.uuid4().hex
    # A second socket with the same clientId replaces the first (PROTOCOL.md, surprise 10).
    state.sockets[sid] = ws
    state.open.add(ws)
    try:
        await ws.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": state.remaining()}}, "sid": sid},
            }
        )
        if state.client_id == sid and state.current_node:
            await ws.send_json({"type": "executing", "data": {"node": state.current_node}})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            with contextlib.suppress(ValueError, AttributeError):
                parsed = json.loads(msg.data)
                if parsed.get("type") == "feature_flags":
                    ws[METADATA] = bool(parsed.get("data", {}).get("supports_preview_metadata"))
                    await ws.send_json(
                        {
                            "type": "feature_flags",
                            "data": {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD},
                        }
                    )
    finally:
        state.open.discard(ws)
        # Deliberately unconditional, as in ComfyUI: closing an old socket silences its replacement.
        state.sockets.pop(sid, None)
    return ws


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(state: State) -> web.Application:
    app = web.Application(middlewares=[faults], client_max_size=MAX_UPLOAD)
    app[STATE] = state

    async def startup(app: web.Application) -> None:
        state.wake = asyncio.Event()
        state.stopping = asyncio.Event()
        state.outbox = asyncio.Queue()
        if state.pending:
            state.wake.set()
        loop = asyncio.get_running_loop()
        state.worker = loop.create_task(worker(state))
        state.publisher = loop.create_task(publish(state))

    async def shutdown(app: web.Application) -> None:
        assert state.stopping is not None
        state.stopping.set()  # trickling answers end
        await stop_task(state.publisher)
        await asyncio.gather(*(hang_up(ws) for ws in list(state.open)))

    async def cleanup(app: web.Application) -> None:
        await stop_task(state.worker)

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    app.router.add_post("/prompt", post_prompt)
    app.router.add_get("/prompt", get_prompt)
    app.router.add_get("/queue", get_queue)
    app.router.add_post("/queue", post_queue)
    app.router.add_get("/history", get_history)
    app.router.add_get("/history/{prompt_id}", get_history_item)
    app.router.add_post("/history", post_history)
    app.router.add_get("/view", view)
    app.router.add_post("/upload/image", upload_image)
    app.router.add_post("/interrupt", interrupt)
    app.router.add_post("/free", free)
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/object_info", object_info)
    app.router.add_get("/object_info/{node_class}", object_info)
    app.router.add_get("/models", model_folders)
    app.router.add_get("/models/{folder}", models)
    app.router.add_get("/embeddings", embeddings)
    app.router.add_get("/features", features)
    app.router.add_get("/ws", websocket)
    return app


class SimComfyUI:
    """A simulated ComfyUI on host:port (port 0 picks a free one), with files under `root`
    (a temporary folder removed on close when not given). Change `.knobs` at any time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, root: Path | None = None, **knobs: Any) -> None:
        self.host = host
        self.port = port
        self.knobs = Knobs(**knobs)
        self.owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="sim-comfyui-")) if root is None else Path(root)
        self.uploads: list[Upload] = []
        self.state = State(self.knobs, self.root, self.uploads)
        self.server: Server | None = None
        # A test, its teardown and a restart's timer may start and stop it from different threads.
        self.lock = threading.RLock()
        self.up = threading.Event()
        self.comeback: threading.Timer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.state.dirs["output"]

    @property
    def uploaded(self) -> list[Upload]:
        """Every file POST /upload/image received since this object was made, restarts included."""
        return list(self.uploads)

    @property
    def uploaded_bytes(self) -> int:
        return sum(u.size for u in self.uploads)

    def start(self) -> SimComfyUI:
        """Listen (again, on the same port after a stop: between the two, connections are refused)."""
        with self.lock:
            self.cancel_comeback()
            state = self.state
            self.server = Server(lambda: make_app(state), self.host, self.port).start()
            self.port = self.server.port
            self.up.set()
        return self

    def stop(self) -> None:
        with self.lock:
            self.cancel_comeback()
            self.up.clear()
            self.knobs.hang = False  # let hanging requests finish so the server can stop
            if self.server:
                self.server.stop()
                self.server = None

    def restart(self) -> None:
        """Like restarting the real process: queue, history and cache are gone, files stay.

        With the down_after_restart knob nothing listens for that many seconds, as a real one
        loading its node classes (surprise 15): this returns at once and the server comes back
        by itself; wait_up() waits for it."""
        with self.lock:
            self.stop()
            self.state = State(self.knobs, self.root, self.uploads)
            delay = self.knobs.down_after_restart
            if delay <= 0:
                self.start()
                return
            self.comeback = threading.Timer(delay, self.come_back)
            self.comeback.daemon = True
            self.comeback.start()

    def come_back(self) -> None:
        with self.lock:
            # A stop() or start() since the restart cancelled this timer, perhaps too late.
            if self.comeback is threading.current_thread():
                try:
                    self.start()
                except Exception:
                    log.exception("simulated ComfyUI on %s: could not come back after a restart", self.url)

    def cancel_comeback(self) -> None:
        if self.comeback is not None:
            self.comeback.cancel()
            self.comeback = None

    def wait_up(self, timeout: float = 10) -> SimComfyUI:
        """Wait until the server listens: at once when it does, else for the rest of a restart's
        down_after_restart."""
        if not self.up.wait(timeout):
            raise TimeoutError(f"the simulated ComfyUI on {self.url} was not up within {timeout:g} s")
        return self

    def close(self) -> None:
        self.stop()
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, fn: Callable[[State], Coroutine[Any, Any, object]]) -> object:
        """Run a coroutine function on the server's loop with its state, and return its result."""
        assert self.server is not None, "the simulated ComfyUI is not running"
        return asyncio.run_coroutine_threadsafe(fn(self.state), self.server.loop).result(timeout=10)

    def drop_websockets(self) -> None:
        """Close every WebSocket from the server side, as a crash or a proxy timeout would."""

        async def drop(state: State) -> None:
            await asyncio.gather(*(hang_up(ws) for ws in list(state.open)))

        self.run(drop)

    def __enter__(self) -> SimComfyUI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
