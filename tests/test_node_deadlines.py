"""Every call to a node ends by a deadline, however slowly the node answers: a slow-loris node (a
byte every 2 s, which no read timeout catches) is given up on in time, with a reason a user can act
on, its connection closed, and without holding up the other nodes. Against simulated nodes over
real HTTP, each on a loopback address of its own."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from nodes import health
from nodes.clients import ServiceError
from nodes.clients.comfyui import ComfyUI, FileRef, outputs_of
from nodes.clients.ollama import Ollama
from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama
from renders import media
from tests.conftest import ended, wait_until

# The suite runs in two modes at once on one machine: each takes its own 127.0.x.0 block.
NET = 111 if os.environ.get("DATABASE_URL") else 110
# A byte every 2 s, as the node in the issue sent: slower than any answer should come, quicker
# than the health check's read timeout (5 s).
TRICKLE = 2.0
# The same for the tests of single calls, which use a read timeout of 1 s to be quick: a byte
# every 0.5 s never trips it, only the deadline.
QUICK_TRICKLE = 0.5
# What a busy machine may add to a deadline before the test calls it missed.
MARGIN = 5.0
STILL = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "peer/still"}},
}


def host(n: int) -> str:
    return f"127.0.{NET}.{n}"


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[SimComfyUI]:
    with SimComfyUI(host(1), 0, root=tmp_path / "sim", max_side=64) as sim:
        yield sim


def render(sim: SimComfyUI) -> tuple[str, FileRef]:
    """A finished prompt on the node, and its output."""
    prompt_id, client_id = uuid.uuid4().hex, uuid.uuid4().hex
    with ComfyUI(sim.url) as client:
        client.submit(STILL, prompt_id=prompt_id, client_id=client_id)
        entry = ended(client, prompt_id, 10)
    (ref,) = outputs_of(entry)
    return prompt_id, ref


def established(address: str, port: int) -> int:
    """TCP connections with an end at address:port that are open (ESTABLISHED), as the kernel
    lists them in /proc/net/tcp: what the node and we would each see as still connected."""
    # The kernel writes an IPv4 address as a hex number in the machine's (little-endian) order.
    end = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[3] == "01" and end in (row[1], row[2]))


@pytest.mark.django_db
def test_a_trickling_node_fails_its_health_check_by_the_deadline_and_the_others_are_stored_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(health, "CHECK_DEADLINE", 3.0)
    slow_sim = SimComfyUI(host(2), 0, root=tmp_path / "slow", trickle={"/system_stats": TRICKLE}).start()
    fine_sim = SimComfyUI(host(3), 0, root=tmp_path / "fine").start()
    ollama_sim = SimOllama(host(3), 0).start()
    try:
        slow_node = Node.objects.create(name="slow", host=host(2))
        fine_node = Node.objects.create(name="fine", host=host(3))
        slow = Capability.objects.create(
            node=slow_node, kind=Capability.COMFYUI, port=slow_sim.port, status=Capability.ONLINE
        )
        fine = Capability.objects.create(node=fine_node, kind=Capability.COMFYUI, port=fine_sim.port)
        ollama = Capability.objects.create(node=fine_node, kind=Capability.OLLAMA, port=ollama_sim.port)

        started = time.monotonic()
        health.check_all()
        took = time.monotonic() - started
    finally:
        for sim in (slow_sim, fine_sim, ollama_sim):
            sim.close()

    # The trickle would take many minutes (its answer is hundreds of bytes); the check gave up.
    assert health.CHECK_DEADLINE - 0.5 <= took < health.CHECK_DEADLINE + MARGIN
    for cap in (slow, fine, ollama):
        cap.refresh_from_db()
    assert "sent its answer too slowly" in slow.last_error and "gave up" in slow.last_error
    # A failure, not "busy": a node that answers too slowly to be used gets no new work.
    assert (slow.status, slow.failures) == (Capability.ONLINE, 1)
    assert fine.status == ollama.status == Capability.ONLINE
    assert fine.inventory["classes"] and ollama.inventory["models"]
    # The healthy ones were stored as soon as they answered, not when the slow one gave up.
    assert fine.last_checked and ollama.last_checked and slow.last_checked
    for cap in (fine, ollama):
        assert (slow.last_checked - cap.last_checked).total_seconds() > health.CHECK_DEADLINE / 2


def test_a_trickling_history_gives_up_by_the_calls_deadline(comfy: SimComfyUI) -> None:
    prompt_id, _ = render(comfy)
    comfy.knobs.trickle = {"/history": QUICK_TRICKLE}
    with ComfyUI(comfy.url, timeout=1.0) as client:
        for ask in (lambda: client.history(prompt_id), lambda: client.standing(prompt_id)):
            started = time.monotonic()
            with pytest.raises(ServiceError) as e:
                ask()
            # The deadline is two read timeouts: 2 s.
            assert time.monotonic() - started < 2.0 + MARGIN
            assert "/history/" in str(e.value) and "sent its answer too slowly" in str(e.value)
            assert not e.value.permanent  # a node that is slow now may not be later
        comfy.knobs.trickle = {}
        assert client.history(prompt_id) is not None


def test_a_trickling_output_download_gives_up_leaves_no_file_and_closes_its_connection(
    comfy: SimComfyUI, tmp_path: Path
) -> None:
    _, ref = render(comfy)
    wait_until(lambda: established(comfy.host, comfy.port) == 0, 10, "the connections of the render to close")
    comfy.knobs.trickle = {"/view": QUICK_TRICKLE}
    media_root = tmp_path / "media"
    with ComfyUI(comfy.url, timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(ServiceError) as e:
            media.collect(client, ref, "job-1", 0, media_root=media_root)
        assert time.monotonic() - started < 2.0 + MARGIN
        assert "/view" in str(e.value) and "sent its answer too slowly" in str(e.value)
        # Neither end holds the connection open, though the client itself is still in use.
        wait_until(
            lambda: established(comfy.host, comfy.port) == 0,
            MARGIN,
            "the download's connection to close",
            describe=lambda: f"{established(comfy.host, comfy.port)} still open",
        )
    assert [p for p in media_root.rglob("*") if p.is_file()] == []


def test_a_trickling_ollama_gives_up_by_the_deadline() -> None:
    with (
        SimOllama(host(4), 0, trickle={"/api/tags": QUICK_TRICKLE, "/api/chat": QUICK_TRICKLE}) as sim,
        Ollama(sim.url) as client,
    ):
        asks: list[tuple[str, Any, float]] = [
            # Inventory: two read timeouts in all.
            ("/api/tags", lambda: client.tags(timeout=1.0), 2.0),
            # An answer: its timeout in all (what a story step's deadline counts on).
            ("/api/chat", lambda: client.chat("llama3.2:3b", [{"role": "user", "content": "hi"}], timeout=2.0), 2.0),
        ]
        for path, ask, deadline in asks:
            started = time.monotonic()
            with pytest.raises(ServiceError) as e:
                ask()
            assert time.monotonic() - started < deadline + MARGIN
            assert path in str(e.value) and "sent its answer too slowly" in str(e.value)
        sim.set(trickle={})
        assert client.tags()


def test_an_80_mb_history_is_a_permanent_error_fetched_once(tmp_path: Path) -> None:
    with SimComfyUI(host(5), 0, root=tmp_path / "sim", max_side=64) as sim:
        prompt_id, _ = render(sim)
        sim.knobs.history_padding_mb = 80
        with ComfyUI(sim.url) as client:
            asked: list[str] = []

            def count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
                asked.append(response.url)

            client.session.hooks["response"].append(count)
            started = time.monotonic()
            with pytest.raises(ServiceError) as e:
                client.standing(prompt_id)
            # Refused from its Content-Length, not read: quickly.
            assert time.monotonic() - started < MARGIN
    assert e.value.permanent
    assert "80 MB, over the limit of 64 MB" in str(e.value) and "too large" in str(e.value)
    assert [url for url in asked if "/history" in url] == [f"{sim.url}/history/{prompt_id}"]
