"""Export a training checkpoint as the shipped weights file and its model card.

The weights file is a plain ``.npz`` (loaded with ``allow_pickle=False``: no code runs):

- ``net/<name>``: float32 tensors of the analysis, synthesis and hyper-analysis
  transforms and the per-quality gains;
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
from pathlib import Path

import numpy as np
import torch

from .. import hyper
from ..layers import SubPixelConv
from ..model import LAMBDAS, SCALE_MIN, CnnzNet, Config

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
    p.add_argument("--hardware", default=platform.processor() or platform.machine())
    p.set_defaults(func=run)


def integer_layers(h_s: torch.nn.Sequential) -> list[dict]:
    """Fixed-point copy of the float hyper-synthesis (weights < 2**11, shift <= 20)."""
    layers: list[dict] = []
    for module in h_s:
        if isinstance(module, torch.nn.ReLU):
            layers.append({"kind": "relu"})
            continue
        conv = module.conv if isinstance(module, SubPixelConv) else module
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy()
        shift = int(min(20, math.floor(math.log2(2**11 / max(np.abs(w).max(), 1e-12)))))
        layers.append({
            "kind": "conv", "shift": shift,
            "weight": np.round(w * 2**shift),
            "bias": np.round(b * 2.0 ** (shift + hyper.FRAC_BITS)),
        })
        if isinstance(module, SubPixelConv):
            layers.append({"kind": "shuffle"})
    return layers


def std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def y_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One discretized Gaussian per scale bin, at the bin's geometric centre."""
    scales = [2 ** ((SCALE_OFFSET + (k + 0.5) * SCALE_STEP) / 2**hyper.FRAC_BITS) for k in range(SCALE_COUNT)]
    half = [max(2, math.ceil(s * Y_TAIL_SIGMAS)) for s in scales]
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


def export(checkpoint: Path, out: Path, name: str, hardware: str) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    net = CnnzNet(config)
    net.load_state_dict(state["model"])
    net.eval()
    arrays: dict[str, np.ndarray] = {}
    for key, value in net.state_dict().items():
        if key.startswith(("g_a.", "g_s.", "h_a.", "log2_")):
            arrays[f"net/{key}"] = value.float().numpy()
    layers = integer_layers(net.h_s)
    for i, layer in enumerate(layers):
        if layer["kind"] == "conv":
            arrays[f"hyper/{i}/weight"] = layer["weight"].astype(np.int32)
            arrays[f"hyper/{i}/bias"] = layer["bias"].astype(np.int64)
    for prefix, (pmf, lo, length) in {"z": z_tables(net), "y": y_tables()}.items():
        arrays[f"{prefix}/pmf"], arrays[f"{prefix}/lo"], arrays[f"{prefix}/length"] = pmf, lo, length
    params = sum(p.numel() for p in net.parameters())
    decoder_params = sum(p.numel() for p in net.g_s.parameters())
    meta = {
        "format": WEIGHTS_FORMAT,
        "config": config.to_dict(),
        "hyper": [{"kind": l["kind"], **({"shift": l["shift"]} if l["kind"] == "conv" else {})} for l in layers],
        "frac_bits": hyper.FRAC_BITS,
        "scale": {"offset": SCALE_OFFSET, "step": SCALE_STEP, "count": SCALE_COUNT},
        "lambdas": list(LAMBDAS),
        "training": {
            "step": state["step"], "seconds": round(state["seconds"]), "hardware": hardware,
            "args": {k: v for k, v in state["args"].items() if k != "func"},
        },
        "parameters": params, "decoder_parameters": decoder_params,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    model_id = sha[:16]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.npz").write_bytes(data)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    manifest["models"] = {k: v for k, v in manifest["models"].items() if v["file"] != f"{name}.npz"}
    manifest["models"][model_id] = {"file": f"{name}.npz", "sha256": sha}
    manifest["default"] = model_id
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return {"model_id": model_id, "sha256": sha, "bytes": len(data), "meta": meta}


def run(args: argparse.Namespace) -> int:
    info = export(Path(args.checkpoint), Path(args.out), args.name, args.hardware)
    print(json.dumps({k: v for k, v in info.items() if k != "meta"}, indent=2))
    return 0
