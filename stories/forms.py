from __future__ import annotations

from typing import Any

from django import forms
from django.db import transaction

from nodes.models import Capability
from renders.forms import RenderForm
from renders.models import Template
from stories import graph
from stories.models import Character, Movie, MusicCue, Story

MAX_IDEA = 20_000
ASK_STEPS = [name for name, step in graph.STEPS.items() if step.kind == graph.ASK]
# The render templates a new story gets when none is chosen, best first.
DEFAULT_TEMPLATES = {
    Story.SHOTS: ("wan22-t2v", "hunyuan15-t2v"),
    Story.SCENES: ("holocine-t2v",),
}
SIMULATED_TEMPLATE = "test-video-prompt"  # a lab of simulated nodes has no model files: it renders with this


def known_models() -> list[str]:
    """The model names the Ollama nodes have reported, online or not."""
    inventories = Capability.objects.filter(kind=Capability.OLLAMA).values_list("inventory", flat=True)
    return sorted({m["name"] for inv in inventories for m in (inv or {}).get("models", []) if m.get("name")})


class StoryForm(RenderForm):
    """A new story: the idea, how the models write it, and how its shots render. The render
    settings are the render queue's own fields, checked by its own rules."""

    # What the render queue's dialog asks that a story decides for itself, shot by shot.
    prompt = negative = priority = count = node = image = image_from = image_kept = None  # type: ignore[assignment]
    # Each shot renders for as long as it is planned: its frames follow from the story's length.
    frames = None  # type: ignore[assignment]

    idea = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "A lighthouse keeper finds a message in a bottle…"}),
        max_length=MAX_IDEA,
        error_messages={
            "required": "Write the idea for the story: a sentence is enough.",
            "max_length": "The idea may be at most %(limit_value)d characters long; this one has %(show_value)d.",
        },
    )
    genre = forms.CharField(max_length=60, required=False)
    style = forms.CharField(max_length=200, required=False, help_text="Look and feel: film noir, watercolour…")
    target_seconds = forms.IntegerField(
        label="Length (seconds)",
        initial=60,
        min_value=10,
        max_value=1800,
        help_text="From 10 s to 30 min. The shots are planned to add up to it, and each renders for its "
        "planned length, as far as the template goes.",
    )
    mode = forms.ChoiceField(choices=Story.MODES, initial=Story.SHOTS)
    model = forms.CharField(label="Language model", max_length=200)
    step_models = forms.CharField(
        label="Other models for some steps",
        required=False,
        max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "shots=qwen2.5:7b prompts=llama3.2:3b"}),
        help_text="Step=model pairs; the other steps use the language model above. Steps: "
        + ", ".join(ASK_STEPS)
        + ".",
    )
    auto_render = forms.BooleanField(
        label="Render at once",
        initial=True,
        required=False,
        help_text="Queue the renders when the prompts are written.",
    )
    template = forms.ModelChoiceField(  # type: ignore[assignment]
        queryset=Template.objects.all(),
        required=False,
        label="Render template",
        empty_label="Default: text to video (HoloCine for scenes)",
    )
    references = forms.BooleanField(
        label="Character references", required=False, help_text="Render a still of each character first."
    )
    reference_template = forms.ModelChoiceField(
        queryset=Template.objects.all(),
        required=False,
        label="Reference template",
        empty_label="Default: a still-image template",
    )

    field_order = [
        "idea",
        "genre",
        "style",
        "target_seconds",
        "mode",
        "model",
        "step_models",
        "auto_render",
        "references",
        "reference_template",
        "template",
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models = known_models()
        if self.models:
            listed = ", ".join(self.models)
            self.fields["model"] = forms.ChoiceField(
                label="Language model",
                choices=[(m, m) for m in self.models],
                error_messages={
                    "invalid_choice": f"No Ollama node has the model %(value)s; the known models are {listed}."
                },
            )
        else:
            self.fields[
                "model"
            ].help_text = "No Ollama node has reported models yet; the story waits until one with this model is online."

        field: Any = self.fields["template"]
        default = default_template(Story.SHOTS)
        if default is not None:
            field.empty_label = f"Default: {default.name} (for scenes, a HoloCine one)"
            if not default.takes("positive"):
                field.help_text = (
                    f"Every ComfyUI here is simulated, with no model files: the default, {default.name}, "
                    "takes no prompt, so each shot renders a test pattern. " + (field.help_text or "")
                ).strip()

    def clean_step_models(self) -> dict[str, str]:
        """`shots=qwen2.5:7b prompts=llama3.2:3b` as {"shots": "qwen2.5:7b", …}, each step a step
        that asks a model and each model one the nodes have (when they have reported any)."""
        chosen: dict[str, str] = {}
        for pair in self.cleaned_data["step_models"].replace(",", " ").split():
            step, sep, model = pair.partition("=")
            if not sep or not step or not model:
                raise forms.ValidationError(f"Write each as step=model, as in shots=qwen2.5:7b (not {pair}).")
            if step not in ASK_STEPS:
                raise forms.ValidationError(
                    f"{step} is not a step that asks a model; those are {', '.join(ASK_STEPS)}."
                )
            if self.models and model not in self.models:
                raise forms.ValidationError(
                    f"No Ollama node has the model {model}; the known models are {', '.join(self.models)}."
                )
            chosen[step] = model
        return chosen

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        if data.get("template") is None:
            data["template"] = default_template(data["mode"])
            if data["template"] is None:
                self.add_error("template", "No text-to-video template is loaded: import one, or load the shipped ones.")
        if data.get("references") and data.get("reference_template") is None:
            data["reference_template"] = Template.objects.filter(kind=Template.STILL).first()
            if data["reference_template"] is None:
                self.add_error("reference_template", "No still-image template is loaded: choose one for references.")
        return data

    def save(self) -> Story:
        data = self.cleaned_data
        return Story.objects.create(
            idea=data["idea"],
            genre=data["genre"],
            style=data["style"],
            target_seconds=data["target_seconds"],
            mode=data["mode"],
            model=data["model"],
            models_by_step=data["step_models"],
            auto_render=data["auto_render"],
            template=data["template"],
            references=data["references"],
            reference_template=data["reference_template"] if data["references"] else None,
            render_settings=data["settings"],
        )

    def start(self) -> Story:
        """The story saved and its first steps queued (the Stories page, `manage.py story create`,
        a scheduled run: in its transaction, so that the story and its link commit together)."""
        with transaction.atomic():
            story = self.save()
            story.changed("story.created")
        graph.advance(story.pk)
        return story


def default_template(mode: str) -> Template | None:
    """The template a story renders with when none is chosen: the first of the preferred ones
    (then any of the kind) that an online ComfyUI node has everything for. A lab whose ComfyUIs
    are all simulated (the demo) has no model files: it renders with the model-free test video.
    With no node able to run any, the first preferred one (its renders say what they wait for)."""
    preferred = list(Template.objects.filter(name__in=DEFAULT_TEMPLATES[mode]))
    preferred.sort(key=lambda t: DEFAULT_TEMPLATES[mode].index(t.name))
    if mode == Story.SCENES:
        others = Template.objects.filter(name__icontains="holocine")
    else:
        others = Template.objects.filter(kind=Template.T2V).exclude(name__icontains="holocine")
    wanted = preferred + [t for t in others.order_by("name") if t not in preferred]
    nodes = list(Capability.objects.usable(Capability.COMFYUI).select_related("node"))
    known = [c for c in nodes if c.inventory.get("classes")]  # what a node has, once it said so
    for template in wanted:
        if any(not c.lacks(template.requirements()) for c in known):
            return template
    if nodes and all(c.node.simulated for c in nodes):
        test = Template.objects.filter(name=SIMULATED_TEMPLATE).first()
        if test is not None:
            return test
    return wanted[0] if wanted else None


class CharacterForm(forms.ModelForm):
    """A character corrected by hand (the limits are those the model's answers are held to)."""

    role = forms.CharField(max_length=200, required=False)
    look = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=2000, required=False)
    personality = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000, required=False)

    class Meta:
        model = Character
        fields = ["role", "look", "personality"]


