"""The ComfyUI client: everything Spoon Feeder asks a ComfyUI server, over HTTP and its WebSocket.

How the real server answers is written down in ../shared/comfyui/PROTOCOL.md; the surprises there
(history `{}` until done, `executing null` after success, events only for the submitting clientId,
heap-ordered queue) are handled here so callers do not meet them.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote, urlencode, urlsplit

import websocket

from nodes.clients import AnswerTooLarge, ServiceError
from nodes.clients.http import (
    CONNECT_TIMEOUT,
    MAX_ANSWER_BYTES,
    READ_TIMEOUT,
    TooDeep,
    amount,
    body_pieces,
    deadline_after,
    declared_length,
    http_error,
    json_request,
    loads,
    read_limited,
    request,
    session,
)

# A real /object_info is about 1 MB, several MB with many custom nodes; tens of MB is not ComfyUI.
OBJECT_INFO_LIMIT = 16 * 1024 * 1024
# Outputs are images and short videos; a larger file is refused rather than filling the disk.
DOWNLOAD_LIMIT = 2 * 1024**3
# Files move to and from a node at least this fast (bytes per second), or the copy is given up: a
# LAN moves tens of MB a second, a poor Wi-Fi link a few. A file's deadline is the usual one for a
# call plus a second per MB it declares (or may be, when it declares no length).
TRANSFER_RATE = 1024 * 1024

# Binary WebSocket frames: a big-endian u32 event type first.
PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}


class WorkflowRejected(ServiceError):
    """ComfyUI refused the workflow (HTTP 400): sending it again cannot help."""

    def __init__(self, url: str, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        self.error = error
        self.node_errors = node_errors
        super().__init__(f"{url}: workflow rejected: {explain(error, node_errors)}", permanent=True, status=400)


def explain(error: dict[str, Any], node_errors: dict[str, Any]) -> str:
    """One readable line per problem: node id, class and each error message."""
    head = str(error.get("message") or error.get("type") or "invalid workflow")
    if error.get("details") and not node_errors:
        head += f" ({error['details']})"
    lines = [head]
    for node_id, entry in sorted(node_errors.items(), key=lambda kv: str(kv[0])):
        entry = entry if isinstance(entry, dict) else {}
        for e in entry.get("errors", []):
            e = e if isinstance(e, dict) else {"message": str(e)}
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {e.get('message', '?')}{detail}")
    return "; ".join(lines)


# Payload shapes.


class Submitted(TypedDict):
    prompt_id: str
    number: float
    node_errors: dict[str, Any]


class Uploaded(TypedDict):
    name: str
    subfolder: str
    type: str


class FileRef(TypedDict):
    filename: str
    subfolder: str
    type: str


class NodeOutput(TypedDict, total=False):
    images: list[FileRef]
    animated: list[bool]
    audio: list[FileRef]  # SaveAudio and its kin: sound files


class HistoryStatus(TypedDict):
    status_str: str
    completed: bool
    messages: list[list[Any]]


class HistoryEntry(TypedDict):
    prompt: list[Any]
    outputs: dict[str, NodeOutput]
    status: HistoryStatus
    meta: NotRequired[dict[str, Any]]


class Device(TypedDict, total=False):
    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


class SystemStats(TypedDict):
    system: dict[str, Any]
    devices: list[Device]


@dataclass(frozen=True)
class QueueItem:
    number: float
    prompt_id: str
    client_id: str | None
    prompt: dict[str, Any]
    outputs: list[str]


@dataclass(frozen=True)
class NodeQueue:
    """What a ComfyUI's own queue holds (not our render queue, renders.models.Queue)."""

    running: list[QueueItem]
    pending: list[QueueItem]  # in the order they will run, unlike the server's heap order

    def __contains__(self, prompt_id: object) -> bool:
        return any(item.prompt_id == prompt_id for item in self.running + self.pending)

    def position(self, prompt_id: str) -> int | None:
        """0 while running, 1 for the next to run, …; None when not queued."""
        for i, item in enumerate(self.running + self.pending):
            if item.prompt_id == prompt_id:
                return i if self.running else i + 1
        return None


