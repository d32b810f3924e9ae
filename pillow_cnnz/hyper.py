"""Integer hyper-synthesis: ẑ -> (μ, scale index), bit-identical on every machine.

The probabilities the entropy coder uses must be the same when decoding as when
encoding, on any CPU, GPU, thread count or BLAS. Float networks cannot promise that
(CompressAI #279, #320; tensorflow/compression #44). So the trained float ``h_s`` is
exported as a fixed-point network (Ballé et al. 2019, "Integer networks"): integer
weights, integer activations with ``FRAC_BITS`` fractional bits, and power-of-two
rescaling with round-half-up. Every value is an integer below 2**53, so float64
matrix products are exact whatever the summation order; numpy's BLAS can do the work.
The network runs in bands of ẑ rows, so memory stays bounded for any image size.

Layers are given as a list of dicts (from the weights file):
``{"kind": "conv", "weight": int array (out, in, k, k), "bias": int array, "shift": s}`` (and,
as ``weights`` loads them, ``"matrix"``: the weights as ``conv`` multiplies by them),
``{"kind": "relu"}`` and ``{"kind": "shuffle"}`` (pixel shuffle by 2).
"""
from __future__ import annotations

import numpy as np

from . import batching, blas

FRAC_BITS = 8  # activations are value * 2**FRAC_BITS
ACT_LIMIT = 2.0**20  # |activation| bound that keeps every sum below 2**53
Z_LIMIT = 2**11  # |ẑ| fed to the network; larger values are clipped (they carry no more information)
HALO = 4  # rows of ẑ each band reads beyond its own: >= the network's receptive radius
BAND_ROWS = 16  # rows of ẑ per band (1024 pixels): bounds the memory of huge images
COL_CHUNK = 32  # columns of ẑ computed at a time within a band (not part of the format)
SPLIT_COLS = 4 * HALO  # the narrowest chunk a band is cut into for threads


def conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, shift: int,
         matrix: np.ndarray | None = None) -> np.ndarray:
    """Zero-padded 'same' convolution of an integer-valued float64 (C, H, W) array.

    One matrix product per layer (the k·k shifted copies stacked, "im2col"): BLAS
    runs at full speed and, the values being integers, in any order it likes.
    ``matrix`` is ``weight`` laid out for it (``weight_matrix``), where the caller keeps one.
    """
    cout, cin, k, _ = weight.shape
    _, h, w = x.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p))) if p else x
    cols = np.empty((k, k, cin, h, w), np.float64)
    for dy in range(k):
        for dx in range(k):
            cols[dy, dx] = xp[:, dy : dy + h, dx : dx + w]
    acc = (weight_matrix(weight) if matrix is None else matrix) @ cols.reshape(-1, h * w)
    acc += bias[:, None]
    return rescale(acc, shift).reshape(cout, h, w)


