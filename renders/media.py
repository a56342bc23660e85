"""Render outputs in our media folder: copied off a node under names we choose, looked at, thumbnailed
(pictures; a sound has no thumbnail).

A ComfyUI output is data from another machine. Its file name only ever picks the extension (from a
short list) and is sent back to the node as a query parameter; the content is checked to be what the
extension says before anything is served from MEDIA_ROOT.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image, ImageOps

from nodes.clients import ServiceError
from nodes.clients.comfyui import DOWNLOAD_LIMIT, ComfyUI, FileRef

Kind = Literal["image", "video", "animation", "audio"]
THUMBNAIL_SIZE = 320
MAX_INPUT = 50 * 1024 * 1024  # an input image sent to a node
MAX_INPUT_VIDEO = 100 * 1024 * 1024  # an input video sent to a node (ComfyUI's own upload limit)
IMAGE_INPUTS = (".png", ".jpg", ".jpeg", ".webp")  # the suffixes an uploaded input keeps; else the first
VIDEO_INPUTS = (".mp4", ".webm", ".mov")
THUMBNAIL_SUFFIX = ".thumb.jpg"
JOB_CODE = re.compile(r"[A-Za-z0-9_-]{2,64}")


class MediaError(ValueError):
    """An output we will not keep: a refused name, or a file that is not the image, video or sound it
    claims."""


class Format(NamedTuple):
    kind: Literal["image", "video", "audio"]  # an image with several frames is an animation
    signature: str  # what sniff() must find in the file
    mime: str


# The outputs we keep, by extension; anything else is refused.
EXTENSIONS: dict[str, Format] = {
    ".png": Format("image", "png", "image/png"),
    ".jpg": Format("image", "jpeg", "image/jpeg"),
    ".jpeg": Format("image", "jpeg", "image/jpeg"),
    ".webp": Format("image", "webp", "image/webp"),
    ".gif": Format("image", "gif", "image/gif"),
    ".mp4": Format("video", "isobmff", "video/mp4"),
    ".mov": Format("video", "isobmff", "video/quicktime"),
    ".webm": Format("video", "webm", "video/webm"),
    # ComfyUI's SaveAudio writes FLAC, SaveAudioMP3 MP3 and SaveAudioOpus Opus in an Ogg file (.opus).
    ".flac": Format("audio", "flac", "audio/flac"),
    ".mp3": Format("audio", "mp3", "audio/mpeg"),
    ".wav": Format("audio", "wav", "audio/wav"),
    ".ogg": Format("audio", "ogg", "audio/ogg"),
    ".opus": Format("audio", "ogg", "audio/ogg"),
}
# Format signatures in words, for error messages.
LABELS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "gif": "GIF",
    "webp": "WEBP",
    "isobmff": "MP4/MOV",
    "webm": "WEBM",
    "flac": "FLAC",
    "mp3": "MP3",
    "wav": "WAV",
    "ogg": "OGG",
}


@dataclass
class Output:
    path: str  # relative to MEDIA_ROOT
    kind: Kind
    mime: str
    size: int  # bytes
    width: int
    height: int
    frames: int
    duration: float | None  # seconds; None for a still image
    # Relative to MEDIA_ROOT, a JPEG at most THUMBNAIL_SIZE on the long side; "" for a sound, which
    # has no picture (nor width, height or frames: 0).
    thumbnail: str
    # Where the node that made it keeps it, as its loaders take a file of the output folder
    # ("sub/name.png [output]"): a later job on that node loads it from there, with no upload.
    # Only ever sent back to that node, never a local path.
    remote: str = ""


def inside(root: Path, relative: str) -> Path | None:
    """`relative` as a path under `root`, or None if it would leave it (`..`, an absolute path)."""
    base = root.resolve()
    path = (base / relative).resolve()
    return path if path.is_relative_to(base) and path != base else None


def forget(outputs: list[dict[str, object]], media_root: Path | None = None) -> None:
    """Delete a job's output files and their thumbnails (only inside the media folder)."""
    from django.conf import settings

    root = Path(media_root or settings.MEDIA_ROOT)
    for out in outputs:
        for key in ("path", "thumbnail"):
            path = inside(root, str(out.get(key) or ""))
            if path is not None and path.is_file():
                path.unlink(missing_ok=True)


