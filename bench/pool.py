"""The node pool's figures: discovery of a /24 with 4 live simulated hosts (<= 5 s), a health check
of 50 simulated nodes (<= 2 s, <= 5 queries per node), and the Nodes page with 50 nodes
(<= 100 ms server time, a constant number of queries).

Runs in one process on the embedded default (SQLite in a temporary data folder); every simulated
server listens on its own 127.0.0.x address. Loopback only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import django_on_sqlite, machine, main, temp_dir, time_limit, time_page, verdict  # noqa: E402

DISCOVERY_HOSTS = [f"127.0.0.{i}" for i in (21, 22, 23, 24)]
HEALTH_NODES = 50


def run() -> None:
    with time_limit(240), temp_dir("sf-bench-pool-") as data:
        django_on_sqlite(data)
        print(f"Node pool benchmarks (SQLite; {machine()})")
        discovery()
        health()
        page()


def discovery() -> None:
    from nodes.discovery import discover
    from nodes.sim.comfyui import SimComfyUI
    from nodes.sim.ollama import SimOllama

    sims: list[SimOllama | SimComfyUI] = []
    try:
        for host in DISCOVERY_HOSTS:
            sims.append(SimOllama(host, 11434).start())
            sims.append(SimComfyUI(host, 8188).start())
        started = time.monotonic()
        found = discover("127.0.0.0/24")
        took = time.monotonic() - started
    finally:
        for sim in sims:
            sim.stop()
    hosts = sorted(f["host"] for f in found.found if f.get("node"))
    print(f"discovery of 127.0.0.0/24 ({found.probed} addresses, 2 ports each): {took:.2f} s, found {hosts}")
    print(f"{verdict(took <= 5 and hosts == DISCOVERY_HOSTS)}: discovery <= 5 s, all 4 hosts found")


def health() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from nodes import health as checks
    from nodes.models import Capability, Node
    from nodes.sim.comfyui import SimComfyUI
    from nodes.sim.ollama import SimOllama

    Node.objects.all().delete()
    sims: list[SimOllama | SimComfyUI] = []
    try:
        for i in range(HEALTH_NODES):
            host = f"127.0.1.{i + 1}"
            ollama, comfy = SimOllama(host, 11434).start(), SimComfyUI(host, 8188).start()
            sims += [ollama, comfy]
            node = Node.objects.create(name=f"sim {i}", host=host, simulated=True)
            Capability.objects.create(node=node, kind=Capability.OLLAMA, port=11434)
            Capability.objects.create(node=node, kind=Capability.COMFYUI, port=8188)
        checks.check_all(full=True)  # first check: inventories
        for full in (False, True):
            with CaptureQueriesContext(connection) as queries:
                started = time.monotonic()
                checks.check_all(full=full)
                took = time.monotonic() - started
            online = Capability.objects.filter(status=Capability.ONLINE).count()
            per_node = len(queries) / HEALTH_NODES
            kind = "full (inventories)" if full else "routine"
            print(
                f"health check, {kind}, {HEALTH_NODES} nodes x 2 services: {took:.2f} s, "
                f"{len(queries)} queries ({per_node:.2f} per node), {online}/{2 * HEALTH_NODES} online"
            )
            ok = took <= 2 and per_node <= 5 and online == 2 * HEALTH_NODES
            print(f"{verdict(ok)}: <= 2 s and <= 5 queries per node")
    finally:
        for sim in sims:
            sim.stop()


def page() -> None:
    median, worst, counts = time_page("/nodes/")
    print(
        f"Nodes page with {HEALTH_NODES} nodes: median {median:.1f} ms, max {worst:.1f} ms server time, "
        f"queries per render {counts}"
    )
    print(f"{verdict(median <= 100 and len(counts) == 1)}: <= 100 ms with a constant number of queries")


if __name__ == "__main__":
    main(run)
