"""The film export: small synthetic clips made with PyAV, joined by renders.film, and the result
read back with PyAV the way a player would see it: its frames, sound, chapters and subtitles."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import av
import pytest
from PIL import Image

from renders import film, voice
from renders.film import Cut, FilmError, Segment, Shot, Stopped

ROOT = Path(__file__).resolve().parent.parent
SIZE, FPS = (160, 96), 8
CUT = Cut(width=160, height=96, fps=8)
RED, GREEN, BLUE, YELLOW = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)


def clip(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = SIZE, fps: int = FPS, seconds: float = 1.0
) -> Path:
    """A clip of one colour, with its file's mtime moved on so a rewrite is always a new file."""
    existed = path.exists()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(round(fps * seconds)):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, color))
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    if existed:
        later = time.time_ns() + 1_000_000_000
        os.utime(path, ns=(later, later))
    return path


def tone(path: Path, freq: float, seconds: float, amplitude: float = 0.3) -> Path:
    """A sine wave as a 44.1 kHz WAV."""
    rate = 44_100
    samples = array(
        "h", (int(32767 * amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(rate * seconds)))
    )
    voice.write_wav(path, samples.tobytes(), rate)
    return path


def pictures(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    r, g, b = image.getpixel((x, y))  # type: ignore[misc]
    return r, g, b


def centre(image: Image.Image) -> tuple[int, int, int]:
    return pixel(image, image.width // 2, image.height // 2)


def near(color: tuple[int, ...], expected: tuple[int, int, int], slack: int = 30) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(color, expected, strict=True))


def sound(path: Path) -> array[float]:
    """The film's sound, mono at 48 kHz."""
    samples = array("f")
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=48_000)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                samples.frombytes(bytes(out.planes[0])[: out.samples * 4])
    return samples


def rms(samples: array[float], start: float, end: float) -> float:
    window = samples[int(start * 48_000) : int(end * 48_000)]
    return math.sqrt(sum(x * x for x in window) / len(window))


def level_at(samples: array[float], start: float, end: float, freq: float) -> float:
    """Amplitude of one frequency in a window (Goertzel)."""
    window = samples[int(start * 48_000) : int(end * 48_000)]
    k = 2 * math.cos(2 * math.pi * freq / 48_000)
    s1 = s2 = 0.0
    for x in window:
        s1, s2 = x + k * s1 - s2, s1
    return 2 * math.sqrt(max(s1 * s1 + s2 * s2 - k * s1 * s2, 0.0)) / len(window)