def extension(remote_filename: str) -> str:
    """The lowercased extension of a remote name, if it is one we keep."""
    base = remote_filename.replace("\\", "/").rsplit("/", 1)[-1]
    ext = os.path.splitext(base)[1].lower()
    if ext not in EXTENSIONS:
        allowed = ", ".join(sorted(EXTENSIONS))
        what = f"{ext} files" if ext else "a file without an extension"
        raise MediaError(f"refusing the output {remote_filename[:100]!r}: {what} are not kept (only {allowed})")
    return ext


def local_name(job_code: str, index: int, remote_filename: str) -> str:
    """Our name for a job's index-th output, relative to MEDIA_ROOT. Only the extension comes from
    the node."""
    if not JOB_CODE.fullmatch(job_code):
        raise ValueError(f"not a job code: {job_code[:100]!r}")
    if index < 0:
        raise ValueError(f"an output index cannot be negative ({index})")
    return f"renders/{job_code[:2]}/{job_code}/{index:02d}{extension(remote_filename)}"


def collect(
    client: ComfyUI, ref: FileRef, job_code: str, index: int, *, media_root: Path, limit: int = DOWNLOAD_LIMIT
) -> Output:
    """Copy one output off the node into media_root and describe it. Collecting the same output again
    replaces the copy. Raises ServiceError when the download fails (status 404: the node no longer has
    the file) and MediaError when the name or the content is refused; neither leaves a file behind."""
    relative = local_name(job_code, index, ref["filename"])
    dest = Path(media_root) / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # download() writes a temporary file and renames it only once complete.
        client.download(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"), dest, limit=limit)
    except ServiceError as e:
        if e.status == 404:
            raise ServiceError(
                f"{client.base_url}: the output {ref['filename']!r} is not on the node (deleted, or the node's "
                "output folder was cleaned)",
                permanent=True,
                status=404,
            ) from e
        raise
    try:
        out = describe(dest, relative)
    except MediaError:
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + THUMBNAIL_SUFFIX).unlink(missing_ok=True)  # from an earlier copy
        raise
    if ref.get("type", "output") == "output":
        name = f"{ref['subfolder']}/{ref['filename']}" if ref.get("subfolder") else ref["filename"]
        out.remote = f"{name} [output]"
    return out


def describe(path: Path, relative: str) -> Output:
    """What the file at `path` (known to users as `relative`) holds, after checking that its content
    is what its extension says; writes its thumbnail next to it (a picture's, not a sound's)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise MediaError(f"{relative}: {ext or 'no extension'} is not an output type we keep")
    fmt = EXTENSIONS[ext]
    try:
        with path.open("rb") as f:
            head = f.read(64)
        size = path.stat().st_size
    except OSError as e:
        raise MediaError(f"{relative}: cannot read the file ({e.strerror or e})") from e
    found = sniff(head, ext)
    if found != fmt.signature:
        holds = f"{LABELS.get(found, found.upper())} data" if found else "no image, video or sound we know"
        raise MediaError(f"{relative}: the file holds {holds}, not what its name ({ext}) says")
    try:
        if fmt.kind == "audio":
            kind, width, height, frames, duration, first = read_audio(path)
        elif fmt.kind == "video":
            kind, width, height, frames, duration, first = read_video(path)
        else:
            kind, width, height, frames, duration, first = read_image(path)
    except MediaError as e:
        raise MediaError(f"{relative}: {e}") from e
    except Exception as e:
        # Decoders of untrusted files fail in many ways (OSError, SyntaxError, EOFError, struct.error,
        # av's FFmpegError, ZeroDivisionError on nonsense headers …): every one means "unreadable".
        detail = str(e).replace(str(path), relative)  # users see our relative names, not server paths
        label = LABELS[fmt.signature]
        raise MediaError(f"{relative}: not a readable {label} file ({type(e).__name__}: {detail})") from e
    thumbnail = ""
    if first is not None:
        thumbnail = relative + THUMBNAIL_SUFFIX
        try:
            save_jpeg(first, path.with_name(path.name + THUMBNAIL_SUFFIX))
        except OSError as e:
            raise MediaError(f"{relative}: cannot write its thumbnail ({e.strerror or e})") from e
    return Output(
        path=relative,
        kind=kind,
        mime=fmt.mime,
        size=size,
        width=width,
        height=height,
        frames=frames,
        duration=duration,
        thumbnail=thumbnail,
    )


def sniff(head: bytes, ext: str = "") -> str:
    """The format the first bytes of a file announce: a Format.signature, or "" when unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "isobmff"
    # Old QuickTime files may start with another atom than ftyp.
    if ext == ".mov" and head[4:8] in (b"moov", b"wide", b"mdat", b"free", b"skip"):
        return "isobmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML; the DocType element (0x4282) says webm or matroska.
        return "webm" if b"\x42\x82\x84webm" in head else "matroska"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"  # Vorbis or Opus; a .opus file is an Ogg file too
    if head.startswith(b"ID3") or mpeg_audio_frame(head):
        return "mp3"  # FFmpeg's MP3 muxer (SaveAudioMP3) starts with an ID3v2 tag
    return ""


