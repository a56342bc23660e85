from __future__ import annotations

import re
from typing import Any

from django import forms
from django.db import transaction

from nodes.discovery import TargetError, expand
from nodes.models import COMFYUI_PORT, OLLAMA_PORT, Capability, Node

PORT_ERRORS = {
    "min_value": "Ensure this value is greater than or equal to %(limit_value)s: ports run from 1 to 65535.",
    "max_value": "Ensure this value is less than or equal to %(limit_value)s: ports run from 1 to 65535.",
}


def port_field(default: int, label: str, required: bool = False) -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        required=required,
        min_value=1,
        max_value=65535,
        initial=default,
        error_messages=PORT_ERRORS,
        help_text="" if required else "Leave empty if the machine does not run it.",
    )


def limit_field(label: str) -> forms.IntegerField:
    return forms.IntegerField(label=label, min_value=1, max_value=64, initial=1, help_text="Jobs at once.")


class NodeForm(forms.ModelForm):
    ollama_port = port_field(OLLAMA_PORT, "Ollama port")
    ollama_limit = limit_field("Ollama limit")
    comfyui_port = port_field(COMFYUI_PORT, "ComfyUI port")
    comfyui_limit = limit_field("ComfyUI limit")

    class Meta:
        model = Node
        fields = ["name", "host", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            for kind in (Capability.OLLAMA, Capability.COMFYUI):
                cap = self.instance.capability(kind)
                self.fields[f"{kind}_port"].initial = cap.port if cap else None
                self.fields[f"{kind}_limit"].initial = cap.limit if cap else 1

    def clean_host(self) -> str:
        typed = self.cleaned_data["host"].strip()
        try:
            hosts = expand(typed)
        except TargetError as e:
            raise forms.ValidationError(str(e)) from None
        if len(hosts) != 1 or re.search(r"[\s,/]", typed):
            raise forms.ValidationError("Name one machine: a host name or an address, not a range.")
        # One machine typed another way (2130706454, 127.0.0.026 for 127.0.0.22) is the same host.
        host = hosts[0]
        other = Node.objects.filter(host=host).exclude(pk=self.instance.pk).first()
        if other is not None:
            same = host if host == typed.strip("[]").lower() else f"{typed} is {host}, which"
            raise forms.ValidationError(f"{same} is already in the pool as {other.name}: edit that node instead.")
        return host

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        ports = ("ollama_port", "comfyui_port")
        # A port that was refused already says why; "give a port" would hide that.
        if not any(data.get(p) for p in ports) and not any(p in self.errors for p in ports):
            raise forms.ValidationError("Give the Ollama port, the ComfyUI port or both.")
        return data

    def save(self, commit: bool = True) -> Node:
        with transaction.atomic():
            node = super().save()
            for kind in (Capability.OLLAMA, Capability.COMFYUI):
                port, limit = (
                    self.cleaned_data.get(f"{kind}_port"),
                    self.cleaned_data.get(f"{kind}_limit") or 1,
                )
                cap = node.capabilities.filter(kind=kind).first()
                if port and cap:
                    if (cap.port, cap.limit) != (port, limit):
                        cap.port, cap.limit = port, limit
                        cap.save(update_fields=["port", "limit"])
                elif port:
                    Capability.objects.create(node=node, kind=kind, port=port, limit=limit)
                elif cap:
                    cap.delete()
            node.changed("node.saved")
        return node


class DiscoverForm(forms.Form):
    targets = forms.CharField(
        max_length=2000,
        initial="127.0.0.1",
        help_text="Addresses, host names or ranges such as 192.168.1.0/24 (at most a /16), separated by spaces.",
    )
    ollama_port = port_field(OLLAMA_PORT, "Ollama port", required=True)
    comfyui_port = port_field(COMFYUI_PORT, "ComfyUI port", required=True)

    def clean_targets(self) -> str:
        targets = self.cleaned_data["targets"]
        try:
            self.hosts = expand(targets)
        except TargetError as e:
            raise forms.ValidationError(str(e)) from None
        return targets
