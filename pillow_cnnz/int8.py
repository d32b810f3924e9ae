"""The encoder's analysis with its residual blocks in 8-bit integers (oneDNN, x86 CPUs).

Why: on a CPU without bfloat16 hardware the float32 analysis is most of an encode (300-380 ms
of a Kodak one on a 2-core AVX-512 Xeon), and its residual blocks are 76 % of its
multiply-adds. oneDNN runs them in int8 (VNNI) about 4x faster than float32.

Why only there: the analysis ends in rounding to integer symbols, so what matters is how far
its output moves. Quantizing the residual blocks' inputs moves the latents less than a
bfloat16 analysis does (rms 0.023 against 0.038 quantization steps at quality 8 on ../shared/data/val,
``benchmarks/analysis_precision.py``), because the error only enters the branch the block adds,
never the sum it adds to, which stays float32. Quantizing the stride-2 convolutions' inputs
(the whole signal) moved them 3-5x more than every residual block together, so those,
GDN and the first convolution stay float32. The decoder never runs this: a file decodes to
the same latents whichever precision wrote it, and oneDNN's int8 convolutions accumulate in
integers, so the same pixels give the same bytes at any thread count.

Each block's input is quantized with a symmetric scale, its ReLU output with a non-negative
one; both come from the activation ranges the training command ``int8`` measured on training
images (``weights/<name>.int8.json``, verified like the weights), widened for an input that
goes beyond them (``_Block.scales``). Weights are quantized per output channel when the
analysis is built.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .layers import ResBlock

FORMAT = 1  # version of the ranges file
QUANTILE = 0.9999  # of a block's |input| its scale covers (beyond: widened, ``_Block.scales``)
# of the ReLU outputs: those saturate, and their tails are longer (the 0.99999 quantile is 1.2-1.8x
# the 0.9999 one): at 0.9999 a saturated red disc moved latents by 2 steps, at 0.99999 by 0.15
HIDDEN_QUANTILE = 0.99999
_SAMPLE = 1 << 22  # activations a range is measured on, per tensor (torch.quantile's limit is 2**24)


def _ops() -> Any:
    """oneDNN's int8 convolution ops (what PyTorch's x86 quantization backend lowers to), or None
    where this torch build lacks them."""
    try:
        onednn = torch.ops.onednn
        return onednn.qconv_prepack, onednn.qconv_pointwise
    except (AttributeError, RuntimeError):
        return None


def supported() -> bool:
    """Whether this torch can run the int8 analysis (x86 build with oneDNN's int8 ops)."""
    return torch.backends.mkldnn.is_available() and _ops() is not None


def residual_blocks(g_a: nn.Sequential) -> list[int]:
    """Indexes of the analysis' residual blocks: the layers that run in int8."""
    return [i for i, layer in enumerate(g_a) if isinstance(layer, ResBlock)]


def measure_ranges(g_a: nn.Sequential, images: Iterable[torch.Tensor], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per residual block, the ``QUANTILE`` of |input| and the ``HIDDEN_QUANTILE`` of its ReLU output over ``images``
    ((1, 3, H, W) float in [0, 1]), taken on a seeded sample of each tensor; the largest over images."""
    blocks = set(residual_blocks(g_a))
    generator = torch.Generator().manual_seed(seed)
    ranges: dict[str, dict[str, float]] = {str(i): {"input": 0.0, "hidden": 0.0} for i in sorted(blocks)}

    def quantile(t: torch.Tensor, q: float) -> float:
        v = t.detach().abs().flatten().float()
        if v.numel() > _SAMPLE:
            v = v[torch.randint(v.numel(), (_SAMPLE,), generator=generator)]
        return float(torch.quantile(v, q))

    with torch.inference_mode():
        for x in images:
            for i, layer in enumerate(g_a):
                if i in blocks:
                    r = ranges[str(i)]
                    r["input"] = max(r["input"], quantile(x, QUANTILE))
                    r["hidden"] = max(r["hidden"], quantile(F.relu(layer.conv1(x)), HIDDEN_QUANTILE))
                x = layer(x)
    return ranges


def ranges_document(model_id: str, ranges: dict[str, dict[str, float]], source: dict) -> dict:
    """The ranges file's contents (``source`` says what they were measured on)."""
    return {"format": FORMAT, "model": model_id, "quantile": {"input": QUANTILE, "hidden": HIDDEN_QUANTILE},
            "source": source, "blocks": ranges}


def check_ranges(document: Any, model_id: str, g_a: nn.Sequential) -> dict[str, dict[str, float]]:
    """The blocks' ranges of a parsed ranges file, or ValueError saying what is wrong with it."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        msg = f"int8 ranges file is not format {FORMAT}"
        raise ValueError(msg)
    if document.get("model") != model_id:
        msg = f"int8 ranges file is for model {document.get('model')!r}, not {model_id}"
        raise ValueError(msg)
    blocks = document.get("blocks")
    expected = {str(i) for i in residual_blocks(g_a)}
    if not isinstance(blocks, dict) or set(blocks) != expected:
        msg = f"int8 ranges file has blocks {sorted(blocks) if isinstance(blocks, dict) else blocks}, the analysis {sorted(expected)}"
        raise ValueError(msg)
    for key, r in blocks.items():
        values = [r.get(name) if isinstance(r, dict) else None for name in ("input", "hidden")]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
            msg = f"int8 ranges of block {key} are not positive finite numbers: {r!r}"
            raise ValueError(msg)
    return blocks


def load_ranges(data: bytes, model_id: str, g_a: nn.Sequential) -> dict[str, dict[str, float]]:
    """``check_ranges`` of a ranges file's bytes."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"int8 ranges file is not JSON: {e}"
        raise ValueError(msg) from e
    return check_ranges(document, model_id, g_a)


class _Block:
    """One residual block in int8: quantize the float32 input, convolve to a uint8 ReLU output,
    convolve that and add it to the float32 input in place."""

    def __init__(self, block: ResBlock, input_range: float, hidden_range: float) -> None:
        self.x_scale, self.x_zero = input_range / 127.0, 128  # symmetric, in uint8
        self.h_scale = hidden_range / 255.0  # ReLU output: non-negative
        self.conv1 = self._prepack(block.conv1, self.x_scale, [1, 1])
        self.conv2 = self._prepack(block.conv2, self.h_scale, [0, 1])  # runs on bands padded by hand

    @staticmethod
    def _prepack(conv: nn.Conv2d, x_scale: float, padding: list[int]) -> tuple:
        prepack = _ops()[0]
        w = conv.weight.detach().float()
        scales = (w.abs().amax((1, 2, 3)) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(w / scales[:, None, None, None]).clamp_(-127, 127).to(torch.int8)
        packed = prepack(q, scales, x_scale, 0, [1, 1], padding, [1, 1], 1, None)
        return packed, scales, torch.zeros(len(scales), dtype=torch.int64), conv.bias.detach().float(), padding

    BAND = 1 << 22  # elements quantized at a time: a band-sized float scratch, not a copy of x

    def scales(self, x: torch.Tensor) -> tuple[float, float]:
        """(input, hidden) scales for ``x``: the measured ones, widened together where ``x``
        goes beyond its range, so nothing saturates. Text and flat saturated colours do: with
        the photos' ranges a drawing lost 0.2-0.3 dB against float32, widened it keeps within
        0.04 dB. Photos stay inside their range and get the measured scales."""
        lo, hi = torch.aminmax(x.permute(0, 2, 3, 1).reshape(-1))  # a view of channels-last x: no copy
        widen = max(1.0, max(-float(lo), float(hi)) / (127.0 * self.x_scale))
        return self.x_scale * widen, self.h_scale * widen

    def quantize(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """uint8 ``round(x / scale) + 128``, a band of rows at a time, in two passes: one
        multiply-add, one truncating cast (of a value in [1.5, 255.5] when ``scale`` covers
        |x| ≤ 127·scale, as ``scales`` makes it: rounding, with no clamp needed)."""
        q = torch.empty(x.shape, dtype=torch.uint8, memory_format=torch.channels_last)
        offset = torch.tensor(self.x_zero + 0.5)
        rows = max(1, self.BAND // max(1, x.shape[0] * x.shape[1] * x.shape[3]))
        for r0 in range(0, x.shape[2], rows):
            q[:, :, r0 : r0 + rows].copy_(torch.add(offset, x[:, :, r0 : r0 + rows], alpha=1.0 / scale))
        return q

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for one image's ``x`` (1, C, H, W), written into ``x``."""
        _, conv = _ops()
        one = [1, 1]
        x_scale, h_scale = self.scales(x)
        qx = self.quantize(x, x_scale)
        w, ws, wz, b, pad = self.conv1
        h = conv(qx, x_scale, self.x_zero, w, ws, wz, b, one, pad, one, 1, h_scale, 0, torch.uint8, "relu", [], "")
        del qx
        # The second convolution a band of output rows at a time, each added to x: its float32
        # output is a band, not a copy of x (oneDNN's fused sum cloned x, +37 MB at the peak of a
        # 1248-pixel tile). The rows above and below a band are its padding (zeros at the edges:
        # the ReLU output's zero point is 0); integer sums make the bands exact.
        w, ws, wz, b, pad = self.conv2
        rows = max(1, self.BAND // max(1, x.shape[0] * x.shape[1] * x.shape[3]))
        height = x.shape[2]
        for r0 in range(0, height, rows):
            r1 = min(r0 + rows, height)
            band = h[:, :, max(r0 - 1, 0) : r1 + 1]
            if r0 == 0 or r1 == height:
                band = F.pad(band, (0, 0, int(r0 == 0), int(r1 == height))).contiguous(memory_format=torch.channels_last)
            x[:, :, r0:r1].add_(conv(band, h_scale, 0, w, ws, wz, b, one, pad, one, 1, 1.0, 0, torch.float32, "none", [], ""))
        return x


class Int8Analysis:
    """``g_a`` (float32, on the CPU) with its residual blocks in int8; call it like ``g_a``.

    The result's latents differ from float32's by rounding-size amounts (see the module
    docstring). The images of a batch run one at a time: a scale widened for one image
    must not change another's bytes (and int8 convolutions gain nothing from a batch)."""

    def __init__(self, g_a: nn.Sequential, ranges: dict[str, dict[str, float]]) -> None:
        if not supported():
            msg = "this torch build has no oneDNN int8 convolutions; use precision float32"
            raise RuntimeError(msg)
        self.layers = list(g_a)
        self.blocks = {i: _Block(g_a[i], ranges[str(i)]["input"], ranges[str(i)]["hidden"])
                       for i in residual_blocks(g_a)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._one(image) for image in x.split(1)]) if x.shape[0] > 1 else self._one(x)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(self.layers):
            x = self.blocks[i](x) if i in self.blocks else layer(x)
        return x