def loudness(path: Path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) of the film's sound, by FFmpeg's ebur128."""
    graph = av.filter.Graph()
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        source = graph.add_abuffer(template=stream)
        sink = graph.add("abuffersink")
        graph.link_nodes(source, graph.add("ebur128", "peak=true:metadata=1"), sink)
        graph.configure()
        meta: dict[str, str] = {}
        for frame in [*container.decode(stream), None]:
            source.push(frame)
            while True:
                try:
                    pulled = sink.pull()
                except (BlockingIOError, EOFError):
                    break
                meta = dict(pulled.metadata) or meta
    return float(meta["lavfi.r128.I"]), 20 * math.log10(float(meta["lavfi.r128.true_peak"]))


def cue_times(text: str) -> list[tuple[float, float]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    return [(seconds(a), seconds(b)) for a, b in re.findall(r"([\d:.,]+) --> ([\d:.,]+)", text)]


@pytest.fixture
def shots(tmp_path: Path) -> list[Shot]:
    """Four one-second shots in two segments: red, green | blue, yellow."""
    colors = [RED, GREEN, BLUE, YELLOW]
    return [Shot(f"shot:{i + 1}", clip(tmp_path / f"{i + 1}.mp4", c), 1.0, 1 + i // 2) for i, c in enumerate(colors)]


SEGMENTS = [Segment(1, "The shore", "The sea was calm."), Segment(2, "The light", "A lamp turned.")]


def test_it_joins_shots_into_a_film_a_browser_plays(tmp_path: Path, shots: list[Shot]) -> None:
    made = film.export(shots, SEGMENTS, CUT, out=tmp_path / "out" / "film.mp4", cache=tmp_path / "cache")

    assert (made.encoded, made.reused, made.warnings) == (4, 0, [])
    assert made.seconds == 4.0
    with av.open(str(made.video)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (video.width, video.height, video.average_rate) == (160, 96, 8)
        assert (audio.codec_context.name, audio.sample_rate) == ("aac", 48_000)
        assert container.duration is not None and abs(container.duration / 1e6 - 4.0) < 0.1
        chapters = [(c["start"] * (c["time_base"] or 1), c["metadata"]["title"]) for c in container.chapters()]
    assert chapters == [(0, "The shore"), (2, "The light")] and made.chapters == [
        (0.0, "The shore"),
        (2.0, "The light"),
    ]
    head = made.video.read_bytes()[:100_000]
    assert head.find(b"moov") < head.find(b"mdat")  # +faststart: playable while it downloads

    frames = pictures(made.video)
    assert len(frames) == 32
    for i, color in enumerate([RED, GREEN, BLUE, YELLOW]):
        assert all(near(centre(f), color) for f in frames[i * 8 : i * 8 + 8]), f"shot {i + 1}"

    vtt, srt = made.vtt.read_text(), made.srt.read_text()
    assert vtt.startswith("WEBVTT") and "The sea was calm." in vtt and "A lamp turned." in srt
    assert cue_times(vtt) == cue_times(srt)
    (a1, b1), (a2, b2) = cue_times(vtt)
    assert 0 < a1 < b1 <= 2 <= a2 < b2 <= 4

    said = sound(made.video)
    assert len(said) / 48_000 == pytest.approx(4.0, abs=0.05)
    assert rms(said, a1, b1) > 0.03 and rms(said, a2, b2) > 0.03  # the narration speaks
    assert rms(said, 1.6, 1.95) < rms(said, a1, b1) / 20  # and is quiet between the two
    integrated, peak = loudness(made.video)
    assert integrated == pytest.approx(-16, abs=1.5) and peak <= -1.5


def test_music_is_lowered_while_the_narration_plays(tmp_path: Path) -> None:
    shots = [Shot(f"shot:{i}", clip(tmp_path / f"{i}.mp4", RED), 1.5, 1 + i // 2) for i in range(4)]
    segments = [Segment(1, "Quiet", ""), Segment(2, "Spoken", "Listen to the waves on the shore.")]
    cut = Cut(width=160, height=96, fps=8, music=tone(tmp_path / "music.wav", 55, 2.0))

    made = film.export(shots, segments, cut, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    said = sound(made.video)
    (start, end), *_ = cue_times(made.vtt.read_text())
    alone, under = level_at(said, 0.5, 2.5, 55), level_at(said, start + 0.3, end, 55)
    assert alone > 0.01  # the music plays (looped past its 2 s)
    assert under < alone / 2  # at least 6 dB lower under the speech


def test_an_unplayable_music_cue_is_a_warning_not_a_failure(tmp_path: Path, shots: list[Shot]) -> None:
    (tmp_path / "empty.mp3").write_bytes(b"")
    segments = [Segment(1, "One", ""), Segment(2, "Two", "", music=tmp_path / "empty.mp3")]

    made = film.export(shots, segments, CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert made.seconds == 4.0
    assert any("Segment 2" in w and "empty.mp3" in w and "no music" in w for w in made.warnings)
    assert rms(sound(made.video), 0, 4) < 1e-3


def test_re_export_after_one_changed_shot_encodes_only_that_shot(tmp_path: Path, shots: list[Shot]) -> None:
    out, cache = tmp_path / "film.mp4", tmp_path / "cache"
    started = time.perf_counter()
    film.export(shots, SEGMENTS, CUT, out=out, cache=cache)
    full = time.perf_counter() - started
    parts = {p: p.stat().st_mtime_ns for p in (cache / "parts").glob("*.mp4")}
    clip(shots[2].path or Path(), (250, 0, 250))  # shot 3 rendered again: magenta

    started = time.perf_counter()
    made = film.export(shots, SEGMENTS, CUT, out=out, cache=cache)
    again = time.perf_counter() - started

    assert (made.encoded, made.reused) == (1, 3)
    assert again < full
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in parts.items())  # the others untouched
    frames = pictures(out)
    assert [near(centre(frames[i]), c) for i, c in ((12, GREEN), (20, (250, 0, 250)), (28, YELLOW))] == [True] * 3


def test_crossfades_overlap_consecutive_shots(tmp_path: Path) -> None:
    shots = [
        Shot(f"shot:{i + 1}", clip(tmp_path / f"{i + 1}.mp4", c, seconds=2.0), 2.0, 1 + i // 2)
        for i, c in enumerate([RED, GREEN, BLUE, YELLOW])
    ]
    segments = [Segment(1, "One", ""), Segment(2, "Two", "Night fell.")]
    cut = Cut(width=160, height=96, fps=8, transition="crossfade", crossfade=0.5)

    made = film.export(shots, segments, cut, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert made.seconds == 8 - 3 * 0.5
    assert made.chapters == [(0.0, "One"), (3.0, "Two")]  # shot 3 starts after 2 + 1.5 - 0.5
    ((start, end),) = cue_times(made.vtt.read_text())
    assert 3.0 < start < end <= 6.5
    frames = pictures(made.video)
    assert len(frames) == 52
    red, green = centre(frames[8])[:2], centre(frames[13])[:2]  # shot 2 fades in over frames 12-15
    assert near(centre(frames[11]), RED) and near(centre(frames[16]), GREEN)
    assert red[0] > 200 and 60 < green[0] < 200 and 30 < green[1] < 200  # halfway: some of both

    clip(shots[1].path or Path(), (250, 0, 250))
    again = film.export(shots, segments, cut, out=tmp_path / "film.mp4", cache=tmp_path / "cache")
    assert (again.encoded, again.reused) == (3, 4)  # shot 2's own frames and its two crossfades


def test_a_clip_of_another_size_and_rate_is_fitted_with_a_warning(tmp_path: Path) -> None:
    shots = [
        Shot("shot:1", clip(tmp_path / "1.mp4", RED), 1.0, 1),
        Shot("shot:2", clip(tmp_path / "2.mp4", BLUE, size=(320, 240), fps=12), 1.0, 1),
    ]

    made = film.export(shots, [], CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert made.warnings == ["shot:2: its clip is 320x240 at 12 fps; it was fitted to 160x96 at 8 fps."]
    frames = pictures(made.video)
    assert len(frames) == 16 and all(f.size == (160, 96) for f in frames)
    blue = frames[12]
    assert near(centre(blue), BLUE) and near(pixel(blue, 3, 48), (0, 0, 0), 20)  # 4:3 between black bars
    with av.open(str(made.video)) as container:
        assert container.streams.video[0].average_rate == 8


def test_a_missing_or_unreadable_clip_names_the_shot(tmp_path: Path, shots: list[Shot]) -> None:
    out = tmp_path / "film.mp4"
    missing = [*shots[:2], Shot("shot:3", tmp_path / "gone.mp4", 1.0, 2)]
    with pytest.raises(FilmError, match=r"shot:3: its clip .*gone\.mp4 is missing"):
        film.export(missing, SEGMENTS, CUT, out=out, cache=tmp_path / "cache")

    (tmp_path / "broken.mp4").write_bytes(os.urandom(5000))
    broken = [*shots[:2], Shot("shot:3", tmp_path / "broken.mp4", 1.0, 2)]
    with pytest.raises(FilmError, match=r"shot:3: its clip broken\.mp4 cannot be read"):
        film.export(broken, SEGMENTS, CUT, out=out, cache=tmp_path / "cache")
    assert not out.exists() and not list(tmp_path.glob(".film.mp4*"))


def test_a_shot_without_a_clip_is_a_title_card(tmp_path: Path, shots: list[Shot]) -> None:
    with_card = [shots[0], Shot("shot:2", None, 2.0, 1, card="Shot 2 did not render")]

    made = film.export(with_card, [], CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert made.seconds == 3.0
    card = pictures(made.video)[16]
    assert pixel(card, 2, 2) == pytest.approx((0, 0, 0), abs=20)
    assert max(sum(pixel(card, x, y)) for x in range(160) for y in range(30, 66)) > 600  # white letters


def test_a_segment_with_narration_but_no_shots_is_a_title_card_to_speak_over(tmp_path: Path, shots: list[Shot]) -> None:
    segments = [*SEGMENTS, Segment(3, "Epilogue", "And the light went out.")]

    made = film.export(shots, segments, CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert made.chapters[-1] == (4.0, "Epilogue") and made.warnings == []
    *_, (start, end) = cue_times(made.vtt.read_text())
    assert 4 < start < end <= made.seconds - 0.2
    last = pictures(made.video)[-1]
    assert pixel(last, 2, 2) == pytest.approx((0, 0, 0), abs=20)
    assert max(sum(pixel(last, x, 48)) for x in range(160)) > 600  # the title in white


def test_a_long_narration_holds_the_last_frame(tmp_path: Path, shots: list[Shot]) -> None:
    long = "The keeper climbed the long stair, counting every step, and wrote the hour in the log."
    segments = [Segment(1, "Climb", long)]
    cut = Cut(width=160, height=96, fps=8, voice="kokoro:af_heart", voice_models=tmp_path)

    made = film.export(shots[:2], segments, cut, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert any("eSpeak" in w for w in made.warnings)  # no Kokoro here: eSpeak spoke
    assert any(w.startswith("Segment 1 (Climb): its narration") and "held" in w for w in made.warnings)
    assert made.seconds > 4
    frames = pictures(made.video)
    assert len(frames) == made.seconds * 8 and all(near(centre(f), GREEN) for f in frames[8:])
    cues = cue_times(made.vtt.read_text())
    assert len(cues) >= 2 and cues[-1][1] <= made.seconds - 0.2
    assert all(a < b <= c for (a, b), (c, _) in zip(cues, cues[1:], strict=False))


@pytest.mark.parametrize("stretch", [1.3, 2.0])
def test_a_long_narration_can_be_sped_up_instead(tmp_path: Path, stretch: float) -> None:
    text = "The lamp turned all night above the rocks and the sleeping harbour."
    spoken = tmp_path / "spoken.wav"
    voice.Voice("espeak", "en").speak([(text, spoken)])
    seconds = round((voice.wav_seconds(spoken) / stretch + film.LEAD + film.TAIL) * 8) / 8
    shots = [Shot("shot:1", clip(tmp_path / "1.mp4", RED, seconds=seconds), seconds, 1)]
    cut = Cut(width=160, height=96, fps=8, narration_fit="speed")

    made = film.export(shots, [Segment(1, "Night", text)], cut, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    (warning,) = made.warnings
    if stretch < 1.5:
        assert made.seconds == seconds and "sped up 1.3" in warning and "held" not in warning
    else:
        assert made.seconds > seconds and "sped up 1.50x" in warning and "held" in warning
    assert cue_times(made.vtt.read_text())[-1][1] <= made.seconds - 0.2


def test_a_segments_own_speech_file_is_spoken_instead_of_the_voice(tmp_path: Path, shots: list[Shot]) -> None:
    speech = tone(tmp_path / "speech.wav", 440, 1.0)
    segments = [Segment(1, "One", "Hello there.", speech=speech), Segment(2, "Two", "")]

    made = film.export(shots, segments, CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")

    assert list((tmp_path / "cache" / "speech").glob("*.wav")) == []
    said = sound(made.video)
    assert level_at(said, 0.4, 1.1, 440) > 0.1 and rms(said, 1.5, 3.5) < 1e-3
    ((start, end),) = cue_times(made.vtt.read_text())
    assert (start, end) == pytest.approx((0.25, 1.25), abs=0.01)


def test_burned_subtitles_change_the_bottom_of_the_picture(tmp_path: Path, shots: list[Shot]) -> None:
    cache = tmp_path / "cache"
    plain = film.export(shots, SEGMENTS, CUT, out=tmp_path / "plain.mp4", cache=cache)
    burned = film.export(
        shots, SEGMENTS, Cut(width=160, height=96, fps=8, burn_subtitles=True), out=tmp_path / "burned.mp4", cache=cache
    )

    assert burned.encoded == 4  # burned-in text makes other parts
    (start, end), _ = cue_times(burned.vtt.read_text())
    at = int((start + end) / 2 * 8)
    a, b = pictures(plain.video)[at], pictures(burned.video)[at]
    changed = [(x, y) for x in range(160) for y in range(96) if not near(pixel(a, x, y), pixel(b, x, y), 40)]
    assert len(changed) > 200
    assert min(y for _, y in changed) > 96 / 2  # all in the bottom half
    assert any(sum(pixel(b, x, y)) > 600 for x, y in changed)  # white letters


def test_a_stopped_export_leaves_nothing_at_out_and_the_next_reuses_its_parts(
    tmp_path: Path, shots: list[Shot]
) -> None:
    out, cache = tmp_path / "film.mp4", tmp_path / "cache"
    said: list[str] = []

    with pytest.raises(Stopped):
        film.export(
            shots,
            SEGMENTS,
            CUT,
            out=out,
            cache=cache,
            progress=lambda fraction, message: said.append(message),
            stop=lambda: sum(m.startswith("Encoding") for m in said) >= 3,
        )
    assert not out.exists() and not out.with_suffix(".vtt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.mp4", "2.mp4", "3.mp4", "4.mp4", "cache"]

    made = film.export(shots, SEGMENTS, CUT, out=out, cache=cache)
    assert (made.encoded, made.reused) == (2, 2)


KILLED = """
import os, signal, sys
from pathlib import Path
from renders import film
shots = [film.Shot(f"shot:{i + 1}", Path(sys.argv[1]) / f"{i + 1}.mp4", 1.0, 1 + i // 2) for i in range(4)]
def progress(fraction, message):
    if message == "Encoding shot:3":
        os.kill(os.getpid(), signal.SIGKILL)
film.export(shots, [], film.Cut(width=160, height=96, fps=8), out=Path(sys.argv[1]) / "film.mp4",
            cache=Path(sys.argv[1]) / "cache", progress=progress)
"""


def test_a_killed_export_leaves_nothing_at_out_and_the_next_reuses_its_parts(tmp_path: Path, shots: list[Shot]) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, capture_output=True, timeout=60)

    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert not (tmp_path / "film.mp4").exists()
    made = film.export(shots, [], CUT, out=tmp_path / "film.mp4", cache=tmp_path / "cache")
    assert (made.encoded, made.reused) == (2, 2)


def test_narration_is_cut_into_cues_at_sentences_then_commas() -> None:
    text = (
        "The sea was calm. The keeper climbed the long stair, counting every step, stopping at the window "
        "to watch the lights of the harbour go out one by one, and wrote the hour in the log! Then he slept."
    )

    cues = film.phrases(text)

    assert cues[0] == "The sea was calm." and cues[-1] == "Then he slept."
    assert all(len(cue) <= 80 for cue in cues) and len(cues) >= 4
    assert " ".join(cues) == text


def test_espeak_speaks_audibly_for_longer_as_the_text_grows(tmp_path: Path) -> None:
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    speaker, why = voice.choose("espeak:en")
    assert why is None

    speaker.speak([("Hello.", short), ("Hello. The lighthouse keeper walked along the shore at dusk.", long)])

    assert 0.2 < voice.wav_seconds(short) < voice.wav_seconds(long) / 3
    samples = array("h", long.read_bytes()[44:])
    assert math.sqrt(sum(x * x for x in samples) / len(samples)) > 1000


def test_an_unavailable_voice_falls_back_to_espeak_with_a_reason(tmp_path: Path) -> None:
    speaker, why = voice.choose("kokoro:bf_emma", tmp_path)

    assert (speaker.engine, speaker.name) == ("espeak", "en-gb")
    assert why is not None and "kokoro:bf_emma is not available" in why
