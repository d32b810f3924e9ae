#!/usr/bin/env python
"""Speed of ``.cnnz`` next to the codecs Pillow ships, plus start-up, scaling and memory.

Parts (all on by default; ``--parts`` picks a subset):

``codecs``   encode / decode wall time of CNNZ and, in the same run on the same
             images, JPEG q75 / q85, WebP q75 method 4, WebP with Pillow's defaults
             (quality 80, method 4) and AVIF q60 speed 6, each used through Pillow
             (``im.save(buf, format=...)``, ``Image.open(buf).load()``). Every codec is
             warmed up first (for CNNZ: torch and the weights are loaded), images are
             interleaved across codecs so a fluctuating background load hits all of them
             alike; medians over images, and CNNZ's time / each peer's time.
``stages``   where CNNZ's time goes, per stage (analysis / synthesis transforms, integer
             hyper network, ANS, the rest), in a fresh process with the default
             environment, then with one thread for numpy's BLAS (``OPENBLAS_NUM_THREADS=1``),
             for torch (``CNNZ_THREADS=1``) and for both: the two thread pools and any
             background job share the cores.
``cold``     a new process that imports pillow_cnnz and ``Image.open(x.cnnz).load()``:
             wall time from spawn to exit, with the first-use costs split out; on a CPU
             with native bfloat16 also with ``CNNZ_PRECISION=bfloat16`` (torch imported).
``import``   ``import pillow_cnnz`` + ``Image.open(x.cnnz).size`` against
             ``Image.open(x.png).size`` without pillow_cnnz (fresh processes, medians),
             and one ``python -X importtime`` run listing what pillow_cnnz pulls in.
``scaling``  ms per megapixel of encode and decode at ``--sizes`` megapixels (a Kodak
             image resized with LANCZOS); each size and operation runs in its own fresh
             process after a small warm-up, which also gives its peak RSS (VmHWM).
             ``--skip-rss`` times the sizes in this process instead (faster, no memory).
``batch``    ``encode_batch`` / ``decode_batch`` of the images (batch 8) against one file at a
             time, and the exact per-file stage of a batch (entropy coding, integer networks)
             on one thread against a thread per core (``batching.per_file``); medians of 3
             rounds, each round running every variant in turn.
``floor``    what the transforms' arithmetic alone costs on this CPU: the best rate of a
             dense 3x3 convolution (96 -> 96 channels, 128x192, channels-last, torch, the
             codec's threads) in float32 and, where the CPU has it natively, bfloat16
             (and, with VNNI, the same convolution in oneDNN int8, as ``pillow_cnnz/int8.py`` runs it);
             multiply-adds per pixel of ``g_a`` / ``g_s`` (``Config.analysis_macs`` /
             ``synthesis_macs``) at that rate give what a Kodak image's transform costs
             (the real layers run within ~15 % of it, some faster), and the multiply-adds
             per pixel a transform could have to fit a time budget.
``decodeonly`` a process that only decodes (no warm-up, torch not imported): ``Image.open().load()``
             of one image at ``--decode-only-sizes`` megapixels, in ``auto`` precision (from
             ``synthesis.TORCH_FROM_PIXELS`` it imports torch itself) and with ``CNNZ_PRECISION=float32``
             (numpy throughout); seconds from ``Image.open`` on (the torch import included), peak
             RSS, and whether torch was imported.
``synthesis`` the synthesis transform alone, on the same latents: numpy float32 (what a reader
             without torch runs at every size) against torch float32 and, where ``auto`` picks
             another, torch in that precision; a Kodak image and ``--synthesis-sizes`` megapixels,
             the backends interleaved, medians of ``--synthesis-runs`` after a warm-up on the first.
``scaled``   reduced-resolution decoding (``benchmarks/scaled.py``): two images 2048 pixels on the
             longer side decoded whole and at 1/2, 1/4 and 1/8 (default precision and float32), and
             ``thumbnail((256, 256))`` of a 24 MP image with and without ``draft``, JPEG beside it.
``tiling``   a ~4 MP image decoded with the default tiling and with one tile
             (``pillow_cnnz.tiling.TILE`` patched above the latent grid): pixel
             differences; the same comparison of the latents the encoder produces.

Threads: torch uses ``torch.get_num_threads()`` unless ``CNNZ_THREADS`` (or ``--threads``,
which sets it for this run and its subprocesses) says otherwise; the codec applies it at
first torch use. JPEG and WebP encode on one thread; AVIF uses Pillow's default
``max_threads``.

Example (from the repository root)::

    python -m benchmarks.speed                                  # everything, ~15 min on 2 cores
    python -m benchmarks.speed --limit 2 --sizes 0.4,3 --out /tmp/speed.json
    python -m benchmarks.speed --parts codecs,stages --limit 4
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, features

import pillow_cnnz  # noqa: F401  (registers the format)
from benchmarks import scaled
from benchmarks._common import (
    DEFAULT_KODAK,
    HERE,
    StageTimer,
    bytecode_env,
    environment,
    finish_environment,
    image_paths,
    last_json,
    md_table,
    median,
    model_info,
    patched,
    run_python,
    time_calls,
    write_json,
    weights_note,
)

PARTS = ("codecs", "stages", "batch", "floor", "cold", "import", "scaling", "decodeonly", "synthesis", "tiling", "scaled")
PEERS = {
    "jpeg-q75": ("JPEG", {"quality": 75}),
    "jpeg-q85": ("JPEG", {"quality": 85}),
    "webp-q75-m4": ("WEBP", {"quality": 75, "method": 4}),
    "webp-default": ("WEBP", {}),
    "avif-q60-s6": ("AVIF", {"quality": 60, "speed": 6}),
}
FEATURE = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}


# --------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, opts: dict) -> tuple[bytes, float]:
    buf = io.BytesIO()
    t0 = time.perf_counter()
    im.save(buf, format=fmt, **opts)
    return buf.getvalue(), time.perf_counter() - t0


def decode(data: bytes) -> tuple[Image.Image, float]:
    t0 = time.perf_counter()
    im = Image.open(io.BytesIO(data))
    im.load()
    return im, time.perf_counter() - t0


def size_for(mp: float, aspect: float = 1.5) -> tuple[int, int]:
    w = round(math.sqrt(mp * 1e6 * aspect))
    return w, round(w / aspect)


def scaled_image(base: Image.Image, mp: float) -> Image.Image:
    """``base`` itself when it is within 5% of ``mp`` megapixels, else a LANCZOS resize."""
    if abs(base.width * base.height / 1e6 - mp) <= 0.05 * mp:
        return base
    return base.resize(size_for(mp, base.width / base.height), Image.Resampling.LANCZOS)


def rss_now() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MiB
    return out


# --------------------------------------------------------------------------- workers (run in subprocesses)

# Each worker is run as ``python -m benchmarks.speed --worker NAME JSON-ARGS`` and prints one JSON line.


def worker_stages(cfg: dict) -> dict:
    """Per-stage times of encode and decode on a few images (fresh process)."""
    import torch

    from pillow_cnnz import analysis, entropy, hyper, tiling

    paths = [Path(p) for p in cfg["paths"]]
    ims = [Image.open(p).convert("RGB") for p in paths]
    data, _ = encode(ims[0], "CNNZ", {"quality": cfg["quality"]})  # warm-up
    decode(data)
    stages = {"analysis": (analysis, "run_analysis"), "synthesis": (tiling, "synthesize_tiles"), "hyper": (hyper, "hyper_band"),
              "ans_push": (entropy.Encoder, "push"), "ans_finish": (entropy.Encoder, "finish"),
              "ans_pull": (entropy.Decoder, "pull"), "ans_check": (entropy.Decoder, "finish")}
    rows = {"encode": [], "decode": []}
    with StageTimer(stages) as timer:
        for im in ims:
            timer.reset()
            data, t = encode(im, "CNNZ", {"quality": cfg["quality"]})
            sec = timer.seconds
            rows["encode"].append({"total": t, "transform": sec["analysis"], "hyper": sec["hyper"],
                                   "ans_encode": sec["ans_push"] + sec["ans_finish"]})
            timer.reset()
            _, t = decode(data)
            sec = timer.seconds
            rows["decode"].append({"total": t, "transform": sec["synthesis"], "hyper": sec["hyper"],
                                   "ans_decode": sec["ans_pull"] + sec["ans_check"]})
    return {"rows": rows, "torch_threads": torch.get_num_threads(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}


def worker_scale(cfg: dict) -> dict:
    """Encode (``op == "encode"``, from a .npy) or decode one big image, after a warm-up encode and
    decode unless ``warm`` is False (a decode-only process: torch not imported before the decode)."""
    import resource

    if cfg.get("warm", True):
        warm = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
        decode(encode(warm, "CNNZ", {"quality": cfg["quality"]})[0])
    if cfg["op"] == "encode":
        arr = np.load(cfg["input"])
        im = Image.fromarray(arr)
        del arr
        before = rss_now()
        data, t = encode(im, "CNNZ", {"quality": cfg["quality"]})
        Path(cfg["output"]).write_bytes(data)
        extra = {"bytes": len(data)}
    else:
        before = rss_now()
        t0 = time.perf_counter()
        with Image.open(cfg["input"]) as im:
            im.load()
            extra = {"size": im.size}
        t = time.perf_counter() - t0
    after = rss_now()
    extra["torch_imported"] = "torch" in sys.modules
    return {"seconds": t, "rss_before_mib": before["VmRSS"], "hwm_before_mib": before["VmHWM"],
            "peak_rss_mib": after["VmHWM"], "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **extra}


WORKERS = {"stages": worker_stages, "scale": worker_scale}


def run_worker(name: str, cfg: dict, env: dict | None = None) -> dict:
    code = "import runpy; runpy.run_module('benchmarks.speed', run_name='__main__')"
    _, res = run_python(code, env=env, args=["--worker", name, json.dumps(cfg)])
    return last_json(res.stdout)


# --------------------------------------------------------------------------- parts


def _precision(value: str | None):
    """``CNNZ_PRECISION`` set to ``value`` for the duration (None: left as it is)."""
    return mock.patch.dict(os.environ, {"CNNZ_PRECISION": value} if value else {})


def part_codecs(paths: list[Path], args: argparse.Namespace, tmp: Path) -> dict:
    codecs = {f"cnnz-q{args.quality:g}": ("CNNZ", {"quality": args.quality})}
    if args.method:  # the slow encode effort, next to the default one
        codecs[f"cnnz-q{args.quality:g}-m{args.method}"] = ("CNNZ", {"quality": args.quality, "method": args.method})
    skipped = []
    for name, (fmt, opts) in PEERS.items():
        if features.check(FEATURE[fmt]):
            codecs[name] = (fmt, opts)
        else:
            skipped.append(name)
    ims = [Image.open(p).convert("RGB") for p in paths]
    for fmt, opts in codecs.values():  # warm-up
        decode(encode(ims[0], fmt, opts)[0])
    import torch

    from pillow_cnnz import precision as policy
    from pillow_cnnz import weights

    # Encoding imported torch, so ``auto`` may now decode in bfloat16 (CPUs with native
    # bfloat16) or int8 (VNNI without it); then float32 is timed too, in torch (a decode-only
    # process runs numpy's float32: ``--parts scaling``).
    first = next(iter(codecs))
    precision = {first: policy.resolve_precision(None, "cpu", int8=weights.load().has_int8)}
    if precision[first] != "float32" and not os.environ.get("CNNZ_PRECISION"):
        name = f"{first}-float32"
        codecs = {first: codecs[first], name: codecs[first], **{k: v for k, v in codecs.items() if k != first}}
        precision[name] = "float32"

    per: dict[str, dict[str, list]] = {n: {"enc": [], "dec": [], "bytes": [], "pixels": []} for n in codecs}
    for i, im in enumerate(ims):
        for name, (fmt, opts) in codecs.items():
            reps = args.cnnz_repeat if fmt == "CNNZ" else args.repeat
            enc, dec = [], []
            for _ in range(reps):
                data, t = encode(im, fmt, opts)
                enc.append(t)
                with _precision(precision.get(name)):
                    out, t = decode(data)
                dec.append(t)
                assert out.size == im.size
            per[name]["enc"].append(median(enc))
            per[name]["dec"].append(median(dec))
            per[name]["bytes"].append(len(data))
            per[name]["pixels"].append(im.width * im.height)
            if fmt == "CNNZ" and i == 0:
                (tmp / "kodak0.cnnz").write_bytes(data)
        print(f"  codecs: {paths[i].name} done", file=sys.stderr)
    summary = {}
    for name, d in per.items():
        summary[name] = {
            "format": codecs[name][0], "options": codecs[name][1], "decode_precision": precision.get(name),
            "encode_ms_median": 1e3 * median(d["enc"]), "decode_ms_median": 1e3 * median(d["dec"]),
            "encode_mp_per_s": sum(d["pixels"]) / sum(d["enc"]) / 1e6,
            "decode_mp_per_s": sum(d["pixels"]) / sum(d["dec"]) / 1e6,
            "bpp_mean": float(np.mean([8 * b / p for b, p in zip(d["bytes"], d["pixels"])])),
            "per_image_encode_ms": [1e3 * t for t in d["enc"]],
            "per_image_decode_ms": [1e3 * t for t in d["dec"]],
        }
    cnnz = summary[next(iter(codecs))]
    ratios = {name: {"encode": cnnz["encode_ms_median"] / s["encode_ms_median"],
                     "decode": cnnz["decode_ms_median"] / s["decode_ms_median"]}
              for name, s in summary.items() if s["format"] != "CNNZ"}
    return {"images": [p.name for p in paths], "torch_threads": torch.get_num_threads(),
            "analysis_precision": policy.resolve_precision(None, "cpu", analysis=True, int8=weights.load().has_int8),
            "repeat": args.repeat, "cnnz_repeat": args.cnnz_repeat, "skipped": skipped,
            "codecs": summary, "cnnz_over_peer": ratios}


def part_stages(paths: list[Path], args: argparse.Namespace) -> dict:
    cfg = {"paths": [str(p) for p in paths[: args.stage_images]], "quality": args.quality}
    variants = {"default": {}, "OPENBLAS_NUM_THREADS=1": {"OPENBLAS_NUM_THREADS": "1"},
                "CNNZ_THREADS=1": {"CNNZ_THREADS": "1"},
                "CNNZ_THREADS=1 OPENBLAS_NUM_THREADS=1": {"CNNZ_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}}
    out = {}
    for label, env in variants.items():
        res = run_worker("stages", cfg, env)
        summary = {}
        for op, rows in res["rows"].items():
            keys = ["total", "transform", "hyper", "ans_encode" if op == "encode" else "ans_decode"]
            med = {k: 1e3 * median(r[k] for r in rows) for k in keys}
            other = [r["total"] - sum(r[k] for k in keys[1:]) for r in rows]
            med["other"] = 1e3 * median(other)
            summary[op] = med
        out[label] = {"ms_median": summary, "torch_threads": res["torch_threads"], "per_image_s": res["rows"]}
        print(f"  stages ({label}) done", file=sys.stderr)
    return {"images": [Path(p).name for p in cfg["paths"]], "variants": out,
            "legend": {"transform": "analysis.run_analysis / tiling.synthesize_tiles: g_a (encode) or g_s (decode), tiled",
                       "hyper": "hyper.hyper_band: integer hyper network, numpy float64 BLAS",
                       "ans_encode/ans_decode": "entropy.Encoder.push+finish / Decoder.pull+finish (both streams), constriction",
                       "other": "the rest: h_a (encode), padding, conversions, container, Pillow"}}


def part_batch(paths: list[Path], args: argparse.Namespace) -> dict:
    """Batch API throughput, and the exact stage of a batch on one thread vs a thread per core."""
    from pillow_cnnz import batching, codec, container, latents

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    files = codec.encode_batch(arrays[:2], ["RGB"] * 2, args.quality)  # warm-up
    codec.decode_batch(files)
    pixels = sum(a.shape[0] * a.shape[1] for a in arrays)

    files = codec.encode_batch(arrays, ["RGB"] * len(arrays), args.quality)
    parsed = [container.parse(f) for f in files]

    def exact_stage() -> None:
        batching.per_file(latents.y_hat_of, parsed)

    one_core = mock.patch.object(batching, "cores", lambda: 1)

    def exact_stage_one_thread() -> None:
        with one_core:
            exact_stage()

    out = {"images": len(arrays), "megapixels": pixels / 1e6, "batch_size": 8, "cores": batching.cores(),
           "rounds": 3}
    runs = {"exact one thread": exact_stage_one_thread, "exact thread per core": exact_stage,
            "decode_batch": lambda: codec.decode_batch(files, batch_size=8),
            "decode one at a time": lambda: [codec.decode(f) for f in files],
            "encode_batch": lambda: codec.encode_batch(arrays, ["RGB"] * len(arrays), args.quality, batch_size=8),
            "encode one at a time": lambda: [codec.encode(a, "RGB", args.quality) for a in arrays]}
    # Rounds of every call in turn, so a change in the machine's background load hits all of them.
    seconds = {name: [] for name in runs}
    for _ in range(out["rounds"]):
        for name, fn in runs.items():
            seconds[name].append(time_calls(fn, 1))
    t = {name: median(v) for name, v in seconds.items()}
    out["exact_decode_stage_ms_per_file"] = {"one_thread": 1e3 * t["exact one thread"] / len(files),
                                             "thread_per_core": 1e3 * t["exact thread per core"] / len(files)}
    for name in list(runs)[2:]:
        out[name] = {"ms_per_file": 1e3 * t[name] / len(files), "mp_per_s": pixels / t[name] / 1e6,
                     "per_round_s": seconds[name]}
    return out


def _int8_conv_rate(conv, x, macs: int, runs: int) -> float | None:  # noqa: ANN001
    """GOP/s of the same convolution in oneDNN int8 as the int8 analysis runs its blocks'
    first one (uint8 in, uint8 ReLU out; ``pillow_cnnz/int8.py``), on CPUs where it pays (VNNI)."""
    import torch

    from pillow_cnnz import precision

    if not (precision.cpu_has_vnni() and precision.int8_supported()):
        return None
    from pillow_cnnz import int8

    scale = float(x.abs().max()) / 127
    w, ws, wz, b, pad = int8.prepack(conv.weight.detach().float(), conv.bias.detach(), scale, [1, 1])
    q = torch.empty(x.shape, dtype=torch.uint8, memory_format=torch.channels_last).random_(0, 256)
    _, qconv = int8.qconv_ops()
    one = [1, 1]

    def run():  # noqa: ANN202
        return qconv(q, scale, 128, w, ws, wz, b, one, pad, one, 1, 0.05, 0, torch.uint8, "relu", [], "")

    run()
    return 2 * macs / _best_seconds(run, runs) / 1e9


def _best_seconds(fn, runs: int) -> float:  # noqa: ANN001
    """Fastest wall seconds of ``runs`` calls of ``fn()``: the rate a kernel can reach."""
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def part_floor(args: argparse.Namespace, pixels: int = 768 * 512) -> dict:
    """What the transforms' multiply-adds cost at this CPU's measured convolution rate: a
    time bar below it needs a smaller network or faster arithmetic, not faster code."""
    import torch

    from pillow_cnnz import precision, weights
    from pillow_cnnz.model import Config

    precision.import_torch()  # applies CNNZ_THREADS as the codec does
    x = torch.randn(1, 96, 128, 192).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(96, 96, 3, padding=1).to(memory_format=torch.channels_last).eval()
    macs = 96 * 96 * 9 * 128 * 192
    rates = {}
    dtypes = ["float32"] + (["bfloat16"] if precision.cpu_has_bf16() else [])
    with torch.inference_mode():
        for dtype in dtypes:
            c, xi = conv.to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
            c(xi)
            rates[dtype] = 2 * macs / _best_seconds(lambda: c(xi), max(5, args.repeat * 3)) / 1e9  # noqa: B023
        int8_rate = _int8_conv_rate(conv, x, macs, max(5, args.repeat * 3))
        if int8_rate is not None:
            rates["int8"] = int8_rate
    cfg = Config.from_dict(weights.load().meta["config"])
    per_pixel = {"g_a": cfg.analysis_macs(), "g_s": cfg.synthesis_macs()}
    at_rate = {dtype: {k: 1e3 * 2 * v * pixels / (rate * 1e9) for k, v in per_pixel.items()}
              for dtype, rate in rates.items()}
    return {"gflops": rates, "macs_per_pixel": per_pixel, "pixels": pixels, "at_rate_ms": at_rate,
            "threads": torch.get_num_threads(),
            "macs_per_pixel_for_ms": {dtype: {str(ms): ms * 1e-3 * rate * 1e9 / 2 / pixels for ms in (50, 100, 250)}
                                      for dtype, rate in rates.items()}}


COLD_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
import pillow_cnnz
from PIL import Image
t1 = time.perf_counter()
im = Image.open(sys.argv[1])
t2 = time.perf_counter()
from pillow_cnnz import entropy, hyper, precision, tiling, weights
seconds = {}
def timed(obj, name, label):
    fn = getattr(obj, name)
    seconds[label] = 0.0
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            seconds[label] += time.perf_counter() - s
    setattr(obj, name, wrapper)
timed(precision, "import_torch", "first torch use (import torch)")
timed(weights, "_read", "weights read+verify")
timed(weights.Weights, "net", "network build (torch)")
timed(weights.Weights, "numpy_synthesis", "network build (numpy)")
timed(entropy, "decode", "ans decode")
timed(hyper, "hyper_band", "hyper")
timed(tiling, "synthesize_tiles", "synthesis (tiled)")
im.load()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "load_s": t3 - t2, "in_process_s": t3 - t0,
                  "stages_s": seconds}))
"""


