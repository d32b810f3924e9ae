"""Encoder-side latent refinement: spend encode time to get smaller files at the same quality.

The analysis transform predicts latents in one pass, trained to be good on average over
many images; for one given image they can be improved. With ``method`` > 0 the encoder
takes the analysis' latents y and hyper-latents z as a starting point and runs a few steps
of Adam on this image's own rate-distortion loss (bits + λ·255²·MSE, the training loss at
the file's quality). The decoder is untouched: a refined file is an ordinary ``.cnnz``.

Rounding is relaxed with stochastic Gumbel annealing (Yang, Bamler & Mandt 2020, "Improving
Inference for Neural Image Compression"): each latent is a soft mix of its two nearest
integers around the mean, the mix hardening as the steps go; ẑ is rounded straight-through.
The noise comes from a seeded generator, so the same image gives the same bytes.

The synthesis' gradient is accumulated tile by tile (``tiling``'s tiles and halo), so its
memory is bounded by a tile whatever the image size; the rate terms run on the whole latent
grid (1/256 of the pixels, `Config.M` channels), which is what grows with the image.
Each step costs about three synthesis passes; what the methods gain and cost is measured in
docs/performance.md. Torch is imported by the functions that run it, so choosing a method
(``check_method``) imports none.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import latents, tiling
from . import precision as policy
from .weights import Weights

# Steps of Adam per ``method`` (0 = the analysis alone, like WebP's method 0 = fastest).
METHOD_STEPS = (0, 2, 4, 6, 8, 10, 12)
LEARNING_RATE = 0.02  # 0.03 overshoots on some images at 12 steps
TAU_START, TAU_END = 0.5, 0.1  # Gumbel-softmax temperature, annealed geometrically


def check_method(method: int) -> int:
    if isinstance(method, bool) or not isinstance(method, (int, np.integer)) or not 0 <= method < len(METHOD_STEPS):
        msg = f"method must be an integer from 0 (fastest) to {len(METHOD_STEPS) - 1} (smallest files), got {method!r}"
        raise ValueError(msg)
    return int(method)


def _soft_round(r: Any, tau: float, generators: list) -> Any:
    """A Gumbel-softmax sample between floor(r) and floor(r) + 1, weighted by closeness.

    Each image of the batch draws from its own generator: a file does not depend on the
    images it was encoded with."""
    import torch

    lower = torch.floor(r).detach()
    frac = (r - lower).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)]) / tau
    u = torch.stack([torch.rand(logits[:, 0].shape, generator=g, device=r.device) for g in generators], dim=1)
    weights = torch.softmax(logits - torch.log(-torch.log(u.clamp_(1e-9, 1 - 1e-9))), dim=0)
    return lower + weights[1]


def _weighted_distortion(net: Any, y_hat: Any, rgbs: list[np.ndarray], windows: list[tuple],
                         stride: int, lam: Any, bfloat16: bool) -> Any:
    """Per image λ·255²·MSE of the synthesis of ``y_hat``, one tile at a time. When ``y_hat``
    requires a gradient, each tile's is added to ``y_hat.grad`` as it goes (bounded memory).
    ``bfloat16`` runs the synthesis under autocast: faster steps on a CPU with native bfloat16,
    for practically the same loss (the latents' rounding stays float32)."""
    import torch

    total = torch.zeros(len(rgbs), device=y_hat.device)
    for (r0, r1, c0, c1), (a0, a1, b0, b1) in windows:
        target = torch.from_numpy(np.stack([im[r0 * stride:r1 * stride, c0 * stride:c1 * stride] for im in rgbs]))
        target = target.to(y_hat.device).permute(0, 3, 1, 2).float().div_(255)
        with torch.autocast(y_hat.device.type, dtype=torch.bfloat16, enabled=bfloat16):
            out = net.g_s(y_hat[:, :, a0:a1, b0:b1].contiguous(memory_format=torch.channels_last)).float()
        out = out[:, :, (r0 - a0) * stride:, (c0 - b0) * stride:][:, :, :target.shape[2], :target.shape[3]]
        tile = ((out - target) ** 2).sum((1, 2, 3)) * lam
        if y_hat.requires_grad:
            tile.sum().backward()
        total += tile.detach()
    return total


def _entropy_parameters(net: Any, z_hat: Any, y: Any) -> tuple[Any, Any]:
    """(μ, log2 σ) of each image's latents, computed image by image: float32 convolutions
    on a CPU round differently for a batch than for one image (seen: 5e-6 at one thread),
    and a bfloat16 synthesis downstream can turn that into other latents, so a batched file
    would differ from the same image encoded alone."""
    import torch

    pairs = [net.entropy_parameters(net.h_s(z_hat[i : i + 1]), y[i : i + 1]) for i in range(y.shape[0])]
    return torch.cat([mu for mu, _ in pairs]), torch.cat([scale for _, scale in pairs])


def _loss(net: Any, y: Any, z: Any, ig: Any, pixels: int, tile_loss: Any, file_bits: Any) -> Any:
    """Per image: the bits of the file these latents make (``file_bits``, the real coder) per
    pixel, plus the weighted distortion of their hard rounding."""
    import torch

    with torch.no_grad():
        mu, _ = _entropy_parameters(net, torch.round(z), y)
        distortion = tile_loss((torch.round(y - mu) + mu) * ig)
    bits = file_bits(y.cpu().numpy(), z.cpu().numpy())
    return torch.from_numpy(np.asarray(bits, np.float64) / pixels).to(distortion) + distortion


def refine(model: Weights, rgbs: list[np.ndarray], y: np.ndarray, z: np.ndarray, qualities: list[float],
           steps: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Refined (y, z), float32 like the inputs, of same-size (H, W, 3) uint8 images at ``qualities``.

    The loss is the training loss at each file's quality: the float network with its entropy
    model (``Weights.net(..., entropy=True)``), synthesized in the tiles of ``tiling`` and in the
    synthesis' precision (``precision.resolve_precision``); the rate is the size of each image's
    coded latents (``latents.file_bits``, the real entropy coder).

    The relaxed loss and the file's can part ways: Adam moves every latent by about the step
    size whatever its gradient, and after a dozen steps the noise of the annealing can move
    latents across rounding boundaries for nothing. So the file's own loss is measured at
    the start, half way, three quarters and the end, and each image keeps its best latents.
    """
    import torch

    from .model import SCALE_MIN, gaussian_likelihood, round_st

    net = model.net(device, "float32", entropy=True)
    lambdas = [model.lambda_for(q) for q in qualities]
    inv_gains = np.stack([2 ** model.log2_gains(q)[1] for q in qualities])
    windows = tiling.synthesis_windows(*rgbs[0].shape[:2], y.shape[2:])
    stride = tiling.LATENT_STRIDE
    file_bits = functools.partial(latents.file_bits, model)
    precision = policy.resolve_precision(None, device)
    h, w = rgbs[0].shape[:2]
    pixels = h * w
    lam = torch.tensor(lambdas, dtype=torch.float32, device=device) * 255.0**2 / (3 * pixels)
    ig = torch.from_numpy(np.ascontiguousarray(inv_gains, np.float32)).to(device)[:, :, None, None]

    def tile_loss(y_hat: Any) -> Any:
        return _weighted_distortion(net, y_hat, rgbs, windows, stride, lam, precision == "bfloat16")

    def loss(y: Any, z: Any) -> Any:
        return _loss(net, y, z, ig, pixels, tile_loss, file_bits)

    y0, z0 = torch.from_numpy(y).to(device), torch.from_numpy(z).to(device)
    best_y, best_z, best = y0, z0, loss(y0, z0)
    yv = y0.clone().requires_grad_(True)
    zv = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([yv, zv], lr=LEARNING_RATE)
    checkpoints = {steps // 2, (3 * steps) // 4, steps}
    generators = [torch.Generator(device).manual_seed(0) for _ in rgbs]
    for step in range(steps):
        tau = TAU_START * (TAU_END / TAU_START) ** ((step + 1) / steps)
        opt.zero_grad(set_to_none=True)
        z_hat = round_st(zv)
        bits = -torch.log2(net.density_z.likelihood(z_hat).clamp_min(1e-9)).sum()
        mu, log2_scale = _entropy_parameters(net, z_hat, yv)
        r = _soft_round(yv - mu, tau, generators)
        bits = bits - torch.log2(gaussian_likelihood(r, (2**log2_scale).clamp_min(SCALE_MIN))).sum()
        y_hat = (r + mu) * ig
        leaf = y_hat.detach().requires_grad_(True)
        tile_loss(leaf)  # the distortion's gradient, tile by tile, into leaf.grad
        torch.autograd.backward([bits / pixels, y_hat], [None, leaf.grad])
        opt.step()
        if step + 1 in checkpoints:
            now = loss(yv.detach(), zv.detach())
            keep = (now < best)[:, None, None, None]
            best_y, best_z = torch.where(keep, yv.detach(), best_y), torch.where(keep, zv.detach(), best_z)
            best = torch.minimum(now, best)
    return best_y.cpu().numpy(), best_z.cpu().numpy()


def steps_for(method: int) -> int:
    return METHOD_STEPS[check_method(method)]

