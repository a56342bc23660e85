"""django-q2's ORM broker with a doorbell: a cluster waiting for work on this machine wakes the
moment a task is queued, instead of at its next look (every `poll` seconds).

Each cluster's pusher, while its queue is empty, waits on a datagram socket of its own in Linux's
abstract namespace (no file to go stale; it goes with the process), named for the database and the
queue. Queuing a task rings every such socket once the transaction that queued it commits (the
sockets are found in /proc/net/unix). A ring is only a hint: the rows decide, as before, which
cluster takes a task, and a missed ring (another machine, no /proc) costs one `poll` at most.

A task's lock is read and written on the database's clock, not the process's (django-q2's ORM broker
uses the process's): a task queued by a machine whose clock runs ahead would otherwise be hidden
from every other machine's clusters until their clocks caught up.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
from functools import cache
from pathlib import Path
from typing import Any

from django.db import connections, transaction
from django.db.models.functions import Now
from django_q.brokers import Broker, get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf

from spoonfeeder.models import db_time

PROC_UNIX = Path("/proc/net/unix")


@cache
def shared() -> Broker:
    """This process's broker, made once: django-q2 makes one for each task queued unless given
    one, and the Redis broker's is a new client with a new connection each time."""
    return get_broker()


def bell_prefix(list_key: str) -> str:
    """The start of every doorbell name for this database and queue."""
    db = connections[Conf.ORM].settings_dict
    where = f"{db.get('HOST', '')}:{db.get('PORT', '')}:{db['NAME']}:{list_key}"
    return f"spoonfeeder-bell-{hashlib.sha1(where.encode()).hexdigest()[:16]}-"


def bells(prefix: str) -> list[str]:
    """The doorbells bound now under `prefix` (abstract names, listed with a leading @)."""
    try:
        lines = PROC_UNIX.read_text().splitlines()[1:]
    except OSError:
        return []
    found = set()
    for line in lines:
        path = line.rpartition(" ")[2]
        if path.startswith("@" + prefix):
            found.add(path[1:])
    return sorted(found)


def ring(prefix: str) -> None:
    """Wake every cluster waiting on this queue (best effort: never raises)."""
    names = bells(prefix)
    if not names:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.setblocking(False)
        for name in names:
            try:
                out.sendto(b"!", "\0" + name)
            except OSError:
                pass  # gone, or its buffer is full of rings already: either way it will look


class Doorbell(ORM):
    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key=list_key or Conf.CLUSTER_NAME)
        self.prefix = bell_prefix(self.list_key)
        self.bell: socket.socket | None = None

    def enqueue(self, task: Any) -> Any:
        pk = self.get_connection().create(key=self.list_key, payload=task, lock=Now()).pk
        transaction.on_commit(lambda: ring(self.prefix), using=Conf.ORM)
        return pk

    def dequeue(self) -> list[tuple[Any, Any]] | None:
        """What ORM.dequeue does, with the empty queue's sleep replaced by a wait on the bell.
        Returns within `poll` seconds even when nothing rings, so the pusher sees a stop."""
        bell = self.listen()
        self.drain(bell)  # a ring after this look wakes the wait below
        taken = self.take()
        if taken:
            return taken
        if bell is None:
            select.select([], [], [], Conf.POLL)
        elif select.select([bell], [], [], Conf.POLL)[0]:
            self.drain(bell)
            return self.take() or None
        return None

    def take(self) -> list[tuple[Any, Any]]:
        rows = self.get_connection().filter(key=self.list_key, lock__lte=Now())
        taken = []
        for pk, payload in rows.values_list("id", "payload")[: Conf.BULK]:
            # Another cluster may have taken it since the look: the guarded update decides.
            if self.get_connection().filter(id=pk, lock__lte=Now()).update(lock=db_time(Conf.RETRY)):
                taken.append((pk, payload))
        return taken

    def queue_size(self) -> int:
        return int(self.get_connection().filter(key=self.list_key, lock__lte=Now()).count())

    def lock_size(self) -> int:
        return int(self.get_connection().filter(key=self.list_key, lock__gt=Now()).count())

    def listen(self) -> socket.socket | None:
        if self.bell is None and PROC_UNIX.exists():
            bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                bell.bind(f"\0{self.prefix}{os.getpid()}-{id(self):x}")
            except OSError:
                bell.close()
                return None
            bell.setblocking(False)
            self.bell = bell
        return self.bell

    @staticmethod
    def drain(bell: socket.socket | None) -> None:
        while bell is not None:
            try:
                bell.recv(64)
            except OSError:  # BlockingIOError: nothing more
                return
