"""Careless and hostile input: ids that only look like numbers, ports out of range, one machine
typed several ways, control characters a model wrote. Each is answered with what is wrong, where
the user is, and changes nothing."""

from __future__ import annotations

import os
import re
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from nodes.discovery import TargetError, discover, expand
from nodes.models import Capability, Discovery, Node
from nodes.sim.ollama import SimOllama
from renders.management.commands.load_templates import load
from stories.models import StepRun, Story
from tests.test_story_pages import act, field_errors, page, rendered, story_with

# Each run of the suite (SQLite, PostgreSQL) takes its own 127.0.x.0 block.
NET = 63 if os.environ.get("DATABASE_URL") else 62
HOST = f"127.0.{NET}.22"
# HOST as a resolver also reads it: one integer, octal parts, hex parts, a short form, IPv4-mapped.
SAME = [
    str(127 << 24 | NET << 8 | 22),
    f"127.0.0{NET:o}.026",
    f"0x7f.0.{NET:#x}.0x16",
    f"127.{NET << 8 | 22}",
    f"::ffff:{HOST}",
]
# Not numbers to int(), or numbers no database integer holds: none may reach a query.
NOT_IDS = ["²", "١", "99999999999999999999999", "-1", " 1", "1.0", "0x1", ""]
HOSTILE = "\x1b[2J\x1b[31m gone\r over\x07"


@pytest.fixture
def templates(db: None) -> None:
    load()


def runs() -> list[tuple[Any, ...]]:
    return list(StepRun.objects.order_by("pk").values_list("pk", "status", "version", "attempts", "held"))


def nodes() -> list[tuple[Any, ...]]:
    return list(Node.objects.order_by("pk").values_list("pk", "name", "host"))


def messages(html: str) -> str:
    m = re.search(r'<ul class="messages" id="messages".*?</ul>', html, re.S)
    assert m, "no messages on the page"
    return m.group(0)


def add(client: Client, **data: Any) -> str:
    """The Add a node form, posted; the page it answers with."""
    answer = client.post(reverse("nodes:add"), {"name": "gpu-a", "ollama_limit": 1, "comfyui_limit": 1, **data})
    assert answer.status_code in (200, 302)
    return answer.content.decode()


def add_node(*args: str) -> str:
    with pytest.raises(CommandError) as e:
        call_command("add_node", *args, stdout=StringIO())
    return str(e.value)


# --- ids that only look like numbers -----------------------------------------------------------


@pytest.mark.parametrize("value", NOT_IDS)
def test_a_retry_of_a_run_that_is_no_number_is_not_found_and_changes_nothing(
    logged_in: Client, templates: None, value: str
) -> None:
    story = story_with()
    StepRun.objects.filter(story=story, step="music").update(status=StepRun.FAILED, error="boom")
    before = runs()
    assert "That step run is not one of this story&#x27;s." in messages(act(logged_in, story, "retry", 404, run=value))

    plain = logged_in.post(reverse("stories:action", args=[story.code, "retry"]), {"run": value})
    assert plain.status_code == 404
    assert "That step run is not one of this story&#x27;s." in messages(plain.content.decode())
    assert runs() == before


@pytest.mark.parametrize("value", NOT_IDS)
def test_a_rewrite_of_a_part_that_is_no_number_is_refused_and_changes_nothing(
    logged_in: Client, templates: None, value: str
) -> None:
    story = story_with(3)
    StepRun.objects.filter(story=story, step="prompts", part=0).update(status=StepRun.COMPLETED)
    before = runs()
    html = act(logged_in, story, "rewrite", 400, part=value)
    assert f"Shot {value} has no prompt to write again yet." in messages(html)

    plain = logged_in.post(reverse("stories:action", args=[story.code, "rewrite"]), {"part": value})
    assert plain.status_code == 400
    assert f"Shot {value} has no prompt to write again yet." in messages(plain.content.decode())
    assert runs() == before


