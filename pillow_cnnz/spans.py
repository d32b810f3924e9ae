"""Which part of each layer's output a tile of a synthesis needs (standard library only).

Shared by the torch synthesis (``layers.TileCrops``) and the numpy one (``synthesis_np``),
so both compute the same parts of the same layers and a decode's cost follows the pixels it
makes, not the 16-pixel latents or 64-pixel blocks around them.
"""
from __future__ import annotations

import math


def needed(reach: list[tuple[int, int]], core: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """Along one axis, for layers ``reach`` (each one's radius in its input's pixels and its
    upsampling factor) run on an input ``size`` pixels long: the span of each layer's output that
    the last layer's output pixels ``[core)`` depend on, in that output's pixels, within the
    'same'-padded outputs of the whole input (clipped to its edges, where the padding is the
    whole input's own).

    A layer computed on just its input's span, zero-padded at the cut, is wrong within its
    radius of the cut; the next span leaves exactly that out, so the pixels of ``core`` are
    those of the whole input."""
    scale = math.prod(f for _, f in reach)
    a, b = core
    spans = []
    for radius, f in reversed(reach):
        spans.append((a, b))
        scale //= f
        a, b = max(a // f - radius, 0), min(-(-b // f) + radius, size * scale)
    return spans[::-1]
