#!/usr/bin/env python
"""How much shorter could a richer entropy model code the latents the transforms already make?

The transforms (``g_a``, ``g_s``) and the per-quality gains stay frozen; ``y = g_a(x)`` is
computed once per training image (cached under ``runs/``), and only the entropy model trains,
on random crops of those latents at random qualities, on the real symbols' code length
(``training.hyperfit.code_bits``; ẑ with the training noise; each crop weighted by its own
rate). Reported: the model's rate (Gaussian tables, real rounding, whole images) on a
validation folder before and during training, per quality. No entropy coder, no integer
networks: this measures headroom, so a design is only built into the format when it pays.

Variants:

- ``refit``: the weights' own h_a, h_s, checkerboard context and ẑ density, refitted.
  With ``--straight-through`` it trains on hyperfit's objective before step 266,000 instead.
- ``channel``: the same, plus a candidate channel-conditional context (Minnen & Singh 2020;
  He et al. 2022) over two channel groups, with the checkerboard unchanged. Decode order per
  band: anchors of group 0, anchors of group 1 (refined from the group-0 anchors), the
  non-anchors of group 0 (checkerboard as now), the non-anchors of group 1 (refined from all
  of group 0 and the group-1 anchors). One network, :class:`ChannelContext`, serves both group-1
  passes; its last layer starts at zero, so training starts from the shipped model's rate.

Example (from the repository root; minutes a 100 steps on 2 cores)::

    python -m experiments.entropy_headroom.entropy_headroom --variant channel --steps 3000
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks._common import DATA, REPO_ROOT, write_json
from pillow_cnnz.layers import anchor_mask
from pillow_cnnz.model import QUALITY_MAX, QUALITY_MIN, CnnzNet, round_st
from training.hyperfit import code_bits, latents
from training.loop import load_checkpoint

HERE = Path(__file__).resolve().parent

VAL_QUALITIES = (1.0, 2.5, 4.0, 6.0, 8.0)


class ChannelContext(nn.Module):
    """Refines (μ, log2 σ) of group-1 latents from the decoded ŷ around and under them.

    ``known`` is ŷ with every latent not yet decoded set to zero; ``hyper`` the hyperprior's
    output. Convolutions and ReLU only, so it could run as an integer network like ``context.py``.
    """

    def __init__(self, latents_: int, group0: int, channels: int) -> None:
        super().__init__()
        self.ctx = nn.Conv2d(latents_, channels, 3, padding=1)
        self.mix = nn.Conv2d(2 * latents_, channels, 1, bias=False)
        self.c2 = nn.Conv2d(channels, channels, 1)
        self.c3 = nn.Conv2d(channels, 2 * (latents_ - group0), 1)
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, known: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        return self.c3(F.relu(self.c2(F.relu(self.ctx(known) + self.mix(hyper)))))


def entropy_parameters(net: CnnzNet, chan: ChannelContext | None, group0: int, y: torch.Tensor,
                       hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, log2_scale = net.entropy_parameters(hyper, y)
    if chan is None:
        return mu, log2_scale
    m = net.config.M
    anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
    y_hat = round_st(y - mu) + mu
    first = torch.zeros(1, m, 1, 1)
    first[:, :group0] = 1
    delta = (chan(y_hat * anchors * first, hyper) * anchors
             + chan(y_hat * (first + (1 - first) * anchors), hyper) * (1 - anchors))
    rest = m - group0
    mu = torch.cat([mu[:, :group0], mu[:, group0:] + delta[:, :rest]], 1)
    log2_scale = torch.cat([log2_scale[:, :group0], log2_scale[:, group0:] + delta[:, rest:]], 1)
    return mu, log2_scale


def cached_latents(net: CnnzNet, folder: str, cache: Path) -> tuple[list[torch.Tensor], list[int]]:
    if cache.exists():
        return torch.load(cache)
    ys, pixels = latents(net, folder)
    ys = [y.half() for y in ys]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save((ys, pixels), cache)
    return ys, pixels


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO_ROOT / "checkpoints" / "last.pt"))
    p.add_argument("--data", default=str(DATA / "train"))
    p.add_argument("--val", default=str(DATA / "val"))
    p.add_argument("--variant", choices=("refit", "channel"), default="channel")
    p.add_argument("--group0", type=int, default=112, help="latent channels in the first group (channel)")
    p.add_argument("--width", type=int, default=160, help="channels of the channel context")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=32, help="latent crop side (x16 pixels), a multiple of 4")
    p.add_argument("--lr", type=float, default=1e-4, help="lr of the new context; cosine decay to a tenth")
    p.add_argument("--old-lr", type=float, default=0.3, help="the shipped entropy model's lr, relative to --lr")
    p.add_argument("--straight-through", action="store_true",
                   help="train on straight-through rounding of ẑ and y − μ (hyperfit's old objective)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "entropy_headroom.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net, state = load_checkpoint(Path(args.checkpoint))
    net.eval()
    cache = REPO_ROOT / "runs" / "latents" / f"{Path(args.checkpoint).stem}-{state['step']}"
    train_ys, _ = cached_latents(net, args.data, cache.with_suffix(".train.pt"))
    val_ys, val_pixels = cached_latents(net, args.val, cache.with_suffix(".val.pt"))
    chan = ChannelContext(net.config.M, args.group0, args.width) if args.variant == "channel" else None

    def parameters(hyper: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return entropy_parameters(net, chan, args.group0, y, hyper)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        return {f"q{q:g}": float(np.mean([code_bits(net, y.float(), q, parameters=parameters).item() / n
                                          for y, n in zip(val_ys, val_pixels)])) for q in VAL_QUALITIES}

    for param in net.parameters():
        param.requires_grad_(False)
    old = [*net.h_a.parameters(), *net.h_s.parameters(), *net.context.parameters()]
    density = list(net.density_z.parameters())
    new = list(chan.parameters()) if chan is not None else []
    for param in old + density:
        param.requires_grad_(True)
    groups = [{"params": old, "lr": args.lr * args.old_lr}, {"params": density, "lr": 3 * args.lr * args.old_lr}]
    groups += [{"params": new, "lr": args.lr}] if new else []
    opt = torch.optim.Adam(groups)
    base_lr = [g["lr"] for g in groups]
    crop = args.crop
    usable = [i for i, y in enumerate(train_ys) if min(y.shape[2:]) >= crop]
    history = [{"step": 0, **validate()}]
    print("val step 0:", history[-1], flush=True)
    start, recent = time.time(), []
    for step in range(1, args.steps + 1):
        decay = 0.1 + 0.45 * (1 + math.cos(math.pi * (step - 1) / args.steps))
        for group, lr in zip(opt.param_groups, base_lr):
            group["lr"] = lr * decay
        crops = []
        for i in rng.choice(usable, args.batch):
            y = train_ys[i]
            r = 4 * rng.integers(0, (y.shape[2] - crop) // 4 + 1)
            c = 4 * rng.integers(0, (y.shape[3] - crop) // 4 + 1)
            crops.append(y[:, :, r:r + crop, c:c + crop])
        qualities = rng.uniform(QUALITY_MIN, QUALITY_MAX, args.batch).tolist()
        bits = code_bits(net, torch.cat(crops).float(), qualities, train=True, parameters=parameters,
                         straight_through=args.straight_through)
        loss = (bits / bits.detach()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(old + density + new, 1.0)
        opt.step()
        recent.append(bits.mean().item() / (crop * crop * 256))
        if step % 100 == 0:
            print(f"step {step} bpp {np.mean(recent):.4f} [{time.time() - start:.0f} s]", flush=True)
            recent.clear()
        if step % args.val_every == 0 or step == args.steps:
            history.append({"step": step, **validate()})
            print(f"val step {step}:", {k: f"{v:.5f} ({v / history[0][k] - 1:+.2%})"
                                         for k, v in history[-1].items() if k != "step"}, flush=True)
    result = {"variant": args.variant, "args": vars(args), "checkpoint_step": state["step"],
              "seconds": round(time.time() - start), "validation_bpp": history,
              "change": {k: history[-1][k] / history[0][k] - 1 for k in history[0] if k != "step"}}
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
