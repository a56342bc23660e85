"""The Batches, batch and History pages and `manage.py batch` (issue 12, points 1, 4, 5 and 6):
making a batch through its form (previewed first), bad input refused with what to do and nothing
made, the grid view, the contact sheet, the streamed zip, the controls, the History's filters, a
constant number of queries however many rows, login and escaping."""

from __future__ import annotations

import io
import zipfile
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from renders import batches
from renders.forms import BatchForm
from renders.management.commands.load_templates import load
from renders.models import Batch, RenderJob, Template

SEEDED = "test-video-prompt"
GRIDDED = "sdxl-still"  # takes cfg and steps (no model is needed for its pages)


@pytest.fixture
def templates(db: None) -> None:
    load()


def form(template: str = SEEDED, **fields: Any) -> dict[str, Any]:
    """The batch form as the page first shows it (the template's own settings), with `fields`."""
    t = Template.objects.get(name=template)
    start = BatchForm(template=t)
    values = {name: start[name].value() for name in start.fields}
    shown = {name: value for name, value in values.items() if value is not None and value is not False}
    return {**shown, "template": str(t.pk), "prompt": "a lighthouse at dusk", "kind": "seeds", **fields}


def make(kind: str = Batch.SEEDS, n: int = 6, **fields: Any) -> Batch:
    t = Template.objects.get(name=SEEDED)
    if kind == Batch.GRID:
        t = Template.objects.get(name=GRIDDED)
        axes = [batches.axis("cfg=4,6"), batches.axis("steps=10,20,30")]
        items = batches.grid("a lighthouse", {}, t, axes)
        shown = [{"name": a.name, "values": list(a.shown)} for a in axes]
        return Batch.make(name="grid", kind=kind, template=t, items=items, axes=shown, **fields)
    items = batches.seed_variations("a lighthouse", {}, t, count=n, sequential=True, start=7)
    return Batch.make(name=fields.pop("name", "seeds"), kind=kind, template=t, items=items, **fields)


def finish(batch: Batch, media_root: Path) -> None:
    """Its items completed, each with a small PNG output and thumbnail, as a render leaves them."""
    for job in batch.items.all():
        folder = media_root / "renders" / str(job.code)[:2] / str(job.code)
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (job.index * 20 % 255, 90, 160)).save(folder / "00.png")
        Image.new("RGB", (32, 24), (job.index * 20 % 255, 90, 160)).save(folder / "thumb.png")
        rel = f"renders/{str(job.code)[:2]}/{job.code}"
        out = {"path": f"{rel}/00.png", "thumbnail": f"{rel}/thumb.png", "kind": "image", "size": 100}
        RenderJob.objects.filter(pk=job.pk).update(
            status=RenderJob.COMPLETED, outputs=[out], finished=timezone.now(), seconds=1.5
        )
    Batch.feed()


def test_a_seed_batch_is_previewed_then_queued_with_its_items_held(logged_in: Client, templates: None) -> None:
    page = logged_in.post(reverse("renders:batches"), form(count="12", preview="1"))
    assert page.status_code == 200
    assert b"12 items</strong>" in page.content and not Batch.objects.exists()
    made = logged_in.post(reverse("renders:batches"), form(count="12", sequential="on", start="1000", name="Seeds"))
    batch = Batch.objects.get()
    assert made.status_code == 302 and made["Location"] == reverse("renders:batch", args=[batch.code])
    assert (batch.total, batch.kind, batch.name) == (12, "seeds", "Seeds")
    seeds = list(batch.items.order_by("index").values_list("settings__seed", flat=True))
    assert seeds == list(range(1000, 1012))
    assert not batch.items.exclude(status__in=(RenderJob.HELD, RenderJob.QUEUED)).exists()


def test_a_prompt_list_from_a_file_reports_what_it_left_out(logged_in: Client, templates: None) -> None:
    upload = SimpleUploadedFile("prompts.txt", b"a cat\n\na dog\na cat\n")
    page = logged_in.post(reverse("renders:batches"), form(kind="prompts", prompt="", preview="1", prompts_file=upload))
    assert (
        b"2 prompts; 1 blank line left out (line 2); 1 repeated line left out (line 4 repeats line 1)." in page.content
    )
    logged_in.post(reverse("renders:batches"), form(kind="prompts", prompt="", prompts="a cat\na dog\n"))
    assert list(RenderJob.objects.order_by("index").values_list("prompt", flat=True)) == ["a cat", "a dog"]


