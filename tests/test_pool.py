"""The node pool over the network: discovery and health checks against simulated servers on
their own loopback addresses."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command

from nodes import health
from nodes.discovery import discover
from nodes.models import Capability, Node
from nodes.sim.comfyui import SimComfyUI
from nodes.sim.ollama import SimOllama


def shared_port(hosts: list[str]) -> int:
    """A port free on every one of the hosts (each loopback address is its own 'machine')."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on every host")


def pytest_net() -> int:
    # The suite runs in two modes at once on one machine: each takes its own 127.0.x.0 block.
    return 31 if os.environ.get("DATABASE_URL") else 30


@pytest.fixture
def lab() -> Iterator[tuple[list[str], int, int, list[SimOllama | SimComfyUI]]]:
    """Four machines: two with both services, one with Ollama only, one with ComfyUI only."""
    hosts = [f"127.0.{pytest_net()}.{i}" for i in (1, 2, 3, 4)]
    ollama_port, comfy_port = shared_port(hosts), shared_port(hosts)
    sims: list[SimOllama | SimComfyUI] = []
    for host, services in zip(hosts, ("both", "both", "ollama", "comfyui"), strict=True):
        if services in ("both", "ollama"):
            sims.append(SimOllama(host, ollama_port).start())
        if services in ("both", "comfyui"):
            sims.append(SimComfyUI(host, comfy_port).start())
    yield hosts, ollama_port, comfy_port, sims
    for sim in sims:
        sim.stop()


@pytest.mark.django_db
def test_discovery_merges_each_host_into_one_node_with_its_services(lab) -> None:  # type: ignore[no-untyped-def]
    hosts, ollama_port, comfy_port, _ = lab
    net = hosts[0].rsplit(".", 1)[0]
    run = discover(f"{net}.0/29", ollama_port=ollama_port, comfyui_port=comfy_port)

    assert run.probed == 6 and run.finished
    assert sorted(Node.objects.values_list("host", flat=True)) == hosts
    both = Node.objects.get(host=hosts[0])
    assert {c.kind for c in both.capabilities.all()} == {"ollama", "comfyui"}
    assert [c.kind for c in Node.objects.get(host=hosts[2]).capabilities.all()] == ["ollama"]
    assert [c.kind for c in Node.objects.get(host=hosts[3]).capabilities.all()] == ["comfyui"]
    ollama, comfy = both.ollama, both.comfyui
    assert ollama and ollama.status == "online" and ollama.model_names()
    assert comfy and comfy.status == "online" and "SaveImage" in comfy.inventory["classes"]
    assert comfy.inventory["devices"]

    assert run.summary() == f"4 new: {', '.join(hosts)}"
    Node.objects.filter(host=hosts[1]).update(simulated=True, name="sim box")  # as simulate_node adds one
    again = discover(f"{net}.0/29", ollama_port=ollama_port, comfyui_port=comfy_port)
    assert Node.objects.count() == 4
    assert not any(f.get("new") for f in again.found)
    names = [hosts[0], "sim box", *hosts[2:]]
    assert again.summary() == f"4 already in the pool: {', '.join(names)}"
    assert Node.objects.get(host=hosts[1]).simulated  # discovered again, still labelled simulated


@pytest.mark.django_db
def test_a_port_answering_garbage_is_reported_and_adds_nothing() -> None:
    host = f"127.0.{pytest_net()}.9"
    with SimOllama(host, 0, garbage=True) as sim:
        run = discover(host, ollama_port=sim.port, comfyui_port=1)
    assert not Node.objects.exists()
    assert "HTML" in run.found[0]["error"]


@pytest.mark.django_db
def test_health_goes_offline_after_repeated_failures_loading_while_slow_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.5)
    host = f"127.0.{pytest_net()}.10"
    sim = SimOllama(host, 0).start()
    node = Node.objects.create(name="box", host=host)
    cap = Capability.objects.create(node=node, kind=Capability.OLLAMA, port=sim.port)
    try:
        health.check_all()
        cap.refresh_from_db()
        assert cap.status == "online" and cap.version and cap.model_names()

        sim.set(hang=True)
        health.check_all()
        cap.refresh_from_db()
        assert cap.status == "loading"
        sim.set(hang=False)
        health.check_all()
        cap.refresh_from_db()
        assert cap.status == "online"

        sim.stop()
        for expected in ("online", "online", "offline"):
            health.check_all()
            cap.refresh_from_db()
            assert cap.status == expected
        assert "connection refused" in cap.last_error

        sim.start()
        health.check_all()
        cap.refresh_from_db()
        assert (cap.status, cap.last_error) == ("online", "")
    finally:
        sim.stop()


