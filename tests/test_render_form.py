"""The render form follows its template: its settings start at the template's own, it asks only
what the template takes, it offers an input image (an upload, kept through a form error, or a
finished render) where the template starts from one, and it opens on the best template the pool
can run that takes a prompt. Without a browser: what the page and its htmx answers hold."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from nodes.models import Capability, Node
from renders.management.commands.load_templates import load
from renders.models import RenderJob, Template

NET = 57 if os.environ.get("DATABASE_URL") else 56
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def templates(db: None, settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    load()
    return Path(settings.MEDIA_ROOT)


def form_html(html: str) -> str:
    m = re.search(r'<form method="post" action="/renders/" class="render-form" id="render-form".*?</form>', html, re.S)
    assert m, "no render form on the page"
    return m.group(0)


def fields(html: str) -> list[str]:
    """The names of the form's visible fields, in order."""
    return re.findall(r'<div class="field field-([a-z_]+)">', form_html(html))


def value(html: str, name: str) -> str:
    """What a field of the form starts at, as the browser would send it."""
    form = form_html(html)
    m = re.search(rf'<select name="{name}"[^>]*>.*?<option value="([^"]*)"[^>]*selected', form, re.S)
    if m:
        return m.group(1)
    m = re.search(rf'<textarea name="{name}"[^>]*>\s*(.*?)</textarea>', form, re.S)
    if m:
        return m.group(1)
    m = re.search(rf'<input type="[a-z]+" name="{name}" value="([^"]*)"', form)
    return m.group(1) if m else ""


def form_for(client: Client, template: str, **typed: str) -> str:
    """The form as htmx fetches it when `template` is chosen in it, with what was typed."""
    pk = Template.objects.get(name=template).pk
    answer = client.get(reverse("renders:index"), {"template": pk, **typed}, **HTMX)
    assert answer.status_code == 200
    return answer.content.decode()


def png(width: int = 64, height: int = 48) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(data, format="PNG")
    return data.getvalue()


def comfyui(name: str, classes: list[str], files: dict[str, list[str]] | None = None) -> Capability:
    node = Node.objects.create(name=name, host=f"127.0.{NET}.{Node.objects.count() + 1}")
    return Capability.objects.create(
        node=node,
        kind=Capability.COMFYUI,
        port=8188,
        status=Capability.ONLINE,
        inventory={"classes": classes, "files": files or {}},
    )


def test_the_settings_start_at_the_templates_own(logged_in: Client, templates: Path) -> None:
    html = form_for(logged_in, "wan22-t2v")
    assert fields(html) == [
        "template",
        "prompt",
        "negative",
        "resolution",
        "frames",
        "fps",
        "steps",
        "cfg",
        "seed",
        "priority",
        "count",
        "node",
    ]
    assert [value(html, n) for n in ("resolution", "frames", "fps", "steps", "cfg")] == [
        "832x480",
        "81",
        "16",
        "20",
        "3.5",
    ]
    hunyuan = form_for(logged_in, "hunyuan15-t2v")
    assert [value(hunyuan, n) for n in ("resolution", "frames", "fps", "cfg")] == ["1280x720", "121", "24", "6.0"]
    # A size the usual list lacks is offered when it is the template's own.
    test = form_for(logged_in, "test-video-mp4")
    assert value(test, "resolution") == "256x256" and '<option value="256x256" selected>256 × 256</option>' in test


def test_fields_the_template_does_not_take_are_left_out(logged_in: Client, templates: Path) -> None:
    still = form_for(logged_in, "sdxl-still")
    assert "frames" not in fields(still) and "fps" not in fields(still)
    assert {"negative", "resolution", "steps", "cfg", "seed"} <= set(fields(still))
    flux = form_for(logged_in, "flux-still")
    assert "negative" not in fields(flux)  # Flux zeroes its negative: there is no place for one
    test = form_for(logged_in, "test-still-image")
    assert fields(test) == ["template", "prompt", "resolution", "priority", "count", "node"]
    assert "This template takes no prompt: the text only names its jobs." in test
    # Posted all the same (a page open from before), the settings it has no place for are not kept.
    post = {"template": Template.objects.get(name="test-still-image").pk, "prompt": "a name", "resolution": "512x512"}
    post |= {"frames": "33", "steps": "12", "seed": "7", "priority": "0", "count": "1"}
    logged_in.post(reverse("renders:index"), post)
    assert RenderJob.objects.get().settings == {"width": 512, "height": 512}


