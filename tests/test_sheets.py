"""A batch's renders at once: contact sheets drawn from files in the media folder, and zips streamed
a chunk at a time."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from renders import sheets
from renders.sheets import MAX_SHEET_CELLS, MAX_SIDE, PAD, PLACEHOLDER, Cell, contact_sheet, zip_stream

RED = (255, 0, 0)
BLUE = (0, 0, 255)
BACKGROUND = sheets.BACKGROUND
MiB = 1024 * 1024


def picture(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = RED) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def opened(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    return img.convert("RGB")


def near(pixel: object, color: tuple[int, int, int], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=True))


def cell_corner(column: int, thumb: int) -> tuple[int, int]:
    """The top left of a cell in the first row of a sheet without labels or title."""
    return PAD + column * (thumb + PAD), PAD


def size_of(cells: list[Cell], tmp_path: Path, **options: Any) -> tuple[int, int]:
    return opened(contact_sheet(cells, media_root=tmp_path, **options)).size


# --- contact sheets --------------------------------------------------------------------------------


def test_a_sheet_has_the_asked_columns_and_as_many_rows_as_the_cells_need(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    cells = [Cell("a.png", f"seed {1000 + i}") for i in range(7)]

    three = size_of(cells[:3], tmp_path, columns=3, thumb=64)
    six = size_of(cells[:6], tmp_path, columns=3, thumb=64)
    seven = size_of(cells, tmp_path, columns=3, thumb=64)

    assert three[0] == six[0] == seven[0] == PAD + 3 * (64 + PAD)
    row = six[1] - three[1]
    assert row > 64
    assert seven[1] == three[1] + 2 * row
    # No empty columns when there are fewer cells than columns.
    assert size_of(cells[:2], tmp_path, columns=5, thumb=64)[0] == PAD + 2 * (64 + PAD)


def test_images_keep_their_shape_centred_in_their_cell(tmp_path: Path) -> None:
    picture(tmp_path / "wide.png", (200, 100), RED)
    picture(tmp_path / "renders" / "tall.jpg", (1200, 2400), BLUE)  # a big JPEG, decoded at a fraction

    sheet = opened(
        contact_sheet([Cell("wide.png"), Cell("renders/tall.jpg")], columns=2, thumb=64, media_root=tmp_path)
    )

    x, y = cell_corner(0, 64)
    assert near(sheet.getpixel((x + 32, y + 32)), RED)
    assert sheet.getpixel((x + 32, y + 4)) == BACKGROUND  # the 64 × 32 image starts 16 pixels down
    x, y = cell_corner(1, 64)
    assert near(sheet.getpixel((x + 32, y + 32)), BLUE)
    assert sheet.getpixel((x + 4, y + 32)) == BACKGROUND


def test_an_animation_shows_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (48, 48), color) for color in (RED, BLUE, BLUE)]
    frames[0].save(tmp_path / "clip.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)

    sheet = opened(contact_sheet([Cell("clip.webp"), Cell("clip.gif")], columns=2, thumb=48, media_root=tmp_path))

    for column in (0, 1):
        x, y = cell_corner(column, 48)
        assert near(sheet.getpixel((x + 24, y + 24)), RED)


def test_a_transparent_image_shows_the_background_through(tmp_path: Path) -> None:
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "clear.png")

    sheet = opened(contact_sheet([Cell("clear.png")], columns=1, thumb=32, media_root=tmp_path))

    assert sheet.getpixel((PAD + 16, PAD + 16)) == BACKGROUND


def test_anything_but_an_image_inside_the_media_folder_shows_as_not_rendered(tmp_path: Path) -> None:
    media = tmp_path / "media"
    picture(media / "real.png")
    picture(tmp_path / "secret.png")  # next to the media folder, not in it
    (media / "notes.png").write_text("not an image at all")
    (media / "cut.png").write_bytes((media / "real.png").read_bytes()[:60])
    (media / "folder.png").mkdir()
    (media / "link.png").symlink_to(tmp_path / "secret.png")
    paths = [
        "real.png",
        "",
        "gone.png",
        "../../etc/passwd",
        "../secret.png",
        str(tmp_path / "secret.png"),
        "link.png",
        "notes.png",
        "cut.png",
        "folder.png",
        "nul\0.png",
    ]

    sheet = opened(contact_sheet([Cell(p, p) for p in paths], columns=len(paths), thumb=32, media_root=media))

    assert near(sheet.getpixel((PAD + 16, PAD + 16)), RED)
    for column in range(1, len(paths)):
        x, y = cell_corner(column, 32)
        assert sheet.getpixel((x + 1, y + 1)) == PLACEHOLDER, paths[column]
        assert not near(sheet.getpixel((x + 16, y + 16)), RED), paths[column]


def test_an_image_too_big_to_decode_shows_as_not_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picture(tmp_path / "bomb.png", (64, 64))
    picture(tmp_path / "huge.png", (64, 64))
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; we refuse to decode any over MAX_SOURCE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "bomb.png")
    png = contact_sheet([Cell("bomb.png")], columns=1, thumb=32, media_root=tmp_path)
    monkeypatch.undo()
    assert opened(png).getpixel((PAD + 1, PAD + 1)) == PLACEHOLDER

    monkeypatch.setattr(sheets, "MAX_SOURCE_PIXELS", 4000)
    sheet = opened(contact_sheet([Cell("huge.png")], columns=1, thumb=32, media_root=tmp_path))
    assert sheet.getpixel((PAD + 1, PAD + 1)) == PLACEHOLDER


def test_labels_and_a_title_make_room_for_themselves(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    cells = [Cell("a.png", f"cfg {cfg}") for cfg in (4, 6, 8) for steps in (20, 30)]
    grid = {"columns": 2, "thumb": 64}

    plain = size_of(cells, tmp_path, **grid)
    with_columns = size_of(cells, tmp_path, column_labels=["steps 20", "steps 30"], **grid)
    with_rows = size_of(cells, tmp_path, row_labels=["cfg 4", "cfg 6", "cfg 8"], **grid)
    with_title = size_of(cells, tmp_path, title="a lighthouse", **grid)
    everything = size_of(
        cells, tmp_path, title="a lighthouse", column_labels=["20", "30"], row_labels=["4", "6", "8"], **grid
    )

    assert with_columns[0] == plain[0] and with_columns[1] > plain[1]
    assert with_rows[0] > plain[0] and with_rows[1] == plain[1]
    assert with_title[0] == plain[0] and with_title[1] > plain[1]
    assert everything[0] > plain[0] and everything[1] > with_title[1]
    # A very long row label is cut short instead of pushing the grid off the sheet.
    long_rows = size_of(cells, tmp_path, row_labels=["x" * 5000], **grid)
    assert long_rows[0] <= plain[0] + sheets.LABEL_WIDTH + PAD


def test_long_and_odd_captions_are_drawn_on_one_line(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    odd = ["a lighthouse " * 500, "line one\nline two\ttab", "灯台 🌊 ünïcödé", "", " "]
    cells = [Cell("a.png", caption) for caption in odd]

    assert size_of(cells, tmp_path, columns=5, thumb=64) == size_of(
        [Cell("a.png", "x")] * 5, tmp_path, columns=5, thumb=64
    )
    assert sheets.fitted("a lighthouse " * 500, 100).endswith("…")
    assert sheets.font().getlength(sheets.fitted("a lighthouse " * 500, 100)) <= 100


def test_past_400_cells_the_rest_are_left_out_and_the_title_says_so(tmp_path: Path) -> None:
    cells = [Cell(f"{i}.png", f"seed {i}") for i in range(MAX_SHEET_CELLS + 50)]

    cut = size_of(cells, tmp_path, columns=40, thumb=16)

    # The same sheet as the first 400 with a title line ("first 400 of 450").
    assert cut == size_of(cells[:MAX_SHEET_CELLS], tmp_path, columns=40, thumb=16, title="x")
    assert cut != size_of(cells[:MAX_SHEET_CELLS], tmp_path, columns=40, thumb=16)


def test_thumbnails_shrink_to_keep_the_sheet_within_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cells = [Cell("", f"seed {i}") for i in range(MAX_SHEET_CELLS)]

    tall = size_of(cells, tmp_path, columns=1, thumb=256, title="one long column")
    wide = size_of(cells, tmp_path, columns=MAX_SHEET_CELLS, thumb=256, column_labels=["c"] * MAX_SHEET_CELLS)

    assert tall[1] <= MAX_SIDE and tall[0] < 256
    assert wide[0] <= MAX_SIDE and wide[1] < 256
    monkeypatch.setattr(sheets, "MAX_SHEET_PIXELS", 1_000_000)
    width, height = size_of(cells[:4], tmp_path, columns=2, thumb=2048)
    assert width * height <= 1_000_000 and width > 600


def test_the_media_folder_is_settings_media_root_unless_given(tmp_path: Path, settings: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    picture(tmp_path / "renders" / "a.png")

    sheet = opened(contact_sheet([Cell("renders/a.png")], columns=1, thumb=32))

    assert near(sheet.getpixel((PAD + 16, PAD + 16)), RED)


def test_a_sheet_needs_a_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one column"):
        contact_sheet([Cell("a.png")], columns=0, media_root=tmp_path)


def test_an_empty_batch_gives_an_empty_sheet(tmp_path: Path) -> None:
    assert opened(contact_sheet([], columns=4, title="nothing yet", media_root=tmp_path)).width > 0


# --- zip archives ----------------------------------------------------------------------------------


def unzipped(chunks: Iterable[bytes]) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None  # every entry's CRC matches its bytes
    return archive


def test_the_zip_holds_every_file_under_its_name(tmp_path: Path) -> None:
    (tmp_path / "00.png").write_bytes(b"png bytes")
    (tmp_path / "01.webp").write_bytes(b"webp bytes" * 1000)
    (tmp_path / "empty.txt").write_bytes(b"")

    archive = unzipped(
        zip_stream(
            [
                ("seed-1004.png", tmp_path / "00.png"),
                ("seed-1005.webp", tmp_path / "01.webp"),
                ("empty.txt", tmp_path / "empty.txt"),
            ]
        )
    )

    assert archive.namelist() == ["seed-1004.png", "seed-1005.webp", "empty.txt"]
    assert archive.read("seed-1004.png") == b"png bytes"
    assert archive.read("seed-1005.webp") == b"webp bytes" * 1000
    assert archive.read("empty.txt") == b""
    assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_an_empty_zip_is_still_a_zip() -> None:
    assert unzipped(zip_stream([])).namelist() == []


def test_repeated_names_get_a_number(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(b"%d" % i)

    archive = unzipped(
        zip_stream(
            [
                ("out.png", tmp_path / "0.png"),
                ("out.png", tmp_path / "1.png"),
                ("OUT.png", tmp_path / "2.png"),
                ("out-2.png", tmp_path / "3.png"),
            ]
        )
    )

    assert archive.namelist() == ["out.png", "out-2.png", "OUT-3.png", "out-2-2.png"]
    assert [archive.read(name) for name in archive.namelist()] == [b"0", b"1", b"2", b"3"]


def test_names_in_the_zip_stay_in_its_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    names = [
        "../../etc/passwd",
        "/root/.ssh/id_rsa",
        "C:\\Windows\\evil.dll",
        "..",
        "",
        ".hidden",
        "a lighthouse: ünïcödé?*.png",
        "CON.txt",
        "MISSING.txt",
        "x" * 300 + ".png",
    ]

    archive = unzipped(zip_stream((name, tmp_path / "f") for name in names))

    assert archive.namelist()[:9] == [
        "passwd",
        "id_rsa",
        "evil.dll",
        "file",
        "file-2",
        "hidden",
        "a lighthouse_ _n_c_d___.png",
        "_CON.txt",
        "MISSING-2.txt",  # MISSING.txt is ours
    ]
    assert archive.namelist()[9] == "x" * 150 + ".png"
    assert all(archive.read(name) == b"x" for name in archive.namelist())


def test_files_that_cannot_be_read_are_listed_in_missing_txt(tmp_path: Path) -> None:
    for name in ("first.png", "second.png", "third.png"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
    (tmp_path / "a folder").mkdir()
    files = [
        ("first.png", tmp_path / "first.png"),
        ("never.png", tmp_path / "never.png"),
        ("folder.png", tmp_path / "a folder"),
        ("second.png", tmp_path / "second.png"),
        ("third.png", tmp_path / "third.png"),
    ]

    stream = zip_stream(files)
    chunks = [next(stream)]  # the first file is on its way …
    (tmp_path / "second.png").unlink()  # … when another is deleted
    chunks.extend(stream)
    archive = unzipped(chunks)

    assert archive.namelist() == ["first.png", "third.png", "MISSING.txt"]
    assert archive.read("third.png") == b"third.png" * 1000
    listing = archive.read("MISSING.txt").decode()
    assert listing.splitlines()[2:] == ["never.png", "folder.png", "second.png"]


class FailingDisk(io.FileIO):
    """A file whose disk fails after the first ZIP_CHUNK bytes."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= sheets.ZIP_CHUNK:
            raise OSError(5, "Input/output error")
        return super().read(size)


