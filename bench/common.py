"""Helpers shared by the benchmarks: free ports, waiting with a deadline, child processes that are
always stopped (with everything they started), process-tree memory, a whole `manage.py run`, and
simulated nodes in processes of their own.

Benchmarks print figures; they exit 0 whether or not a target is met, and non-zero only when
they could not measure (a crash, a process that never came up, the time limit).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says why."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; raise BenchError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> str:
    """The context every figure needs: other work on the machine skews all of them."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise BenchError in the main thread after `seconds`, so `finally` blocks still clean up."""

    def expired(signum: int, frame: object) -> None:
        raise BenchError(f"benchmark exceeded its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def base_env(data_dir: Path, embedded: bool, **extra: str) -> dict[str, str]:
    """The environment for Spoon Feeder processes. `embedded` drops DATABASE_URL and REDIS_URL,
    so the default SQLite + ORM broker stack runs whatever the caller's shell has set."""
    env = {k: v for k, v in os.environ.items() if not (embedded and k in ("DATABASE_URL", "REDIS_URL"))}
    env.setdefault("LOG_LEVEL", "WARNING")
    env.update(
        SPOONFEEDER_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="spoonfeeder.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a management command to completion; its output, or BenchError with the output."""
    done = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise BenchError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


# --- processes --------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces: the fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def process_tree(root: int) -> list[tuple[int, int]]:
    """`root` and its live descendants as (pid, depth), each parent right before its children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
    found: list[tuple[int, int]] = []
    stack = [(root, 0)]
    while stack:
        pid, depth = stack.pop()
        found.append((pid, depth))
        stack.extend((child, depth + 1) for child in sorted(children.get(pid, []), reverse=True))
    return found


def descendants(root: int) -> list[int]:
    return [pid for pid, _ in process_tree(root)[1:]]


def pss_kb(pid: int) -> int | None:
    """Proportional set size of one process in kB, from /proc/<pid>/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def short_command(pid: int) -> str:
    """A readable name: the command line without the interpreter's path or the repository's."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except FileNotFoundError:
        return "?"
    words = [os.path.basename(a.decode(errors="replace")) for a in argv[:1]]
    words += [a.decode(errors="replace").replace(f"{ROOT}/", "") for a in argv[1:]]
    text = " ".join(words)
    return text if len(text) <= 64 else text[:61] + "..."


class Child:
    """A process in its own session, with its output in a log file. `stop()` ends it and
    everything it started: SIGTERM first, then SIGKILL for anything left, each by its pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.out = log.open("ab")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")

    def stop(self, grace: float = 30) -> int:
        """SIGTERM, wait up to `grace` s, then SIGKILL the leftovers. Returns the exit code."""
        tree = [(pid, proc_stat(pid)) for pid in descendants(self.pid)] if self.alive() else []
        if self.alive():
            self.popen.terminate()
        try:
            code = self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        for pid, stat in [(self.pid, None), *tree]:
            now = proc_stat(pid)
            # Only a process that is still the one we saw (same start time), never a reused pid.
            if now and (stat is None or now[1] == stat[1]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        final = self.popen.wait()
        self.out.close()
        return final if code is None else code


def login_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/login/", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def start_run(env: dict[str, str], port: int, log: Path) -> Child:
    """The whole embedded stack (`manage.py run`): migrate, login, daphne and qcluster."""
    return Child("manage.py run", [PYTHON, "manage.py", "run", "--port", str(port)], env, log)


def start_daphne(env: dict[str, str], port: int, log: Path, server: str = "spoonfeeder.web") -> Child:
    """The web server as `run` starts it (`server` "daphne" for daphne without our bounds)."""
    argv = [
        PYTHON,
        "-m",
        server,
        "-b",
        HOST,
        "-p",
        str(port),
        "--websocket_timeout",
        "-1",
        "spoonfeeder.asgi:application",
    ]
    return Child("daphne", argv, env, log)


def wait_for_login(child: Child, url: str, timeout: float, interval: float = 0.05) -> float:
    """Poll GET /login/ until it answers 200; the seconds since the child was started."""

    def up() -> bool:
        child.check_alive()
        return login_answers(url)

    wait_until(up, timeout, f"{url}/login/ to answer 200", interval)
    return time.monotonic() - child.started


def main(run: Callable[[], None]) -> None:
    """Run a benchmark: exit 1 with a one-line reason when it could not measure."""
    try:
        run()
    except BenchError as e:
        print(f"benchmark error: {e}", file=sys.stderr)
        sys.exit(1)


def django_on_sqlite(data: Path) -> None:
    """Set Django up in this process on a fresh SQLite database in `data` (in-process benchmarks)."""
    os.environ["SPOONFEEDER_DATA_DIR"] = str(data)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "spoonfeeder.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)


@contextmanager
def database(db: str, data: Path, queue: str = "bench") -> Iterator[str]:
    """Django set up in this process: on a fresh SQLite database in `data`, or on a throwaway
    PostgreSQL database (and Redis when REDIS_URL is set, under a queue name of its own, `queue`
    and this process's id)."""
    if db == "sqlite":
        django_on_sqlite(data)
        yield "SQLite, ORM broker"
        return
    url = os.environ.get("DATABASE_URL", "").strip()
    redis_url = os.environ.get("REDIS_URL", "").strip()
    name = f"{queue}-{os.getpid()}"
    with postgres_database(url) as throwaway:
        os.environ.update(
            DATABASE_URL=throwaway,
            SPOONFEEDER_DATA_DIR=str(data),
            SPOONFEEDER_QUEUE=name,
            DJANGO_SETTINGS_MODULE="spoonfeeder.settings",
        )
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        if not redis_url:
            call_command("createcachetable", verbosity=0)
        try:
            yield f"PostgreSQL {'+ Redis' if redis_url else '+ ORM broker'}"
        finally:
            connections.close_all()
            if redis_url:
                import redis

                r = redis.Redis.from_url(redis_url)
                for pattern in (f"django_q:{name}:*", f"{name}:*", f"*:{name}:*"):
                    for key in r.scan_iter(pattern):
                        r.delete(key)


def run_parts(parts: list[tuple[str, list[str], float]]) -> None:
    """Run each part of a benchmark in a child process of its own (name, argv, its time limit),
    one after the other; BenchError naming those that could not measure."""
    failed = []
    for name, argv, limit in parts:
        try:
            code = subprocess.run(argv, timeout=limit + 60).returncode
        except subprocess.TimeoutExpired:
            code = -1
        if code:
            failed.append(f"{name}: exit {code}")
    if failed:
        raise BenchError(f"could not measure: {'; '.join(failed)}")


def time_page(path: str, runs: int = 20) -> tuple[float, float, list[int]]:
    """Server time of a page for a logged-in user (median and max ms) and the query counts seen."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    user = User.objects.filter(username="bench").first() or User.objects.create_user("bench", password="bench-pw-1234")
    client.force_login(user)
    client.get(path)  # warm up: the session, and rows a first visit creates (the queue's state)
    times, counts = [], set()
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise BenchError(f"{path} answered {answer.status_code}")
        counts.add(len(queries))
    return statistics.median(times), max(times), sorted(counts)


# --- simulated nodes --------------------------------------------------------------------------

SIM_NAMES = {"comfyui": "ComfyUI", "ollama": "Ollama"}
SIM_CHILD = "from bench.common import serve_sim; serve_sim()"


@contextmanager
def worker_cluster(logs: Path, workers: int, *, first_free: bool = False) -> Iterator[Child]:
    """The real worker cluster (`qcluster`, as `run` starts it) in a child process, on the data
    folder this process set up (SPOONFEEDER_DATA_DIR), for the duration of the block: it runs
    every render attempt, story step and the sweeper, as in production. Stopped as `run` stops
    it (SIGTERM: its workers hand their work back)."""
    from django_q.status import Stat

    argv = [PYTHON, str(ROOT / "bench" / "cluster.py"), *(["--first-free"] if first_free else [])]
    env = {**os.environ, "SPOONFEEDER_WORKERS": str(workers), "LOG_LEVEL": "WARNING"}
    child = Child("the worker cluster", argv, env, logs / f"cluster-{time.monotonic_ns()}.log")
    try:

        def up() -> bool:
            child.check_alive()
            return any(s.status == "Idle" or s.workers for s in Stat.get_all())

        wait_until(up, 60, "the worker cluster to start")
        yield child
    finally:
        child.stop(grace=30)


def executions(histories: list[dict[str, Any]], codes: list[str]) -> dict[str, int]:
    """How many times the ComfyUI nodes really ran each job (by its code, from the nodes' own
    /history: every run of a job writes outputs under its code), for every code given."""
    ran = dict.fromkeys(codes, 0)
    for history in histories:
        for entry in history.values():
            names = [
                str(image.get("filename", "")) + str(image.get("subfolder", ""))
                for node in entry.get("outputs", {}).values()
                for image in node.get("images", [])
            ]
            for code in {c for c in ran if any(c in n for n in names)}:
                ran[code] += 1
    return ran


def executions_line(ran: dict[str, int]) -> str:
    """Executions per job, as the rendering benchmarks print them."""
    twice = sum(n > 1 for n in ran.values())
    never = sum(n == 0 for n in ran.values())
    return (
        f"{verdict(not twice and not never)}: executions per job, from the nodes' own history: {len(ran)} jobs, "
        f"{sum(n == 1 for n in ran.values())} ran once, {twice} more than once, {never} never"
    )


class Sim:
    """A simulated ComfyUI or Ollama (`kind`) in a child process of its own, as a real node is
    another machine: its clock and event loop do not compete with the code under test for this
    process's GIL. `knobs` are the simulator's keyword arguments (an Ollama's `models` among them).
    Stop it with `sim.child.stop()`."""

    def __init__(self, kind: str, host: str, knobs: dict[str, Any], logs: Path) -> None:
        if kind not in SIM_NAMES:
            raise ValueError(f"unknown simulated node {kind!r}; known: {', '.join(SIM_NAMES)}")
        self.kind, self.host = kind, host
        argv = [PYTHON, "-c", SIM_CHILD, kind, host, json.dumps(knobs)]
        log = logs / f"sim-{kind}-{host}-{time.monotonic_ns()}.log"
        self.child = Child(f"simulated {SIM_NAMES[kind]} on {host}", argv, dict(os.environ), log)
        self.port = int(wait_until(self.announced, 30, f"the simulated {SIM_NAMES[kind]} on {host} to listen"))

    def announced(self) -> str:
        self.child.check_alive()
        return self.child.log.read_text().partition("\n")[0].strip()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str) -> Any:
        answer = requests.get(f"{self.url}{path}", timeout=30)
        answer.raise_for_status()
        return answer.json()

    def history(self) -> dict[str, Any]:
        """A ComfyUI's /history: its own clock of every prompt."""
        return dict(self.get("/history"))

    def answers(self) -> list[dict[str, Any]]:
        """The node's clock of the answers it gave (see `clock_answers`), oldest first."""
        return list(self.get(ANSWERS_PATH))


def serve_sim() -> None:
    """The body of a Sim's child process (argv: kind, host, knobs as JSON): print the port, serve
    until SIGTERM."""
    kind, host, knobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    sim: Any
    if kind == "ollama":
        from nodes.sim import ollama

        clock_answers(ollama, ("/api/chat", "/api/generate"))
        sim = ollama.SimOllama(host, 0, **knobs).start()
    else:
        from nodes.sim import comfyui

        clock_answers(comfyui, ("/prompt",))
        sim = comfyui.SimComfyUI(host, 0, **knobs).start()
    print(sim.port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    sim.close()


ANSWERS_PATH = "/bench/answers"


def clock_answers(module: ModuleType, paths: tuple[str, ...]) -> None:
    """Make the simulated nodes of `module` (nodes.sim.ollama or .comfyui) keep a clock of the
    POSTs to `paths` answered in one piece (an Ollama's /api/chat and /api/generate, a ComfyUI's
    /prompt), which neither keeps itself: the wall-clock time (time.time()) each arrived (its body
    read, as the simulator counts answer_seconds from), when its answer was ready to send, and the
    answer (its `text` for a model's answer, its `prompt_id` for a prompt); all of them at GET
    /bench/answers. Only for benchmarks, in the simulator's own process."""
    from aiohttp import web

    make_app = module.make_app
    clock: list[tuple[float, float, bytes]] = []

    @web.middleware
    async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
        arrived = time.time()
        response = await handler(request)
        if request.method == "POST" and request.path in paths and isinstance(getattr(response, "body", None), bytes):
            # Read later, at /bench/answers: nothing here may delay the answer.
            clock.append((arrived, time.time(), response.body))  # type: ignore[attr-defined]
        return response

    async def answers(request: web.Request) -> web.Response:
        out = []
        for arrived, ready, body in clock:
            reply = json.loads(body)
            text = (reply.get("message") or {}).get("content", reply.get("response", ""))
            out.append({"arrived": arrived, "ready": ready, "text": text, "prompt_id": reply.get("prompt_id", "")})
        return web.json_response(out)

    def clocked(state: Any) -> web.Application:
        app = make_app(state)
        app.middlewares.append(timed)  # after the simulator's own: inside it, after the body is read
        app.router.add_get(ANSWERS_PATH, answers)
        return app

    module.make_app = clocked  # type: ignore[attr-defined]


# --- added for bench/engine.py ------------------------------------------------------------------


def cpu_ticks(pid: int) -> int | None:
    """CPU time of a process and of the children it has reaped (utime + stime + cutime + cstime),
    in clock ticks, from /proc/<pid>/stat; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant, each counting the children
    it reaped: the difference of two readings is the tree's CPU in between (a process that ended
    counts through its parent's cutime/cstime)."""
    ticks = sum(t for pid, _ in process_tree(root) if (t := cpu_ticks(pid)) is not None)
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_hog(logs: Path, wanted: bool) -> Iterator[Child | None]:
    """With `wanted`, one CPU-bound process (`python -c 'while 1: pass'`) beside the benchmark for
    the block, so its figures show what one busy core beside it costs."""
    if not wanted:
        yield None
        return
    hog = Child("a CPU hog", [PYTHON, "-c", "while 1: pass"], dict(os.environ), logs / "hog.log")
    print(f"with one CPU-bound process beside it (python -c 'while 1: pass', pid {hog.pid})", flush=True)
    try:
        yield hog
    finally:
        hog.stop(grace=1)


@contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A throwaway database `bench_<pid>` on the server of `url` (the URL's own database only
    serves to connect); yields its URL and drops it afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_done(ids: list[int], timeout: float) -> list[Any]:
    """Wait until every job has ended; all of them, or BenchError if any did not complete."""
    from renders.models import RenderJob

    wait_until(
        lambda: not RenderJob.objects.filter(pk__in=ids).exclude(status__in=RenderJob.ENDED).exists(),
        timeout,
        f"{len(ids)} render jobs to end",
        interval=0.02,
    )
    jobs = list(RenderJob.objects.filter(pk__in=ids))
    bad = [j for j in jobs if j.status != RenderJob.COMPLETED]
    if bad:
        raise BenchError(f"{len(bad)} of {len(jobs)} jobs did not complete; first: {bad[0].status}: {bad[0].error}")
    return jobs
