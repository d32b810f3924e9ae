"""The folded layout of thin images: which images are coded folded, the segment length, and the fold and unfold of their pixels.

The codec codes latents for whole 64-pixel blocks, and each output pixel of the synthesis
depends on tens of pixels of context around it: an image a few pixels thin costs, per pixel,
many times what a square one does. Folded, its rows are cut into segments of ``segment``
pixels stacked top to bottom (a tall image's columns, segments placed left to right), and the
near-square raster they make is coded as the image; the header records the fold
(``container.FOLD_ROWS``/``FOLD_COLUMNS`` and the segment length) and the decoder unfolds the
decoded raster. The last segment is padded by repeating the image's last pixel column (row).
The alpha plane stays in the image's own layout: it is stored losslessly and costs no
synthesis.

Folding puts unrelated pixels next to each other at the seams between segments, which costs
bits and quality there, so only images that gain a large factor of decode work are folded.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import container, tiling

# Images with a side this thin or thinner may be folded. A thicker strip decodes within 4x a
# square image's work per pixel as it is (tests/test_thin_images.py), and the seams, where
# pixels of distant parts of the image meet, cost quality: it is coded unfolded.
THIN = 12
# A fold must cut the estimated decode work by this factor at least.
GAIN = 1.5
# Weight in ``work`` of a pixel of the padded grid (the latents' entropy decoding and hyper
# network run on whole ``tiling.PAD_MULTIPLE`` blocks) against a pixel of synthesis.
GRID_WEIGHT = 0.25


def _side_work(pixels: int) -> float:
    """Synthesis work along one side of a raster, in pixels: a side of a few pixels costs
    about half a 64-pixel block's (the context each output pixel reads), a long side its length."""
    return max(pixels, tiling.PAD_MULTIPLE / 2 + pixels / 2)


def _grid(pixels: int) -> int:
    return -(-pixels // tiling.PAD_MULTIPLE) * tiling.PAD_MULTIPLE


def work(height: int, width: int) -> float:
    """Estimated decode work of a raster: its synthesis (each side's ``_side_work``) and its
    latents' entropy decoding (the padded grid). A model of the cost, for choosing a fold."""
    return _side_work(height) * _side_work(width) + GRID_WEIGHT * _grid(height) * _grid(width)


def plan(height: int, width: int) -> tuple[int, bool]:
    """(segment, columns) of the fold an image of that size is coded with; segment 0: unfolded.

    Only an image at most ``THIN`` pixels thin on one side is folded, and only where the fold
    cuts the estimated decode work (``work``) by ``GAIN`` at least; the segment length is the
    one with the least work, a near-square raster whose sides fit the 64-pixel grid."""
    columns = height > width
    along, across = (height, width) if columns else (width, height)
    if across > THIN:
        return 0, False
    root = math.isqrt(along * across)
    folds = []
    for segment in range(max(1, root // 4), min(along - 1, 4 * root + 1) + 1):
        stacked = -(-along // segment) * across
        if stacked <= container.MAX_SIDE:  # equal work: the squarer raster
            folds.append((work(stacked, segment), abs(math.log(stacked / segment)), segment))
    if not folds or min(folds)[0] * GAIN > work(across, along):
        return 0, False
    return min(folds)[2], columns


def fold(pixels: np.ndarray, segment: int, columns: bool) -> np.ndarray:
    """The raster of an (H, W[, C]) image folded by ``segment`` (``container.coded_size``)."""
    if columns:
        return fold(pixels.swapaxes(0, 1), segment, False).swapaxes(0, 1)
    h, w = pixels.shape[:2]
    count = -(-w // segment)
    padded = np.concatenate([pixels, np.repeat(pixels[:, -1:], count * segment - w, axis=1)], axis=1)
    # (h, count, segment, ...) -> (count, h, segment, ...): segment k is rows k*h to (k+1)*h
    parts = padded.reshape(h, count, segment, *pixels.shape[2:]).swapaxes(0, 1)
    return np.ascontiguousarray(parts.reshape(count * h, segment, *pixels.shape[2:]))


def unfold(raster: np.ndarray, height: int, width: int, segment: int, columns: bool) -> np.ndarray:
    """The (height, width[, C]) image of a raster that ``fold`` made."""
    if columns:
        return unfold(raster.swapaxes(0, 1), width, height, segment, False).swapaxes(0, 1)
    count = -(-width // segment)
    parts = raster.reshape(count, height, segment, *raster.shape[2:]).swapaxes(0, 1)
    return np.ascontiguousarray(parts.reshape(height, count * segment, *raster.shape[2:])[:, :width])


def coded_header(header: container.Header) -> container.Header:
    """The header of the raster a file codes: what the entropy decoder and the synthesis read
    (the image's own header unless the file is folded)."""
    if not header.fold:
        return header
    width, height = header.coded_size
    return dataclasses.replace(header, width=width, height=height, fold=0, fold_columns=False)
