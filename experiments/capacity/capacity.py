#!/usr/bin/env python
"""Can the transforms reach higher fidelity at the top quality if trained for it alone?

Trains parts of a checkpoint as a pure autoencoder at one quality, ``g_s(gain⁻¹ · gain · g_a(x))``
with no rounding and no rate term, on random crops of ``--data`` (or, with ``--overfit``, on the
validation crops themselves: a memorisation test, not a result), and reports the validation crops'
PSNR (float32, centre 256×384 crops) before and every 100 steps. With no rate to trade against,
whatever fidelity the transforms can represent and generalise shows up here within a few hundred
steps; a flat curve means the transforms, not the training objective, cap the high-rate end.

Example (from the repository root)::

    python -m experiments.capacity.capacity checkpoints/last.pt --train both --data data/train --steps 400
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from training.data import CropSampler, image_paths, load_rgb
from training.loop import checkpoint_net, read_checkpoint
from training.surgery import grown, widened_synthesis

PARTS = {"gs": ("g_s.",), "ga": ("g_a.",), "both": ("g_s.", "g_a.")}


def centre_crops(folder: str, height: int = 256, width: int = 384) -> list[np.ndarray]:
    crops = []
    for im in map(load_rgb, image_paths(folder)):
        top, left = (im.shape[0] - height) // 2, (im.shape[1] - width) // 2
        crops.append(im[top : top + height, left : left + width])
    return crops


def as_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]).float() / 255


def autoencode(net, x: torch.Tensor, quality: float) -> torch.Tensor:
    gain, inv_gain = net.gains(torch.full((x.shape[0],), quality))
    return net.g_s(net.g_a(x).float() * gain * inv_gain).float()


@torch.no_grad()
def mean_psnr(net, crops: list[np.ndarray], quality: float) -> float:
    net.eval()
    values = []
    for crop in crops:
        x = as_batch([crop])
        mse = torch.mean((torch.round(autoencode(net, x, quality).clamp(0, 1) * 255) - x * 255) ** 2).item()
        values.append(10 * math.log10(255**2 / mse))
    net.train()
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--train", choices=sorted(PARTS), default="both", help="which transforms train")
    p.add_argument("--grow", type=lambda v: tuple(int(n) for n in v.split(",")), metavar="A,B,C",
                   help="add identity residual blocks to the synthesis first (training.surgery.grown)")
    p.add_argument("--dec", type=lambda v: tuple(int(n) for n in v.split(",")), metavar="A,B,C",
                   help="widen the synthesis levels first (training.surgery.widened_synthesis)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32, not under bfloat16 autocast")
    p.add_argument("--data", default="data/train")
    p.add_argument("--val", default="data/val")
    p.add_argument("--overfit", action="store_true", help="train on the validation crops themselves")
    p.add_argument("--quality", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--out", help="write the curve here as JSON")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    net = checkpoint_net(read_checkpoint(args.checkpoint))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grow:
        net = grown(net, args.grow)
    if args.dec:
        net = widened_synthesis(net, args.dec)
    net.train()
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(PARTS[args.train]))
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=args.lr)
    crops = centre_crops(args.val)
    sampler = None if args.overfit else CropSampler(args.data, 192, seed=1)
    curve = [{"step": 0, "val_psnr": mean_psnr(net, crops, args.quality)}]
    print(curve[-1], flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = as_batch(crops) if args.overfit else torch.from_numpy(sampler.batch(4))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            x_hat = autoencode(net, x, args.quality)
        loss = torch.mean((x_hat.float() - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            curve.append({"step": step, "train_psnr": 10 * math.log10(1 / loss.item()),
                          "val_psnr": mean_psnr(net, crops, args.quality),
                          "seconds": time.perf_counter() - start})
            print(curve[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