def mpeg_audio_frame(head: bytes) -> bool:
    """Whether the bytes start with an MPEG audio frame header: 11 sync bits, then a version, a
    layer and a bitrate that are not the reserved values (AAC's ADTS header has layer 0)."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate = (head[1] >> 3) & 3, (head[1] >> 1) & 3, head[2] >> 4
    return version != 1 and layer != 0 and bitrate != 15


# kind, width, height, frames, duration, and the first frame made ready for a thumbnail (None: a sound)
Facts = tuple[Kind, int, int, int, float | None, Image.Image | None]


def read_image(path: Path) -> Facts:
    with Image.open(path) as img:
        width, height = img.size
        frames = int(getattr(img, "n_frames", 1))
        duration = None
        if frames > 1:
            # Decode every frame: WEBP tells a frame's duration only once it is loaded, and a file cut
            # short shows here rather than in the user's browser.
            total = 0
            for i in range(frames):
                img.seek(i)
                img.load()
                total += int(img.info.get("duration") or 0)
            duration = total / 1000
            img.seek(0)
        img.load()
        first = thumbnail_image(img)
    return ("animation" if frames > 1 else "image"), width, height, frames, duration, first


def read_video(path: Path) -> Facts:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError("the file has no video stream")
        stream: VideoStream = container.streams.video[0]
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        frame = next(container.decode(stream), None)
        if frame is None:
            raise MediaError("the video has no frames")
        width = stream.codec_context.width or frame.width
        height = stream.codec_context.height or frame.height
        first = thumbnail_image(frame.to_image())
        frames = stream.frames
        if not frames:
            # WEBM (Matroska) does not store a frame count: count the packets, without decoding.
            container.seek(0)
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        if duration is None and stream.average_rate:
            duration = float(frames / Fraction(stream.average_rate))
    return "video", width, height, frames, duration, first


def read_audio(path: Path) -> Facts:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError("the file has no audio stream")
        stream: AudioStream = container.streams.audio[0]
        # It plays until its last packet ends: a header's length is a promise that a file cut short
        # does not keep, and an MP3 may have no header that says. Decoding goes only as far as the
        # first sound, so a long file costs a read, not a decode.
        end, sound = 0, False
        for packet in container.demux(stream):
            if not packet.size:
                continue
            sound = sound or bool(stream.codec_context.decode(packet))
            if packet.pts is not None:
                end = max(end, packet.pts + (packet.duration or 0))
        sound = sound or bool(stream.codec_context.decode(None))  # what the decoder still holds
        if not sound:
            raise MediaError("the file has no sound that can be decoded")
        duration: float | None = None
        if end and stream.time_base is not None:
            duration = float(end * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
    return "audio", 0, 0, 0, duration, None


def thumbnail_image(img: Image.Image) -> Image.Image:
    """An RGB copy at most THUMBNAIL_SIZE on the long side."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        # Transparent areas show as light grey, not as whatever colour they happen to hold.
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (235, 235, 235, 255)), rgba)
    # Shrink by whole factors first (cheap), then resample the rest: a big frame costs little.
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img.convert("RGB")