def part_cold(cnnz_path: Path, args: argparse.Namespace, tmp: Path, precision: str | None = None) -> dict:
    """Median cold start; ``precision`` sets CNNZ_PRECISION (bfloat16: what a decode-only
    process pays for importing torch to get the faster synthesis)."""
    env = bytecode_env(tmp / "pycache")
    if precision:
        env["CNNZ_PRECISION"] = precision
    run_python(COLD_CODE, env=env, args=[str(cnnz_path)])  # fills the bytecode cache; not counted
    runs = []
    for _ in range(args.cold_runs):
        wall, res = run_python(COLD_CODE, env=env, args=[str(cnnz_path)])
        runs.append({"wall_s": wall, **last_json(res.stdout)})
    keys = ["wall_s", "import_s", "open_s", "load_s", "in_process_s"]
    med = {k: median(r[k] for r in runs) for k in keys}
    med["stages_s"] = {k: median(r["stages_s"][k] for r in runs) for k in runs[0]["stages_s"]}
    return {"file": cnnz_path.name, "runs": runs, "median": med,
            "note": "page cache and bytecode cache warm (one untimed run first)"}


IMPORT_CODE_CNNZ = r"""
import json, sys, time
t0 = time.perf_counter()
import pillow_cnnz
from PIL import Image
size = Image.open(sys.argv[1]).size
print(json.dumps({"s": time.perf_counter() - t0, "size": size}))
"""
IMPORT_CODE_PNG = r"""
import json, sys, time
t0 = time.perf_counter()
from PIL import Image
size = Image.open(sys.argv[1]).size
print(json.dumps({"s": time.perf_counter() - t0, "size": size}))
"""
IMPORTTIME_CODE = "from PIL import Image; import pillow_cnnz; import sys; Image.open(sys.argv[1]).size"


