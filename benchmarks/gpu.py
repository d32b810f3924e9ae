#!/usr/bin/env python
"""CNNZ on a CUDA GPU: throughput of the batch API, and files that cross devices.

Parts, all on the same images in one run:

``exactness``  every image encoded on the CPU and on the GPU; every file decoded on both.
               The entropy model is integer, so the latents a decoder reads never depend
               on the device: the sha256 of each file's decoded symbols is recorded (decode
               the saved files on another machine and compare, ``--check``). What may differ:
               the float analysis on the GPU picks a few other symbols (files not identical,
               sizes within a fraction of a percent), and the float synthesis gives pixels
               within a level or two; both are reported with the PSNR of each path.
``latency``    one image at a time (``pillow_cnnz.encode`` / ``decode``): median ms, on the GPU
               and on this machine's CPU (the peer measured in the same run).
``batch``      ``encode_batch`` / ``decode_batch`` of all images at several batch sizes: MP/s,
               and the decode split into the CPU part (entropy decoding and the integer
               hyper network; on one thread, and on a thread per core as ``decode_batch``
               runs it) and the GPU synthesis.
``sizes``      one image resized to ``--sizes`` megapixels: encode / decode MP/s and the
               GPU's peak allocated memory (the codec tiles: it stays bounded).

Without CUDA it says so and stops (``--device cpu`` runs the same parts on the CPU, to try
the script). Examples::

    python -m benchmarks.gpu --data data/kodak --save-files /tmp/gpu-files
    python -m benchmarks.gpu --check /tmp/gpu-files      # on any machine: same symbols?
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_cnnz
from benchmarks._common import DEFAULT_KODAK
from benchmarks.rd import psnr
from benchmarks.speed import scaled_image
from pillow_cnnz import batching, container, latents, synthesis

HERE = Path(__file__).resolve().parent


def symbols_sha(data: bytes) -> str:
    """sha256 of the integer ẑ and latent symbols a decoder reads from ``data`` (numpy only)."""
    header, payloads = container.parse(data)
    z, symbols, _ = latents.decode_latents(header, payloads["LATZ"], payloads["LATY"])
    return hashlib.sha256(z.astype(np.int32).tobytes() + symbols.astype(np.int32).tobytes()).hexdigest()


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def load_images(folder: Path, limit: int | None) -> tuple[list[str], list[np.ndarray]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".ppm", ".cnnz"})[:limit]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB")))
    return [p.name for p in paths], images


def part_exactness(names: list[str], images: list[np.ndarray], q: float, dev: str, save: Path | None) -> dict:
    cpu_files = pillow_cnnz.encode_batch(images, q, device="cpu")
    dev_files = pillow_cnnz.encode_batch(images, q, device=dev)
    rows = []
    for name, im, fc, fd in zip(names, images, cpu_files, dev_files):
        dec = {(e, d): pillow_cnnz.decode(f, device=d) for e, f in (("cpu", fc), (dev, fd)) for d in ("cpu", dev)}
        diff = [np.abs(dec[(e, "cpu")].astype(int) - dec[(e, dev)].astype(int)) for e in ("cpu", dev)]
        rows.append({
            "image": name, "identical_files": fc == fd, "bytes_cpu": len(fc), "bytes_dev": len(fd),
            "symbols_sha_dev_file": symbols_sha(fd),
            "pixel_sha_dev_file_cpu_decode": hashlib.sha256(dec[(dev, "cpu")].tobytes()).hexdigest(),
            "max_pixel_diff_cpu_vs_dev_decode": int(max(d.max() for d in diff)),
            "share_pixels_differing": float(np.mean([np.mean(d > 0) for d in diff])),
            "psnr": {f"{e}->{d}": psnr(im, px) for (e, d), px in dec.items()},
        })
        if save:
            save.mkdir(parents=True, exist_ok=True)
            (save / (Path(name).stem + ".cnnz")).write_bytes(fd)
    if save:
        (save / "symbols.json").write_text(json.dumps({r["image"]: {"symbols": r["symbols_sha_dev_file"],
                                                                      "pixels_cpu": r["pixel_sha_dev_file_cpu_decode"]}
                                                        for r in rows}, indent=1))
    return {"quality": q, "images": rows,
            "identical_files": sum(r["identical_files"] for r in rows),
            "size_ratio_dev_over_cpu": sum(r["bytes_dev"] for r in rows) / sum(r["bytes_cpu"] for r in rows),
            "max_pixel_diff": max(r["max_pixel_diff_cpu_vs_dev_decode"] for r in rows),
            "mean_psnr": {k: float(np.mean([r["psnr"][k] for r in rows])) for k in rows[0]["psnr"]}}


def part_latency(images: list[np.ndarray], q: float, devices: list[str]) -> dict:
    out = {}
    for d in devices:
        pillow_cnnz.decode(pillow_cnnz.encode(images[0], q, device=d), device=d)  # warm-up
        enc, dec = [], []
        for im in images:
            f, t = timed(pillow_cnnz.encode, im, q, device=d)
            enc.append(t)
            dec.append(timed(pillow_cnnz.decode, f, device=d)[1])
        out[d] = {"encode_ms": 1e3 * float(np.median(enc)), "decode_ms": 1e3 * float(np.median(dec))}
    return out


def part_batch(images: list[np.ndarray], q: float, dev: str, sizes: list[int]) -> dict:
    mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    files = pillow_cnnz.encode_batch(images, q, device=dev)
    out = {"megapixels": mp, "runs": []}
    for bs in sizes:
        pillow_cnnz.encode_batch(images[:bs], q, device=dev, batch_size=bs)  # warm-up at this shape
        _, te = timed(pillow_cnnz.encode_batch, images, q, device=dev, batch_size=bs)
        _, td = timed(pillow_cnnz.decode_batch, files, device=dev, batch_size=bs)
        out["runs"].append({"batch_size": bs, "encode_mp_s": mp / te, "decode_mp_s": mp / td,
                            "encode_s": te, "decode_s": td})
    parsed = [container.parse(f) for f in files]
    y_hats, t_cpu = timed(lambda: [latents.y_hat_of(f) for f in parsed])
    _, t_threads = timed(batching.per_file, latents.y_hat_of, parsed)
    bs = max(sizes)
    headers = [h for h, _ in parsed]

    def synth() -> None:  # same-size files together, as decode_batch groups them
        for ids in batching.groups([(h.height, h.width) for h in headers], bs):
            synthesis.synthesize_batch([headers[i] for i in ids], [y_hats[i] for i in ids], dev)

    _, t_syn = timed(synth)
    out["decode_split_s"] = {"entropy_and_hyper_cpu": t_cpu, "entropy_and_hyper_cpu_thread_per_core": t_threads,
                             "synthesis": t_syn, "batch_size": bs}
    return out


def part_sizes(image: np.ndarray, q: float, dev: str, sizes: list[float]) -> list[dict]:
    import torch

    rows = []
    for mp in sizes:
        big = np.asarray(scaled_image(Image.fromarray(image), mp))
        h, w = big.shape[:2]
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        f, te = timed(pillow_cnnz.encode, big, q, device=dev)
        px, td = timed(pillow_cnnz.decode, f, device=dev)
        row = {"megapixels": w * h / 1e6, "size": [w, h], "encode_mp_s": w * h / 1e6 / te,
               "decode_mp_s": w * h / 1e6 / td, "bpp": 8 * len(f) / (w * h), "psnr": psnr(big, px)}
        if dev.startswith("cuda"):
            row["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
    return rows


def check(folder: Path) -> int:
    """Decode the files another machine saved with ``--save-files`` and compare the symbols."""
    ref = json.loads((folder / "symbols.json").read_text())
    same = same_px = 0
    for name, want in ref.items():
        data = (folder / (Path(name).stem + ".cnnz")).read_bytes()
        same += symbols_sha(data) == want["symbols"]
        same_px += hashlib.sha256(pillow_cnnz.decode(data, device="cpu").tobytes()).hexdigest() == want["pixels_cpu"]
    print(f"{same} / {len(ref)} files decode to the same symbols as on the machine that wrote them; "
          f"{same_px} / {len(ref)} to the same pixels on this CPU as on that machine's CPU")
    return 0 if same == len(ref) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_KODAK, help="folder of images (.png/.jpg/.cnnz)")
    p.add_argument("--limit", type=int)
    p.add_argument("--quality", type=float, default=4.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", default="1,8,24")
    p.add_argument("--sizes", default="12,50", help="megapixels of the size part")
    p.add_argument("--save-files", type=Path, help="write the GPU-encoded files and their symbols' sha256 here")
    p.add_argument("--check", type=Path, help="only decode a --save-files folder and compare")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = p.parse_args(argv)
    if args.check:
        return check(args.check)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (--device cpu runs the parts on the CPU)", file=sys.stderr)
        return 2
    names, images = load_images(args.data, args.limit)
    res = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "data": str(args.data),
           "images": len(images), "quality": args.quality}
    steps = [("exactness", lambda: part_exactness(names, images, args.quality, args.device, args.save_files)),
             ("latency", lambda: part_latency(images, args.quality, sorted({args.device, "cpu"}))),
             ("batch", lambda: part_batch(images, args.quality, args.device,
                                          [int(b) for b in args.batch_sizes.split(",")])),
             ("sizes", lambda: part_sizes(images[0], args.quality, args.device,
                                          [float(s) for s in args.sizes.split(",") if s]))]
    for name, fn in steps:
        try:
            res[name], t = timed(fn)
        except Exception as e:  # noqa: BLE001  (a failing part is reported; the others still run)
            res[name] = {"error": traceback.format_exc()}
            print(f"{name} failed: {e!r}\n{res[name]['error']}", flush=True)
            continue
        print(f"{name} ({t:.1f} s): {json.dumps(res[name] if name != 'exactness' else {k: v for k, v in res[name].items() if k != 'images'})}",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
