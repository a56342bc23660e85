"""A batch's renders all at once: a contact sheet (one PNG of thumbnails, a grid's rows and columns
labelled) and a zip of the files, streamed.

Both take what a batch of 10,000 items can throw at them: the sheet draws at most MAX_SHEET_CELLS
cells on a canvas of bounded size, and the zip is written as it is sent, a chunk at a time.

    return HttpResponse(contact_sheet(cells, columns=10), content_type="image/png")
    return StreamingHttpResponse(zip_stream(files), content_type="application/zip")
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageDraw, ImageFont, ImageOps

from renders.media import inside

MAX_SHEET_CELLS = 400
MAX_SIDE = 16384  # pixels, either side of the sheet
# Well above a full sheet of 256-pixel thumbnails (30 Mpx); a sheet of big thumbnails shrinks them
# rather than take gigabytes to draw (this is 144 MB as RGB).
MAX_SHEET_PIXELS = 48_000_000
# A source image (after a JPEG's draft) is decoded whole before it is shrunk: 8192 × 8192 RGBA is 256 MB.
MAX_SOURCE_PIXELS = 8192 * 8192
MIN_THUMB = 16
LABEL_WIDTH = 200  # pixels at most for the row labels; longer ones are cut short
PAD = 8
BACKGROUND = (240, 240, 240)
PLACEHOLDER = (200, 200, 200)
INK = (40, 40, 40)
# Only formats our outputs and thumbnails come in: Pillow would otherwise try every decoder it has
# (EPS even runs Ghostscript) on whatever a path names.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

ZIP_CHUNK = 1024 * 1024
MISSING = "MISSING.txt"
# Names Windows will not create, whatever the extension.
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


@dataclass(frozen=True)
class Cell:
    path: str  # relative to the media folder; "" for an item with nothing rendered yet
    caption: str = ""


# --- contact sheets --------------------------------------------------------------------------------


def contact_sheet(
    cells: Sequence[Cell],
    *,
    columns: int,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    title: str = "",
    thumb: int = 256,
    media_root: Path | None = None,
) -> bytes:
    """A PNG of the cells' images, `columns` to a row, each fitted into `thumb` pixels square with
    its caption under it. An image that is missing, unreadable or outside the media folder shows as
    a grey "not rendered" cell: this raises only for `columns` < 1. Past MAX_SHEET_CELLS cells the
    rest are left out (the title says so); thumbnails shrink to keep the sheet within MAX_SIDE
    pixels a side and MAX_SHEET_PIXELS in all."""
    from django.conf import settings

    if columns < 1:
        raise ValueError(f"a contact sheet needs at least one column, not {columns}")
    root = Path(media_root or settings.MEDIA_ROOT)
    total = len(cells)
    cells = cells[:MAX_SHEET_CELLS]
    if total > len(cells):
        cut = f"first {len(cells)} of {total:,}"
        title = f"{title} — {cut}" if title else cut
    columns = min(columns, max(1, len(cells)))  # no empty columns
    rows = math.ceil(len(cells) / columns)
    row_labels = [" ".join(label.split()) for label in row_labels[:rows]]

    line = line_height()
    left = PAD
    if any(row_labels):
        left += min(LABEL_WIDTH, math.ceil(max(font().getlength(label) for label in row_labels))) + PAD
    top = PAD + (line if title else 0) + (line if column_labels else 0)

    def size(thumb: int) -> tuple[int, int]:
        return left + columns * (thumb + PAD), top + rows * (thumb + line + PAD)

    across = (MAX_SIDE - left) // columns - PAD
    down = (MAX_SIDE - top) // max(rows, 1) - line - PAD
    thumb = max(MIN_THUMB, min(thumb, across, down))
    while thumb > MIN_THUMB and math.prod(size(thumb)) > MAX_SHEET_PIXELS:
        thumb = max(MIN_THUMB, thumb - max(1, thumb // 16))
    # MIN_THUMB may not fit a long row label and a long column; then the last cells are cut off.
    width, height = (min(side, MAX_SIDE) for side in size(thumb))

    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = PAD
    if title:
        draw.text((PAD, y), fitted(title, width - 2 * PAD), fill=INK, font=font())
        y += line
    for column, label in enumerate(column_labels[:columns]):
        text(draw, label, left + column * (thumb + PAD), y, thumb)
    for row, label in enumerate(row_labels):
        y = top + row * (thumb + line + PAD) + (thumb - line) // 2
        draw.text((PAD, y), fitted(label, left - 2 * PAD), fill=INK, font=font())

    missing = Image.new("RGB", (thumb, thumb), PLACEHOLDER)
    text(ImageDraw.Draw(missing), "not rendered", 0, (thumb - line) // 2, thumb)
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        x, y = left + column * (thumb + PAD), top + row * (thumb + line + PAD)
        picture = load(root, cell.path, thumb) or missing
        sheet.paste(picture, (x + (thumb - picture.width) // 2, y + (thumb - picture.height) // 2))
        text(draw, cell.caption, x, y + thumb + 2, thumb)

    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()


@functools.cache
def font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def line_height() -> int:
    return int(font().getbbox("Ag")[3]) + 4


def fitted(text: str, width: int) -> str:
    """`text` on one line, cut short with an ellipsis to fit in `width` pixels."""
    text = " ".join(text.split())
    if font().getlength(text) <= width:
        return text
    # The longest prefix that fits, found by bisection: a caption may be a 5000-character prompt.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if font().getlength(text[:middle] + "…") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "…" if low else ""


def text(draw: ImageDraw.ImageDraw, words: str, x: int, y: int, width: int) -> None:
    """Draw `words` centred over `width` pixels from x."""
    words = fitted(words, width)
    if words:
        draw.text((x + (width - font().getlength(words)) // 2, y), words, fill=INK, font=font())


def load(root: Path, relative: str, size: int) -> Image.Image | None:
    """The image at `relative` under `root` fitted into `size` pixels square, or None when there is
    none to show."""
    if not relative:
        return None
    try:
        path = inside(root, relative)
        if path is None or not path.is_file():
            return None
        with Image.open(path, formats=FORMATS) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))  # decodes at 1/2, 1/4 or 1/8 scale: a big JPEG costs little
            if img.width * img.height > MAX_SOURCE_PIXELS:
                return None
            # An animation opens on its first frame, and loading decodes only that one.
            return fit(img, size)
    except Exception:
        # Decoders of files from another machine fail in many ways (OSError, SyntaxError, EOFError,
        # struct.error, DecompressionBombError …): each means nothing to show. So does a path with a
        # NUL byte in it (ValueError) or a folder we may not read (PermissionError).
        return None


def fit(img: Image.Image, size: int) -> Image.Image:
    if img.mode in ("1", "P", "PA"):
        img = img.convert("RGBA")  # palette images would be resized without smoothing
    elif img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    img.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    img = ImageOps.exif_transpose(img)
    if "A" in img.getbands():
        # Transparent areas show as the sheet's background, not as whatever colour they happen to hold.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    return img.convert("RGB")


# --- zip archives ----------------------------------------------------------------------------------


class Pipe:
    """A write-only file for ZipFile: what it is written is taken away with take(). Having no
    tell() or seek(), it makes ZipFile write each entry's sizes after its data."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes, /) -> int:
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data.clear()
        return data


