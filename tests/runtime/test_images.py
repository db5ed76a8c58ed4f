"""Images as inputs of `cnnc run --input`: decoding (Pillow), channels, resizing, normalization,
batches of files and folders, and clean errors for files that are not usable images.

PNG files are also written here with zlib and struct, each row filtered by a forward filter
written independently of any decoder, so that all five filter types are exercised; other test
images are made with Pillow in tmp_path (no binary files in the repository)."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnc.runtime.cli import main
from cnnc.runtime.images import (
    ImageError,
    ImageOptions,
    image_files,
    load_image,
    load_images,
    read_pixels,
    resize_bilinear,
    resize_crop,
)

SAMPLES = {0: 1, 4: 2, 2: 3, 6: 4}  # colour type -> samples per pixel


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _predict(kind: int, a: int, b: int, c: int) -> int:
    if kind == 0:
        return 0
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        return (a + b) // 2
    p = a + b - c  # Paeth, as the PNG specification writes it
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(pixels: np.ndarray, color: int, filters: list[int], depth: int = 8,
               interlace: int = 0, split_idat: bool = False, header_color: int | None = None
               ) -> bytes:
    """H x W x samples uint8 -> PNG bytes, row y filtered with filters[y % len(filters)]."""
    h, w = pixels.shape[:2]
    bpp = SAMPLES[color]
    rows = pixels.reshape(h, w * bpp).astype(int)
    raw = bytearray()
    for y in range(h):
        kind = filters[y % len(filters)]
        raw.append(kind)
        for i in range(w * bpp):
            a = rows[y, i - bpp] if i >= bpp else 0
            b = rows[y - 1, i] if y > 0 else 0
            c = rows[y - 1, i - bpp] if y > 0 and i >= bpp else 0
            raw.append((rows[y, i] - _predict(kind, a, b, c)) % 256)
    data = zlib.compress(bytes(raw))
    idat = [_chunk(b"IDAT", data[:7]), _chunk(b"IDAT", data[7:])] if split_idat else \
        [_chunk(b"IDAT", data)]
    header = struct.pack(">IIBBBBB", w, h, depth, color if header_color is None else header_color,
                         0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"tEXt", b"k\x00v") +
            b"".join(idat) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("color", [0, 4, 2, 6])
@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
def test_decode_every_color_type_and_filter(color, filters):
    rng = np.random.default_rng(color * 10 + len(filters))
    pixels = rng.integers(0, 256, (7, 5, SAMPLES[color]), dtype=np.uint8)
    got = read_pixels(encode_png(pixels, color, filters, split_idat=True))
    np.testing.assert_array_equal(np.rint(got * 255), pixels)


def test_decode_smooth_image_where_filters_matter():
    y, x = np.mgrid[0:16, 0:16]
    pixels = np.stack([x * 16, y * 16, (x + y) * 8], axis=-1).astype(np.uint8)
    got = read_pixels(encode_png(pixels, 2, [4, 3, 1, 2]))
    np.testing.assert_array_equal(np.rint(got * 255), pixels)


def _pillow_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kwargs)
    return f.getvalue()


def test_jpeg_photos_are_read():
    y, x = np.mgrid[0:32, 0:48]
    pixels = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)
    got = read_pixels(_pillow_bytes(Image.fromarray(pixels), "JPEG", quality=95))
    assert got.shape == (32, 48, 3)
    assert np.abs(got * 255 - pixels).mean() < 2.0  # lossy, but the same picture


def test_sixteen_bit_palette_and_exif_rotated_images():
    gray16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    got = read_pixels(_pillow_bytes(Image.fromarray(gray16), "PNG"))
    np.testing.assert_allclose(got[:, :, 0], gray16 / 65535.0)
    rgb = np.random.default_rng(4).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT)
    got = read_pixels(_pillow_bytes(palette, "PNG"))
    np.testing.assert_array_equal(np.rint(got * 255), np.asarray(palette.convert("RGB")))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show it rotated 90 degrees
    sideways = read_pixels(_pillow_bytes(Image.fromarray(rgb), "PNG", exif=exif))
    np.testing.assert_array_equal(np.rint(sideways * 255), np.rot90(rgb, -1))


def test_damaged_and_foreign_files_are_refused_clearly():
    noise = np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    good = encode_png(noise, 2, [0])
    with pytest.raises(ImageError, match=re.escape("x.png: truncated or damaged image")):
        read_pixels(good[: len(good) // 2], "x.png")
    with pytest.raises(ImageError, match="x.png is not an image file Pillow can read"):
        read_pixels(b"just some text\n" * 4, "x.png")
    with pytest.raises(ImageError, match="x.jpg: truncated or damaged image"):
        read_pixels(b"\xff\xd8\xff\xe0JFIF", "x.jpg")
    floats = _pillow_bytes(Image.fromarray(np.ones((2, 2), np.float32)), "TIFF")
    with pytest.raises(ImageError, match="x.tif: images of mode F are not supported; save it"):
        read_pixels(floats, "x.tif")


def _independent_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resampling, pixel by pixel."""
    H, W, C = img.shape
    out = np.zeros((h, w, C))
    for i in range(h):
        for j in range(w):
            sy = min(max((i + 0.5) * H / h - 0.5, 0), H - 1)
            sx = min(max((j + 0.5) * W / w - 0.5, 0), W - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            dy, dx = sy - y0, sx - x0
            out[i, j] = ((1 - dy) * ((1 - dx) * img[y0, x0] + dx * img[y0, x1]) +
                         dy * ((1 - dx) * img[y1, x0] + dx * img[y1, x1]))
    return out


@pytest.mark.parametrize("size", [(3, 4), (9, 7), (5, 5), (12, 2)])
def test_resize_bilinear_matches_an_independent_loop(size):
    img = np.random.default_rng(1).random((5, 6, 2))
    np.testing.assert_allclose(resize_bilinear(img, *size), _independent_bilinear(img, *size),
                               atol=1e-12)


def test_halving_averages_two_by_two_blocks():
    img = np.random.default_rng(2).random((8, 6, 3))
    blocks = img.reshape(4, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_bilinear(img, 4, 3), blocks, atol=1e-12)


def test_load_image_shape_range_and_channels(tmp_path):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    path = tmp_path / "photo.png"
    path.write_bytes(encode_png(rgba, 6, [4]))
    x = load_image(path, (3, 6, 8))
    assert x.shape == (1, 3, 6, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], rgba[:, :, :3].transpose(2, 0, 1) / 255.0, atol=1e-7)
    gray = load_image(path, (1, 6, 8))
    luma = rgba[:, :, :3].astype(float) @ [0.299, 0.587, 0.114] / 255.0
    np.testing.assert_allclose(gray[0, 0], luma, atol=1e-6)
    assert load_image(path, (3, 3, 4)).shape == (1, 3, 3, 4)
    gpath = tmp_path / "gray.png"
    g = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
    gpath.write_bytes(encode_png(g, 0, [1]))
    rgb = load_image(gpath, (3, 4, 4))
    for c in range(3):
        np.testing.assert_allclose(rgb[0, c], g[:, :, 0] / 255.0, atol=1e-7)
    assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0
    with pytest.raises(ImageError, match="the network takes 2 channels"):
        load_image(path, (2, 2, 2))


