"""Training data for ``cnnc train``: scikit-learn's bundled 8x8 digits, or an ``.npz`` of
images and labels, shaped to a network's input and split into training and test sets.

Images become float32 NCHW in [0, 1] (digits: 0..16 scaled; an .npz as given), resized with
Pillow's bilinear filter to the input's height and width and repeated over its channels when
they are single-channel. The split is a seeded permutation: the last ``test_fraction`` of it
is the held-out test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .cli_common import CliError

IMAGE_KEYS, LABEL_KEYS = ("images", "x"), ("labels", "y")


@dataclass
class Dataset:
    """Images ``[N, C, H, W]`` float32 and integer labels ``[N]``, split in two."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int


def _resize(images: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """``[N, c, h, w]`` to the input's ``C x H x W``: bilinear resize, channels repeated from
    one (or refused)."""
    c, h, w = shape
    if images.shape[1] not in (1, c):
        raise CliError(f"{source}: images have {images.shape[1]} channels, the network's input "
                       f"takes {c}")
    if images.shape[2:] != (h, w):
        resized = np.empty(images.shape[:2] + (h, w), np.float32)
        for i in range(images.shape[0]):
            for j in range(images.shape[1]):
                picture = Image.fromarray(images[i, j].astype(np.float32), mode="F")
                resized[i, j] = np.asarray(picture.resize((w, h), Image.BILINEAR))
        images = resized
    if images.shape[1] != c:
        images = np.repeat(images, c, axis=1)
    return np.ascontiguousarray(images, np.float32)


def _npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            xk = next((k for k in IMAGE_KEYS if k in data), None)
            yk = next((k for k in LABEL_KEYS if k in data), None)
            if xk is None or yk is None:
                raise CliError(f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'); "
                               f"it has {', '.join(keys) or 'none'}")
            x, y = data[xk], data[yk]
    except (ValueError, OSError) as e:
        raise CliError(f"{path}: not a readable .npz file ({e})") from None
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iuf":
        raise CliError(f"{path}: '{xk}' and '{yk}' must hold numbers, got {x.dtype} and "
                       f"{y.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise CliError(f"{path}: '{xk}' must be N x H x W or N x C x H x W and '{yk}' N "
                       f"labels; got {x.shape} and {y.shape}")
    if len(y) and (np.any(y != np.round(y)) or y.min() < 0):
        raise CliError(f"{path}: '{yk}' must hold class indices 0, 1, ..., got {y.min()}")
    return x.astype(np.float32), y.astype(np.int64)


def load_dataset(source: str, input_shape: tuple[int, ...], seed: int = 0,
                 test_fraction: float = 0.2) -> Dataset:
    """``digits`` or an .npz path, shaped to ``input_shape`` (C x H x W) and split."""
    if source == "digits":
        from sklearn.datasets import load_digits  # slow to import: only when asked for

        digits = load_digits()
        x = (digits.images[:, None] / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
    elif Path(source).suffix == ".npz":
        x, y = _npz(source)
    else:
        raise CliError(f"--data takes 'digits' or an .npz file of images and labels, got "
                       f"{source!r}")
    if len(y) < 2:
        raise CliError(f"{source}: needs at least two examples, got {len(y)}")
    x = _resize(x, tuple(input_shape), source)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) - max(1, int(round(test_fraction * len(y))))
    train, test = order[:cut], order[cut:]
    return Dataset(x[train], y[train], x[test], y[test], int(y.max()) + 1)
