"""Stages 1 and 2 of indexing: walking the user's paths, and decoding one file.

Every image is made here with Pillow; every failure must come back as a
DecodeResult with `error` set, never as an exception.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgsearch.images.decode
from imgsearch.ground.errors import InputPathNotFound
from imgsearch.images.decode import DecodeResult, decode_file, to_rgb
from imgsearch.indexer.files import IMAGE_EXTENSIONS, iter_image_files

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def assert_close(pixel, colour, tol: int = 12) -> None:
    assert np.abs(np.asarray(pixel, dtype=int) - np.asarray(colour, dtype=int)).max() <= tol, (pixel, colour)


def touch_image(path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), RED).save(path, format=fmt)
    return path


def assert_failed(result: DecodeResult, *words: str) -> None:
    assert isinstance(result, DecodeResult)
    assert result.error, "expected an error"
    assert result.image is None
    assert result.width is None and result.height is None
    for word in words:
        assert word in result.error.lower(), result.error


# ---- walking ------------------------------------------------------------------


def test_walk_is_recursive_sorted_and_filters_extensions(tmp_path):
    root = tmp_path / "photos"
    for relative in ["b.png", "a.JPG", "z/c.webp", "m/n/d.tiff", "m/e.gif", "m/x.bmp", "c.jpeg"]:
        touch_image(root / relative, fmt="PNG")  # content does not matter for walking
    (root / "notes.txt").write_text("not an image")
    (root / "m" / "data.json").write_text("{}")
    (root / "noext").write_bytes(b"x")

    found = list(iter_image_files([root]))

    assert all(p.is_absolute() for p in found)
    relative = [p.relative_to(root).as_posix() for p in found]
    # Files of a folder (sorted) come before its subfolders (sorted), as os.walk yields them.
    assert relative == ["a.JPG", "b.png", "c.jpeg", "m/e.gif", "m/x.bmp", "m/n/d.tiff", "z/c.webp"]


def test_walk_accepts_relative_paths_and_yields_absolute(tmp_path, monkeypatch):
    touch_image(tmp_path / "pics" / "one.png")
    monkeypatch.chdir(tmp_path)
    assert list(iter_image_files(["pics"])) == [tmp_path / "pics" / "one.png"]


def test_extension_list_covers_every_decoded_format():
    for suffix in [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"]:
        assert suffix in IMAGE_EXTENSIONS


def test_nonexistent_path_raises_before_yielding(tmp_path):
    good = touch_image(tmp_path / "ok.png")
    walk = iter_image_files([good, tmp_path / "missing"])
    with pytest.raises(InputPathNotFound, match="missing"):
        next(walk)


def test_explicit_file_with_other_suffix_is_yielded(tmp_path):
    odd = touch_image(tmp_path / "photo.data", fmt="PNG")
    assert list(iter_image_files([odd])) == [odd]
    # ...but the same file is not picked up when its folder is walked.
    assert list(iter_image_files([tmp_path])) == []


def test_paths_given_twice_are_yielded_once(tmp_path):
    image = touch_image(tmp_path / "a" / "x.png")
    assert list(iter_image_files([tmp_path, image, tmp_path / "a"])) == [image]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "root"
    image = touch_image(root / "sub" / "x.png")
    os.symlink(root, root / "sub" / "loop", target_is_directory=True)  # sub/loop -> root
    os.symlink(root / "sub", root / "sub" / "self", target_is_directory=True)
    assert list(iter_image_files([root])) == [image]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_broken_file_link_is_yielded_and_fails_with_reason(tmp_path):
    link = tmp_path / "gone.jpg"
    os.symlink(tmp_path / "nowhere.jpg", link)
    assert list(iter_image_files([tmp_path])) == [link]
    assert_failed(decode_file(link), "not found")


# ---- decoding each format -------------------------------------------------------


def half_red_image(width: int = 60, height: int = 40) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


@pytest.mark.parametrize(
    "fmt, suffix, tol",
    [
        ("JPEG", ".jpg", 12),
        ("PNG", ".png", 0),
        ("WEBP", ".webp", 12),
        ("BMP", ".bmp", 0),
        ("TIFF", ".tif", 0),
        ("GIF", ".gif", 0),
    ],
)
def test_decodes_each_format(tmp_path, fmt, suffix, tol):
    path = tmp_path / f"image{suffix}"
    half_red_image().save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))

    result = decode_file(path)

    assert result.error is None
    assert result.image.mode == "RGB"
    assert (result.width, result.height) == result.image.size == (60, 40)
    data = path.read_bytes()
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.mtime == os.stat(path).st_mtime
    pixels = np.asarray(result.image)
    assert_close(pixels[20, 5], RED, tol)
    assert_close(pixels[20, 55], BLUE, tol)


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, RED, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3  # the file really is animated

    result = decode_file(path)

    assert result.error is None
    assert_close(np.asarray(result.image)[8, 8], GREEN, 0)


@pytest.mark.parametrize("orientation, red_on_top", [(6, True), (8, False)])
def test_exif_orientation_is_applied(tmp_path, orientation, red_on_top):
    # Stored 60x40 (landscape) with the left half red; the camera says "rotate to display".
    # Orientation 6 = rotate 90 degrees clockwise (left edge goes to the top),
    # orientation 8 = rotate 90 degrees counter-clockwise (left edge goes to the bottom).
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    half_red_image(60, 40).save(path, exif=exif.tobytes(), quality=95)

    result = decode_file(path)

    assert result.error is None
    assert (result.width, result.height) == result.image.size == (40, 60)  # portrait after rotation
    pixels = np.asarray(result.image)  # (H=60, W=40, 3)
    top, bottom = pixels[10, 20], pixels[50, 20]
    assert_close(top, RED if red_on_top else BLUE)
    assert_close(bottom, BLUE if red_on_top else RED)


def test_palette_png_with_transparency_is_flattened_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*RED, *GREEN] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 1)  # one green pixel; index 0 (red) is transparent
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 0

    pixels = np.asarray(decode_file(path).image)

    assert tuple(pixels[0, 0]) == GREEN
    assert tuple(pixels[2, 2]) == (255, 255, 255)  # transparent red becomes white, not red


def test_rgba_is_flattened_on_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))  # opaque blue
    image.putpixel((1, 1), (0, 0, 0, 128))  # half-transparent black
    path = tmp_path / "rgba.png"
    image.save(path)

    result = decode_file(path)

    assert result.image.mode == "RGB"
    pixels = np.asarray(result.image).astype(int)
    assert tuple(pixels[0, 0]) == BLUE
    assert tuple(pixels[2, 2]) == (255, 255, 255)
    assert np.abs(pixels[1, 1] - 127).max() <= 1  # black over white at alpha 128


def test_la_mode_is_flattened_on_white():
    image = Image.new("LA", (2, 1), (0, 0))  # transparent black
    image.putpixel((1, 0), (50, 255))  # opaque dark grey
    pixels = np.asarray(to_rgb(image))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == (50, 50, 50)


def test_16bit_png_decodes_to_full_range_rgb(tmp_path):
    ramp = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600  # 0 .. 59400
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a 16-bit greyscale file

    result = decode_file(path)

    assert result.error is None and result.image.mode == "RGB"
    pixels = np.asarray(result.image).astype(int)
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[9, 9]) == (255, 255, 255)  # scaled, not clipped to a few values
    middle = pixels[5, 0, 0]
    assert abs(middle - round(50 * 600 * 255 / 59400)) <= 1
    assert len(np.unique(pixels[..., 0])) > 50  # the ramp survives


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    with Image.open(path) as check:
        assert check.mode == "CMYK"

    result = decode_file(path)

    assert result.error is None and result.image.mode == "RGB"
    assert_close(np.asarray(result.image)[8, 8], RED)


def test_greyscale_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 5), 77).save(path)
    result = decode_file(path)
    assert result.image.mode == "RGB"
    assert tuple(np.asarray(result.image)[2, 2]) == (77, 77, 77)


# ---- failures come back as results --------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    result = decode_file(path)
    assert_failed(result, "empty")
    assert result.size == 0


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("this is not a picture\n" * 10)
    result = decode_file(path)
    assert_failed(result, "not an image")
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # still fingerprinted


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert_failed(decode_file(path), "truncated")


def test_missing_file(tmp_path):
    assert_failed(decode_file(tmp_path / "vanished.png"), "not found")


def test_image_over_max_pixels_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50), RED).save(path)
    monkeypatch.setattr(imgsearch.images.decode, "MAX_PIXELS", 4_999)
    result = decode_file(path)
    assert_failed(result, "too large", "100x50")
    monkeypatch.setattr(imgsearch.images.decode, "MAX_PIXELS", 5_000)
    assert decode_file(path).error is None  # exactly at the limit is fine


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height RGB pixels, with almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9_000, 12_000, 60_000])
def test_decompression_bomb_header_is_refused(tmp_path, side):
    # 81 MP (over our limit), 144 MP (over Pillow's warning limit), 3.6 GP (over Pillow's error limit).
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(side, side))
    assert path.stat().st_size < 200
    assert_failed(decode_file(path), "too large")


# --------------------------------------------------------------------------------------
# Reduced-scale JPEG decoding (min_size): what the indexer and the trainer use.
# --------------------------------------------------------------------------------------


def smooth_photo(width: int, height: int) -> Image.Image:
    """A photo-like image: smooth gradients plus a few sharp-edged blocks."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    array = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)], axis=-1)
    array[height // 4 : height // 2, width // 5 : width // 2] = (20, 200, 40)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("orientation, upright", [(1, (800, 600)), (6, (600, 800)), (8, (600, 800)), (3, (800, 600))])
def test_min_size_decodes_a_large_jpeg_at_a_reduced_scale_with_the_full_size_reported(tmp_path, orientation, upright):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    smooth_photo(800, 600).save(path, quality=92, exif=exif.tobytes())

    full, reduced = decode_file(path), decode_file(path, min_size=96)

    assert (full.width, full.height) == (reduced.width, reduced.height) == upright
    assert full.image.size == upright
    # 800x600 with sides >= 96: libjpeg's 1/4 scale (the largest reduction that keeps both sides)
    assert reduced.image.size == (upright[0] // 4, upright[1] // 4)
    assert reduced.sha256 == full.sha256 and reduced.size == full.size
    # the model sees nearly the same pixels either way
    a = np.asarray(full.image.resize((96, 96), Image.Resampling.BILINEAR), dtype=np.float32)
    b = np.asarray(reduced.image.resize((96, 96), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(a - b).mean() < 3.0


def test_min_size_never_decodes_below_it_and_leaves_other_formats_alone(tmp_path):
    jpeg, png = tmp_path / "small.jpg", tmp_path / "big.png"
    smooth_photo(150, 140).save(jpeg, quality=92)
    smooth_photo(800, 600).save(png)
    assert decode_file(jpeg, min_size=96).image.size == (150, 140)  # 1/2 would give 75x70 < 96
    assert decode_file(jpeg, min_size=70).image.size == (75, 70)
    assert np.array_equal(np.asarray(decode_file(png, min_size=96).image), np.asarray(decode_file(png).image))
