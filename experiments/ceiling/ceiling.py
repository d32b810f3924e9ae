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
  every latent channel is busy and the latent count may be binding; when widening the
  latents leaves that count where it was, the new channels are not being used.

With several checkpoints and at least two qualities it also gives each one's BD-rate against
the first (ideal rate, rounded PSNR): a quick comparison of weights before exporting them.

Example (from the repository root)::

    python -m experiments.ceiling.ceiling checkpoints/last.pt runs/main/last.pt --qualities 4,8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks._common import DEFAULT_KODAK, image_paths, load_rgb
from benchmarks.bdrate import bd_rate
from benchmarks.rd import psnr

HERE = Path(__file__).resolve().parent


def to_uint8(x) -> np.ndarray:
    """An NCHW float image in [0, 1] as the HWC uint8 array a decoder would hand out."""
    return (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def measure(checkpoint: Path, images: list, qualities: list[float]) -> dict:
    import torch

    from training.loop import load_checkpoint, pad64

    net, state = load_checkpoint(checkpoint)
    net.eval()
    rows = {}
    with torch.no_grad():
        for q in qualities:
            rounded, unquantized, bpps, latents = [], [], [], []
            quality = torch.tensor([q])
            gain, inv_gain = net.gains(quality)
            for rgb in images:
                x = pad64(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255)
                h, w = rgb.shape[:2]
                out = net(x, quality)  # eval: x̂ from round(y − μ) + μ, bits at the ideal rate
                y = net.g_a(x) * gain
                rounded.append(psnr(to_uint8(out["x_hat"][..., :h, :w]), rgb))
                unquantized.append(psnr(to_uint8(net.g_s(y * inv_gain)[..., :h, :w]), rgb))
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
    p.add_argument("--out", type=Path, default=HERE / "ceiling.json")
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
