"""Integer checkerboard context: decoded anchors -> exact (μ, scale index) of the other latents.

With a context (``Config.ctx``), each band's latents are coded in two halves (He et al.
2021): the anchors, whose row + column is even, with the hyperprior's parameters, then the
rest with parameters the trained ``layers.CheckerboardContext`` refines from the anchors
around them. The decoder must reproduce those parameters bit for bit, so, as in
``hyper.py``, the float network is exported as a fixed-point one (integer weights, integer
activations with ``hyper.FRAC_BITS`` fractional bits, float64 products that are exact).

The context sees only its own band: anchors above or below the band's rows count as zero,
so a band decodes without the next one (part of the format, docs/format.md).

``layers`` is a dict of the four convolutions ``ctx`` (3x3 over the anchors' ŷ), ``mix``
(1x1 over the hyper output), ``c2`` and ``c3`` (1x1), each
``{"weight": int array (out, in, k, k), "bias": int array, "shift": s}``.
"""
from __future__ import annotations

import numpy as np

from . import batching, blas, hyper

NAMES = ("ctx", "mix", "c2", "c3")
# The taps of the 3x3 ``ctx`` that can hold an anchor when the output is a non-anchor: the
# four direct neighbours. The centre and the diagonals are non-anchors, always zero in its input.
CROSS = ((0, 1), (1, 0), (1, 2), (2, 1))
Y_LIMIT = 2**11  # |ŷ| fed to the context; larger values are clipped, as hyper.Z_LIMIT
CHUNK = 2048  # latents computed at a time (not part of the format)
ANCHOR_CHUNK = 1 << 18  # latents of the anchors' fixed-point ŷ computed at a time (not part of the format)


