#!/usr/bin/env python
"""Would a dead-zone quantizer make smaller files for the same quality? (It does not.)

An encoder-only change: the latent symbols become sign(r)·floor(|r| + ½ − δ), r = y − μ,
instead of round(r), i.e. values are pulled toward the predicted mean μ; decoding is
unchanged. For each image and quality the latents come from one analysis
(``codec.analyse_batch``), are coded once per δ by ``latents.code_latents`` itself (same
tables, same bands), and the real file is decoded. BD-rate (PSNR) of each δ's
curve is against δ = 0, which is what the codec ships.

Example (from the repository root)::

    python -m experiments.deadzone.deadzone                        # val, δ 0 .. 0.2
    python -m experiments.deadzone.deadzone --data data/kodak --deltas 0,0.05
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import DATA
from benchmarks.bdrate import bd_rate
from pillow_cnnz import codec, container, latents, weights
from training.data import image_paths

HERE = Path(__file__).resolve().parent


def code_with_deadzone(model, z: np.ndarray, y: np.ndarray, delta: float) -> tuple[bytes, bytes]:
    """``latents.code_latents`` of latents moved δ toward their means μ: it codes round(y − μ), and
    round(r − δ·sign(r)) = sign(r)·floor(|r| + ½ − δ) for δ < ½. δ = 0 gives the codec's bytes."""
    if model.context_layers is not None:  # the context's means depend on the coded anchors
        raise SystemExit("deadzone.py needs means that do not depend on the symbols: a model without a context")
    mu, _ = latents.hyper_means(model, z, 0, z.shape[1])  # the exact means code_latents uses, band by band
    return latents.code_latents(model, z, y - np.float32(delta) * np.sign(y - mu))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA / "val"))
    p.add_argument("--deltas", default="0,0.05,0.1,0.15,0.2")
    p.add_argument("--out", default=str(HERE / "deadzone.json"))
    args = p.parse_args()
    deltas = [float(d) for d in args.deltas.split(",")]
    if not all(0 <= d < 0.5 for d in deltas):
        p.error("each δ must be in [0, 0.5)")
    if deltas[0] != 0:
        deltas.insert(0, 0.0)
    model = weights.load()
    images = [np.asarray(Image.open(path).convert("RGB")) for path in image_paths(args.data)]
    bpp = {d: np.zeros((8, len(images))) for d in deltas}
    psnr = {d: np.zeros((8, len(images))) for d in deltas}
    for q in range(1, 9):
        for i, rgb in enumerate(images):
            ((z, y),) = codec.analyse_batch([rgb], [float(q)])
            h, w = rgb.shape[:2]
            for d in deltas:
                latz, laty = code_with_deadzone(model, z, y, d)
                data = container.serialize(w, h, "RGB", float(q), model.model_id, {"LATZ": latz, "LATY": laty})
                mse = np.mean((codec.decode(data).astype(np.float64) - rgb) ** 2)
                bpp[d][q - 1, i], psnr[d][q - 1, i] = len(data) * 8 / (h * w), 10 * math.log10(255**2 / mse)
        print(f"quality {q} done", file=sys.stderr, flush=True)
    result = {"data": args.data, "images": len(images), "model_id": model.model_id.hex(), "deltas": {}}
    base_b, base_p = bpp[0.0].mean(1), psnr[0.0].mean(1)
    print("| δ | bpp at q1 / q4 / q8 | PSNR at q1 / q4 / q8 | BD-rate vs δ = 0 |\n|---|---|---|---|")
    for d in deltas:
        b, s = bpp[d].mean(1), psnr[d].mean(1)
        bd = bd_rate(list(base_b), list(base_p), list(b), list(s))
        result["deltas"][str(d)] = {"bpp": list(b), "psnr-rgb": list(s), "bd_rate_vs_0": bd}
        print(f"| {d:g} | {b[0]:.3f} / {b[3]:.3f} / {b[7]:.3f} | {s[0]:.2f} / {s[3]:.2f} / {s[7]:.2f} | {bd:+.1f} % |")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
