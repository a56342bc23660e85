from __future__ import annotations

from typing import Any

from django import forms

from nodes.models import Capability, Node, none_can_run
from renders import workflows
from renders.models import Template

RESOLUTIONS = [
    ("512x512", "512 × 512"),
    ("768x768", "768 × 768"),
    ("1024x1024", "1024 × 1024 (square)"),
    ("832x480", "832 × 480 (480p)"),
    ("1280x720", "1280 × 720 (720p)"),
    ("1920x1080", "1920 × 1080 (1080p)"),
]


class NodeChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.name) if obj.enabled else f"{obj.name} (disabled)"


class RenderForm(forms.Form):
    """The render settings dialog: what to render and how."""

    template = forms.ModelChoiceField(queryset=Template.objects.all(), empty_label=None)
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000)
    negative = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000, required=False)
    resolution = forms.ChoiceField(choices=RESOLUTIONS, initial="832x480")
    frames = forms.IntegerField(initial=81, help_text="Duration in frames (video templates).")
    fps = forms.IntegerField(initial=16)
    steps = forms.IntegerField(initial=20)
    cfg = forms.FloatField(initial=5.0)
    seed = forms.CharField(initial="random", max_length=24, help_text="A number, or random.")
    lora = forms.CharField(required=False, max_length=200, help_text="A style LoRA file name (optional).")
    priority = forms.IntegerField(initial=0, min_value=-100, max_value=100)
    count = forms.IntegerField(initial=1, min_value=1, max_value=100, help_text="How many jobs (new seeds).")
    node = NodeChoice(
        queryset=Node.objects.filter(capabilities__kind=Capability.COMFYUI).distinct().order_by("name"),
        required=False,
        empty_label="Any node (the best one free)",
        help_text="Render only on this node.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A template no online ComfyUI can run is flagged in the list, with what each node lacks;
        # it can still be queued (it waits until a node can).
        caps = list(Capability.objects.usable(Capability.COMFYUI).select_related("node"))
        templates = list(Template.objects.all())
        self.unrunnable = {t.pk: lacking for t in templates if (lacking := none_can_run(t.requirements(), caps))}
        field: Any = self.fields["template"]
        field.label_from_instance = lambda t: (
            f"{t.name} (no online node can run it)" if t.pk in self.unrunnable else t.name
        )
        if self.unrunnable:
            names = {t.pk: t.name for t in templates}
            field.help_text = (
                "No online ComfyUI can run "
                + "; ".join(f"{names[pk]} ({lacking})" for pk, lacking in self.unrunnable.items())
                + ". Queued anyway, a job waits until a node can."
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("node") and data.get("template"):
            self.check_node(data["node"], data["template"])
        if not self.errors:
            width, height = (int(x) for x in data["resolution"].split("x"))
            seed = data["seed"].strip().lower()
            settings: dict[str, Any] = {
                "width": width,
                "height": height,
                "frames": data["frames"],
                "fps": data["fps"],
                "steps": data["steps"],
                "cfg": data["cfg"],
                "seed": "random" if seed in ("", "random", "-1") else seed,
            }
            if settings["seed"] != "random":
                try:
                    settings["seed"] = int(settings["seed"])
                except ValueError:
                    self.add_error("seed", "A whole number, or random.")
                    return data
            if data.get("lora"):
                settings["lora"] = data["lora"]
            for field, message in workflows.validate_settings(settings).items():
                field = "resolution" if field in ("width", "height") else field
                self.add_error(field if field in self.fields else None, message)
            data["settings"] = settings
        return data

    def check_node(self, node: Node, template: Template) -> None:
        cap = node.capabilities.filter(kind=Capability.COMFYUI).first()
        if cap is None or not cap.inventory.get("classes"):
            return  # nothing known of it yet: ComfyUI's own validation will tell
        missing = cap.lacks(template.requirements())
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            self.add_error("node", f"{node.name} lacks {shown}: pick another node, or install them there.")


def mapping_text(mapping: dict[str, Any]) -> str:
    """A mapping as lines a person can correct: `positive: 6.text, 7.text`."""
    return "\n".join(
        f"{name}: {', '.join(f'{node}.{field}' for node, field in places)}"
        for name, places in mapping.items()
        if places
    )


def parse_mapping(text: str, workflow: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    mapping: dict[str, list[tuple[str, str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or name not in workflows.PARAMETERS:
            raise forms.ValidationError(
                f"Line {number}: start with one of {', '.join(workflows.PARAMETERS)} and a colon."
            )
        for place in filter(None, (p.strip() for p in rest.split(","))):
            node, dot, field = place.partition(".")
            if not dot or node not in workflow or field not in workflow[node].get("inputs", {}):
                raise forms.ValidationError(
                    f"Line {number}: {place!r} is not a node id and one of its inputs (like 6.text)."
                )
            mapping.setdefault(name, []).append((node, field))
    return mapping


class CapabilityChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.node.name)


class TemplateForm(forms.Form):
    """Import a workflow (upload or paste, API format), check it, and say where parameters go."""

    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=Template.KINDS, initial=Template.STILL)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    upload = forms.FileField(required=False, help_text="A workflow saved in ComfyUI's API format (.json).")
    text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        required=False,
        label="…or paste it",
    )
    check_on = CapabilityChoice(
        queryset=Capability.objects.filter(kind=Capability.COMFYUI).select_related("node"),
        required=False,
        label="Check node classes on",
        help_text="A ComfyUI node whose installed node classes the workflow must find.",
    )
    mapping = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        required=False,
        help_text="Where the parameters go, one per line (positive: 6.text). Left empty, it is detected.",
    )

    def __init__(self, *args: Any, template: Template | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template = template
        if template:
            self.fields["name"].initial = template.name
            self.fields["kind"].initial = template.kind
            self.fields["description"].initial = template.description
            self.fields["mapping"].initial = mapping_text(template.mapping)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        taken = Template.objects.filter(name=name)
        if self.template:
            taken = taken.exclude(pk=self.template.pk)
        if taken.exists():
            raise forms.ValidationError("A template with that name exists already.")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        upload, text = data.get("upload"), data.get("text")
        if upload:
            raw: str | bytes = upload.read(workflows.MAX_BYTES + 1)
        elif text:
            raw = text
        elif self.template:
            raw = ""
        else:
            raise forms.ValidationError("Upload a workflow file or paste one.")
        try:
            workflow = workflows.parse(raw) if raw else dict(self.template.workflow)  # type: ignore[union-attr]
        except workflows.WorkflowError as e:
            raise forms.ValidationError(str(e)) from None
        cap = data.get("check_on")
        if cap is not None:
            known = cap.inventory.get("classes", [])
            if not known:
                raise forms.ValidationError(f"{cap.node.name} has not reported its node classes yet; check it first.")
            missing = workflows.check_classes(workflow, known)
            if missing:
                raise forms.ValidationError(
                    f"{cap.node.name} lacks these node classes: {', '.join(missing)}. "
                    "Install the custom nodes that provide them, or pick another node."
                )
        try:
            mapping = parse_mapping(data.get("mapping", ""), workflow) if data.get("mapping") else None
        except forms.ValidationError as e:
            self.add_error("mapping", e)
            return data
        data["workflow"] = workflow
        data["mapping_found"] = mapping if mapping is not None else workflows.detect(workflow)
        classes, files = workflows.requirements(workflow)
        grouped: dict[str, list[str]] = {}
        for folder, name in files:
            grouped.setdefault(folder, []).append(name)
        data["needs"] = {"classes": list(classes), "files": grouped}
        return data

    def save(self) -> Template:
        data = self.cleaned_data
        template = self.template or Template()
        template.name = data["name"]
        template.kind = data["kind"]
        template.description = data.get("description", "")
        template.workflow = data["workflow"]
        template.mapping = {k: [list(p) for p in v] for k, v in data["mapping_found"].items()}
        template.needs = {**template.needs, **data["needs"]}
        template.save()
        return template
