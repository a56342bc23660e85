"""Render outputs: copied off a simulated ComfyUI over real HTTP under our own names, checked by
content, measured and thumbnailed (pictures; sounds are measured only)."""

from __future__ import annotations

import io
import json
import random
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image

from nodes.clients import ServiceError
from nodes.clients.comfyui import ComfyUI, FileRef, outputs_of, succeeded
from nodes.sim.comfyui import SimComfyUI
from renders.media import EXTENSIONS, MediaError, Output, collect, describe, local_name, sniff
from tests.conftest import ended

WORKFLOWS = Path(__file__).resolve().parents[2] / "shared" / "comfyui" / "workflows"
if not WORKFLOWS.is_dir():
    WORKFLOWS = Path("/work/shared/comfyui/workflows")

JOB = "a1b2c3d4e5f6"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimComfyUI]:
    with SimComfyUI("127.0.0.1", 0) as s:
        yield s


@pytest.fixture
def client(sim: SimComfyUI) -> ComfyUI:
    return ComfyUI(sim.url)


def render(client: ComfyUI, name: str, **inputs: Any) -> FileRef:
    """Render a shared workflow on the node; `inputs` like {"1.width": 640} change one input."""
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for key, value in inputs.items():
        node, field = key.split(".")
        workflow[node]["inputs"][field] = value
    prompt_id, client_id = uuid.uuid4().hex, uuid.uuid4().hex
    client.submit(workflow, prompt_id=prompt_id, client_id=client_id)
    entry = ended(client, prompt_id, 30)
    assert succeeded(entry), entry["status"]
    (ref,) = outputs_of(entry)
    return ref


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def thumbnail_of(root: Path, out: Output) -> Image.Image:
    with Image.open(root / out.thumbnail) as img:
        img.load()
    return img


