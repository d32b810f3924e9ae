#!/usr/bin/env python
"""What measured latent tables save: the same checkpoint exported twice, real files.

``python -m training export`` measures the latent tables on training images
(``training/calibrate.py``) instead of taking ideal Gaussians at each scale
index's nominal scale. Both exports share every network weight, so the decoded pixels
are identical; only the bytes differ. This script exports ``--checkpoint`` both ways
into a temporary folder, encodes every image of ``--data`` (never used for the
calibration) at each quality through the codec, decodes, and reports mean bpp and
PSNR-RGB per variant and the change in bytes.

Example (from the repository root)::

    python -m experiments.calibration.calibration --checkpoint checkpoints/last.pt     # val, q 1, 4, 8
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import DATA, REPO_ROOT, environment, finish_environment, image_paths, load_rgb, md_table, write_json
from pillow_cnnz import codec, weights
from training import export

HERE = Path(__file__).resolve().parent


def measure(folder: Path, images: list[np.ndarray], qualities: list[float]) -> dict[float, dict[str, float]]:
    """Mean bpp / PSNR per quality with the weights in ``folder`` (through ``codec.encode``)."""
    weights.weights_dir, saved = (lambda: folder), weights.weights_dir
    weights._cache.clear()
    try:
        out = {}
        for q in qualities:
            bpp, psnr = [], []
            for im in images:
                data = codec.encode(im, "RGB", q)
                mse = np.mean((codec.decode(data).astype(np.float64) - im) ** 2)
                bpp.append(8 * len(data) / (im.shape[0] * im.shape[1]))
                psnr.append(10 * math.log10(255**2 / max(mse, 1e-10)))
            out[q] = {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr))}
        return out
    finally:
        weights.weights_dir = saved
        weights._cache.clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO_ROOT / "checkpoints" / "last.pt"))
    ap.add_argument("--data", default=str(DATA / "val"), help="images to code")
    ap.add_argument("--calibrate", default=str(DATA / "train"))
    ap.add_argument("--calibrate-images", type=int, default=96)
    ap.add_argument("--qualities", default="1,4,8")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--out", default=str(HERE / "calibration.json"))
    args = ap.parse_args(argv)
    info = environment()
    qualities = [float(q) for q in args.qualities.split(",")]
    images = [load_rgb(p) for p in image_paths(Path(args.data), args.limit)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, calibration in (("gaussian", None), ("measured", {
                "data": args.calibrate, "images": args.calibrate_images, "crop": 512})):
            t0 = time.perf_counter()
            exported = export.export(Path(args.checkpoint), Path(tmp) / variant, "cnnz", "benchmark", calibration)
            seconds = time.perf_counter() - t0
            step = exported["meta"]["training"]["step"]
            results[variant] = {"model_id": exported["model_id"], "export_s": seconds,
                                "qualities": measure(Path(tmp) / variant, images, qualities)}
            print(f"{variant}: exported in {seconds:.0f} s", file=sys.stderr)
    rows = []
    for q in qualities:
        g, m = results["gaussian"]["qualities"][q], results["measured"]["qualities"][q]
        rows.append([f"{q:g}", f"{g['bpp']:.4f}", f"{m['bpp']:.4f}", f"{100 * (m['bpp'] / g['bpp'] - 1):+.1f} %",
                     f"{g['psnr']:.3f}", f"{m['psnr']:.3f}"])
    table = md_table(["quality", "bpp gaussian", "bpp measured", "bytes", "PSNR gaussian", "PSNR measured"], rows)
    print(table)
    finish_environment(info)
    write_json(Path(args.out), {"benchmark": "calibration", "args": vars(args), "environment": info,
                                "checkpoint_step": step, "images": len(images), "results": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
