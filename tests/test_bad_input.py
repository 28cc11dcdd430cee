"""Bad input, end to end: every kind of broken, odd or hostile file is recorded with a clear
reason (in `imgsearch errors` and `imgsearch info`), never stops the run, and is not retried
until it changes. Odd but valid files (CMYK, 16-bit, palette + alpha, animated, EXIF-rotated,
non-UTF-8 and very long names) are indexed correctly."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from conftest import draw_image, file_permissions_enforced
from imgsearch.cli import cli
from imgsearch.ground.paths import path_to_text, text_to_path
from imgsearch.index import Index
from imgsearch.indexer.pipeline import LocalEmbedder
from index_oracle import ATOL, check_consistent


def png_bytes(color_type: int, bit_depth: int, pixels: np.ndarray) -> bytes:
    """A PNG written by hand (Pillow cannot save 16-bit colour with alpha): pixels (H, W, C) big-endian."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_bytes_path(folder: Path, name: bytes, data: bytes) -> bytes:
    path = os.path.join(os.fsencode(folder), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


GOOD = [
    "cmyk.jpg",
    "rgba16.png",
    "la16.png",
    "palette_alpha.png",
    "animated.gif",
    "rotated.jpg",
    "plain.png",
    "l" * 251 + ".png",
    "é" * 125 + ".png",
]
# name --> words its reason must contain
BAD = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "bomb.png": "too large",
    "broken_link.jpg": "broken symbolic link",
    "loop_a.jpg": "symbolic link loop",
    "loop_b.jpg": "symbolic link loop",
    "fifo.jpg": "not a regular file",
}


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)
    rng = np.random.default_rng(0)
    (root / "rgba16.png").write_bytes(png_bytes(6, 16, rng.integers(0, 65535, (20, 30, 4)).astype(">u2")))
    (root / "la16.png").write_bytes(png_bytes(4, 16, rng.integers(0, 65535, (20, 30, 2)).astype(">u2")))
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    palette.paste(1, (0, 0, 15, 30))
    palette.paste(2, (15, 0, 30, 15))
    palette.save(root / "palette_alpha.png", transparency=bytes([0, 128, 255]))
    frames = [draw_image(s) for s in (1, 2, 3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    draw_image(4, size=48).crop((0, 0, 48, 32)).save(root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    draw_image(5).save(root / "plain.png")
    draw_image(6).save(root / GOOD[7])  # a 255-byte name
    draw_image(7).save(root / GOOD[8])  # 254 bytes of UTF-8
    buffer = io.BytesIO()
    draw_image(8).save(buffer, "PNG")
    write_bytes_path(root, b"caf\xe9.png", buffer.getvalue())  # Latin-1 name, not UTF-8
    write_bytes_path(root, b"broken-\xff.jpg", b"this is not a JPEG")

    (root / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(jpeg, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "text.jpg").write_text("a text file that says it is a JPEG\n")
    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    (root / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + header
        + struct.pack(">I", zlib.crc32(b"IHDR" + header))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )
    os.symlink(root / "nowhere.jpg", root / "broken_link.jpg")
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    os.mkfifo(root / "fifo.jpg")  # reading it would block forever
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_every_bad_file_is_recorded_with_its_reason_and_the_run_goes_on(tmp_path, model_dir, hostile_folder):
    index_dir = tmp_path / "index"
    result = run("index", hostile_folder, "--index", index_dir, "--model", model_dir, "--workers", 0, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    latin1_bad = f"{hostile_folder}/broken-\\xff.jpg"  # undecodable bytes shown as \xNN
    assert summary["added"] == len(GOOD) + 1  # and café.png in Latin-1
    assert summary["failed"] == len(BAD) + 1

    listing = run("errors", "--index", index_dir)
    assert listing.exit_code == 0
    lines = dict(line.split(": ", 1) for line in listing.stdout.strip().splitlines())
    assert set(lines) == {f"{hostile_folder}/{name}" for name in BAD} | {latin1_bad}
    for name, words in BAD.items():
        assert words in lines[f"{hostile_folder}/{name}"], (name, lines[f"{hostile_folder}/{name}"])
    assert "not an image" in lines[latin1_bad]

    info = json.loads(run("info", "--index", index_dir, "--json").stdout)
    assert (info["images"], info["failed"]) == (len(GOOD) + 1, len(BAD) + 1)
    assert info["failures_by_reason"]["symbolic link loop"] == 2
    assert sum(info["failures_by_reason"].values()) == len(BAD) + 1
    text = run("info", "--index", index_dir).stdout
    assert "2 failed: symbolic link loop" in text and "1 failed: empty file" in text

    # Nothing is retried while it stays as it is.
    again = json.loads(run("index", hostile_folder, "--index", index_dir, "--workers", 0, "--json").stdout)
    assert (again["unchanged"], again["failed"], again["added"]) == (len(GOOD) + len(BAD) + 2, 0, 0)
    with Index.open(index_dir) as index:
        check_consistent(index)


def test_odd_but_valid_files_are_indexed_as_they_look(tmp_path, model_dir, hostile_folder):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([hostile_folder], workers=0)
        rows = index.store.all_images()
        for name in GOOD:
            assert rows[f"{hostile_folder}/{name}"].status == "ok", name
        # EXIF-rotated: stored upright (stored 48x32 --> 32x48), with the vector of its upright pixels.
        rotated = rows[f"{hostile_folder}/rotated.jpg"]
        assert (rotated.width, rotated.height) == (32, 48)
        upright = tmp_path / "upright" / "upright.png"
        upright.parent.mkdir()
        ImageOps.exif_transpose(Image.open(hostile_folder / "rotated.jpg")).convert("RGB").save(upright)
        sideways = tmp_path / "sideways" / "sideways.png"
        sideways.parent.mkdir()
        Image.open(hostile_folder / "rotated.jpg").convert("RGB").save(sideways)  # EXIF ignored
        index.add([upright, sideways], workers=0)
        ids, vectors = index.store.global_vectors()
        by_path = {index.store.images([int(i)])[int(i)].path: v for i, v in zip(ids, vectors)}
        np.testing.assert_allclose(by_path[str(upright)], by_path[rotated.path], atol=ATOL)
        assert np.abs(by_path[str(sideways)] - by_path[rotated.path]).max() > 10 * ATOL

        # The Latin-1 name round-trips: stored as readable UTF-8 text, mapped back to the same bytes.
        latin1 = f"{hostile_folder}/caf\\xe9.png"
        assert rows[latin1].status == "ok"
        assert os.fsencode(text_to_path(latin1)) == os.path.join(os.fsencode(hostile_folder), b"caf\xe9.png")
        results = index.search("a red circle", 100, candidates=100)
        assert latin1 in {r.path for r in results}


def test_search_output_shows_a_non_utf8_path_readably(tmp_path, model_dir, hostile_folder):
    index_dir = tmp_path / "index"
    assert run("index", hostile_folder, "--index", index_dir, "--model", model_dir, "--workers", 0).exit_code == 0
    result = run("search", "a red circle", "--index", index_dir, "-k", 100)
    assert result.exit_code == 0, result.output
    assert f"{hostile_folder}/caf\\xe9.png" in result.stdout
    out = json.loads(run("search", "a red circle", "--index", index_dir, "-k", 100, "--json").stdout)
    assert f"{hostile_folder}/caf\\xe9.png" in {r["path"] for r in out["results"]}


class DeleteBeforeReading:
    """The local embedder, but `victim` is deleted when the run hands over the files to read:
    after the folder was listed and the run planned, before any file is read."""

    def __init__(self, local: LocalEmbedder, victim: Path) -> None:
        self.local, self.victim = local, victim

    def embed(self, paths, known_contents):
        assert self.victim in paths
        self.victim.unlink()
        yield from self.local.embed(paths, known_contents)


def test_a_file_that_vanishes_between_listing_and_reading(tmp_path, model_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        draw_image(i).save(photos / f"img_{i}.png")
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        vanishing = DeleteBeforeReading(LocalEmbedder(index.image_encoder, workers=0), photos / "img_2.png")
        summary = index.add([photos], embedder=vanishing)
        assert (summary.added, summary.failed) == (3, 1)
        assert summary.failures == [(f"{photos}/img_2.png", "file not found (it vanished after the folder was listed)")]
        again = index.add([photos], workers=0)
        assert (again.removed, again.unchanged, again.failed) == (1, 3, 0)  # its record goes with it
        assert index.failures() == []


def test_unreadable_file_is_recorded_and_retried_once_its_permissions_change(tmp_path, model_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    draw_image(0).save(photos / "ok.png")
    draw_image(1).save(photos / "locked.png")
    (photos / "locked.png").chmod(0)
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        with file_permissions_enforced():  # even as root, as CI runs
            summary = index.add([photos], workers=0)
            assert summary.failures == [
                (f"{photos}/locked.png", "permission denied (the file is not readable by this user)")
            ]
            assert index.add([photos], workers=0).unchanged == 2  # not retried while still locked
            (photos / "locked.png").chmod(0o644)  # content and mtime unchanged; ctime moves
            fixed = index.add([photos], workers=0)
        assert (fixed.updated, fixed.failed) == (1, 0)
        assert index.failures() == []


NAMES = [
    b"plain.jpg",
    b"caf\xe9.jpg",
    b"\xff\xfe\x80",
    b"back\\slash.jpg",
    b"literal\\xe9.jpg",
    b"both\\\xe9.jpg",
    "日本語の写真.jpg".encode(),
    b"\\\\x41",
    b"a" * 255,
]


def test_path_text_is_utf8_readable_and_round_trips():
    texts = [path_to_text(os.path.join(b"/photos", name)) for name in NAMES]
    assert len(set(texts)) == len(NAMES)  # one-to-one, even for names that look like escapes
    for name, text in zip(NAMES, texts):
        text.encode("utf-8")  # valid for SQLite
        assert os.fsencode(text_to_path(text)) == os.path.join(b"/photos", name)
    assert texts[0] == "/photos/plain.jpg" and texts[6] == "/photos/日本語の写真.jpg"
    assert texts[1] == "/photos/caf\\xe9.jpg"