def test_choosing_another_template_refits_the_form_and_keeps_what_was_typed(logged_in: Client, templates: Path) -> None:
    page = logged_in.get(reverse("renders:index")).content.decode()
    select = re.search(r'<select name="template"[^>]*>', page)
    assert select and 'hx-get="/renders/"' in select.group(0) and 'hx-target="#render-form"' in select.group(0)
    html = form_for(logged_in, "sdxl-still", prompt="a lighthouse at dusk", negative="blurry", count="3")
    assert html.lstrip().startswith('<form method="post" action="/renders/"')  # the form alone, for htmx
    assert (value(html, "prompt"), value(html, "negative"), value(html, "count")) == (
        "a lighthouse at dusk",
        "blurry",
        "3",
    )
    assert value(html, "template") == str(Template.objects.get(name="sdxl-still").pk)
    assert (value(html, "steps"), value(html, "cfg")) == ("25", "7.0")


def test_the_form_opens_on_the_best_template_the_pool_can_run_that_takes_a_prompt(
    logged_in: Client, templates: Path
) -> None:
    # Nothing can run anything: the first that takes a prompt, never a test template without one.
    page = logged_in.get(reverse("renders:index")).content.decode()
    assert value(page, "template") == str(Template.objects.get(name="flux-still").pk)
    sdxl = Template.objects.get(name="sdxl-still")
    needs = sdxl.requirements()
    files: dict[str, list[str]] = {}
    for folder, name in needs.files:
        files.setdefault(folder, []).append(name)
    comfyui("gpu", [*needs.classes, "EmptyImage", "SaveImage"], files)
    page = logged_in.get(reverse("renders:index")).content.decode()
    assert value(page, "template") == str(sdxl.pk)
    assert fields(page)[:3] == ["template", "prompt", "negative"]


def test_an_image_template_asks_for_an_input_image_and_refuses_none(logged_in: Client, templates: Path) -> None:
    html = form_for(logged_in, "wan22-i2v")
    assert "image" in fields(html) and "image_from" in fields(html)
    assert 'enctype="multipart/form-data"' in html
    assert "image" not in fields(form_for(logged_in, "wan22-t2v"))
    post = {"template": Template.objects.get(name="wan22-i2v").pk, "prompt": "waves", "resolution": "832x480"}
    post |= {"frames": "33", "fps": "16", "steps": "4", "cfg": "3.5", "seed": "1", "priority": "0", "count": "1"}
    answer = logged_in.post(reverse("renders:index"), post)
    assert answer.status_code == 400
    assert "This template starts from an image: upload one or pick a finished render." in answer.content.decode()
    assert not RenderJob.objects.exists()


def i2v_post(**changes: Any) -> dict[str, Any]:
    post = {"template": Template.objects.get(name="wan22-i2v").pk, "prompt": "waves", "resolution": "832x480"}
    return (
        post
        | {"frames": "33", "fps": "16", "steps": "4", "cfg": "3.5", "seed": "1", "priority": "0", "count": "1"}
        | changes
    )