def test_a_grid_shows_its_product_before_queueing_and_its_items_on_labelled_rows_and_columns(
    logged_in: Client, templates: None
) -> None:
    grid = form(GRIDDED, kind="grid", axis_1="cfg=4,6,8", axis_2="steps=10,20")
    page = logged_in.post(reverse("renders:batches"), {**grid, "preview": "1"})
    assert "3 cfg × 2 steps = 6 items." in page.content.decode()
    logged_in.post(reverse("renders:batches"), grid)
    batch = Batch.objects.get()
    html = logged_in.get(reverse("renders:batch", args=[batch.code])).content.decode()
    assert '<th scope="col">10</th><th scope="col">20</th>' in html
    assert '<tr><th scope="row">6</th>' in html and html.count('class="batch-item') == 6


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"count": "0"}, "How many images: from 1 to 1,000; 0 was asked."),
        ({"count": "1001"}, "How many images: from 1 to 1,000; 1,001 was asked."),
        ({"count": "abc"}, "How many images: a whole number from 1 to 1,000, not &#x27;abc&#x27;."),
        ({"count": "3", "sequential": "on", "start": "-1"}, "The start seed must be from 0 to"),
        ({"count": "3", "sequential": "on", "start": str(2**64)}, "The start seed must be from 0 to"),
        ({"kind": "prompts", "prompts": "\n\n"}, "The prompt list has no prompts: write one per line."),
        (
            {
                "on": GRIDDED,
                "kind": "grid",
                "axis_1": "prompt=" + "|".join(f"prompt {i}" for i in range(100)),
                "axis_2": "steps=" + ",".join(str(i) for i in range(1, 101)),
                "axis_3": "seed=" + ",".join(str(i) for i in range(100)),
            },
            "The grid has 1,000,000 items (100 x 100 x 100), over the limit of 10,000: take fewer values.",
        ),
        ({"kind": "grid", "axis_1": "lora=ink.safetensors"}, "The lora axis needs a template with a LoRA loader input"),
        (
            {"kind": "grid", "axis_1": "cfg=4,6"},
            "The cfg axis needs a template with a cfg input; test-video-prompt has none",
        ),
    ],
)
def test_bad_batches_are_refused_with_what_to_do_and_nothing_is_made(
    logged_in: Client, templates: None, fields: dict[str, str], message: str
) -> None:
    page = logged_in.post(reverse("renders:batches"), form(fields.pop("on", SEEDED), **fields))
    assert page.status_code == 400
    assert message in page.content.decode()
    assert not Batch.objects.exists() and not RenderJob.objects.exists()


