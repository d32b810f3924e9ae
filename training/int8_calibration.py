"""Calibration of the int8 layers (``pillow_cnnz/int8.py``): activation ranges, GPTQ rounding of their
weights, and the ranges file that ships them; the ``int8`` command (``int8ranges.py``) runs it.

The runtime only reads what this writes: a ranges file (per channel |input| of each int8 layer and,
for a residual block, of its ReLU output) and the rounded weights (``.int8.npz``).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pillow_cnnz.int8 import FORMAT
from pillow_cnnz.layers import ResBlock, SubPixelConv

# of each channel's |input|, what its scale covers (beyond: widened or clipped, ``int8._Quantized.quantize``)
QUANTILE = 0.9999
# of the ReLU outputs: those saturate, and their tails are longer than the inputs' (a saturated colour
# moved the analysis' latents by whole steps at the inputs' quantile)
HIDDEN_QUANTILE = 0.99999
# A sub-pixel convolution's input range is this many times its measured quantile: the input is the
# whole signal, which clipping cuts (a drawing's edges lose most), and with two passes the wider step
# costs nothing measurable (experiments/int8_synthesis)
UPSAMPLING_HEADROOM = 4.0
_POSITIONS = 1 << 16  # pixel positions a channel's range is measured on, per tensor
_DEAD = 2.0**-10  # the smallest range, relative to the largest of its tensor (see measure_ranges)


def synthesis_levels(g_s: nn.Sequential) -> list[list[int]]:
    """The synthesis' residual blocks per level, coarse to fine (a level starts at each upsampling)."""
    levels: list[list[int]] = []
    for i, layer in enumerate(g_s):
        if isinstance(layer, SubPixelConv):
            levels.append([])
        elif isinstance(layer, ResBlock):
            levels[-1].append(i)
    return levels[:-1]  # the last upsampling makes the pixels: no blocks after it