def test_an_uploaded_image_is_kept_under_our_name_and_sent_with_the_job(logged_in: Client, templates: Path) -> None:
    upload = SimpleUploadedFile("../../etc/holiday photo.png", png(), content_type="image/png")
    answer = logged_in.post(reverse("renders:index"), i2v_post(image=upload))
    assert answer.status_code == 302
    job = RenderJob.objects.get()
    kept = job.settings["input_image"]
    assert re.fullmatch(r"inputs/[0-9a-f]{32}\.png", kept)  # never the browser's file name
    with Image.open(templates / kept) as img:
        assert img.size == (64, 48)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>not a picture</html>", "That is not a PNG, JPEG, WEBP or GIF image."),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "The image could not be read"),
    ],
)
def test_a_bad_upload_is_refused_with_the_reason_and_nothing_is_queued(
    logged_in: Client, templates: Path, data: bytes, message: str
) -> None:
    answer = logged_in.post(reverse("renders:index"), i2v_post(image=SimpleUploadedFile("x.png", data)))
    assert answer.status_code == 400 and message in answer.content.decode()
    assert not RenderJob.objects.exists() and not (templates / "inputs").exists()


def test_an_upload_survives_a_form_error(logged_in: Client, templates: Path) -> None:
    upload = SimpleUploadedFile("start.png", png(), content_type="image/png")
    answer = logged_in.post(reverse("renders:index"), i2v_post(image=upload, steps="500"))
    assert answer.status_code == 400
    html = answer.content.decode()
    assert "Steps must be between 1 and 200; got 500." in html
    kept = re.search(r'<input type="hidden" name="image_kept" value="(inputs/[0-9a-f]{32}\.png)"', html)
    assert kept, "the uploaded image is not carried in the form shown again"
    assert f'src="/media/{kept.group(1)}"' in html  # and shown, so the user sees it is still there
    assert not RenderJob.objects.exists()
    # Corrected and sent again without choosing the file again: queued with the image sent first.
    logged_in.post(reverse("renders:index"), i2v_post(image_kept=kept.group(1)))
    assert RenderJob.objects.get().settings["input_image"] == kept.group(1)


def test_a_kept_image_must_be_an_image_in_the_media_folder(logged_in: Client, templates: Path) -> None:
    for bad in ("../../settings.py", "/etc/passwd", "inputs/missing.png"):
        answer = logged_in.post(reverse("renders:index"), i2v_post(image_kept=bad))
        assert answer.status_code == 400, bad
        assert "This template starts from an image" in answer.content.decode()
    assert not RenderJob.objects.exists()


def test_a_finished_render_can_be_the_input_image(logged_in: Client, templates: Path) -> None:
    still = Template.objects.get(name="test-still-image")
    path = "renders/ab/done/00.png"
    (templates / path).parent.mkdir(parents=True)
    (templates / path).write_bytes(png())
    done = RenderJob.objects.create(
        template=still, prompt="a red square", status=RenderJob.COMPLETED, outputs=[{"path": path, "kind": "image"}]
    )
    html = form_for(logged_in, "wan22-i2v")
    assert f'<option value="{path}">a red square ({str(done.code)[:8]})</option>' in html
    logged_in.post(reverse("renders:index"), i2v_post(image_from=path))
    job = RenderJob.objects.exclude(pk=done.pk).get()
    assert job.settings["input_image"] == path
    # Only one of the finished renders offered is taken.
    answer = logged_in.post(reverse("renders:index"), i2v_post(image_from="renders/../../secret.png"))
    assert answer.status_code == 400 and "Select a valid choice" in answer.content.decode()


def test_the_story_form_names_its_default_template_and_it_always_takes_a_prompt(
    logged_in: Client, templates: Path
) -> None:
    html = logged_in.get(reverse("stories:index")).content.decode()
    assert "Default: wan22-t2v (for scenes, a HoloCine one)" in html  # nothing can run anything yet
    cap = comfyui("sim gpu", [])
    Node.objects.filter(pk=cap.node_id).update(simulated=True)
    html = logged_in.get(reverse("stories:index")).content.decode()
    # A lab of simulated ComfyUIs has no model files: the model-free test video that takes a prompt.
    assert "Default: test-video-prompt (for scenes, a HoloCine one)" in html
    assert Template.objects.get(name="test-video-prompt").takes("positive")
    assert "takes no prompt" not in html
