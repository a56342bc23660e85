"""A worker cluster (`qcluster`) for the benchmarks, on the data folder in SPOONFEEDER_DATA_DIR.

`python bench/cluster.py` is `manage.py qcluster`; with `--first-free`, every ComfyUI node takes
the first job that fits it (renders.dispatch.worth_it always True), the comparison the render
benchmark measures our plan against. The patch is made before the cluster forks its workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def serve() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spoonfeeder.settings")
    import django

    django.setup()
    if "--first-free" in sys.argv:
        import renders.dispatch as dispatch

        def always(cap: Any, job: Any, view: Any = None) -> bool:
            return True

        dispatch.worth_it = always  # type: ignore[assignment]
    from django.core.management import call_command

    call_command("qcluster")


if __name__ == "__main__":
    serve()