def anchors(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) bool mask of the anchors of a band (bands start on even rows)."""
    return (np.add.outer(np.arange(rows), np.arange(cols)) % 2) == 0


def split(x: np.ndarray, part: bool) -> np.ndarray:
    """The anchors (``part`` True) or the other latents of a band's (C, R, W) array as (C, n):
    each channel's entries in raster order, ``x[:, mask]`` or ``x[:, ~mask]``, the order the
    entropy coder codes them in. Even R and W (always, for a band: the latent grid is the ẑ grid × 4)
    take strided copies, which cost a fraction of a boolean gather; others take the gather."""
    c, rows, cols = x.shape
    if rows % 2 or cols % 2:
        mask = anchors(rows, cols)
        return x[:, mask if part else ~mask]
    out = np.empty((c, rows, cols // 2), x.dtype)
    first = 0 if part else 1  # column of the part's first entry on even rows
    out[:, 0::2] = x[:, 0::2, first::2]
    out[:, 1::2] = x[:, 1::2, 1 - first :: 2]
    return out.reshape(c, -1)


def merge(x: np.ndarray, part: bool, values: np.ndarray) -> None:
    """Write ``values`` (what ``split(x, part)`` gives) back into ``x``'s anchors or other latents."""
    c, rows, cols = x.shape
    if rows % 2 or cols % 2:
        mask = anchors(rows, cols)
        x[:, mask if part else ~mask] = values
        return
    values = values.reshape(c, rows, cols // 2)
    first = 0 if part else 1
    x[:, 0::2, first::2] = values[:, 0::2]
    x[:, 1::2, 1 - first :: 2] = values[:, 1::2]


def _apply(layer: dict, x: np.ndarray, taps: tuple = ((0, 0),)) -> np.ndarray:
    """One fixed-point layer on (taps·in, n) columns: as ``hyper.conv``, rounding half up."""
    w = layer["weight"]
    acc = np.concatenate([w[:, :, dy, dx] for dy, dx in taps], axis=1) @ x
    acc += layer["bias"][:, None]
    return hyper.rescale(acc, layer["shift"])


def refine(layers: dict, out: np.ndarray, symbols: np.ndarray, chunk: int | None = None,
           inplace: bool = False, workers: int = 1) -> np.ndarray:
    """The hyper output of one band, (2M, R, W) integers, with its non-anchors refined.

    ``symbols`` are the band's decoded latent symbols, (M, R, W); only the anchors are read.
    Anchor ŷ in fixed point is ``symbol · 2**FRAC_BITS + μ``, exactly what the hyper output
    holds for μ, so encoder and decoder feed the network the same integers. The network runs
    at the non-anchors only (of the 3x3 ``ctx``, the four taps that see anchors, as gathered
    columns; the rest is 1x1), ``chunk`` latents at a time.
    ``inplace`` refines ``out`` (float64) itself, which saves a band-sized copy. The chunks run
    on up to ``workers`` threads (``batching.spread``).
    """
    m = out.shape[0] // 2
    rows, width = out.shape[1:]
    mask = anchors(rows, width)
    limit = Y_LIMIT * 2.0**hyper.FRAC_BITS
    # float32 holds these integers (|v| <= 2**19) exactly; zero border: the band's edges are the context's
    y_anchor = np.zeros((m, rows + 2, width + 2), np.float32)
    # channels a group at a time: float64 temporaries of a whole band are ~60 MB at 50 MP, and
    # one channel at a time is 224 rounds of numpy calls on a Kodak image's 1,536 latents
    group = max(1, ANCHOR_CHUNK // (rows * width))
    for c in range(0, m, group):
        d = slice(c, min(c + group, m))  # out holds 2M rows: μ first
        y_anchor[d, 1:-1, 1:-1] = np.where(mask, np.clip(symbols[d] * 2.0**hyper.FRAC_BITS + out[d], -limit, limit), 0)
    refined = out if inplace and out.dtype == np.float64 else out.astype(np.float64)
    chunk = chunk or CHUNK
    jobs = []  # (parity, first row, rows): disjoint rows of ``refined``, so any order and thread gives the same
    for p in (0, 1):  # rows of parity p: non-anchors in every other column from 1 - p
        cols = np.arange(1 - p, width, 2).size
        if cols == 0:
            continue
        per = max(1, chunk // cols)
        jobs += [(p, r0, np.arange(r0, rows, 2)[:per].size, cols) for r0 in range(p, rows, 2 * per)]

    def job(spec: tuple[int, int, int, int]) -> None:
        p, r0, n, cols = spec
        taps = np.stack([y_anchor[:, r0 + dy : r0 + dy + 2 * n : 2, 1 - p + dx : 1 - p + dx + 2 * cols : 2]
                         for dy, dx in CROSS])  # (4, M, n, cols)
        here = refined[:, r0 : r0 + 2 * n : 2, 1 - p :: 2]
        h = _apply(layers["ctx"], taps.reshape(4 * m, -1), CROSS) + _apply(layers["mix"], here.reshape(2 * m, -1))
        h = np.maximum(_apply(layers["c2"], np.maximum(h, 0)), 0)
        here += _apply(layers["c3"], h).reshape(here.shape)

    # Threads pay where a band holds several chunks' work; a small one runs faster on one.
    with blas.threads(1):  # see hyper.hyper_band
        batching.spread(job, jobs, workers if rows * width >= 4 * chunk else 1)
    return refined


def band_symbols(hyper_layers: list[dict], context_layers: dict | None, scale: dict, z: np.ndarray, top: int,
                 bottom: int, y: np.ndarray,
                 workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Encoder side of one band of ẑ rows ``[top, bottom)`` with latents ``y``: (symbols
    ``round(y − μ)``, exact means μ, scale indexes, anchor mask or None without a context); the
    integer networks on up to ``workers`` threads."""
    out = hyper.hyper_band(hyper_layers, z, top, bottom, workers=workers)
    mu, idx = hyper.means_and_indexes(out, scale)
    symbols = np.round(y - mu).astype(np.int32)
    if context_layers is None:
        return symbols, mu, idx, None
    mask = anchors(y.shape[1], y.shape[2])
    refined = refine(context_layers, out, symbols, inplace=True, workers=workers)
    m = refined.shape[0] // 2
    for c in range(0, m, 16):  # non-anchors take the refined μ and index, 16 channels at a time (memory)
        mu_n, idx_n = hyper.means_and_indexes(refined[np.r_[c : min(c + 16, m), m + c : m + min(c + 16, m)]], scale)
        np.copyto(mu[c : c + 16], mu_n, where=~mask)
        np.copyto(idx[c : c + 16], idx_n, where=~mask)
    return np.round(y - mu).astype(np.int32), mu, idx, mask  # anchors unchanged: their μ is the hyperprior's
