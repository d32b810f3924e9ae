"""Export a training checkpoint as the shipped weights file (and its model card, ``card.py``).

The weights file is a plain ``.npz`` (loaded with ``allow_pickle=False``: no code runs):

- ``net/<name>``: tensors of the analysis, synthesis and hyper-analysis transforms and the
  per-quality gains: float32, but float16 for the two that only the encoder runs
  (``model.ENCODER_TRANSFORMS``), which keeps the file under 20 MB. A file decodes the same whatever
  encoder wrote it, and the rounding is negligible: with the 229k weights on a Kodak image
  it changed 0.0006 % / 0.005 % / 0.07 % of the latent symbols at quality 1 / 4 / 8, each
  by one step (the analysis itself still runs in float32);
- ``hyper/<i>/weight|bias``: the integer hyper-synthesis (see ``pillow_cnnz/hyper.py``);
- ``z/pmf|lo|length`` and ``y/pmf|lo|length``: the entropy tables (``entropy.Tables``);
- ``meta``: JSON with the architecture, fixed-point constants and training facts.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import platform
import zipfile
from pathlib import Path

import numpy as np
import torch

from pillow_cnnz import context, hyper
from pillow_cnnz.layers import SubPixelConv
from pillow_cnnz.model import ENCODER_TRANSFORMS, SCALE_MIN, CnnzNet

from . import calibrate, card
from .data import DEFAULT_DATA
from .loop import checkpoint_lambdas, load_checkpoint

WEIGHTS_FORMAT = "cnnz-weights-1"
SCALE_COUNT = 64
SCALE_OFFSET = round(math.log2(SCALE_MIN) * 2**hyper.FRAC_BITS)  # fixed-point log2 of the smallest scale
SCALE_STEP = 37  # fixed-point width of one scale bin: 64 bins reach a scale of about 70
Y_TAIL_SIGMAS = 8
Z_TAIL_MASS = 1e-6
Z_RANGE = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint (RUN/last.pt)")
    p.add_argument("--out", default="weights", help="folder of the weights file, manifest and model card")
    p.add_argument("--name", default="cnnz-v1", help="weights file stem")
    p.add_argument("--hardware", default=f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), 2 cores")
    p.add_argument("--calibrate", default=DEFAULT_DATA, metavar="FOLDER",
                   help="measure the latent tables on images of this folder ('' for ideal Gaussians)")
    p.add_argument("--calibrate-images", type=int, default=96, help="images taken, spread over the folder")
    p.add_argument("--calibrate-crop", type=int, default=512, help="centre crop of each image (pixels)")
    p.add_argument("--synthesis-only", action="store_true",
                   help="keep every array of the default weights but the synthesis, taken from the checkpoint "
                        "(a `distill` run of the same shape); the old model's files decode with the new one")
    card.add_page_arguments(p)
    p.set_defaults(func=run)


def integer_conv(conv: torch.nn.Conv2d) -> dict:
    """Fixed-point copy of a float convolution (weights < 2**11, shift <= 20)."""
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(w.shape[0])
    shift = int(min(20, math.floor(math.log2(2**11 / max(np.abs(w).max(), 1e-12)))))
    return {"kind": "conv", "shift": shift, "weight": np.round(w * 2**shift),
            "bias": np.round(b * 2.0 ** (shift + hyper.FRAC_BITS))}


def integer_layers(h_s: torch.nn.Sequential) -> list[dict]:
    """Fixed-point copy of the float hyper-synthesis."""
    layers: list[dict] = []
    for module in h_s:
        if isinstance(module, torch.nn.ReLU):
            layers.append({"kind": "relu"})
            continue
        layers.append(integer_conv(module.conv if isinstance(module, SubPixelConv) else module))
        if isinstance(module, SubPixelConv):
            layers.append({"kind": "shuffle"})
    return layers


def integer_context(net: CnnzNet) -> dict | None:
    """Fixed-point copy of the checkerboard context (``context.py``), if the network has one."""
    if net.context is None:
        return None
    return {name: integer_conv(getattr(net.context, name)) for name in context.NAMES}


def deterministic_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` whose bytes depend on the arrays only (fixed zip timestamps), so the
    same checkpoint always exports to the same file and model id. Deflated at level 9:
    the float weights shrink by about a fifth, for about 130 ms more at the first load
    (weights read+verify in ``benchmarks/speed.py``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in sorted(arrays):
            array = io.BytesIO()
            np.lib.format.write_array(array, np.asarray(arrays[key]), allow_pickle=False)  # keeps 0-d meta 0-d
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, array.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def nominal_scales() -> list[float]:
    """Each scale bin's geometric centre."""
    return [2 ** ((SCALE_OFFSET + (k + 0.5) * SCALE_STEP) / 2**hyper.FRAC_BITS) for k in range(SCALE_COUNT)]


def nominal_halves() -> list[int]:
    """Each scale bin's table half-width: ``Y_TAIL_SIGMAS`` of its nominal scale, at least 2."""
    return [max(2, math.ceil(s * Y_TAIL_SIGMAS)) for s in nominal_scales()]


