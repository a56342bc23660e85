"""The film: rendered shots joined in story order, narration spoken over them, music lowered under
the speech, chapters per segment and subtitles, in one MP4 (H.264 + AAC, yuv420p, moov first) that
a browser plays while it downloads. Pure media work on plain values: no models, no database.

How a film is made (`export`):

1. The narration is spoken (the segment's own speech file, else the voice; kept in the cache).
2. The timeline is laid out in frames: shots in order, crossfades overlapping them, a segment held
   on its last frame (or its speech sped up) when its narration is longer than its shots.
3. The picture is cut into parts: each shot's frames (under crossfades, the frames between two
   transitions) and each crossfade; every part is an H.264 file of its own in the cache, named by a
   hash of everything that decides its pixels. Parts share one encoder setup, so the film's video is
   the parts' packets copied one after the other; a re-export encodes only parts it has not got.
4. The sound is mixed in two passes through FFmpeg filters (PyAV): speech, plus music ducked by a
   side-chain compressor under it; the first pass measures loudness (EBU R128), the second applies
   the gain to -16 LUFS and limits peaks at four times the sample rate. The mix is cached too, by
   what decides it (a changed shot of the same length does not change the sound).
5. Parts, sound and chapters are muxed into a temporary file beside `out`, renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
from av.audio.frame import AudioFrame
from av.filter import Graph
from av.filter.context import FilterContext
from av.video.frame import PictureType, VideoFrame
from PIL import Image, ImageDraw, ImageFont, ImageSequence

from renders import voice as voices

if TYPE_CHECKING:
    from av.container.core import Chapter  # only in PyAV's stubs

VERSION = 1  # part of every cache key: bump it when a change here changes what a part or a mix holds
RATE = 48_000  # audio samples per second
SAMPLE = 8  # bytes of one stereo float sample
CHUNK = 4_800  # samples pushed through the mix at a time
LEAD = 0.25  # seconds from a segment's start to its narration
TAIL = 0.25  # seconds kept after the narration before the next segment
MAX_SPEEDUP = 1.5
LOUDNESS = -16.0  # LUFS, integrated
PEAK = -2.5  # dBFS, limited at 4x the sample rate: -1.5 dBTP with room for the AAC encoder
MUSIC_LEVEL = 0.4  # music before ducking, against speech at full scale
DUCKING = "threshold=0.02:ratio=8:attack=40:release=600"
MUSIC_FADE = 0.5  # seconds of fade in and out where a music span starts and ends
X264 = {"preset": "veryfast", "crf": "20", "profile": "high"}
AAC_BIT_RATE = 160_000
IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}  # read with Pillow
STALE = 3600  # seconds after which a temporary file left by a killed export is removed


@dataclass(frozen=True)
class Shot:
    key: str  # stable id, e.g. "shot:3"
    path: Path | None  # the rendered clip (video, animated image) or a still; None -> a title card
    seconds: float  # the length planned for it in the film
    segment: int  # the segment (chapter) it belongs to
    card: str = ""  # the title card's text when path is None


@dataclass(frozen=True)
class Segment:
    number: int
    title: str  # the chapter's title
    narration: str  # may be empty
    speech: Path | None = None  # the narration already spoken; else the voice speaks it
    music: Path | None = None  # this segment's music (its music cue), if any


@dataclass(frozen=True)
class Cut:
    width: int = 832
    height: int = 480
    fps: float = 16
    transition: str = "cut"  # "cut" or "crossfade"
    crossfade: float = 0.5  # seconds
    narration_fit: str = "hold"  # narration longer than its segment: "hold" the last frame, or "speed" it up
    burn_subtitles: bool = False
    music: Path | None = None  # one track for the whole film, looped/trimmed; a segment's own music wins
    voice: str = "espeak:en"  # or "kokoro:af_heart" when available
    voice_models: Path | None = None  # the folder with Kokoro's kokoro-v1.0.onnx and voices-v1.0.bin


@dataclass
class Film:
    video: Path
    vtt: Path
    srt: Path
    seconds: float
    chapters: list[tuple[float, str]]  # (start in seconds, title)
    encoded: int  # shot parts encoded this time
    reused: int  # shot parts taken from the cache
    warnings: list[str]


class FilmError(Exception):
    """The film cannot be made; the message names the shot or segment and what to do."""


class Stopped(FilmError):
    """stop() asked the export to end; the parts finished so far stay in the cache."""


Progress = Callable[[float, str], None]
Picture = Image.Image | VideoFrame  # a frame of the film before encoding


def export(
    shots: list[Shot],
    segments: list[Segment],
    cut: Cut,
    *,
    out: Path,
    cache: Path,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> Film:
    """Make the film at `out` (an .mp4; its .vtt and .srt beside it), keeping what can be reused in
    `cache`. Raises FilmError with a message for the user, Stopped when `stop()` returned True.
    Nothing is ever left half-written at `out`."""
    warnings: list[str] = []
    cut = check_cut(cut, warnings)

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(max(fraction, 0.0), 1.0), message)

    def check() -> None:
        if stop is not None and stop():
            raise Stopped("The export was stopped; the parts finished so far are kept for the next export.")

    out = Path(out)
    cache = Path(cache)
    for folder in (out.parent, cache / "parts", cache / "speech", cache / "mix"):
        folder.mkdir(parents=True, exist_ok=True)
        sweep(folder)
    numbered = arrange_segments(shots, segments)

    report(0.0, "Speaking the narration")
    speeches = speak(numbered, cut, cache / "speech", warnings)
    check()
    film = arrange(shots, numbered, speeches, frame_rate(cut))
    sources = [Source(shot, cut) for shot in film]
    plan = layout(film, numbered, speeches, cut, warnings)
    cues = subtitles(plan)
    parts = cut_parts(plan, sources, cut, cues)

    # The picture: every part from the cache or encoded now.
    paths = [cache / "parts" / f"{part.key}.mp4" for part in parts]
    todo = sum(part.frames for part, path in zip(parts, paths, strict=True) if not path.is_file())
    done, encoded, reused = 0, 0, 0
    notes: list[str] = []
    for part, path in zip(parts, paths, strict=True):
        check()
        if path.is_file():
            reused += 1
        else:
            report(0.05 + 0.8 * done / max(todo, 1), f"Encoding {part.label}")
            encode_part(part, sources, cut, path, check)
            encoded += 1
            done += part.frames
        notes += read_notes(path)
    check()

    report(0.85, "Mixing the sound")
    sound = mix(plan, numbered, cut, cache / "mix", warnings, check)
    check()

    report(0.95, "Writing the film")
    vtt, srt = out.with_suffix(".vtt"), out.with_suffix(".srt")
    write_atomic(vtt, webvtt(cues))
    write_atomic(srt, subrip(cues))
    chapters = [(span.first / plan.rate, span.segment.title or f"Segment {span.segment.number}") for span in plan.spans]
    join(parts, paths, sound, chapters, plan, out)
    report(1.0, "Done")
    return Film(
        video=out,
        vtt=vtt,
        srt=srt,
        seconds=float(plan.total / plan.rate),
        chapters=[(float(round(start, 3)), title) for start, title in chapters],
        encoded=encoded,
        reused=reused,
        warnings=list(dict.fromkeys(warnings + notes)),
    )


def check_cut(cut: Cut, warnings: list[str]) -> Cut:
    """The cut, or a FilmError saying what is wrong with it. An odd size is made even (H.264 in
    yuv420p needs it)."""
    if cut.width < 16 or cut.height < 16:
        raise FilmError(f"The film's size {cut.width}x{cut.height} is too small: at least 16x16 pixels.")
    if cut.width % 2 or cut.height % 2:
        even = replace(cut, width=cut.width - cut.width % 2, height=cut.height - cut.height % 2)
        warnings.append(
            f"The film is {even.width}x{even.height}, not {cut.width}x{cut.height}: H.264 needs even sizes."
        )
        cut = even
    if not 1 <= cut.fps <= 120:
        raise FilmError(f"The film's frame rate {cut.fps:g} must be between 1 and 120.")
    if cut.transition not in ("cut", "crossfade"):
        raise FilmError(f"Unknown transition {cut.transition!r}: choose cut or crossfade.")
    if cut.narration_fit not in ("hold", "speed"):
        raise FilmError(f"Unknown narration fit {cut.narration_fit!r}: choose hold or speed.")
    if cut.transition == "crossfade" and cut.crossfade < 0:
        raise FilmError("The crossfade cannot be negative.")
    return cut


# The timeline.


@dataclass
class Speech:
    path: Path
    seconds: float  # as spoken
    tempo: float = 1.0  # > 1 when sped up to fit its segment
    start: float = 0.0  # in the film, seconds

    @property
    def length(self) -> float:
        return self.seconds / self.tempo


@dataclass
class Span:
    """A segment's place in the film, in frames: from `first` to where the next one begins."""

    segment: Segment
    first: int
    end: int
    speech: Speech | None


