"""The web server's memory under oversized request bodies: a 1 GB POST without a login (declared
by Content-Length, and chunked), and a 200 MB upload with a session cookie. Each is sent as fast
as the server takes it; the figures are the web server's peak resident memory over its idle, how
many bytes it took before refusing, and how long the refusal took. Plain daphne gets the first
case too, for comparison. Target: peak <= idle + 20 MB.

    .venv/bin/python bench/bodies.py
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from common import (
    HOST,
    BenchError,
    base_env,
    free_port,
    machine,
    main,
    manage,
    start_daphne,
    temp_dir,
    time_limit,
    verdict,
    wait_for_login,
)

TARGET_MB = 20
GB = 2**30
BLOCK = b"a" * 2**20


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since start) of a process, in kB."""
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if not m:
        raise BenchError(f"no {field} for process {pid}")
    return int(m.group(1))


def post(
    port: int, size: int, *, chunked: bool = False, cookie: str = "", path: str = "/login/"
) -> tuple[int, float, str]:
    """Send a POST of `size` bytes as fast as the server reads it: (bytes sent, seconds, status line)."""
    head = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Content-Type: application/x-www-form-urlencoded"]
    head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {size}"]
    head += [f"Cookie: {cookie}"] if cookie else []
    sent = 0
    started = time.monotonic()
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            while sent < size:
                block = BLOCK[: size - sent]
                s.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: refused
        s.settimeout(60)
        try:
            reply = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    line = reply.split(b"\r\n", 1)[0].decode(errors="replace") or "(connection closed, no answer)"
    return sent, time.monotonic() - started, line


def measure(tmp: Path, server: str, cases: list[tuple[str, dict]]) -> list[tuple[str, int, float, str, float]]:
    env = base_env(tmp / "data", embedded=True)
    port = free_port()
    web = start_daphne(env, port, tmp / f"{server}.log", server=server)
    rows = []
    try:
        wait_for_login(web, f"http://{HOST}:{port}", timeout=60)
        time.sleep(1)
        idle = memory_kb(web.pid, "VmRSS")
        print(f"{server}: idle {idle / 1024:.1f} MB resident")
        for name, kwargs in cases:
            # The peak (VmHWM) is counted from here: 5 resets it to what the process holds now.
            Path(f"/proc/{web.pid}/clear_refs").write_text("5")
            sent, seconds, line = post(port, **kwargs)
            web.check_alive()
            peak = (memory_kb(web.pid, "VmHWM") - idle) / 1024
            rows.append((name, sent, seconds, line, peak))
            print(
                f"  {name}: {sent / 2**20:,.1f} MB sent before the answer, {seconds:.3f} s, {line!r}; "
                f"peak +{peak:.1f} MB"
            )
    finally:
        web.stop(grace=10)
    return rows


def run() -> None:
    with time_limit(300), temp_dir("spoonfeeder-bench-bodies-") as tmp:
        (tmp / "data").mkdir()
        manage(base_env(tmp / "data", embedded=True), "migrate", "--verbosity", "0")
        print(f"Request bodies over their limits ({machine()})")
        ours = measure(
            tmp,
            "spoonfeeder.web",
            [
                ("1 GB anonymous POST, Content-Length", {"size": GB}),
                ("1 GB anonymous POST, chunked", {"size": GB, "chunked": True}),
                (
                    "200 MB upload with a session cookie",
                    {"size": 200 * 2**20, "cookie": "sessionid=x", "path": "/renders/templates/import/"},
                ),
            ],
        )
        plain = measure(tmp, "daphne", [("1 GB anonymous POST, Content-Length", {"size": GB})])
        worst = max(row[4] for row in ours)
        before = plain[0][4]
        print(
            f"peak over idle: +{worst:.1f} MB with our bounds (the worst case), +{before:.1f} MB with plain "
            f"daphne; target <= {TARGET_MB} MB"
        )
        refused = all(row[3].startswith("HTTP/1.1 413") for row in ours)
        print(f"{verdict(worst <= TARGET_MB and refused)}: every oversized body refused (413) within the memory bound")


if __name__ == "__main__":
    main(run)
