"""The Ollama client against the simulated Ollama over real HTTP, and the simulated Ollama checked
with the official `ollama` Python client, so the simulation cannot drift into a private dialect."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import ollama as official
import pydantic
import pytest
import requests
import time_machine

from nodes.clients import ServiceError
from nodes.clients.ollama import Chunk, Ollama
from nodes.sim.ollama import MARKUP, OOM, SimOllama

MODEL = "llama3.2:3b"
SCENE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 3},
        "mood": {"enum": ["calm", "tense", "joyful"]},
        "length_seconds": {"type": "integer", "minimum": 2, "maximum": 8},
        "weight": {"type": "number", "minimum": 0, "maximum": 1},
        "night": {"type": "boolean"},
        "shots": {
            "type": "array",
            "minItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "camera": {"type": "string"},
                    "subjects": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["camera", "subjects"],
            },
        },
    },
    "required": ["title", "mood", "length_seconds", "weight", "night", "shots"],
}


class Shot(pydantic.BaseModel):
    camera: str
    subjects: list[str] = pydantic.Field(min_length=1)


class Scene(pydantic.BaseModel):
    title: str
    mood: Literal["calm", "tense", "joyful"]
    length_seconds: int = pydantic.Field(ge=2, le=8)
    shots: list[Shot] = pydantic.Field(min_length=2)
    narration: str | None = None


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> bool:
    """The JSON Schema subset language models are asked for (jsonschema is not a dependency)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return conforms(value, root["$defs"][name], root)
    if "anyOf" in schema:
        return any(conforms(value, s, root) for s in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        return (
            isinstance(value, dict)
            and all(key in value for key in schema.get("required", []))
            and all(conforms(value[k], s, root) for k, s in schema.get("properties", {}).items() if k in value)
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            and all(conforms(item, schema.get("items", {}), root) for item in value)
        )
    if kind == "string":
        return isinstance(value, str) and len(value) >= schema.get("minLength", 0)
    if kind in ("integer", "number"):
        wanted = int if kind == "integer" else (int, float)
        return (
            isinstance(value, wanted)
            and not isinstance(value, bool)
            and schema.get("minimum", value) <= value <= schema.get("maximum", value)
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return True


@pytest.fixture
def sim() -> Iterator[SimOllama]:
    with SimOllama(models=[MODEL, "qwen2.5:7b"], tokens_per_second=2000) as s:
        yield s


@pytest.fixture
def client(sim: SimOllama) -> Iterator[Ollama]:
    with Ollama(sim.url) as c:
        yield c


def collect(chunks: Iterator[Chunk]) -> list[Chunk]:
    return list(chunks)


# The client against the simulated server


def test_it_reads_version_installed_models_and_an_empty_ps(client: Ollama) -> None:
    assert client.version(timeout=1) == "0.12.6"
    models = client.tags()
    assert [m["name"] for m in models] == [MODEL, "qwen2.5:7b"]
    assert models[0]["details"]["family"] == "llama"
    assert models[0]["details"]["parameter_size"] == "3B"
    assert models[0]["size"] > 0 and len(models[0]["digest"]) == 64
    assert client.ps() == []
    assert client.show(MODEL)["details"]["quantization_level"] == "Q4_K_M"


def test_a_model_is_loaded_after_its_first_answer_until_keep_alive_ends(sim: SimOllama, client: Ollama) -> None:
    sim.set(load_delay=0.3)
    started = time.monotonic()
    first = client.generate(MODEL, "A lighthouse at dusk", keep_alive="10m")
    assert time.monotonic() - started >= 0.3
    assert first["load_duration"] >= 0.3e9

    [loaded] = client.ps()
    assert loaded["name"] == MODEL and loaded["size_vram"] > 0
    expires = datetime.fromisoformat(loaded["expires_at"]).timestamp()
    assert 590 < expires - time.time() <= 600

    # Loaded now: the next answer does not wait for the model again.
    second = client.generate(MODEL, "A lighthouse at dawn", keep_alive=0)
    assert second["load_duration"] < 0.1e9
    # keep_alive 0 unloads right after answering.
    assert client.ps() == []


def test_a_model_unloads_when_keep_alive_runs_out(sim: SimOllama, client: Ollama) -> None:
    sim.set(load_delay=0.2)
    client.generate(MODEL, "A harbour at night", keep_alive="1m")
    assert [m["name"] for m in client.ps()] == [MODEL]

    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=61)):
        assert client.ps() == []
        # Unloaded, so the next answer waits for the model to load again.
        assert client.generate(MODEL, "A harbour at dawn")["load_duration"] >= 0.2e9


