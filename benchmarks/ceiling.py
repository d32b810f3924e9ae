#!/usr/bin/env python
"""Where does PSNR stop growing at high rates: rounding, the transforms, or the latent count?

For each training checkpoint and quality, on every image of a folder (float32, eval mode,
one image at a time):

- ``psnr_rounded``: the synthesis of ŷ = round(y − μ) + μ, what a file carries (the network's
  own pass, ideal rate ``bpp`` from its likelihoods; no entropy coder, no tiles).
- ``psnr_unquantized``: the synthesis of y itself. Its gap over ``psnr_rounded`` is all that
  finer quantization could ever give this decoder; a small gap means the transforms, not the
  rounding, cap the quality.
- ``components_over_step``: of the principal components of the gained latents (y at the
  quality's gain, where the quantization step is 1; covariance over all latent positions of
  all images), how many have a standard deviation above one step. When nearly all ``M`` do,
  every latent channel is busy and the latent count is binding.

With several checkpoints and at least two qualities it also gives each one's BD-rate against
the first (ideal rate, rounded PSNR): a quick comparison of weights before exporting them.

Example (from the repository root)::

    python benchmarks/ceiling.py checkpoints/last.pt runs/main/last.pt --qualities 4,8
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import DEFAULT_KODAK, REPO_ROOT, image_paths, load_rgb
from bdrate import bd_rate


def pad_to(x, multiple: int):
    """Edge-pad an NCHW tensor to a multiple of ``multiple`` (what the codec's tiles do)."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def psnr(a, b) -> float:
    mse = float(((a.clamp(0, 1) * 255).round().sub(b * 255) ** 2).mean())
    return 10 * math.log10(255**2 / mse) if mse else float("inf")


def measure(checkpoint: Path, images: list, qualities: list[float]) -> dict:
    import torch

    from pillow_cnnz.model import round_st
    from pillow_cnnz.train.loop import load_checkpoint

    net, state = load_checkpoint(checkpoint)
    net.eval()
    rows = {}
    with torch.no_grad():
        for q in qualities:
            rounded, unquantized, bpps, latents = [], [], [], []
            quality = torch.tensor([q])
            gain, inv_gain = net.gains(quality)
            for rgb in images:
                x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
                h, w = x.shape[2:]
                xp = pad_to(x, 64)
                out = net(xp, quality)
                y = net.g_a(xp) * gain
                hyper = net.h_s(torch.round(net.h_a(y)))
                mu, _ = net.entropy_parameters(hyper, y)
                y_hat = round_st(y - mu) + mu
                rounded.append(psnr(net.g_s(y_hat * inv_gain)[..., :h, :w], x))
                unquantized.append(psnr(net.g_s(y * inv_gain)[..., :h, :w], x))
                bpps.append(float(out["bits"]) / (h * w))
                latents.append(y[0].flatten(1).T)
            flat = torch.cat(latents).double()
            eig = torch.linalg.eigvalsh(torch.cov(flat.T)).flip(0).clamp_min(0).sqrt()
            rows[f"q{q:g}"] = {
                "bpp": sum(bpps) / len(bpps),
                "psnr_rounded": sum(rounded) / len(rounded),
                "psnr_unquantized": sum(unquantized) / len(unquantized),
                "components_over_step": int((eig > 1).sum()),
                "channels_over_step": int((flat.std(0) > 1).sum()),
                "component_std": [round(float(v), 3) for v in eig[:: max(1, len(eig) // 16)]],
            }
    return {"checkpoint": str(checkpoint), "step": state["step"], "config": state["config"], "qualities": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (slim ones do)")
    p.add_argument("--data", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--qualities", default="4,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "ceiling.json")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    images = [load_rgb(path) for path in image_paths(args.data, args.limit)]
    qualities = [float(q) for q in args.qualities.split(",")]
    results = [measure(c, images, qualities) for c in args.checkpoints]
    print("| checkpoint | M | quality | bpp (ideal) | PSNR rounded | PSNR unquantized | components > 1 step | channels > 1 step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, row in r["qualities"].items():
            print(f"| {r['step']} | {r['config']['M']} | {name} | {row['bpp']:.3f} | {row['psnr_rounded']:.2f} | "
                  f"{row['psnr_unquantized']:.2f} | {row['components_over_step']} | {row['channels_over_step']} |")
    first = results[0]["qualities"].values()
    for r in results[1:] if len(qualities) > 1 else []:
        rows = r["qualities"].values()
        r["bd_rate_vs_first"] = bd_rate([v["bpp"] for v in first], [v["psnr_rounded"] for v in first],
                                        [v["bpp"] for v in rows], [v["psnr_rounded"] for v in rows])
        print(f"step {r['step']} vs step {results[0]['step']}: BD-rate {r['bd_rate_vs_first']:+.1f} % (ideal rate)")
    args.out.write_text(json.dumps({"data": str(args.data), "images": len(images), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
