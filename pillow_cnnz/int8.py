"""The int8 runtime: residual blocks of the transforms, and the synthesis' inner sub-pixel
convolutions, in 8-bit integers (oneDNN, x86 CPUs with VNNI), from the ranges and rounded weights
that ship beside the weights (calibrated by ``training/int8_calibration.py``).

Why: on a CPU without bfloat16 hardware the float32 transforms are most of an encode and of a
decode; their residual blocks carry most of the multiply-adds, and oneDNN runs them in int8
several times faster than float32 (docs/performance.md).

Why only there: the error of a quantized block input only enters the branch the block adds,
never the sum it adds to, which stays float32. Quantizing the inputs of the resampling
convolutions (the whole signal) moves the latents and the pixels far more, so those, GDN and the
first and last convolutions stay float32, but for the synthesis' two inner sub-pixel convolutions,
whose input is quantized in two passes. Which synthesis layers run int8, and which of them quantize
their input in two passes, is the ranges file's choice (``python -m training int8
--synthesis-levels --two-pass-levels``; the costs of each choice: experiments/int8_synthesis). A
second pass quantizes the first one's rounding residual through the same int8 weights
(``_Block._two_pass``): the input then carries ~15 bits, and what is left of the loss is mostly
the int8 weights, which GPTQ rounds on training images (``weights/<name>.int8.npz``; without
that file the weights round to nearest).
oneDNN's int8 convolutions accumulate in integers: the same input gives the same output at
any thread count, so the analysis gives the same bytes, and the decoded latents never depend
on it.

Ranges are per channel, measured on training images (``weights/<name>.int8.json``, verified like
the weights), and folded into the weights (cross-layer equalization): a block's input is divided
by its channels' (balanced) ranges before the per-tensor uint8 quantization oneDNN takes, and the
first convolution's weights multiplied by them; its ReLU outputs are normalized the same way,
through the first convolution's rows and the second's columns (``_Quantized.balanced``). An input
that goes beyond its ranges widens an analysis block's scale instead of saturating, and is clipped
in a synthesis block, where each tile must give the whole image's pixels (``_Quantized.quantize``).
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .layers import ResBlock, SubPixelConv, TileCrops, run_cropped

FORMAT = 4  # version of the ranges file (1: one range per tensor, the analysis only; 2: no "passes";
# 3: residual blocks only)


def qconv_ops() -> Any:
    """oneDNN's int8 convolution ops (what PyTorch's x86 quantization backend lowers to), or None
    where this torch build lacks them."""
    try:
        onednn = torch.ops.onednn
        return onednn.qconv_prepack, onednn.qconv_pointwise
    except (AttributeError, RuntimeError):
        return None


def supported() -> bool:
    """Whether this torch can run int8 blocks (x86 build with oneDNN's int8 ops)."""
    return torch.backends.mkldnn.is_available() and qconv_ops() is not None


def residual_blocks(layers: nn.Sequential) -> list[int]:
    """Indexes of a transform's residual blocks: the layers that can run in int8."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, ResBlock)]


def upsamplings(g_s: nn.Sequential) -> list[int]:
    """Indexes of the synthesis' sub-pixel convolutions that can run in int8: all but the last,
    which makes the pixels (``synthesis.torch_synthesis`` runs it in float32)."""
    return [i for i, layer in enumerate(g_s) if isinstance(layer, SubPixelConv) and i < len(g_s) - 1]


def _check_blocks(blocks: Any, layers: nn.Sequential, name: str, every: bool) -> dict[str, dict[str, list[float]]]:
    possible = {str(i) for i in residual_blocks(layers) + upsamplings(layers)}  # the analysis has no sub-pixel convs
    if not isinstance(blocks, dict) or (set(blocks) != possible if every else not set(blocks) <= possible):
        shown = sorted(blocks) if isinstance(blocks, dict) else blocks
        msg = f"int8 ranges file has {name} blocks {shown}, the {name} {sorted(possible, key=int)}"
        raise ValueError(msg)
    for key, r in blocks.items():
        layer = layers[int(key)]
        block = isinstance(layer, ResBlock)
        width = layer.conv1.in_channels if block else layer.conv.in_channels
        parts = ("input", "hidden") if block else ("input",)
        values = [r.get(part) if isinstance(r, dict) else None for part in parts]
        if not all(isinstance(v, list) and len(v) == width for v in values):
            msg = f"int8 ranges of {name} block {key} are not {'two lists' if block else 'a list'} of {width} numbers"
            raise ValueError(msg)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for part in values for v in part):
            msg = f"int8 ranges of {name} block {key} are not positive finite numbers"
            raise ValueError(msg)
        if set(r) - {*parts, "passes"} or r.get("passes", 1) not in (1, 2) or isinstance(r.get("passes"), bool):
            msg = f"int8 ranges of {name} block {key} have keys {sorted(r)}, not {list(parts)}; passes, if given, is 1 or 2"
            raise ValueError(msg)
    return blocks


def check_ranges(document: Any, model_id: str, g_a: nn.Sequential,
                 g_s: nn.Sequential) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """(analysis, synthesis) ranges of a parsed ranges file, or ValueError saying what is wrong with
    it. Every analysis block has ranges; the synthesis blocks and sub-pixel convolutions that have
    them are the ones run in int8."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        msg = f"int8 ranges file is not format {FORMAT}"
        raise ValueError(msg)
    if document.get("model") != model_id:
        msg = f"int8 ranges file is for model {document.get('model')!r}, not {model_id}"
        raise ValueError(msg)
    return (_check_blocks(document.get("analysis"), g_a, "analysis", every=True),
            _check_blocks(document.get("synthesis"), g_s, "synthesis", every=False))


def load_ranges(data: bytes, model_id: str, g_a: nn.Sequential, g_s: nn.Sequential) -> tuple[dict, dict]:
    """``check_ranges`` of a ranges file's bytes."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"int8 ranges file is not JSON: {e}"
        raise ValueError(msg) from e
    return check_ranges(document, model_id, g_a, g_s)


def convolutions(layer: nn.Module) -> dict[str, nn.Conv2d]:
    """The convolutions of an int8 layer, by the names its rounded weights are stored under."""
    if isinstance(layer, ResBlock):
        return {"conv1": layer.conv1, "conv2": layer.conv2}
    return {"conv": layer.conv}


def load_rounded(data: bytes, synthesis: dict[str, dict], g_s: nn.Sequential) -> dict[str, dict[str, tuple]]:
    """The rounded weights of a ``.int8.npz`` file's bytes, by layer and convolution, or ValueError
    saying what does not fit the synthesis layers that ``synthesis`` (its ranges) runs in int8."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        msg = f"int8 weights file is not an .npz of arrays: {e}"
        raise ValueError(msg) from e
    rounded: dict[str, dict[str, tuple]] = {}
    for name in arrays:
        parts = name.split("/")
        key, conv = (parts[1], parts[2]) if len(parts) == 4 and parts[0] == "synthesis" else (None, None)
        convs = convolutions(g_s[int(key)]) if key in synthesis else {}
        if conv not in convs or parts[3] not in ("levels", "scales"):
            msg = f"int8 weights file has {name!r}, which is no convolution of a synthesis layer its ranges run in int8"
            raise ValueError(msg)
        levels, scales = arrays.get(f"synthesis/{key}/{conv}/levels"), arrays.get(f"synthesis/{key}/{conv}/scales")
        weight = convs[conv].weight
        if (levels is None or scales is None or levels.dtype != np.int8 or tuple(levels.shape) != tuple(weight.shape)
                or scales.dtype != np.float32 or scales.shape != (weight.shape[0],) or levels.min(initial=0) < -127
                or not np.all(np.isfinite(scales) & (scales > 0))):
            msg = (f"int8 weights of synthesis layer {key} {conv} are not int8 levels in [-127, 127] of shape "
                   f"{tuple(weight.shape)} with {weight.shape[0]} positive float32 scales")
            raise ValueError(msg)
        rounded.setdefault(key, {})[conv] = (torch.from_numpy(levels), torch.from_numpy(scales))
    return rounded


def prepack(weight: torch.Tensor, bias: torch.Tensor, x_scale: float, padding: list[int],
            rounded: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple:
    """A convolution's weights as oneDNN takes them: int8, one scale per output channel, rounded to
    nearest unless ``rounded`` gives the (levels, scales) to use (GPTQ, ``training/int8_calibration.py``)."""
    if rounded is None:
        scales = (weight.abs().amax((1, 2, 3)) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(weight / scales[:, None, None, None]).clamp_(-127, 127).to(torch.int8)
    else:
        q, scales = rounded
    packed = qconv_ops()[0](q, scales, x_scale, 0, [1, 1], padding, [1, 1], 1, None)
    return packed, scales, torch.zeros(len(scales), dtype=torch.int64), bias.float(), padding


class _Quantized:
    """What an int8 layer does to its float32 input: divide each channel by its step and quantize
    it to uint8, in one pass or two (``quantize``)."""

    ZERO = 128  # the quantized input's zero point: symmetric, in uint8
    FINE = 254.0  # steps of the second pass per step of the first (its residual stays within ±127)
    BAND = 1 << 22  # elements quantized or convolved at a time: band-sized scratch, not a copy of x

    def __init__(self, input_range: Any, passes: int, saturate: bool) -> None:
        self.step = self.balanced(input_range) / 127.0  # per input channel
        self.inverse_step = (1.0 / self.step).view(1, -1, 1, 1)
        self.offset = torch.tensor(self.ZERO + 0.5)
        self.passes = passes
        self.saturate = saturate  # clip inputs beyond the ranges instead of widening (``quantize``)

    @staticmethod
    def balanced(ranges: Any) -> torch.Tensor:
        """Each channel's range as its quantization takes it: the geometric mean of its own and the
        largest (the square-root balance of cross-layer equalization). Scaling a channel's
        activations up scales its weights down, and the weights share one int8 scale per output
        channel: fully per-channel steps starve the small channels' weights, one range per tensor
        the small channels' activations."""
        r = torch.as_tensor(ranges, dtype=torch.float32)
        return (r * r.max()).sqrt()

    def _rows(self, x: torch.Tensor) -> int:
        return max(1, self.BAND // max(1, x.shape[0] * x.shape[1] * x.shape[3]))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(uint8 ``round(x / (step · widen)) + 128``, its residual or None, widen): each channel
        divided by its step, the whole by ``widen`` ≥ 1, the smallest that keeps every value in
        range, so nothing saturates: text and flat saturated colours go beyond the photos' ranges
        the analysis was calibrated on. With two passes the rounding residual, in [-0.5, 0.5]
        steps, is quantized too, as ``round(residual · 254) + 128``: the input then carries ~15 bits.
        A band of rows at a time: a multiply-add, a min/max of its result, truncating casts. Where
        a band goes beyond the range, ``widen`` comes from the whole input's reach (every band must
        share the scale), so it does not depend on how the rows were cut into bands.

        A ``saturate`` layer (the synthesis') clips instead: its widen is 1 and each value's
        quantization its own, so a decoder tile gives the same pixels as the whole image (a widened
        scale would follow each tile's own extremes); the analysis needs the widening (a drawing's
        latents)."""
        q = torch.empty(x.shape, dtype=torch.uint8, memory_format=torch.channels_last)
        fine = torch.empty_like(q) if self.passes == 2 else None
        rows, height, widen, r0 = self._rows(x), x.shape[2], 1.0, 0
        while r0 < height:
            band = torch.addcmul(self.offset, x[:, :, r0 : r0 + rows], self.inverse_step, value=1.0 / widen)
            if self.saturate:
                band.clamp_(self.ZERO + 0.5 - 127.0, self.ZERO + 0.5 + 127.0)
            elif (reach := self._reach(band)) > 127.0:  # start again, wider
                if widen == 1.0:
                    widen = max(self._reach(torch.addcmul(self.offset, x[:, :, a : a + rows], self.inverse_step))
                                for a in range(0, height, rows)) / 127.0
                else:  # the widest value rounded just past the edge
                    widen *= reach / 127.0
                r0 = 0
                continue
            coarse = q[:, :, r0 : r0 + rows]
            coarse.copy_(band)  # truncates values in [1, 256): rounds
            if fine is not None:  # (band - coarse - 0.5) · 254 + 128.5, in [1.5, 255.5): truncation rounds
                fine[:, :, r0 : r0 + rows].copy_(band.sub_(coarse).mul_(self.FINE).add_(self.ZERO + 0.5 - self.FINE / 2))
            r0 += rows
        return q, fine, widen

    def _reach(self, band: torch.Tensor) -> float:
        """How far, in steps, the scaled ``band`` goes from the zero point."""
        lo, hi = torch.aminmax(band.permute(0, 2, 3, 1).reshape(-1))
        return max(self.ZERO + 0.5 - float(lo), float(hi) - self.ZERO - 0.5)

    def _add_banded(self, x: torch.Tensor, quantized: torch.Tensor, conv: tuple, scale: float, zero: int) -> torch.Tensor:
        """``x += conv(quantized)`` a band of output rows at a time: the float32 output is a band, not
        a copy of ``x`` (oneDNN's fused sum clones x, which raised a tile's peak memory). The
        rows above and below a band are its padding (rows of the zero point at the edges); integer
        sums make the bands exact. ``conv`` is prepacked with no row padding."""
        _, run = qconv_ops()
        one = [1, 1]
        w, ws, wz, b, pad = conv
        rows, height = self._rows(x), x.shape[2]
        for r0 in range(0, height, rows):
            r1 = min(r0 + rows, height)
            band = quantized[:, :, max(r0 - 1, 0) : r1 + 1]
            if r0 == 0 or r1 == height:
                band = F.pad(band, (0, 0, int(r0 == 0), int(r1 == height)), value=zero)
                band = band.contiguous(memory_format=torch.channels_last)
            x[:, :, r0:r1].add_(run(band, scale, zero, w, ws, wz, b, one, pad, one, 1, 1.0, 0, torch.float32, "none", [], ""))
        return x


class _Block(_Quantized):
    """One residual block in int8: quantize the float32 input, convolve to a uint8 ReLU output,
    convolve that and add it to the float32 input in place."""

    def __init__(self, block: ResBlock, input_range: Any, hidden_range: Any, passes: int = 1,
                 saturate: bool = False, rounded: dict[str, tuple] | None = None) -> None:
        super().__init__(input_range, passes, saturate)
        self.module = block
        self.hidden = self.balanced(hidden_range)  # ReLU outputs scaled to [0, 1]
        w, rounded = self.scaled_weights(), rounded or {}
        b1, b2 = block.conv1.bias.detach().float(), block.conv2.bias.detach().float()
        self.conv1 = prepack(w["conv1"], b1 / self.hidden, 1.0, [1, 1], rounded.get("conv1"))
        self.conv2 = prepack(w["conv2"], b2, 1 / 255.0, [0, 1], rounded.get("conv2"))  # runs on bands padded by hand
        # the same int8 weights without the bias, for the input's rounding residual (``passes`` 2)
        self.fine = prepack(w["conv1"], torch.zeros_like(b1), 1.0, [1, 1], rounded.get("conv1")) if passes == 2 else None

    def scaled_weights(self) -> dict[str, torch.Tensor]:
        """The float weights its int8 convolutions round: scaled for the quantized input (per
        input channel) and the ReLU output (per hidden channel)."""
        hidden = self.hidden
        return {"conv1": self.module.conv1.weight.detach().float() * self.step.view(1, -1, 1, 1) / hidden.view(-1, 1, 1, 1),
                "conv2": self.module.conv2.weight.detach().float() * hidden.view(1, -1, 1, 1)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for one image's ``x`` (1, C, H, W) float32 channels-last, written into ``x``."""
        _, conv = qconv_ops()
        one = [1, 1]
        qx, fine, widen = self.quantize(x)
        w, ws, wz, b, pad = self.conv1
        if fine is None:
            h = conv(qx, widen, self.ZERO, w, ws, wz, b, one, pad, one, 1, widen / 255.0, 0, torch.uint8, "relu", [], "")
        else:
            h = self._two_pass(qx, fine, widen)
        del qx, fine
        return self._add_banded(x, h, self.conv2, widen / 255.0, 0)

    def _two_pass(self, qx: torch.Tensor, fine: torch.Tensor, widen: float) -> torch.Tensor:
        """The first convolution's uint8 ReLU output from a two-pass input: both passes in float32
        (integer sums, then one rounding each), added, rectified and quantized as one pass'
        output is."""
        _, conv = qconv_ops()
        one = [1, 1]
        w, ws, wz, b, pad = self.conv1
        h = conv(qx, widen, self.ZERO, w, ws, wz, b, one, pad, one, 1, 1.0, 0, torch.float32, "none", [], "")
        w, ws, wz, b, pad = self.fine
        h.add_(conv(fine, widen / self.FINE, self.ZERO, w, ws, wz, b, one, pad, one, 1, 1.0, 0, torch.float32, "none", [], ""))
        h.clamp_(0.0, widen).mul_(255.0 / widen).add_(0.5)  # as oneDNN's uint8 output: ReLU, round, saturate
        out = torch.empty(h.shape, dtype=torch.uint8, memory_format=torch.channels_last)
        return out.copy_(h)



class _Upsample(_Quantized):
    """A sub-pixel convolution in int8: its input quantized (two passes: it is the whole signal),
    convolved to float32, pixel-shuffled."""

    def __init__(self, layer: SubPixelConv, input_range: Any, passes: int = 2, saturate: bool = True,
                 rounded: dict[str, tuple] | None = None) -> None:
        super().__init__(input_range, passes, saturate)
        self.module = layer
        w, rounded = self.scaled_weights()["conv"], rounded or {}
        bias = layer.conv.bias.detach().float()
        self.conv = prepack(w, bias, 1.0, [1, 1], rounded.get("conv"))
        self.fine = prepack(w, torch.zeros_like(bias), 1.0, [0, 1], rounded.get("conv")) if passes == 2 else None

    def scaled_weights(self) -> dict[str, torch.Tensor]:
        """The float weights its int8 convolution rounds: scaled for the quantized input."""
        return {"conv": self.module.conv.weight.detach().float() * self.step.view(1, -1, 1, 1)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for one image's ``x`` (1, C, H, W) float32 channels-last."""
        _, conv = qconv_ops()
        one = [1, 1]
        qx, fine, widen = self.quantize(x)
        w, ws, wz, b, pad = self.conv
        out = conv(qx, widen, self.ZERO, w, ws, wz, b, one, pad, one, 1, 1.0, 0, torch.float32, "none", [], "")
        del qx
        if fine is not None:  # the rounding residual's share, a band of rows at a time
            self._add_banded(out, fine, self.fine, widen / self.FINE, self.ZERO)
        return self.module.shuffle(out)


class Int8Layers:
    """A transform (float32, on the CPU) with the residual blocks and sub-pixel convolutions that
    ``ranges`` names in int8, their weights ``rounded`` (by layer and convolution: (levels, scales),
    GPTQ) or rounded to nearest; call it like the transform. ``saturate``: the layers clip
    inputs beyond their ranges rather than widen their scale (the synthesis', ``_Quantized.quantize``).

    The images of a batch run one at a time: a scale widened for one image must not change
    another's output (and int8 convolutions gain nothing from a batch)."""

    def __init__(self, layers: nn.Sequential, ranges: dict[str, dict[str, list[float]]], saturate: bool = False,
                 rounded: dict[str, dict[str, tuple]] | None = None) -> None:
        if not supported():
            msg = "this torch build has no oneDNN int8 convolutions; use precision float32"
            raise RuntimeError(msg)
        self.layers = list(layers)
        rounded = rounded or {}
        self.blocks: dict[int, _Quantized] = {}
        for key, r in ranges.items():
            layer, passes = layers[int(key)], r.get("passes", 1)
            if isinstance(layer, ResBlock):
                self.blocks[int(key)] = _Block(layer, r["input"], r["hidden"], passes, saturate, rounded.get(key))
            else:
                self.blocks[int(key)] = _Upsample(layer, r["input"], passes, saturate, rounded.get(key))

    def __call__(self, x: torch.Tensor, crops: TileCrops | None = None, stop: int | None = None) -> torch.Tensor:
        """The transform of ``x`` (its layers up to ``stop``, default all), each layer's output cut
        by ``crops`` (a tile's synthesis)."""
        if x.shape[0] > 1:
            return torch.cat([self._one(image, crops, stop) for image in x.split(1)])
        return self._one(x, crops, stop)

    def _one(self, x: torch.Tensor, crops: TileCrops | None, stop: int | None) -> torch.Tensor:
        steps = [self.blocks.get(i, layer) for i, layer in enumerate(self.layers[:stop])]
        return run_cropped(steps, x.float().contiguous(memory_format=torch.channels_last), crops)
