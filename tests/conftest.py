"""Plain fixtures and helpers: a logged-in user, free ports, waiting on a condition with a
deadline, and real Spoon Feeder processes (web, worker, the whole `run`) on the test database."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import requests
import websocket
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from django_q.models import Task

from spoonfeeder.models import Event
from tests.cluster import Cluster

if TYPE_CHECKING:
    from nodes.sim.comfyui import SimComfyUI
    from renders.models import RenderJob

ROOT = Path(__file__).resolve().parent.parent
# A real ComfyUI writes a run's history entry a moment after it says the run succeeded (surprise
# 12 of PROTOCOL.md): every simulated ComfyUI of the tests, in this process or a child, does too.
os.environ.setdefault("SPOONFEEDER_SIM_HISTORY_LAG", "0.05")
PASSWORD = "a-long-test-password"
T = TypeVar("T")


class TimedOut(AssertionError):
    """What a test waited for did not happen in time: the test fails, saying what it waited for."""


def wait_until(
    check: Callable[[], T], timeout: float, what: str, interval: float = 0.05, describe: Callable[[], Any] = str
) -> T:
    """Poll `check` until it returns something truthy (and return that); fail after `timeout` s,
    saying what was waited for (and how things stand, as `describe` says)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            said = describe()
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}" + (f"; {said}" if said else ""))
        time.sleep(interval)


def ended(client: Any, prompt_id: str, timeout: float = 15) -> Any:
    """A prompt's history entry once it has ended on a ComfyUI (`nodes.clients.comfyui.ComfyUI`),
    as the node says where it stands; an AssertionError if it is lost (neither queued nor
    finished). Tests that drive a node by hand wait with this; the engine follows a prompt in
    renders.dispatch."""
    from nodes.clients.comfyui import GONE

    def entry() -> Any:
        where = client.standing(prompt_id)
        assert where.where != GONE, f"prompt {prompt_id} is neither queued nor finished"
        return where.entry

    return wait_until(entry, timeout, f"prompt {prompt_id} to end", interval=0.02)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def count(html: str, name: str) -> int | None:
    m = re.search(rf'id="count-{name}">(\d+)<', html)
    return int(m.group(1)) if m else None


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("ada", password=PASSWORD)


