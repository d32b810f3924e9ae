"""Tile plans of the transforms: latent and block strides, tiles with their halos, edge padding, and the tiled synthesis loop.

The transforms run in overlapping tiles so that memory stays bounded for any image size; a
tile's halo is more latents than the transforms' receptive radius, so the tiled result is
that of the whole image.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from . import heads

LATENT_STRIDE = 16  # pixels per latent
PAD_MULTIPLE = 64  # pixels per hyper-latent
TILE = 64  # latents per tile side (1024 pixels)
HALO = 7  # latents of context around each tile: more than the transforms' receptive radius (Config.synthesis_radius)

Window = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


def tiles(size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each tile along an axis of ``size`` latents."""
    return [(start, min(start + TILE, size)) for start in range(0, size, TILE)]


def windows(rows: int, cols: int, grid: tuple[int, int]) -> Iterator[Window]:
    """Tiles ``(r0, r1, c0, c1)`` covering ``rows x cols`` latents, each with the window
    ``(a0, a1, b0, b1)`` it reads: the tile plus ``HALO`` latents, within ``grid``."""
    for r0, r1 in tiles(rows):
        for c0, c1 in tiles(cols):
            yield (r0, r1, c0, c1), (max(r0 - HALO, 0), min(r1 + HALO, grid[0]),
                                     max(c0 - HALO, 0), min(c1 + HALO, grid[1]))


def hyper_grid(height: int, width: int) -> tuple[int, int]:
    """Hyper-latent rows and columns of an image: one per started 64x64 block."""
    return -(-height // PAD_MULTIPLE), -(-width // PAD_MULTIPLE)


def latent_grid(height: int, width: int) -> tuple[int, int]:
    """Latent rows and columns of an image padded to whole 64x64 blocks."""
    zh, zw = hyper_grid(height, width)
    return zh * PAD_MULTIPLE // LATENT_STRIDE, zw * PAD_MULTIPLE // LATENT_STRIDE


def synthesis_windows(height: int, width: int, grid: tuple[int, int]) -> list[Window]:
    """The windows of a synthesis of an image's own pixels from latents on ``grid``."""
    return list(windows(-(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE), grid))


def edge_padded(im: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of ``im``, its last row and column
    repeated past its edges (a slice, padded only where the window leaves the image, so no
    padded copy of a whole image is made)."""
    h, w = im.shape[:2]
    part = im[top:min(bottom, h), left:min(right, w)]
    pad = ((0, bottom - top - part.shape[0]), (0, right - left - part.shape[1])) + ((0, 0),) * (im.ndim - 2)
    return np.pad(part, pad, mode="edge") if pad[0][1] or pad[1][1] else part


def synthesize_tiles(run: Callable[[np.ndarray, tuple], np.ndarray], y_hat: np.ndarray,
                     height: int, width: int, scale: int = 1) -> np.ndarray:
    """(N, height, width, 3) uint8 pixels of (N, M, h, w) float32 latents, tile by tile; with a
    ``scale``, ``run`` gives the image at 1/``scale`` and so does this (``height`` and ``width``
    stay the full image's; the output is ``heads.scaled_size`` of them).

    ``run(window, core)`` maps a window of latents to the (N, rows, cols, 3) uint8 pixels
    ``core`` of its output (((row0, row1), (col0, col1)), in pixels of the window's synthesis).
    Only the image's own pixels are synthesized, each layer computing just what they depend on
    (the padding latents serve as context): a decode costs what its pixels cost, also where an
    image is thinner than the 64-pixel blocks the format codes.
    """
    s = LATENT_STRIDE // scale
    plan = synthesis_windows(height, width, y_hat.shape[2:])  # of the full-size image
    width, height = heads.scaled_size(width, height, scale)
    out = np.empty((y_hat.shape[0], height, width, 3), np.uint8)
    for (r0, r1, c0, c1), (a0, a1, b0, b1) in plan:
        top, left = (r0 - a0) * s, (c0 - b0) * s
        core = ((top, top + min(r1 * s, height) - r0 * s), (left, left + min(c1 * s, width) - c0 * s))
        out[:, r0 * s : min(r1 * s, height), c0 * s : min(c1 * s, width)] = run(y_hat[:, :, a0:a1, b0:b1], core)
    return out
