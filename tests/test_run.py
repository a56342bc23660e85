"""`manage.py run`: the whole embedded stack from one command."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import requests

from nodes.models import Discovery
from tests.conftest import Stack, wait_until


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[-1].split()[0] != "Z"


def log_in(base: str, username: str, password: str) -> requests.Session:
    s = requests.Session()
    page = s.get(f"{base}/login/", timeout=5)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    answer = s.post(
        f"{base}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/login/"},
        timeout=5,
    )
    assert answer.url == f"{base}/", "login did not reach the dashboard"
    return s


def test_it_starts_serves_the_login_page_and_stops_cleanly_on_sigterm(stack: Stack) -> None:
    run = stack.run(SPOONFEEDER_ADMIN_PASSWORD="correct-horse-battery")
    stack.wait_for_http(run)
    wait_until(lambda: "Press Ctrl-C to stop" in run.output(), 10, "the banner")
    assert f"Spoon Feeder is running at {stack.url}/" in run.output()
    assert "Log in as admin with the password from SPOONFEEDER_ADMIN_PASSWORD" in run.output()
    assert run.popen
    kids = children(run.popen.pid)
    assert len(kids) == 2  # the web server and the worker cluster: nothing else runs work

    dashboard = log_in(stack.url, "admin", "correct-horse-battery").get(f"{stack.url}/", timeout=5)
    assert 'id="tasks"' in dashboard.text
    # A first run looks for this machine's own Ollama and ComfyUI, and only there.
    assert list(Discovery.objects.values_list("targets", flat=True)) == ["127.0.0.1"]

    run.signal(signal.SIGTERM)
    assert run.wait(40) == 0
    assert "Spoon Feeder stopped." in run.output()
    assert not [k for k in kids if alive(k)]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", stack.port))  # the port is free again


def test_it_generates_a_password_once_and_runs_twice_in_a_row(stack: Stack) -> None:
    stack.env.pop("SPOONFEEDER_ADMIN_PASSWORD", None)
    first = stack.run()
    stack.wait_for_http(first)
    found = wait_until(lambda: re.search(r"Log in as admin with password (\S+)", first.output()), 10, "a password")
    assert found
    log_in(stack.url, "admin", found.group(1))
    first.signal(signal.SIGINT)
    assert first.wait(40) == 0

    second = stack.run()
    stack.wait_for_http(second)
    wait_until(lambda: "Press Ctrl-C to stop" in second.output(), 10, "the banner")
    assert "with password" not in second.output()
    log_in(stack.url, "admin", found.group(1))
    second.signal(signal.SIGTERM)
    assert second.wait(40) == 0


def test_a_port_in_use_is_refused_with_one_line(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.port))
        taken.listen()
        run = stack.run()
        assert run.wait(30) != 0
    lines = run.output().strip().splitlines()
    assert len(lines) == 1
    assert f"port {stack.port} on 127.0.0.1 is already in use" in lines[0]
    assert "SPOONFEEDER_PORT" in lines[0]


def test_when_the_worker_dies_the_command_says_so_and_stops_the_web_server(stack: Stack) -> None:
    run = stack.run(SPOONFEEDER_ADMIN_PASSWORD="correct-horse-battery")
    stack.wait_for_http(run)
    assert run.popen
    kids = children(run.popen.pid)
    worker = next(k for k in kids if b"qcluster" in Path(f"/proc/{k}/cmdline").read_bytes())
    os.killpg(worker, signal.SIGKILL)

    assert run.wait(40) == 1
    assert "the worker (qcluster) exited" in run.output()
    assert "stopping the web server (daphne)" in run.output()
    assert not [k for k in kids if alive(k)]


def test_it_makes_an_open_data_folder_private_and_says_so(stack: Stack, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    for folder in (data, data / "media"):
        folder.chmod(0o755)
    for name in ("secret_key", "media/old.png"):
        (data / name).write_text("x" * 50)
        (data / name).chmod(0o644)
    run = stack.run(SPOONFEEDER_DATA_DIR=str(data), SPOONFEEDER_ADMIN_PASSWORD="correct-horse-battery")
    wait_until(lambda: "Press Ctrl-C to stop" in run.output(), 60, "the banner")
    assert f"Made the data folder {data} private: 4 files and folders in it were open" in run.output()
    opened = [p for p in [data, *data.rglob("*")] if p.stat().st_mode & 0o077]
    assert not opened, opened
    run.signal(signal.SIGTERM)
    assert run.wait(40) == 0