def save_jpeg(img: Image.Image, dest: Path) -> None:
    """Written whole or not at all."""
    fd, partial = tempfile.mkstemp(dir=dest.parent, prefix=".part-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as out:
            img.save(out, "JPEG", quality=85)
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


# --- input images --------------------------------------------------------------------------------

INPUTS = "inputs"  # the folder under MEDIA_ROOT where uploaded input images are kept
MAX_INPUT_PIXELS = 8192 * 8192


def keep_input(data: bytes, media_root: Path | None = None) -> str:
    """An uploaded input image checked and kept under a name of ours, as PNG (whatever the browser
    called it or claimed it was); its path relative to the media folder. MediaError says what is
    wrong with it."""
    import io
    import uuid

    from django.conf import settings

    if len(data) > MAX_INPUT:
        raise MediaError(f"The image is over {MAX_INPUT // 1048576} MB; send a smaller one.")
    if sniff(data[:64]) not in ("png", "jpeg", "webp", "gif"):
        raise MediaError("That is not a PNG, JPEG, WEBP or GIF image.")
    picture = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height <= MAX_INPUT_PIXELS:  # decoded only when it is not a decompression bomb
                picture = ImageOps.exif_transpose(img).convert("RGBA" if "A" in img.getbands() else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"The image could not be read ({e}); save it again as PNG or JPEG.") from None
    if picture is None:
        raise MediaError(f"The image is {width} × {height} pixels; at most 8192 × 8192 are taken.")
    relative = f"{INPUTS}/{uuid.uuid4().hex}.png"
    path = Path(media_root or settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    picture.save(partial, format="PNG")
    os.replace(partial, path)  # whole or not at all: a job never sends half an image
    return relative


def kept_input(relative: str, media_root: Path | None = None) -> bool:
    """Whether `relative` names a still image in the media folder, as an input image: one
    keep_input() kept, or a finished render."""
    from django.conf import settings

    if Path(relative).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        return False
    path = inside(Path(media_root or settings.MEDIA_ROOT), relative)
    return path is not None and path.is_file()


MUSIC_SUFFIXES = (".mp3", ".wav", ".ogg", ".flac", ".m4a", ".aac", ".opus")
MAX_MUSIC = 100 * 1024 * 1024  # bytes of an uploaded music track
MAX_MUSIC_SECONDS = 3 * 3600


def keep_music(data: bytes, filename: str, media_root: Path | None = None) -> str:
    """An uploaded music track checked (an audio stream FFmpeg decodes, of a sane length) and kept
    under a name of ours; its path relative to the media folder. MediaError says what is wrong."""
    import io
    import uuid

    from django.conf import settings

    suffix = Path(filename).suffix.lower()
    if suffix not in MUSIC_SUFFIXES:
        raise MediaError(f"Send the music as {', '.join(s[1:].upper() for s in MUSIC_SUFFIXES)}.")
    if len(data) > MAX_MUSIC:
        raise MediaError(f"The music is over {MAX_MUSIC // 1048576} MB; send a shorter or smaller file.")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise MediaError("That file has no sound in it.")
            stream = container.streams.audio[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            if not seconds and container.duration:
                seconds = container.duration / 1_000_000
            decoded = next(container.decode(stream), None)
    except MediaError:
        raise
    except Exception as e:  # a decoder of an untrusted file fails in many ways: each means unreadable
        raise MediaError(f"The music could not be read ({type(e).__name__}); save it again as MP3 or WAV.") from None
    if decoded is None:
        raise MediaError("The music has no sound that could be decoded; save it again as MP3 or WAV.")
    if seconds > MAX_MUSIC_SECONDS:
        hours = MAX_MUSIC_SECONDS // 3600
        raise MediaError(f"The music is {seconds / 3600:.1f} hours long; at most {hours} are taken.")
    relative = f"{INPUTS}/music-{uuid.uuid4().hex}{suffix}"
    path = Path(media_root or settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, path)
    return relative