def test_requests_that_arrive_while_a_model_loads_share_one_load(sim: SimOllama, client: Ollama) -> None:
    sim.set(load_delay=0.5)
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda p: client.generate(MODEL, p), ["one", "two", "three"]))
    assert all(a["load_duration"] >= 0.4e9 for a in answers)
    assert time.monotonic() - started < 0.9


def test_answers_take_as_long_as_the_speed_knob_says(sim: SimOllama, client: Ollama) -> None:
    sim.set(tokens_per_second=50)
    started = time.monotonic()
    answer = client.generate(MODEL, "A slow river", options={"num_predict": 10})
    assert time.monotonic() - started >= 0.2
    assert answer["eval_count"] == 10 and answer["eval_duration"] == pytest.approx(0.2e9)


def test_the_root_says_ollama_is_running(sim: SimOllama) -> None:
    # What `curl host:11434` shows, and what probes for an Ollama port look for.
    assert requests.get(sim.url, timeout=5).text == "Ollama is running"
    assert requests.head(sim.url, timeout=5).status_code == 200


def test_generate_answers_in_one_piece_or_streamed(client: Ollama) -> None:
    whole = client.generate(MODEL, "A fox crosses a frozen river", system="Be brief.")
    assert whole["text"] and whole["done_reason"] == "stop" and whole["model"] == MODEL
    assert whole["eval_count"] > 0 and whole["prompt_eval_count"] > 0 and whole["context"]
    assert whole["total_duration"] >= whole["load_duration"] + whole["eval_duration"]

    chunks = collect(client.generate_stream(MODEL, "A fox crosses a frozen river", system="Be brief."))
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]["answer"]
    assert final is not None
    assert final["text"] == "".join(c["text"] for c in chunks) == whole["text"]
    assert final["eval_count"] == len(chunks) - 1


def test_chat_answers_in_one_piece_or_streamed(client: Ollama) -> None:
    messages = [
        {"role": "system", "content": "You write film scenes."},
        {"role": "user", "content": "Two robots share an umbrella"},
    ]
    whole = client.chat(MODEL, messages)
    assert "robots" in whole["text"].lower() or "umbrella" in whole["text"].lower()
    assert whole["context"] == []

    chunks = collect(client.chat_stream(MODEL, messages))
    assert chunks[-1]["done"] and chunks[-1]["answer"] is not None
    assert chunks[-1]["answer"]["text"] == whole["text"]


def test_format_json_answers_a_json_object(client: Ollama) -> None:
    answer = client.generate(MODEL, "Name a colour", format="json")
    assert isinstance(json.loads(answer["text"]), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_format_schema_answers_json_that_fits_the_schema(client: Ollama, stream: bool) -> None:
    messages = [{"role": "user", "content": "Plan a scene: a whale sings under the harbour ice"}]
    if stream:
        chunks = collect(client.chat_stream(MODEL, messages, format=SCENE_SCHEMA))
        answer = chunks[-1]["answer"]
        assert answer is not None and len(chunks) > 2
    else:
        answer = client.chat(MODEL, messages, format=SCENE_SCHEMA)
    scene = json.loads(answer["text"])
    assert conforms(scene, SCENE_SCHEMA), scene
    assert len(scene["shots"]) >= 2


def test_num_predict_cuts_the_answer_short(client: Ollama) -> None:
    answer = client.generate(MODEL, "A long saga of the northern kings", options={"num_predict": 5})
    assert answer["done_reason"] == "length" and answer["eval_count"] == 5


def test_bad_json_knob_gives_answers_a_caller_must_reject(sim: SimOllama, client: Ollama) -> None:
    sim.set(bad_json=True)
    broken = client.chat(MODEL, [{"role": "user", "content": "a scene"}], format=SCENE_SCHEMA)
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken["text"])

    sim.set(bad_json="schema")
    misfit = client.chat(MODEL, [{"role": "user", "content": "a scene"}], format=SCENE_SCHEMA)
    assert not conforms(json.loads(misfit["text"]), SCENE_SCHEMA)


