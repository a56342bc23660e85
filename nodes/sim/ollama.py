"""A simulated Ollama server: the HTTP API of the real one (docs/api.md in ollama/ollama) on
aiohttp, good enough for the official `ollama` Python client, with knobs for speed, model loading
and faults.

    with SimOllama(models=["llama3.2:3b"], load_delay=0.5) as sim:
        requests.post(sim.url + "/api/generate", json={"model": "llama3.2:3b", "prompt": "Hi"})
        sim.set(hang=True)  # from now on every request hangs until hang is switched off
        sim.set(hang=False, answer_seconds=0.2)  # every answer takes 0.2 s, however long
        sim.set(bad_answers=2, bad_kind="html")  # the next two formatted answers carry <script>
        sim.set(trickle={"/api/tags": 2.0})  # that answer comes a byte every 2 s (a slow loris)

Answers are plain English made from the prompt (nodes/sim/storyteller.py): a story from the idea,
and for Spoon Feeder's story steps segments, characters, shots, prompts, narration and music
that follow what the prompt says the earlier steps wrote. With `format` they are JSON: any object
for "json", and for a JSON schema a value that conforms to it (objects, arrays, strings, numbers,
enums, $ref/$defs and anyOf, as pydantic writes them). The same request gets the same answer;
`seed` makes another set of answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from nodes.sim.runner import Server
from nodes.sim.storyteller import Teller

PORT = 11434
VERSION = "0.12.6"
DEFAULT_MODELS = ("llama3.2:3b", "qwen2.5:7b")
# The real server unloads a model this long after its last request unless keep_alive says otherwise.
DEFAULT_KEEP_ALIVE = 300.0
FOREVER = 100 * 365 * 86400.0
OOM = "llama runner process has terminated: cudaMalloc failed: out of memory"
GARBAGE = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
# What a bad formatted answer looks like (bad_json, bad_answers and bad_kind).
BAD_KINDS = ("broken", "schema", "html")
# Appended to every free-text string of an "html" bad answer: a page that shows model text unescaped
# would run it.
MARKUP = "<script>alert(1)</script>"
KNOBS = frozenset(
    {
        "tokens_per_second",
        "answer_seconds",
        "load_delay",
        "fail",
        "hang",
        "garbage",
        "drop_stream_after",
        "bad_json",
        "bad_answers",
        "bad_kind",
        "version",
        "trickle",
        "seed",
    }
)


@dataclass
class State:
    """Everything the simulated server knows; knobs may be changed while it runs."""

    models: list[dict[str, Any]]
    version: str = VERSION
    tokens_per_second: float = 500.0
    # When set, every /api/generate and /api/chat answer (streamed or not) takes this long in all, from
    # the request (after any hang) to its last byte, whatever its length, instead of what
    # tokens_per_second gives; streams spread their chunks over the time. The load delay of a model
    # that is not loaded comes on top. 0 answers at once. Requests that only load or unload a model
    # (an empty prompt) and errors are answered without it.
    answer_seconds: float | None = None
    # Seconds the first request for a model that is not loaded waits before answering.
    load_delay: float = 0.0
    # "oom": generate and chat answer 500 with the error a GPU out of memory gives.
    fail: str | None = None
    # Every request waits until hang is switched off or the server stops.
    hang: bool = False
    # Every request is answered with an HTML page (a proxy or another service on the port).
    garbage: bool = False
    # Streamed answers are cut after this many chunks. A non-streamed answer is cut before any
    # byte when it is 0 (a server that died while generating), else halfway through its body.
    drop_stream_after: int | None = None
    # Every formatted answer (a request with `format`) is bad, for good: True, or "broken", gives
    # broken JSON; "schema" valid JSON that does not fit the schema; "html" as bad_kind "html".
    bad_json: bool | str = False
    # The next this many formatted answers are bad, one per request, in the way bad_kind says;
    # answers are good again once it has counted down to 0. Requests without `format`, errors and
    # load-only requests do not count; a request counts when it is taken up (a client that gives up
    # on it afterwards has still used one).
    bad_answers: int = 0
    # "broken": JSON cut short, as a model that ran out of tokens leaves it; "schema": valid JSON that
    # does not fit the schema; "html": JSON that fits the schema but whose free-text strings (not
    # enums, constants or dates, which would then not fit) end in MARKUP.
    bad_kind: str = "broken"
    # Path prefix -> seconds between bytes: those answers (whole ones, not streams) send their
    # headers at once and their body a byte at a time, for as long as the client reads, as the
    # simulated ComfyUI's knob of the same name.
    trickle: dict[str, float] = field(default_factory=dict)
    # Mixed into every answer's randomness: another seed writes other stories from the same requests.
    seed: int = 0
    # model name → time.time() at which it unloads
    loaded: dict[str, float] = field(default_factory=dict)
    loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # (method, path, body) of every request, for tests that check what a client sent
    seen: deque[tuple[str, str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    closing: bool = False


def model_entry(name: str) -> dict[str, Any]:
    """The /api/tags entry of a model, with plausible details derived from its name."""
    name = full_name(name)
    base, tag = name.split(":", 1)
    family = re.sub(r"[\d.]+$", "", base.split("/")[-1]) or base
    m = re.search(r"(\d+(?:\.\d+)?)b", tag)
    billions = float(m.group(1)) if m else 3.2
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-09-14T10:21:07.411873Z",
        "size": int(billions * 0.62e9),
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{billions:g}B",
            "quantization_level": "Q4_K_M",
        },
    }


def full_name(name: str) -> str:
    # Ollama reads "llama3.2" as "llama3.2:latest".
    return name if ":" in name else f"{name}:latest"


def stamp(seconds: float | None = None) -> str:
    when = datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC)
    return when.isoformat().replace("+00:00", "Z")


def keep_alive_seconds(value: Any) -> float:
    """keep_alive as the real server reads it: seconds, or a Go duration ("5m", "1h30m", "10s");
    negative means keep the model loaded forever."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|h|m|s)", text)
            if not parts:
                raise ValueError(f"time: invalid duration {text!r}") from None
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
            seconds = sum(float(n) * unit[u] for n, u in parts)
    return FOREVER if seconds < 0 else seconds


