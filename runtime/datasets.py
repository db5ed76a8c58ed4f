"""Training data for ``cnnc train``: scikit-learn's bundled 8x8 digits, an ``.npz`` of images
and labels, or a folder with one subfolder of image files per class (the classes numbered in
the subfolders' sorted order), shaped to a network's input and split into training and test
sets; and the seeded augmentation of a training batch.

Images become float32 NCHW (digits: 0..16 scaled to [0, 1]; an .npz as given; image files as
``cnnc run`` reads them, pixels in [0, 1]), resized bilinearly to the input's height and width
(``images.resize_bilinear``, pixel centres) and repeated over its channels when they are
single-channel. The split is a seeded permutation: the last ``test_fraction`` of it is the
held-out test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli_common import CliError
from .images import image_files, load_images, resize_bilinear

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
        images = np.stack([resize_bilinear(np.asarray(im, np.float64).transpose(1, 2, 0), h, w)
                           .transpose(2, 0, 1) for im in images])
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


def _folder(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise CliError(f"{path}: a folder of training images needs one subfolder per class "
                       f"(at least two); it has {len(classes)}")
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = image_files([folder])
        images.append(load_images(files, shape))
        labels += [label] * len(files)
    return np.concatenate(images), np.asarray(labels, np.int64)


def load_dataset(source: str, input_shape: tuple[int, ...], seed: int = 0,
                 test_fraction: float = 0.2) -> Dataset:
    """``digits``, an .npz path or a folder of class folders, shaped to ``input_shape``
    (C x H x W) and split."""
    if source == "digits":
        from sklearn.datasets import load_digits  # slow to import: only when asked for

        digits = load_digits()
        x = (digits.images[:, None] / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
    elif Path(source).suffix == ".npz":
        x, y = _npz(source)
    elif Path(source).is_dir():
        x, y = _folder(Path(source), tuple(input_shape))
    else:
        raise CliError(f"--data takes 'digits', an .npz file of images and labels or a folder "
                       f"of class folders; {source!r} is none of them")
    if len(y) < 2:
        raise CliError(f"{source}: needs at least two examples, got {len(y)}")
    x = _resize(x, tuple(input_shape), source)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) - max(1, int(round(test_fraction * len(y))))
    train, test = order[:cut], order[cut:]
    return Dataset(x[train], y[train], x[test], y[test], int(y.max()) + 1)


def augment(x: np.ndarray, rng: np.random.Generator, mirror: bool, crop: int) -> np.ndarray:
    """A training batch mirrored left-right at random (each image with probability 1/2) and
    shifted by a random crop of its zero-padded self (``crop`` pixels of padding per side):
    the classic CIFAR augmentation, drawn from ``rng`` so a seeded run repeats exactly."""
    out = x.copy()
    if mirror:
        flip = rng.random(len(x)) < 0.5
        out[flip] = out[flip][..., ::-1]
    if crop:
        n, _, h, w = x.shape
        padded = np.pad(out, ((0, 0), (0, 0), (crop, crop), (crop, crop)))
        dy, dx = rng.integers(0, 2 * crop + 1, (2, n))
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out
