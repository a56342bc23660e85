"""Event latency: from a worker committing a state change to an authenticated WebSocket client
receiving the fragment that shows it, with 50 clients connected.

A real daphne serves /ws/live/?topics=dashboard to 50 logged-in WebSocket clients (threads here,
each noting when every message arrives). A separate worker process commits 100 state changes
150 ms apart, each one transaction that saves a finished django-q2 Task row and emits the
"dashboard" event, as a worker does, and notes when each commit returned. Change k makes the
dashboard's done count k, so the latency of change k at client c is the first time c saw a
count of at least k minus the commit time of k. Targets: p50 <= 100 ms, p95 <= 250 ms.

Embedded mode (SQLite + ORM broker, in-memory channel layer) by default; with DATABASE_URL set,
PostgreSQL (a throwaway database on that server, dropped afterwards) and REDIS_URL if set:

    .venv/bin/python bench/event_latency.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/8 \\
        .venv/bin/python bench/event_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import websocket
from common import (
    HOST,
    PYTHON,
    ROOT,
    BenchError,
    base_env,
    free_port,
    machine,
    main,
    manage,
    percentile,
    postgres_database,
    start_daphne,
    temp_dir,
    time_limit,
    verdict,
    wait_for_login,
    wait_until,
)

CLIENTS = 50
CHANGES = 100
INTERVAL_S = 0.15
P50_TARGET_MS = 100.0
P95_TARGET_MS = 250.0
SEED_POLL_MS = 2000.0  # the seed plans' dashboard polling interval
DONE = re.compile(r'id="count-done">(\d+)<')


def done_count(html: str) -> int | None:
    m = DONE.search(html)
    return int(m.group(1)) if m else None


# --- the child processes: Django set up from the environment the bench gives them -------------


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spoonfeeder.settings")
    import django

    django.setup()


def role_session() -> None:
    """Make a user and a logged-in session; print the session key."""
    django_setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user("bench", password=uuid.uuid4().hex)
    client = Client()
    client.force_login(user)
    print(client.cookies[settings.SESSION_COOKIE_NAME].value)


def role_worker(changes: int, interval: float) -> None:
    """Commit `changes` state changes `interval` s apart; print {"k", "t"} after each commit."""
    django_setup()
    from django.db import transaction
    from django.utils import timezone
    from django_q.models import Task

    from spoonfeeder.models import Event

    Task.objects.exists()  # open the connection before the clock starts
    start = time.monotonic()
    for k in range(1, changes + 1):
        time.sleep(max(start + (k - 1) * interval - time.monotonic(), 0))
        task_id = uuid.uuid4().hex
        now = timezone.now()
        with transaction.atomic():
            Task.objects.create(
                id=task_id,
                name=f"bench-{k}",
                func="bench",
                started=now,
                stopped=now,
                success=True,
                result=None,
            )
            Event.emit("dashboard", "task.done", task_id)
        committed = time.time()
        print(json.dumps({"k": k, "t": committed}), flush=True)


# --- the benchmark -------------------------------------------------------------------------------


class LiveClient(threading.Thread):
    """One logged-in WebSocket client noting (arrival time, message) for everything it receives."""

    def __init__(self, url: str, origin: str, session: str) -> None:
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, cookie=f"sessionid={session}", origin=origin, timeout=10)
        snapshot = self.ws.recv()
        self.messages: list[tuple[float, str]] = [(time.time(), str(snapshot))]
        if done_count(str(snapshot)) is None:
            raise BenchError(f"the first message is not a dashboard snapshot: {snapshot!r:.200}")
        self.error: str | None = None
        self.closing = False

    def run(self) -> None:
        self.ws.settimeout(None)
        try:
            while True:
                message = self.ws.recv()
                self.messages.append((time.time(), str(message)))
        except (websocket.WebSocketException, OSError) as e:
            if not self.closing:
                self.error = f"{type(e).__name__}: {e}"

    def newest_count(self) -> int:
        return done_count(self.messages[-1][1]) or 0

    def close(self) -> None:
        self.closing = True
        self.ws.abort()  # wakes the thread blocked in recv()
        self.join(timeout=5)
        self.ws.close(timeout=1)


def latencies(clients: list[LiveClient], commits: dict[int, float]) -> tuple[list[float], int, dict[int, list[float]]]:
    """(latency in ms of every (client, change) pair seen, number of pairs never seen, and the
    latencies by change)."""
    samples: list[float] = []
    by_change: dict[int, list[float]] = {k: [] for k in commits}
    missing = 0
    for client in clients:
        first_seen: dict[int, float] = {}
        highest = 0
        for arrived, message in client.messages:
            count = done_count(message) or 0
            for k in range(highest + 1, count + 1):
                first_seen[k] = arrived
            highest = max(highest, count)
        for k, committed in commits.items():
            if k in first_seen:
                samples.append((first_seen[k] - committed) * 1000)
                by_change[k].append(samples[-1])
            else:
                missing += 1
    return sorted(samples), missing, by_change


def measure(env: dict[str, str], tmp: Path, mode: str) -> None:
    manage(env, "migrate", "--verbosity", "0")
    if not env.get("REDIS_URL"):
        manage(env, "createcachetable", "--verbosity", "0")
    made = subprocess.run(
        [PYTHON, __file__, "--role", "session"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if made.returncode or not made.stdout.split():
        raise BenchError(f"could not make a logged-in session:\n{made.stdout}{made.stderr}")
    session = made.stdout.split()[-1]

    port = free_port()
    origin = f"http://{HOST}:{port}"
    web = start_daphne(env, port, tmp / "daphne.log")
    clients: list[LiveClient] = []
    worker: subprocess.Popen[str] | None = None
    try:
        wait_for_login(web, origin, timeout=30)
        url = f"ws://{HOST}:{port}/ws/live/?topics=dashboard"
        for _ in range(CLIENTS):
            clients.append(LiveClient(url, origin, session))
            clients[-1].start()

        with (tmp / "worker.log").open("w") as worker_log:
            worker = subprocess.Popen(
                [
                    PYTHON,
                    __file__,
                    "--role",
                    "worker",
                    "--changes",
                    str(CHANGES),
                    "--interval",
                    str(INTERVAL_S),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=worker_log,
                text=True,
                start_new_session=True,
            )
            out, _ = worker.communicate(timeout=CHANGES * INTERVAL_S + 60)
        if worker.returncode:
            raise BenchError(f"the worker failed:\n{(tmp / 'worker.log').read_text()}")
        commits = {(row := json.loads(line))["k"]: row["t"] for line in out.splitlines() if line.startswith("{")}
        try:
            wait_until(
                lambda: all(c.newest_count() >= CHANGES for c in clients),
                10,
                f"every client to see {CHANGES} done tasks",
            )
        except BenchError as e:
            print(f"warning: {e}")
    finally:
        for client in clients:
            client.close()
        if worker and worker.poll() is None:
            worker.kill()
            worker.wait()
        web_alive = web.alive()
        web.stop(grace=10)
    if not web_alive:
        raise BenchError(f"daphne died during the benchmark:\n{web.output()}")

    samples, missing, by_change = latencies(clients, commits)
    errors = sorted({c.error for c in clients if c.error})
    if not samples:
        raise BenchError(f"no latency samples; client errors: {errors}\n{web.output()}")
    p50, p95, p99 = (percentile(samples, p) for p in (50, 95, 99))
    print(f"Event latency, worker commit -> WebSocket fragment ({mode}; {machine()})")
    print(
        f"{CLIENTS} clients, {len(commits)} changes {INTERVAL_S * 1000:.0f} ms apart: "
        f"{len(samples)} samples, {missing} never seen, "
        f"{sum(len(c.messages) for c in clients)} messages received"
    )
    print(f"p50 {p50:.1f} ms   p95 {p95:.1f} ms   p99 {p99:.1f} ms   max {samples[-1]:.1f} ms")
    # The first client to see a change shows the relay's delay; the last adds the fan-out.
    first = sorted(min(v) for v in by_change.values() if v)
    last = sorted(max(v) for v in by_change.values() if v)
    print(
        f"per change: first client p50 {percentile(first, 50):.1f} ms, "
        f"last client p50 {percentile(last, 50):.1f} ms (fan-out to {CLIENTS} clients)"
    )
    print(
        f"vs the seed plans' {SEED_POLL_MS / 1000:g}-s polling: interval/p50 = "
        f"{SEED_POLL_MS / p50:.1f}x; its average delay ({SEED_POLL_MS / 2:.0f} ms)/p50 = "
        f"{SEED_POLL_MS / 2 / p50:.1f}x"
    )
    if errors:
        print(f"client errors: {errors}")
    ok = p50 <= P50_TARGET_MS and p95 <= P95_TARGET_MS and missing == 0
    print(
        f"{verdict(ok)}: p50 <= {P50_TARGET_MS:.0f} ms, p95 <= {P95_TARGET_MS:.0f} ms, "
        "every change seen by every client"
    )


def run() -> None:
    database_url = os.environ.get("DATABASE_URL", "").strip()
    redis_url = os.environ.get("REDIS_URL", "").strip()
    with time_limit(175), temp_dir("spoonfeeder-bench-latency-") as tmp:
        data = tmp / "data"
        data.mkdir()
        if not database_url:
            env = base_env(data, embedded=True, SPOONFEEDER_QUEUE=f"bench-{os.getpid()}")
            measure(env, tmp, "SQLite/ORM broker, in-memory channel layer")
            return
        with postgres_database(database_url) as url:
            env = base_env(data, embedded=False, DATABASE_URL=url, SPOONFEEDER_QUEUE=f"bench-{os.getpid()}")
            layer = "Redis" if redis_url else "ORM broker, in-memory channel layer"
            measure(env, tmp, f"PostgreSQL/{layer}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "session", "worker"], default="bench")
    parser.add_argument("--changes", type=int, default=CHANGES)
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    args = parser.parse_args()
    if args.role == "session":
        role_session()
    elif args.role == "worker":
        role_worker(args.changes, args.interval)
    else:
        main(run)
