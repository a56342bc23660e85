"""`manage.py run`: the whole embedded stack from one command.

Migrates, makes sure a login exists, then starts daphne (web) and the django-q2 cluster (worker)
as children and watches them: Ctrl-C or SIGTERM stops both; if either dies, the other is stopped
and the command fails, saying which one died.
"""

from __future__ import annotations

import ctypes
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection

from spoonfeeder import config

PR_SET_PDEATHSIG = 1
# `make demo`: simulated nodes on their own loopback addresses, at the real services' ports.
DEMO_NODES = tuple(os.environ.get("SPOONFEEDER_DEMO_HOSTS", "127.0.0.2,127.0.0.3").split(","))


def die_with_parent() -> None:
    # A child outliving a SIGKILLed `run` would keep the port and the queue busy.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, child: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Command(BaseCommand):
    help = "Start Spoon Feeder: the web server and the worker cluster, on this machine."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("SPOONFEEDER_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("SPOONFEEDER_PORT", "8000")))
        parser.add_argument(
            "--stop-grace",
            type=float,
            default=float(os.environ.get("SPOONFEEDER_STOP_GRACE", "30")),
            help="Seconds to let the worker finish its running task when stopping, before killing it.",
        )
        parser.add_argument(
            "--demo", action="store_true", help="Also start two simulated nodes (no GPU needed) and add them."
        )

    def handle(self, *args: Any, host: str, port: int, stop_grace: float, demo: bool, **options: Any) -> None:
        if not port_is_free(host, port):
            raise CommandError(
                f"port {port} on {host} is already in use: stop the program using it, "
                "or choose another with SPOONFEEDER_PORT=8001 (or --port 8001)"
            )
        try:
            connection.ensure_connection()
        except DatabaseError as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CommandError(f"cannot reach the database ({first_line}): start it, or correct DATABASE_URL") from None
        call_command("migrate", interactive=False, verbosity=0)
        if settings.CACHES["default"]["BACKEND"].endswith("DatabaseCache"):
            call_command("createcachetable", verbosity=0)
        call_command("load_templates", stdout=io.StringIO())
        login = self.ensure_login()
        opened = config.make_private(settings.DATA_DIR)
        if opened:
            self.stdout.write(
                f"Made the data folder {settings.DATA_DIR} private: {opened} files and folders in it "
                "were open to other users of this machine (now 0600, folders 0700)."
            )

        self.stopping = 0
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        children = {
            "web server (daphne)": self.spawn(
                [
                    python,
                    "-m",
                    "spoonfeeder.web",
                    "-b",
                    host,
                    "-p",
                    str(port),
                    "--websocket_timeout",
                    "-1",
                    "spoonfeeder.asgi:application",
                ]
            ),
            "worker (qcluster)": self.spawn([python, manage, "qcluster"]),
        }
        if demo:
            for i, address in enumerate(DEMO_NODES):
                children[f"simulated node {address}"] = self.spawn(
                    [python, manage, "simulate_node", "--ollama", "--comfyui", "--host", address]
                    + ["--add-to-pool", f"Simulated GPU {chr(65 + i)}"]
                )
            self.stdout.write(f"Demo: simulated nodes at {' and '.join(DEMO_NODES)}, labelled as simulated.")
        else:
            # A first run finds this machine's own Ollama and ComfyUI, if they run.
            call_command("discover_nodes", "127.0.0.1", "--first-run", stdout=io.StringIO())
        web = children["web server (daphne)"]
        address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        if wait_for_port(host, port, web, time.monotonic() + 30):
            self.stdout.write(self.style.SUCCESS(f"Spoon Feeder is running at {address}"))
            self.stdout.write(login)
            self.stdout.write("Press Ctrl-C to stop.")
        code = self.watch(children)
        self.stop(children, stop_grace)
        if code:
            sys.exit(code)
        self.stdout.write("Spoon Feeder stopped.")

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = signum

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        return subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent)

    def watch(self, children: dict[str, subprocess.Popen[bytes]]) -> int:
        while not self.stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    others = ", ".join(n for n in children if n != name)
                    self.stderr.write(
                        f"spoonfeeder: the {name} exited with code {child.returncode}; "
                        f"stopping the {others}. See the output above for why."
                    )
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self, children: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
        for child in children.values():
            if child.poll() is None:
                # The cluster stops gracefully: its workers see it stopping and hand their work
                # back within seconds (a render goes on on its node, and is followed again at
                # the next start).
                child.terminate()
        deadline = time.monotonic() + grace
        for name, child in children.items():
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"spoonfeeder: the {name} did not stop within {grace:g} s; killing it.")
            # The cluster's own children (sentinel, workers) share its process group.
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()

    def ensure_login(self) -> str:
        User = get_user_model()
        username = os.environ.get("SPOONFEEDER_ADMIN_USER", "admin")
        wanted = os.environ.get("SPOONFEEDER_ADMIN_PASSWORD", "")
        user = User.objects.filter(username=username).first()
        if user is None:
            password = wanted or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email="", password=password)
            if wanted:
                return f"Log in as {username} with the password from SPOONFEEDER_ADMIN_PASSWORD."
            return (
                f"Log in as {username} with password {password}\n"
                "(shown this once; `.venv/bin/python manage.py changepassword "
                f"{username}` sets a new one)"
            )
        if wanted and not user.check_password(wanted):
            user.set_password(wanted)
            user.save(update_fields=["password"])
        if wanted:
            return f"Log in as {username} with the password from SPOONFEEDER_ADMIN_PASSWORD."
        return (
            f"Log in as {username} (its password was shown when it was made; "
            f"`.venv/bin/python manage.py changepassword {username}` sets a new one)."
        )
