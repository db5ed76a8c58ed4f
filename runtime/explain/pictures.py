"""The explanations as pictures (Pillow): grids of tiles, heat maps over the image, a colour
bar, a scatter plot.

Every picture but the scatter plot is a grid: ``rows`` x ``columns`` tiles of ``h`` x ``w``
pixels each drawn ``scale`` times larger, ``GAP`` pixels apart and around, so it is
``columns (w scale + GAP) + GAP`` wide and ``rows (h scale + GAP) + GAP`` high; a picture with
a colour bar is ``BAR`` pixels wider. A tile of the input image shows it stretched from its
smallest to its largest value; a map of values (saliency, activations, probabilities) is
coloured by ``COLOURS`` (dark purple the low end, yellow the high one) over the range the bar
states; a signed gradient is grey where it is 0, lighter where it is positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 2
BAR = 64
BACKGROUND = (255, 255, 255)
#: The colour scale of maps, low to high (anchors of viridis, linearly interpolated).
COLOURS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98),
                    (253, 231, 37)], np.float64)
#: The classes of a scatter plot (ten distinct colours, repeated beyond ten).
CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34),
                 (23, 190, 207)]


def grid_size(rows: int, columns: int, h: int, w: int, scale: int) -> tuple[int, int]:
    """(width, height) of a grid of ``rows`` x ``columns`` tiles of ``h`` x ``w`` pixels."""
    return columns * (w * scale + GAP) + GAP, rows * (h * scale + GAP) + GAP


def scale_for(h: int, w: int, target: int = 128) -> int:
    """The whole enlargement that brings a tile near ``target`` pixels (at least 1)."""
    return max(1, target // max(h, w))


def stretch(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``a`` mapped to [0, 1] from [lo, hi] (default its own range; a constant is 0)."""
    a = np.asarray(a, np.float64)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)


