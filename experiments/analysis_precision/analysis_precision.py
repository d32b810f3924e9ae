#!/usr/bin/env python
"""Does the encoder's analysis lose anything in bfloat16 or int8? (bfloat16 gains on the shipped weights.)

Encodes a folder at quality 1..8 through ``codec.encode`` (real files) once per precision of
the analysis network (float32 first, then each of ``--precisions``); everything else, the
decoder included, runs as ``auto`` picks. Reports mean bpp / PSNR per quality, BD-rate (PSNR,
PCHIP) of each against float32, the analysis time of each on the first image (after a warm-up),
how many files differ, and how far each moves the latents from float32's: the rms and largest
difference in quantization steps at quality 8 (the finest), over all images. The weights train under bfloat16 autocast, which is why the bfloat16
analysis can be the better one. bfloat16 needs a CPU with native bfloat16 to be fast (AMX:
``precision.cpu_has_amx``), int8 one with VNNI (``pillow_cnnz/int8.py``).

Example (from the repository root)::

    python -m experiments.analysis_precision.analysis_precision --data data/kodak
    python -m experiments.analysis_precision.analysis_precision --precisions int8 \
        --out experiments/analysis_precision/analysis_precision_int8.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from benchmarks._common import DEFAULT_KODAK
from benchmarks.bdrate import bd_rate
from benchmarks.rd import psnr
from pillow_cnnz import analysis, codec, precision, weights
from training.data import image_paths

HERE = Path(__file__).resolve().parent


def analysis_in(answer: str):
    """``precision.resolve_precision`` answering ``answer`` for the analysis, as before otherwise."""
    original = precision.resolve_precision

    def resolve(value=None, device="cpu", analysis=False, int8=False):  # noqa: ANN001, ANN202
        return answer if analysis else original(value, device, analysis, int8)

    return mock.patch.object(precision, "resolve_precision", resolve)


def latent_shift(net, images, precision: str, g_a, log2_gain: np.ndarray) -> dict:  # noqa: ANN001
    """rms and max of (this precision's − float32's) analysis output in quality-8 steps."""
    import torch

    gain = (2 ** log2_gain).astype(np.float32)[None, :, None, None]
    squares, count, largest = 0.0, 0, 0.0
    for rgb in images:
        with torch.inference_mode():  # as analyse_batch runs it
            d = (analysis.run_analysis(net, [rgb], "cpu", precision, g_a) - analysis.run_analysis(net, [rgb], "cpu", "float32")) * gain
        squares += float(np.square(d, dtype=np.float64).sum())
        count += d.size
        largest = max(largest, float(np.abs(d).max()))
    return {"latent_rms_steps_q8": (squares / count) ** 0.5, "latent_max_steps_q8": largest}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_KODAK))
    p.add_argument("--out", default=str(HERE / "analysis_precision.json"))
    p.add_argument("--precisions", default="bfloat16", help="comma-separated, each compared with float32")
    args = p.parse_args()
    precisions = ("float32", *args.precisions.split(","))
    import torch  # noqa: F401  (auto decodes in bfloat16 once torch is imported, for both runs alike)

    images = [np.asarray(Image.open(path).convert("RGB")) for path in image_paths(args.data)]
    if not images:
        p.error(f"no images in {args.data}")
    model = weights.load()
    net = model.net("cpu", "float32")
    res: dict = {"data": args.data, "images": len(images), "model_id": model.model_id.hex(), "precisions": {}}
    files = {}
    for prec in precisions:
        g_a = model.int8_analysis() if prec == "int8" else None
        analysis.run_analysis(net, images[:1], "cpu", prec, g_a)  # warm-up
        t0 = time.perf_counter()
        analysis.run_analysis(net, images[:1], "cpu", prec, g_a)
        seconds = time.perf_counter() - t0
        bpp, quality = np.zeros((8, len(images))), np.zeros((8, len(images)))
        with analysis_in(prec):
            for q in range(1, 9):
                for i, rgb in enumerate(images):
                    data = codec.encode(rgb, "RGB", float(q))
                    files[prec, q, i] = data
                    bpp[q - 1, i] = 8 * len(data) / (rgb.shape[0] * rgb.shape[1])
                    quality[q - 1, i] = psnr(codec.decode(data), rgb)
        res["precisions"][prec] = {"bpp": bpp.mean(1).tolist(), "psnr-rgb": quality.mean(1).tolist(),
                                   "analysis_seconds_first_image": seconds,
                                   **latent_shift(net, images, prec, g_a, model.log2_gains(8.0)[0])}
        print(f"{prec}: bpp {np.round(bpp.mean(1), 4).tolist()}", file=sys.stderr)
        print(f"{prec}: psnr {np.round(quality.mean(1), 3).tolist()}", file=sys.stderr)
    f32 = res["precisions"]["float32"]
    for prec in precisions[1:]:
        other = res["precisions"][prec]
        res[f"bd_rate_{prec}_vs_float32"] = bd_rate(f32["bpp"], f32["psnr-rgb"], other["bpp"], other["psnr-rgb"])
        res[f"files_differing_{prec}"] = sum(files["float32", k[1], k[2]] != v for k, v in files.items() if k[0] == prec)
    res["files"] = len(images) * 8
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for prec in precisions[1:]:
        print(f"BD-rate {prec} vs float32 analysis: {res[f'bd_rate_{prec}_vs_float32']:+.3f} % "
              f"({res[f'files_differing_{prec}']} of {res['files']} files differ); analysis of one image "
              f"{1e3 * f32['analysis_seconds_first_image']:.0f} ms float32, "
              f"{1e3 * res['precisions'][prec]['analysis_seconds_first_image']:.0f} ms {prec}; latents moved by "
              f"{res['precisions'][prec]['latent_rms_steps_q8']:.4f} steps rms at quality 8 "
              f"(max {res['precisions'][prec]['latent_max_steps_q8']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
