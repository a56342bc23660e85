"""`manage.py story create "<idea>"`: start a story from the command line, and follow it, resume
it, retry or re-run a step of it, export its movie, list the stories and show one.

The steps run on the worker cluster (`make run` starts one, or `manage.py qcluster`); this
command only writes rows and reads them. `--wait` polls the story's step runs and prints a line
whenever a step's state changes, until the story completes, fails or stops.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from renders.models import Template
from stories import graph, movie, runner
from stories.context import as_number
from stories.forms import StoryForm, known_models
from stories.models import Movie, StepRun, Story
from stories.rendering import rendered

# The form's field names that the options spell otherwise, for its error messages.
OPTIONS = {f: f"--{f}" for f in ("model", "template", "genre", "style", "mode")} | {
    "target_seconds": "--seconds",
    "step_models": "--step-model",
}
POLL = 0.2  # seconds between looks at the rows while following a story
# A step ready this long that no worker has taken (nor said why it waits) means none is running:
# the cluster claims a ready step or notes why it waits within a fraction of a second.
IDLE = 10.0
NO_RUNNER = "Nothing is running the steps: start Spoon Feeder (make run) or the worker cluster (`manage.py qcluster`)."
# Control characters a model or a user wrote (ESC sequences can clear or rewrite the terminal, CR
# overwrite a line, BEL ring) and the bidirectional overrides that reorder what is shown, each as
# a visible escape; newline and tab stay as they are.
UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    if c not in (0x09, 0x0A)
}


class Command(BaseCommand):
    help = "Create, follow, resume, retry and re-run stories, and list and show them."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def following(p: CommandParser) -> None:
            p.add_argument("--wait", action="store_true", help="Print each step's progress until the story ends.")
            p.add_argument("--timeout", type=float, default=3600, help="Give up waiting after this many seconds.")

        create = sub.add_parser("create", help="Start a story from an idea.")
        create.add_argument("idea")
        create.add_argument("--mode", choices=[m for m, _ in Story.MODES], default=Story.SHOTS)
        create.add_argument("--model", default="", help="The language model (default: the first the pool has).")
        create.add_argument(
            "--step-model",
            action="append",
            default=[],
            metavar="STEP=MODEL",
            help="Another model for one step (shots=qwen2.5:7b); again for more steps.",
        )
        create.add_argument("--genre", default="")
        create.add_argument("--style", default="")
        create.add_argument("--seconds", type=int, default=60, help="How long the film should be.")
        create.add_argument("--template", default="", help="The render template's name.")
        create.add_argument("--no-auto-render", action="store_true", help="Hold the renders until `story render`.")
        following(create)

        for name, text, takes_step in (
            ("resume", "Go on from the last good checkpoint (after stop, or a crash).", False),
            ("render", "Queue the renders a story without auto-render holds.", False),
            ("retry", "Run a failed step again.", True),
            ("rerun", "Run a step and everything after it again.", True),
        ):
            p = sub.add_parser(name, help=text)
            p.add_argument("story", help="The story's code or id.")
            if takes_step:
                p.add_argument("step", help="One of the story's steps (`story show` lists them).")
            following(p)
        export = sub.add_parser("export", help="Plan the movie's render graph, run it and join the film.")
        export.add_argument("story", help="The story's code or id.")
        export.add_argument("--path", choices=[p for p, _ in Movie.PATHS], default=Movie.T2V)
        export.add_argument("--upscale", action="store_true", help="Upscale every shot.")
        export.add_argument("--interpolate", action="store_true", help="Interpolate every shot to twice its fps.")
        export.add_argument("--crossfade", action="store_true", help="Crossfades between shots (else cuts).")
        export.add_argument("--subtitles", action="store_true", help="Burn the subtitles into the picture.")
        export.add_argument("--leave-out-failed", action="store_true", help="A shot that failed: a title card.")
        export.add_argument(
            "--template", action="append", default=[], metavar="STEP=NAME", help="keyframe, video, upscale or interp."
        )
        export.add_argument("--dry-run", action="store_true", help="Print the plan only.")
        following(export)
        sub.add_parser("list", help="The stories, newest first.")
        show = sub.add_parser("show", help="A story's steps: status, node, model, time, errors.")
        show.add_argument("story", help="The story's code or id.")

    def execute(self, *args: Any, **options: Any) -> str | None:
        # An error may quote what a model wrote (a step's error) or what the user typed.
        try:
            return super().execute(*args, **options)
        except CommandError as e:
            raise CommandError(printable(str(e)), returncode=e.returncode) from None

    def write(self, line: str) -> None:
        """Every line goes out through here: its text may come from a model or a user."""
        self.stdout.write(printable(line))

    def handle(self, *args: Any, **o: Any) -> None:
        action = o["action"]
        if action == "create":
            story = self.create(o)
        elif action == "list":
            self.list_stories()
            return
        else:
            story = find(o["story"])
            if action == "show":
                self.show(story)
                return
            if action == "resume":
                graph.resume(story)
                self.write(f"Story {story.code} resumed.")
            elif action == "render":
                if not graph.render_now(story):
                    raise CommandError(f"story {story.code} has no renders waiting for you")
                self.write(f"Story {story.code}: renders released.")
            elif action == "retry":
                self.retry(story, o["step"])
            elif action == "export":
                self.export(story, o)
                return
            else:
                marked = graph.rerun_from(story, step_of(story, o["step"]))
                self.write(f"Story {story.code}: running again: {', '.join(marked)}.")
        if o["wait"]:
            Follower(self, story).follow(o["timeout"])

    # --- export ---------------------------------------------------------------------------------

    def export(self, story: Story, o: dict[str, Any]) -> None:
        templates = movie.default_templates(story, o["path"])
        for entry in o["template"]:
            stage, _, name = entry.partition("=")
            if stage not in movie.STAGES:
                raise CommandError(f"--template {entry!r}: the step is one of {', '.join(movie.STAGES)}")
            templates[stage] = template_named(name)
        options = movie.Options(
            path=o["path"],
            upscale=o["upscale"],
            interpolate=o["interpolate"],
            transition=Movie.CROSSFADE if o["crossfade"] else Movie.CUT,
            burn_subtitles=o["subtitles"],
            leave_out_failed=o["leave_out_failed"],
            templates=templates,
        )
        try:
            planned = movie.plan(story, options)
        except movie.PlanError as e:
            raise CommandError(f"story {story.code}: {e}") from None
        self.write(f"Story {story.code}: {plan_line(planned)}")
        if o["dry_run"]:
            return
        made = movie.start(story, options)
        self.write(f"Movie v{made.version} ({made.code}) started.")
        if o["wait"]:
            self.follow_movie(made, o["timeout"])

    def follow_movie(self, made: Movie, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            made.refresh_from_db()
            parts = movie.states(made)
            done = sum(p.done for p in parts)
            line = f"{made.get_status_display()}: {done}/{len(parts)} shots rendered"
            if made.status == Movie.EXPORTING:
                line += f"; export {made.progress:.0%} {made.message}"
            if line != last:
                self.write(line)
                last = line
            if made.status == Movie.COMPLETED:
                self.write(f"The film: {settings.MEDIA_ROOT}/{made.video} ({made.seconds:.1f} s)")
                for warning in made.warnings:
                    self.write(f"  note: {warning}")
                return
            if made.status in Movie.ENDED:
                raise CommandError(f"movie v{made.version} {made.get_status_display().lower()}: {made.error}")
            if time.monotonic() >= deadline:
                raise CommandError(f"gave up after {timeout:g} s: {line}")
            time.sleep(POLL)

    # --- create ---------------------------------------------------------------------------------

    def create(self, o: dict[str, Any]) -> Story:
        # The web form's own rules and defaults; the render settings keep the form's initial values.
        data = {name: field.initial for name, field in StoryForm().fields.items() if field.initial is not None}
        data.update(
            idea=o["idea"],
            genre=o["genre"],
            style=o["style"],
            target_seconds=o["seconds"],
            mode=o["mode"],
            model=o["model"] or next(iter(known_models()), ""),
            step_models=" ".join(o["step_model"]),
            auto_render=not o["no_auto_render"],
            template=template_named(o["template"]).pk if o["template"] else "",
        )
        form = StoryForm(data)
        if not form.is_valid():
            errors = {OPTIONS.get(f, f): " ".join(map(str, e)).rstrip(".") for f, e in form.errors.items()}
            if not data["model"]:
                errors["--model"] = "no Ollama node has reported a model yet: add one on the Nodes page, or name one"
            raise CommandError("; ".join(f"{f}: {e}" for f, e in errors.items()))
        story = form.start()
        self.write(f"Story {story.code} created.")
        return story

    # --- retry ----------------------------------------------------------------------------------

    def retry(self, story: Story, name: str) -> None:
        step = step_of(story, name)
        run = story.runs.current().filter(step=step, part=0).first()
        if run is None:
            raise CommandError(f"{step} has not run yet in story {story.code}")
        if run.status != StepRun.FAILED:
            raise CommandError(f"{step} is {run.get_status_display().lower()}: only a failed step can be retried")
        if not graph.retry(run):
            raise CommandError(f"{step} changed meanwhile; look again with `story show {story.code}`")
        self.write(f"Story {story.code}: retrying {step}.")

    # --- list and show --------------------------------------------------------------------------

    def list_stories(self) -> None:
        stories = Story.objects.all()
        if not stories:
            self.write("No stories yet.")
            return
        for s in stories:
            self.write(f"{s.code}  {s.state:<9} {s.progress:>4.0%}  {s}")

    def show(self, story: Story) -> None:
        template = story.template.name if story.template else "none"
        w = self.write
        w(f"Story {story.code}: {story}")
        w(f"  idea: {story.idea[:300]}{'…' if len(story.idea) > 300 else ''}")
        w(f"  {story.get_mode_display()}, model {story.model}, template {template}, {story.target_seconds} s")
        w(f"  {story.get_state_display()}, {story.progress:.0%} done")
        if story.state in (Story.RENDERING, Story.FAILED) and story.runs.current().filter(
            step="renders", status=StepRun.COMPLETED
        ):
            w(f"  {rendered(story)}")
        runs = list(story.runs.current().select_related("node"))
        for step in graph.steps_for(story):
            run = next((r for r in runs if r.step == step.name and r.part == 0), None)
            if run is None:
                w(f"  {step.name:<11} not started")
                continue
            parts = sorted((r for r in runs if r.step == step.name and r.part), key=lambda r: r.part)
            w(f"  {step.name:<11} {run_summary(run, parts)}")
            for part in parts:
                if part.status in (StepRun.FAILED, StepRun.RUNNING) or part.waiting:
                    w(f"    {part.part:>3} {run_summary(part, [])}")


def run_summary(run: StepRun, parts: list[StepRun]) -> str:
    bits = [run.get_status_display().lower()]
    if run.version > 1:
        bits.append(f"v{run.version}")
    if run.edited:
        bits.append("edited by hand")
    if parts:
        completed = sum(p.status == StepRun.COMPLETED for p in parts)
        bits.append(f"{completed} of {len(parts)} parts completed")
    if where(run):
        bits.append(where(run).strip())
    if run.attempts > 1:
        bits.append(f"attempt {run.attempts} of {run.max_attempts}")
    if run.seconds is not None:
        bits.append(f"{run.seconds:.1f} s")
    text = ", ".join(bits)
    if run.status == StepRun.PENDING:
        text += f": {runner.waits_because(run, run.story)}"
    if run.error:
        text += f": {run.error}"
    return text


# --- looking things up ------------------------------------------------------------------------


def plan_line(planned: movie.Plan) -> str:
    kinds = ", ".join(
        f"{movie.STAGE_LABELS[stage].lower()} {c['new']} new, {c['reused']} reused"
        for stage, c in planned.counts.items()
    )
    if planned.estimate is None:
        guess = "no estimate yet (its templates were never rendered here)"
    else:
        guess = f"about {planned.estimate / 60:.1f} min" + (
            f" (+{planned.unmeasured} never measured)" if planned.unmeasured else ""
        )
    return f"{len(planned.parts)} {planned.story.piece}s; {kinds}; {guess}"


def find(key: str) -> Story:
    story = None
    pk = as_number(key)
    if pk is not None:
        story = Story.objects.filter(pk=pk).first()
    else:
        try:
            story = Story.objects.filter(code=uuid.UUID(key)).first()
        except ValueError:
            pass
    if story is None:
        raise CommandError(f"no story {key}")
    return story


def printable(text: str) -> str:
    """`text` safe to write to a terminal: its control characters as visible escapes (\\x1b)."""
    return text.translate(UNPRINTABLE)


def step_of(story: Story, name: str) -> str:
    names = [s.name for s in graph.steps_for(story)]
    if name not in names:
        raise CommandError(f"no step {name!r} in story {story.code}; its steps: {', '.join(names)}")
    return name


def template_named(name: str) -> Template:
    template = Template.objects.filter(name=name).first()
    if template is None:
        names = ", ".join(Template.objects.values_list("name", flat=True)) or "none (run `manage.py load_templates`)"
        raise CommandError(f"no template named {name!r}; there are: {names}")
    return template


def where(run: StepRun) -> str:
    node = f" on {run.node.name}" if run.node else ""
    return f"{node} ({run.model})" if run.model else node


# --- following a story ------------------------------------------------------------------------


class Follower:
    """Prints a line whenever a step of the story changes state, until the story ends."""

    def __init__(self, command: Command, story: Story) -> None:
        self.command = command
        self.story = story
        self.last: dict[str, str] = {}  # step (or "step part") → its last line
        self.said: set[tuple[str, str]] = set()  # each step's waiting reasons are said once each
        self.ready_since: dict[int, float] = {}
        self.warned = False

    def follow(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.story.refresh_from_db()
            runs = list(self.story.runs.current().select_related("node"))
            for key, line, who in self.lines(runs):
                self.say(key, line, who)
            if self.story.state == Story.RENDERING:
                self.say("rendering", str(rendered(self.story)), "renders")
            if self.ended(runs):
                return
            self.check_runner(runs)
            if time.monotonic() >= deadline:
                raise CommandError(f"gave up after {timeout:g} s: {self.standing()}")
            time.sleep(POLL)

    def lines(self, runs: list[StepRun]) -> list[tuple[str, str, str]]:
        """(what changed, its line, who the line is about): a step, or a part of one."""
        out = []
        for step in graph.steps_for(self.story):
            parts = [r for r in runs if r.step == step.name and r.part]
            run = next((r for r in runs if r.step == step.name and r.part == 0), None)
            if run is not None:
                out.append((step.name, step_line(step, run, parts), step.name))
            for part in sorted(parts, key=lambda r: r.part):
                if part.status == StepRun.FAILED:
                    who = f"{step.name} {part.part}"
                    out.append((who, f"failed: {part.error}", who))
                elif part.status == StepRun.PENDING and part.waiting:
                    out.append((f"{step.name} {part.part}", f"waiting: {part.waiting}", step.name))
        return out

    def say(self, key: str, line: str, who: str) -> None:
        if not line or self.last.get(key) == line:
            return
        self.last[key] = line
        if line.startswith("waiting: "):
            if (who, line) in self.said:
                return
            self.said.add((who, line))
        self.command.write(f"  {who}: {line}")

    def ended(self, runs: list[StepRun]) -> bool:
        story, write = self.story, self.command.write
        if story.state == Story.COMPLETED:
            write(f"Story {story.code} completed.")
            return True
        if story.state == Story.FAILED:
            failed = next((r for r in steps_in_order(story, runs) if r.status == StepRun.FAILED), None)
            why = f"{failed.step} failed: {failed.error}" if failed else str(rendered(story))
            raise CommandError(f"story {story.code} failed: {why}")
        if story.state == Story.STOPPED:
            raise CommandError(f"story {story.code} was stopped; `manage.py story resume {story.code}` goes on")
        active = [r for r in runs if r.status in graph.ACTIVE]
        if active and all(r.held for r in active):
            write(
                f"Story {story.code} waits for you: the prompts are written; "
                f"`manage.py story render {story.code}` queues the renders."
            )
            return True
        return False

    def check_runner(self, runs: list[StepRun]) -> None:
        """Say once if steps are ready but nothing takes them (no worker cluster running)."""
        now, clock = timezone.now(), time.monotonic()
        ready = {
            r.pk
            for r in runs
            if r.status == StepRun.PENDING
            and not r.held
            and not r.waiting
            and (r.not_before is None or r.not_before <= now)
        }
        self.ready_since = {pk: self.ready_since.get(pk, clock) for pk in ready}
        if self.warned or not any(clock - t >= IDLE for t in self.ready_since.values()):
            return
        # A cluster busy with other stories keeps the heartbeats of its steps fresh.
        alive = now - timedelta(seconds=settings.STALE)
        if StepRun.objects.filter(status=StepRun.RUNNING, heartbeat__gte=alive).exclude(owner="").exists():
            return
        self.command.write(NO_RUNNER)
        self.warned = True

    def standing(self) -> str:
        story = self.story
        names = [s.name for s in graph.steps_for(story)]
        steps = "; ".join(f"{k} {v}" for k, v in self.last.items() if k in names and not v.startswith("completed"))
        return f"story {story.code} is {story.get_state_display().lower()}, {story.progress:.0%} done" + (
            f" ({steps})" if steps else ""
        )


def step_line(step: graph.Step, run: StepRun, parts: list[StepRun]) -> str:
    if run.status == StepRun.PENDING:
        if run.not_before and run.not_before > timezone.now() and not run.waiting:
            return f"waiting: {runner.waits_because(run, run.story)}"
        return f"waiting: {run.waiting}" if run.waiting else ""
    if run.status == StepRun.RUNNING:
        if step.fans_out:
            completed = sum(p.status == StepRun.COMPLETED for p in parts)
            return f"running, {completed} of {len(parts)} done"
        return f"running{where(run)}"
    if run.status == StepRun.COMPLETED:
        seconds = f" in {run.seconds:.1f} s" if run.seconds is not None else ""
        extra = f", {count(len(parts), 'part')}" if step.fans_out else ""
        if step.kind == graph.RENDERS and run.output:
            extra = f": {count(run.output.get('queued', 0), 'render job')} queued, {run.output.get('kept', 0)} kept"
        return f"completed{seconds}{where(run)}{extra}"
    if run.status == StepRun.FAILED:
        return f"failed: {run.error}"
    return run.get_status_display().lower()


def count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def steps_in_order(story: Story, runs: list[StepRun]) -> list[StepRun]:
    order = [s.name for s in graph.steps_for(story)]
    return sorted((r for r in runs if r.part == 0 and r.step in order), key=lambda r: order.index(r.step))