# Where a prompt of ours stands on its node (Standing.where).
QUEUED, RUNNING, FINISHED, GONE = "queued", "running", "finished", "gone"
# How long "in neither /queue nor /history" must last before it means the node no longer has the
# prompt: the history entry can come after execution_success (PROTOCOL.md, surprise 12: 8-16 ms
# on an idle machine, longer under load), so a prompt that just ended can be in neither for a while.
HISTORY_SETTLE = 5.0


@dataclass(frozen=True)
class Standing:
    where: str  # QUEUED, RUNNING, FINISHED (with its history entry) or GONE
    entry: HistoryEntry | None = None


def outputs_of(entry: HistoryEntry) -> list[FileRef]:
    """Every file a finished prompt wrote, in node order."""
    files: list[FileRef] = []
    for node in entry.get("outputs", {}).values():
        files.extend(node.get("images", []))
        files.extend(node.get("audio", []))
    return files


def succeeded(entry: HistoryEntry) -> bool:
    return entry["status"]["status_str"] == "success"


def failure(entry: HistoryEntry) -> dict[str, Any] | None:
    """The execution_error or execution_interrupted data of a failed prompt."""
    for kind, data in reversed(entry["status"].get("messages", [])):
        if kind in ("execution_error", "execution_interrupted"):
            return {"type": kind, **data}
    return None


def node_seconds(entry: HistoryEntry) -> float | None:
    """How long the node itself ran the prompt (execution_start to execution_success)."""
    stamps = {
        kind: data.get("timestamp") for kind, data in entry["status"].get("messages", []) if isinstance(data, dict)
    }
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
        return (end - start) / 1000
    return None


# WebSocket messages. `data` keeps the whole payload for anything not given a field.


@dataclass(frozen=True)
class Message:
    type: str
    data: dict[str, Any] = field(repr=False)

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class Status(Message):
    queue_remaining: int
    sid: str | None


@dataclass(frozen=True)
class ExecutionStart(Message):
    pass


@dataclass(frozen=True)
class ExecutionCached(Message):
    nodes: list[str]


@dataclass(frozen=True)
class Executing(Message):
    """node None means the prompt is over (it comes after execution_success or the error)."""

    node: str | None


@dataclass(frozen=True)
class Progress(Message):
    node: str | None
    value: float
    max: float


@dataclass(frozen=True)
class ProgressState(Message):
    nodes: dict[str, Any]


@dataclass(frozen=True)
class Executed(Message):
    node: str
    output: NodeOutput


@dataclass(frozen=True)
class ExecutionSuccess(Message):
    pass


@dataclass(frozen=True)
class ExecutionError(Message):
    node: str | None
    node_type: str
    exception_type: str
    exception_message: str


@dataclass(frozen=True)
class ExecutionInterrupted(Message):
    node: str | None
    node_type: str
    executed: list[str]


@dataclass(frozen=True)
class FeatureFlags(Message):
    pass


@dataclass(frozen=True)
class Preview(Message):
    """A binary preview image; metadata (node_id, prompt_id, …) only with the feature flag."""

    image: bytes = field(repr=False)
    format: str
    metadata: dict[str, Any] | None

    @property
    def prompt_id(self) -> str | None:
        value = (self.metadata or {}).get("prompt_id")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class Text(Message):
    node: str
    text: str


@dataclass(frozen=True)
class Binary(Message):
    """A binary frame of a type this client does not know."""

    event: int
    payload: bytes = field(repr=False)