def _sample(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(C, n) values of (1, C, H, W) ``t`` at ``_POSITIONS`` seeded positions (all of them if fewer)."""
    v = t.detach().float().flatten(2)[0]
    return v[:, torch.randint(v.shape[1], (_POSITIONS,), generator=generator)] if v.shape[1] > _POSITIONS else v


def measure_ranges(layers: nn.Sequential, inputs: Iterable[torch.Tensor], blocks: Iterable[int],
                   seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per layer of ``blocks`` (residual blocks and sub-pixel convolutions), each channel's
    ``QUANTILE`` of |input| and, for a block, ``HIDDEN_QUANTILE`` of its ReLU output over ``inputs``
    ((1, C, H, W) float32, what ``layers`` takes), taken on a seeded sample of positions of each
    tensor; the largest over inputs. A sub-pixel convolution's input range is ``UPSAMPLING_HEADROOM``
    times that."""
    blocks = set(blocks)
    generator = torch.Generator().manual_seed(seed)
    found: dict[int, list[torch.Tensor]] = {}

    def quantile(t: torch.Tensor, q: float) -> torch.Tensor:
        return torch.quantile(_sample(t, generator).abs(), q, dim=1)

    with torch.inference_mode():
        for x in inputs:
            for i, layer in enumerate(layers):
                if i in blocks:
                    now = [quantile(x, QUANTILE) * (1.0 if isinstance(layer, ResBlock) else UPSAMPLING_HEADROOM)]
                    if isinstance(layer, ResBlock):
                        now.append(quantile(F.relu(layer.conv1(x)), HIDDEN_QUANTILE))
                    found[i] = [torch.maximum(a, b) for a, b in zip(found[i], now)] if i in found else now
                x = layer(x)
    # a channel never active (a ReLU output that stays 0) gets a range far below the others': any
    # positive step serves it, and the ranges file holds positive numbers only
    return {str(i): {part: torch.maximum(r, r.max() * _DEAD).clamp_min(_DEAD).tolist()
                     for part, r in zip(("input", "hidden"), found[i])} for i in sorted(found)}


def conv_inputs(layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the convolutions of ``layer`` (an int8 layer of ``int8.Int8Layers.blocks``) see of its float
    input ``x``, in the units its scaled weights (``scaled_weights()``) take: what ``gptq``'s hessians
    are measured on."""
    if isinstance(layer.module, ResBlock):
        hidden = F.relu(layer.module.conv1(x)) / layer.hidden.view(1, -1, 1, 1)
        return {"conv1": x * layer.inverse_step, "conv2": hidden.clamp_(max=1.0)}
    return {"conv": x * layer.inverse_step}


def gptq(weight: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 levels, per-output-channel scales) of a convolution's weights (O, C, k, k), as
    rounding to nearest would scale them (``max |w| / 127``), but rounded one input column at a
    time, each rounding's error pushed onto the columns not yet rounded as far as the inputs
    co-vary (GPTQ, Frantar et al. 2023). ``hessian``: the sum of x xᵀ over calibration positions,
    x a position's C·k·k inputs in the units the weights are scaled for (``hessian``).

    Why: what an int8 layer of the synthesis still loses with a two-pass input is its weights'
    rounding, and it is their error on these inputs that matters, not their own
    (experiments/int8_synthesis compares both roundings)."""
    out = weight.shape[0]
    w = weight.detach().double().reshape(out, -1).clone()
    scales = (w.abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that were always 0: their weights round to nearest
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    levels = torch.empty_like(w)
    for j in range(w.shape[1]):
        levels[:, j] = torch.round(w[:, j] / scales).clamp_(-127, 127)
        error = (w[:, j] - levels[:, j] * scales) / inverse[j, j]
        w[:, j + 1 :] -= error[:, None] * inverse[j, j + 1 :][None, :]
    return levels.to(torch.int8).reshape(weight.shape), scales.float()


def hessian(x: torch.Tensor, kernel: int = 3, generator: torch.Generator | None = None,
            positions: int = _POSITIONS) -> torch.Tensor:
    """Σ x xᵀ (float64, (C·k·k)²) over up to ``positions`` seeded positions of (1, C, H, W) ``x``,
    x a position's zero-padded k×k neighbourhood in the order of a weight's ``reshape(O, -1)``."""
    pad = kernel // 2
    _, c, h, w = x.shape
    padded = F.pad(x.detach().double(), (pad, pad, pad, pad))
    n = h * w
    where = torch.randint(n, (positions,), generator=generator) if n > positions else torch.arange(n)
    rows, cols = where // w, where % w
    taps = torch.stack([padded[0, :, rows + dy, cols + dx] for dy in range(kernel) for dx in range(kernel)], 1)
    taps = taps.reshape(c * kernel * kernel, -1)  # (C, k·k, n): channel-major, as the weights
    return taps @ taps.T


def with_two_pass(ranges: dict[str, dict], blocks: Iterable[int]) -> dict[str, dict]:
    """``ranges`` with the entries of ``blocks`` marked to quantize their input in two passes
    (``"passes": 2``, ``int8._Quantized.quantize``)."""
    two_pass = {str(i) for i in blocks}
    return {key: {**r, "passes": 2} if key in two_pass else r for key, r in ranges.items()}


def ranges_document(model_id: str, analysis: dict, synthesis: dict, source: dict,
                    two_pass: Iterable[int] = ()) -> dict:
    """The ranges file's contents (``source`` says what they were measured on); the synthesis blocks
    of ``two_pass`` quantize their input in two passes."""
    return {"format": FORMAT, "model": model_id, "quantile": {"input": QUANTILE, "hidden": HIDDEN_QUANTILE},
            "source": source, "analysis": analysis, "synthesis": with_two_pass(synthesis, two_pass)}


def rounded_arrays(rounded: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, np.ndarray]:
    """The synthesis' rounded weights (``gptq``) as the arrays of the ``.int8.npz`` file."""
    arrays = {}
    for key, convs in rounded.items():
        for name, (levels, scales) in convs.items():
            arrays[f"synthesis/{key}/{name}/levels"] = levels.numpy()
            arrays[f"synthesis/{key}/{name}/scales"] = scales.numpy()
    return arrays
