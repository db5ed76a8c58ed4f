"""Images as network inputs: a small PNG decoder (zlib only), bilinear resizing and channel
conversion, so `cnnc run model.cnn --input photo.png` needs no imaging library.

Supported: 8-bit grayscale, grayscale + alpha, RGB and RGBA, non-interlaced, with all five
PNG row filters. Alpha is dropped. Other PNG kinds and other formats get a clear error.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .cli import CliError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (name, samples per pixel) for the kinds we decode.
COLOR_TYPES = {0: ("grayscale", 1), 2: ("RGB", 3), 4: ("grayscale + alpha", 2), 6: ("RGBA", 4)}


class ImageError(CliError):
    """An image that cannot be used as an input; the message says why and what to do."""


def load_image(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A 1 x C x H x W float32 array in [0, 1] for a network input of shape (C, H, W)."""
    p = Path(path)
    if len(shape) != 3:
        raise ImageError(f"an image can only feed a channels x height x width input, not "
                         f"{'x'.join(map(str, shape))}")
    channels, height, width = shape
    if p.suffix.lower() != ".png":
        raise ImageError(f"{p.name}: only PNG images are read directly; convert it to PNG, "
                         "or save the array with numpy.save and pass the .npy file")
    pixels = decode_png(p.read_bytes(), p.name)  # H x W x samples, uint8
    image = pixels.astype(np.float64) / 255.0
    image = convert_channels(image, channels, p.name)
    image = resize_bilinear(image, height, width)
    return image.transpose(2, 0, 1)[None].astype(np.float32)


# -- PNG --------------------------------------------------------------------------------------

def decode_png(data: bytes, name: str = "image") -> np.ndarray:
    """PNG bytes -> H x W x samples uint8 array (samples: 1 gray, 2 gray+alpha, 3, 4)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError(f"{name} is not a PNG file (its first bytes are not the PNG "
                         "signature); convert it to PNG, or pass a .npy array")
    header, idat = _read_chunks(data, name)
    width, height, depth, color, compression, filtering, interlace = header
    if color not in COLOR_TYPES or depth != 8:
        kind = COLOR_TYPES.get(color, ("palette" if color == 3 else f"type {color}", 0))[0]
        raise ImageError(f"{name}: {depth}-bit {kind} PNGs are not supported; save it as 8-bit "
                         "grayscale, RGB or RGBA, or pass a .npy array")
    if interlace != 0:
        raise ImageError(f"{name}: interlaced (Adam7) PNGs are not supported; save it without "
                         "interlacing, or pass a .npy array")
    if compression != 0 or filtering != 0:
        raise ImageError(f"{name}: unknown PNG compression or filter method")
    try:
        raw = zlib.decompress(idat)
    except zlib.error as e:
        raise ImageError(f"{name}: corrupt PNG image data ({e})") from None
    samples = COLOR_TYPES[color][1]
    stride = width * samples
    if len(raw) != height * (stride + 1):
        raise ImageError(f"{name}: PNG image data has {len(raw)} bytes, expected "
                         f"{height * (stride + 1)} for {width}x{height}")
    rows = unfilter(np.frombuffer(raw, np.uint8).reshape(height, stride + 1), samples, name)
    return rows.reshape(height, width, samples)


def _read_chunks(data: bytes, name: str) -> tuple[tuple[int, ...], bytes]:
    """The IHDR fields and the concatenated IDAT data, checking each chunk's CRC."""
    pos, header, idat = len(PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc_bytes = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc_bytes) != 4:
            raise ImageError(f"{name}: truncated PNG ({kind.decode('latin-1')} chunk)")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc_bytes)[0]:
            raise ImageError(f"{name}: corrupt PNG ({kind.decode('latin-1')} chunk checksum)")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ImageError(f"{name}: PNG without {'IHDR' if header is None else 'IDAT'} chunk")
    return header, b"".join(idat)


def unfilter(filtered: np.ndarray, bpp: int, name: str = "image") -> np.ndarray:
    """Undo the PNG row filters (None, Sub, Up, Average, Paeth), row by row.

    `filtered` is H x (1 + stride): each row's filter byte, then its bytes. `bpp` is the bytes
    per pixel, the distance to the byte on the left.
    """
    height, width = filtered.shape[0], filtered.shape[1] - 1
    out = np.zeros((height, width), np.uint8)
    prior = np.zeros(width, np.int64)
    for y in range(height):
        kind, line = int(filtered[y, 0]), filtered[y, 1:].astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: a running sum along each byte position of the pixel
            padded = np.concatenate([line, np.zeros(-width % bpp, np.int64)])
            row = (np.cumsum(padded.reshape(-1, bpp), axis=0).reshape(-1)[:width]) & 0xFF
        elif kind == 2:  # Up
            row = (line + prior) & 0xFF
        elif kind in (3, 4):
            row = np.array(_unfilter_left(kind, line.tolist(), prior.tolist(), bpp), np.int64)
        else:
            raise ImageError(f"{name}: unknown PNG filter type {kind} in row {y}")
        out[y] = row
        prior = row
    return out


def _unfilter_left(kind: int, line: list[int], prior: list[int], bpp: int) -> list[int]:
    """Average and Paeth depend on the reconstructed byte to the left: a loop over bytes
    (on Python ints, which is much faster than indexing NumPy arrays one element at a time)."""
    row = [0] * len(line)
    for i, value in enumerate(line):
        left = row[i - bpp] if i >= bpp else 0
        up = prior[i]
        if kind == 3:
            predictor = (left + up) >> 1
        else:
            predictor = paeth(left, up, prior[i - bpp] if i >= bpp else 0)
        row[i] = (value + predictor) & 0xFF
    return row


def paeth(a: int, b: int, c: int) -> int:
    """The PNG Paeth predictor: whichever of left, up, upper-left is closest to a + b - c."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


# -- pixels -----------------------------------------------------------------------------------

def convert_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """H x W x samples -> H x W x channels: alpha dropped, gray <-> RGB (ITU-R BT.601 luma)."""
    samples = image.shape[2]
    color = image[:, :, :3] if samples >= 3 else image[:, :, :1]  # drop alpha
    if color.shape[2] == channels:
        return color
    if channels == 1:
        return (color @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    if channels == 3:
        return np.repeat(color, 3, axis=2)
    raise ImageError(f"{name}: the network takes {channels} channels; an image gives 1 (gray) "
                     "or 3 (RGB); pass a .npy array instead")


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x C -> height x width x C, sampling at pixel centres (align_corners=false)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    y0, y1, fy = _sample_positions(h, height)
    x0, x1, fx = _sample_positions(w, width)
    top = image[y0][:, x0] * (1 - fx)[None, :, None] + image[y0][:, x1] * fx[None, :, None]
    bottom = image[y1][:, x0] * (1 - fx)[None, :, None] + image[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def _sample_positions(size: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second."""
    pos = (np.arange(out) + 0.5) * (size / out) - 0.5
    pos = np.clip(pos, 0, size - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, pos - lo