def test_answer_seconds_makes_an_answer_take_that_long_in_one_piece_or_streamed(sim: SimOllama, client: Ollama) -> None:
    messages = [{"role": "user", "content": "A train crosses a bridge in the fog"}]
    client.chat(MODEL, messages)  # loaded, so only the answer takes time
    sim.set(answer_seconds=0.2)

    started = time.monotonic()
    whole = client.chat(MODEL, messages)
    assert time.monotonic() - started >= 0.2
    assert whole["text"]

    started = time.monotonic()
    arrivals: list[float] = []
    chunks: list[Chunk] = []
    for chunk in client.chat_stream(MODEL, messages):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert arrivals[-1] >= 0.2
    # Every chunk comes, in order, each no sooner than its share of the time.
    final = chunks[-1]["answer"]
    assert final is not None and final["text"] == "".join(c["text"] for c in chunks) == whole["text"]
    assert final["eval_count"] == len(chunks) - 1
    assert all(at >= 0.2 * (i + 1) / len(chunks) for i, at in enumerate(arrivals))


def test_answer_seconds_counts_from_the_request_and_the_load_comes_on_top(sim: SimOllama, client: Ollama) -> None:
    sim.set(load_delay=0.2, answer_seconds=0.2)
    started = time.monotonic()
    answer = client.generate(MODEL, "A kettle sings on the stove")
    assert time.monotonic() - started >= 0.4
    assert answer["load_duration"] >= 0.2e9 and answer["text"]


def test_answer_seconds_zero_answers_at_once_however_slow_the_tokens(sim: SimOllama, client: Ollama) -> None:
    # At one token a second these answers would take half a minute each.
    sim.set(tokens_per_second=1, answer_seconds=0)
    whole = client.generate(MODEL, "A moth circles a lamp")
    assert whole["text"] and whole["eval_duration"] == 0
    chunks = collect(client.chat_stream(MODEL, [{"role": "user", "content": "A moth circles a lamp"}]))
    assert chunks[-1]["done"] and chunks[-1]["answer"] is not None and chunks[-1]["answer"]["text"]


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_of(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_of(v)]
    return []