def test_a_render_of_a_shot_that_is_no_number_is_left_out_of_the_gallery(logged_in: Client, templates: None) -> None:
    story = story_with(2)
    rendered(story, range(1, 3))
    weird = rendered(story, range(3, 4))[0]
    weird.target = "shot:²"
    weird.save(update_fields=["target"])
    html = page(logged_in, story, "gallery")
    assert re.findall(r'id="gallery-(\d+)"', html) == ["1", "2"]


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["²", "99999999999999999999999"])
def test_the_story_command_says_no_story_for_an_id_that_is_no_number(value: str) -> None:
    Story.objects.create(idea="A lighthouse keeper finds a message in a bottle.", model="m")
    with pytest.raises(CommandError, match=f"^no story {value}$"):
        call_command("story", "show", value, stdout=StringIO())


# --- ports out of range ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("port", "says"),
    [
        ("0", "Ensure this value is greater than or equal to 1: ports run from 1 to 65535."),
        ("70000", "Ensure this value is less than or equal to 65535: ports run from 1 to 65535."),
    ],
)
def test_add_node_says_what_is_wrong_with_a_port_out_of_range(port: str, says: str) -> None:
    assert add_node("gpu-a", HOST, "--comfyui-port", port) == f"ComfyUI port: {says}"
    error = add_node("gpu-a", HOST, "--ollama-port", port, "--comfyui-port", "8188")
    assert error == f"Ollama port: {says}"
    both = add_node("gpu-a", "10.0.0.0/24", "--comfyui-port", port)
    assert both == f"Host: Name one machine: a host name or an address, not a range. ComfyUI port: {says}"
    assert "Give the Ollama port" in add_node("gpu-a", HOST)
    assert not Node.objects.exists() and not Capability.objects.exists()


@pytest.mark.django_db
def test_the_add_form_says_what_is_wrong_with_a_port_out_of_range(logged_in: Client) -> None:
    html = add(logged_in, host=HOST, comfyui_port="0")
    assert "greater than or equal to 1: ports run from 1 to 65535." in field_errors(html, "comfyui_port")
    assert "Give the Ollama port" not in html
    assert not Node.objects.exists() and not Capability.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "port", "says"),
    [
        ("ollama_port", "0", "Ollama port: Ensure this value is greater than or equal to 1"),
        ("comfyui_port", "70000", "ComfyUI port: Ensure this value is less than or equal to 65535"),
        ("comfyui_port", "", "ComfyUI port: This field is required."),
    ],
)
def test_discover_with_a_port_out_of_range_says_why_on_the_page_and_probes_nothing(
    logged_in: Client, django_capture_on_commit_callbacks: Any, field: str, port: str, says: str
) -> None:
    # The Discover form is a plain form post: the page comes back with the form and its errors.
    data = {"targets": HOST, "ollama_port": "11434", "comfyui_port": "8188", field: port}
    with django_capture_on_commit_callbacks() as queued:
        answer = logged_in.post(reverse("nodes:discover"), data)
    assert answer.status_code == 400
    html = answer.content.decode()
    assert f'<p class="message error">{says}' in html
    assert f'name="targets" value="{HOST}"' in html  # what was typed stays in the form
    assert not Discovery.objects.exists() and not queued and not Node.objects.exists()


# --- one machine, typed several ways -----------------------------------------------------------


def test_an_address_is_written_one_way_however_it_is_typed() -> None:
    assert expand(" ".join([HOST, *SAME])) == [HOST]
    assert expand("[0:0:0:0:0:0:0:1] ::1 FE80::1 GPU.Lab 3d.cafe 0x1.cafe 1e100.net") == [
        "::1",
        "fe80::1",
        "gpu.lab",
        "3d.cafe",
        "0x1.cafe",
        "1e100.net",
    ]
    assert expand("2130706433 127.1 0177.0.0.01") == ["127.0.0.1"]


@pytest.mark.parametrize("target", ["999.1.1.1", "08", "1.2.3.4.5", "4294967296", "0x100000000"])
def test_numbers_no_resolver_takes_for_an_address_are_refused(target: str) -> None:
    with pytest.raises(TargetError, match=rf"^'{re.escape(target)}' is not an address: write four numbers"):
        expand(target)