def write_video(path: Path, size: tuple[int, int], frames: int, fps: int, codec: str = "libx264") -> None:
    with av.open(str(path), "w", format="mov" if path.suffix == ".mov" else path.suffix[1:]) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, (i * 9 % 256, 40, 90)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_sound(path: Path, seconds: float, rate: int = 44100, codec: str = "pcm_s16le", fmt: str = "") -> None:
    """A 440 Hz square wave (mono, 16-bit), `seconds` long, in the container the suffix names."""
    samples = round(seconds * rate)
    half = max(1, rate // 880)
    pcm = b"".join(((6000 if (i // half) % 2 else -6000).to_bytes(2, "little", signed=True)) for i in range(samples))
    with av.open(str(path), "w", format=fmt or path.suffix[1:]) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def sound_bytes(suffix: str, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    codec = {".flac": "flac", ".mp3": "libmp3lame", ".wav": "pcm_s16le", ".ogg": "libopus"}[suffix]
    with av.open(buf, "w", format=suffix[1:]) as container:
        stream = container.add_stream(codec, rate=48000, layout="mono")
        assert isinstance(stream, AudioStream)
        frame = AudioFrame(format="s16", layout="mono", samples=round(seconds * 48000))
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def silent_wav() -> bytes:
    """A WAV header that promises sound, and no sound after it."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
    return buf.getvalue()


# Names.


@pytest.mark.parametrize(
    "remote, expected",
    [
        ("peer/still_00001_.png", "renders/a1/a1b2c3d4e5f6/03.png"),
        ("audio/music_00001_.FLAC", "renders/a1/a1b2c3d4e5f6/03.flac"),
        ("../voice_00002_.opus", "renders/a1/a1b2c3d4e5f6/03.opus"),
        ("../../../etc/passwd.PNG", "renders/a1/a1b2c3d4e5f6/03.png"),
        ("..\\..\\boot.ini.Mp4", "renders/a1/a1b2c3d4e5f6/03.mp4"),
        ("$(rm -rf ~) <script>.webm", "renders/a1/a1b2c3d4e5f6/03.webm"),
        ("clip.final.JPEG", "renders/a1/a1b2c3d4e5f6/03.jpeg"),
    ],
)
def test_local_names_take_only_the_extension_from_the_node(remote: str, expected: str) -> None:
    assert local_name(JOB, 3, remote) == expected


@pytest.mark.parametrize("remote", ["page.html", "x.svg", "x.png.exe", "archive.tar.gz", "noextension", "x.png "])
def test_it_refuses_extensions_we_do_not_keep(remote: str) -> None:
    with pytest.raises(MediaError, match="refusing the output .* are not kept"):
        local_name(JOB, 0, remote)


@pytest.mark.parametrize("code", ["", "a", "../x", "ab/cd", "ab cd"])
def test_it_refuses_a_job_code_that_is_not_a_plain_token(code: str) -> None:
    with pytest.raises(ValueError, match="not a job code"):
        local_name(code, 0, "x.png")


def test_every_kept_extension_is_lowercase_with_a_dot() -> None:
    assert all(ext.startswith(".") and ext == ext.lower() for ext in EXTENSIONS)


# Collecting from a node.


@pytest.mark.parametrize(
    "workflow, inputs, kind, mime, size, frames, duration",
    [
        ("still_image", {"1.width": 800, "1.height": 600}, "image", "image/png", (800, 600), 1, None),
        ("animated_webp", {"1.width": 400, "1.height": 200}, "animation", "image/webp", (400, 200), 12, 2.0),
        ("animated_png", {"1.width": 160, "1.height": 400}, "animation", "image/png", (160, 400), 12, 2.0),
        ("video_mp4", {"1.width": 640, "1.height": 360}, "video", "video/mp4", (640, 360), 24, 1.0),
        ("video_webm", {"1.width": 480, "1.height": 272}, "video", "video/webm", (480, 272), 24, 1.0),
    ],
)
def test_it_collects_each_kind_of_output(
    client: ComfyUI,
    tmp_path: Path,
    workflow: str,
    inputs: dict[str, Any],
    kind: str,
    mime: str,
    size: tuple[int, int],
    frames: int,
    duration: float | None,
) -> None:
    ref = render(client, workflow, **inputs)

    out = collect(client, ref, JOB, 1, media_root=tmp_path)

    ext = Path(ref["filename"]).suffix
    assert out.path == f"renders/a1/{JOB}/01{ext}"
    assert out.thumbnail == f"renders/a1/{JOB}/01{ext}.thumb.jpg"
    assert files(tmp_path) == sorted([out.path, out.thumbnail])
    assert (out.kind, out.mime, (out.width, out.height), out.frames) == (kind, mime, size, frames)
    assert out.size == (tmp_path / out.path).stat().st_size == len(client.view(**ref, limit=10**8))
    if duration is None:
        assert out.duration is None
    else:
        assert out.duration == pytest.approx(duration, abs=0.05)
    thumb = thumbnail_of(tmp_path, out)
    assert thumb.format == "JPEG"
    assert max(thumb.size) == min(320, max(size))
    assert thumb.width / thumb.height == pytest.approx(size[0] / size[1], rel=0.02)


def music(save: str = "SaveAudio", seconds: float = 3.0, **extra: Any) -> dict[str, Any]:
    """Stable Audio's decode of an empty latent: a sound `seconds` long (in whole latent frames)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "stable_audio_open_1.0.safetensors"}},
        "2": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": seconds, "batch_size": 1}},
        "3": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": save, "inputs": {"audio": ["3", 0], "filename_prefix": "peer/music", **extra}},
    }


def render_sound(client: ComfyUI, workflow: dict[str, Any]) -> FileRef:
    prompt_id = uuid.uuid4().hex
    client.submit(workflow, prompt_id=prompt_id, client_id=uuid.uuid4().hex)
    entry = ended(client, prompt_id, 30)
    assert succeeded(entry), entry["status"]
    # SaveAudio lists its files under "audio", not "images" (comfy_extras/nodes_audio.py).
    outputs: dict[str, Any] = dict(entry["outputs"])
    (ref,) = [f for out in outputs.values() for f in out.get("audio", [])]
    return FileRef(filename=ref["filename"], subfolder=ref["subfolder"], type=ref["type"])


@pytest.mark.parametrize(
    "save, extra, ext, mime",
    [
        ("SaveAudio", {}, ".flac", "audio/flac"),
        ("SaveAudioMP3", {"quality": "128k"}, ".mp3", "audio/mpeg"),
        ("SaveAudioOpus", {"quality": "64k"}, ".opus", "audio/ogg"),
    ],
)
def test_it_collects_each_kind_of_sound_a_node_saves_without_a_thumbnail(
    client: ComfyUI, tmp_path: Path, save: str, extra: dict[str, str], ext: str, mime: str
) -> None:
    ref = render_sound(client, music(save, 3.0, **extra))
    assert ref["filename"].endswith(ext)

    out = collect(client, ref, JOB, 2, media_root=tmp_path)

    assert out.path == f"renders/a1/{JOB}/02{ext}"
    assert (out.kind, out.mime, out.width, out.height, out.frames, out.thumbnail) == ("audio", mime, 0, 0, 0, "")
    assert files(tmp_path) == [out.path]  # a sound has no picture to thumbnail
    assert out.size == (tmp_path / out.path).stat().st_size
    # 64 latent frames of 2048 samples at 44.1 kHz; MP3 pads the end a little.
    assert out.duration == pytest.approx(64 * 2048 / 44100, abs=0.05)
    assert out.remote == f"peer/{ref['filename']} [output]"


def test_a_sound_named_as_another_is_refused_and_not_kept(sim: SimComfyUI, client: ComfyUI, tmp_path: Path) -> None:
    (sim.output_dir / "voice_00001_.flac").write_bytes(sound_bytes(".mp3"))
    ref: FileRef = {"filename": "voice_00001_.flac", "subfolder": "", "type": "output"}

    with pytest.raises(MediaError, match=r"holds MP3 data, not what its name \(\.flac\) says"):
        collect(client, ref, JOB, 0, media_root=tmp_path)
    assert not (tmp_path / "renders").exists() or files(tmp_path / "renders") == []


def test_collecting_again_replaces_the_copy(client: ComfyUI, tmp_path: Path) -> None:
    first = collect(client, render(client, "still_image", **{"1.color": 0xFF0000}), JOB, 0, media_root=tmp_path)
    second = collect(client, render(client, "still_image", **{"1.color": 0x0000FF}), JOB, 0, media_root=tmp_path)

    assert first.path == second.path
    assert files(tmp_path) == sorted([second.path, second.thumbnail])
    with Image.open(tmp_path / second.path) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("remote", ["../secret.png", "..", "a/b.png", "a\\b.png", "x\0.png"])
def test_it_refuses_a_remote_name_that_could_leave_the_folder(client: ComfyUI, tmp_path: Path, remote: str) -> None:
    with pytest.raises((ServiceError, MediaError), match="refusing"):
        collect(client, {"filename": remote, "subfolder": "", "type": "output"}, JOB, 0, media_root=tmp_path)
    assert files(tmp_path) == []


def test_it_refuses_an_output_of_a_kind_we_do_not_keep(sim: SimComfyUI, client: ComfyUI, tmp_path: Path) -> None:
    (sim.output_dir / "notes.html").write_text("<script>alert(1)</script>")

    with pytest.raises(MediaError, match=r"\.html files are not kept"):
        collect(client, {"filename": "notes.html", "subfolder": "", "type": "output"}, JOB, 0, media_root=tmp_path)
    assert files(tmp_path) == []


def test_a_missing_remote_file_is_a_clear_permanent_error(client: ComfyUI, tmp_path: Path) -> None:
    ref: FileRef = {"filename": "gone_00001_.mp4", "subfolder": "peer", "type": "output"}

    with pytest.raises(ServiceError, match="the output 'gone_00001_.mp4' is not on the node") as caught:
        collect(client, ref, JOB, 0, media_root=tmp_path)
    assert caught.value.permanent and caught.value.status == 404
    assert files(tmp_path) == []


def test_an_oversized_file_is_refused_and_leaves_nothing(client: ComfyUI, tmp_path: Path) -> None:
    ref = render(client, "video_mp4")

    with pytest.raises(ServiceError, match="file too large") as caught:
        collect(client, ref, JOB, 0, media_root=tmp_path, limit=1000)
    assert caught.value.permanent
    assert files(tmp_path) == []


def test_a_corrupt_output_is_refused_and_not_kept(sim: SimComfyUI, client: ComfyUI, tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, (64, 48), 12, 12)
    (sim.output_dir / "cut_00001_.mp4").write_bytes(good.read_bytes()[:600])

    with pytest.raises(MediaError, match="not a readable MP4/MOV file"):
        collect(client, {"filename": "cut_00001_.mp4", "subfolder": "", "type": "output"}, JOB, 0, media_root=tmp_path)
    assert not (tmp_path / "renders").exists() or files(tmp_path / "renders") == []


def test_a_corrupt_output_collected_again_leaves_nothing_of_the_earlier_copy(
    sim: SimComfyUI, client: ComfyUI, tmp_path: Path
) -> None:
    collect(client, render(client, "still_image"), JOB, 0, media_root=tmp_path)
    (sim.output_dir / "broken_00001_.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    broken: FileRef = {"filename": "broken_00001_.png", "subfolder": "", "type": "output"}

    with pytest.raises(MediaError, match=f"renders/a1/{JOB}/00.png: not a readable PNG file"):
        collect(client, broken, JOB, 0, media_root=tmp_path)
    assert files(tmp_path) == []


# Describing files made here.


def test_it_describes_a_gif_animation_and_a_large_jpeg(tmp_path: Path) -> None:
    gif = tmp_path / "a.gif"
    frames = [Image.new("RGB", (90, 30), (i * 40, 0, 0)) for i in range(5)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    jpeg = tmp_path / "b.jpg"
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(jpeg, quality=80)

    anim, photo = describe(gif, "a.gif"), describe(jpeg, "b.jpg")

    assert (anim.kind, anim.mime, anim.width, anim.height, anim.frames) == ("animation", "image/gif", 90, 30, 5)
    assert anim.duration == pytest.approx(0.5)
    assert (photo.kind, photo.mime, photo.width, photo.height, photo.frames) == ("image", "image/jpeg", 2000, 1000, 1)
    assert thumbnail_of(tmp_path, photo).size == (320, 160)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "CMYK"])
def test_it_thumbnails_unusual_image_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new(mode, (500, 400)).save(path)

    out = describe(path, path.name)

    assert thumbnail_of(tmp_path, out).size == (320, 256)


def test_it_describes_a_quicktime_movie(tmp_path: Path) -> None:
    path = tmp_path / "clip.mov"
    write_video(path, (96, 64), 30, 30)

    out = describe(path, "clip.mov")

    assert (out.kind, out.mime, out.width, out.height, out.frames) == ("video", "video/quicktime", 96, 64, 30)
    assert out.duration == pytest.approx(1.0, abs=0.05)
    assert thumbnail_of(tmp_path, out).size == (96, 64)


@pytest.mark.parametrize(
    "name, codec, fmt, mime",
    [
        ("line.wav", "pcm_s16le", "wav", "audio/wav"),
        ("line.flac", "flac", "flac", "audio/flac"),
        ("line.mp3", "libmp3lame", "mp3", "audio/mpeg"),
        ("line.ogg", "libopus", "ogg", "audio/ogg"),
        ("line.opus", "libopus", "opus", "audio/ogg"),
    ],
)
def test_it_describes_each_kind_of_sound_by_how_long_it_plays(
    tmp_path: Path, name: str, codec: str, fmt: str, mime: str
) -> None:
    path = tmp_path / name
    write_sound(path, 2.5, rate=48000, codec=codec, fmt=fmt)

    out = describe(path, name)

    assert (out.kind, out.mime, out.width, out.height, out.frames, out.thumbnail) == ("audio", mime, 0, 0, 0, "")
    assert out.duration == pytest.approx(2.5, abs=0.06)
    assert files(tmp_path) == [name]


def test_a_sound_cut_short_is_as_long_as_what_is_left(tmp_path: Path) -> None:
    whole = tmp_path / "whole.flac"
    write_sound(whole, 4.0, codec="flac")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    # FLAC's header says 4 s; the packets that are there play about half of that.
    assert describe(cut, "cut.flac").duration == pytest.approx(2.0, abs=0.5)


@pytest.mark.parametrize(
    "head, found",
    [
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x23", "mp3"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),  # an MPEG-1 layer III frame, no tag
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "wav"),
        (b"OggS\x00\x02" + bytes(20), "ogg"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),  # not an MPEG frame: JPEG's second byte differs
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", ""),  # AAC's ADTS header: layer 0
        (b"\xff\xfb\xf0\x64\x00", ""),  # the reserved bitrate
        (b"RIFF\x24\x08\x00\x00AVI LIST", ""),
    ],
)
def test_it_knows_sounds_by_their_first_bytes(head: bytes, found: str) -> None:
    assert sniff(head) == found


def png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    # Noise, so the file is not a few bytes of compressed nothing.
    Image.frombytes("RGB", size, random.Random(1).randbytes(size[0] * size[1] * 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("cut.png", png_bytes()[:5000], "not a readable PNG file"),
        ("noise.png", b"\x89PNG\r\n\x1a\n" + bytes(300), "not a readable PNG file"),
        ("empty.webp", b"", "holds no image, video or sound we know"),
        ("text.mp4", b"hello, I am not a video at all" * 10, "holds no image, video or sound we know"),
        ("fake.mp4", png_bytes(), r"holds PNG data, not what its name \(\.mp4\) says"),
        ("fake.png", b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(40), r"holds WEBP data, not what its name \(\.png\)"),
        ("cut.webm", b"\x1a\x45\xdf\xa3\x9fB\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04B\xf3\x81\x08B\x82\x84webm", "WEBM"),
        ("film.webm", b"\x1a\x45\xdf\xa3\x9fB\x82\x88matroska" + bytes(40), "holds MATROSKA data"),
        ("cut.gif", b"GIF89a\x10\x00\x10\x00", "not a readable GIF file"),
        ("fake.flac", sound_bytes(".wav"), r"holds WAV data, not what its name \(\.flac\) says"),
        ("fake.wav", sound_bytes(".flac"), r"holds FLAC data, not what its name \(\.wav\) says"),
        ("fake.mp3", png_bytes(), r"holds PNG data, not what its name \(\.mp3\) says"),
        ("fake.opus", sound_bytes(".mp3"), r"holds MP3 data, not what its name \(\.opus\) says"),
        ("fake.png", sound_bytes(".ogg"), r"holds OGG data, not what its name \(\.png\) says"),
        ("text.ogg", b"hello, I am not a sound at all" * 10, "holds no image, video or sound we know"),
        ("cut.flac", b"fLaC" + bytes(60), "not a readable FLAC file"),
        ("cut.mp3", sound_bytes(".mp3")[:200], "MP3"),
        ("mute.wav", silent_wav(), "the file has no sound that can be decoded"),
    ],
)
def test_a_corrupt_or_disguised_file_is_a_media_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(MediaError, match=message):
        describe(path, f"renders/x/{name}")
    assert files(tmp_path) == [name]  # no thumbnail left behind


def test_a_truncated_video_is_a_media_error(tmp_path: Path) -> None:
    good = tmp_path / "good.webm"
    write_video(good, (64, 48), 12, 12, codec="libvpx-vp9")
    cut = tmp_path / "cut.webm"
    cut.write_bytes(good.read_bytes()[:300])

    with pytest.raises(MediaError, match="renders/x/cut.webm: not a readable WEBM file") as caught:
        describe(cut, "renders/x/cut.webm")
    assert str(tmp_path) not in str(caught.value)
    assert not (tmp_path / "cut.webm.thumb.jpg").exists()
