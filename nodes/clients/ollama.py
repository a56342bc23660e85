"""The Ollama client: inventory (version, tags, ps, show) and answers (generate, chat), streamed
or not, optionally as JSON against a schema.

Every call ends by a deadline: an inventory question by http.DEADLINE_READS times its timeout (or
the caller's `deadline`), an answer (generate, chat, streamed or not) within its `timeout` in all.

Every failure is a ServiceError. A model the node does not have is permanent (status 404) and the
message says to pull it; a refused connection, a timeout, a server error or a stream that stops
before its last chunk can be retried; an answer that is not Ollama's (HTML, garbage) is permanent.

    ollama = Ollama("http://10.0.0.5:11434")
    answer = ollama.chat("llama3.2:3b", [{"role": "user", "content": "A title?"}], format=schema)
    loads(answer["text"])  # nodes.clients.http.loads; the caller validates against its schema
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NotRequired, TypedDict

import requests

from nodes.clients import ServiceError
from nodes.clients.http import http_error, json_request, ndjson_lines, read_limited, request, session

# Inventory answers come at once from a healthy server.
INFO_TIMEOUT = 5.0
# Seconds an answer may take in all: loading a large model from a slow disk takes minutes, and a
# non-streamed answer sends nothing until it is complete. Each answer ends within its timeout, so
# a caller (stories.runner's STEP_DEADLINE) can count on it.
GENERATE_TIMEOUT = 600.0


class Details(TypedDict, total=False):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class Model(TypedDict):
    """An installed model, as /api/tags lists it."""

    name: str
    model: str
    size: int
    digest: str
    modified_at: str
    details: Details


class LoadedModel(TypedDict):
    """A model in memory, as /api/ps lists it."""

    name: str
    model: str
    size: int
    size_vram: int
    digest: str
    expires_at: str
    details: Details
    context_length: NotRequired[int]


class Message(TypedDict):
    role: Literal["system", "user", "assistant", "tool"] | str
    content: str


class Answer(TypedDict):
    """A complete answer. Durations are in nanoseconds, as Ollama reports them."""

    model: str
    text: str  # generate's "response", chat's message content
    done_reason: str  # "stop", or "length" when num_predict cut it short
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    eval_count: int
    eval_duration: int
    context: list[int]  # generate only: pass it back to continue the conversation


class Chunk(TypedDict):
    """One piece of a streamed answer; the last has done=True and the whole answer."""

    text: str
    done: bool
    answer: Answer | None


# "json" for any JSON object, or a JSON schema (such as a pydantic model's model_json_schema()).
Format = Literal["json"] | dict[str, Any]


class Ollama:
    """One Ollama server. It keeps a connection pool: close it (or use it as a context manager)
    when done, and give each thread its own.

    The *_stream methods send the request at once, so an unknown model or a refused connection
    raises before the first chunk; iterate to the end (or close the iterator) to free the
    connection."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Ollama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def get(self, path: str, timeout: float | None, deadline: float | None = None) -> Any:
        answer = json_request(self.session, "GET", self.url(path), timeout=timeout or INFO_TIMEOUT, deadline=deadline)
        if not isinstance(answer, dict):
            raise self.unexpected(path, answer)
        return answer

    def unexpected(self, path: str, answer: Any) -> ServiceError:
        return ServiceError(
            f"{self.url(path)}: unexpected answer ({str(answer)[:100]!r}); is this an Ollama server?",
            permanent=True,
        )

    def version(self, timeout: float | None = None, *, deadline: float | None = None) -> str:
        answer = self.get("/api/version", timeout, deadline)
        if not isinstance(answer.get("version"), str):
            raise self.unexpected("/api/version", answer)
        return str(answer["version"])

    def tags(self, timeout: float | None = None, *, deadline: float | None = None) -> list[Model]:
        return self.models("/api/tags", timeout, deadline)

    def ps(self, timeout: float | None = None, *, deadline: float | None = None) -> list[LoadedModel]:
        return self.models("/api/ps", timeout, deadline)

    def models(self, path: str, timeout: float | None, deadline: float | None) -> Any:
        answer = self.get(path, timeout, deadline)
        models = answer.get("models")
        # Ollama answers "models": null rather than [] on some versions when none are installed.
        if models is None:
            return []
        if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m for m in models):
            raise self.unexpected(path, answer)
        return models

    def show(self, model: str, timeout: float | None = None, *, deadline: float | None = None) -> dict[str, Any]:
        """Details, parameters, template and model_info of one installed model."""
        try:
            answer = json_request(
                self.session,
                "POST",
                self.url("/api/show"),
                json={"model": model},
                timeout=timeout or INFO_TIMEOUT,
                deadline=deadline,
            )
        except ServiceError as e:
            raise self.missing(model, e) from e
        if not isinstance(answer, dict):
            raise self.unexpected("/api/show", answer)
        return answer

    def missing(self, model: str, e: ServiceError) -> ServiceError:
        if e.status != 404:
            return e
        return ServiceError(
            f"{self.base_url}: model {model!r} is not installed on this node; pull it first (ollama pull {model})",
            permanent=True,
            status=404,
        )

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        format: Format | None = None,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        timeout: float = GENERATE_TIMEOUT,
    ) -> Answer:
        body = self.body(model, format, options, keep_alive, prompt=prompt, system=system)
        return self.complete("/api/generate", body, timeout)

    def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        format: Format | None = None,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        timeout: float = GENERATE_TIMEOUT,
    ) -> Iterator[Chunk]:
        body = self.body(model, format, options, keep_alive, prompt=prompt, system=system)
        return self.stream("/api/generate", body, timeout)

    def chat(
        self,
        model: str,
        messages: Sequence[Message] | Sequence[dict[str, Any]],
        *,
        format: Format | None = None,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        timeout: float = GENERATE_TIMEOUT,
    ) -> Answer:
        body = self.body(model, format, options, keep_alive, messages=list(messages))
        return self.complete("/api/chat", body, timeout)

    def chat_stream(
        self,
        model: str,
        messages: Sequence[Message] | Sequence[dict[str, Any]],
        *,
        format: Format | None = None,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        timeout: float = GENERATE_TIMEOUT,
    ) -> Iterator[Chunk]:
        body = self.body(model, format, options, keep_alive, messages=list(messages))
        return self.stream("/api/chat", body, timeout)

    def body(
        self,
        model: str,
        format: Format | None,
        options: dict[str, Any] | None,
        keep_alive: float | str | None,
        **fields: Any,
    ) -> dict[str, Any]:
        body = {"model": model, **{k: v for k, v in fields.items() if v is not None}}
        if format is not None:
            body["format"] = format
        if options:
            body["options"] = options
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return body

    def complete(self, path: str, body: dict[str, Any], timeout: float) -> Answer:
        try:
            answer = json_request(
                self.session,
                "POST",
                self.url(path),
                json={**body, "stream": False},
                timeout=timeout,
                deadline=time.monotonic() + timeout,
            )
        except ServiceError as e:
            raise self.missing(body["model"], e) from e
        if not isinstance(answer, dict) or not answer.get("done"):
            raise self.unexpected(path, answer)
        return self.answer(answer, text_of(answer))

    def stream(self, path: str, body: dict[str, Any], timeout: float) -> Iterator[Chunk]:
        url = self.url(path)
        deadline = time.monotonic() + timeout
        response = request(self.session, "POST", url, json={**body, "stream": True}, timeout=timeout, deadline=deadline)
        if response.status_code != 200:
            error = http_error(url, response.status_code, read_limited(response, url, deadline=deadline))
            raise self.missing(body["model"], error)
        return self.chunks(path, response, deadline)

    def chunks(self, path: str, response: requests.Response, deadline: float) -> Iterator[Chunk]:
        url = self.url(path)
        pieces: list[str] = []
        for part in ndjson_lines(response, url, deadline):
            if not isinstance(part, dict):
                raise self.unexpected(path, part)
            if part.get("error"):
                # Errors after the answer started come as a line of their own, with status 200.
                raise ServiceError(f"{url}: {part['error']}")
            text = text_of(part)
            pieces.append(text)
            if part.get("done"):
                yield {"text": text, "done": True, "answer": self.answer(part, "".join(pieces))}
                return
            yield {"text": text, "done": False, "answer": None}
        raise ServiceError(f"{url}: the answer stopped before it was complete (connection lost?)")

    def answer(self, part: dict[str, Any], text: str) -> Answer:
        def number(key: str) -> int:
            value = part.get(key)
            return value if isinstance(value, int) else 0

        return {
            "model": str(part.get("model", "")),
            "text": text,
            "done_reason": str(part.get("done_reason") or "stop"),
            "total_duration": number("total_duration"),
            "load_duration": number("load_duration"),
            "prompt_eval_count": number("prompt_eval_count"),
            "eval_count": number("eval_count"),
            "eval_duration": number("eval_duration"),
            "context": list(part.get("context") or []),
        }


def text_of(part: dict[str, Any]) -> str:
    message = part.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(part.get("response") or "")