def test_a_file_that_fails_to_read_halfway_is_named_as_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.png").write_bytes(b"x" * (3 * sheets.ZIP_CHUNK))
    (tmp_path / "good.png").write_bytes(b"good")
    monkeypatch.setattr(sheets, "open_file", lambda path: FailingDisk(path))

    archive = unzipped(zip_stream([("bad.png", tmp_path / "bad.png"), ("good.png", tmp_path / "good.png")]))

    assert archive.read("bad.png") == b"x" * sheets.ZIP_CHUNK
    assert archive.read("good.png") == b"good"
    assert "bad.png (cut short: reading it failed)" in archive.read("MISSING.txt").decode()


def test_a_big_zip_streams_in_small_chunks_as_the_files_are_read(tmp_path: Path) -> None:
    block = os.urandom(MiB)
    contents = {f"clip-{i}.mp4": block * 10 + bytes([i]) for i in range(3)}  # 30 MB, not on chunk edges
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    pulled: list[str] = []

    def files() -> Iterator[tuple[str, Path]]:
        for name in contents:
            pulled.append(name)
            yield name, tmp_path / name

    stream = zip_stream(files())
    first = next(stream)
    assert pulled == ["clip-0.mp4"]  # sending starts before the next files are looked at
    chunks = [first, *stream]

    assert max(len(chunk) for chunk in chunks) <= 2 * MiB
    assert sum(len(chunk) for chunk in chunks) > 30 * MiB
    archive = unzipped(chunks)
    assert {name: archive.read(name) for name in archive.namelist()} == contents
