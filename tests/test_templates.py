"""Importing workflows as templates through the page: checks, detection and corrections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from nodes.models import Capability, Node
from renders.models import Template


def still() -> dict:
    return json.loads((Path(__file__).resolve().parents[1] / "nodes" / "workflows" / "still_image.json").read_text())


def post(client: Client, **data: object) -> str:
    answer = client.post(reverse("renders:template-import"), {"name": "mine", "kind": "still", **data})
    return answer.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not JSON"),
        ("", "Upload a workflow file or paste one"),
        ('{"nodes": [], "links": []}', "UI format"),
        ('{"1": {"class_type": "EmptyImage", "inputs": {}}}', "output"),
    ],
)
def test_bad_workflows_are_refused_with_what_to_do(logged_in: Client, text: str, says: str) -> None:
    assert says in post(logged_in, text=text)
    assert not Template.objects.exists()


@pytest.mark.django_db
def test_megabytes_of_junk_are_refused(logged_in: Client) -> None:
    junk = SimpleUploadedFile("w.json", b"x" * (6 * 1024 * 1024), content_type="application/json")
    assert "limit" in post(logged_in, upload=junk)
    assert not Template.objects.exists()


@pytest.mark.django_db
def test_an_upload_is_imported_with_its_parameters_detected(logged_in: Client) -> None:
    upload = SimpleUploadedFile("still.json", json.dumps({"prompt": still()}).encode())
    answer = logged_in.post(
        reverse("renders:template-import"), {"name": "mine", "kind": "still", "upload": upload}, follow=True
    )
    assert "Saved template mine" in answer.content.decode()
    t = Template.objects.get(name="mine")
    assert t.mapping["width"] == [["1", "width"]] and t.mapping["filename_prefix"] == [["2", "filename_prefix"]]
    assert t.needs["classes"] == ["EmptyImage", "SaveImage"]


@pytest.mark.django_db
def test_classes_are_checked_against_the_chosen_node_and_the_mapping_can_be_corrected(logged_in: Client) -> None:
    node = Node.objects.create(name="gpu", host="gpu.lab")
    cap = Capability.objects.create(node=node, kind="comfyui", port=8188, inventory={"classes": ["EmptyImage"]})
    text = json.dumps(still())
    assert "gpu lacks these node classes: SaveImage" in post(logged_in, text=text, check_on=cap.pk)
    assert "6.text" in post(logged_in, text=text, mapping="positive: 6.text")  # no such node
    assert "start with one of" in post(logged_in, text=text, mapping="colour: 1.color")
    cap.inventory = {"classes": ["EmptyImage", "SaveImage"]}
    cap.save()
    logged_in.post(
        reverse("renders:template-import"),
        {"name": "mine", "kind": "still", "text": text, "check_on": cap.pk, "mapping": "seed: 1.color"},
    )
    assert Template.objects.get(name="mine").mapping == {"seed": [["1", "color"]]}


def padded(size: int) -> str:
    """The still-image workflow, its prompt padded so that the JSON is `size` bytes."""
    workflow = still()
    text = json.dumps(workflow)
    workflow["_pad"] = {"class_type": "PrimitiveString", "inputs": {"value": ""}}
    base = len(json.dumps(workflow))
    workflow["_pad"]["inputs"]["value"] = "x" * (size - base)
    assert len(json.dumps(workflow)) == size and len(text) < size
    return json.dumps(workflow)


@pytest.mark.django_db
def test_an_uploaded_workflow_survives_a_form_error(logged_in: Client) -> None:
    import html as entities
    import re

    Template.objects.create(name="mine", workflow=still())
    raw = json.dumps({"prompt": still()})
    answer = logged_in.post(
        reverse("renders:template-import"),
        {"name": "mine", "kind": "still", "upload": SimpleUploadedFile("still.json", raw.encode())},
    )
    assert answer.status_code == 400
    page = answer.content.decode()
    assert "A template with that name exists already." in page
    kept = re.search(r'<textarea name="text"[^>]*>(.*?)</textarea>', page, re.S)
    assert kept and json.loads(entities.unescape(kept.group(1))) == json.loads(raw)
    assert "The file you sent, kept: correct what is marked and save again." in page
    # Corrected, the form as shown saves with the file's workflow: the file is not chosen again.
    logged_in.post(
        reverse("renders:template-import"),
        {"name": "mine too", "kind": "still", "text": entities.unescape(kept.group(1))},
    )
    assert Template.objects.get(name="mine too").workflow == still()


@pytest.mark.django_db
def test_a_pasted_workflow_of_four_megabytes_is_imported(logged_in: Client) -> None:
    # Over Django's default 2.5 MB for form fields, under our 5 MB for a workflow.
    answer = logged_in.post(
        reverse("renders:template-import"), {"name": "big", "kind": "still", "text": padded(4 * 2**20)}, follow=True
    )
    assert answer.status_code == 200 and "Saved template big" in answer.content.decode()
    assert Template.objects.filter(name="big").exists()


@pytest.mark.django_db
def test_a_pasted_workflow_over_five_megabytes_is_refused_with_the_limit_and_the_form_kept(logged_in: Client) -> None:
    answer = logged_in.post(
        reverse("renders:template-import"), {"name": "too-big", "kind": "still", "text": padded(5 * 2**20 + 100)}
    )
    html = answer.content.decode()
    assert answer.status_code == 400 and "over the 5.0 MB limit" in html
    assert 'value="too-big"' in html  # the form is still there, with what was typed
    assert not Template.objects.exists()


@pytest.fixture
def shipped(db: None) -> Template:
    from renders.management.commands.load_templates import load

    load()
    return Template.objects.get(name="test-still-image")


def comfyui(name: str, host: str, classes: list[str] | None) -> None:
    node = Node.objects.create(name=name, host=host)
    inventory = {"classes": classes} if classes is not None else {}
    Capability.objects.create(node=node, kind=Capability.COMFYUI, port=8188, inventory=inventory)


def test_a_template_page_shows_its_workflow_and_which_nodes_can_run_it(logged_in: Client, shipped: Template) -> None:
    comfyui("able", "127.0.54.1", ["EmptyImage", "SaveImage"])
    comfyui("old", "127.0.54.2", ["EmptyImage"])
    comfyui("new", "127.0.54.3", None)
    html = logged_in.get(reverse("renders:template", args=[shipped.code])).content.decode()
    runs_on = html.split('id="runs-on"')[1].split("</section>")[0]
    assert '<strong>able</strong>: <span class="good">can run it</span>' in runs_on
    assert '<strong>old</strong>: <span class="bad">lacks the node class SaveImage</span>' in runs_on
    assert '<strong>new</strong>: <span class="bad">not known yet: its inventory is not read</span>' in runs_on
    workflow = html.split('id="workflow-json"')[1].split("</details>")[0]
    assert "&quot;class_type&quot;: &quot;SaveImage&quot;" in workflow  # the stored JSON, escaped


def test_deleting_a_template_asks_first_then_deletes_it(logged_in: Client, shipped: Template) -> None:
    from stories.models import Story

    Story.objects.create(idea="a lighthouse", model="m", template=shipped)
    url = reverse("renders:template-delete", args=[shipped.code])
    asked = logged_in.get(url).content.decode()
    assert "Delete test-still-image?" in asked
    assert "1 story renders with it and will have no template until you choose one." in asked
    assert "the next start loads it again" in asked
    assert Template.objects.filter(pk=shipped.pk).exists()  # asking deletes nothing
    answer = logged_in.post(url, follow=True)
    assert "Deleted template test-still-image." in answer.content.decode()
    assert not Template.objects.filter(pk=shipped.pk).exists()
    assert Story.objects.get().template is None


def test_a_template_that_jobs_keep_is_not_deleted_and_says_why(logged_in: Client, shipped: Template) -> None:
    from renders.models import RenderJob

    RenderJob.objects.create(template=shipped, prompt="x", status=RenderJob.COMPLETED)
    url = reverse("renders:template-delete", args=[shipped.code])
    reason = "1 render job made from it keeps it (finished ones too): delete those jobs first, or keep the template"
    assert reason in logged_in.get(url).content.decode()
    answer = logged_in.post(url, follow=True).content.decode()
    assert f"test-still-image was not deleted: {reason}." in answer
    assert Template.objects.filter(pk=shipped.pk).exists()


def test_deleting_a_template_needs_a_login_and_the_csrf_token(user: object, shipped: Template) -> None:
    url = reverse("renders:template-delete", args=[shipped.code])
    for anonymous in (Client().get(url), Client().post(url)):
        assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)  # type: ignore[arg-type]
    assert client.post(url).status_code == 403
    assert Template.objects.filter(pk=shipped.pk).exists()


@pytest.mark.django_db
def test_shipped_templates_load_with_their_kind_and_step_in_the_render_graph() -> None:
    from renders.management.commands.load_templates import load

    load()
    loaded = {t.name: (t.kind, t.role) for t in Template.objects.filter(shipped=True)}
    assert loaded["upscale-realesrgan"] == ("upscale", "upscale")
    assert loaded["interp-rife"] == ("interp", "interp")
    assert loaded["test-i2v"] == ("test", "i2v")
    assert loaded["test-still-image"] == ("test", "keyframe")
    assert loaded["test-load-image"] == ("test", "")  # no step of the graph
    interp = Template.objects.get(name="interp-rife")
    assert interp.takes("video") and interp.takes("fps") and not interp.takes("width")
    assert interp.requirements().files == ()  # the RIFE checkpoint is the custom node's download
