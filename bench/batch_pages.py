"""Batches from the form to the rows, and their pages (issue 12, "How fast"), on a fresh SQLite
database in this process: how long the batch form takes to make a 1,000-item seed batch and a
10,000-item grid (checked, planned and written), and the server time and queries of the Batches
page (200 batches), a batch page (10,000 items) and the History page (100,000 finished outputs).

    python bench/batch_pages.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import django_on_sqlite, machine, main, temp_dir, time_page, verdict  # noqa: E402


def made(fields: dict[str, str]) -> tuple[float, int]:
    """Seconds from the posted form to the batch's rows, and how many items it made."""
    from renders.forms import BatchForm
    from renders.models import Template
    from renders.views import make_batch

    template = Template.objects.get(name="sdxl-still")
    start = BatchForm(template=template)
    data = {name: start[name].value() for name in start.fields}
    data = {k: v for k, v in data.items() if v is not None and v is not False}
    data.update(template=str(template.pk), prompt="a lighthouse at dusk", **fields)
    began = time.perf_counter()
    form = BatchForm(data)
    if not form.is_valid():
        raise SystemExit(f"the bench's form was refused: {form.errors}")
    batch = make_batch(form)
    return time.perf_counter() - began, batch.items.count()


def run() -> None:
    with temp_dir("sf-bench-batches-") as data:
        django_on_sqlite(data)
        from django.utils import timezone

        from renders import batches
        from renders.management.commands.load_templates import load
        from renders.models import Batch, RenderJob, Template

        load()
        print(f"Batch benchmarks, form to rows and pages ({machine()})")
        seeds, n1 = made({"kind": "seeds", "count": "1000"})
        print(f"  a {n1:,}-item seed batch, form to rows: {seeds * 1000:.0f} ms (target <= 1,000 ms)")
        cfgs = ",".join(f"{i / 10:g}" for i in range(40, 140))
        grid, n2 = made(
            {"kind": "grid", "axis_1": f"cfg={cfgs}", "axis_2": "steps=" + ",".join(map(str, range(1, 101)))}
        )
        print(f"  a {n2:,}-item grid, form to rows: {grid * 1000:.0f} ms (target <= 5,000 ms)")

        template = Template.objects.get(name="sdxl-still")
        items = batches.seed_variations("x", {}, template, count=50)
        for i in range(198):  # 200 batches in all
            Batch.make(name=f"batch {i}", kind=Batch.SEEDS, template=template, items=items)
        big = Batch.objects.get(total=10_000)
        now = timezone.now()
        RenderJob.objects.filter(batch=big, index__lt=5000).update(status=RenderJob.COMPLETED, finished=now)
        # The History's rows: 100,000 finished outputs in all, each with its file and thumbnail.
        jobs = []
        for i in range(100_000 - RenderJob.objects.filter(status=RenderJob.COMPLETED).count()):
            job = RenderJob(template=template, prompt=f"history {i}", status=RenderJob.COMPLETED, finished=now, work=1)
            base = f"renders/{str(job.code)[:2]}/{job.code}"
            job.outputs = [{"path": f"{base}/00.png", "kind": "image", "thumbnail": f"{base}/00.png.thumb.jpg"}]
            jobs.append(job)
        RenderJob.objects.bulk_create(jobs, batch_size=2000)
        ok = seeds <= 1 and grid <= 5
        for label, path in (
            (f"Batches page ({Batch.objects.count()} batches)", "/renders/batches/"),
            (f"batch page ({big.total:,} items)", f"/renders/batches/{big.code}/"),
            (f"History page ({RenderJob.objects.filter(status='completed').count():,} finished)", "/renders/history/"),
            ("History page, searched", "/renders/history/?q=history+9999"),
        ):
            median, worst, counts = time_page(path)
            ok = ok and median <= 150 and len(counts) == 1
            print(f"  {label}: median {median:.1f} ms, max {worst:.1f} ms, queries {counts} (target <= 150 ms)")
        print(f"{verdict(ok)}: within the issue's targets")


if __name__ == "__main__":
    main(run)