def y_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One discretized Gaussian per scale bin, at the bin's geometric centre (uncalibrated)."""
    scales, half = nominal_scales(), nominal_halves()
    pmf = np.zeros((SCALE_COUNT, 2 * max(half) + 1))
    for k, (s, t) in enumerate(zip(scales, half)):
        cdf = [std_normal_cdf((n + 0.5) / s) for n in range(-t, t)]
        row = np.diff([0.0, *cdf, 1.0])
        pmf[k, : row.size] = row
    half_arr = np.array(half, np.int64)
    return pmf, -half_arr, 2 * half_arr + 1


@torch.no_grad()
def z_tables(net: CnnzNet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel pmf of the learned factorized density over its likely integers."""
    grid = torch.arange(-Z_RANGE, Z_RANGE + 1, dtype=torch.float32)
    c = net.config.Nz
    v = grid.view(1, 1, -1).expand(c, 1, -1)
    cdf = torch.sigmoid(net.density_z.logits_cdf(v + 0.5)).squeeze(1).double().numpy()  # P(z <= n + ½)
    rows, los, lengths = [], [], []
    for ch in range(c):
        lo_i = int(np.searchsorted(cdf[ch], Z_TAIL_MASS))
        hi_i = int(np.searchsorted(cdf[ch], 1 - Z_TAIL_MASS))
        lo_i, hi_i = min(lo_i, Z_RANGE - 1), max(hi_i, Z_RANGE + 1)
        lo_i, hi_i = max(lo_i, 1), min(hi_i, 2 * Z_RANGE - 1)
        inner = np.diff(cdf[ch, lo_i : hi_i])  # mass of lo+1 .. hi-1
        row = np.concatenate([[cdf[ch, lo_i]], inner, [1 - cdf[ch, hi_i - 1]]])
        rows.append(np.maximum(row, 0))
        los.append(int(grid[lo_i]))
        lengths.append(row.size)
    pmf = np.zeros((c, max(lengths)))
    for ch, row in enumerate(rows):
        pmf[ch, : row.size] = row
    return pmf, np.array(los, np.int64), np.array(lengths, np.int64)


def export(checkpoint: Path, out: Path, name: str, hardware: str, calibration: dict | None = None) -> dict:
    """Write ``out/<name>.npz`` and register it in ``out/manifest.json`` as the default.

    ``calibration`` (``{"data": folder, "images": n, "crop": px}``) measures the latent
    tables on those images (``calibrate.py``); without it they are ideal Gaussians.
    """
    net, state = load_checkpoint(checkpoint)
    net.eval()
    arrays: dict[str, np.ndarray] = {}
    for key, value in net.state_dict().items():
        # The float entropy model (h_s, density_z, context) is kept for the encoder's latent
        # refinement only; decoding uses the integer copies below.
        if key.startswith(("g_a.", "g_s.", "h_a.", "log2_", "h_s.", "density_z.", "context.")):
            dtype = np.float16 if key.startswith(ENCODER_TRANSFORMS) else np.float32
            arrays[f"net/{key}"] = value.float().numpy().astype(dtype)
    layers = integer_layers(net.h_s)
    for i, layer in enumerate(layers):
        if layer["kind"] == "conv":
            arrays[f"hyper/{i}/weight"] = layer["weight"].astype(np.int32)
            arrays[f"hyper/{i}/bias"] = layer["bias"].astype(np.int64)
    ctx = integer_context(net)
    for conv_name, layer in (ctx or {}).items():
        arrays[f"context/{conv_name}/weight"] = layer["weight"].astype(np.int32)
        arrays[f"context/{conv_name}/bias"] = layer["bias"].astype(np.int64)
    scale = {"offset": SCALE_OFFSET, "step": SCALE_STEP, "count": SCALE_COUNT}
    if calibration:
        images = calibrate.calibration_images(calibration["data"], calibration["images"], calibration["crop"])
        counts = calibrate.symbol_histograms(net, layers, scale, images, ctx)
        latent_tables = calibrate.tables_from_histograms(counts, nominal_scales(), max(nominal_halves()))
    else:
        latent_tables = y_tables()
    for prefix, (pmf, lo, length) in {"z": z_tables(net), "y": latent_tables}.items():
        arrays[f"{prefix}/pmf"], arrays[f"{prefix}/lo"], arrays[f"{prefix}/length"] = pmf, lo, length
    params = sum(p.numel() for p in net.parameters())
    decoder_params = sum(p.numel() for p in net.g_s.parameters())
    meta = {
        "format": WEIGHTS_FORMAT,
        "config": net.config.to_dict(),
        "hyper": [{"kind": l["kind"], **({"shift": l["shift"]} if l["kind"] == "conv" else {})} for l in layers],
        "frac_bits": hyper.FRAC_BITS,
        **({"context": {"channels": net.config.ctx, "shifts": {k: v["shift"] for k, v in ctx.items()}}} if ctx else {}),
        "scale": scale,
        "y_tables": dict(calibration, symbols=int(counts.sum())) if calibration else "gaussian",
        "lambdas": list(checkpoint_lambdas(state)),
        "training": {
            "step": state["step"], "seconds": round(state["seconds"]), "hardware": hardware,
            "history": state.get("history") or [{"from_step": 0, "lr": state["args"]["lr"],
                                                  "batch": state["args"]["batch"], "crop": state["args"]["crop"],
                                                  "device": state["args"]["device"]}],
            "args": {k: v for k, v in state["args"].items() if k != "func"},
            "validation": state.get("validation", []),
        } | ({"hyperfit": state["hyperfit"]} if state.get("hyperfit") else {}),
        "parameters": params, "decoder_parameters": decoder_params,
    }
    out.mkdir(parents=True, exist_ok=True)
    info = _write_weights(out, name, arrays, meta)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    models = {k: v for k, v in manifest["models"].items() if v.get("file") != info["file"]}
    # files of the replaced model (and of those it decoded) are not decodable by this new one
    _register_default(out, manifest, {k: v for k, v in models.items() if "file" in v or v.get("decoded_by") in models},
                      info)
    return info


def _write_weights(out: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Write ``out/<name>.npz`` of ``arrays`` and ``meta``; its id is its sha256's first 16 hex digits."""
    arrays["meta"] = np.array(json.dumps(meta))
    data = deterministic_npz(arrays)
    sha = hashlib.sha256(data).hexdigest()
    (out / f"{name}.npz").write_bytes(data)
    return {"model_id": sha[:16], "sha256": sha, "bytes": len(data), "meta": meta, "file": f"{name}.npz"}


def _register_default(out: Path, manifest: dict, models: dict, info: dict) -> None:
    """Write ``out/manifest.json``: ``models`` and the file ``info`` describes, as the default."""
    manifest["models"] = {**models, info["model_id"]: {"file": info["file"], "sha256": info["sha256"]}}
    manifest["default"] = info["model_id"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export_synthesis(checkpoint: Path, out: Path, name: str) -> dict:
    """Write ``out/<name>.npz``: the default weights of ``out`` with the synthesis of ``checkpoint``
    (a ``train distill`` run of the same shape), every other array bit for bit the default's. The
    new model becomes the default, and the old one's files decode with it (its manifest entry
    becomes ``{"decoded_by": new id}``, ``weights.load``): their latents and entropy model are the
    same, only the pixels the synthesis makes of them change. Refuses a checkpoint whose analysis,
    gains or entropy model differ from the default's, or whose synthesis has another shape."""
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    base_id = manifest["default"]
    base_entry = manifest["models"][base_id]
    with np.load(io.BytesIO((out / base_entry["file"]).read_bytes()), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    net, state = load_checkpoint(checkpoint)
    for key, value in net.state_dict().items():
        stored = arrays.get(f"net/{key}")
        if stored is None:
            continue
        v = value.float().numpy().astype(stored.dtype)
        if key.startswith("g_s.") and v.shape == stored.shape:
            arrays[f"net/{key}"] = v
        elif key.startswith("g_s.") or not np.array_equal(v, stored):
            msg = f"{checkpoint}: {key} is not the installed model's ({base_id}): only the synthesis may change"
            raise SystemExit(msg)
    meta = json.loads(str(arrays["meta"]))
    distilled = state.get("distill") or {}
    phase = (state.get("history") or [{}])[-1]
    meta["training"]["synthesis"] = {
        "steps": distilled.get("step"), "seconds": round(distilled.get("seconds", 0)), "of_model": base_id,
        "command": "python -m training distill " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (distilled.get("args") or {}).items()
            if k in ("res", "lr", "rate_balance", "batch", "crop", "device", "data")),
    } | {k: phase[k] for k in ("lr", "batch", "crop", "rate_balance", "device") if k in phase}
    meta["decodes"] = sorted({base_id, *meta.get("decodes", [])})
    info = _write_weights(out, name, arrays, meta)
    models = {k: ({"decoded_by": info["model_id"]} if k == base_id or v.get("decoded_by") == base_id else v)
              for k, v in manifest["models"].items()}
    _register_default(out, manifest, {k: v for k, v in models.items() if v.get("file") != info["file"]}, info)
    return info


def run(args: argparse.Namespace) -> int:
    calibration = {"data": args.calibrate, "images": args.calibrate_images, "crop": args.calibrate_crop}
    if args.synthesis_only:
        info = export_synthesis(Path(args.checkpoint), Path(args.out), args.name)
    else:
        info = export(Path(args.checkpoint), Path(args.out), args.name, args.hardware,
                      calibration if args.calibrate else None)
    card.write(Path(args.out), Path(args.results), args.rd_sets.split(","), args.phases)
    print(json.dumps({k: v for k, v in info.items() if k != "meta"}, indent=2))
    return 0
