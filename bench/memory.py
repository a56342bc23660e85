"""Memory of the whole embedded stack at idle: `manage.py run` and every process it started
(daphne, the qcluster and its sentinel, monitor, pusher and workers), as the sum of their PSS.

PSS (proportional set size) splits each shared page between the processes that map it, so the sum
over the tree is what the stack really costs the machine. Target: at most 400 MB.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import time

from common import (
    BenchError,
    base_env,
    free_port,
    machine,
    main,
    process_tree,
    pss_kb,
    short_command,
    start_run,
    temp_dir,
    time_limit,
    verdict,
    wait_for_login,
)

TARGET_MB = 400
IDLE_SECONDS = 10


def run() -> None:
    with time_limit(150), temp_dir("spoonfeeder-bench-memory-") as tmp:
        data = tmp / "data"
        data.mkdir()
        env = base_env(data, embedded=True, SPOONFEEDER_ADMIN_PASSWORD="bench-memory-password")
        port = free_port()
        stack = start_run(env, port, tmp / "run.log")
        try:
            up = wait_for_login(stack, f"http://127.0.0.1:{port}", timeout=60)
            print(f"Memory of `manage.py run` (SQLite + ORM broker; {machine()})")
            print(f"idle {IDLE_SECONDS} s after /login/ first answered 200 ({up:.2f} s after start)")
            time.sleep(IDLE_SECONDS)
            stack.check_alive()

            rows = []
            for pid, depth in process_tree(stack.pid):
                kb = pss_kb(pid)
                if kb is not None:
                    rows.append((pid, "  " * depth + short_command(pid), kb))
            if len(rows) < 3:
                raise BenchError(f"expected run, daphne and qcluster; found {rows}")
            # Indented under qcluster: its sentinel, and under that the pusher, monitor and workers.
            print(f"{'pid':>8}  {'PSS MB':>7}  command (indented under its parent)")
            for pid, name, kb in rows:
                print(f"{pid:>8}  {kb / 1024:7.1f}  {name}")
            total = sum(kb for _, _, kb in rows) / 1024
            print(f"total: {total:.1f} MB PSS over {len(rows)} processes (target <= {TARGET_MB} MB)")
            print(f"{verdict(total <= TARGET_MB)}: memory at idle")
        finally:
            began = time.monotonic()
            code = stack.stop(grace=45)
            print(f"stopped with SIGTERM: exit code {code} after {time.monotonic() - began:.2f} s")
            if code != 0:
                print(stack.output())


if __name__ == "__main__":
    main(run)
