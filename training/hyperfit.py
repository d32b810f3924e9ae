"""Fit the hyperprior on whole images, with the transforms frozen (``hyperfit``).

The main loop trains on small crops: at 128² (or 256²) pixels ẑ is a 2×2 (4×4) grid, so
the hyper networks learn almost only border cases, while a photo is mostly interior; on
whole images their scales are off (see ``calibrate.py``). Training everything on whole
images costs far too much on a CPU, but the rate of a fixed image depends on ``g_a`` only
through ``y = g_a(x)``, and ``g_a`` does not depend on the quality. So this stage computes
``y`` once per training image, then trains ``h_a``, ``h_s`` and the ẑ density alone on
the whole latents of each image at random qualities: the hyper networks run at 1/16 and
1/64 of the pixels, about 50x cheaper per image than a step of the full model.

The loss is the code length of the symbols the codec codes, ``round(y − μ)``, under the
model's Gaussian (:func:`symbol_bits`): the symbols are taken at the current μ with no
gradient, and μ and σ learn through the probability of each symbol's bin. ẑ takes the main
loop's uniform-noise proxy. Each image's loss is divided by its own (constant) code length,
so a bit saved at quality 1 counts, relative to the file, like one at quality 8, as BD-rate
counts them. Straight-through rounding of ``y − μ`` and ``z``, used before, made the code
*longer* (docs/training.md, "Crop size and the hyperprior"): from the 266k weights, 500 steps at lr
3e-5 on crops of the training latents (``experiments/entropy_headroom``, ``--variant refit``,
with and without ``--straight-through``) it raised the model's rate on ``val`` by 29 %
(quality 8) to 100 % (quality 1), where this objective moved it by −1.4 % to +0.4 %.
The transforms and the per-quality gains stay as they are, so the pixels a file decodes to
change only through the means μ (which pick the rounding grid of each latent).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pillow_cnnz.model import QUALITY_MAX, QUALITY_MIN, SCALE_MIN, CnnzNet, gaussian_likelihood, round_st

from .data import DEFAULT_DATA, DEFAULT_VAL, image_paths, load_rgb
from .loop import load_checkpoint, pad64, save_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint to start from (RUN/last.pt of `fit`)")
    p.add_argument("out", help="where to write the checkpoint with the fitted hyperprior")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder of training images")
    p.add_argument("--val", default=DEFAULT_VAL, help="folder of validation images")
    p.add_argument("--steps", type=int, default=3000, help="hyperfit steps (each: --batch whole images)")
    p.add_argument("--batch", type=int, default=8, help="whole images per step")
    p.add_argument("--lr", type=float, default=1e-4, help="starting learning rate; it decays (cosine) to a tenth")
    p.add_argument("--density-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


@torch.no_grad()
def latents(net: CnnzNet, folder: str | Path) -> tuple[list[torch.Tensor], list[int]]:
    """``g_a`` of each image of ``folder`` (edge-padded to a multiple of 64, as the codec
    pads), and each image's pixel count."""
    net.eval()
    ys, pixels = [], []
    for path in image_paths(folder):
        rgb = load_rgb(path)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)
        ys.append(net.g_a(pad64(x)))
        pixels.append(rgb.shape[0] * rgb.shape[1])
    return ys, pixels


