#!/usr/bin/env python
"""Reduced-resolution decoding (``decode(scale=)``, ``draft()``): its quality and its time against a full decode.

Parts (all on by default; ``--parts`` picks a subset):

``quality``  each Kodak image at ``--qualities``: the PSNR of the 1/2, 1/4 and 1/8 decode against a
             Lanczos downscale of the original, and that of a Lanczos downscale of the full decode
             (the bar: at most 0.5 dB below it); means over the images, per quality.
``time``     images resized (Lanczos) to ``--width`` pixels on the longer side, each encoded once:
             the full decode and the decodes at 1/2, 1/4 and 1/8 (``pillow_cnnz.decode``) in
             rounds, the variants interleaved, in the default precision and in float32; medians
             over rounds and images, and each scale's time / the full decode's of the same
             image and round (the bars: 70 % at 1/2, 45 % at 1/4).
``thumbnail`` one image resized to ``--thumbnail-mp`` megapixels: ``Image.open(f).thumbnail((256, 256))``
             (``draft`` picks 1/8) against the same with ``draft`` turned off (a full decode, then
             Pillow's resize), and a JPEG q90 of the image read both ways (Pillow's DCT scaling on
             and off) as the peer; medians of ``--runs``.

Example (from the repository root)::

    python -m benchmarks.scaled                       # ~15 min on 2 cores
    python -m benchmarks.scaled --parts time --images 2 --out /tmp/scaled.json
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, JpegImagePlugin

from pillow_cnnz import heads

from ._common import (DEFAULT_KODAK, HERE, environment, finish_environment, image_paths, md_table, median,
                      model_info, write_json)
from .rd import psnr

PARTS = ("quality", "time", "thumbnail")
SCALES = (2, 4, 8)
BARS = {2: 0.70, 4: 0.45}  # a reduced decode's time / the full decode's, at most
PSNR_BAR = 0.5  # dB below a Lanczos downscale of the full decode, at most


def lanczos(pixels: np.ndarray, scale: int) -> np.ndarray:
    im = Image.fromarray(pixels)
    return np.asarray(im.resize(heads.scaled_size(*im.size, scale), Image.LANCZOS))


def resized(path: Path, longer: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    factor = longer / max(im.size)
    return im.resize((round(im.width * factor), round(im.height * factor)), Image.LANCZOS)


def part_quality(paths: list[Path], qualities: list[float]) -> dict:
    import pillow_cnnz

    rows: dict[str, dict] = {}
    for q in qualities:
        per_scale: dict[int, list[tuple[float, float]]] = {s: [] for s in SCALES}
        for path in paths:
            original = np.asarray(Image.open(path).convert("RGB"))
            data = pillow_cnnz.encode(original, q)
            full = pillow_cnnz.decode(data)
            for s in SCALES:
                reference = lanczos(original, s)
                area = np.asarray(Image.fromarray(full).reduce(s))
                per_scale[s].append((psnr(pillow_cnnz.decode(data, scale=s), reference), psnr(lanczos(full, s), reference),
                                     psnr(area, reference)))
        rows[f"q{q:g}"] = {f"1/{s}": {"psnr": float(np.mean([v[0] for v in values])),
                                      "lanczos_of_full_psnr": float(np.mean([v[1] for v in values])),
                                      "area_of_full_psnr": float(np.mean([v[2] for v in values])),
                                      "delta_db": float(np.mean([v[0] - v[1] for v in values])),
                                      "worst_delta_db": float(min(v[0] - v[1] for v in values))}
                           for s, values in per_scale.items()}
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def part_time(paths: list[Path], longer: int, rounds: int, quality: float) -> dict:
    import pillow_cnnz

    images = [resized(p, longer) for p in paths]
    files = [pillow_cnnz.encode(im, quality) for im in images]
    out = {"size": [list(im.size) for im in images], "bytes": [len(f) for f in files]}
    for precision in (None, "float32"):
        with mock.patch.dict(os.environ, {"CNNZ_PRECISION": precision} if precision else {}):
            for data in files:  # warm-up: weights, networks and heads loaded
                for s in (1, *SCALES):
                    pillow_cnnz.decode(data, scale=s)
            seconds: dict[int, list[float]] = {s: [] for s in (1, *SCALES)}
            ratios: dict[int, list[float]] = {s: [] for s in SCALES}
            for _ in range(rounds):
                for data in files:
                    t = {s: _timed(lambda s=s: pillow_cnnz.decode(data, scale=s)) for s in (1, *SCALES)}
                    for s in t:
                        seconds[s].append(t[s])
                    for s in SCALES:
                        ratios[s].append(t[s] / t[1])
            out[precision or "default"] = {
                "precision": _precision_name(precision),
                "median_s": {f"1/{s}" if s > 1 else "full": median(v) for s, v in seconds.items()},
                "ratio_to_full": {f"1/{s}": median(v) for s, v in ratios.items()},
            }
    return out


def _precision_name(precision: str | None) -> str:
    from pillow_cnnz import precision as policy
    from pillow_cnnz import weights

    return policy.resolve_precision(precision, "cpu", int8=weights.load().has_int8)


def part_thumbnail(path: Path, megapixels: float, runs: int, quality: float, tmp: Path) -> dict:
    import pillow_cnnz
    from pillow_cnnz import pil_plugin

    base = Image.open(path).convert("RGB")
    factor = math.sqrt(megapixels * 1e6 / (base.width * base.height))
    big = base.resize((round(base.width * factor), round(base.height * factor)), Image.LANCZOS)
    cnnz, jpeg = tmp / "big.cnnz", tmp / "big.jpg"
    t0 = time.perf_counter()
    pillow_cnnz.save(big, cnnz, quality=quality)
    encode_s = time.perf_counter() - t0
    big.save(jpeg, quality=90)
    del big

    def thumb(file: Path, draft: bool) -> tuple[float, tuple[int, int]]:
        cls = pil_plugin.CnnzImageFile if file.suffix == ".cnnz" else JpegImagePlugin.JpegImageFile
        with contextlib.nullcontext() if draft else mock.patch.object(cls, "draft", lambda *a: None):
            t0 = time.perf_counter()
            with Image.open(file) as im:
                im.thumbnail((256, 256))
                size = im.size
            return time.perf_counter() - t0, size

    out: dict = {"megapixels": megapixels, "encode_s": encode_s, "cnnz_bytes": cnnz.stat().st_size,
                 "precision": _precision_name(None)}
    thumb(cnnz, True)  # warm-up
    for name, file in (("cnnz", cnnz), ("jpeg", jpeg)):
        for draft in (True, False):
            times = [thumb(file, draft) for _ in range(runs)]
            out[f"{name}_{'draft' if draft else 'full'}"] = {"median_s": median(t for t, _ in times), "size": times[0][1]}
    out["cnnz_speedup"] = out["cnnz_full"]["median_s"] / out["cnnz_draft"]["median_s"]
    out["jpeg_speedup"] = out["jpeg_full"]["median_s"] / out["jpeg_draft"]["median_s"]
    return out


def quality_lines(quality: dict) -> list[str]:
    rows = [[q, s, f"{v['psnr']:.2f}", f"{v['lanczos_of_full_psnr']:.2f}", f"{v['delta_db']:+.2f}", f"{v['worst_delta_db']:+.2f}",
             f"{v['area_of_full_psnr']:.2f}"]
            for q, scales in quality.items() for s, v in scales.items()]
    return ["## Quality (Kodak): PSNR against a Lanczos downscale of the original", "",
            f"Bar: at most {PSNR_BAR} dB below a Lanczos downscale of the full decode. The last column, Pillow's "
            "`reduce()` (area) of the full decode, shows how much of a gap the filter alone makes.", "",
            md_table(["quality", "scale", "decode at scale dB", "Lanczos of full dB", "mean Δ", "worst Δ",
                      "area of full dB"], rows), ""]


def time_lines(t: dict) -> list[str]:
    rows = [[t[key]["precision"], f"{t[key]['median_s']['full']:.3f}"]
            + [f"{t[key]['median_s'][f'1/{s}']:.3f} ({100 * t[key]['ratio_to_full'][f'1/{s}']:.0f} %)" for s in SCALES]
            for key in ("default", "float32")]
    return [f"## Time: images {t['size'][0][0]}x{t['size'][0][1]} (or turned), medians", "",
            f"Bars: {', '.join(f'1/{s} at most {int(100 * b)} %' for s, b in BARS.items())} of the full decode.", "",
            md_table(["precision", "full s", *[f"1/{s} s (of full)" for s in SCALES]], rows), ""]


def thumbnail_lines(t: dict) -> list[str]:
    return [f"## thumbnail((256, 256)) of a {t['megapixels']:g} MP image ({t['precision']}), medians", "",
            md_table(["codec", "with draft s", "full decode s", "speed-up"],
                     [["CNNZ", f"{t['cnnz_draft']['median_s']:.2f}", f"{t['cnnz_full']['median_s']:.2f}", f"{t['cnnz_speedup']:.1f}x"],
                      ["JPEG q90", f"{t['jpeg_draft']['median_s']:.2f}", f"{t['jpeg_full']['median_s']:.2f}", f"{t['jpeg_speedup']:.1f}x"]]), ""]


def report(res: dict) -> str:
    env = res["environment"]
    lines = [f"# Reduced-resolution decoding ({env.get('cpu_model')}, {env['cpu_count']} cores; "
             f"default CPU precision {env.get('cpu_decode_precision')})", ""]
    for part, render in (("quality", quality_lines), ("time", time_lines), ("thumbnail", thumbnail_lines)):
        if part in res:
            lines += render(res[part])
    if env.get("notes"):
        lines.append(f"Notes: {'; '.join(env['notes'])}")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_KODAK, help="folder of images (default: Kodak)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--limit", type=int, help="quality: use only the first N images")
    parser.add_argument("--qualities", default="1,2,4,6,8")
    parser.add_argument("--images", type=int, default=4, help="time: images resized to --width (default 4)")
    parser.add_argument("--width", type=int, default=2048, help="time: the images' longer side (default 2048)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quality", type=float, default=4.0, help="time and thumbnail: CNNZ quality (default 4)")
    parser.add_argument("--thumbnail-mp", type=float, default=24.0)
    parser.add_argument("--runs", type=int, default=3, help="thumbnail: timed runs of each variant (default 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scaled.json")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    paths = image_paths(args.data, args.limit)
    res: dict = {"benchmark": "scaled", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "environment": environment(), "model": model_info()}
    if "quality" in parts:
        print("quality ...", file=sys.stderr)
        res["quality"] = part_quality(paths, [float(q) for q in args.qualities.split(",")])
    if "time" in parts:
        print("time ...", file=sys.stderr)
        res["time"] = part_time(paths[: args.images], args.width, args.rounds, args.quality)
    if "thumbnail" in parts:
        import tempfile

        print("thumbnail ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="cnnz-scaled-") as tmp:
            res["thumbnail"] = part_thumbnail(paths[0], args.thumbnail_mp, args.runs, args.quality, Path(tmp))
    finish_environment(res["environment"])
    text = report(res)
    print(text)
    write_json(args.out, res)
    args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
