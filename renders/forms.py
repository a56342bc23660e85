from __future__ import annotations

from typing import Any

from django import forms

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

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
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