def from_schema(
    schema: Any, root: dict[str, Any], teller: Teller, name: str = "", mark: str = "", hint: Any = None
) -> Any:
    """A value that conforms to `schema`: the subset of JSON Schema language models are asked for.
    `hint` is what the teller would have it say (kept where the schema allows); free-text strings
    end in `mark` (as far as maxLength allows)."""
    if not isinstance(schema, dict):
        return teller.story_text() + mark
    if "$ref" in schema:
        return from_schema(resolve(schema, root), root, teller, name, mark, hint)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return hint if hint in schema["enum"] else teller.rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return from_schema(options[0], root, teller, name, mark, hint)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return from_schema(merged, root, teller, name, mark, hint)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    rng = teller.rng
    if kind == "object":
        props = schema.get("properties", {})
        given = hint if isinstance(hint, dict) else {}
        return {key: from_schema(sub, root, teller, key, mark, given.get(key)) for key, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {})
        low = schema.get("minItems", 1 if hint is None else 0)
        if isinstance(hint, list):
            allowed = resolve(items, root).get("enum")
            listed = [h for h in hint if allowed is None or h in allowed]
            count = max(low, min(len(listed), schema.get("maxItems", len(listed))))
        else:
            listed = []
            count = rng.randint(low, max(low, min(schema.get("maxItems", low + 2), low + 2)))
        return [
            from_schema(items, root, teller, name, mark, listed[i] if i < len(listed) else None) for i in range(count)
        ]
    if kind == "string":
        return text_for(schema, teller, name, mark, hint)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 101) - 1)
        high = max(low, high)
        if isinstance(hint, int | float) and not isinstance(hint, bool):
            value = min(max(hint, low), high)
            return int(value) if kind == "integer" else float(value)
        if kind == "integer":
            return rng.randint(int(low), max(int(low), int(high)))
        return round(rng.uniform(low, high), 2)
    if kind == "boolean":
        return hint if isinstance(hint, bool) else rng.random() < 0.5
    return None


def resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """The schema a $ref points to (one level), or the schema itself."""
    if isinstance(schema, dict) and "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return schema if isinstance(schema, dict) else {}


