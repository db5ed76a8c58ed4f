"""Images as network inputs: decoding with Pillow (PNG, JPEG, BMP, GIF, TIFF, WebP and the rest
it reads), channel conversion, resizing and per-channel normalization, so that
`cnnc run model.cnn --input photo.jpg` (or several files, or a folder) just works.

What happens to each image, in order (the defaults in brackets):

1. decode; EXIF orientation applied (phone photos are often stored sideways); the first frame
   of an animation; 8-bit modes and 16-bit grayscale are read, other modes refused;
2. scale samples to [0, 1] (divide by 255, or 65535 for 16-bit);
3. channels: alpha dropped, gray repeated to RGB, RGB to gray by ITU-R BT.601 luma;
4. resize to the network's height x width, bilinear at pixel centres: ``stretch`` both axes
   [default], or ``crop``: scale the shorter side to fit and cut the centre (keeps the aspect);
5. normalize: ``(x - mean[c]) / std[c]`` per channel [mean 0, std 1: values stay in [0, 1]];
   e.g. ImageNet models: ``--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225``.

A file that is not an image, is truncated or damaged, or has a mode we cannot use gets an
`ImageError` naming it and saying what to do.
"""

from __future__ import annotations

import argparse
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESIZE_MODES = ("stretch", "crop")
_EIGHT_BIT = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "PA": "LA", "RGB": "RGB",
              "RGBA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB",
              "LAB": "RGB", "HSV": "RGB"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class ImageError(Exception):
    """An image that cannot be used as an input; the message says why and what to do (the
    command line reports it as a usage error)."""


@dataclass(frozen=True)
class ImageOptions:
    """How images become input arrays (see the module docstring)."""

    resize: str = "stretch"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ImageError(f"resize must be one of {', '.join(RESIZE_MODES)}, got "
                             f"{self.resize!r}")
        if not all(np.isfinite(v) for v in self.mean):
            raise ImageError("--mean values must be finite numbers")
        if not all(np.isfinite(v) and v > 0 for v in self.std):
            raise ImageError("--std values must be positive numbers")


def channel_values(text: str) -> tuple[float, ...]:
    """argparse type for ``--mean`` / ``--std``: one number, or one per channel, by commas."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (e.g. "
                                         f"0.485,0.456,0.406), got {text!r}") from None
    if not all(np.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


# -- which files ------------------------------------------------------------------------------

def image_extensions() -> set[str]:
    """File suffixes Pillow reads (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN}


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files of a batch, in order: each file as given, each folder's images (the files
    with a suffix Pillow reads, not hidden) sorted by name."""
    files: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            exts = image_extensions()
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in exts
                           and not f.name.startswith(".") and f.is_file())
            if not found:
                raise ImageError(f"{p}: the folder holds no image files")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists():  # a FIFO or device: reading it could block
            raise ImageError(f"{p}: not a regular file")
        else:
            raise ImageError(f"no such input file: {p}")
    if not files:
        raise ImageError("no input files given")
    return files


# -- decoding ---------------------------------------------------------------------------------

def read_pixels(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """An image (a path or the file's bytes) -> H x W x samples float64 in [0, 1]; samples
    1 gray, 2 gray + alpha, 3 RGB, 4 RGBA."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if name is None:
        name = Path(source).name if not isinstance(source, bytes) else "image"
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89 and 179 megapixels; bounded memory wants an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return _samples(img, name)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file Pillow can read (or its header is "
                         "damaged); convert it to PNG or JPEG, or save the array with "
                         "numpy.save and pass the .npy file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: the image is too large to read safely ({e})") from None
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"no such input file: {name}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated and damaged files as OSError ("image file is truncated",
        # "broken data stream"), SyntaxError (bad headers) or ValueError.
        raise ImageError(f"{name}: truncated or damaged image ({e})") from None


def _samples(img, name: str) -> np.ndarray:
    """A loaded Pillow image -> H x W x samples float64 in [0, 1]."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        return (np.asarray(img, np.uint16).astype(np.float64) / 65535.0)[:, :, None]
    if mode == "I":  # 32-bit integers: Pillow's mode for 16-bit grayscale in some formats
        a = np.asarray(img, np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{name}: 32-bit integer pixels outside 0..65535 are not "
                             "supported; pass a .npy array")
        return (a.astype(np.float64) / 65535.0)[:, :, None]
    if mode == "P":
        target = "RGBA" if "transparency" in img.info else "RGB"
    elif mode in _EIGHT_BIT:
        target = _EIGHT_BIT[mode]
    else:
        raise ImageError(f"{name}: images of mode {mode} are not supported; save it as 8-bit "
                         "grayscale, RGB or RGBA, or pass a .npy array")
    a = np.asarray(img.convert(target) if target != mode else img, np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return a.astype(np.float64) / 255.0


# -- pixels -----------------------------------------------------------------------------------

def load_image(path: str | Path, shape: tuple[int, ...],
               options: ImageOptions | None = None) -> np.ndarray:
    """A 1 x C x H x W float32 array for a network input of shape (C, H, W)."""
    return load_images([Path(path)], shape, options)


def load_images(paths: Sequence[str | Path], shape: tuple[int, ...],
                options: ImageOptions | None = None) -> np.ndarray:
    """An N x C x H x W float32 batch, one image per path in order."""
    options = options or ImageOptions()
    if len(shape) != 3:
        raise ImageError(f"an image can only feed a channels x height x width input, not "
                         f"{'x'.join(map(str, shape))}")
    channels, height, width = shape
    mean = _per_channel(options.mean, channels, "--mean")
    std = _per_channel(options.std, channels, "--std")
    batch = np.empty((len(paths), channels, height, width), np.float32)
    for i, path in enumerate(paths):
        p = Path(path)
        image = convert_channels(read_pixels(p), channels, p.name)
        if options.resize == "crop":
            image = resize_crop(image, height, width)
        else:
            image = resize_bilinear(image, height, width)
        batch[i] = ((image - mean) / std).transpose(2, 0, 1)
    return batch


def _per_channel(values: tuple[float, ...], channels: int, option: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0])
    if len(values) != channels:
        raise ImageError(f"{option} has {len(values)} values; the network takes {channels} "
                         "channels: give one value, or one per channel")
    return np.asarray(values, np.float64)


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


def resize_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale so that the image covers height x width (the shorter side fits), keeping the
    aspect ratio, then cut out the centre."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    scaled = resize_bilinear(image, sh, sw)
    top, left = (sh - height) // 2, (sw - width) // 2
    return scaled[top:top + height, left:left + width]


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