class PromptForm(forms.Form):
    """A shot's or scene's prompt written by hand (held to the limits the model's answers are)."""

    positive = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=4000,
        error_messages={"required": "Write the prompt: what the shot shows."},
    )
    negative = forms.CharField(widget=forms.Textarea(attrs={"rows": 1}), max_length=2000, required=False)


class NarrationForm(forms.Form):
    """A segment's narration written by hand (empty: the segment has none)."""

    narration = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000, required=False)


class MusicCueForm(forms.ModelForm):
    """A music cue corrected by hand (held to the limits the model's answers are)."""

    mood = forms.CharField(max_length=100, error_messages={"required": "Say the mood: tense, wistful…"})
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=2000,
        error_messages={"required": "Describe the music."},
    )

    class Meta:
        model = MusicCue
        fields = ["mood", "description"]


class MovieForm(forms.Form):
    """ "Export the movie": how the shots render (the path, upscale, interpolation, the template
    of each step), how they join (cuts or crossfades, the narration's fit, subtitles burned in or
    not, a failed shot waited for or left out) and a music track of the user's."""

    path = forms.ChoiceField(choices=Movie.PATHS, initial=Movie.T2V, widget=forms.RadioSelect, label="Each shot")
    upscale = forms.BooleanField(required=False, label="Upscale each shot")
    interpolate = forms.BooleanField(required=False, label="Interpolate frames (twice the fps)")
    keyframe = forms.ModelChoiceField(Template.objects.none(), required=False, label="Keyframe template")
    video = forms.ModelChoiceField(Template.objects.none(), label="Video template")
    upscaler = forms.ModelChoiceField(Template.objects.none(), required=False, label="Upscale template")
    interpolator = forms.ModelChoiceField(Template.objects.none(), required=False, label="Interpolation template")
    speaker = forms.ModelChoiceField(
        Template.objects.none(),
        required=False,
        label="Narration voice",
        empty_label="The local voice (eSpeak NG, or Kokoro when its files are here)",
        help_text="Or a text-to-speech template on the pool.",
    )
    composer = forms.ModelChoiceField(
        Template.objects.none(),
        required=False,
        label="Music from the cues",
        empty_label="None: the track below, or no music",
        help_text="A music template on the pool plays each segment's music cue.",
    )
    transition = forms.ChoiceField(choices=Movie.TRANSITIONS, initial=Movie.CUT, label="Between shots")
    narration_fit = forms.ChoiceField(choices=Movie.FITS, initial=Movie.HOLD, label="Narration longer than its shots")
    burn_subtitles = forms.BooleanField(required=False, label="Burn the subtitles into the picture")
    leave_out_failed = forms.BooleanField(
        required=False,
        label="Leave out a shot that fails",
        help_text="With a title card saying so; otherwise the film waits until you retry it.",
    )
    music = forms.FileField(
        required=False,
        label="Music track",
        help_text="MP3, WAV, OGG, FLAC or M4A, at most 100 MB: laid under the narration, lowered while it speaks.",
    )

    FIELDS_OF = {
        "keyframe": "keyframe",
        "video": "video",
        "upscaler": "upscale",
        "interpolator": "interp",
        "speaker": "speech",
        "composer": "music",
    }

    def __init__(self, story: Story, *args: Any, **kwargs: Any) -> None:
        from stories import movie

        super().__init__(*args, **kwargs)
        self.story = story
        templates = Template.objects.order_by("name")
        for name, roles in (
            ("keyframe", (Template.KEYFRAME,)),
            ("video", (Template.T2V, Template.I2V)),
            ("upscaler", (Template.UPSCALE,)),
            ("interpolator", (Template.INTERP,)),
            ("speaker", (Template.SPEECH,)),
            ("composer", (Template.MUSIC,)),
        ):
            field = self.fields[name]
            assert isinstance(field, forms.ModelChoiceField)
            field.queryset = templates.filter(role__in=roles)
        # A new export starts from the last one's choices (so that it reuses what it rendered).
        last = story.movies.first()
        path = self.data.get("path") if self.is_bound else (last.path if last else None)
        chosen = movie.default_templates(story, str(path or Movie.T2V))
        if last is not None:
            kept = ("path", "upscale", "interpolate", "transition", "narration_fit", "burn_subtitles")
            for choice in (*kept, "leave_out_failed"):
                self.fields[choice].initial = getattr(last, choice)
            named = {t.name: t for t in Template.objects.filter(name__in=list(last.templates.values()))}
            chosen |= {stage: named[name] for stage, name in last.templates.items() if name in named}
        for name, stage in self.FIELDS_OF.items():
            if stage in chosen:
                self.fields[name].initial = chosen[stage].pk

    def clean_music(self) -> str:
        upload = self.cleaned_data.get("music")
        if not upload:
            return ""
        from renders import media

        try:
            return media.keep_music(upload.read(media.MAX_MUSIC + 1), upload.name or "")
        except media.MediaError as e:
            raise forms.ValidationError(str(e)) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        video = data.get("video")
        if video is not None and data.get("path"):
            wants_image = data["path"] == Movie.I2V
            if wants_image and not video.takes("image"):
                self.add_error("video", f"{video.name} does not start from an image: pick an image-to-video template.")
            if not wants_image and video.takes("image"):
                self.add_error("video", f"{video.name} starts from an image: choose “Keyframe, then image to video”.")
        needed = [
            ("keyframe", data.get("path") == Movie.I2V),
            ("upscaler", data.get("upscale")),
            ("interpolator", data.get("interpolate")),
        ]
        for name, wanted in needed:
            if wanted and not data.get(name):
                self.add_error(name, "Choose a template for this step.")
        return data

    def options(self) -> Any:
        from stories import movie

        data = self.cleaned_data
        templates = {stage: data[name] for name, stage in self.FIELDS_OF.items() if data.get(name)}
        return movie.Options(
            path=data["path"],
            upscale=data["upscale"],
            interpolate=data["interpolate"],
            transition=data["transition"],
            narration_fit=data["narration_fit"],
            burn_subtitles=data["burn_subtitles"],
            leave_out_failed=data["leave_out_failed"],
            templates=templates,
            music=data.get("music") or "",
        )
