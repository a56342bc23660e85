from __future__ import annotations

import re
from typing import Any

from django import forms
from django.urls import reverse

from nodes.models import Capability, Node, none_can_run
from renders import batches, media, workflows
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


# The form's settings fields and the workflow parameters each one fills: a field whose parameters
# the chosen template has no place for is left out of the form.
SETTING_FIELDS = {
    "negative": ("negative",),
    "resolution": ("width", "height"),
    "frames": ("frames",),
    "fps": ("fps",),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "seed": ("seed",),
    "lora": ("loras",),
}
IMAGE_FIELDS = ("image", "image_from", "image_kept")
# What the form keeps when another template is chosen in it; the settings follow the template.
KEPT_ON_SWITCH = ("prompt", "negative", "priority", "count", "node", "image_kept", "image_from")
RECENT_IMAGES = 40  # finished renders offered as an input image


class RenderForm(forms.Form):
    """The render settings dialog: what to render and how. It follows its template: the fields are
    those the template takes, their first values the template's own."""

    template = forms.ModelChoiceField(queryset=Template.objects.all(), empty_label=None)
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 5}), max_length=5000)
    negative = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000, required=False)
    image = forms.FileField(
        label="Input image", required=False, help_text="PNG, JPEG or WEBP, at most 50 MB; or pick a finished render."
    )
    image_from = forms.ChoiceField(label="…or a finished render", required=False)
    image_kept = forms.CharField(required=False, widget=forms.HiddenInput)
    resolution = forms.ChoiceField(choices=RESOLUTIONS, initial="832x480")
    frames = forms.IntegerField(initial=81, help_text="Duration in frames.")
    fps = forms.IntegerField(label="FPS", initial=16)
    steps = forms.IntegerField(initial=20)
    cfg = forms.FloatField(label="CFG", initial=5.0)
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

    def __init__(self, *args: Any, template: Template | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A template no online ComfyUI can run is flagged in the list, with what each node lacks;
        # it can still be queued (it waits until a node can).
        caps = list(Capability.objects.usable(Capability.COMFYUI).select_related("node"))
        templates = list(Template.objects.all())
        self.unrunnable = {t.pk: lacking for t in templates if (lacking := none_can_run(t.requirements(), caps))}
        for name in ("template", "reference_template"):
            if name in self.fields:
                self.flag(self.fields[name], templates)
        if "template" in self.fields and self.fields["template"].required:
            self.follow(self.chosen(templates, template))

    def flag(self, field: Any, templates: list[Template]) -> None:
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

    def chosen(self, templates: list[Template], template: Template | None) -> Template | None:
        """The template the form is for: the one posted, else the one asked for, else the first
        the pool can run that takes a prompt (then any that takes a prompt, then the first)."""
        by_pk = {str(t.pk): t for t in templates}
        if self.is_bound:
            return by_pk.get(str(self.data.get(self.add_prefix("template"), "")))
        if template is not None:
            return template
        prompted = [t for t in templates if t.takes("positive")]
        runnable = [t for t in prompted if t.pk not in self.unrunnable]
        return next(iter(runnable or prompted or templates), None)

    def follow(self, template: Template | None) -> None:
        """Fit the fields to the template: leave out what it takes no value for, offer an input
        image where it takes one, and start each setting at the template's own value."""
        if template is None:
            return
        self.fields["template"].initial = template
        self.for_template = template
        # Choosing another template fetches the form fitted to it, keeping what was typed.
        self.fields["template"].widget.attrs.update(
            {
                "hx-get": reverse("renders:index"),
                "hx-trigger": "change",
                "hx-target": "#render-form",
                "hx-swap": "outerHTML",
                "hx-include": ", ".join(f"#render-form [name={name}]" for name in KEPT_ON_SWITCH),
            }
        )
        for field, parameters in SETTING_FIELDS.items():
            if not any(template.takes(p) for p in parameters):
                del self.fields[field]
        if not template.takes("positive"):
            self.fields["prompt"].label = "Name"
            self.fields["prompt"].help_text = "This template takes no prompt: the text only names its jobs."
            self.fields["prompt"].widget.attrs["rows"] = 1
        if template.takes("image"):
            image_from: Any = self.fields["image_from"]
            image_from.choices = [("", "—"), *finished_images()]
        else:
            for field in IMAGE_FIELDS:
                del self.fields[field]
        values = template.defaults()
        if "width" in values and "height" in values:
            size = f"{int(values['width'])}x{int(values['height'])}"
            self.add_resolution(size)
            values["resolution"] = size
        for name in ("frames", "fps", "steps", "cfg"):
            if name in values and name in self.fields:
                self.fields[name].initial = int(values[name]) if name != "cfg" else values[name]
        if "resolution" in self.fields and "resolution" in values:
            self.fields["resolution"].initial = values["resolution"]
        if self.is_bound and "resolution" in self.fields:
            self.add_resolution(str(self.data.get(self.add_prefix("resolution"), "")))

    def add_resolution(self, size: str) -> None:
        """Offer a size the list lacks (the template's own, or one reused from a job)."""
        field: Any = self.fields.get("resolution")
        if field is None or not re.fullmatch(r"\d{2,5}x\d{2,5}", size):
            return
        if size not in {value for value, _ in field.choices}:
            width, height = size.split("x")
            field.choices = [*field.choices, (size, f"{width} × {height}")]

    def clean_image(self) -> Any:
        upload = self.cleaned_data.get("image")
        if upload:
            try:
                kept = media.keep_input(upload.read(media.MAX_INPUT + 1))
            except media.MediaError as e:
                raise forms.ValidationError(str(e)) from None
            # Kept at once, and carried in the form: should another field be wrong, the page shown
            # again still has the image, and the user need not send it again.
            posted: Any = self.data
            posted = posted.copy()
            posted[self.add_prefix("image_kept")] = kept
            self.data = posted
            self.cleaned_data["image_kept"] = kept
        return upload

    def clean_image_kept(self) -> str:
        kept = self.cleaned_data.get("image_kept") or ""
        if kept and not media.kept_input(kept):
            return ""  # not one we kept (or gone since): as if none was sent
        return kept

    def input_image(self, data: dict[str, Any]) -> str:
        """The input image chosen, as a path in the media folder, or ""."""
        return str(data.get("image_kept") or data.get("image_from") or "")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("node") and data.get("template"):
            self.check_node(data["node"], data["template"])
        if "image_kept" in self.fields and not self.input_image(data) and "image" not in self.errors:
            self.add_error("image", "This template starts from an image: upload one or pick a finished render.")
        if not self.errors:
            settings: dict[str, Any] = {}
            if "resolution" in data:
                settings["width"], settings["height"] = (int(x) for x in data["resolution"].split("x"))
            for name in ("frames", "fps", "steps", "cfg"):
                if name in data:
                    settings[name] = data[name]
            if "seed" in data:
                seed = data["seed"].strip().lower()
                settings["seed"] = "random" if seed in ("", "random", "-1") else seed
                if settings["seed"] != "random":
                    try:
                        settings["seed"] = int(settings["seed"])
                    except ValueError:
                        self.add_error("seed", "A whole number, or random.")
                        return data
            if data.get("lora"):
                settings["lora"] = data["lora"]
            if self.input_image(data):
                settings["input_image"] = self.input_image(data)
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
        upload, text = data.get("upload"), data.get("text")
        if upload and self.errors:
            self.keep_upload(upload)
        if self.errors:
            return data
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

    def keep_upload(self, upload: Any) -> None:
        """Another field is wrong: a workflow file that reads well is put in the paste box of the
        form shown again, so the user corrects that field and need not choose the file again."""
        raw = upload.read(workflows.MAX_BYTES + 1)
        upload.seek(0)
        try:
            workflows.parse(raw)
        except workflows.WorkflowError:
            return  # its own error shows when the rest is right
        posted: Any = self.data
        posted = posted.copy()
        posted[self.add_prefix("text")] = raw.decode("utf-8", errors="replace")
        self.data = posted
        self["text"].help_text = "The file you sent, kept: correct what is marked and save again."

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


def finished_images() -> list[tuple[str, str]]:
    """The latest finished renders with a still image, as (path in the media folder, label)."""
    from renders.models import RenderJob

    jobs = RenderJob.objects.filter(status=RenderJob.COMPLETED, kind=RenderJob.IMAGE).order_by("-finished")
    choices = []
    for job in jobs.only("code", "prompt", "outputs")[:RECENT_IMAGES]:
        image = next((o for o in job.outputs if o.get("kind") == "image"), None)
        if image:
            choices.append((str(image["path"]), f"{job.prompt[:60]} ({str(job.code)[:8]})"))
    return choices


class BatchForm(RenderForm):
    """A batch: the render settings of its template, and what varies from item to item (seeds, a
    list of prompts, or a grid of up to three axes). Its items are planned when it is checked
    (renders.batches), so a preview shows what would be queued, and nothing is made unless all
    of it is right."""

    name = forms.CharField(max_length=200, required=False, help_text="Left empty, it is named after what it varies.")
    kind = forms.ChoiceField(
        choices=[("seeds", "Seed variations"), ("prompts", "Prompt list"), ("grid", "Parameter grid")]
    )
    count = forms.CharField(  # type: ignore[assignment]  # checked by renders.batches, with its words
        label="How many", initial="4", required=False, max_length=12, help_text="Seed variations: 1 to 1,000 images."
    )
    sequential = forms.BooleanField(required=False, label="Seeds in a row", help_text="Else random seeds.")
    start = forms.CharField(required=False, max_length=24, label="Start seed", initial="0")
    prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        required=False,
        max_length=batches.MAX_PROMPT_FILE,
        label="Prompts",
        help_text="One per line, up to 10,000; blank and repeated lines are left out and reported.",
    )
    prompts_file = forms.FileField(
        required=False, label="…or a text file", help_text="UTF-8, one prompt per line, at most 5 MB."
    )
    axis_1 = forms.CharField(
        required=False,
        max_length=2000,
        label="Rows",
        help_text="As cfg=4,6,8; size=512x512,768x768; prompt=a cat|a dog.",
    )
    axis_2 = forms.CharField(required=False, max_length=2000, label="Columns", help_text="As steps=20,30 (optional).")
    axis_3 = forms.CharField(required=False, max_length=2000, label="Sheets", help_text="A third axis (optional).")

    FIELD_ORDER = ("name", "kind", "template", "prompt", "count", "sequential", "start", "prompts", "prompts_file")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["prompt"].required = False  # a prompt list brings its own
        if self.fields["prompt"].label == "Name":  # a template without a prompt: the text names the items
            self.fields["prompt"].label = "Items' name"
            self.fields["prompt"].help_text = "This template takes no prompt: the text only names the batch's items."
        else:
            self.fields["prompt"].help_text = "Every item's prompt (a prompt list gives its own; a grid may vary it)."
        self.fields.pop("seed", None)  # each item gets its own
        self.fields["template"].widget.attrs["hx-get"] = reverse("renders:batches")
        self.fields["template"].widget.attrs["hx-target"] = "#batch-form"
        self.fields["template"].widget.attrs["hx-include"] = "#batch-form [name]"
        self.order_fields(self.FIELD_ORDER)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        template: Template = data["template"]
        settings = data.get("settings", {})
        kind = data.get("kind")
        try:
            if kind == "seeds":
                data["items"] = batches.seed_variations(
                    data.get("prompt", ""),
                    settings,
                    template,
                    count=data.get("count", ""),
                    sequential=data.get("sequential", False),
                    start=data.get("start"),
                )
                data["summary"] = f"{len(data['items']):,} images of one prompt, each with its own seed."
            elif kind == "prompts":
                upload = data.get("prompts_file")
                text: str | bytes = upload.read(batches.MAX_PROMPT_FILE + 1) if upload else data.get("prompts", "")
                listed = batches.prompt_list(text)
                data["items"] = batches.prompt_items(listed, settings, template)
                data["summary"] = listed.summary()
            else:
                axes = [batches.axis(t) for t in (data.get("axis_1"), data.get("axis_2"), data.get("axis_3")) if t]
                by_name = {t.name: t for t in Template.objects.all()}
                data["items"] = batches.grid(data.get("prompt", ""), settings, template, axes, by_name)
                data["axes"] = [{"name": a.name, "values": list(a.shown)} for a in axes]
                data["summary"] = (
                    " × ".join(f"{len(a.values)} {a.name}" for a in axes) + f" = {len(data['items']):,} items."
                )
        except batches.BatchError as e:
            field = {"seeds": "count", "prompts": "prompts", "grid": "axis_1"}.get(str(kind))
            message = str(e)
            if message.startswith(("The start seed",)):
                field = "start"
            elif message.startswith(("The prompt is", "The prompt has")):
                field = "prompt"
            self.add_error(field if field in self.fields else None, message)
        return data