def parse_importtime(stderr: str) -> dict:
    """Imports caused by ``import pillow_cnnz`` (after PIL.Image) and by opening the file."""
    entries = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S.*)$", line)
        if m:
            entries.append({"self_us": int(m[1]), "cum_us": int(m[2]), "level": (len(m[3]) - 1) // 2,
                            "name": m[4].strip()})
    top = next(i for i, e in enumerate(entries) if e["name"] == "pillow_cnnz" and e["level"] == 0)
    start = top
    while start > 0 and entries[start - 1]["level"] > 0:
        start -= 1
    subtree = entries[start:top]
    after = entries[top + 1 :]
    return {
        "pillow_cnnz_cumulative_ms": entries[top]["cum_us"] / 1e3,
        "direct_children_by_cumulative_ms": sorted(
            [(e["name"], e["cum_us"] / 1e3) for e in subtree if e["level"] == 1], key=lambda x: -x[1])[:15],
        "top_self_ms": sorted([(e["name"], e["self_us"] / 1e3) for e in subtree], key=lambda x: -x[1])[:15],
        "modules_imported": len(subtree) + 1,
        "after_import_during_open_ms": sorted(
            [(e["name"], e["cum_us"] / 1e3) for e in after if e["level"] == 0], key=lambda x: -x[1])[:10],
    }


