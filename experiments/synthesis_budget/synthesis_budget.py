#!/usr/bin/env python
"""Which synthesis fits the decode bar here: decode time of candidate shapes for ``train distill``.

A 100 ms decode is a smaller synthesis, trained (``python -m training distill --dec --res``),
and training it is GPU work. This measures, before any training, what each candidate shape would
cost on this CPU: the shipped network's synthesis rebuilt with the candidate's widths (coarse to
fine) and residual blocks per level, the teacher's layers where the shapes agree and fresh ones
elsewhere (the time does not depend on the values), run on the ŷ of a real Kodak file through the
codec's own tile synthesis (``synthesis.torch_synthesis``), in float32 and in int8 as the codec runs
it (the outer levels' blocks in one pass, the middle level's in two; ranges measured on that ŷ).
The exact stage of the same file (entropy decoding, integer hyper and context networks: what a
decode costs besides the synthesis, whatever its shape) is timed in the same rounds, so a row's
decode estimate is exact stage + int8 synthesis. All variants are interleaved, medians of
``--repeat`` rounds.

Example (from the repository root; about 2 minutes on 2 cores)::

    python -m experiments.synthesis_budget.synthesis_budget
"""
from __future__ import annotations

import argparse
import io
import time
import types
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import DEFAULT_KODAK, image_paths, load_rgb, write_json
from pillow_cnnz import container, int8, latents, synthesis, weights
from pillow_cnnz import precision as policy
from pillow_cnnz.model import CnnzNet, Config
from training import int8_calibration
from training.distill import adopt_teacher, student_config

HERE = Path(__file__).resolve().parent

CANDIDATES = "96.64.48/2.4.2,96.64.48/2.1.0,96.48.32/2.2.2,96.48.32/1.1.1,64.48.32/1.1.1,64.32.24/1.1.1,64.32.16/1.1.0"


def _shape(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    dec, res = text.split("/")
    return tuple(int(v) for v in dec.split(".")), tuple(int(v) for v in res.split("."))  # type: ignore[return-value]


def _variants(teacher: CnnzNet, dec: tuple, res: tuple, y: torch.Tensor) -> tuple[Config, dict]:
    """(config, {precision: tile synthesis}) of one candidate shape."""
    student = CnnzNet(student_config(teacher.config, dec, res)).eval()
    adopt_teacher(student, teacher)
    g_s = student.g_s.requires_grad_(False).to(memory_format=torch.channels_last)  # as weights.Weights.net builds it
    levels = int8_calibration.synthesis_levels(g_s)
    ranges = int8_calibration.measure_ranges(g_s, [y], [i for level in levels for i in level])
    ranges = int8_calibration.with_two_pass(ranges, levels[1] if len(levels) > 1 else [])
    net = types.SimpleNamespace(g_s=g_s)
    runs = {"float32": synthesis.torch_synthesis(net, "cpu", "float32")}
    if int8.supported():
        runs["int8"] = synthesis.torch_synthesis(net, "cpu", "int8", int8.Int8Layers(g_s[:-1], ranges, saturate=True))
    return student.config, runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default=str(image_paths(DEFAULT_KODAK, 1)[0]) if DEFAULT_KODAK.is_dir() else None,
                   help="the image whose file is decoded (default: the first Kodak image)")
    p.add_argument("--quality", type=float, default=4.0)
    p.add_argument("--candidates", default=CANDIDATES,
                   help="comma-separated WIDTHS/BLOCKS, each three numbers coarse to fine joined by dots")
    p.add_argument("--repeat", type=int, default=9, help="timed rounds")
    p.add_argument("--out", default=str(HERE / "synthesis_budget.json"))
    args = p.parse_args()
    if args.image is None:
        p.error("no Kodak folder here: give --image")
    rgb = load_rgb(args.image)
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(rgb).save(buf, format="CNNZ", quality=args.quality)
    parsed = container.parse(buf.getvalue())
    y_hat = latents.y_hat_of(parsed)
    teacher = weights.load().net("cpu")
    y = torch.from_numpy(y_hat[None].copy()).contiguous(memory_format=torch.channels_last)
    shapes = [_shape(c) for c in args.candidates.split(",")]
    rows, timed = [], {"exact stage": lambda: latents.y_hat_of(parsed)}
    with torch.inference_mode():
        for dec, res in shapes:
            config, runs = _variants(teacher, dec, res, y)
            name = f"{'.'.join(map(str, dec))}/{'.'.join(map(str, res))}"
            rows.append({"candidate": name, "dec": list(dec), "res": list(res), "synthesis_macs": config.synthesis_macs()})
            for precision, run in runs.items():
                timed[f"{name} {precision}"] = lambda run=run: run(y_hat[None])
        times: dict[str, list[float]] = {k: [] for k in timed}
        for fn in timed.values():
            fn()  # warm-up
        for _ in range(args.repeat):
            for key, fn in timed.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    for row in rows:
        for precision in ("float32", "int8"):
            key = f"{row['candidate']} {precision}"
            if key in ms:
                row[f"g_s_ms_{precision}"] = ms[key]
                row[f"decode_estimate_ms_{precision}"] = ms[key] + ms["exact stage"]
    h, w = rgb.shape[:2]
    result = {"image": str(args.image), "size": [w, h], "quality": args.quality, "threads": torch.get_num_threads(),
              "cpu_has_vnni": policy.cpu_has_vnni(), "repeat": args.repeat, "exact_stage_ms": ms["exact stage"],
              "candidates": rows}
    write_json(args.out, result)
    print(f"{w}x{h}, quality {args.quality:g}, {torch.get_num_threads()} threads; exact stage {ms['exact stage']:.0f} ms")
    print(f"{'widths/blocks':>16} {'MAC/px':>8} {'g_s f32':>8} {'g_s int8':>9} {'decode est.':>12}")
    for row in rows:
        int8_ms = row.get("g_s_ms_int8", float("nan"))
        print(f"{row['candidate']:>16} {row['synthesis_macs'] / 1e3:>7.1f}k {row['g_s_ms_float32']:>8.0f} {int8_ms:>9.0f} "
              f"{row.get('decode_estimate_ms_int8', row['decode_estimate_ms_float32']):>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