def symbol_bits(y: torch.Tensor, mu: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Bits of each symbol ``round(y − μ)`` under N(μ, σ²): the real code length, with
    gradients to μ and σ through each symbol's bin and none through the rounding."""
    mu_now = mu.detach()
    y_hat = torch.round(y.detach() - mu_now) + mu_now  # what the decoder gets; fixed for this step
    return -torch.log2(gaussian_likelihood(y_hat - mu, scale))


def code_bits(net: CnnzNet, y0: torch.Tensor, quality: float | Sequence[float], train: bool = False,
              parameters: Callable | None = None, straight_through: bool = False) -> torch.Tensor:
    """Bits of ẑ and of the rounded latents of each image of ``y0`` (a quality each), as the
    codec codes them; with ``train``, ẑ is z plus uniform noise (the main loop's proxy) so
    ``h_a`` gets gradients.

    ``parameters(hyper, y)`` gives (μ, log2 σ), by default ``net.entropy_parameters`` (through
    the context, if any): a benchmark can try another entropy model on the same objective.
    ``straight_through`` trains on hyperfit's objective before step 266,000 (ẑ and y − μ
    rounded straight-through), kept only so ``experiments/entropy_headroom`` can measure it.
    """
    qualities = [quality] if isinstance(quality, (int, float)) else list(quality)
    gain, _ = net.gains(torch.tensor(qualities, dtype=torch.float32))
    y = y0 * gain
    z = net.h_a(y)
    if not train:
        z_hat = torch.round(z)
    else:
        z_hat = round_st(z) if straight_through else z + torch.empty_like(z).uniform_(-0.5, 0.5)
    bits_z = -torch.log2(net.density_z.likelihood(z_hat).clamp_min(1e-9)).sum((1, 2, 3))
    mu, log2_scale = (parameters or net.entropy_parameters)(net.h_s(z_hat), y)
    scale = (2**log2_scale).clamp_min(SCALE_MIN)
    if train and straight_through:
        bits_y = -torch.log2(gaussian_likelihood(round_st(y - mu), scale))
    else:
        bits_y = symbol_bits(y, mu, scale)
    return bits_y.sum((1, 2, 3)) + bits_z


@torch.no_grad()
def validate(net: CnnzNet, ys: list[torch.Tensor], pixels: list[int]) -> dict[str, float]:
    """Mean bpp at qualities 1, 4 and 8 (Gaussian model, the codec's rounding)."""
    return {f"q{q:g}": float(np.mean([code_bits(net, y, q).item() / n for y, n in zip(ys, pixels)]))
            for q in (1.0, 4.0, 8.0)}


def hyper_parameters(net: CnnzNet) -> tuple[list, list]:
    entropy = [*net.density_z.parameters(), *(net.context.parameters() if net.context is not None else [])]
    return [*net.h_a.parameters(), *net.h_s.parameters()], entropy


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net, state = load_checkpoint(Path(args.checkpoint))
    for p in net.parameters():
        p.requires_grad_(False)
    hyper, density = hyper_parameters(net)
    for p in hyper + density:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": hyper, "lr": args.lr}, {"params": density, "lr": args.density_lr}])
    start = time.time()
    ys, train_pixels = latents(net, args.data)
    val_ys, val_pixels = latents(net, args.val)
    print(f"latents of {len(ys)} training images in {time.time() - start:.0f} s", file=sys.stderr)
    validation = [{"step": 0, **validate(net, val_ys, val_pixels)}]
    print(f"val step 0: {validation[-1]}", file=sys.stderr, flush=True)
    net.train()
    recent: list[float] = []
    for step in range(1, args.steps + 1):
        decay = 0.1 + 0.45 * (1 + math.cos(math.pi * (step - 1) / args.steps))
        for group, lr in zip(opt.param_groups, (args.lr, args.density_lr)):
            group["lr"] = lr * decay
        picks = rng.integers(len(ys), size=args.batch)
        qualities = rng.uniform(QUALITY_MIN, QUALITY_MAX, size=args.batch)
        costs = [code_bits(net, ys[i], float(q), train=True) for i, q in zip(picks, qualities)]
        loss = sum(c / c.detach() for c in costs) / args.batch  # relative: the mean log code length's gradient
        bpp = sum(c.item() / train_pixels[i] for c, i in zip(costs, picks)) / args.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hyper + density, 1.0)
        opt.step()
        recent.append(bpp)
        if step % 50 == 0:
            print(f"\rhyperfit {step}/{args.steps} bpp {np.mean(recent):.4f} [{time.time() - start:.0f} s]",
                  end="", file=sys.stderr, flush=True)
            recent.clear()
        if step % args.val_every == 0 or step == args.steps:
            validation.append({"step": step, **validate(net, val_ys, val_pixels)})
            print(f"\nval step {step}: {validation[-1]}", file=sys.stderr, flush=True)
    fit = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "density_lr": args.density_lr,
           "decay": "cosine to 0.1", "data": args.data, "val": args.val, "seconds": round(time.time() - start),
           "threads": torch.get_num_threads(), "validation_bpp": validation}
    state = dict(state, model=net.state_dict(), hyperfit=fit)
    state.pop("optimizer", None)  # the main loop's Adam state no longer matches these weights
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(args.out), state)
    before, after = validation[0], validation[-1]
    print("val bpp " + ", ".join(f"{k}: {before[k]:.4f} -> {after[k]:.4f} ({after[k] / before[k] - 1:+.1%})"
                                 for k in ("q1", "q4", "q8")), file=sys.stderr)
    if sum(after[k] for k in ("q1", "q4", "q8")) > sum(before[k] for k in ("q1", "q4", "q8")):
        # seen on weights trained on 256² crops, whose hyperprior already fits whole images
        print(f"warning: the fitted hyperprior codes {args.val} in more bits than the one in "
              f"{args.checkpoint}; export that checkpoint instead", file=sys.stderr)
    return 0

