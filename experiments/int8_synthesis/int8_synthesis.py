#!/usr/bin/env python
"""Which synthesis layers can run in int8, at what cost in PSNR, for how much time?

Measures each channel's activation ranges of every synthesis block on training images (as the
training command ``int8`` does, on ŷ the decoder gets from them), then decodes the ŷ of every image
of ``--data`` (the float32 analysis' files at each quality) with float32 ``g_s`` and with each
level's blocks in int8 (``pillow_cnnz/int8.py``), alone, in one and in two passes (the input's
rounding residual quantized too), every block in one pass, and the shipped ranges file's choice: its
residual blocks alone and each of its int8 sub-pixel convolutions alone, each with its weights
rounded to nearest and as that command rounded them (``training.int8_calibration.gptq``), and all of
it; and every convolution but the last (the sub-pixel ones too, the one from the latents included)
in one pass, rounded to nearest, the sub-pixel inputs' scale at their headroom and at their measured
quantile: what int8 alone could give a decode. Reports mean PSNR against the original per quality
and each variant's difference from float32, and the median time of ``g_s`` on the first image for
float32, the shipped choice, its blocks alone (the release before), the outer levels' blocks alone,
every block in one pass and every convolution in one pass (at the quantile), timed interleaved (the
machine's speed drifts).

Example (from the repository root; about 12 minutes on 2 cores)::

    python -m experiments.int8_synthesis.int8_synthesis --data data/kodak
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import DATA, DEFAULT_KODAK, image_paths, load_rgb, write_json
from pillow_cnnz import int8, precision, weights
from training import int8_calibration
from training.int8ranges import calibration_paths, decoded_latents, synthesis_inputs

HERE = Path(__file__).resolve().parent


def _pixels(body, last, y: torch.Tensor, height: int, width: int) -> np.ndarray:  # noqa: ANN001
    x = last(body(y.clone()))
    return x.clamp(0, 1).mul(255).round().permute(0, 2, 3, 1)[0, :height, :width].numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_KODAK))
    p.add_argument("--train", default=str(DATA / "train"), help="images the ranges are measured on")
    p.add_argument("--calibration", type=int, default=48, help="how many training images (the command's seeded pick)")
    p.add_argument("--qualities", default="1,4,6,8")
    p.add_argument("--limit", type=int, default=0, help="first N images of --data (0: all)")
    p.add_argument("--repeat", type=int, default=9, help="timed runs of each variant")
    p.add_argument("--out", default=str(HERE / "int8_synthesis.json"))
    args = p.parse_args()
    if not int8.supported():
        p.error("this torch build has no oneDNN int8 convolutions")
    model = weights.load()
    net = model.net("cpu")
    g_s, body, last = net.g_s, net.g_s[:-1], net.g_s[-1]
    picked = calibration_paths(args.train, args.calibration, 0)  # the command's pick, at its default seed
    levels = int8_calibration.synthesis_levels(g_s)
    latents = list(synthesis_inputs(model, [load_rgb(p) for p in picked]))  # measured twice
    ranges = int8_calibration.measure_ranges(g_s, latents, [i for level in levels for i in level])
    shipped = model.int8_synthesis()
    variants = {}
    for n, level in enumerate(levels):
        variants[f"level {n}"] = int8.Int8Layers(body, {str(i): ranges[str(i)] for i in level}, saturate=True)
        variants[f"level {n} two-pass"] = int8.Int8Layers(
            body, int8_calibration.with_two_pass({str(i): ranges[str(i)] for i in level}, level), saturate=True)
    variants["all levels"] = int8.Int8Layers(body, ranges, saturate=True)
    outer = [i for level in (levels[0], levels[-1]) for i in level]  # the choice before the two-pass middle level
    variants["outer levels"] = int8.Int8Layers(body, {str(i): ranges[str(i)] for i in outer}, saturate=True)
    # The shipped ranges, with and without the weights train int8 rounded (int8_calibration.gptq): its residual blocks
    # alone (the release before the int8 sub-pixel convolutions), and each sub-pixel convolution alone
    ranges = model.int8_ranges(net)[1]
    rounded = model.int8_rounded(net, ranges)
    blocks_only = {k: r for k, r in ranges.items() if isinstance(g_s[int(k)], int8.ResBlock)}
    for how, given in (("nearest", None), ("gptq", rounded)):
        variants[f"blocks, {how}"] = int8.Int8Layers(body, blocks_only, saturate=True, rounded=given)
        for k in sorted(set(ranges) - set(blocks_only), key=int):
            variants[f"upsampling {k}, {how}"] = int8.Int8Layers(body, {k: ranges[k]}, saturate=True, rounded=given)
    variants["shipped"] = shipped
    # Every convolution but the last in int8, each input in one pass: what int8 alone could give the
    # decode, measured at the sub-pixel convolutions' headroom and clipped at their quantile (x1)
    ups = int8.upsamplings(g_s)
    every = int8_calibration.measure_ranges(g_s, latents, [*ups, *(i for level in levels for i in level)])
    for headroom in (int8_calibration.UPSAMPLING_HEADROOM, 1.0):
        one_pass = {k: {**r, "input": [v * headroom / int8_calibration.UPSAMPLING_HEADROOM for v in r["input"]]}
                    if int(k) in ups else r for k, r in every.items()}
        variants[f"every conv one pass x{headroom:g}"] = int8.Int8Layers(body, one_pass, saturate=True)
    qualities = [float(q) for q in args.qualities.split(",")]
    images = [load_rgb(path) for path in image_paths(args.data, args.limit or None)]
    psnr: dict[str, dict[str, list[float]]] = {k: {str(q): [] for q in qualities} for k in ["float32", *variants]}
    with torch.inference_mode():
        for rgb in images:
            for q in qualities:
                y = decoded_latents(model, rgb, q)
                for name, run in [("float32", body), *variants.items()]:
                    out = _pixels(run, last, y, *rgb.shape[:2])
                    mse = np.mean((out - rgb.astype(np.float64)) ** 2)
                    psnr[name][str(q)].append(float(10 * np.log10(255**2 / mse)))
        y = decoded_latents(model, images[0], qualities[-1])
        timed = (("float32", body), ("shipped", shipped), ("blocks, gptq", variants["blocks, gptq"]),
                 ("outer levels", variants["outer levels"]), ("all levels", variants["all levels"]),
                 ("every conv one pass", variants["every conv one pass x1"]))
        times: dict[str, list[float]] = {name: [] for name, _ in timed}
        for name, run in timed:
            _pixels(run, last, y, *images[0].shape[:2])  # warm-up
        for _ in range(args.repeat):
            for name, run in timed:
                t = time.perf_counter()
                _pixels(run, last, y, *images[0].shape[:2])
                times[name].append(time.perf_counter() - t)
    mean = {k: {q: float(np.mean(v)) for q, v in per.items()} for k, per in psnr.items()}
    delta = {k: {q: mean[k][q] - mean["float32"][q] for q in mean[k]} for k in variants}
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    result = {"data": args.data, "images": len(images), "model_id": model.model_id.hex(),
              "calibration": {"data": args.train, "images": len(picked)},
              "levels": levels, "shipped_blocks": sorted(i for i, b in shipped.blocks.items() if isinstance(b, int8._Block)),
              "shipped_upsamplings": sorted(i for i, b in shipped.blocks.items() if isinstance(b, int8._Upsample)),
              "shipped_two_pass": sorted(i for i, b in shipped.blocks.items() if b.passes == 2),
              "cpu_has_vnni": precision.cpu_has_vnni(),
              "threads": torch.get_num_threads(), "psnr": mean, "delta_db": delta, "g_s_ms_median": ms,
              "speedup": ms["float32"] / ms["shipped"]}
    write_json(args.out, result)
    print(f"{len(images)} images, PSNR vs float32 (dB):")
    for k, per in delta.items():
        print(f"  {k:>10}: " + "  ".join(f"q{float(q):g} {v:+.4f}" for q, v in per.items()))
    print(f"g_s + last layer, {images[0].shape[1]}x{images[0].shape[0]}: float32 {ms['float32']:.0f} ms, "
          f"shipped int8 {ms['shipped']:.0f} ms ({result['speedup']:.2f}x), blocks {result['shipped_blocks']} and "
          f"sub-pixel convolutions {result['shipped_upsamplings']} (two-pass {result['shipped_two_pass']}), "
          f"its blocks alone {ms['blocks, gptq']:.0f} ms, the outer levels' blocks alone {ms['outer levels']:.0f} ms, "
          f"every block in one pass {ms['all levels']:.0f} ms, every convolution but the last in one pass "
          f"{ms['every conv one pass']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
