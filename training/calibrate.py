"""Latent tables measured on real images instead of assumed Gaussian.

The decoder picks the table of each latent by its integer scale index (``hyper.py``).
Tables drawn as ideal Gaussians at each index's scale assume the hyperprior is
calibrated, and a network trained on 128-pixel crops is not: there every hyper-latent
sits at a border (a 2x2 grid), while a photo is mostly interior. Measured on whole
images, the latents of the highest scale indexes spread 4-8x less than their index says,
those of the middling ones more, and the tails are heavier than Gaussian.

So the export measures, per scale index, the histogram of the coded symbols
``round(y - μ)`` over training images at every integer quality, through the same
fixed-point hyper network the codec uses, and ships those histograms (lightly smoothed
by a Gaussian of the measured spread) as the tables. The format is unchanged: only the
numbers in the weights file differ.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pillow_cnnz import context, hyper
from pillow_cnnz.model import QUALITY_MAX, QUALITY_MIN, CnnzNet

from .data import image_paths, load_rgb

PRIOR_COUNT = 20.0  # weight of the Gaussian that smooths each measured histogram
SHRINK_COUNT = 10.0  # pseudo-samples at the index's nominal scale when measuring a spread
TAIL_SIGMAS = 8  # a table covers this many measured standard deviations each side
HIST_HALF = 4096  # symbols beyond this are counted at the histogram's ends


def calibration_images(folder: str | Path, count: int, crop: int) -> list[np.ndarray]:
    """``count`` images spread evenly over the folder, centre-cropped to at most ``crop``²."""
    paths = image_paths(folder)
    picked = [paths[round(i * len(paths) / count)] for i in range(min(count, len(paths)))]
    out = []
    for path in picked:
        im = load_rgb(path)
        h, w = im.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        out.append(np.ascontiguousarray(im[top : top + crop, left : left + crop]))
    return out


@torch.no_grad()
def symbol_histograms(net: CnnzNet, layers: list[dict], scale: dict, images: list[np.ndarray],
                      context_layers: dict | None = None) -> np.ndarray:
    """(scale count, 2·HIST_HALF + 1) counts of ``round(y - μ)`` per scale index, qualities 1..8,
    with the means and indexes the codec uses (band by band, through the context if any)."""
    net.eval()
    counts = np.zeros((scale["count"], 2 * HIST_HALF + 1), np.int64)
    qualities = np.arange(QUALITY_MIN, QUALITY_MAX + 1)
    for im in images:
        h, w = im.shape[:2]
        padded = np.pad(im, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")
        x = torch.from_numpy(padded).permute(2, 0, 1)[None].float().div(255)
        y0 = net.g_a(x)
        for q in qualities:
            gain, _ = net.gains(torch.tensor([float(q)]))
            y = y0 * gain
            z = torch.round(net.h_a(y))[0].numpy().astype(np.int64)
            f = hyper.upsampling(layers)
            for top, bottom in hyper.bands(z.shape[1]):
                band = y[0, :, top * f : bottom * f].numpy()
                sym, _, idx, _ = context.band_symbols(layers, context_layers, scale, z, top, bottom, band)
                sym = np.clip(sym, -HIST_HALF, HIST_HALF).astype(np.int64)
                flat = idx.ravel().astype(np.int64) * counts.shape[1] + sym.ravel() + HIST_HALF
                counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)
    return counts


def discretized_gaussian(sigma: float, half: int) -> np.ndarray:
    """Mass of each integer in [-half, half] under N(0, sigma²), the tails folded into the ends."""
    edges = np.arange(-half, half) + 0.5
    cdf = 0.5 * np.vectorize(math.erfc)(-edges / (sigma * math.sqrt(2)))
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def tables_from_histograms(counts: np.ndarray, nominal: list[float], max_half: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pmf, lo, length) tables for ``entropy.Tables`` from per-index symbol counts.

    Each index's spread is measured (shrunk toward its ``nominal`` scale when it has few
    samples); its table spans ``TAIL_SIGMAS`` of that spread (at most ``max_half``), holds
    the counts, the counts beyond the span in its end entries (coded with an escape), plus
    ``PRIOR_COUNT`` samples' worth of a Gaussian of the same spread, so every symbol of the
    span stays codable.
    """
    values = np.arange(-HIST_HALF, HIST_HALF + 1)
    rows, halves = [], []
    for k, c in enumerate(counts):
        n = c.sum()
        spread = math.sqrt((float(c @ values.astype(np.float64) ** 2) + SHRINK_COUNT * nominal[k] ** 2)
                           / (n + SHRINK_COUNT))
        half = min(max(2, math.ceil(TAIL_SIGMAS * spread)), max_half)
        inner = c[HIST_HALF - half : HIST_HALF + half + 1].astype(np.float64)
        inner[0] += c[: HIST_HALF - half].sum()
        inner[-1] += c[HIST_HALF + half + 1 :].sum()
        row = inner + PRIOR_COUNT * discretized_gaussian(spread, half)
        rows.append(row / row.sum())
        halves.append(half)
    pmf = np.zeros((len(rows), 2 * max(halves) + 1))
    for k, row in enumerate(rows):
        pmf[k, : row.size] = row
    half_arr = np.array(halves, np.int64)
    return pmf, -half_arr, 2 * half_arr + 1
