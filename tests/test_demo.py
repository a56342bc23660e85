"""`manage.py run --demo` (what `make demo` runs): Spoon Feeder with two simulated nodes that a
newcomer without a GPU can use at once, labelled as simulated, and gone again when it stops.

The demo's simulated nodes listen at the real services' ports (11434, 8188), so each test mode
gives them loopback addresses of its own (SPOONFEEDER_DEMO_HOSTS): 127.0.42.x in the SQLite mode,
127.0.43.x in the PostgreSQL mode (DATABASE_URL set), and both modes can run at the same time.
"""

from __future__ import annotations

import os
import re
import signal
import time

from nodes.models import COMFYUI_PORT, OLLAMA_PORT
from spoonfeeder.management.commands.run import port_is_free
from tests.conftest import Stack, wait_until
from tests.test_run import alive, children, log_in

NET = "127.0.43" if os.environ.get("DATABASE_URL") else "127.0.42"
DEMO_HOSTS = (f"{NET}.2", f"{NET}.3")
PASSWORD = "correct-horse-battery-demo"
SERVICES = (("Ollama", OLLAMA_PORT), ("ComfyUI", COMFYUI_PORT))


def article(html: str, name: str) -> str:
    """The card of the node called `name` on the Nodes page, or ""."""
    for card in re.findall(r'<article class="card node[^"]*" id="node-[^"]+">.*?</article>', html, re.S):
        if f"<h2>{name}" in card:
            return card
    return ""


def statuses(card: str) -> dict[str, str]:
    found = re.findall(r'id="cap-[^"]+-(ollama|comfyui)">\s*<h3>[^<]*<span class="status [^"]*">([^<]+)</span>', card)
    return dict(found)


def test_the_demo_runs_two_simulated_nodes_that_come_online_and_stops_them(stack: Stack) -> None:
    for host in DEMO_HOSTS:
        for port in (OLLAMA_PORT, COMFYUI_PORT):
            assert port_is_free(host, port), f"{host}:{port} is taken before the demo starts"
    started = time.monotonic()
    run = stack.run("--demo", SPOONFEEDER_ADMIN_PASSWORD=PASSWORD, SPOONFEEDER_DEMO_HOSTS=",".join(DEMO_HOSTS))
    stack.wait_for_http(run)
    wait_until(lambda: "Press Ctrl-C to stop" in run.output(), 30, "the banner")
    assert f"Demo: simulated nodes at {DEMO_HOSTS[0]} and {DEMO_HOSTS[1]}, labelled as simulated." in run.output()
    # Each simulated node says where it listens, and adds itself to the pool.
    said = [f"Simulated {kind} at http://{host}:{port}" for host in DEMO_HOSTS for kind, port in SERVICES]
    said += ["Added to the pool as Simulated GPU A", "Added to the pool as Simulated GPU B"]
    wait_until(lambda: all(line in run.output() for line in said), 30, "the simulated nodes to be up and added")
    assert run.popen
    kids = children(run.popen.pid)
    assert len(kids) == 4, f"expected web, worker and two simulated nodes, found {kids}"
    print(f"banner after {time.monotonic() - started:.2f} s")

    browser = log_in(stack.url, "admin", PASSWORD)
    names = ("Simulated GPU A", "Simulated GPU B")

    def all_online() -> str:
        html = browser.get(f"{stack.url}/nodes/", timeout=5).text
        cards = [article(html, name) for name in names]
        ok = all(statuses(c) == {"ollama": "online", "comfyui": "online"} for c in cards)
        return html if ok else ""

    html = wait_until(all_online, 30, "both simulated nodes to be online on the Nodes page", interval=0.5)
    print(f"both nodes online on the page after {time.monotonic() - started:.2f} s")
    for name, host in zip(names, DEMO_HOSTS, strict=True):
        card = article(html, name)
        assert '<span class="tag sim">simulated</span>' in card, f"{name} is not labelled as simulated"
        assert host in card
        assert f"port {OLLAMA_PORT}" in card and f"port {COMFYUI_PORT}" in card

    dashboard = browser.get(f"{stack.url}/", timeout=5).text
    pool = re.search(r'<section id="pool".*?</section>', dashboard, re.S)
    assert pool, "the dashboard has no #pool section"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", pool.group(0)))
    assert "2 nodes: 4 services answering" in text, text
    assert "simulated" in text and "2 of them are simulated" in text, text

    stopping = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(40) == 0, run.output()[-3000:]
    print(f"stopped {time.monotonic() - stopping:.2f} s after SIGTERM")
    assert "Spoon Feeder stopped." in run.output()
    assert not [k for k in kids if alive(k)]
    for host in DEMO_HOSTS:
        for port in (OLLAMA_PORT, COMFYUI_PORT):
            assert port_is_free(host, port), f"{host}:{port} is still taken after the demo stopped"
    assert port_is_free(stack.host, stack.port)
