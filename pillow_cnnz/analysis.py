"""The encoder's float transforms: the analysis tile by tile in torch, gains, the hyper-analysis, and (``method`` > 0) the refinement of the latents."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import heap, refine, tiling
from . import precision as policy
from .weights import load


def run_analysis(net: Any, rgbs: list[np.ndarray], device: str, precision: str, g_a: Any = None) -> np.ndarray:
    """Latents y (N, M, H/16, W/16) float32 of same-size (H, W, 3) uint8 images, tile by tile.

    The images are taken as edge-padded to a multiple of 64; each tile pads its own
    window, so no padded copy of a whole (possibly 50-megapixel) image is made. ``g_a``
    replaces ``net.g_a`` (the int8 analysis).
    """
    torch = policy.import_torch()
    g_a = net.g_a if g_a is None else g_a
    grid = tiling.latent_grid(*rgbs[0].shape[:2])
    y = np.empty((len(rgbs), net.config.M, *grid), np.float32)
    s = tiling.LATENT_STRIDE
    windows = list(tiling.windows(*grid, grid))
    for (r0, r1, c0, c1), (a0, a1, b0, b1) in windows:
        tile = np.stack([tiling.edge_padded(im, a0 * s, a1 * s, b0 * s, b1 * s) for im in rgbs])
        x = torch.from_numpy(tile).to(device).permute(0, 3, 1, 2)
        x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
        out = policy.run_in(torch, g_a, x, precision)
        y[:, :, r0:r1, c0:c1] = out[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0].float().cpu().numpy()
        if len(windows) > 1:  # a tile's temporaries otherwise fragment the heap and raise the peak
            del tile, x, out
            heap.return_freed()
    return y


def analyse_batch(rgbs: list[np.ndarray], qualities: list[float], device: str | None = None,
                  precision: str | None = None, method: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(integer ẑ, gained latents y) of same-size (H, W, 3) uint8 images.

    The transforms run on the whole batch at once (one pass per tile), which keeps a GPU busy.
    ``method`` > 0 then refines the latents on each image's own loss (``refine.py``).
    """
    torch = policy.import_torch()
    steps = refine.steps_for(method)
    device = policy.resolve_device(device)
    model = load()
    precision = policy.resolve_precision(precision, device, analysis=True, int8=model.has_int8)
    wide = "float64" if precision == "float64" else "float32"  # the weights', and h_a's
    net = model.net(device, wide)
    g_a = model.int8_analysis() if precision == "int8" else net.g_a
    gains = np.stack([2 ** model.log2_gains(q)[0] for q in qualities]).astype(np.float32)
    with torch.inference_mode():
        y = run_analysis(net, rgbs, device, precision, g_a)  # hands freed heap back tile by tile
        y *= gains[:, :, None, None]
        # ẑ in float32 (float64) whatever the analysis ran in: h_a is a small part of the analysis,
        # and oneDNN's bfloat16 5x5 stride-2 convolution returns garbage where its output is one
        # column wide (an image at most 64 pixels wide): calls disagreed, with huge values of ẑ
        z = policy.run_in(torch, net.h_a, torch.from_numpy(y).to(device), wide).float().cpu().numpy()
    if steps:
        y, z = refine.refine(model, rgbs, y, z, qualities, steps, device)
    z = np.round(z).astype(np.int64)
    return [(z[i], y[i]) for i in range(len(rgbs))]
