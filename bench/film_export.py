"""The film export's figures: 60 one-second shots (synthetic clips at 832x480, 16 fps, a moving
pattern so the encoder has work) in 12 segments, each with a sentence or two of narration spoken
by eSpeak (a sentence each), under one music track. For cuts and for crossfades, each with a cache of its own:

1. a full export (the narration spoken, every part encoded, the sound mixed), its time and its
   ratio to the film's length;
2. a re-export after one shot's clip changed (a new file in its place): its time, the parts it
   encoded, and its ratio to the full export (<= 25 %).

With 0.5 s crossfades between 1 s shots every frame is in a crossfade (a shot has no frames of its
own between them), so that film is about half as long, and its segments shorter than some of
their narration: those are held on their last frame.

In this process, no database (renders.film is pure media work); a fresh temporary folder.

    python bench/film_export.py
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from pathlib import Path

import av
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, main, temp_dir, time_limit, verdict  # noqa: E402
from renders import film, voice  # noqa: E402

SHOTS = 60
SEGMENTS = 12
WIDTH, HEIGHT, FPS = 832, 480, 16
NARRATION = [
    "The tide came in slowly.",
    "A keeper climbed the stairs, one lantern in his hand.",
    "Gulls circled the rocks.",
    "Far out, a ship's light blinked twice.",
    "He wrote the hour in the log.",
]


def clip(path: Path, hue: int) -> Path:
    """A one-second clip: a coloured field with a bar crossing it."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(FPS):
            image = Image.new("HSV", (WIDTH, HEIGHT), (hue % 256, 160, 200)).convert("RGB")
            x = k * WIDTH // FPS
            ImageDraw.Draw(image).rectangle((x, 0, x + WIDTH // 8, HEIGHT), fill=(240, 240, 240))
            frame = av.VideoFrame.from_image(image)
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def music(path: Path, seconds: float = 20.0) -> Path:
    """A chord that swells and fades, as a 44.1 kHz WAV."""
    rate = 44_100
    samples = array("h")
    for i in range(int(rate * seconds)):
        t = i / rate
        swell = 0.5 + 0.5 * math.sin(2 * math.pi * t / 5)
        value = sum(math.sin(2 * math.pi * f * t) for f in (220, 277.2, 329.6)) / 3
        samples.append(int(9000 * swell * value))
    voice.write_wav(path, samples.tobytes(), rate)
    return path


def timed(
    shots: list[film.Shot], segments: list[film.Segment], cut: film.Cut, out: Path, cache: Path
) -> tuple[float, film.Film]:
    started = time.perf_counter()
    made = film.export(shots, segments, cut, out=out, cache=cache)
    return time.perf_counter() - started, made


def run() -> None:
    with time_limit(900), temp_dir("sf-bench-film-") as folder:
        print(f"Film export benchmarks ({machine()}; PyAV {av.__version__})")
        clips = folder / "clips"
        clips.mkdir()
        started = time.perf_counter()
        shots = [
            film.Shot(f"shot:{i}", clip(clips / f"{i:02d}.mp4", i * 37), 1.0, i * SEGMENTS // SHOTS + 1)
            for i in range(SHOTS)
        ]
        segments = [film.Segment(n + 1, f"Part {n + 1}", NARRATION[n % len(NARRATION)]) for n in range(SEGMENTS)]
        track = music(folder / "music.wav")
        print(f"  {SHOTS} clips of 1 s at {WIDTH}x{HEIGHT}, {FPS} fps made in {time.perf_counter() - started:.1f} s")
        results = []
        for transition in ("cut", "crossfade"):
            cut = film.Cut(width=WIDTH, height=HEIGHT, fps=FPS, transition=transition, music=track)
            cache, out = folder / f"cache-{transition}", folder / f"out-{transition}" / "film.mp4"
            full, made = timed(shots, segments, cut, out, cache)
            changed = SHOTS // 2
            clip(clips / f"{changed:02d}.mp4", 200)  # a new render of one shot, in the same file
            again, remade = timed(shots, segments, cut, out, cache)
            ratio = again / full
            results.append(ratio)
            held = sum("held" in w for w in made.warnings)
            print(
                f"  {transition}: a {made.seconds:.1f} s film ({len(made.chapters)} chapters, "
                f"{held} segments held for their narration)"
            )
            print(
                f"    full export {full:.2f} s ({full / made.seconds:.3f} x the film's length; "
                f"{made.encoded} parts encoded)"
            )
            print(
                f"    re-export after one changed shot {again:.2f} s ({remade.encoded} parts encoded, "
                f"{remade.reused} reused): {ratio:.1%} of the full export"
            )
            clip(clips / f"{changed:02d}.mp4", changed * 37)  # back as it was for the next transition
        print(f"{verdict(all(r <= 0.25 for r in results))}: re-export after one changed shot <= 25 % of a full export")


if __name__ == "__main__":
    main(run)