def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """A (out, in, k, k) convolution's weights as the (out, k·k·in) matrix ``conv`` multiplies by."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1))


def rescale(acc: np.ndarray, shift: int) -> np.ndarray:
    """An integer layer's accumulator back to activations: × 2**-shift, rounded half up,
    clipped to ``ACT_LIMIT`` (in place). Part of the format: every integer network uses it."""
    out = np.floor(np.multiply(acc, 2.0**-shift, out=acc) + 0.5, out=acc)
    return np.clip(out, -ACT_LIMIT, ACT_LIMIT, out=out)


def pixel_shuffle(x: np.ndarray, r: int = 2) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), h * r, w * r)


def run_layers(layers: list[dict], z: np.ndarray) -> np.ndarray:
    x = np.clip(z.astype(np.float64), -Z_LIMIT, Z_LIMIT) * 2.0**FRAC_BITS
    for layer in layers:
        kind = layer["kind"]
        if kind == "conv":
            x = conv(x, layer["weight"], layer["bias"], layer["shift"], layer.get("matrix"))
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "shuffle":
            x = pixel_shuffle(x)
        else:
            msg = f"unknown hyper layer {kind!r}"
            raise ValueError(msg)
    return x


def upsampling(layers: list[dict]) -> int:
    return 2 ** sum(layer["kind"] == "shuffle" for layer in layers)


def bands(height: int, rows: int = BAND_ROWS) -> list[tuple[int, int]]:
    """Row ranges ``[top, bottom)`` of ẑ that the codec processes one at a time.

    Part of the format: the latents are entropy-coded in this order (docs/format.md).
    """
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def hyper_band(layers: list[dict], z: np.ndarray, top: int, bottom: int, cols: int | None = None,
               workers: int = 1) -> np.ndarray:
    """Integer output (2M, (bottom-top)·f, W·f) of the hyper network for ẑ rows ``[top, bottom)``.

    Reads ``HALO`` rows (and, chunk by chunk of ``cols`` columns, ``HALO`` columns) of
    context on each side, so the result equals the same rows of a run over the whole of
    ``z``: bounded memory (a 50-megapixel band is ~0.4 GB in one piece) and identical values.
    The chunks run on up to ``workers`` threads (``batching.spread``); for threads a band is cut
    into chunks no narrower than ``SPLIT_COLS``.
    """
    f = upsampling(layers)
    width = z.shape[2]
    # Split for threads only into chunks wider than their halos, which each chunk computes again.
    cols = min(cols or COL_CHUNK, max(SPLIT_COLS, -(-width // workers)))
    lo, hi = max(top - HALO, 0), min(bottom + HALO, z.shape[1])
    # filled chunk by chunk: no list of parts and concatenated copy (2x a band's bytes)
    band = np.empty((output_channels(layers, z.shape[0]), (bottom - top) * f, width * f), np.float64)

    def chunk(c0: int) -> None:
        c1 = min(c0 + cols, width)
        left, right = max(c0 - HALO, 0), min(c1 + HALO, width)
        out = run_layers(layers, z[:, lo:hi, left:right])
        band[:, :, c0 * f : c1 * f] = out[:, (top - lo) * f : (bottom - lo) * f, (c0 - left) * f : (c1 - left) * f]

    # One BLAS thread: its spinning workers otherwise fight torch's for the cores, which made
    # the hyper network about ten times slower.
    with blas.threads(1):
        batching.spread(chunk, list(range(0, width, cols)), workers)
    return band


def output_channels(layers: list[dict], channels: int) -> int:
    """Channels of the network's output for ``channels`` input channels."""
    for layer in layers:
        if layer["kind"] == "conv":
            channels = layer["weight"].shape[0]
        elif layer["kind"] == "shuffle":
            channels //= 4
    return channels


def hyper_synthesis(layers: list[dict], z: np.ndarray, strip_rows: int = BAND_ROWS) -> np.ndarray:
    """Integer output (2M, H·f, W·f) of the hyper network for integer ``z`` (C, H, W), band by band."""
    return np.concatenate([hyper_band(layers, z, a, b) for a, b in bands(z.shape[1], strip_rows)], axis=1)


def scale_index(log2_scale: np.ndarray, offset: int, step: int, count: int) -> np.ndarray:
    """Integer bin of the fixed-point log2 scale: floor((ℓ - offset) / step), clipped to the table."""
    idx = log2_scale.astype(np.int64)  # one band-sized temporary, the rest in place
    idx -= offset
    np.floor_divide(idx, step, out=idx)
    return np.clip(idx, 0, count - 1, out=idx).astype(np.int32)


def means_and_indexes(out: np.ndarray, scale: dict) -> tuple[np.ndarray, np.ndarray]:
    """Split the network's integer output into the latents' exact means (float32: 20-bit
    integers over ``2**FRAC_BITS``) and scale indexes (``scale``: the weights' offset, step, count)."""
    m = out.shape[0] // 2
    mu = np.multiply(out[:m], 2.0**-FRAC_BITS, dtype=np.float32)  # exact: |integers| < 2**24, a power of 2
    return mu, scale_index(out[m:], scale["offset"], scale["step"], scale["count"])