def test_a_fifty_megabyte_prompt_file_is_refused(logged_in: Client, templates: None, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = None
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024
    upload = SimpleUploadedFile("big.txt", b"a prompt\n" * (50 * 1024 * 1024 // 9))
    page = logged_in.post(reverse("renders:batches"), form(kind="prompts", prompt="", prompts_file=upload))
    assert page.status_code == 400 and "at most 5 MB" in page.content.decode()
    assert not Batch.objects.exists()


def test_the_batch_controls_act_and_refuse_what_cannot_be_done(logged_in: Client, templates: None) -> None:
    batch = make()
    act = lambda what, **data: logged_in.post(reverse("renders:batch-action", args=[batch.code, what]), data)  # noqa: E731
    act("priority", priority="7")
    batch.refresh_from_db()
    assert batch.priority == 7 and set(batch.items.values_list("priority", flat=True)) == {7}
    act("pause")
    assert Batch.objects.get(pk=batch.pk).status in (Batch.PAUSING, Batch.PAUSED)
    assert not batch.items.filter(status=RenderJob.QUEUED).exists()
    act("resume")
    act("cancel")
    batch.refresh_from_db()
    assert batch.status == Batch.CANCELLED and set(batch.items.values_list("status", flat=True)) == {"cancelled"}
    refused = logged_in.post(reverse("renders:batch-action", args=[batch.code, "resume"]), follow=True)
    assert "was cancelled: retry its items to render them after all." in refused.content.decode()
    assert Batch.objects.get(pk=batch.pk).status == Batch.CANCELLED
    bad = logged_in.post(reverse("renders:batch-action", args=[batch.code, "priority"]), {"priority": "x"}, follow=True)
    assert "The priority is a whole number from -100 to 100." in bad.content.decode()


def test_deleting_asks_first_and_keeps_the_outputs_when_asked(
    logged_in: Client, templates: None, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    batch = make(n=3)
    finish(batch, tmp_path)
    page = logged_in.get(reverse("renders:batch-delete", args=[batch.code])).content.decode()
    assert "Delete batch seeds?" in page and "Its 3 finished outputs" in page
    deleted = logged_in.post(
        reverse("renders:batch-action", args=[batch.code, "delete"]), {"outputs": "keep"}, follow=True
    )
    assert "Deleted batch seeds." in deleted.content.decode()
    assert not Batch.objects.exists() and RenderJob.objects.filter(batch=None).count() == 3
    assert len(list(tmp_path.rglob("00.png"))) == 3


def test_the_contact_sheet_and_the_zip_hold_every_finished_item(
    logged_in: Client, templates: None, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    batch = make(Batch.GRID)
    finish(batch, tmp_path)
    sheet = logged_in.get(reverse("renders:batch-sheet", args=[batch.code]))
    assert sheet["Content-Type"] == "image/png" and "grid-contact-sheet.png" in sheet["Content-Disposition"]
    image = Image.open(io.BytesIO(sheet.content))
    assert image.width > 3 * 32 and image.height > 2 * 24
    response = logged_in.get(reverse("renders:batch-zip", args=[batch.code]))
    assert response.streaming and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))  # type: ignore[arg-type]
    names = archive.namelist()
    assert len(names) == 6 and names[0].startswith("00001-") and names[0].endswith(".png")
    assert archive.read(names[0])[:4] == b"\x89PNG"


def test_the_pages_take_a_few_queries_whatever_their_rows(logged_in: Client, templates: None) -> None:
    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert logged_in.get(url).status_code == 200
        return len(ctx.captured_queries)

    first = make(n=3)
    few = (queries(reverse("renders:batches")), queries(reverse("renders:batch", args=[first.code])))
    for i in range(5):
        make(n=40, name=f"more {i}")
    big = make(n=400, name="big")
    many = (queries(reverse("renders:batches")), queries(reverse("renders:batch", args=[big.code])))
    assert many == few, (few, many)
    RenderJob.objects.filter(batch=first).update(status=RenderJob.COMPLETED, finished=timezone.now())
    history = queries(reverse("renders:history"))
    RenderJob.objects.update(status=RenderJob.COMPLETED, finished=timezone.now())
    assert queries(reverse("renders:history")) == history


def test_the_history_filters_finished_outputs(logged_in: Client, templates: None) -> None:
    batch = make(n=3)
    RenderJob.objects.filter(batch=batch).update(status=RenderJob.COMPLETED, finished=timezone.now())
    other = RenderJob.objects.create(
        template=Template.objects.get(name="test-still-image"),
        prompt="<b>a red boat</b>",
        status=RenderJob.COMPLETED,
        finished=timezone.now(),
    )
    url = reverse("renders:history")
    everything = logged_in.get(url).content.decode()
    assert everything.count('class="batch-item"') == 4 and "&lt;b&gt;a red boat&lt;/b&gt;" in everything
    assert logged_in.get(url, {"q": "red boat"}).content.decode().count('class="batch-item"') == 1
    assert logged_in.get(url, {"batch": str(batch.code)}).content.decode().count('class="batch-item"') == 3
    by_template = logged_in.get(url, {"template": str(other.template_id)}).content.decode()
    assert by_template.count('class="batch-item"') == 1
    assert logged_in.get(url, {"after": "2999-01-01"}).content.decode().count('class="batch-item"') == 0
    assert logged_in.get(url, {"after": "not-a-date", "node": "x"}).status_code == 200


def test_batch_pages_and_files_need_a_login(client: Client, templates: None) -> None:
    batch = make(n=1)
    for url in (
        reverse("renders:batches"),
        reverse("renders:batch", args=[batch.code]),
        reverse("renders:batch-sheet", args=[batch.code]),
        reverse("renders:batch-zip", args=[batch.code]),
        reverse("renders:history"),
    ):
        assert client.get(url).status_code == 302
    assert client.post(reverse("renders:batch-action", args=[batch.code, "cancel"])).status_code == 302
    assert Batch.objects.get().status == Batch.PENDING


def test_more_like_this_opens_the_form_with_the_job_settings(logged_in: Client, templates: None) -> None:
    job = RenderJob.objects.create(
        template=Template.objects.get(name=SEEDED), prompt="a blue lighthouse", status=RenderJob.COMPLETED
    )
    page = logged_in.get(reverse("renders:batches"), {"like": str(job.code)}).content.decode()
    assert "a blue lighthouse" in page and 'value="8"' in page


def test_the_render_dialogs_settings_go_on_as_a_batch_and_nothing_is_queued(logged_in: Client, templates: None) -> None:
    """ "As a batch…" in the Render queue's dialog opens the batch form with what was typed there,
    as seed variations; nothing is queued until that form is sent."""
    queue_page = logged_in.get(reverse("renders:index")).content.decode()
    assert 'name="as_batch"' in queue_page
    typed = {**form(), "prompt": "a red kite over <b>dunes</b>", "resolution": "256x256", "seed": "42", "as_batch": "1"}
    typed.pop("kind")
    page = logged_in.post(reverse("renders:batches"), typed)
    text = page.content.decode()
    assert page.status_code == 200
    assert "a red kite over &lt;b&gt;dunes&lt;/b&gt;" in text and 'value="42"' not in text
    assert 'value="8"' in text and "<details" in text and "errorlist" not in text
    assert not RenderJob.objects.exists() and not Batch.objects.exists()


def test_a_finished_item_offers_reproduce_and_vary(logged_in: Client, templates: None, settings: Any) -> None:
    batch = make(n=2)
    finish(batch, Path(settings.MEDIA_ROOT))
    code = str(batch.items.first().code)
    page = logged_in.get(reverse("renders:batch", args=[batch.code])).content.decode()
    assert f"?reuse={code}" in page and f"?like={code}" in page


def test_the_batch_command_makes_lists_shows_and_controls(templates: None, tmp_path: Path) -> None:
    out = StringIO()
    call_command(
        "batch",
        "create",
        SEEDED,
        "--prompt",
        "a lighthouse",
        "--seeds",
        "5",
        "--sequential",
        "--start",
        "40",
        stdout=out,
    )
    assert "5 images of one prompt" in out.getvalue()
    batch = Batch.objects.get()
    assert sorted(batch.items.values_list("settings__seed", flat=True)) == [40, 41, 42, 43, 44]
    call_command("batch", "create", GRIDDED, "--prompt", "x", "--grid", "cfg=4,6", "--grid", "steps=10,20", stdout=out)
    listed = tmp_path / "p.txt"
    listed.write_text("one\ntwo\n\n")
    call_command("batch", "create", SEEDED, "--prompts-file", str(listed), stdout=out)
    assert Batch.objects.count() == 3
    out = StringIO()
    call_command("batch", "list", stdout=out)
    assert out.getvalue().count("\n") == 3
    code = str(batch.code)[:8]
    out = StringIO()
    call_command("batch", "show", code, stdout=out)
    assert "seed 40" in out.getvalue()
    call_command("batch", "pause", code, stdout=out)
    call_command("batch", "resume", code, stdout=out)
    call_command("batch", "cancel", code, stdout=out)
    with pytest.raises(CommandError, match="was cancelled"):
        call_command("batch", "resume", code)
    with pytest.raises(CommandError, match="How many images: from 1 to 1,000; 0 was asked."):
        call_command("batch", "create", SEEDED, "--prompt", "x", "--seeds", "0")
    with pytest.raises(CommandError, match="No batch's code starts with"):
        call_command("batch", "show", "ffffffff")
    assert Batch.objects.count() == 3
