"""HTTP plumbing shared by the service clients: timeouts, size limits and errors that say what
went wrong. Nothing here knows about Ollama or ComfyUI."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import requests

from nodes.clients import ServiceError, ServiceTimeout

# Connecting is quick on a LAN or it is not happening; reading may wait on a GPU.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
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


def read_limited(response: requests.Response, url: str, limit: int = MAX_ANSWER_BYTES) -> bytes:
    declared = declared_length(response)
    if declared > limit:
        response.close()
        raise ServiceError(f"{url}: answer too large ({declared // 1048576} MB)", permanent=True)
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(65536):
            size += len(chunk)
            if size > limit:
                raise ServiceError(f"{url}: answer too large (over {limit // 1048576} MB)", permanent=True)
            chunks.append(chunk)
    except requests.RequestException as e:
        raise describe(e, url) from e
    finally:
        response.close()
    return b"".join(chunks)


def request(
    s: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float = READ_TIMEOUT,
    **kwargs: Any,
) -> requests.Response:
    """Send a request, its body left to be streamed; connection failures become ServiceError.
    The caller checks the status."""
    try:
        return s.request(method, url, timeout=(CONNECT_TIMEOUT, timeout), stream=True, **kwargs)
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
    limit: int = MAX_ANSWER_BYTES,
    ok: tuple[int, ...] = (200,),
    **kwargs: Any,
) -> Any:
    """A request whose answer must be JSON with one of the `ok` statuses."""
    response = request(s, method, url, timeout=timeout, **kwargs)
    body = read_limited(response, url, limit)
    if response.status_code not in ok:
        raise http_error(url, response.status_code, body)
    return decode_json(body, url, response.status_code)


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


def ndjson_lines(response: requests.Response, url: str) -> Iterator[Any]:
    """Each line of a streamed newline-delimited JSON answer, decoded."""
    try:
        for line in response.iter_lines():
            if line:
                yield decode_json(line, url, response.status_code)
    except requests.RequestException as e:
        raise describe(e, url) from e
    finally:
        response.close()