def zip_stream(files: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """A zip archive of `files` (name in the archive, path on disk), produced a piece at a time:
    no piece holds much more than ZIP_CHUNK bytes, and `files` is read as the archive goes. Names
    are made safe and unique (a, a-2, a-3). A file that cannot be read is left out and named in a
    MISSING.txt at the end of the archive."""
    pipe = Pipe()
    used = {MISSING.lower()}  # kept for the list of files left out
    missing: list[str] = []
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as archive:
        for name, path in files:
            name = safe_name(name)
            source = open_file(Path(path))
            if source is None:
                missing.append(name)
                continue
            with source:
                info = entry(unique(name, used), os.fstat(source.fileno()))
                # Sizes are unknown until the end (the file may grow): always allow a zip64 entry.
                with archive.open(info, "w", force_zip64=True) as out:
                    while True:
                        try:
                            chunk = source.read(ZIP_CHUNK)
                        except OSError:
                            missing.append(f"{info.filename} (cut short: reading it failed)")
                            break
                        if not chunk:
                            break
                        out.write(chunk)
                        yield pipe.take()
            if pipe.data:
                yield pipe.take()
        if missing:
            listing = "These files could not be read when the archive was made:\n\n" + "\n".join(missing) + "\n"
            archive.writestr(entry(MISSING, None), listing)
    yield pipe.take()


def open_file(path: Path) -> BinaryIO | None:
    try:
        # A FIFO or a device under the path would block or never end.
        return open(path, "rb") if path.is_file() else None
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None


def entry(name: str, st: os.stat_result | None) -> zipfile.ZipInfo:
    when = time.localtime(st.st_mtime if st else None)
    stamp = (when.tm_year, when.tm_mon, when.tm_mday, when.tm_hour, when.tm_min, when.tm_sec)
    # ZIP keeps the years 1980 to 2107 only.
    stamp = max(min(stamp, (2107, 12, 31, 23, 59, 58)), (1980, 1, 1, 0, 0, 0))
    info = zipfile.ZipInfo(name, stamp)
    info.compress_type = zipfile.ZIP_STORED  # images and videos are compressed already
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def safe_name(name: str) -> str:
    """A plain file name from `name`: no folders, no leading dots, nothing but letters, digits and
    `._- ` (the rest become `_`), not a Windows device name."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(". ")
    stem, ext = os.path.splitext(base)
    if stem.upper() in WINDOWS_DEVICES:
        stem = "_" + stem
    stem, ext = stem[:150].rstrip(". "), ext[:20]
    return (stem or "file") + ext


def unique(name: str, used: set[str]) -> str:
    """`name`, or name-2, name-3 … when it is taken; ignoring case, as Windows and macOS do."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{stem}-{n}{ext}"
    used.add(candidate.lower())
    return candidate