def parse_text(raw: str | bytes, url: str) -> Message:
    try:
        decoded = loads(raw)
    except TooDeep as e:
        raise ServiceError(f"{url}: the WebSocket sent {e}", permanent=True) from None
    except ValueError:
        raise ServiceError(f"{url}: the WebSocket sent something that is not JSON", permanent=True) from None
    if not isinstance(decoded, dict):
        raise ServiceError(f"{url}: the WebSocket sent JSON that is not a message", permanent=True)
    kind = str(decoded.get("type", ""))
    data = decoded.get("data")
    data = data if isinstance(data, dict) else {}
    match kind:
        case "status":
            info = data.get("status", {}).get("exec_info", {})
            return Status(kind, data, int(info.get("queue_remaining", 0)), data.get("sid"))
        case "execution_start":
            return ExecutionStart(kind, data)
        case "execution_cached":
            return ExecutionCached(kind, data, [str(n) for n in data.get("nodes", [])])
        case "executing":
            node = data.get("node")
            return Executing(kind, data, str(node) if node is not None else None)
        case "progress":
            node = data.get("node")
            value, top = float(data.get("value", 0)), float(data.get("max", 0))
            return Progress(kind, data, str(node) if node is not None else None, value, top)
        case "progress_state":
            return ProgressState(kind, data, dict(data.get("nodes", {})))
        case "executed":
            return Executed(kind, data, str(data.get("node")), data.get("output") or {})
        case "execution_success":
            return ExecutionSuccess(kind, data)
        case "execution_error":
            return ExecutionError(
                kind,
                data,
                data.get("node_id"),
                str(data.get("node_type", "")),
                str(data.get("exception_type", "")),
                str(data.get("exception_message", "")),
            )
        case "execution_interrupted":
            executed = [str(n) for n in data.get("executed", [])]
            return ExecutionInterrupted(kind, data, data.get("node_id"), str(data.get("node_type", "")), executed)
        case "feature_flags":
            return FeatureFlags(kind, data)
    return Message(kind, data)


def parse_binary(frame: bytes, url: str) -> Message:
    if len(frame) < 8:
        raise ServiceError(f"{url}: the WebSocket sent a truncated binary frame", permanent=True)
    (event,) = struct.unpack(">I", frame[:4])
    if event == PREVIEW_IMAGE:
        (fmt,) = struct.unpack(">I", frame[4:8])
        return Preview("preview", {}, frame[8:], IMAGE_FORMATS.get(fmt, "application/octet-stream"), None)
    if event in (PREVIEW_IMAGE_WITH_METADATA, TEXT):
        (size,) = struct.unpack(">I", frame[4:8])
        head, rest = frame[8 : 8 + size], frame[8 + size :]
        if len(head) != size:
            raise ServiceError(f"{url}: the WebSocket sent a truncated binary frame", permanent=True)
        if event == TEXT:
            return Text("text", {}, head.decode("utf-8", "replace"), rest.decode("utf-8", "replace"))
        try:
            meta = loads(head)
        except TooDeep as e:
            raise ServiceError(f"{url}: a preview frame's metadata is {e}", permanent=True) from None
        except ValueError:
            raise ServiceError(f"{url}: a preview frame has unreadable metadata", permanent=True) from None
        meta = meta if isinstance(meta, dict) else {}
        return Preview("preview", meta, rest, str(meta.get("image_type", "image/png")), meta)
    return Binary("binary", {}, event, frame[4:])


