"""Reduced-resolution decoding: the output heads' file, which layers of the synthesis a scale runs, and the sizes it gives.

A model may ship heads (``layers.output_head``) that read the synthesis' features at an
intermediate level and give the image at 1/2, 1/4 or 1/8 of its size: such a decode runs
``g_s`` only up to the head's tap, so it costs a fraction of a full one, and since the latents
and their entropy coding are untouched, every file of the model gains it. The heads live in
their own file (``<model>.heads.npz``, named with its SHA-256 in the model's manifest entry,
``training/heads.py`` writes it); a model without one decodes a scale by a full decode and an
area reduction, so every scale works with every model.

Torch-free: the numpy synthesis (``synthesis_np``) and the torch one (``synthesis``) both run
what this module describes.
"""
from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SCALES = (1, 2, 4, 8)  # output size divisors a decode accepts (``draft``, ``decode(scale=)``)
FORMAT = 1  # version of the heads file's layout (its ``meta``)


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """(width, height) of an image decoded at 1/``scale``: rounded up, as JPEG's DCT scaling."""
    return -(-width // scale), -(-height // scale)


def check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in SCALES:
        msg = f"scale must be one of {', '.join(map(str, SCALES))} (the output is 1/scale of the size), got {scale!r}"
        raise ValueError(msg)
    return int(scale)


def draft_scale(width: int, height: int, requested: tuple[int, int]) -> int:
    """The scale ``draft`` decodes at for a ``requested`` (width, height): Pillow's JPEG rule, the
    largest ``s`` with ``s <= min(width // requested[0], height // requested[1])`` (1 if none), so
    ``thumbnail()`` then resamples from an image no smaller than it needs."""
    ratio = min(width // max(requested[0], 1), height // max(requested[1], 1))
    return max((s for s in SCALES if s <= ratio), default=1)


def synthesis_levels(config: Mapping) -> list[tuple[int, int]]:
    """(channels, resolution divisor) of the output of each layer of ``g_s`` (``model.CnnzNet``'s
    layout: per level a sub-pixel convolution, an inverse GDN and the level's residual blocks,
    then the sub-pixel convolution to RGB)."""
    out, level = [], 16
    for width, blocks in zip(config["dec"], config["res"]):
        level //= 2
        out += [(width, level)] * (2 + blocks)
    return out + [(3, level // 2)]


def readable_taps(config: Mapping) -> list[int]:
    """The layers of ``g_s`` a head may read: each level's inverse GDN and residual blocks (a
    sub-pixel convolution and the GDN after it run as one step in ``synthesis_np``)."""
    taps, i = [], 0
    for blocks in config["res"]:
        taps += list(range(i + 1, i + 2 + blocks))
        i += 2 + blocks
    return taps


@dataclass(frozen=True)
class Head:
    """One shipped head: the ``g_s`` layer whose output it reads, and its arrays (torch's layout:
    ``0.weight``, ``0.bias`` of the hidden 3x3 convolution, ``2.conv.weight``, ``2.conv.bias`` of
    the sub-pixel one)."""

    scale: int
    tap: int
    upscale: int  # the sub-pixel convolution's factor: 1, or 2 where it reads a level twice coarser
    arrays: dict[str, np.ndarray]


def parse(data: bytes, model_id: str, config: Mapping) -> dict[int, Head]:
    """The heads of a verified heads file, checked against the model they serve. Raises ValueError."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        files = {name: npz[name] for name in npz.files}
    try:
        meta = json.loads(str(files.pop("meta")))
    except (KeyError, ValueError) as e:
        msg = "heads file has no valid meta"
        raise ValueError(msg) from e
    if meta.get("format") != FORMAT or meta.get("model_id") != model_id:
        msg = f"heads file is format {meta.get('format')} for model {meta.get('model_id')}, not format {FORMAT} for {model_id}"
        raise ValueError(msg)
    levels = synthesis_levels(config)
    out = {}
    for key, spec in meta["heads"].items():
        scale, tap = int(key), int(spec["tap"])
        if scale not in SCALES[1:] or tap not in readable_taps(config):
            msg = f"heads file names head 1/{scale} at layer {tap}, which the synthesis does not have"
            raise ValueError(msg)
        channels, level = levels[tap]
        arrays = {name[len(key) + 1:]: a for name, a in files.items() if name.startswith(key + "/")}
        shapes = {name: a.shape for name, a in arrays.items()}
        hidden = shapes.get("0.weight", (0,))[0]
        upscale = level // scale
        expected = {"0.weight": (hidden, channels, 3, 3), "0.bias": (hidden,),
                    "2.conv.weight": (3 * upscale**2, hidden, 3, 3), "2.conv.bias": (3 * upscale**2,)}
        if upscale not in (1, 2) or level % scale or shapes != expected:
            msg = f"heads file's head 1/{scale} does not fit layer {tap} of the synthesis ({channels} channels at 1/{level})"
            raise ValueError(msg)
        out[scale] = Head(scale, tap, upscale, arrays)
    return out
