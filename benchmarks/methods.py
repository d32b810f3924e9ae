"""Encode effort: bytes, PSNR and encode time of CNNZ at each ``method`` (0..6), real files.

    python -m benchmarks.methods [--data FOLDER] [--every 6] [--qualities 2,6] [--out FILE]

Takes every ``--every``-th image of the folder (default: kodim01, 07, 13, 19 of Kodak), saves
each through ``img.save(format="CNNZ", quality=q, method=m)``, decodes it, and prints one row
per (quality, method): mean bpp, mean PSNR-RGB and the median encode time. Times are only
comparable within a run; stop other work on the machine first.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_cnnz  # noqa: F401  (registers the format)
from benchmarks._common import DEFAULT_KODAK
from benchmarks.rd import IMAGE_EXTENSIONS, decode, psnr
from pillow_cnnz import refine

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_KODAK))
    ap.add_argument("--every", type=int, default=6, help="take every N-th image, sorted by name (default 6)")
    ap.add_argument("--qualities", default="2,6")
    ap.add_argument("--out", default=str(HERE / "results" / "methods.json"))
    args = ap.parse_args(argv)
    paths = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:: args.every]
    if not paths:
        print(f"error: no images in {args.data}", file=sys.stderr)
        return 2
    images = [Image.open(p).convert("RGB") for p in paths]
    images[0].save(io.BytesIO(), format="CNNZ", method=1)  # loads torch and the weights, untimed
    rows = []
    print("| quality | method (steps) | bpp | PSNR dB | encode s (median) |\n|---|---|---|---|---|")
    for q in (float(v) for v in args.qualities.split(",")):
        for method, steps in enumerate(refine.METHOD_STEPS):
            bpp, db, seconds = [], [], []
            for im in images:
                buf = io.BytesIO()
                t0 = time.perf_counter()
                im.save(buf, format="CNNZ", quality=q, method=method)
                seconds.append(time.perf_counter() - t0)
                db.append(psnr(np.asarray(im), decode(buf.getvalue())[0]))
                bpp.append(buf.tell() * 8 / (im.width * im.height))
            rows.append({"quality": q, "method": method, "steps": steps, "bpp": float(np.mean(bpp)),
                         "psnr": float(np.mean(db)), "encode_s_median": float(np.median(seconds))})
            r = rows[-1]
            print(f"| {q:g} | {method} ({steps}) | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['encode_s_median']:.2f} |",
                  flush=True)
    Path(args.out).write_text(json.dumps({"images": [p.name for p in paths], "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