def part_import(cnnz_path: Path, png_path: Path, args: argparse.Namespace, tmp: Path) -> dict:
    env = bytecode_env(tmp / "pycache")
    cases = (("cnnz", IMPORT_CODE_CNNZ, cnnz_path), ("png", IMPORT_CODE_PNG, png_path))
    for _, code, path in cases:  # fill the bytecode cache; not counted
        run_python(code, env=env, args=[str(path)])
    rows = {"cnnz": [], "png": []}
    for _ in range(args.import_runs):  # interleaved, so load changes hit both alike
        for key, code, path in cases:
            wall, res = run_python(code, env=env, args=[str(path)])
            rows[key].append({"wall_s": wall, "in_process_s": last_json(res.stdout)["s"]})
    med = {k: {m: 1e3 * median(r[m] for r in v) for m in ("wall_s", "in_process_s")} for k, v in rows.items()}
    _, res = run_python(IMPORTTIME_CODE, env=env, flags=["-X", "importtime"], args=[str(cnnz_path)])
    return {
        "runs": args.import_runs,
        "median_ms": med,
        "difference_ms": {m: med["cnnz"][m] - med["png"][m] for m in ("wall_s", "in_process_s")},
        "importtime": parse_importtime(res.stderr),
        "note": "bytecode cached (PYTHONPYCACHEPREFIX in a temporary folder), as for an installed package",
    }


