"""Startup time: from spawning `manage.py run` to GET /login/ answering 200, on a warm venv.

One warm-up run makes the data folder (migrations, cache table, the admin login) and warms the
page cache; then five timed runs start the same data folder again, each polling /login/ every
20 ms, then stop it with SIGTERM. Target: at most 5 s.

    .venv/bin/python bench/startup.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from common import (
    BenchError,
    base_env,
    free_port,
    machine,
    main,
    start_run,
    temp_dir,
    time_limit,
    verdict,
    wait_for_login,
)

TARGET_S = 5.0
RUNS = 5
POLL_S = 0.02


def start_once(env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """(seconds until /login/ answered 200, seconds to stop, exit code) of one run."""
    port = free_port()
    stack = start_run(env, port, log)
    try:
        up = wait_for_login(stack, f"http://127.0.0.1:{port}", timeout=60, interval=POLL_S)
    finally:
        began = time.monotonic()
        code = stack.stop(grace=45)
    if code != 0:
        raise BenchError(f"manage.py run exited with {code} after SIGTERM:\n{stack.output()}")
    return up, time.monotonic() - began, code


def run() -> None:
    with time_limit(170), temp_dir("spoonfeeder-bench-startup-") as tmp:
        data = tmp / "data"
        data.mkdir()
        # As `make run` starts it: no SPOONFEEDER_ADMIN_PASSWORD, so the admin made by the
        # warm-up run is only looked up afterwards, never re-hashed.
        env = base_env(data, embedded=True)
        env.pop("SPOONFEEDER_ADMIN_PASSWORD", None)
        print(f"Startup of `manage.py run` until GET /login/ answers 200 (SQLite; {machine()})")
        up, _, _ = start_once(env, tmp / "warmup.log")
        print(f"warm-up (first run: migrations, cache table, admin): {up:.2f} s")
        times = []
        for i in range(1, RUNS + 1):
            up, stopping, code = start_once(env, tmp / f"run{i}.log")
            times.append(up)
            print(f"run {i}: {up:.2f} s to serve /login/ (SIGTERM: exit {code} in {stopping:.2f} s)")
        median, worst = statistics.median(times), max(times)
        print(f"median {median:.2f} s, max {worst:.2f} s (target <= {TARGET_S:g} s)")
        print(f"{verdict(worst <= TARGET_S)}: startup on a warm venv")


if __name__ == "__main__":
    main(run)
