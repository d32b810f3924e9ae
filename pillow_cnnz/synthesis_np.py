"""The synthesis transform ``g_s`` in plain numpy, so that a float32 decode on a CPU need not import torch.

Importing torch is most of the cold start of "new process, open a file, decode one image". This module computes the same function as
``model.CnnzNet.g_s`` (sub-pixel 3x3 convolutions, inverse simplified GDN and residual
blocks, see ``layers.py``) in float32 from the weights' numpy arrays; results differ from torch's
float32 only by rounding.

How it stays fast with numpy's BLAS:

* activations are channels-last ``(rows, cols, C)`` with a one-pixel zero border, so a
  3x3 convolution is one sgemm of an im2col matrix ``(pixels, 9·C)`` with the weights
  ``(9·C, 4·C_out)``, and GDN is one ``(pixels, C) @ (C, C)`` sgemm plus in-place ops;
* each layer runs in bands of rows: the im2col matrix and the GDN temporaries are small
  buffers reused from band to band, so they stay in cache and fault in no fresh pages;
* the convolution's output channels are reordered to (sub-row, sub-column, channel):
  GDN, a per-pixel operation, runs before the pixel shuffle, and the shuffle is the copy
  that writes each band into the next layer's padded input;
* the last layer (48 -> 12 channels) is cheaper the other way round: the products of
  all nine taps ``(9·12, C) @ (C, pixels)`` in one sgemm, then nine shifted adds.

Threads: a layer's bands run on ``workers`` threads of a pool made for the call, each
sgemm on whatever numpy's BLAS is set to (nothing here sets it; the codec sets one thread
and a worker per core). Many small sgemms made several BLAS threads slow wherever a core is
busy, and a band's work beside its sgemm (im2col, GDN, the shuffle) ran on one core; bands
on workers beat one band at a time on several BLAS threads (``benchmarks/speed.py`` times
the backends, docs/performance.md).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import spans

BAND_BYTES = 1 << 21  # target size of a band's im2col (or tap product) matrix
NEGLIGIBLE = 2.0**-60  # GDN weights set to 0, as layers.GDN.NEGLIGIBLE (this module runs without torch)

Bands = Callable[[Callable[[int, int], None], list[tuple[int, int]]], None]  # runs fn(r0, r1) for every band
_scratch = threading.local()  # a worker's band buffers, reused from band to band and layer to layer


def _buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """This thread's float32 scratch ``name`` shaped ``shape`` (grown when too small, never shrunk:
    a worker lives for one synthesis)."""
    size = int(np.prod(shape))
    bufs = _scratch.__dict__.setdefault("bufs", {})
    if name not in bufs or bufs[name].size < size:
        bufs[name] = np.empty(size, np.float32)
    return bufs[name][:size].reshape(shape)


def _split(a: np.ndarray, axis: int) -> np.ndarray:
    """View of ``a`` with the even-length ``axis`` split into (length/2, 2); never a copy."""
    shape = a.shape[:axis] + (a.shape[axis] // 2, 2) + a.shape[axis + 1 :]
    strides = a.strides[:axis] + (2 * a.strides[axis], a.strides[axis]) + a.strides[axis + 1 :]
    return as_strided(a, shape, strides)


def _bands(rows: int, per_band: int) -> list[tuple[int, int]]:
    return [(r, min(r + per_band, rows)) for r in range(0, rows, per_band)]


class _Upsample:
    """A ``SubPixelConv`` (3x3 conv to 4·C channels, pixel shuffle by 2) and the inverse GDN after it."""

    reach = (1, 2)  # radius in its input's pixels, upsampling factor (spans.needed)

    def __init__(self, weight: np.ndarray, bias: np.ndarray, beta_sqrt: np.ndarray, gamma_sqrt: np.ndarray) -> None:
        cout4, cin = weight.shape[:2]
        c = cout4 // 4
        # torch's conv channel 4·c + 2·i + j becomes column (2·i + j)·C + c; im2col columns are (dy, dx, cin).
        w = weight.reshape(c, 2, 2, cin, 3, 3).transpose(4, 5, 3, 1, 2, 0)
        self.weight = np.ascontiguousarray(w.reshape(9 * cin, cout4), np.float32)
        self.bias = np.ascontiguousarray(bias.reshape(c, 4).T.reshape(cout4), np.float32)
        # layers.GDN(inverse=True) in float32: y = x * (beta + gamma @ |x|).
        # Entries below layers.GDN.NEGLIGIBLE set to 0 as in the codec's torch path: subnormal
        # squares, and products with activations, are ~50x slower in OpenBLAS.
        gamma = np.square(gamma_sqrt, dtype=np.float32)
        gamma[gamma < NEGLIGIBLE] = 0
        self.gamma_t = np.ascontiguousarray(gamma.T)
        self.beta = np.square(beta_sqrt, dtype=np.float32) + np.float32(1e-6)

    def __call__(self, xp: np.ndarray, bands: Bands) -> np.ndarray:
        """Padded (H+2, W+2, Cin) -> padded (2H+2, 2W+2, C), both with zero borders."""
        h, w, cin = xp.shape[0] - 2, xp.shape[1] - 2, xp.shape[2]
        c = self.beta.shape[0]
        rows = max(1, BAND_BYTES // (9 * 4 * cin * w))
        out = np.zeros((2 * h + 2, 2 * w + 2, c), np.float32)

        def band(r0: int, r1: int) -> None:
            n = (r1 - r0) * w
            yb = np.matmul(_im2col(xp, r0, r1, _buffer("cols", (n, 9 * cin))), self.weight, out=_buffer("y", (n, 4 * c)))
            yb += self.bias
            x = yb.reshape(4 * n, c)  # one row per output pixel
            g = np.matmul(np.abs(x, out=_buffer("abs", (4 * n, c))), self.gamma_t, out=_buffer("norm", (4 * n, c)))
            g += self.beta
            x *= g
            dst = _split(_split(out[1 + 2 * r0 : 1 + 2 * r1, 1:-1], 1), 0)  # (R, 2, W, 2, C)
            dst[...] = yb.reshape(r1 - r0, w, 2, 2, c).transpose(0, 2, 1, 3, 4)

        bands(band, _bands(h, rows))
        return out


def _im2col(xp: np.ndarray, r0: int, r1: int, cols: np.ndarray) -> np.ndarray:
    """Rows ``(pixel, 9·Cin)`` of the output rows ``[r0, r1)`` of a 3x3 convolution of padded
    ``xp``, written into ``cols`` (exactly that shape).

    For each dy, the taps dx = 0, 1, 2 are 3·Cin contiguous floats of ``xp``."""
    w, cin = xp.shape[1] - 2, xp.shape[2]
    col = cols.reshape(r1 - r0, w, 3, 3 * cin)
    for dy in range(3):
        col[:, :, dy] = as_strided(xp[r0 + dy :], (r1 - r0, w, 3 * cin), xp.strides)
    return cols


class _Conv:
    """A 3x3 convolution and ReLU into a new padded activation (a ``layers.ResBlock``'s first
    convolution, a ``layers.output_head``'s hidden layer)."""

    reach = (1, 1)

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight = np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0]), np.float32)
        self.bias = np.asarray(bias, np.float32)

    def __call__(self, xp: np.ndarray, bands: Bands) -> np.ndarray:
        """Padded (H+2, W+2, Cin) -> padded (H+2, W+2, Cout), both with zero borders."""
        h, w, cin = xp.shape[0] - 2, xp.shape[1] - 2, xp.shape[2]
        c = self.bias.shape[0]
        rows = max(1, BAND_BYTES // (9 * 4 * cin * w))
        out = np.zeros((h + 2, w + 2, c), np.float32)

        def band(r0: int, r1: int) -> None:
            n = (r1 - r0) * w
            yb = np.matmul(_im2col(xp, r0, r1, _buffer("cols", (n, 9 * cin))), self.weight, out=_buffer("y", (n, c)))
            yb += self.bias
            out[1 + r0 : 1 + r1, 1:-1] = np.maximum(yb, 0, out=yb).reshape(r1 - r0, w, c)

        bands(band, _bands(h, rows))
        return out


class _Residual:
    """A ``layers.ResBlock``: x + conv3x3(relu(conv3x3(x))), in place on the padded input."""

    reach = (2, 1)

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> None:
        self.conv1 = _Conv(w1, b1)
        # im2col columns are (dy, dx, cin); torch's weights are (cout, cin, dy, dx).
        self.w2 = np.ascontiguousarray(w2.transpose(2, 3, 1, 0).reshape(-1, w2.shape[0]), np.float32)
        self.b2 = np.asarray(b2, np.float32)

    def __call__(self, xp: np.ndarray, bands: Bands) -> np.ndarray:
        """Padded (H+2, W+2, C) -> the same array, its interior updated; borders stay zero."""
        h, w, c = xp.shape[0] - 2, xp.shape[1] - 2, xp.shape[2]
        rows = max(1, BAND_BYTES // (9 * 4 * c * w))
        hidden = self.conv1(xp, bands)  # all of it first (conv2 reads its rows r0-1..r1); zero border, as torch pads

        def conv2(r0: int, r1: int) -> None:
            n = (r1 - r0) * w
            yb = np.matmul(_im2col(hidden, r0, r1, _buffer("cols", (n, 9 * c))), self.w2, out=_buffer("y", (n, c)))
            yb += self.b2
            xp[1 + r0 : 1 + r1, 1:-1] += yb.reshape(r1 - r0, w, c)

        bands(conv2, _bands(h, rows))
        return xp


class _Last:
    """The final ``SubPixelConv`` to RGB (upsampling by ``r``: 2, or 1 in a head at its own level),
    written channels-first into the output image."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, r: int = 2) -> None:
        self.cout4, cin = weight.shape[:2]
        self.r = r
        self.reach = (1, r)
        # Row (3·dy + dx)·cout4 + o holds tap (dy, dx) of torch's output channel o.
        self.weight = np.ascontiguousarray(weight.transpose(2, 3, 0, 1).reshape(9 * self.cout4, cin), np.float32)
        self.bias = np.asarray(bias, np.float32)[:, None]

    def __call__(self, xp: np.ndarray, image: np.ndarray, bands: Bands) -> None:
        """Padded (H+2, W+2, C) -> ``image`` (cout4/r², r·H, r·W), in place."""
        h, w, cin = xp.shape[0] - 2, xp.shape[1] - 2, xp.shape[2]
        k, pw, r = self.cout4, w + 2, self.r
        rows = max(1, BAND_BYTES // (9 * 4 * k * pw))
        flat = xp.reshape(-1, cin)  # padded pixels in raster order; tap (dy, dx) is an offset dy·pw + dx

        def band(r0: int, r1: int) -> None:
            # Output on the band's padded grid (pw columns a row, the last two unused), whose
            # final two positions would read past the band's input: leave them out.
            m = (r1 - r0) * pw - 2
            p = np.matmul(self.weight, flat[r0 * pw : (r1 + 2) * pw].T, out=_buffer("prod", (9 * k, (r1 - r0 + 2) * pw)))
            acc = _buffer("acc", (k, (r1 - r0) * pw))
            np.add(p[:k, :m], self.bias, out=acc[:, :m])
            for t in range(1, 9):
                off = (t // 3) * pw + t % 3
                acc[:, :m] += p[t * k : (t + 1) * k, off : off + m]
            if r == 1:
                image[:, r0:r1] = acc.reshape(k, r1 - r0, pw)[..., :w]
                return
            src = acc.reshape(k // 4, 2, 2, r1 - r0, pw)[..., :w]
            dst = _split(_split(image[:, 2 * r0 : 2 * r1], 2), 1)  # (C, R, 2, W, 2)
            dst[...] = src.transpose(0, 3, 1, 4, 2)

        bands(band, _bands(h, rows))


class NumpySynthesis:
    """``model.CnnzNet.g_s`` in numpy float32, built once from loaded weights (``weights.Weights``,
    or anything with their ``arrays``); with a ``head`` (``heads.Head``), ``g_s`` up to the head's
    tap, then the head: the image at 1/``head.scale`` of its size.

    Thread-safe: a call allocates its own buffers and changes nothing shared.
    """

    def __init__(self, weights: Any, head: Any = None) -> None:
        arrays = weights.arrays
        self.layers: list[_Upsample | _Residual | _Conv] = []
        i, ups = 0, 0
        while head is None or i <= head.tap:  # g_s.<i> in order: (sub-pixel conv, GDN) pairs, each followed by any residual blocks
            key = f"net/g_s.{i}."
            if key + "conv1.weight" in arrays:
                self.layers.append(_Residual(arrays[key + "conv1.weight"], arrays[key + "conv1.bias"],
                                             arrays[key + "conv2.weight"], arrays[key + "conv2.bias"]))
                i += 1
            elif f"net/g_s.{i + 1}.beta_sqrt" in arrays:
                gdn = f"net/g_s.{i + 1}."
                self.layers.append(_Upsample(arrays[key + "conv.weight"], arrays[key + "conv.bias"],
                                             arrays[gdn + "beta_sqrt"], arrays[gdn + "gamma_sqrt"]))
                i, ups = i + 2, ups + 1
            else:
                break
        if head is None:
            self.last = _Last(arrays[key + "conv.weight"], arrays[key + "conv.bias"])
        else:
            if i != head.tap + 1:
                msg = f"a head cannot read layer {head.tap} of the synthesis: it is a sub-pixel convolution's output"
                raise ValueError(msg)
            self.layers.append(_Conv(head.arrays["0.weight"], head.arrays["0.bias"]))
            self.last = _Last(head.arrays["2.conv.weight"], head.arrays["2.conv.bias"], head.upscale)
        self.channels = arrays["net/g_s.0.conv.weight"].shape[1]
        self.scale = 2**ups * self.last.r  # output pixels per latent

    def __call__(self, y_hat: np.ndarray, workers: int = 1,
                 core: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
        """(N, 3, s·h, s·w) float32 pixels (1.0 = 255, not clamped) of (N, M, h, w) latents
        (s = ``self.scale``: 16, or less with a head),
        or with ``core`` ((row0, row1), (col0, col1)) only those output pixels: each layer then
        computes just the part of its output they depend on (``spans.needed``), and they come
        out as in the whole image.

        Each layer's bands run on ``workers`` threads (numpy releases the GIL in sgemm and
        its array loops); a band's result does not depend on which thread computes it, so
        neither do the pixels on ``workers``."""
        if y_hat.ndim != 4 or y_hat.shape[1] != self.channels:
            msg = f"expected latents shaped (N, {self.channels}, h, w), got {y_hat.shape}"
            raise ValueError(msg)
        n, m, h, w = y_hat.shape
        (r0, r1), (c0, c1) = core or ((0, self.scale * h), (0, self.scale * w))
        reach = [layer.reach for layer in (*self.layers, self.last)]
        rows, cols = spans.needed(reach, (r0, r1), h), spans.needed(reach, (c0, c1), w)
        out = np.empty((n, self.last.cout4 // self.last.r**2, r1 - r0, c1 - c0), np.float32)
        # A pool per call: its threads, and the scratch buffers they hold, end with it.
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="cnnz-synthesis") as pool:

            def bands(fn: Callable[[int, int], None], ranges: list[tuple[int, int]]) -> None:
                for f in [pool.submit(fn, r0, r1) for r0, r1 in ranges]:
                    f.result()  # every band of a layer before the next layer (and errors surface)

            for i in range(n):
                xp = np.zeros((h + 2, w + 2, m), np.float32)
                xp[1:-1, 1:-1] = y_hat[i].transpose(1, 2, 0)
                has = ((0, h), (0, w))  # the input's span of what xp holds, rows and columns
                for k, layer in enumerate(self.layers):
                    xp = layer(xp, bands)
                    has = tuple((a * layer.reach[1], b * layer.reach[1]) for a, b in has)
                    xp, has = _cropped(xp, has, (rows[k], cols[k])), (rows[k], cols[k])
                (a0, a1), (b0, b1) = has  # the last layer makes their pixels f·a0..f·a1, f·b0..f·b1
                f = self.last.r
                if (f * a0, f * a1, f * b0, f * b1) == (r0, r1, c0, c1):
                    self.last(xp, out[i], bands)
                else:
                    image = np.empty((out.shape[1], f * (a1 - a0), f * (b1 - b0)), np.float32)
                    self.last(xp, image, bands)
                    out[i] = image[:, r0 - f * a0 : r1 - f * a0, c0 - f * b0 : c1 - f * b0]
        return out


def _cropped(xp: np.ndarray, has: tuple[tuple[int, int], tuple[int, int]],
             keep: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """The part ``keep`` of a padded activation ``xp`` whose interior is the part ``has`` of a
    layer's output, padded with zeros again (a copy, unless it keeps everything)."""
    if keep == has:
        return xp
    (a0, a1), (b0, b1) = keep
    (h0, _), (w0, _) = has
    out = np.zeros((a1 - a0 + 2, b1 - b0 + 2, xp.shape[2]), np.float32)
    out[1:-1, 1:-1] = xp[1 + a0 - h0 : 1 + a1 - h0, 1 + b0 - w0 : 1 + b1 - w0]
    return out

