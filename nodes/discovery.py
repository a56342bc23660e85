"""Discovery: probe the addresses a user names for Ollama and ComfyUI, and merge what answers
into one Node per host. Only the addresses asked for are ever probed."""

from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from nodes import health
from nodes.clients import ServiceError
from nodes.clients.comfyui import ComfyUI
from nodes.clients.http import port_open
from nodes.clients.ollama import Ollama
from nodes.models import COMFYUI_PORT, OLLAMA_PORT, Capability, Discovery, Node
from spoonfeeder.models import Event

# A /16 is 65,536 addresses: about as much as a home lab could mean; more is surely a typo.
MAX_ADDRESSES = 65536
CONNECT_TIMEOUT = 0.5
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)

# What a resolver takes for an IPv4 address though it is no dotted quad: numbers, each decimal,
# octal (a leading 0) or hex (0x), like 2130706433, 127.1 or 0x7f.0.0.01; all one machine.
NUMERIC = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+))*$")


class TargetError(ValueError):
    pass


def expand(targets: str) -> list[str]:
    """Hosts named by a list of addresses, host names or CIDR ranges (commas or spaces)."""
    hosts: dict[str, None] = {}
    parts = [p for p in re.split(r"[\s,]+", targets.strip()) if p]
    if not parts:
        raise TargetError("Name at least one address, host name or range, e.g. 192.168.1.0/24.")
    for part in parts:
        if "/" in part:
            try:
                net = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise TargetError(f"{part!r} is not an address range; write it like 192.168.1.0/24.") from None
            if net.num_addresses > MAX_ADDRESSES:
                raise TargetError(f"{part} has {net.num_addresses:,} addresses; name at most a /16 at a time.")
            found = list(net.hosts()) if net.num_addresses > 2 else list(net)
            hosts.update((str(a), None) for a in found)
        else:
            host = address(part)
            if host is None and not HOSTNAME.match(part):
                raise TargetError(f"{part!r} is neither an address nor a host name.")
            hosts[host or part.lower()] = None
        if len(hosts) > MAX_ADDRESSES:
            raise TargetError(f"That is more than {MAX_ADDRESSES:,} addresses; name fewer at a time.")
    return list(hosts)


def address(part: str) -> str | None:
    """The address `part` names, written one way (a dotted quad, compressed IPv6) so that one
    machine is one host however it was typed; None for a host name."""
    try:
        ip = ipaddress.ip_address(part.strip("[]"))
    except ValueError:
        if not NUMERIC.match(part):
            return None
        # A name of only numbers would be read as an address by every resolver, so it is one.
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(part))
        except OSError:
            raise TargetError(
                f"{part!r} is not an address: write four numbers from 0 to 255, like 192.168.1.20."
            ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.5 is 10.0.0.5
    return str(ip)


@dataclass
class Found:
    host: str
    ollama: str = ""  # version, if Ollama answered
    comfyui: str = ""
    error: str = ""


def probe_host(host: str, ollama_port: int, comfyui_port: int) -> Found:
    found = Found(host)
    url_host = f"[{host}]" if ":" in host else host
    if ollama_port and port_open(host, ollama_port, CONNECT_TIMEOUT):
        try:
            with Ollama(f"http://{url_host}:{ollama_port}") as client:
                found.ollama = client.version(timeout=3) or "?"
        except ServiceError as e:
            found.error = str(e)
    if comfyui_port and port_open(host, comfyui_port, CONNECT_TIMEOUT):
        try:
            stats = ComfyUI(f"http://{url_host}:{comfyui_port}").system_stats(timeout=3)
            found.comfyui = str(stats.get("system", {}).get("comfyui_version", "")) or "?"
        except ServiceError as e:
            found.error = str(e)
    return found


def merge(found: Found, ollama_port: int, comfyui_port: int) -> tuple[Node, bool]:
    """One Node per host, with a capability for each service that answered."""
    with transaction.atomic():
        node = Node.objects.filter(host=found.host).first()
        new = node is None
        if node is None:
            name = found.host
            if Node.objects.filter(name=name).exists():
                name = f"{found.host} ({timezone.now():%Y%m%d%H%M%S})"
            node = Node.objects.create(name=name, host=found.host)
        for kind, version, port in (
            (Capability.OLLAMA, found.ollama, ollama_port),
            (Capability.COMFYUI, found.comfyui, comfyui_port),
        ):
            if version:
                cap, _ = Capability.objects.get_or_create(node=node, kind=kind, defaults={"port": port})
                if cap.port != port:
                    cap.port = port
                    cap.save(update_fields=["port"])
        node.changed("node.discovered")
    return node, new


def discover(
    targets: str,
    *,
    ollama_port: int = OLLAMA_PORT,
    comfyui_port: int = COMFYUI_PORT,
    run: Discovery | None = None,
) -> Discovery:
    """Probe every host the targets name, merge what answers, check the found nodes in full."""
    hosts = expand(targets)
    if run is None:
        run = Discovery.objects.create(targets=targets, ollama_port=ollama_port, comfyui_port=comfyui_port)
    ollama_port, comfyui_port = run.ollama_port, run.comfyui_port
    with ThreadPoolExecutor(max_workers=min(128, len(hosts))) as pool:
        results = list(pool.map(lambda h: probe_host(h, ollama_port, comfyui_port), hosts))
    report: list[dict[str, Any]] = []
    nodes = []
    for found in results:
        if not (found.ollama or found.comfyui):
            if found.error:
                report.append({"host": found.host, "error": found.error})
            continue
        node, new = merge(found, ollama_port, comfyui_port)
        nodes.append(node)
        report.append(
            {
                "host": found.host,
                "node": node.name,
                "new": new,
                "ollama": found.ollama,
                "comfyui": found.comfyui,
                "error": found.error,
            }
        )
    caps = list(Capability.objects.filter(node__in=nodes).select_related("node"))
    health.check(caps, full=True)
    with transaction.atomic():
        Discovery.objects.filter(pk=run.pk).update(finished=timezone.now(), probed=len(hosts), found=report)
        Event.emit("nodes", "discovery.finished", str(run.code))
    run.refresh_from_db()
    return run