def test_normalization_is_per_channel_after_scaling_to_unit_range(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = load_image(tmp_path / "a.png", (3, 4, 4), ImageOptions(mean=mean, std=std))
    want = (rgb / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x[0], want.transpose(2, 0, 1), rtol=1e-6)
    with pytest.raises(ImageError, match="--mean has 2 values; the network takes 3"):
        load_image(tmp_path / "a.png", (3, 4, 4), ImageOptions(mean=(0.5, 0.5)))
    with pytest.raises(ImageError, match="--std values must be positive"):
        ImageOptions(std=(0.0,))


def test_crop_keeps_the_aspect_and_the_centre():
    img = np.random.default_rng(6).random((4, 8, 1))
    np.testing.assert_array_equal(resize_crop(img, 4, 4), img[:, 2:6])
    wide = resize_crop(np.random.default_rng(7).random((10, 30, 3)), 5, 5)
    assert wide.shape == (5, 5, 3)


def test_a_folder_or_several_files_make_one_batch_in_order(tmp_path):
    rng = np.random.default_rng(8)
    pics = {n: rng.integers(0, 256, (5, 5, 3), dtype=np.uint8) for n in ("b", "a", "c")}
    for n, px in pics.items():
        Image.fromarray(px).save(tmp_path / f"{n}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    files = image_files([tmp_path])
    assert [f.name for f in files] == ["a.png", "b.png", "c.png"]
    batch = load_images(files, (3, 5, 5))
    for i, n in enumerate("abc"):
        np.testing.assert_allclose(batch[i], pics[n].transpose(2, 0, 1) / 255.0, atol=1e-7)
    given = image_files([tmp_path / "c.png", tmp_path / "a.png"])
    assert [f.name for f in given] == ["c.png", "a.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="the folder holds no image files"):
        image_files([empty])


def test_cli_runs_a_batch_of_jpegs_with_normalization(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text("network m\ninput x: 3 x 4 x 4\nx -> relu -> output y\n")
    for i in range(3):
        px = np.full((6, 6, 3), 60 * i, np.uint8)
        Image.fromarray(px).save(tmp_path / f"p{i}.jpg", quality=95)
    rc = main(["run", str(model), "--input", str(tmp_path / "p2.jpg"), str(tmp_path / "p0.jpg"),
               "--reference", "--mean", "0.25", "--std", "0.5", "-o", str(tmp_path / "o.npz")])
    assert rc == 0 and "batch 2" in capsys.readouterr().out
    y = np.load(tmp_path / "o.npz")["y"]
    assert y.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(y[0], (120 / 255 - 0.25) / 0.5, atol=0.02)
    np.testing.assert_allclose(y[1], 0.0)  # (0 - 0.25) / 0.5 < 0, through relu
    assert main(["run", str(model), "--input", str(tmp_path), "--reference"]) == 0
    assert "batch 3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse: a usage message, status 2
        main(["run", str(model), "--input", str(tmp_path / "p0.jpg"), "--mean", "a,b"])
    assert exc.value.code == 2 and "expected numbers separated by commas" in \
        capsys.readouterr().err


def test_cli_reports_a_bad_image_without_traceback(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text("network m\ninput x: 3 x 4 x 4\nx -> relu -> output y\n")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0JFIF")
    status = main(["run", str(model), "--input", str(photo), "--reference"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: photo.jpg: truncated or damaged image")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 4, 4), np.float32))
    status = main(["run", str(model), "--input", str(photo), str(tmp_path / "x.npy"),
                   "--reference"])
    assert status == 2 and "not 2 files with arrays among them" in capsys.readouterr().err
    # Options argparse lets through that the image library refuses: a usage error too.
    status = main(["run", str(model), "--input", str(photo), "--std", "0", "--reference"])
    assert status == 2
    assert capsys.readouterr().err == "error: --std values must be positive numbers\n"
