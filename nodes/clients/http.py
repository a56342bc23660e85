"""HTTP plumbing shared by the service clients: timeouts, deadlines, size limits and errors that
say what went wrong. Nothing here knows about Ollama or ComfyUI.

Every call to a node ends by a deadline (a time.monotonic() instant), however its answer comes. A
read timeout alone does not do it: a server that sends a byte every few seconds never trips one,
and held a worker for as long as it liked. So a request's waits are cut to the time left, and its
body is read as it arrives (`body_pieces()`), checking the deadline between reads."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3

from nodes.clients import AnswerTooLarge, ServiceError, ServiceTimeout

# Connecting is quick on a LAN or it is not happening; reading may wait on a GPU.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
# A call given no deadline of its own ends this many read timeouts after it starts: a healthy
# server's first byte comes within one and the rest moments later; the second is room for a slow
# network, and a trickle is cut off there.
DEADLINE_READS = 2
# The most bytes one read asks for.
CHUNK = 65536
# Larger answers are refused rather than read into memory (a real /object_info is about 1 MB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
USER_AGENT = "SpoonFeeder/0.1"
# Deeper JSON is refused: nothing ComfyUI or Ollama sends nests past a dozen levels (a history entry
# holds a workflow whose inputs may nest 32, renders.workflows.MAX_DEPTH), while Python's own walks
# of a value (repr, copy.deepcopy, json.dumps into the database) fail a few hundred levels down.
MAX_DEPTH = 64


def session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    # Never route the lab's traffic through a proxy taken from the environment.
    s.trust_env = False
    return s


def port_open(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections there: discovery's first, cheap question."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe(e: requests.RequestException, url: str) -> ServiceError:
    """Turn a requests failure into a ServiceError a user can act on."""
    if isinstance(e, requests.exceptions.SSLError):
        return ServiceError(f"{url}: TLS error ({e.__class__.__name__})", permanent=True)
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return ServiceError(f"{url}: no answer within {CONNECT_TIMEOUT:g} s (is the machine on?)", reached=False)
    if isinstance(e, requests.exceptions.ReadTimeout):
        return ServiceTimeout(f"{url}: connected, but no answer in time (busy or loading a model?)")
    if isinstance(e, requests.exceptions.ConnectionError):
        text = str(e)
        if "Connection refused" in text:
            return ServiceError(f"{url}: connection refused (is the server running on that port?)", reached=False)
        if "RemoteDisconnected" in text:
            return ServiceError(f"{url}: the server closed the connection without answering (did it crash?)")
        if "BadStatusLine" in text or "wrong version number" in text:
            return ServiceError(f"{url}: the server does not speak plain HTTP (is it TLS?)", permanent=True)
        return ServiceError(f"{url}: cannot connect ({text.splitlines()[0][:200]})")
    return ServiceError(f"{url}: {e.__class__.__name__}: {str(e)[:200]}")


def declared_length(response: requests.Response) -> int:
    """The Content-Length an answer declares, or 0 when it declares none we can read ("²" is a
    digit to str.isdigit(), not to int())."""
    declared = response.headers.get("Content-Length", "").strip()
    return int(declared) if declared.isascii() and declared.isdigit() else 0


def deadline_after(timeout: float) -> float:
    """The deadline of a call with this read timeout and none of its own (DEADLINE_READS)."""
    return time.monotonic() + DEADLINE_READS * timeout


def amount(size: int) -> str:
    """A byte count in words: "615 bytes", "1.2 KB", "80 MB"."""
    if size < 1024:
        return f"{size} byte{'' if size == 1 else 's'}"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1048576:.0f} MB"


def too_large(url: str, limit: int, declared: int = 0) -> AnswerTooLarge:
    what = f"its answer is {amount(declared)}" if declared else "its answer goes on"
    return AnswerTooLarge(f"{url}: {what}, over the limit of {amount(limit)}: not read (answer too large)")


def body_pieces(response: requests.Response, url: str, deadline: float, size: int = CHUNK) -> Iterator[bytes]:
    """The answer's body, piece by piece as it arrives (decoded, as requests would), until it ends
    or `deadline` passes: no wait for bytes lasts longer than the read timeout or the time left.
    ServiceError when it does not end in time or the connection breaks; the connection is closed
    when the body ends, fails or is given up, so nothing is left open on the node."""
    started = time.monotonic()
    connection = response.raw.connection
    sock = connection.sock if connection is not None else None
    # What request() gave the socket: min(read timeout, time left then).
    wait = sock.gettimeout() if sock is not None else None
    got = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_slow(response, url, got, time.monotonic() - started)
            # The last wait is cut to the time left: its timing out means the deadline came.
            last = wait is None or left < wait
            if sock is not None and wait is not None:
                sock.settimeout(min(wait, left))
            try:
                piece = response.raw.read1(size, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                if last:
                    raise too_slow(response, url, got, time.monotonic() - started) from None
                raise ServiceTimeout(
                    f"{url}: the answer stopped coming after {amount(got)} (nothing for {wait:g} s)"
                ) from None
            except urllib3.exceptions.HTTPError as e:
                raise ServiceError(f"{url}: the connection broke off in the middle of the answer ({e})") from e
            if not piece:
                return
            got += len(piece)
            yield piece
    finally:
        response.close()


def too_slow(response: requests.Response, url: str, got: int, reading: float) -> ServiceError:
    """Not a ServiceTimeout (a node busy rendering or loading a model still answers at once): a
    node that answers, but too slowly to be used, counts as failing, and gets no more work."""
    declared = declared_length(response)
    of = f" of {amount(declared)}" if declared else ""
    seconds = response.elapsed.total_seconds() + reading
    return ServiceError(f"{url}: sent its answer too slowly: {amount(got)}{of} in {seconds:.1f} s; gave up")


def read_limited(response: requests.Response, url: str, limit: int = MAX_ANSWER_BYTES, *, deadline: float) -> bytes:
    """The whole body, by `deadline`, if it is no larger than `limit`."""
    declared = declared_length(response)
    if declared > limit:
        response.close()
        raise too_large(url, limit, declared)
    pieces, size = [], 0
    try:
        for piece in body_pieces(response, url, deadline):
            size += len(piece)
            if size > limit:
                raise too_large(url, limit)
            pieces.append(piece)
    finally:
        response.close()
    return b"".join(pieces)


def request(
    s: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float = READ_TIMEOUT,
    deadline: float,
    **kwargs: Any,
) -> requests.Response:
    """Send a request, its body left to be read by the same deadline (read_limited, body_pieces);
    connection failures become ServiceError. Connecting and each wait for the answer last no
    longer than the time left. The caller checks the status."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ServiceTimeout(f"{url}: not asked: its deadline had passed (earlier questions took the time)")
    wait = min(timeout, left)
    try:
        return s.request(method, url, timeout=(min(CONNECT_TIMEOUT, wait), wait), stream=True, **kwargs)
    except requests.RequestException as e:
        raise describe(e, url) from e