def part_scaling(base: Image.Image, args: argparse.Namespace, tmp: Path) -> dict:
    sizes = [float(s) for s in args.sizes.split(",") if s]
    rows = []
    for mp in sizes:
        im = scaled_image(base, mp)
        w, h = im.size
        mpix = w * h / 1e6
        row = {"target_mp": mp, "width": w, "height": h, "mp": mpix}
        if args.skip_rss:
            reps = 3 if mpix < 1 else 1
            enc, dec = [], []
            for _ in range(reps):
                data, t = encode(im, "CNNZ", {"quality": args.quality})
                enc.append(t)
                dec.append(decode(data)[1])
            row.update(encode_s=median(enc), decode_s=median(dec), bytes=len(data), where="in process")
        else:
            npy, out = tmp / f"scale_{mp:g}.npy", tmp / f"scale_{mp:g}.cnnz"
            np.save(npy, np.asarray(im))
            e = run_worker("scale", {"op": "encode", "input": str(npy), "output": str(out), "quality": args.quality})
            npy.unlink()
            d = run_worker("scale", {"op": "decode", "input": str(out), "quality": args.quality})
            out.unlink()
            row.update(encode_s=e["seconds"], decode_s=d["seconds"], bytes=e["bytes"],
                       where="fresh process per size and operation, after a 64x64 warm-up",
                       encode_rss=e, decode_rss=d)
        row["encode_ms_per_mp"] = 1e3 * row["encode_s"] / mpix
        row["decode_ms_per_mp"] = 1e3 * row["decode_s"] / mpix
        rows.append(row)
        print(f"  scaling: {w}x{h} encode {row['encode_s']:.1f} s, decode {row['decode_s']:.1f} s", file=sys.stderr)
    return {"base_image": getattr(base, "filename", None) or "kodak", "resample": "LANCZOS", "rows": rows}


def part_decode_only(base: Image.Image, args: argparse.Namespace, tmp: Path) -> dict:
    """A decode-only process per size: ``auto`` against numpy float32 (module docstring)."""
    rows = []
    for mp in [float(v) for v in args.decode_only_sizes.split(",") if v]:
        im = scaled_image(base, mp)
        out = tmp / f"decode_only_{mp:g}.cnnz"
        out.write_bytes(encode(im, "CNNZ", {"quality": args.quality})[0])
        row = {"target_mp": mp, "width": im.width, "height": im.height, "mp": im.width * im.height / 1e6}
        for label, precision in (("auto", None), ("float32", "float32")):
            env = {k: v for k, v in os.environ.items() if k != "CNNZ_PRECISION"}
            if precision:
                env["CNNZ_PRECISION"] = precision
            row[label] = run_worker("scale", {"op": "decode", "input": str(out), "quality": args.quality,
                                              "warm": False}, env)
        out.unlink()
        rows.append(row)
        print(f"  decode-only: {im.width}x{im.height} auto {row['auto']['seconds']:.1f} s, "
              f"float32 {row['float32']['seconds']:.1f} s", file=sys.stderr)
    from pillow_cnnz import synthesis

    return {"torch_from_pixels": synthesis.TORCH_FROM_PIXELS, "rows": rows}


def part_synthesis(base: Image.Image, args: argparse.Namespace) -> dict:
    """numpy float32 against torch's synthesis on the same latents (module docstring)."""
    import torch

    from pillow_cnnz import container, latents, precision, synthesis, tiling, weights

    rows = []
    for k, mp in enumerate([base.width * base.height / 1e6] + [float(v) for v in args.synthesis_sizes.split(",") if v]):
        im = scaled_image(base, mp)
        header, payloads = container.parse(encode(im, "CNNZ", {"quality": args.quality})[0])
        y = latents.y_hat_of((header, payloads))[None]
        model = weights.load(header.model_id)
        backends = {"numpy float32": synthesis.numpy_synthesis(model),
                    "torch float32": synthesis.torch_synthesis(model.net("cpu"), "cpu", "float32")}
        auto = precision.resolve_precision(None, "cpu", int8=model.has_int8)
        if auto != "float32":
            body = model.int8_synthesis() if auto == "int8" else None
            backends[f"torch {auto} (auto)"] = synthesis.torch_synthesis(model.net("cpu"), "cpu", auto, body)
        times: dict[str, list[float]] = {name: [] for name in backends}
        for i in range(args.synthesis_runs + (k == 0)):  # interleaved: a background load hits all alike
            for name, run in backends.items():
                t0 = time.perf_counter()
                with torch.inference_mode():
                    tiling.synthesize_tiles(run, y, header.height, header.width)
                if i or k:  # the first image's first round warms everything up
                    times[name].append(time.perf_counter() - t0)
        row = {"width": im.width, "height": im.height, "mp": im.width * im.height / 1e6,
               "median_s": {name: median(t) for name, t in times.items()}, "times_s": times}
        rows.append(row)
        print(f"  synthesis: {im.width}x{im.height} " + ", ".join(f"{n} {v:.2f} s" for n, v in row["median_s"].items()),
              file=sys.stderr)
    return {"runs": args.synthesis_runs, "threads": torch.get_num_threads(), "rows": rows}


