from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import DateTimeField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone


def db_time(offset: float) -> ExpressionWrapper:
    """The database's now moved on by `offset` seconds: one clock for every machine's processes,
    however far theirs are apart."""
    return ExpressionWrapper(Now() + timedelta(seconds=offset), output_field=DateTimeField())


class EventQuerySet(models.QuerySet["Event"]):
    def claim(self, limit: int = 500) -> list[Event]:
        """Mark up to `limit` unrelayed events as relayed by this caller and return them.

        Several web processes may relay at once (scale-out); the conditional UPDATE makes each
        event go to exactly one of them, the same way on SQLite and PostgreSQL.
        """
        ids = list(self.filter(relayed=None).order_by("id").values_list("id", flat=True)[:limit])
        if not ids:
            return []
        token = uuid.uuid4()
        self.filter(id__in=ids, relayed=None).update(relayed=timezone.now(), relay=token)
        return list(self.filter(id__in=ids, relay=token).order_by("id"))

    def prune(self) -> int:
        cutoff = timezone.now() - timedelta(seconds=settings.EVENT_RETENTION)
        deleted, _ = self.filter(created__lt=cutoff).delete()
        return deleted


class Event(models.Model):
    """Something changed that a page shows: the outbox between the processes that change state
    and the browsers that watch it. Written in the transaction of the change it describes."""

    created = models.DateTimeField(default=timezone.now, db_index=True)
    # The Channels group whose pages show what changed, e.g. "dashboard".
    topic = models.CharField(max_length=80)
    kind = models.CharField(max_length=40)
    ref = models.CharField(max_length=64, blank=True)
    relayed = models.DateTimeField(null=True, blank=True)
    relay = models.UUIDField(null=True, blank=True, editable=False)

    objects = EventQuerySet.as_manager()

    class Meta:
        indexes = [
            # Read by EventQuerySet.claim(), polled many times a second by each web process.
            models.Index(fields=["id"], condition=Q(relayed=None), name="event_unrelayed"),
            models.Index(fields=["kind", "created"], name="event_kind_created"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.kind} {self.ref}".strip()

    @classmethod
    def emit(cls, topic: str, kind: str, ref: str = "") -> Event:
        return cls.objects.create(topic=topic, kind=kind, ref=str(ref)[:64])


class Sweeper(models.Model):
    """The sweeper running now (one row): its worker and heartbeat. One sweeper at a time looks
    for orphaned work and feeds the pool; another that starts meanwhile leaves at once."""

    worker = models.CharField(max_length=100, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"sweeper {self.worker or '(none)'}"