@pytest.mark.django_db
def test_one_machine_typed_another_way_is_already_in_the_pool(logged_in: Client) -> None:
    assert add(logged_in, host=HOST, ollama_port="11434") == ""  # redirected: added
    before = nodes()
    for typed in SAME:
        html = add(logged_in, name="gpu-b", host=typed, ollama_port="11434")
        said = f"{typed} is {HOST}, which is already in the pool as gpu-a: edit that node instead."
        assert said in field_errors(html, "host")
        assert add_node("gpu-b", typed, "--ollama-port", "11434") == f"Host: {said}"
    html = add(logged_in, name="gpu-b", host=HOST, ollama_port="11434")
    assert f"{HOST} is already in the pool as gpu-a: edit that node instead." in field_errors(html, "host")
    assert nodes() == before and Capability.objects.count() == 1

    # A new machine typed as a number is kept as its address; its own edit is no duplicate.
    assert add(logged_in, name="gpu-c", host=f"0x7f.0.{NET}.0x17", ollama_port="11434") == ""
    gpu_c = Node.objects.get(name="gpu-c")
    assert gpu_c.host == f"127.0.{NET}.23"
    edit = {"name": "gpu-c", "host": str(127 << 24 | NET << 8 | 23), "ollama_port": "11434", "enabled": "on"}
    answer = logged_in.post(reverse("nodes:edit", args=[gpu_c.code]), {**edit, "ollama_limit": 1, "comfyui_limit": 1})
    assert answer.status_code == 302
    assert Node.objects.get(name="gpu-c").host == f"127.0.{NET}.23"


@pytest.mark.django_db
def test_discovery_of_one_machine_typed_several_ways_merges_it_into_its_node() -> None:
    with SimOllama(HOST, 0) as sim:
        gpu = Node.objects.create(name="gpu-a", host=HOST)
        run = discover(" ".join(SAME), ollama_port=sim.port, comfyui_port=1)
        assert run.probed == 1
        assert [(f["host"], f["node"], f["new"]) for f in run.found] == [(HOST, "gpu-a", False)]
        assert nodes() == [(gpu.pk, "gpu-a", HOST)]
        assert [c.kind for c in Capability.objects.filter(node=gpu)] == ["ollama"]


@pytest.mark.django_db
def test_the_discover_form_counts_one_machine_typed_several_ways_once(
    logged_in: Client, django_capture_on_commit_callbacks: Any
) -> None:
    data = {"targets": " ".join([HOST, *SAME]), "ollama_port": "11434", "comfyui_port": "8188"}
    with django_capture_on_commit_callbacks():
        answer = logged_in.post(reverse("nodes:discover"), data, follow=True)
    assert "Discovering 1 address(es)" in answer.content.decode()


# --- control characters in what the story command prints --------------------------------------


@pytest.mark.django_db
def test_the_story_command_prints_control_characters_as_escapes() -> None:
    story = Story.objects.create(
        idea=f"An idea {HOSTILE}",
        title=f"The Keeper {HOSTILE}",
        text=f"Mara keeps the light.\n{HOSTILE}",
        model=f"llama{HOSTILE}",
        state=Story.FAILED,
    )
    for step in ("story", "segments"):
        StepRun.objects.create(story=story, step=step, status=StepRun.COMPLETED, log=f"asked\n{HOSTILE}\n")
    StepRun.objects.create(
        story=story, step="characters", status=StepRun.FAILED, error=f"bad answer {HOSTILE}", log=f"{HOSTILE}\n"
    )
    StepRun.objects.create(story=story, step="narration", status=StepRun.PENDING, waiting=f"wait {HOSTILE}")

    out = StringIO()
    call_command("story", "show", str(story.code), stdout=out)
    call_command("story", "list", stdout=out)
    with pytest.raises(CommandError) as failed:
        call_command("story", "resume", str(story.code), "--wait", "--timeout", "0.5", stdout=out)
    printed = out.getvalue() + str(failed.value)

    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", printed)
    escaped = r"\x1b[2J\x1b[31m gone\x0d over\x07"
    assert f"Story {story.code}: The Keeper {escaped}" in printed  # show
    assert f"  idea: An idea {escaped}" in printed
    assert f"characters  failed: bad answer {escaped}" in printed
    assert f"narration   pending: wait {escaped}" in printed
    assert f"{story.code}  failed      0%  The Keeper {escaped}" in printed  # list
    assert f"  characters: failed: bad answer {escaped}" in printed  # following it
    # Resumed, the story runs (narration may start) and waits, the failed step named in the error.
    assert f"(characters failed: bad answer {escaped}; narration waiting: wait {escaped})" in str(failed.value)