@pytest.fixture
def logged_in(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


def database_url() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Process:
    """A Spoon Feeder process (web, worker or the whole `run`) against the test database."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int, group: bool = False) -> None:
        assert self.popen
        if group:
            os.killpg(self.popen.pid, signum)
        else:
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.popen
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if self.popen:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()
        self.out.close()


class Stack:
    """Starts real processes; everything it started is stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.host = "127.0.0.1"
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "SPOONFEEDER_DATA_DIR": str(settings.DATA_DIR),
            "SPOONFEEDER_WORKER_STALE_AFTER": "3",
            "SPOONFEEDER_RELAY_TICK": "0.5",
            "SPOONFEEDER_TASK_TIMEOUT": "60",
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spawn(self, name: str, *args: str, **env: str) -> Process:
        argv = [sys.executable, *args]
        proc = Process(argv, {**self.env, **env}, self.tmp_path / f"{name}-{len(self.processes)}.log")
        self.processes.append(proc)
        return proc.start()

    def web(self) -> Process:
        proc = self.spawn(
            "web",
            "-m",
            "spoonfeeder.web",
            "-b",
            self.host,
            "-p",
            str(self.port),
            "--websocket_timeout",
            "-1",
            "spoonfeeder.asgi:application",
        )
        self.wait_for_http(proc)
        return proc

    def worker(self, **env: str) -> Process:
        """A worker cluster (`qcluster`), as `run` starts it."""
        return self.spawn("worker", "manage.py", "qcluster", **env)

    def run(self, *args: str, **env: str) -> Process:
        return self.spawn("run", "manage.py", "run", "--port", str(self.port), *args, **env)

    def wait_for_http(self, proc: Process, timeout: float = 30) -> None:
        def up() -> bool:
            if proc.popen and proc.popen.poll() is not None:
                raise AssertionError(f"process exited early:\n{proc.output()}")
            try:
                return requests.get(f"{self.url}/login/", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        try:
            wait_until(up, timeout, f"{self.url}/login/ to answer")
        except TimedOut as e:
            raise AssertionError(f"{e}\n--- {proc.log.name} (tail) ---\n{proc.output()[-3000:]}") from None

    def socket(self, session: str, topics: str = "dashboard") -> Socket:
        ws = websocket.create_connection(
            f"ws://{self.host}:{self.port}/ws/live/?topics={topics}",
            cookie=f"sessionid={session}",
            origin=self.url,
            timeout=10,
        )
        return Socket(ws)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


class Socket:
    """A WebSocket client that remembers the newest HTML seen for each live element id."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.seen: list[str] = []

    def wait_for(self, check: Callable[[str], Any], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                message = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            if isinstance(message, bytes):
                message = message.decode()
            self.seen.append(message)
            if check(message):
                return message
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {self.seen[-1:]}")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def fast(settings: Any, tmp_path: Path) -> None:
    """Rendering on simulated nodes without waiting: short leases, retries and rests; outputs in
    the test's own media folder."""
    settings.STALE = 2
    settings.BEAT = 0.3
    settings.MAX_REST = 2  # a node that kept failing rests no longer than this (a minute by default)
    settings.RENDER_BACKOFF = 0.05
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def cluster(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Tasks run in this process (see Cluster), and a sweeper starts as when a worker starts."""
    from spoonfeeder import tasks

    c = Cluster()
    monkeypatch.setattr(tasks, "async_task", c.async_task)
    tasks.ensure_sweeping()
    yield c
    c.stop()


@pytest.fixture
def stack(transactional_db: None, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.stop()


def finished_task(success: bool = True, age: timedelta = timedelta(0), error: str = "boom", name: str = "t") -> Task:
    """What the worker's monitor does when a task ends: the result row and its event, together."""
    stopped = timezone.now() - age
    with transaction.atomic():
        task = Task.objects.create(
            id=uuid.uuid4().hex,
            name=name,
            func="spoonfeeder.tasks.selftest",
            started=stopped,
            stopped=stopped,
            success=success,
            result=None if success else f"{error} : Traceback (most recent call last): ...",
        )
        Event.emit("dashboard", "task.done" if success else "task.failed", task.id)
    return task


def communicator(
    session: str = "", origin: str = "http://127.0.0.1", topics: str = "dashboard", host: str = "127.0.0.1"
) -> Any:
    """An in-process WebSocket client of the live consumer."""
    from channels.testing import WebsocketCommunicator

    from spoonfeeder.asgi import application

    headers = [(b"origin", origin.encode()), (b"host", host.encode())]
    if session:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    return WebsocketCommunicator(application, f"/ws/live/?topics={topics}", headers=headers)


def session_for(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def holding(cap: Any) -> Any:
    """A row of the work that holds a unit of `cap`, as a claim leaves it: a render job on a
    ComfyUI, a story step asking an Ollama. `release()` gives the unit back."""
    from renders.models import RenderJob, Template
    from stories.models import StepRun, Story

    if cap.kind == "comfyui":
        template, _ = Template.objects.get_or_create(
            name="held", defaults={"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}
        )
        return RenderJob.objects.create(template=template, status=RenderJob.RENDERING, node=cap.node, capability=cap)
    story = Story.objects.create(idea="held", model="m")
    run = StepRun.objects.create(story=story, step="story", status=StepRun.RUNNING, node=cap.node, capability=cap)
    run.release = lambda: StepRun.objects.filter(pk=run.pk).update(capability=None)  # type: ignore[method-assign]
    return run


def executions(sim: SimComfyUI, job: RenderJob) -> int:
    """How many times the simulated node really ran the job, from its own files: one output per run
    (the names count up), whatever our rows say."""
    return len(list(sim.output_dir.rglob(f"{job.code}*")))