def text_for(schema: dict[str, Any], teller: Teller, name: str, mark: str = "", hint: Any = None) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return stamp()
    if fmt == "date":
        return stamp()[:10]
    text = hint if isinstance(hint, str) and hint else teller.text(name)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    while len(text) + len(mark) < low:
        text += " " + teller.sentence()
    if high is None:
        return text + mark
    room = max(high - len(mark), 0)
    if len(text) > room:
        # Whole sentences if one fits, else whole words: a cut answer still reads.
        cut = text[: room + 1]
        end = cut.rfind(". ")
        text = cut[: end + 1] if end > 0 else cut[: cut.rfind(" ")] if " " in cut.strip() else text[:room]
    return (text[:room] + mark)[:high]


def take_bad_kind(state: State, body: dict[str, Any]) -> str | None:
    """How this request's answer is to be bad (one of BAD_KINDS), or None for a good answer. Counts
    bad_answers down, so call it once per answer, with no await between reading and writing it."""
    if not body.get("format"):
        return None
    if state.bad_answers > 0:
        state.bad_answers -= 1
        return state.bad_kind
    if state.bad_json:
        return state.bad_json if isinstance(state.bad_json, str) and state.bad_json in BAD_KINDS else "broken"
    return None


def answer_text(body: dict[str, Any], prompt: str, bad: str | None = None, salt: int = 0) -> str:
    """The answer to `prompt`; with a `format`, JSON, made bad in the way `bad` (from BAD_KINDS) says.
    The same request (and `salt`, the seed knob) gets the same answer."""
    seed = (body.get("options") or {}).get("seed")
    rng = random.Random(seed if isinstance(seed, int) else zlib.crc32(prompt.encode(), salt & 0xFFFFFFFF))
    teller = Teller(prompt, rng)
    fmt = body.get("format")
    if not fmt:
        return teller.story_text()
    if bad == "schema":
        return json.dumps(["not", "what", "was", "asked"] if isinstance(fmt, dict) else "not an object")
    mark = MARKUP if bad == "html" else ""
    if isinstance(fmt, dict):
        value = from_schema(fmt, fmt, teller, mark=mark, hint=teller.plan(fmt))
    else:
        value = {"answer": teller.story_text() + mark}
    text = json.dumps(value, indent=None)
    if bad == "broken":
        # Cut where a model that ran out of tokens would, leaving JSON no parser accepts.
        return text[: max(len(text) // 2, 1)] + " and then"
    return text


def tokens(text: str) -> list[str]:
    """The text in token-sized pieces that join back into it."""
    return re.findall(r"\s*(?:\w+|[^\w\s])|\s+$", text)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def sleep_until(deadline: float) -> None:
    """Sleep until time.monotonic() reaches `deadline` (never early; at once if it has passed)."""
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)


async def wait_while_hanging(state: State) -> None:
    while state.hang and not state.closing:
        await asyncio.sleep(0.02)


def trickling(path: str, state: State) -> float | None:
    """Seconds between the bytes of this path's answers (the longest prefix wins), or None."""
    matches = [(len(prefix), pause) for prefix, pause in list(state.trickle.items()) if path.startswith(prefix)]
    return max(matches)[1] if matches else None


async def trickle(
    request: web.Request, answer: web.Response, body: bytes, pause: float, state: State
) -> web.StreamResponse:
    """A slow-loris server: the headers (with the full Content-Length) at once, then the body a
    byte at a time; only the client's own deadline ends it, or the server stopping (it hangs up)."""
    out = web.StreamResponse(status=answer.status, reason=answer.reason, headers=answer.headers)
    out.content_length = len(body)
    await out.prepare(request)
    for i in range(len(body)):
        await out.write(body[i : i + 1])
        until = time.monotonic() + pause
        while time.monotonic() < until and not state.closing:
            await asyncio.sleep(min(0.02, max(until - time.monotonic(), 0)))
        if state.closing:
            if request.transport is not None:
                request.transport.close()
            break
    return out


async def load(state: State, name: str, keep_alive: float) -> float:
    """Make sure the model is loaded; return the seconds it took. Concurrent requests for a model
    that is loading wait for the same load, as on the real server."""
    started = time.monotonic()
    if state.loaded.get(name, 0) <= time.time():
        state.loaded.pop(name, None)
        pending = state.loading.get(name)
        if pending is None:
            pending = state.loading[name] = asyncio.ensure_future(asyncio.sleep(state.load_delay))
        await asyncio.shield(pending)
        state.loading.pop(name, None)
    state.loaded[name] = time.time() + keep_alive
    return time.monotonic() - started


def make_app(state: State) -> web.Application:
    @web.middleware
    async def faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = raw.decode("utf-8", "replace")
        state.seen.append((request.method, request.path, body))
        try:
            await wait_while_hanging(state)
            if state.garbage:
                return web.Response(text=GARBAGE, content_type="text/html")
            response = await handler(request)
            pause = trickling(request.path, state)
            if pause is None or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
                return response
            return await trickle(request, response, response.body, pause, state)
        except ConnectionError:
            # The client gave up (a timeout, a cut stream); aiohttp quietly drops this answer.
            return web.Response()

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": state.version})

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": state.models})

    async def ps(request: web.Request) -> web.Response:
        now = time.time()
        running = []
        for entry in state.models:
            until = state.loaded.get(entry["name"], 0)
            if until > now:
                running.append(
                    {
                        **{k: entry[k] for k in ("name", "model", "size", "digest", "details")},
                        "expires_at": datetime.fromtimestamp(until, UTC).astimezone().isoformat(),
                        "size_vram": entry["size"],
                        "context_length": 4096,
                    }
                )
        return web.json_response({"models": running})

    def find(name: Any) -> dict[str, Any] | None:
        if not isinstance(name, str) or not name:
            return None
        return next((m for m in state.models if m["name"] == full_name(name)), None)

    async def read_body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return error(400, f"invalid character in request body: {e}")
        if not isinstance(body, dict):
            return error(400, "json: cannot unmarshal into Go value of type api.Request")
        if not body.get("model") and not body.get("name"):
            return error(400, "model is required")
        return body

    async def show(request: web.Request) -> web.Response:
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name")
        entry = find(name)
        if entry is None:
            return error(404, f"model '{name}' not found")
        details = entry["details"]
        return web.json_response(
            {
                "modelfile": f"FROM {entry['name']}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "license": "",
                "details": details,
                "model_info": {
                    "general.architecture": details["family"],
                    "general.parameter_count": int(float(details["parameter_size"][:-1]) * 1e9),
                    f"{details['family']}.context_length": 131072,
                },
                "capabilities": ["completion"],
                "modified_at": entry["modified_at"],
            }
        )

    async def generate(request: web.Request) -> web.StreamResponse:
        return await answer(request, chat=False)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await answer(request, chat=True)

    async def answer(request: web.Request, chat: bool) -> web.StreamResponse:
        # The middleware has read the body and waited out any hang: the request arrives now.
        arrived = time.monotonic()
        answer_seconds = state.answer_seconds
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model")
        entry = find(name)
        if entry is None:
            return error(404, f'model "{name}" not found, try pulling it first')
        if body.get("format") not in (None, "", "json") and not isinstance(body.get("format"), dict):
            return error(400, f'invalid format: {body["format"]!r}; expected "json" or a JSON schema')
        try:
            keep_alive = keep_alive_seconds(body.get("keep_alive"))
        except ValueError as e:
            return error(400, str(e))
        if state.fail == "oom":
            return error(500, OOM)
        if chat:
            messages = body.get("messages") or []
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        else:
            prompt = "\n".join(str(body.get(k) or "") for k in ("system", "prompt"))
        # Decided before the first await below, so concurrent requests each take one bad answer.
        bad = take_bad_kind(state, body) if prompt.strip() else None
        load_seconds = await load(state, entry["name"], keep_alive)
        stream = body.get("stream", True) is not False
        base: dict[str, Any] = {"model": name, "created_at": stamp()}
        if not prompt.strip():
            # An empty prompt only loads (or with keep_alive 0 unloads) the model.
            reason = "unload" if keep_alive == 0 else "load"
            final = {**base, "done": True, "done_reason": reason}
            final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            return web.json_response(final)

        text = answer_text(body, prompt, bad, state.seed)
        pieces = tokens(text)
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_count = len(tokens(prompt))
        prompt_ns = prompt_count * 200_000
        per_token = 1 / state.tokens_per_second if state.tokens_per_second > 0 else 0.0
        now = time.monotonic()
        if answer_seconds is not None:
            # A deadline from the arrival, moved on by the load: sleeps until it do not add up.
            deadline = arrived + max(answer_seconds, 0.0) + load_seconds
            eval_ns = max(int(max(answer_seconds, 0.0) * 1e9) - prompt_ns, 0)
        else:
            deadline = now + per_token * len(pieces)
            eval_ns = int(len(pieces) * per_token * 1e9)

        def part(piece: str) -> dict[str, Any]:
            return {**base, "message": {"role": "assistant", "content": piece}} if chat else {**base, "response": piece}

        def last(started: float) -> dict[str, Any]:
            load_ns = int(load_seconds * 1e9) + 1_500_000
            final = {
                **part(""),
                "created_at": stamp(),
                "done": True,
                "done_reason": reason,
                "total_duration": max(int((time.monotonic() - started) * 1e9), load_ns + prompt_ns + eval_ns),
                "load_duration": load_ns,
                "prompt_eval_count": prompt_count,
                "prompt_eval_duration": prompt_ns,
                "eval_count": len(pieces),
                "eval_duration": eval_ns,
            }
            if not chat:
                final["context"] = [zlib.crc32(p.encode()) % 128000 for p in tokens(prompt) + pieces]
            return final

        started = time.monotonic() - load_seconds
        if not stream:
            if state.drop_stream_after == 0:
                return drop(request)
            await sleep_until(deadline)
            final = last(started)
            if chat:
                final["message"]["content"] = "".join(pieces)
            else:
                final["response"] = "".join(pieces)
            if state.drop_stream_after is not None:
                payload = json.dumps(final).encode()
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                response.content_length = len(payload)
                await response.prepare(request)
                await response.write(payload[: len(payload) // 2])
                return drop(request, response)
            return web.json_response(final)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # Each chunk has a time of its own, spread evenly up to the deadline, when the last one goes.
        if answer_seconds is not None:
            span = deadline - now
            times = [now + span * (i + 1) / (len(pieces) + 1) for i in range(len(pieces))]
        else:
            times = [now + per_token * (i + 1) for i in range(len(pieces))]
        sent = 0
        async for piece in paced(pieces, times):
            if state.drop_stream_after is not None and sent >= state.drop_stream_after:
                return drop(request, response)
            await response.write(json.dumps(part(piece)).encode() + b"\n")
            sent += 1
        if state.drop_stream_after is not None and sent >= state.drop_stream_after:
            return drop(request, response)
        await sleep_until(deadline)
        await response.write(json.dumps(last(started)).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application(middlewares=[faults])
    app.router.add_get("/", root)  # aiohttp answers HEAD from GET routes
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    return app


async def paced(pieces: Iterable[str], times: Iterable[float]) -> AsyncIterator[str]:
    """The pieces, each when time.monotonic() reaches its time."""
    for piece, at in zip(pieces, times, strict=True):
        await sleep_until(at)
        yield piece


def drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Cut the connection the way a crashing server or a pulled cable does: no final chunk."""
    if request.transport is not None:
        request.transport.abort()
    return response or web.Response()


class SimOllama:
    """A simulated Ollama on host:port (port 0 picks a free one). Knobs are State fields; change
    them with set() while it runs. stop() refuses connections until start() again, on the same
    port, with no model loaded (as after a restart)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] = DEFAULT_MODELS,
        **knobs: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.state = State(models=[model_entry(name) for name in models])
        self.set(**knobs)
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set(self, **knobs: Any) -> None:
        unknown = set(knobs) - KNOBS
        if unknown:
            raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOBS))}")
        if "bad_kind" in knobs and knobs["bad_kind"] not in BAD_KINDS:
            raise ValueError(f"unknown bad_kind {knobs['bad_kind']!r}; known: {', '.join(BAD_KINDS)}")
        for key, value in knobs.items():
            # Plain attribute writes: handlers read the knobs afresh at every request.
            setattr(self.state, key, value)

    def start(self) -> SimOllama:
        self.state.closing = False
        self.state.loaded.clear()
        self.state.loading.clear()
        self.server = Server(lambda: make_app(self.state), self.host, self.port).start()
        self.port = self.server.port
        return self

    def stop(self) -> None:
        # Release hanging requests first, or the server waits for them before it shuts down.
        self.state.closing = True
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        """Stop for good; the same as stop(), as a simulated Ollama keeps nothing on disk."""
        self.stop()

    def __enter__(self) -> SimOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
