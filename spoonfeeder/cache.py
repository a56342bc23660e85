"""The embedded default's cache: Django's database cache, except that a read never writes.

Django's database cache deletes an entry it finds expired as it reads it. A page's live fragments
are drawn inside a read transaction (work.one_moment), and on SQLite a write there after another
process's commit fails at once ("database is locked"): an expired worker heartbeat on the
dashboard would break its socket. Here an expired entry is only skipped; the cull of a later write
removes it (Django's, once the table holds more than MAX_ENTRIES).
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends import db


class DatabaseCache(db.DatabaseCache):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading = threading.local()

    def get_many(self, keys: Any, version: int | None = None) -> dict[str, Any]:
        self.reading.now = True
        try:
            return super().get_many(keys, version)
        finally:
            self.reading.now = False

    def _base_delete_many(self, keys: Any) -> bool:
        if getattr(self.reading, "now", False):
            return False  # an expired entry found by a read: left for the cull
        return bool(super()._base_delete_many(keys))  # type: ignore[misc]