def kind_of(text: str) -> str:
    """What a scene answer is: "good", or which kind of bad."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return "broken"
    if not conforms(value, SCENE_SCHEMA):
        return "schema"
    if MARKUP in text:
        return "html"
    return "good"


def scene_by_chat(client: Ollama) -> str:
    return client.chat(MODEL, [{"role": "user", "content": "a scene"}], format=SCENE_SCHEMA)["text"]


def scene_by_stream(client: Ollama) -> str:
    chunks = collect(client.generate_stream(MODEL, "a scene", format=SCENE_SCHEMA))
    answer = chunks[-1]["answer"]
    assert answer is not None
    return answer["text"]


@pytest.mark.parametrize("kind", ["broken", "schema", "html"])
def test_bad_answers_makes_exactly_the_next_formatted_answers_bad(sim: SimOllama, client: Ollama, kind: str) -> None:
    sim.set(bad_answers=2, bad_kind=kind)
    # Whole answers and streams, chat and generate alike, take one each.
    assert kind_of(scene_by_chat(client)) == kind
    assert kind_of(scene_by_stream(client)) == kind
    assert kind_of(scene_by_chat(client)) == "good"
    assert kind_of(scene_by_stream(client)) == "good"


def test_requests_without_a_format_errors_and_loads_do_not_use_up_bad_answers(sim: SimOllama, client: Ollama) -> None:
    sim.set(bad_answers=1, bad_kind="broken")
    client.generate(MODEL, "a scene")
    client.chat(MODEL, [{"role": "user", "content": "a scene"}])
    collect(client.chat_stream(MODEL, [{"role": "user", "content": "a scene"}]))
    with pytest.raises(ServiceError):
        client.generate("mistral:7b", "a scene", format=SCENE_SCHEMA)
    client.generate(MODEL, "", format=SCENE_SCHEMA)  # only loads the model

    assert kind_of(scene_by_chat(client)) == "broken"
    assert kind_of(scene_by_chat(client)) == "good"
    # format "json" is a format too.
    sim.set(bad_answers=1)
    with pytest.raises(json.JSONDecodeError):
        json.loads(client.generate(MODEL, "a colour", format="json")["text"])
    assert isinstance(json.loads(client.generate(MODEL, "a colour", format="json")["text"]), dict)


def test_bad_answers_are_shared_out_one_each_among_requests_that_arrive_together(
    sim: SimOllama, client: Ollama
) -> None:
    sim.set(hang=True, bad_answers=3, bad_kind="schema")
    with ThreadPoolExecutor(6) as pool:
        texts = [pool.submit(scene_by_chat, client) for _ in range(6)]
        # Hold them all at the door, then let them in at once.
        deadline = time.monotonic() + 5
        while len(sim.state.seen) < 6:
            assert time.monotonic() < deadline, "the requests did not all arrive"
            time.sleep(0.01)
        sim.set(hang=False)
        kinds = sorted(kind_of(t.result()) for t in texts)
    assert kinds == ["good"] * 3 + ["schema"] * 3
    assert sim.state.bad_answers == 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_html_answer_fits_the_schema_with_script_markup_in_its_strings(
    sim: SimOllama, client: Ollama, stream: bool
) -> None:
    sim.set(bad_answers=1, bad_kind="html")
    text = scene_by_stream(client) if stream else scene_by_chat(client)
    scene = json.loads(text)
    assert conforms(scene, SCENE_SCHEMA), scene
    # Every free-text string ends in the markup; the enum keeps to its values.
    assert scene["mood"] in ("calm", "tense", "joyful")
    free = strings_of({k: v for k, v in scene.items() if k != "mood"})
    assert len(free) >= 5 and all(s.endswith(MARKUP) and len(s) > len(MARKUP) for s in free), free
    assert MARKUP in text  # as it is, not escaped, in what the client receives

    sim.set(bad_answers=1)
    answer = json.loads(client.generate(MODEL, "a colour", format="json")["text"])
    assert isinstance(answer, dict) and all(s.endswith(MARKUP) for s in strings_of(answer))


def test_bad_kind_must_be_a_known_kind(sim: SimOllama) -> None:
    with pytest.raises(ValueError, match="bad_kind"):
        sim.set(bad_kind="xml")


def test_an_unknown_model_is_a_permanent_error_that_says_to_pull_it(client: Ollama) -> None:
    calls = [
        lambda: client.generate("mistral:7b", "hi"),
        lambda: client.chat("mistral:7b", [{"role": "user", "content": "hi"}]),
        lambda: collect(client.chat_stream("mistral:7b", [{"role": "user", "content": "hi"}])),
        lambda: client.show("mistral:7b"),
    ]
    for call in calls:
        with pytest.raises(ServiceError) as e:
            call()
        assert e.value.permanent and e.value.status == 404
        assert "'mistral:7b'" in e.value.message and "ollama pull mistral:7b" in e.value.message


def test_out_of_memory_is_a_retryable_server_error(sim: SimOllama, client: Ollama) -> None:
    sim.set(fail="oom")
    for call in (lambda: client.generate(MODEL, "hi"), lambda: collect(client.generate_stream(MODEL, "hi"))):
        with pytest.raises(ServiceError) as e:
            call()
        assert not e.value.permanent and e.value.status == 500
        assert OOM in e.value.message


def test_a_hanging_server_times_out_and_can_be_retried(sim: SimOllama, client: Ollama) -> None:
    sim.set(hang=True)
    started = time.monotonic()
    for call in (
        lambda: client.version(timeout=0.3),
        lambda: client.generate(MODEL, "hi", timeout=0.3),
        lambda: collect(client.chat_stream(MODEL, [{"role": "user", "content": "hi"}], timeout=0.3)),
    ):
        with pytest.raises(ServiceError) as e:
            call()
        assert not e.value.permanent and "no answer in time" in e.value.message
    assert time.monotonic() - started < 3

    sim.set(hang=False)
    assert client.version() == "0.12.6"


def test_an_html_answer_is_permanent(sim: SimOllama, client: Ollama) -> None:
    sim.set(garbage=True)
    for call in (client.version, client.tags, lambda: collect(client.generate_stream(MODEL, "hi"))):
        with pytest.raises(ServiceError) as e:
            call()
        assert e.value.permanent and "HTML" in e.value.message


def test_an_answer_nested_hundreds_deep_is_permanent(sim: SimOllama, client: Ollama) -> None:
    # Walked later (repr in messages, json.dumps into the database), it would raise RecursionError.
    deep: list[Any] = []
    for _ in range(699):
        deep = [deep]
    sim.set(version=deep)
    with pytest.raises(ServiceError) as e:
        client.version()
    assert e.value.permanent
    assert "/api/version: answered JSON nested 701 levels deep, over the limit of 64" in e.value.message


def test_a_stream_cut_before_its_last_chunk_is_retryable(sim: SimOllama, client: Ollama) -> None:
    sim.set(drop_stream_after=3)
    received: list[Chunk] = []
    with pytest.raises(ServiceError) as e:
        for chunk in client.generate_stream(MODEL, "A storm over the mountain pass"):
            received.append(chunk)
    assert not e.value.permanent
    assert len(received) <= 3 and not any(c["done"] for c in received)

    with pytest.raises(ServiceError) as e:
        client.generate(MODEL, "A storm over the mountain pass")
    assert not e.value.permanent


def test_a_server_that_dies_before_answering_is_retryable(sim: SimOllama, client: Ollama) -> None:
    sim.set(drop_stream_after=0)
    with pytest.raises(ServiceError) as e:
        client.generate(MODEL, "A storm over the mountain pass")
    assert not e.value.permanent


def test_a_stopped_server_refuses_connections_retryably_until_it_starts_again(sim: SimOllama, client: Ollama) -> None:
    sim.stop()
    with pytest.raises(ServiceError) as e:
        client.version()
    assert not e.value.permanent and "connection refused" in e.value.message

    sim.start()
    assert client.version() == "0.12.6"


def test_several_simulated_nodes_run_side_by_side_on_the_standard_port() -> None:
    first = SimOllama(host="127.0.77.2", port=11434, models=["llama3.2:3b"])
    second = SimOllama(host="127.0.77.3", port=11434, models=["qwen2.5:7b"], version="0.11.0")
    with first, second, Ollama(first.url) as one, Ollama(second.url) as two:
        assert [m["name"] for m in one.tags()] == ["llama3.2:3b"]
        assert [m["name"] for m in two.tags()] == ["qwen2.5:7b"]
        assert two.version() == "0.11.0"


# The simulated server as the official client sees it


@pytest.fixture
def official_client(sim: SimOllama) -> Iterator[official.Client]:
    with official.Client(host=sim.url, timeout=10) as c:
        yield c


def test_the_official_client_lists_shows_and_sees_loaded_models(official_client: official.Client) -> None:
    models = official_client.list().models
    assert [m.model for m in models] == [MODEL, "qwen2.5:7b"]
    assert models[0].details is not None and models[0].details.family == "llama"
    assert official_client.ps().models == []

    official_client.generate(MODEL, "hello", keep_alive="5m")
    [loaded] = official_client.ps().models
    assert loaded.model == MODEL and loaded.expires_at is not None and loaded.size_vram

    shown = official_client.show(MODEL)
    assert shown.details is not None and shown.modelinfo and shown.capabilities == ["completion"]


def test_the_official_client_generates_and_chats_streamed_and_not(official_client: official.Client) -> None:
    answer = official_client.generate(MODEL, "A paper boat in the rain")
    assert answer.done and answer.response and answer.done_reason == "stop" and answer.context
    assert answer.eval_count and answer.total_duration

    parts = list(official_client.generate(MODEL, "A paper boat in the rain", stream=True))
    assert "".join(p.response or "" for p in parts) == answer.response and parts[-1].done

    messages = [{"role": "user", "content": "A paper boat in the rain"}]
    reply = official_client.chat(MODEL, messages=messages)
    assert reply.message.role == "assistant" and reply.message.content
    pieces = list(official_client.chat(MODEL, messages=messages, stream=True))
    assert "".join(p.message.content or "" for p in pieces) == reply.message.content


def test_the_official_client_gets_answers_that_fit_a_pydantic_schema(
    official_client: official.Client,
) -> None:
    schema = Scene.model_json_schema()
    reply = official_client.chat(
        MODEL, messages=[{"role": "user", "content": "Plan a scene about a lost kite"}], format=schema
    )
    scene = Scene.model_validate_json(reply.message.content or "")
    assert len(scene.shots) >= 2 and all(shot.subjects for shot in scene.shots)

    parts = official_client.generate(MODEL, "Plan a scene about a lost kite", format=schema, stream=True)
    Scene.model_validate_json("".join(p.response or "" for p in parts))

    data = json.loads(official_client.generate(MODEL, "A kite", format="json").response or "")
    assert isinstance(data, dict)


def test_the_official_client_reads_answers_that_take_answer_seconds(
    sim: SimOllama, official_client: official.Client
) -> None:
    official_client.generate(MODEL, "warm up", keep_alive="5m")
    sim.set(answer_seconds=0.2)
    messages = [{"role": "user", "content": "A paper boat in the rain"}]

    started = time.monotonic()
    reply = official_client.chat(MODEL, messages=messages)
    assert time.monotonic() - started >= 0.2
    assert reply.done and reply.message.content

    started = time.monotonic()
    pieces = list(official_client.chat(MODEL, messages=messages, stream=True))
    assert time.monotonic() - started >= 0.2
    assert "".join(p.message.content or "" for p in pieces) == reply.message.content and pieces[-1].done

    started = time.monotonic()
    schema = Scene.model_json_schema()
    parts = list(official_client.generate(MODEL, "Plan a scene about a lost kite", format=schema, stream=True))
    assert time.monotonic() - started >= 0.2
    Scene.model_validate_json("".join(p.response or "" for p in parts))


def test_the_official_client_reads_html_answers_that_fit_a_pydantic_schema(
    sim: SimOllama, official_client: official.Client
) -> None:
    sim.set(bad_answers=1, bad_kind="html")
    schema = Scene.model_json_schema()
    reply = official_client.chat(MODEL, messages=[{"role": "user", "content": "A lost kite"}], format=schema)
    scene = Scene.model_validate_json(reply.message.content or "")
    assert scene.title.endswith(MARKUP) and all(shot.camera.endswith(MARKUP) for shot in scene.shots)


def test_the_official_client_raises_response_error_404_for_an_unknown_model(
    official_client: official.Client,
) -> None:
    with pytest.raises(official.ResponseError) as e:
        official_client.generate("mistral:7b", "hi")
    assert e.value.status_code == 404 and 'model "mistral:7b" not found' in e.value.error

    with pytest.raises(official.ResponseError) as e:
        list(official_client.chat("mistral:7b", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert e.value.status_code == 404
