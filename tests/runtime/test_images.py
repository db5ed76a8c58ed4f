"""The PNG decoder, resizing and channel conversion behind `cnnc run --input photo.png`.

PNG files are written here with zlib and struct, each row filtered by a forward filter written
independently of the decoder, so that all five filter types are exercised."""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest

from cnnc.runtime.cli import main
from cnnc.runtime.images import ImageError, decode_png, load_image, resize_bilinear

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
    got = decode_png(encode_png(pixels, color, filters, split_idat=True))
    np.testing.assert_array_equal(got, pixels)


def test_decode_smooth_image_where_filters_matter():
    y, x = np.mgrid[0:16, 0:16]
    pixels = np.stack([x * 16, y * 16, (x + y) * 8], axis=-1).astype(np.uint8)
    got = decode_png(encode_png(pixels, 2, [4, 3, 1, 2]))
    np.testing.assert_array_equal(got, pixels)


@pytest.mark.parametrize("kwargs, words", [
    ({"depth": 16}, "16-bit RGB PNGs are not supported"),
    ({"interlace": 1}, "interlaced (Adam7) PNGs are not supported"),
])
def test_unsupported_pngs_are_refused_clearly(kwargs, words):
    data = encode_png(np.zeros((2, 2, 3), np.uint8), 2, [0], **kwargs)
    with pytest.raises(ImageError, match=re.escape(f"x.png: {words}; save it")):
        decode_png(data, "x.png")


def test_palette_and_corrupt_pngs():
    palette = encode_png(np.zeros((2, 2, 1), np.uint8), 0, [0], header_color=3)
    with pytest.raises(ImageError, match="8-bit palette PNGs are not supported"):
        decode_png(palette, "x.png")
    data = bytearray(encode_png(np.zeros((2, 2, 1), np.uint8), 0, [0]))
    data[25] = 3  # colour type byte of IHDR: palette (the CRC now fails first)
    with pytest.raises(ImageError, match="corrupt PNG \\(IHDR chunk checksum\\)"):
        decode_png(bytes(data), "x.png")
    with pytest.raises(ImageError, match="not a PNG file"):
        decode_png(b"\xff\xd8\xff\xe0JFIF", "x.png")


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


def test_other_formats_suggest_npy(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0JFIF")
    with pytest.raises(ImageError, match="only PNG images are read directly.*\\.npy"):
        load_image(path, (3, 8, 8))
    with pytest.raises(ImageError, match="the network takes 2 channels"):
        png = tmp_path / "p.png"
        png.write_bytes(encode_png(np.zeros((2, 2, 3), np.uint8), 2, [0]))
        load_image(png, (2, 2, 2))


def test_cli_reports_a_bad_image_without_traceback(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text("network m\ninput x: 3 x 4 x 4\nx -> relu -> output y\n")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0JFIF")
    status = main(["run", str(model), "--input", str(photo), "--reference"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: photo.jpg: only PNG images are read directly")
