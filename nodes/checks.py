"""System checks of the pool: a cluster with fewer workers than the pool has slots."""

from __future__ import annotations

from typing import Any

from django.core.checks import Tags, Warning, register
from django.db import DatabaseError


# A database check: run by `migrate` (so by `run`) and `check --database default`.
@register("nodes", Tags.database)
def check_workers(databases: Any = None, **kwargs: Any) -> list[Warning]:
    from nodes.models import worker_shortfall

    if not databases:
        return []  # asked without a database (plain `check`): nothing to compare
    try:
        shortfall = worker_shortfall()
    except DatabaseError:
        return []  # not migrated yet: nothing to compare
    return [Warning(shortfall, id="nodes.W001")] if shortfall else []