@dataclass
class Plan:
    shots: list[Shot]
    frames: list[int]  # each shot's frames, holds included
    joins: list[int]  # frames shot i overlaps shot i + 1 (crossfades)
    starts: list[int]  # each shot's first frame in the film
    spans: list[Span]
    total: int  # frames
    rate: Fraction  # frames per second


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def frame_rate(cut: Cut) -> Fraction:
    return Fraction(cut.fps).limit_denominator(1001)


def arrange_segments(shots: list[Shot], segments: list[Segment]) -> dict[int, Segment]:
    numbered: dict[int, Segment] = {}
    for segment in segments:
        if segment.number in numbered:
            raise FilmError(f"Segment {segment.number} is listed twice.")
        numbered[segment.number] = segment
    for shot in shots:  # a shot of a segment nobody described: a chapter without narration
        numbered.setdefault(shot.segment, Segment(shot.segment, f"Segment {shot.segment}", ""))
    if not shots and not any(s.narration.strip() or s.speech for s in segments):
        raise FilmError("There is nothing to put in the film: no shots and no narration.")
    return numbered


def arrange(shots: list[Shot], segments: dict[int, Segment], speeches: dict[int, Speech], rate: Fraction) -> list[Shot]:
    """The film's shots in order: the given ones, and a title card for a segment that has narration
    but no shots, long enough to speak it over."""
    film = list(shots)
    present = {shot.segment for shot in shots}
    for number, segment in segments.items():
        if number in present or number not in speeches:
            continue
        title = segment.title or f"Segment {number}"
        seconds = math.ceil((LEAD + speeches[number].seconds + TAIL) * rate) / rate
        card = Shot(f"segment:{number}", None, float(seconds), number, card=title)
        at = next((i for i, shot in enumerate(film) if shot.segment > number), len(film))
        film.insert(at, card)
    seen: set[int] = set()
    for i, shot in enumerate(film):
        if i and shot.segment != film[i - 1].segment and shot.segment in seen:
            raise FilmError(
                f"{shot.key} belongs to segment {shot.segment}, whose other shots come earlier in the film: "
                "put a segment's shots together."
            )
        seen.add(shot.segment)
    return film