class Events:
    """ComfyUI's WebSocket for one client_id: a context manager and an iterator of Messages.

    Iterating raises ServiceError (retryable) when the socket drops or stays silent for `timeout`
    seconds; receive() returns None on silence instead, for callers with their own deadline."""

    def __init__(self, base_url: str, client_id: str, *, timeout: float = READ_TIMEOUT, metadata: bool = True) -> None:
        parts = urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws?{urlencode({'clientId': client_id})}"
        self.timeout = timeout
        self.metadata = metadata
        self.ws: websocket.WebSocket | None = None

    def __enter__(self) -> Events:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            # No proxy from the environment, as for HTTP (nodes.clients.http.session).
            self.ws = websocket.create_connection(
                self.url, timeout=CONNECT_TIMEOUT, http_no_proxy=["*"], skip_utf8_validation=True
            )
            if self.metadata:
                flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
                self.ws.send(json.dumps(flags))
        except websocket.WebSocketBadStatusException as e:
            self.close()
            # A 200 HTML page or a 404 is not ComfyUI and will not become it; a 502/503 may pass.
            permanent = e.status_code not in (429, 500, 502, 503, 504)
            raise ServiceError(
                f"{self.url}: WebSocket refused (HTTP {e.status_code})",
                permanent=permanent,
                status=e.status_code,
            ) from e
        except (OSError, websocket.WebSocketException) as e:
            self.close()
            raise self.failed(e) from e

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
            self.ws = None

    def failed(self, e: Exception) -> ServiceError:
        if isinstance(e, ConnectionRefusedError):
            return ServiceError(f"{self.url}: connection refused (is ComfyUI running on that port?)")
        if isinstance(e, websocket.WebSocketTimeoutException | TimeoutError):
            return ServiceError(f"{self.url}: no answer in time")
        if isinstance(e, websocket.WebSocketConnectionClosedException):
            return ServiceError(f"{self.url}: the WebSocket was closed by the server")
        text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if "Handshake status" in text or "Invalid WebSocket Header" in text:
            return ServiceError(f"{self.url}: this is not a ComfyUI WebSocket ({text})", permanent=True)
        return ServiceError(f"{self.url}: WebSocket failed ({text})")

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None when nothing came within `timeout` seconds."""
        if self.ws is None:
            raise ServiceError(f"{self.url}: the WebSocket is not open")
        self.ws.settimeout(max(timeout, 0.001))
        try:
            opcode, payload = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as e:
            self.close()
            raise self.failed(e) from e
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            raise ServiceError(f"{self.url}: the WebSocket was closed by the server")
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return parse_binary(payload, self.url)
        return parse_text(payload, self.url)

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        message = self.receive(self.timeout)
        if message is None:
            raise ServiceError(f"{self.url}: no message for {self.timeout:g} s")
        return message


class ComfyUI:
    """One ComfyUI server, e.g. ComfyUI("http://10.0.0.5:8188"). Every failure is a ServiceError.

    `timeout` is how long each wait for the answer may last; a call ends by http.DEADLINE_READS
    times that in all (a file, by more for each MB: TRANSFER_RATE), however slowly it comes."""

    def __init__(self, base_url: str, *, timeout: float = READ_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session()

    def close(self) -> None:
        """Close the connections kept for the next question (or use the client as a context manager)."""
        self.session.close()

    def __enter__(self) -> ComfyUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def get(
        self,
        path: str,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        limit: int = MAX_ANSWER_BYTES,
        **kwargs: Any,
    ) -> Any:
        """A JSON answer, complete by `deadline` (a time.monotonic() instant; by default
        http.DEADLINE_READS read timeouts from now)."""
        timeout = timeout or self.timeout
        return json_request(
            self.session, "GET", self.url(path), timeout=timeout, deadline=deadline, limit=limit, **kwargs
        )

    def post(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> None:
        """A POST whose answer is an empty 200."""
        url = self.url(path)
        timeout = timeout or self.timeout
        deadline = deadline_after(timeout)
        response = request(self.session, "POST", url, timeout=timeout, deadline=deadline, json=body)
        answer = read_limited(response, url, 1024 * 1024, deadline=deadline)
        if response.status_code != 200:
            raise http_error(url, response.status_code, answer)

    # Inventory.

    def system_stats(self, timeout: float | None = None, *, deadline: float | None = None) -> SystemStats:
        stats = self.get("/system_stats", timeout=timeout, deadline=deadline)
        if not isinstance(stats, dict) or not isinstance(stats.get("system"), dict):
            raise ServiceError(f"{self.url('/system_stats')}: not a ComfyUI answer", permanent=True)
        stats.setdefault("devices", [])
        result: SystemStats = stats  # type: ignore[assignment]
        return result

    def version(self, timeout: float | None = None, *, deadline: float | None = None) -> str:
        return str(self.system_stats(timeout, deadline=deadline)["system"].get("comfyui_version", ""))

    def object_info(self, node_class: str | None = None, *, deadline: float | None = None) -> dict[str, Any]:
        """Every node class the server can run, keyed by name; or just one ({} if unknown)."""
        path = "/object_info" if node_class is None else f"/object_info/{quote(node_class, safe='')}"
        info = self.get(path, deadline=deadline, limit=OBJECT_INFO_LIMIT)
        if not isinstance(info, dict):
            raise ServiceError(f"{self.url(path)}: not a ComfyUI answer", permanent=True)
        return info

    def model_folders(self, *, deadline: float | None = None) -> list[str]:
        return [str(name) for name in self.get("/models", deadline=deadline)]

    def models(self, folder: str, *, deadline: float | None = None) -> list[str]:
        """The model files of one folder ("checkpoints", "loras", …)."""
        return [str(name) for name in self.get(f"/models/{quote(folder, safe='')}", deadline=deadline)]

    def embeddings(self) -> list[str]:
        return [str(name) for name in self.get("/embeddings")]

    def features(self) -> dict[str, Any]:
        return dict(self.get("/features"))

    # Prompts.

    def submit(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        client_id: str,
        front: bool = False,
        number: float | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> Submitted:
        """Queue an API-format workflow under our own prompt_id (so a retry cannot run it twice
        unnoticed). ComfyUI runs its queue in order of `number` (its own counter when none is
        given), whatever order the prompts arrived in. Non-empty node_errors in the answer means
        only some outputs will run."""
        url = self.url("/prompt")
        body: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        if front:
            body["front"] = True
        if number is not None:
            body["number"] = number
        if extra_data:
            body["extra_data"] = extra_data
        deadline = deadline_after(self.timeout)
        response = request(self.session, "POST", url, timeout=self.timeout, deadline=deadline, json=body)
        raw = read_limited(response, url, MAX_ANSWER_BYTES, deadline=deadline)
        if response.status_code == 400:
            try:
                answer = loads(raw)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                raise WorkflowRejected(url, answer["error"], dict(answer.get("node_errors") or {}))
        if response.status_code != 200:
            raise http_error(url, response.status_code, raw)
        try:
            answer = loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise ServiceError(f"{url}: not a ComfyUI answer ({raw[:60]!r})", permanent=True)
        return {
            "prompt_id": str(answer["prompt_id"]),
            "number": answer.get("number", 0),
            "node_errors": dict(answer.get("node_errors") or {}),
        }

    def queue(self) -> NodeQueue:
        answer = self.get("/queue")

        def items(key: str) -> list[QueueItem]:
            found = []
            for raw in answer.get(key, []):
                number, prompt_id, prompt, extra, outputs = (list(raw) + [None] * 5)[:5]
                extra = extra if isinstance(extra, dict) else {}
                found.append(
                    QueueItem(number or 0, str(prompt_id), extra.get("client_id"), prompt or {}, list(outputs or []))
                )
            return sorted(found, key=lambda item: item.number)

        if not isinstance(answer, dict):
            raise ServiceError(f"{self.url('/queue')}: not a ComfyUI answer", permanent=True)
        return NodeQueue(running=items("queue_running"), pending=items("queue_pending"))

    def standing(self, prompt_id: str, *, settle: float = HISTORY_SETTLE) -> Standing:
        """Where our prompt stands, as the node itself says: queued, running, finished (with its
        history entry), or gone: in neither /queue nor /history, and still in neither after
        `settle` seconds (never received, deleted before it ran, or forgotten by a restart). The
        node decides whether a job ran; one that cannot be asked raises ServiceError, which
        proves nothing either way."""
        deadline = time.monotonic() + settle
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return Standing(FINISHED, entry)
            queue = self.queue()
            if any(item.prompt_id == prompt_id for item in queue.running):
                return Standing(RUNNING)
            if prompt_id in queue:
                return Standing(QUEUED)
            if time.monotonic() >= deadline:
                return Standing(GONE)
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    def queue_remaining(self) -> int:
        return int(self.get("/prompt").get("exec_info", {}).get("queue_remaining", 0))

    def history(self, prompt_id: str) -> HistoryEntry | None:
        """The finished prompt's entry; None while it is queued or running (or unknown)."""
        answer = self.get(f"/history/{quote(prompt_id, safe='')}")
        entry = answer.get(prompt_id) if isinstance(answer, dict) else None
        if not isinstance(entry, dict):
            return None
        entry.setdefault("outputs", {})
        entry.setdefault("status", {"status_str": "", "completed": False, "messages": []})
        result: HistoryEntry = entry  # type: ignore[assignment]
        return result

    def delete_history(self, prompt_ids: list[str]) -> None:
        self.post("/history", {"delete": prompt_ids})

    def clear_history(self) -> None:
        self.post("/history", {"clear": True})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only that one, when prompt_id is given). ComfyUI checks between
        nodes and at progress updates, so the prompt may run on for a while."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts; a running one is not touched (interrupt it)."""
        self.post("/queue", {"delete": prompt_ids})

    def clear_queue(self) -> None:
        self.post("/queue", {"clear": True})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # Files.

    def file_url(self, filename: str, subfolder: str = "", type: str = "output") -> str:
        check_name(filename)
        return self.url("/view?" + urlencode({"filename": filename, "subfolder": subfolder, "type": type}))

    def view(self, filename: str, subfolder: str = "", type: str = "output", *, limit: int = MAX_ANSWER_BYTES) -> bytes:
        url = self.file_url(filename, subfolder, type)
        deadline = deadline_after(self.timeout)
        response = request(self.session, "GET", url, timeout=self.timeout, deadline=deadline)
        if response.status_code != 200:
            raise http_error(url, response.status_code, read_limited(response, url, 65536, deadline=deadline))
        deadline += (declared_length(response) or limit) / TRANSFER_RATE
        return read_limited(response, url, limit, deadline=deadline)

    def download(self, filename: str, subfolder: str, type: str, dest: Path, *, limit: int = DOWNLOAD_LIMIT) -> Path:
        """Stream an output to `dest` (a file, or a folder to put it in under its own name).
        The file appears complete or not at all, by a deadline that grows with its size
        (TRANSFER_RATE); the connection is closed however the download ends."""
        url = self.file_url(filename, subfolder, type)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / filename
        deadline = deadline_after(self.timeout)
        response = request(self.session, "GET", url, timeout=self.timeout, deadline=deadline)
        if response.status_code != 200:
            raise http_error(url, response.status_code, read_limited(response, url, 65536, deadline=deadline))
        declared = declared_length(response)
        if declared > limit:
            response.close()
            raise AnswerTooLarge(f"{url}: file too large ({amount(declared)}, over {amount(limit)})")
        deadline += (declared or limit) / TRANSFER_RATE
        fd, partial = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in body_pieces(response, url, deadline, 1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise AnswerTooLarge(f"{url}: file too large (over {amount(limit)})")
                    out.write(chunk)
            os.replace(partial, dest)
        finally:
            response.close()
            if os.path.exists(partial):
                os.unlink(partial)
        return dest

    def upload_image(self, name: str, data: bytes, *, subfolder: str = "", overwrite: bool = False) -> Uploaded:
        """Put an input image on the server. It may be stored under another name ("x (1).png")
        when a different file already has this one: use the answer's name in the workflow."""
        check_name(name)
        url = self.url("/upload/image")
        form = {"subfolder": subfolder, "type": "input", "overwrite": "true" if overwrite else "false"}
        deadline = deadline_after(self.timeout) + len(data) / TRANSFER_RATE
        response = request(
            self.session, "POST", url, timeout=self.timeout, deadline=deadline, files={"image": (name, data)}, data=form
        )
        body = read_limited(response, url, 1024 * 1024, deadline=deadline)
        if response.status_code != 200:
            raise http_error(url, response.status_code, body)
        try:
            answer = loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "name" not in answer:
            raise ServiceError(f"{url}: not a ComfyUI answer ({body[:60]!r})", permanent=True)
        return {
            "name": str(answer["name"]),
            "subfolder": str(answer.get("subfolder", "")),
            "type": str(answer.get("type", "input")),
        }

    # Following a prompt.

    def events(self, client_id: str, *, timeout: float = READ_TIMEOUT, metadata: bool = True) -> Events:
        """The WebSocket for client_id: `with client.events(cid) as ev: for message in ev: …`.
        Open it before submitting: events sent while nobody listens are lost."""
        return Events(self.base_url, client_id, timeout=timeout, metadata=metadata)


def check_name(name: str) -> None:
    """Remote file names are data: refuse any that could leave a folder when used as a path."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise ServiceError(f"refusing the file name {name!r}: it is not a plain file name", permanent=True)