def part_tiling(base: Image.Image, args: argparse.Namespace) -> dict:
    from pillow_cnnz import tiling, weights

    from benchmarks._common import capture_entropy_calls

    im = scaled_image(base, args.tiling_mp)
    with capture_entropy_calls() as tiled_calls:
        data, t_enc_tiled = encode(im, "CNNZ", {"quality": args.quality})
    rows, cols = -(-im.height // 16), -(-im.width // 16)
    one = max(rows, cols) + 1
    with patched(tiling, "TILE", one), capture_entropy_calls() as whole_calls:
        data_whole, t_enc_whole = encode(im, "CNNZ", {"quality": args.quality})
    out_tiled, t_tiled = decode(data)
    with patched(tiling, "TILE", one):
        out_whole, t_whole = decode(data)
    a = np.asarray(out_tiled).astype(np.int16)
    b = np.asarray(out_whole).astype(np.int16)
    diff = np.abs(a - b)
    model = weights.load()

    def stream_values(calls: list[dict], tables) -> np.ndarray:  # noqa: ANN001
        return next(c["values"] for c in calls if c["tables"] is tables)

    enc_cmp = {}
    for stream, tables in (("z", model.z_tables), ("y", model.y_tables)):
        va, vb = stream_values(tiled_calls, tables), stream_values(whole_calls, tables)
        enc_cmp[stream] = {"symbols": int(va.size), "differing": int(np.count_nonzero(va != vb)),
                           "max_abs_diff": int(np.abs(va - vb).max())}
    return {
        "width": im.width, "height": im.height, "latent_grid": [rows, cols],
        "default_tile": tiling.TILE, "one_tile": one,
        "decode": {"max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()),
                   "fraction_differing": float(np.count_nonzero(diff) / diff.size),
                   "psnr_between_db": float(10 * np.log10(255**2 / max(np.mean(diff.astype(np.float64) ** 2), 1e-12))),
                   "seconds_tiled": t_tiled, "seconds_one_tile": t_whole},
        "encode": {"latents": enc_cmp, "bytes_tiled": len(data), "bytes_one_tile": len(data_whole),
                   "seconds_tiled": t_enc_tiled, "seconds_one_tile": t_enc_whole},
    }


# --------------------------------------------------------------------------- report


def ratio(x: float) -> str:
    return f"{x:.2g}×" if x < 10 else f"{x:.0f}×"


def report(res: dict) -> str:
    out = ["## CNNZ speed", ""]
    env = res["environment"]
    out.append(f"CPU: {env.get('cpu_model')} ({env['cpu_count']} cores), load average at start "
               f"{env['loadavg_1_5_15'][0]:.1f}; torch threads {res.get('codecs', {}).get('torch_threads', '?')}, "
               f"CNNZ_THREADS={env['CNNZ_THREADS']}, OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}, "
               f"CNNZ_PRECISION={env.get('CNNZ_PRECISION')}; a decode-only process here decodes in "
               f"{env.get('cpu_decode_precision', '?')}.")
    if "codecs" in res:
        c = res["codecs"]
        out += ["", f"### Encode / decode, median over {len(c['images'])} Kodak image(s) "
                f"(CNNZ {c['cnnz_repeat']}×, peers {c['repeat']}× per image; CNNZ analysis in "
                f"{c.get('analysis_precision', 'float32')})", ""]
        rows = []
        for name, s in c["codecs"].items():
            r = c["cnnz_over_peer"].get(name)
            label = f"{name} (decode {s['decode_precision']})" if s.get("decode_precision") else name
            rows.append([label, f"{s['bpp_mean']:.3f}", f"{s['encode_ms_median']:.1f}", f"{s['decode_ms_median']:.1f}",
                         f"{s['encode_mp_per_s']:.2f}", f"{s['decode_mp_per_s']:.2f}",
                         ratio(r["encode"]) if r else "–", ratio(r["decode"]) if r else "–"])
        out.append(md_table(["codec", "bpp", "encode ms", "decode ms", "enc MP/s", "dec MP/s",
                             "CNNZ enc time / this", "CNNZ dec time / this"], rows))
    if "stages" in res:
        s = res["stages"]
        out += ["", f"### Where CNNZ's time goes (median ms over {len(s['images'])} image(s), fresh process)", ""]
        rows = []
        for label, v in s["variants"].items():
            for op in ("encode", "decode"):
                m = v["ms_median"][op]
                ans = m.get("ans_encode", m.get("ans_decode"))
                rows.append([label, op, f"{m['total']:.0f}", f"{m['transform']:.0f}", f"{m['hyper']:.0f}",
                             f"{ans:.0f}", f"{m['other']:.0f}"])
        out.append(md_table(["environment", "op", "total", "g_a / g_s (torch)", "integer hyper (numpy)", "ANS",
                             "other (h_a, glue)"], rows))
        out.append("")
        out.append("torch threads per variant: " + ", ".join(f"{k}: {v['torch_threads']}" for k, v in s["variants"].items()))
    if "batch" in res:
        b = res["batch"]
        e = b["exact_decode_stage_ms_per_file"]
        out += ["", f"### Batch API ({b['images']} images, {b['megapixels']:.1f} MP, batch {b['batch_size']}, "
                f"{b['cores']} cores; medians of {b['rounds']} rounds, each running every call in turn)", ""]
        rows = [[name, f"{b[name]['ms_per_file']:.0f}", f"{b[name]['mp_per_s']:.2f}"]
                for name in ("decode_batch", "decode one at a time", "encode_batch", "encode one at a time")]
        out.append(md_table(["call", "ms per file", "MP/s"], rows))
        out += ["", f"Exact per-file stage of a batch decode (entropy decoding, integer hyper and context networks): "
                f"{e['one_thread']:.1f} ms a file on one thread, {e['thread_per_core']:.1f} ms on a thread per core "
                f"({e['one_thread'] / e['thread_per_core']:.2f}×)."]
    if "floor" in res:
        f = res["floor"]
        out += ["", f"### Arithmetic floor of the transforms ({f['pixels'] / 1e6:.2f} MP, {f['threads']} torch threads)", ""]
        rows = [[dtype, f"{rate:.0f}", f"{f['at_rate_ms'][dtype]['g_a']:.0f}", f"{f['at_rate_ms'][dtype]['g_s']:.0f}",
                 " / ".join(f"{v / 1e3:.1f}k" for v in f["macs_per_pixel_for_ms"][dtype].values())]
                for dtype, rate in f["gflops"].items()]
        out.append(md_table(["dtype", "3x3 conv GFLOP/s (best; int8: GOP/s)", f"g_a at that rate, ms ({f['macs_per_pixel']['g_a'] / 1e3:.1f}k MAC/px)",
                             f"g_s at that rate, ms ({f['macs_per_pixel']['g_s'] / 1e3:.1f}k MAC/px)",
                             "MAC/px that fit 50 / 100 / 250 ms"], rows))
    if "cold" in res:
        m = res["cold"]["median"]
        out += ["", f"### Cold start: new process, `import pillow_cnnz`, `Image.open(x.cnnz).load()` "
                f"(median of {len(res['cold']['runs'])})", ""]
        runs = [m] + ([res["cold_bf16"]["median"]] if "cold_bf16" in res else [])
        steps = [("process wall (spawn to exit)", "wall_s", ".0f"),
                 ("in process: import pillow_cnnz + PIL", "import_s", ".0f"),
                 ("in process: Image.open", "open_s", ".1f"),
                 ("in process: load() (first decode)", "load_s", ".0f")]
        rows = [[label, *(f"{1e3 * r[key]:{spec}}" for r in runs)] for label, key, spec in steps]
        rows += [[f"  of which {k}", *(f"{1e3 * r['stages_s'][k]:.0f}" for r in runs)] for k in m["stages_s"]]
        heads = ["step", "ms (auto: numpy float32)"] + (["ms (CNNZ_PRECISION=bfloat16)"] if len(runs) > 1 else [])
        out.append(md_table(heads, rows))
    if "import" in res:
        i = res["import"]
        m, d = i["median_ms"], i["difference_ms"]
        out += ["", f"### Import cost (median of {i['runs']} fresh processes each)", ""]
        out.append(md_table(["", "process wall ms", "in-process ms"], [
            ["import pillow_cnnz; Image.open(x.cnnz).size", f"{m['cnnz']['wall_s']:.0f}", f"{m['cnnz']['in_process_s']:.1f}"],
            ["Image.open(x.png).size (no pillow_cnnz)", f"{m['png']['wall_s']:.0f}", f"{m['png']['in_process_s']:.1f}"],
            ["difference", f"{d['wall_s']:+.0f}", f"{d['in_process_s']:+.1f}"]]))
        it = i["importtime"]
        out += ["", f"`python -X importtime`: pillow_cnnz (after PIL.Image) takes {it['pillow_cnnz_cumulative_ms']:.1f} ms "
                f"cumulative, {it['modules_imported']} modules. Heaviest imports it causes (cumulative):", ""]
        out.append(md_table(["module (direct child of pillow_cnnz)", "ms"],
                            [[n, f"{t:.1f}"] for n, t in it["direct_children_by_cumulative_ms"][:8]]))
        out += ["", "Largest self times inside it: " + ", ".join(f"{n} {t:.1f} ms" for n, t in it["top_self_ms"][:8])]
        if it["after_import_during_open_ms"]:
            out.append("Imported later, by `Image.open`: " + ", ".join(
                f"{n} {t:.1f} ms" for n, t in it["after_import_during_open_ms"][:6]))
    if "scaling" in res:
        rows = []
        for r in res["scaling"]["rows"]:
            er, dr = r.get("encode_rss"), r.get("decode_rss")
            rows.append([f"{r['width']}×{r['height']}", f"{r['mp']:.2f}", f"{r['encode_s']:.2f}", f"{r['decode_s']:.2f}",
                         f"{r['encode_ms_per_mp']:.0f}", f"{r['decode_ms_per_mp']:.0f}",
                         f"{er['peak_rss_mib']:.0f} ({er['peak_rss_mib'] - er['rss_before_mib']:+.0f})" if er else "–",
                         f"{dr['peak_rss_mib']:.0f} ({dr['peak_rss_mib'] - dr['rss_before_mib']:+.0f})" if dr else "–"])
        where = res["scaling"]["rows"][0]["where"] if res["scaling"]["rows"] else ""
        out += ["", f"### Size scaling ({where})", ""]
        out.append(md_table(["size", "MP", "encode s", "decode s", "encode ms/MP", "decode ms/MP",
                             "encode peak RSS MiB (Δ over before)", "decode peak RSS MiB (Δ)"], rows))
    if "decodeonly" in res:
        d = res["decodeonly"]
        rows = [[f"{r['width']}×{r['height']}", f"{r['mp']:.2f}",
                 f"{r['auto']['seconds']:.2f}", "yes" if r["auto"]["torch_imported"] else "no",
                 f"{r['auto']['peak_rss_mib']:.0f}", f"{r['float32']['seconds']:.2f}", f"{r['float32']['peak_rss_mib']:.0f}",
                 f"{r['float32']['seconds'] / r['auto']['seconds']:.2f}×"] for r in d["rows"]]
        out += ["", f"### A decode-only process (no warm-up; auto imports torch from {d['torch_from_pixels'] / 1e6:g} MP)", ""]
        out.append(md_table(["size", "MP", "auto s", "torch imported", "auto peak RSS MiB", "float32 (numpy) s",
                             "float32 peak RSS MiB", "numpy / auto"], rows))
    if "synthesis" in res:
        sy = res["synthesis"]
        names = list(sy["rows"][0]["median_s"]) if sy["rows"] else []
        rows = [[f"{r['width']}×{r['height']}", f"{r['mp']:.2f}"] + [f"{r['median_s'][n]:.2f}" for n in names]
                + [f"{r['median_s']['numpy float32'] / r['median_s']['torch float32']:.2f}×"] for r in sy["rows"]]
        out += ["", f"### The synthesis alone, same latents (median of {sy['runs']}, s)", ""]
        out.append(md_table(["size", "MP"] + names + ["numpy / torch float32"], rows))
    if "tiling" in res:
        t = res["tiling"]
        d, e = t["decode"], t["encode"]
        out += ["", f"### Tiling: {t['width']}×{t['height']}, latent grid {t['latent_grid'][0]}×{t['latent_grid'][1]}, "
                f"TILE {t['default_tile']} vs one tile ({t['one_tile']})", ""]
        out.append(md_table(["check", "result"], [
            ["decode: max abs pixel diff", d["max_abs_diff"]],
            ["decode: mean abs pixel diff", f"{d['mean_abs_diff']:.5f}"],
            ["decode: fraction of values differing", f"{d['fraction_differing']:.5f}"],
            ["decode: PSNR between the two (dB)", f"{d['psnr_between_db']:.1f}"],
            ["decode time tiled / one tile (s)", f"{d['seconds_tiled']:.2f} / {d['seconds_one_tile']:.2f}"],
            ["encode: y symbols differing", f"{e['latents']['y']['differing']} of {e['latents']['y']['symbols']} "
                                            f"(max |Δ| {e['latents']['y']['max_abs_diff']})"],
            ["encode: z symbols differing", f"{e['latents']['z']['differing']} of {e['latents']['z']['symbols']}"],
            ["encode bytes tiled / one tile", f"{e['bytes_tiled']} / {e['bytes_one_tile']}"],
            ["encode time tiled / one tile (s)", f"{e['seconds_tiled']:.2f} / {e['seconds_one_tile']:.2f}"]]))
    if "scaled" in res:
        out += ["", *("#" + line if line.startswith("## ") else line for line in
                      scaled.time_lines(res["scaled"]["time"]) + scaled.thumbnail_lines(res["scaled"]["thumbnail"]))]
    out += ["", "Notes:"]
    out += [f"- {n}" for n in env["notes"]]
    out.append(f"- load average {env['loadavg_1_5_15'][0]:.1f} at the start, {env['loadavg_1_5_15_end'][0]:.1f} at the end; "
               f"run took {env['elapsed_s'] / 60:.1f} min")
    out.append(f"- {weights_note()}")
    out.append("- WebP 'default' = Pillow's defaults (quality 80, method 4); AVIF uses Pillow's default max_threads; "
               "JPEG/WebP are single-threaded")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(WORKERS[argv[1]](json.loads(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_KODAK, help="folder of images (default: Kodak)")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--quality", type=float, default=4.0, help="CNNZ quality (default 4)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--sizes", default="0.4,3,12,50", help="megapixels for the scaling part (default 0.4,3,12,50)")
    parser.add_argument("--skip-rss", action="store_true",
                        help="time the sizes in this process: no fresh process per size, no peak RSS")
    parser.add_argument("--threads", type=int, help="set CNNZ_THREADS for this run and its subprocesses")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per image for the peers (default 3)")
    parser.add_argument("--method", type=int, default=6,
                        help="also time CNNZ encodes at this method (encode effort; 0: skip, default 6)")
    parser.add_argument("--cnnz-repeat", type=int, default=1, help="timed runs per image for CNNZ (default 1)")
    parser.add_argument("--stage-images", type=int, default=3, help="images for the stage split (default 3)")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--import-runs", type=int, default=10)
    parser.add_argument("--tiling-mp", type=float, default=4.0)
    parser.add_argument("--decode-only-sizes", default="0.4,3,12",
                        help="megapixels for the decodeonly part (default 0.4,3,12)")
    parser.add_argument("--synthesis-sizes", default="12", help="megapixels beside Kodak for the synthesis part (default 12)")
    parser.add_argument("--synthesis-runs", type=int, default=3, help="timed runs per backend and size (default 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "speed.json")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if args.threads:
        os.environ["CNNZ_THREADS"] = str(args.threads)  # before the codec's first torch use

    paths = image_paths(args.data, args.limit)
    res: dict = {"benchmark": "speed", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "environment": environment(), "model": model_info()}
    t_start = time.perf_counter()
    base = Image.open(paths[0]).convert("RGB")
    base.filename = paths[0].name
    with tempfile.TemporaryDirectory(prefix="cnnz-speed-") as tmpdir:
        tmp = Path(tmpdir)
        cnnz_path = tmp / "kodak0.cnnz"
        if "codecs" in parts:
            print("codecs ...", file=sys.stderr)
            res["codecs"] = part_codecs(paths, args, tmp)
        if not cnnz_path.exists():
            cnnz_path.write_bytes(encode(base, "CNNZ", {"quality": args.quality})[0])
        if "stages" in parts:
            print("stages ...", file=sys.stderr)
            res["stages"] = part_stages(paths, args)
        if "batch" in parts:
            print("batch ...", file=sys.stderr)
            res["batch"] = part_batch(paths, args)
        if "floor" in parts:
            print("floor ...", file=sys.stderr)
            res["floor"] = part_floor(args)
        if "cold" in parts:
            print("cold start ...", file=sys.stderr)
            res["cold"] = part_cold(cnnz_path, args, tmp)
            from pillow_cnnz import precision

            if precision.cpu_has_bf16():
                res["cold_bf16"] = part_cold(cnnz_path, args, tmp, "bfloat16")
        if "import" in parts:
            print("import cost ...", file=sys.stderr)
            res["import"] = part_import(cnnz_path, paths[0], args, tmp)
        if "scaling" in parts:
            print("scaling ...", file=sys.stderr)
            res["scaling"] = part_scaling(base, args, tmp)
        if "decodeonly" in parts:
            print("decode-only ...", file=sys.stderr)
            res["decodeonly"] = part_decode_only(base, args, tmp)
        if "synthesis" in parts:
            print("synthesis ...", file=sys.stderr)
            res["synthesis"] = part_synthesis(base, args)
        if "tiling" in parts:
            print("tiling ...", file=sys.stderr)
            res["tiling"] = part_tiling(base, args)
        if "scaled" in parts:
            print("scaled ...", file=sys.stderr)
            res["scaled"] = {"time": scaled.part_time(paths[:2], 2048, args.repeat, args.quality),
                             "thumbnail": scaled.part_thumbnail(paths[0], 24.0, args.repeat, args.quality, tmp)}
    finish_environment(res["environment"])
    res["environment"]["elapsed_s"] = time.perf_counter() - t_start
    text = report(res)
    print(text)
    write_json(args.out, res)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