def coloured(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as RGB ``[..., 3]`` uint8 along ``COLOURS``."""
    position = np.clip(v, 0.0, 1.0) * (len(COLOURS) - 1)
    low = np.minimum(position.astype(int), len(COLOURS) - 2)
    t = (position - low)[..., None]
    return np.round(COLOURS[low] * (1 - t) + COLOURS[low + 1] * t).astype(np.uint8)


def rgb(a: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` array in [0, 1] (C 1 or 3) as an RGB ``[H, W, 3]`` uint8 tile."""
    a = np.asarray(a, np.float64)
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    return np.round(a.transpose(1, 2, 0) * 255).astype(np.uint8)


def image_tile(x: np.ndarray) -> np.ndarray:
    """An input image ``[C, H, W]`` as a tile, stretched over its own range."""
    return rgb(stretch(x))


def signed_tile(g: np.ndarray) -> np.ndarray:
    """A signed gradient ``[C, H, W]`` as a tile: 0 grey, the largest magnitude black or
    white."""
    top = float(np.abs(g).max())
    return rgb(0.5 + g / (2 * top) if top > 0 else np.full_like(g, 0.5, np.float64))


def resized(values: np.ndarray, h: int, w: int, smooth: bool = True) -> np.ndarray:
    """A 2-D map resized to ``h`` x ``w`` (bilinear, or nearest without ``smooth``)."""
    img = Image.fromarray(np.ascontiguousarray(values, np.float32))  # mode F
    return np.asarray(img.resize((w, h), Image.BILINEAR if smooth else Image.NEAREST))


def overlay(x: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``heat`` (values in [0, 1], any size) coloured and blended over image ``x``."""
    _, h, w = x.shape
    base = image_tile(x).astype(np.float64)
    top = coloured(resized(heat, h, w)).astype(np.float64)
    return np.round((1 - alpha) * base + alpha * top).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], scale: int) -> Image.Image:
    """Tiles (RGB ``[h, w, 3]`` uint8, all one size) in rows, enlarged ``scale`` times."""
    h, w, _ = rows[0][0].shape
    columns = max(len(r) for r in rows)
    picture = Image.new("RGB", grid_size(len(rows), columns, h, w, scale), BACKGROUND)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            img = Image.fromarray(tile, "RGB").resize((w * scale, h * scale), Image.NEAREST)
            picture.paste(img, (GAP + j * (w * scale + GAP), GAP + i * (h * scale + GAP)))
    return picture


def _number(v: float) -> str:
    return f"{v:.3g}"


def with_colour_bar(picture: Image.Image, lo: float, hi: float) -> Image.Image:
    """``picture`` with the colour scale on its right, ``BAR`` pixels wide, from ``lo``
    (bottom) to ``hi`` (top)."""
    width, height = picture.size
    out = Image.new("RGB", (width + BAR, height), BACKGROUND)
    out.paste(picture, (0, 0))
    top, bottom = GAP + 6, height - GAP - 6
    length = max(2, bottom - top)
    ramp = coloured(np.linspace(1.0, 0.0, length))[:, None, :].repeat(12, axis=1)
    out.paste(Image.fromarray(ramp, "RGB"), (width + 4, top))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    draw.text((width + 20, top - 4), _number(hi), fill=(0, 0, 0), font=font)
    draw.text((width + 20, bottom - 8), _number(lo), fill=(0, 0, 0), font=font)
    return out


# -- one picture per method ---------------------------------------------------------------------

def filters_picture(weights: np.ndarray) -> Image.Image:
    """Convolution kernels ``[K, C, kh, kw]``: one tile per filter, 8 a row, where C is 1 (grey)
    or 3 (RGB), else a row per filter of one grey tile per input channel; 0 is grey, the
    layer's largest magnitude black or white."""
    k, c, kh, kw = weights.shape
    scale = scale_for(kh, kw, 48)
    top = float(np.abs(weights).max()) or 1.0
    shown = 0.5 + weights / (2 * top)
    if c in (1, 3):
        tiles = [rgb(f) for f in shown]
        return grid([tiles[i:i + 8] for i in range(0, k, 8)], scale)
    return grid([[rgb(f[None]) for f in shown_filter] for shown_filter in shown], scale)


def maps_picture(maps: np.ndarray, columns: int = 8) -> Image.Image:
    """Activations ``[C, H, W]`` of one image: one tile per channel over the layer's range."""
    c, h, w = maps.shape
    lo, hi = float(maps.min()), float(maps.max())
    tiles = [coloured(stretch(m, lo, hi)) for m in maps]
    columns = min(columns, c)
    picture = grid([tiles[i:i + columns] for i in range(0, c, columns)], scale_for(h, w, 64))
    return with_colour_bar(picture, lo, hi)


def map_rows_picture(x: np.ndarray, maps: np.ndarray) -> Image.Image:
    """Per image a row: the image, then its map (``[N, H, W]`` at the image's size) coloured
    over the range of all maps."""
    lo, hi = float(maps.min()), float(maps.max())
    _, _, h, w = x.shape
    rows = [[image_tile(xi), coloured(stretch(m, lo, hi))] for xi, m in zip(x, maps)]
    return with_colour_bar(grid(rows, scale_for(h, w)), lo, hi)


def gradient_rows_picture(x: np.ndarray, grads: np.ndarray) -> Image.Image:
    """Per image a row: the image, then its signed gradient ``[C, H, W]``."""
    _, _, h, w = x.shape
    return grid([[image_tile(xi), signed_tile(g)] for xi, g in zip(x, grads)], scale_for(h, w))


def heat_rows_picture(x: np.ndarray, heats: np.ndarray) -> Image.Image:
    """Per image a row: the image, then ``heats`` (one map per image, any size: Grad-CAM's
    layer resolution) over it, coloured over the range of all maps."""
    lo, hi = float(heats.min()), float(heats.max())
    _, _, h, w = x.shape
    rows = [[image_tile(xi), overlay(xi, stretch(m, lo, hi))] for xi, m in zip(x, heats)]
    return with_colour_bar(grid(rows, scale_for(h, w)), lo, hi)


def occlusion_picture(x: np.ndarray, scores: np.ndarray, patch: int, stride: int
                      ) -> Image.Image:
    """The image, then the class's score with the patch at each place, drawn where the patch's
    centre was (each place ``stride`` pixels square) over the image."""
    _, h, w = x.shape
    rows, cols = scores.shape
    lo, hi = float(scores.min()), float(scores.max())
    heat = np.full((h, w), np.nan)
    offset = (patch - stride) // 2
    cells = np.repeat(np.repeat(stretch(scores, lo, hi), stride, 0), stride, 1)
    heat[offset:offset + rows * stride, offset:offset + cols * stride] = \
        cells[:h - offset, :w - offset]
    base = image_tile(x).astype(np.float64)
    painted = np.where(np.isnan(heat)[..., None], base,
                       0.3 * base + 0.7 * coloured(np.nan_to_num(heat)))
    tiles = [image_tile(x), np.round(painted).astype(np.uint8)]
    return with_colour_bar(grid([tiles], scale_for(h, w)), lo, hi)


def crops_picture(crops: Sequence[np.ndarray], columns: int = 3) -> Image.Image:
    """Image crops ``[C, h, w]`` (a receptive field each; one cut by the image's border is
    padded grey to the largest) in a grid, best first."""
    h = max(c.shape[1] for c in crops)
    w = max(c.shape[2] for c in crops)
    tiles = []
    for crop in crops:
        tile = np.full((h, w, 3), 128, np.uint8)
        tile[:crop.shape[1], :crop.shape[2]] = image_tile(crop)
        tiles.append(tile)
    return grid([tiles[i:i + columns] for i in range(0, len(tiles), columns)],
                scale_for(h, w, 64))


def scatter_picture(points: np.ndarray, labels: np.ndarray | None, size: int = 480,
                    radius: int = 3) -> Image.Image:
    """2-D points in a ``size`` x ``size`` square (``BAR`` wider: the legend), each dot
    coloured by its class."""
    picture = Image.new("RGB", (size + BAR, size), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    margin = 2 * radius + GAP
    spot = stretch(points[:, 0]) * (size - 2 * margin) + margin, \
        (1 - stretch(points[:, 1])) * (size - 2 * margin) + margin
    labels = np.zeros(len(points), np.int64) if labels is None else np.asarray(labels)
    for px, py, label in zip(*spot, labels):
        colour = CLASS_COLOURS[int(label) % len(CLASS_COLOURS)]
        draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=colour)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(160, 160, 160))
    font = ImageFont.load_default()
    for k, label in enumerate(np.unique(labels)):
        y = GAP + 8 + 14 * k
        draw.ellipse((size + 8, y, size + 16, y + 8),
                     fill=CLASS_COLOURS[int(label) % len(CLASS_COLOURS)])
        draw.text((size + 22, y - 2), str(int(label)), fill=(0, 0, 0), font=font)
    return picture


def image_rows_picture(images: Any) -> Image.Image:
    """Images ``[N, C, H, W]`` side by side (class models, dreams, styled images)."""
    _, _, h, w = images.shape
    return grid([[image_tile(x) for x in images]], scale_for(h, w))
