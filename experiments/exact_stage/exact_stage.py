#!/usr/bin/env python
"""Where a decode's exact stage goes: the per-file work before the synthesis, part by part.

Why: the exact stage (entropy decoding, the integer hyper network, the checkerboard context)
takes about 50 ms of a Kodak decode on a 2-core CPU whatever the synthesis costs: half of a
100 ms decode budget (the speed issue). It decodes each image's ``.cnnz`` file
(``latents.y_hat_of``, in process, after one warm-up) ``--repeat`` times and times the whole and,
inclusively, its parts: the ANS pulls, the integer hyper network and its float64 products, the
context's refinement and its products, and the means and scale indexes taken from their outputs.
Reports the median over images of each image's median.

Example (from the repository root; about half a minute on 2 cores)::

    python -m experiments.exact_stage.exact_stage
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._common import DEFAULT_KODAK, StageTimer, image_paths, load_rgb, md_table, median, write_json
from pillow_cnnz import codec, container, context, entropy, hyper, latents

HERE = Path(__file__).resolve().parent

# part -> (module or class, attribute): inclusive, so the products count in their network too
PARTS = {
    "ans pulls": (entropy.Decoder, "pull"),
    "hyper network": (hyper, "hyper_band"),
    "hyper products": (hyper, "conv"),
    "context": (context, "refine"),
    "context products": (context, "_apply"),
    "means and indexes": (hyper, "means_and_indexes"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--limit", type=int, default=0, help="first N images (0: all)")
    p.add_argument("--quality", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=5, help="timed decodes of each file")
    p.add_argument("--out", type=Path, default=HERE / "exact_stage.json")
    args = p.parse_args()
    paths = image_paths(args.data, args.limit or None)
    per_image: dict[str, list[float]] = {"exact stage": [], **{k: [] for k in PARTS}}
    for path in paths:
        parsed = container.parse(codec.encode(load_rgb(path), "RGB", args.quality))
        latents.y_hat_of(parsed)  # warm-up: the model and its tables load once
        runs: dict[str, list[float]] = {k: [] for k in per_image}
        with StageTimer(PARTS) as timer:
            for _ in range(args.repeat):
                timer.reset()
                t0 = time.perf_counter()
                latents.y_hat_of(parsed)
                runs["exact stage"].append(time.perf_counter() - t0)
                for key in PARTS:
                    runs[key].append(timer.seconds[key])
        for key, values in runs.items():
            per_image[key].append(1e3 * median(values))
    ms = {key: median(values) for key, values in per_image.items()}
    result = {"data": str(args.data), "images": len(paths), "quality": args.quality, "repeat": args.repeat,
              "ms_median": ms, "ms_per_image": per_image,
              "note": "parts are inclusive: the products are part of their network's time"}
    write_json(args.out, result)
    print(md_table(["part", "ms (median over images)", "share of the stage"],
                   [[key, value, f"{100 * value / ms['exact stage']:.0f} %"] for key, value in ms.items()]))
    print(f"\n{len(paths)} images, quality {args.quality:g}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