def depth(value: Any) -> int:
    """How deep lists, tuples and dicts nest in a value: 0 for a scalar, 1 for [1, 2], 2 for [[1]].

    Measured with a list of its own rather than by recursion, so a value too deep for Python's
    recursive walks can still be measured and refused."""
    if not isinstance(value, dict | list | tuple):
        return 0
    deepest = 0
    todo = [(value, 1)]
    while todo:
        value, level = todo.pop()
        deepest = max(deepest, level)
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list | tuple):
                todo.append((child, level + 1))
    return deepest


class TooDeep(ValueError):
    """JSON nested deeper than MAX_DEPTH. A ValueError, as malformed JSON is."""


def loads(text: str | bytes) -> Any:
    """json.loads for what another machine sent: TooDeep instead of a value nested too deeply to use."""
    try:
        value = json.loads(text)
    except RecursionError:
        # json itself gives up around a thousand levels.
        raise TooDeep(f"JSON nested too deeply to read, over the limit of {MAX_DEPTH} levels") from None
    levels = depth(value)
    if levels > MAX_DEPTH:
        raise TooDeep(f"JSON nested {levels} levels deep, over the limit of {MAX_DEPTH}")
    return value


def decode_json(body: bytes, url: str, status: int) -> Any:
    try:
        return loads(body)
    except TooDeep as e:
        raise ServiceError(
            f"{url}: answered {e}; no ComfyUI or Ollama answers like that: check what is running on that port",
            permanent=True,
            status=status,
        ) from None
    except ValueError:
        start = body[:60].decode("utf-8", "replace").strip().replace("\n", " ")
        kind = "HTML" if start.lower().startswith(("<!doctype", "<html")) else "something that is not JSON"
        raise ServiceError(
            f"{url}: answered {kind} (HTTP {status}, starts {start!r}); is this the right port?",
            permanent=True,
            status=status,
        ) from None


def json_request(
    s: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float = READ_TIMEOUT,
    deadline: float | None = None,
    limit: int = MAX_ANSWER_BYTES,
    ok: tuple[int, ...] = (200,),
    **kwargs: Any,
) -> Any:
    """A request whose answer must be JSON with one of the `ok` statuses, complete by `deadline`
    (by default DEADLINE_READS read timeouts from now)."""
    deadline = deadline_after(timeout) if deadline is None else deadline
    response = request(s, method, url, timeout=timeout, deadline=deadline, **kwargs)
    answer = read_limited(response, url, limit, deadline=deadline)
    if response.status_code not in ok:
        raise http_error(url, response.status_code, answer)
    return decode_json(answer, url, response.status_code)


def http_error(url: str, status: int, body: bytes) -> ServiceError:
    detail = body[:300].decode("utf-8", "replace").strip()
    try:
        parsed = loads(body)
        if isinstance(parsed, dict) and parsed.get("error"):
            err = parsed["error"]
            detail = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        pass
    # 4xx: our request is wrong and will stay wrong; 5xx and 429: the server may recover.
    permanent = 400 <= status < 500 and status != 429
    return ServiceError(f"{url}: HTTP {status}: {detail}", permanent=permanent, status=status)


def ndjson_lines(response: requests.Response, url: str, deadline: float) -> Iterator[Any]:
    """Each line of a streamed newline-delimited JSON answer, decoded as soon as it is complete,
    until the answer ends or `deadline` passes (then ServiceError, as body_pieces() says)."""
    pending = bytearray()
    try:
        for piece in body_pieces(response, url, deadline):
            *lines, rest = piece.split(b"\n")
            if lines:
                lines[0] = bytes(pending) + lines[0]
                pending = bytearray(rest)
            else:
                pending += rest
            if len(pending) > MAX_ANSWER_BYTES:
                raise too_large(url, MAX_ANSWER_BYTES)
            for line in lines:
                if line.strip():
                    yield decode_json(line, url, response.status_code)
        if pending.strip():
            yield decode_json(bytes(pending), url, response.status_code)
    finally:
        response.close()