@pytest.mark.django_db
def test_commands_refuse_bad_input_with_a_reason() -> None:
    with pytest.raises(CommandError, match="at most a /16"):
        call_command("discover_nodes", "10.0.0.0/8")
    with pytest.raises(CommandError, match="out of range"):
        call_command("discover_nodes", "127.0.0.1", "--ollama-port", "70000")
    with pytest.raises(CommandError, match="Give the Ollama port"):
        call_command("add_node", "box", "127.0.0.1")
    assert not Node.objects.exists()


@pytest.mark.django_db
def test_tls_where_plain_http_was_expected_and_huge_answers_become_clear_errors(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    host = f"127.0.{pytest_net()}.30"
    with socket.socket() as tls:
        tls.bind((host, 0))
        tls.listen()
        port = tls.getsockname()[1]

        def alert() -> None:
            # What a TLS server answers to plain HTTP: a handshake-failure alert record.
            conn, _ = tls.accept()
            conn.recv(1024)
            conn.sendall(b"\x15\x03\x01\x00\x02\x02\x28")
            conn.close()

        server = threading.Thread(target=alert)
        server.start()
        node = Node.objects.create(name="tls", host=host)
        cap = Capability.objects.create(node=node, kind=Capability.OLLAMA, port=port)
        health.check_all()
        server.join(timeout=10)
    cap.refresh_from_db()
    assert "is it TLS?" in cap.last_error

    with SimComfyUI(host, 0, bloat_mb=40) as sim:
        cap = Capability.objects.create(node=node, kind=Capability.COMFYUI, port=sim.port)
        health.check_node(node)
    cap.refresh_from_db()
    assert "too large" in cap.last_error
    assert cap.inventory.get("classes", []) == []


@pytest.mark.django_db
def test_the_commands_add_discover_and_check_nodes(capsys) -> None:  # type: ignore[no-untyped-def]
    host = f"127.0.{pytest_net()}.40"
    with SimOllama(host, 0) as ollama, SimComfyUI(host, 0) as comfy:
        call_command("add_node", "box", host, "--ollama-port", str(ollama.port), "--comfyui-port", str(comfy.port))
        out = capsys.readouterr().out
        assert "box Ollama: online" in out and "box ComfyUI: online" in out
        call_command("discover_nodes", host, "--ollama-port", str(ollama.port), "--comfyui-port", str(comfy.port))
        out = capsys.readouterr().out
        assert f"{host}: Ollama" in out and "(new)" not in out
        assert "(already in the pool as box)" in out and "1 already in the pool: box." in out
        assert Node.objects.count() == 1
        ollama.stop()
        call_command("check_nodes")
        assert "box Ollama: online" in capsys.readouterr().out  # one failure is not offline yet
        assert "connection refused" in Node.objects.get().ollama.last_error


@pytest.mark.django_db
def test_nodes_are_checked_every_minute_by_one_schedule() -> None:
    from importlib import import_module

    from django.apps import apps
    from django_q.models import Schedule

    migration = import_module("nodes.migrations.0002_check_schedule")
    migration.add_schedule(apps, None)
    migration.add_schedule(apps, None)
    schedule = Schedule.objects.get(func="nodes.tasks.check_nodes")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)


@pytest.mark.django_db
def test_a_node_removed_mid_check_does_not_lose_the_others_results() -> None:
    host = f"127.0.{pytest_net()}.50"
    with SimOllama(host, 0) as sim:
        keep = Node.objects.create(name="keep", host=host)
        gone = Node.objects.create(name="gone", host=f"127.0.{pytest_net()}.51")
        for node in (keep, gone):
            Capability.objects.create(node=node, kind=Capability.OLLAMA, port=sim.port)
        caps = list(Capability.objects.select_related("node"))
        gone.delete()  # while the check was asking it
        health.check(caps)
    assert Capability.objects.get().status == "online"


@pytest.mark.django_db
def test_overlapping_checks_count_every_failure() -> None:
    node = Node.objects.create(name="box", host=f"127.0.{pytest_net()}.52")
    Capability.objects.create(node=node, kind=Capability.OLLAMA, port=1, status=Capability.ONLINE)
    # Three checks that all read the row before any stored its outcome.
    copies = [list(Capability.objects.select_related("node")) for _ in range(3)]
    for caps in copies:
        health.check(caps)
    cap = Capability.objects.get()
    assert (cap.status, cap.failures) == ("offline", 3)