def layout(
    film: list[Shot], segments: dict[int, Segment], speeches: dict[int, Speech], cut: Cut, warnings: list[str]
) -> Plan:
    """Lay the shots out in frames and fit each segment's narration into it (hold or speed)."""
    rate = frame_rate(cut)
    frames = [max(1, round(shot.seconds * rate)) for shot in film]
    overlap = round(cut.crossfade * rate) if cut.transition == "crossfade" else 0
    joins = [min(overlap, frames[i] // 2, frames[i + 1] // 2) for i in range(len(film) - 1)]
    runs: list[tuple[int, int, int]] = []  # (segment, first shot, last shot)
    for i, shot in enumerate(film):
        if runs and runs[-1][0] == shot.segment:
            runs[-1] = (shot.segment, runs[-1][1], i)
        else:
            runs.append((shot.segment, i, i))

    starts = [0] * len(film)
    spans: list[Span] = []
    for number, first, last in runs:
        for i in range(max(first, 1), last + 1):
            starts[i] = starts[i - 1] + frames[i - 1] - joins[i - 1]
        begin = starts[first]
        end = starts[last] + frames[last] - (joins[last] if last < len(film) - 1 else 0)
        segment, speech = segments[number], speeches.get(number)
        if speech is not None:
            hold = fit(speech, segment, float((end - begin) / rate), cut, rate, warnings)
            frames[last] += hold
            end += hold
            speech.start = float(begin / rate) + LEAD
        spans.append(Span(segment, begin, end, speech))
        if last + 1 < len(film):
            starts[last + 1] = starts[last] + frames[last] - joins[last]
    total = starts[-1] + frames[-1]
    return Plan(film, frames, joins, starts, spans, total, rate)


def fit(speech: Speech, segment: Segment, seconds: float, cut: Cut, rate: Fraction, warnings: list[str]) -> int:
    """Fit a segment's speech into its `seconds`: speed it up (at most MAX_SPEEDUP) when asked, and
    return the frames its last shot must be held for the rest."""
    room = seconds - LEAD - TAIL
    if speech.seconds <= room:
        return 0
    name = f"Segment {segment.number}" + (f" ({segment.title})" if segment.title else "")
    margins = LEAD + TAIL
    said = f"its narration ({speech.seconds:.1f} s, with {margins:g} s of margins) outlasts its shots ({seconds:.1f} s)"
    if cut.narration_fit == "speed":
        speech.tempo = min(MAX_SPEEDUP, speech.seconds / room) if room > 0 else MAX_SPEEDUP
    hold = max(0, math.ceil((speech.length - room) * rate - 1e-6))
    held = f"its last frame is held {float(hold / rate):.1f} s longer"
    if speech.tempo > 1 and hold:
        warnings.append(f"{name}: {said}; it was sped up {speech.tempo:.2f}x and {held}.")
    elif speech.tempo > 1:
        warnings.append(f"{name}: {said}; it was sped up {speech.tempo:.2f}x to fit.")
    else:
        warnings.append(f"{name}: {said}; {held}.")
    return hold


# Subtitles.


def clean(text: str) -> str:
    return " ".join(text.split())


def phrases(text: str, width: int = 80) -> list[str]:
    """Narration as subtitle cues: sentences, a long one split at commas (and the like), a still
    longer piece at the last space before `width` characters."""
    cues: list[str] = []
    for sentence in re.split(r"(?<=[.!?…])\s+", clean(text)):
        if not sentence:
            continue
        if len(sentence) <= width:
            cues.append(sentence)
            continue
        line = ""
        for piece in re.split(r"(?<=[,;:])\s+", sentence):
            if line and len(line) + 1 + len(piece) > width:
                cues.append(line)
                line = ""
            line = f"{line} {piece}".strip()
            while len(line) > width:
                cut_at = line.rfind(" ", 0, width + 1)
                cut_at = cut_at if cut_at > width // 3 else width
                cues.append(line[:cut_at].strip())
                line = line[cut_at:].strip()
        if line:
            cues.append(line)
    return cues


def subtitles(plan: Plan) -> list[Cue]:
    """Each segment's narration in cues, timed within its speech in proportion to their length."""
    cues: list[Cue] = []
    for span in plan.spans:
        speech, texts = span.speech, phrases(span.segment.narration)
        if speech is None or not texts:
            continue
        weights = [len(text) + 5 for text in texts]  # a short cue still needs a moment
        total, done = sum(weights), 0
        end = float(span.end / plan.rate)
        for text, weight in zip(texts, weights, strict=True):
            start = speech.start + speech.length * done / total
            done += weight
            cues.append(Cue(round(start, 3), round(min(speech.start + speech.length * done / total, end), 3), text))
    return cues


def timestamp(seconds: float, comma: bool = False) -> str:
    ms = round(seconds * 1000)
    text = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
    return text.replace(".", ",") if comma else text


def webvtt(cues: list[Cue]) -> str:
    blocks = ["WEBVTT"]
    for n, cue in enumerate(cues, 1):
        text = cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{n}\n{timestamp(cue.start)} --> {timestamp(cue.end)}\n{text}")
    return "\n\n".join(blocks) + "\n"


def subrip(cues: list[Cue]) -> str:
    blocks = [
        f"{n}\n{timestamp(cue.start, True)} --> {timestamp(cue.end, True)}\n{cue.text}" for n, cue in enumerate(cues, 1)
    ]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


# Speech.


def speak(segments: dict[int, Segment], cut: Cut, folder: Path, warnings: list[str]) -> dict[int, Speech]:
    """Each segment's speech: its own file when it has one that plays, else its narration spoken by
    the cut's voice (kept in `folder` by text and voice)."""
    speeches: dict[int, Speech] = {}
    texts: dict[int, str] = {}
    for number, segment in segments.items():
        text = clean(segment.narration)
        if segment.speech is not None:
            try:
                speeches[number] = Speech(segment.speech, audio_seconds(segment.speech))
                continue
            except Unreadable as e:
                instead = "the voice speaks the narration instead" if text else "the segment has no narration"
                warnings.append(
                    f"Segment {number}: its speech file {segment.speech.name} cannot be played ({e}); {instead}."
                )
        if text:
            texts[number] = text
    if not texts:
        return speeches

    voice, why = voices.choose(cut.voice, cut.voice_models)
    if why:
        warnings.append(why[0].upper() + why[1:] + ".")
    try:
        spoken = speak_with(voice, texts, folder)
    except voices.VoiceError as e:
        if voice.engine == "espeak":
            raise FilmError(f"The narration could not be spoken: {e}.") from e
        voice = voices.espeak_for(voice.name)
        warnings.append(f"{str(e)[0].upper()}{str(e)[1:]}; eSpeak ({voice.name}) spoke instead.")
        try:
            spoken = speak_with(voice, texts, folder)
        except voices.VoiceError as again:
            raise FilmError(f"The narration could not be spoken: {again}.") from again
    for number, path in spoken.items():
        seconds = voices.wav_seconds(path)
        if seconds > 0:
            speeches[number] = Speech(path, seconds)
    return speeches


def speak_with(voice: voices.Voice, texts: dict[int, str], folder: Path) -> dict[int, Path]:
    paths = {
        number: folder / f"{digest({'v': VERSION, 'text': text, 'voice': voice.key})}.wav"
        for number, text in texts.items()
    }
    missing = [number for number, path in paths.items() if not path.is_file()]
    temps = {number: temporary(paths[number]) for number in missing}
    try:
        voice.speak([(texts[number], temps[number]) for number in missing])
        for number in missing:
            os.replace(temps[number], paths[number])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return paths


# The picture.


class Unreadable(Exception):
    """A media file that cannot be decoded; the message says why, briefly."""


def reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e).split(": '")[0][:200] or type(e).__name__


class Source:
    """What one shot shows, frame by frame at the cut's size and rate: its clip, its still, or its
    title card."""

    def __init__(self, shot: Shot, cut: Cut) -> None:
        self.shot, self.cut = shot, cut
        self.size = (cut.width, cut.height)
        self.rate = frame_rate(cut)
        self.notes: list[str] = []
        if shot.path is None:
            self.identity: dict[str, Any] = {"card": shot.card or shot.key}
            return
        try:
            stat = shot.path.stat()
        except OSError as e:
            raise FilmError(
                f"{shot.key}: its clip {shot.path} is missing ({reason(e)}); "
                "render the shot again or take it out of the film."
            ) from e
        if stat.st_size == 0:
            raise FilmError(f"{shot.key}: its clip {shot.path.name} is empty; render the shot again.")
        self.identity = {"path": str(shot.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def frames(self, first: int) -> Generator[Picture, None, None]:
        """Its frames from its own frame `first` on, without end: a clip that is over holds its last
        frame. Each distinct picture is one object, repeated while it holds: an Image, or a decoded
        frame that is already the film's size (it goes to the encoder without Pillow)."""
        path = self.shot.path
        if path is None:
            yield from forever(card(self.shot.card or self.shot.key, *self.size))
            return
        try:
            if path.suffix.lower() in IMAGES:
                yield from timed(self.pictures(path), self.rate, first)
            else:
                yield from timed(self.video(path), self.rate, first)
        except (av.FFmpegError, OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise FilmError(
                f"{self.shot.key}: its clip {path.name} cannot be read ({reason(e)}); "
                "render the shot again or replace the file."
            ) from e

    def video(self, path: Path) -> Iterator[tuple[float, Callable[[], Picture]]]:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            self.note(stream.codec_context.width, stream.codec_context.height, float(rate) if rate else None)
            for n, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else n / float(rate or self.rate)
                yield t, partial(self.fit_frame, frame)

    def pictures(self, path: Path) -> Iterator[tuple[float, Callable[[], Picture]]]:
        with Image.open(path) as image:
            count = getattr(image, "n_frames", 1)
            t = 0.0
            for frame in ImageSequence.Iterator(image):
                # the sequence moves the same Image on: copy each frame before the next
                yield t, partial(self.fit, flatten(frame))
                t += float(frame.info.get("duration") or 100) / 1000
            if count > 1:
                self.note(image.width, image.height, count / t)

    def note(self, width: int, height: int, fps: float | None) -> None:
        """Say when a clip is not the film's size or rate: it is letterboxed, or frames repeat or drop."""
        other_rate = fps is not None and abs(fps - float(self.rate)) > 0.01
        if (width, height) != self.size or other_rate:
            rate = f" at {fps:g} fps" if fps else ""
            w, h = self.size
            fitted = f"it was fitted to {w}x{h} at {self.cut.fps:g} fps"
            self.notes.append(f"{self.shot.key}: its clip is {width}x{height}{rate}; {fitted}.")

    def fit_frame(self, frame: VideoFrame) -> Picture:
        if (frame.width, frame.height) == self.size:
            return frame
        return self.fit(frame.to_image())

    def fit(self, image: Image.Image) -> Image.Image:
        """Scaled to fit the film's frame, black bars where the aspect ratio differs."""
        width, height = self.size
        if image.size == self.size:
            return image.convert("RGB")
        scale = min(width / image.width, height / image.height)
        size = (max(1, min(width, round(image.width * scale))), max(1, min(height, round(image.height * scale))))
        scaled = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        if size == self.size:
            return scaled
        canvas = Image.new("RGB", self.size, "black")
        canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
        return canvas


def timed(frames: Iterator[tuple[float, Callable[[], Picture]]], rate: Fraction, first: int) -> Iterator[Picture]:
    """Source frames (start time, picture) at the film's rate from frame `first` on: output frame j
    shows the last source frame started by j / rate (a quarter frame of slack for rounded
    timestamps), and the last one holds forever. A picture is made once, when first shown."""
    fps, j = float(rate), 0
    t0: float | None = None
    current: Callable[[], Picture] | None = None
    for t, make in frames:
        t0 = t if t0 is None else t0
        picture = None
        while current is not None and (j + 0.25) / fps < t - t0:
            if j >= first:
                picture = picture if picture is not None else current()
                yield picture
            j += 1
        current = make
    if current is None:
        raise ValueError("it has no frames")
    yield from forever(current())


def forever(picture: Picture) -> Iterator[Picture]:
    while True:
        yield picture


def flatten(image: Image.Image) -> Image.Image:
    """An image on black where it is transparent."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def wrap(draw: ImageDraw.ImageDraw, text: str, face: Any, width: float) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=face) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def card(text: str, width: int, height: int) -> Image.Image:
    """A title card: the text in white, centred on black."""
    image = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(image)
    face = font(max(12, height // 12))
    block = "\n".join(wrap(draw, text, face, width * 0.85))
    draw.multiline_text((width / 2, height / 2), block, font=face, fill="white", anchor="mm", align="center")
    return image


def caption(text: str, width: int, height: int) -> tuple[Image.Image, tuple[int, int]]:
    """A burned-in subtitle: white text with a dark outline on a dark box, and where it goes (bottom
    centre)."""
    size = max(10, height // 20)
    face = font(size)
    stroke = max(1, size // 12)
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    block = "\n".join(wrap(draw, text, face, width * 0.88))
    bbox = draw.multiline_textbbox((0, 0), block, font=face, align="center", stroke_width=stroke)
    left, top, right, bottom = (round(v) for v in bbox)
    pad = max(3, size // 3)
    box = (right - left + 2 * pad, bottom - top + 2 * pad)
    image = Image.new("RGBA", box, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, box[0] - 1, box[1] - 1), radius=pad, fill=(0, 0, 0, 165))
    draw.multiline_text(
        (pad - left, pad - top),
        block,
        font=face,
        fill="white",
        align="center",
        stroke_width=stroke,
        stroke_fill="black",
    )
    return image, ((width - box[0]) // 2, max(0, height - box[1] - round(height * 0.05)))


@dataclass(frozen=True)
class Layer:
    shot: int  # index in the plan's shots
    first: int  # the shot's own frame the part starts at


@dataclass
class Part:
    """A run of the film's frames encoded as one file: one shot's frames, or a crossfade of two."""

    key: str
    start: int  # the film's frame it starts at
    frames: int
    layers: list[Layer]
    cues: list[tuple[int, int, str]] = field(default_factory=list)  # burned in: frames relative to the part
    label: str = ""


def cut_parts(plan: Plan, sources: list[Source], cut: Cut, cues: list[Cue]) -> list[Part]:
    """The film's frames as parts: under a cut, one per shot; under crossfades, each shot's frames
    between its transitions and each transition."""
    parts: list[Part] = []
    count = len(plan.shots)
    for i, shot in enumerate(plan.shots):
        before = plan.joins[i - 1] if i else 0
        after = plan.joins[i] if i < count - 1 else 0
        body = plan.frames[i] - before - after
        if body > 0:
            parts.append(Part("", plan.starts[i] + before, body, [Layer(i, before)], label=shot.key))
        if after:
            nxt = plan.shots[i + 1]
            layers = [Layer(i, plan.frames[i] - after), Layer(i + 1, 0)]
            parts.append(Part("", plan.starts[i + 1], after, layers, label=f"{shot.key} → {nxt.key}"))
    rate = plan.rate
    burned = [(round(c.start * rate), round(c.end * rate), c.text) for c in cues] if cut.burn_subtitles else []
    for part in parts:
        end = part.start + part.frames
        part.cues = [
            (max(a, part.start) - part.start, min(b, end) - part.start, t)
            for a, b, t in burned
            if a < end and b > part.start
        ]
        part.key = digest(
            {
                "v": VERSION,
                "av": av.__version__,
                "x264": X264,
                "size": [cut.width, cut.height],
                "rate": str(rate),
                "frames": part.frames,
                "layers": [{"source": sources[layer.shot].identity, "first": layer.first} for layer in part.layers],
                "cues": part.cues,
            }
        )
    return parts


def add_video(container: Any, cut: Cut) -> Any:
    rate = frame_rate(cut)
    stream = container.add_stream("libx264", rate=rate, options=dict(X264))
    stream.width, stream.height, stream.pix_fmt = cut.width, cut.height, "yuv420p"
    stream.time_base = 1 / rate
    stream.codec_context.gop_size = max(1, round(2 * rate))
    return stream


def encode_part(part: Part, sources: list[Source], cut: Cut, dest: Path, check: Callable[[], None]) -> None:
    """Encode one part into `dest` (written under another name, renamed when complete) with a
    sidecar of the notes its sources gave."""
    streams = [sources[layer.shot].frames(layer.first) for layer in part.layers]
    overlays = {text: caption(text, cut.width, cut.height) for _, _, text in part.cues}
    temp = temporary(dest)
    try:
        with av.open(str(temp), "w", format="mp4") as container:
            stream = add_video(container, cut)
            shown: tuple[list[Picture], float, str | None] = ([], 0.0, None)
            frame: VideoFrame | None = None
            for k in range(part.frames):
                if k % 8 == 0:
                    check()
                pictures = [next(s) for s in streams]
                cue = next((text for a, b, text in part.cues if a <= k < b), None)
                alpha = (k + 1) / (part.frames + 1) if len(pictures) == 2 else 0.0
                held = all(p is q for p, q in zip(pictures, shown[0], strict=False)) and (alpha, cue) == shown[1:]
                if frame is None or not held:
                    # a held picture is the same object: convert and overlay only a new one
                    frame = yuv(pictures, alpha, overlays[cue] if cue is not None else None)
                    shown = (pictures, alpha, cue)
                frame.pts, frame.time_base = k, 1 / frame_rate(cut)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        notes = [note for layer in part.layers for note in sources[layer.shot].notes]
        write_atomic(dest.with_suffix(".json"), json.dumps({"notes": notes}))
        os.replace(temp, dest)
    finally:
        for s in streams:
            s.close()
        temp.unlink(missing_ok=True)


def yuv(pictures: list[Picture], alpha: float, overlay: tuple[Image.Image, tuple[int, int]] | None) -> VideoFrame:
    """One frame for the encoder: a picture, or two blended, with a subtitle over it."""
    if len(pictures) == 1 and overlay is None and isinstance(pictures[0], VideoFrame):
        frame = pictures[0].reformat(format="yuv420p")
    else:
        images = [p.to_image() if isinstance(p, VideoFrame) else p for p in pictures]
        image = Image.blend(images[0], images[1], alpha) if len(images) == 2 else images[0]
        if overlay is not None:
            image = image.copy()
            image.paste(overlay[0], overlay[1], overlay[0])
        frame = VideoFrame.from_image(image).reformat(format="yuv420p")
    frame.pict_type = PictureType.NONE  # a decoded frame's type would force the encoder's choice
    return frame


def read_notes(part: Path) -> list[str]:
    try:
        return list(json.loads(part.with_suffix(".json").read_text())["notes"])
    except (OSError, ValueError, KeyError):
        return []


# The sound.


def pcm(data: bytes, pts: int) -> AudioFrame:
    frame = AudioFrame(format="flt", layout="stereo", samples=len(data) // SAMPLE)
    frame.planes[0].update(data)
    frame.sample_rate, frame.pts, frame.time_base = RATE, pts, Fraction(1, RATE)
    return frame


def samples_of(frame: AudioFrame) -> bytes:
    """A packed stereo float frame's samples (its plane may be padded)."""
    return bytes(frame.planes[0])[: frame.samples * SAMPLE]


def drain(sink: FilterContext) -> Iterator[AudioFrame]:
    while True:
        try:
            frame = sink.pull()
        except (BlockingIOError, EOFError):
            return
        assert isinstance(frame, AudioFrame)
        yield frame


def chain(graph: Graph, source: FilterContext, filters: list[tuple[str, str]]) -> FilterContext:
    """Link `filters` after `source` and end them in a sink."""
    nodes = [graph.add(name, args) for name, args in filters]
    sink = graph.add("abuffersink")
    graph.link_nodes(source, *nodes, sink)
    return sink


def through(chunks: Iterator[bytes], filters: list[tuple[str, str]]) -> Iterator[bytes]:
    """Stereo float samples through FFmpeg filters, back as stereo float samples."""
    graph = Graph()
    source = graph.add_abuffer(sample_rate=RATE, format="flt", layout="stereo", time_base=Fraction(1, RATE))
    sink = chain(graph, source, [*filters, ("aformat", f"sample_fmts=flt:channel_layouts=stereo:sample_rates={RATE}")])
    graph.configure()
    pts = 0
    for data in chunks:
        source.push(pcm(data, pts))
        pts += len(data) // SAMPLE
        for frame in drain(sink):
            yield samples_of(frame)
    source.push(None)
    for frame in drain(sink):
        yield samples_of(frame)


def decoded(path: Path) -> Iterator[bytes]:
    """An audio file's first audio stream as 48 kHz stereo float samples."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise Unreadable("it has no sound")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="stereo", rate=RATE)
        for frame in container.decode(stream):
            frame.pts = None  # gaps and jumps in a file's timestamps are not ours to keep
            for out in resampler.resample(frame):
                yield samples_of(out)
        for out in resampler.resample(None):
            yield samples_of(out)


def audio_seconds(path: Path) -> float:
    """How long an audio file plays; Unreadable when it does not."""
    try:
        if path.stat().st_size == 0:
            raise Unreadable("it is empty")
        seconds = sum(len(data) for data in decoded(path)) / SAMPLE / RATE
    except (av.FFmpegError, OSError, ValueError) as e:
        raise Unreadable(reason(e)) from e
    if seconds <= 0:
        raise Unreadable("it has no sound")
    return seconds


def plays(path: Path) -> None:
    """Check that an audio file starts playing (its first second decodes to sound); Unreadable if not."""
    try:
        if path.stat().st_size == 0:
            raise Unreadable("it is empty")
        heard = 0
        for data in decoded(path):
            heard += len(data)
            if heard >= RATE * SAMPLE:
                return
    except (av.FFmpegError, OSError, ValueError) as e:
        raise Unreadable(reason(e)) from e
    if not heard:
        raise Unreadable("it has no sound")


def looped(path: Path) -> Iterator[bytes]:
    while True:
        played = 0
        for data in decoded(path):
            played += len(data)
            yield data
        if not played:
            return


def silence(samples: int) -> Iterator[bytes]:
    while samples > 0:
        n = min(samples, RATE)
        yield bytes(n * SAMPLE)
        samples -= n


def track(total: int, clips: list[tuple[int, int, Callable[[], Iterator[bytes]]]]) -> Iterator[bytes]:
    """A track `total` samples long: each clip's samples from its start to its end (or until it runs
    out), silence elsewhere. Clips are in order and do not overlap."""
    cursor = 0
    for start, end, play in clips:
        start, end = max(start, cursor), min(end, total)
        if end <= start:
            continue
        yield from silence(start - cursor)
        cursor = start
        for data in play():
            take = min(len(data) // SAMPLE, end - cursor)
            yield data[: take * SAMPLE]
            cursor += take
            if cursor >= end:
                break
    yield from silence(total - cursor)


def chunked(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for data in chunks:
        buffer += data
        while len(buffer) >= size * SAMPLE:
            yield bytes(buffer[: size * SAMPLE])
            del buffer[: size * SAMPLE]
    if buffer:
        yield bytes(buffer)


def identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def music_spans(plan: Plan, segments: dict[int, Segment], cut: Cut, warnings: list[str]) -> list[tuple[int, int, Path]]:
    """Where music plays, in samples: each segment's own cue, else the film's track; a run of
    segments with the same music is one span (the music goes on across them)."""
    playable: dict[Path, bool] = {}

    def playing(path: Path, what: str) -> bool:
        if path not in playable:
            try:
                plays(path)
                playable[path] = True
            except Unreadable as e:
                playable[path] = False
                warnings.append(f"{what} ({path.name}) cannot be played ({e}); there is no music there.")
        return playable[path]

    spans: list[tuple[int, int, Path]] = []
    for span in plan.spans:
        music = span.segment.music
        if music is not None:
            label = f"Segment {span.segment.number}'s music cue"
            path = music if playing(music, label) else None
        else:
            path = cut.music if cut.music is not None and playing(cut.music, "The film's music track") else None
        start, end = round(span.first / plan.rate * RATE), round(span.end / plan.rate * RATE)
        if path is None or end <= start:
            continue
        if spans and spans[-1][2] == path and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end, path)
        else:
            spans.append((start, end, path))
    return spans


def mix(
    plan: Plan, segments: dict[int, Segment], cut: Cut, folder: Path, warnings: list[str], check: Callable[[], None]
) -> Path:
    """The film's sound as AAC in an .m4a in `folder`, made unless one with the same inputs is there."""
    total = round(plan.total / plan.rate * RATE)
    voiced = [span.speech for span in plan.spans if span.speech is not None]
    speech = [(round(s.start * RATE), s) for s in voiced]
    music = music_spans(plan, segments, cut, warnings)
    dest = folder / (
        digest(
            {
                "v": VERSION,
                "samples": total,
                "speech": [[identity(s.path), start, round(s.tempo, 6)] for start, s in speech],
                "music": [[identity(path), start, end] for start, end, path in music],
                "settings": [MUSIC_LEVEL, DUCKING, LOUDNESS, PEAK, AAC_BIT_RATE, av.__version__],
            }
        )
        + ".m4a"
    )
    if dest.is_file():
        return dest

    def spoken(s: Speech) -> Callable[[], Iterator[bytes]]:
        tempo = [("atempo", f"{s.tempo:.6f}")] if s.tempo != 1 else []
        return lambda: through(decoded(s.path), tempo) if tempo else decoded(s.path)

    def played(path: Path, samples: int) -> Callable[[], Iterator[bytes]]:
        fade = min(MUSIC_FADE, samples / RATE / 4)
        fades = [("afade", f"t=in:d={fade:.3f}"), ("afade", f"t=out:st={samples / RATE - fade:.3f}:d={fade:.3f}")]
        return lambda: through(looped(path), fades)

    ends = [start for start, _ in speech[1:]] + [total]  # a speech never runs into the next one
    speech_clips = [(start, end, spoken(s)) for (start, s), end in zip(speech, ends, strict=False)]
    music_clips = [(start, end, played(path, end - start)) for start, end, path in music]

    def mixed(tail: list[tuple[str, str]]) -> Iterator[AudioFrame]:
        """Speech over the music, the music ducked by a compressor keyed on the speech, then `tail`."""
        graph = Graph()
        tb = Fraction(1, RATE)
        voice = graph.add_abuffer(sample_rate=RATE, format="flt", layout="stereo", time_base=tb, name="speech")
        bed = graph.add_abuffer(sample_rate=RATE, format="flt", layout="stereo", time_base=tb, name="music")
        split = graph.add("asplit", "2")
        level = graph.add("volume", f"{MUSIC_LEVEL}")
        duck = graph.add("sidechaincompress", DUCKING)
        both = graph.add("amix", "inputs=2:duration=first:normalize=0")
        voice.link_to(split)
        bed.link_to(level)
        level.link_to(duck, 0, 0)
        split.link_to(duck, 0, 1)
        duck.link_to(both, 0, 0)
        split.link_to(both, 1, 1)
        sink = chain(graph, both, tail)
        graph.configure()
        pts = 0
        said, heard = chunked(track(total, speech_clips), CHUNK), chunked(track(total, music_clips), CHUNK)
        for n, (s, m) in enumerate(zip(said, heard, strict=True)):
            if n % 50 == 0:
                check()
            voice.push(pcm(s, pts))
            bed.push(pcm(m, pts))
            pts += len(s) // SAMPLE
            yield from drain(sink)
        voice.push(None)
        bed.push(None)
        yield from drain(sink)

    # First pass: how loud the mix is (EBU R128 integrated loudness).
    loudness = -70.0
    for frame in mixed([("ebur128", "peak=true:metadata=1")]):
        if "lavfi.r128.I" in frame.metadata:
            loudness = float(frame.metadata["lavfi.r128.I"])
    gain = LOUDNESS - loudness if loudness > -70 else 0.0
    limit = 10 ** (PEAK / 20)
    tail = [
        ("volume", f"{gain:.2f}dB"),
        ("aresample", str(4 * RATE)),
        ("alimiter", f"limit={limit:.4f}:level=0:attack=5:release=50:latency=1"),
        ("aresample", str(RATE)),
        ("aformat", "sample_fmts=fltp:channel_layouts=stereo"),
    ]
    temp = temporary(dest)
    try:
        with av.open(str(temp), "w", format="mp4") as container:
            stream = container.add_stream("aac", rate=RATE)
            stream.layout = "stereo"
            stream.bit_rate = AAC_BIT_RATE
            written = 0
            for frame in mixed(tail):
                if written >= total:
                    break
                if written + frame.samples > total:
                    frame = shortened(frame, total - written)
                frame.pts, frame.time_base = written, Fraction(1, RATE)
                written += frame.samples
                container.mux(stream.encode(frame))
            if written < total:
                quiet = AudioFrame(format="fltp", layout="stereo", samples=total - written)
                for plane in quiet.planes:
                    plane.update(bytes(plane.buffer_size))
                quiet.sample_rate, quiet.pts, quiet.time_base = RATE, written, Fraction(1, RATE)
                container.mux(stream.encode(quiet))
            container.mux(stream.encode(None))
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    return dest


def shortened(frame: AudioFrame, samples: int) -> AudioFrame:
    short = AudioFrame(format="fltp", layout="stereo", samples=samples)
    for plane, source in zip(short.planes, frame.planes, strict=True):
        plane.update(bytes(source)[: samples * 4])
    short.sample_rate = RATE
    return short


# The film.


def join(
    parts: list[Part], paths: list[Path], sound: Path, chapters: list[tuple[Fraction, str]], plan: Plan, out: Path
) -> None:
    """Mux the parts' video packets one after the other, the sound beside them and the chapters into
    a temporary file beside `out`, then rename it to `out`."""
    temp = temporary(out)
    total = Fraction(plan.total) / plan.rate
    try:
        with (
            av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as container,
            av.open(str(sound)) as audio,
        ):
            with av.open(str(paths[0])) as first:
                template = first.streams.video[0]
                video = container.add_stream_from_template(template)
                video.time_base = template.time_base
                header = template.codec_context.extradata
            heard = audio.streams.audio[0]
            sound_out = container.add_stream_from_template(heard)
            sound_out.time_base = heard.time_base
            ends = [start for start, _ in chapters[1:]] + [total]
            marks: list[Chapter] = [
                {
                    "id": n,
                    "start": round(start * 1000),
                    "end": round(end * 1000),
                    "time_base": Fraction(1, 1000),
                    "metadata": {"title": title},
                }
                for n, ((start, title), end) in enumerate(zip(chapters, ends, strict=True), 1)
            ]
            container.set_chapters(marks)
            packets = (p for p in audio.demux(heard) if p.dts is not None)
            pending = next(packets, None)
            assert heard.time_base is not None
            for part, path in zip(parts, paths, strict=True):
                with av.open(str(path)) as source:
                    stream = source.streams.video[0]
                    tb = stream.time_base
                    assert tb is not None
                    if stream.codec_context.extradata != header or stream.width != video.width:
                        raise FilmError(
                            f"The cached part of {part.label} was encoded differently from the others; "
                            "empty the film cache and export again."
                        )
                    offset = round(Fraction(part.start) / plan.rate / tb)
                    for packet in source.demux(stream):
                        if packet.dts is None or packet.pts is None:
                            continue
                        packet.pts += offset
                        packet.dts += offset
                        # the sound goes in beside the picture it plays with
                        while pending is not None and (pending.dts or 0) * heard.time_base <= packet.dts * tb:
                            pending.stream = sound_out
                            container.mux(pending)
                            pending = next(packets, None)
                        packet.stream = video
                        container.mux(packet)
            while pending is not None:
                pending.stream = sound_out
                container.mux(pending)
                pending = next(packets, None)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)


# Files.


def digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


def temporary(path: Path) -> Path:
    """A name beside `path` for writing it: hidden, unique, never the final name."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, text: str) -> None:
    temp = temporary(path)
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def sweep(folder: Path) -> None:
    """Remove temporary files that exports killed long ago left behind."""
    cutoff = time.time() - STALE
    for temp in folder.glob(".*.tmp"):
        try:
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
        except OSError:
            pass
