"""``int8``: measure the activation ranges of the int8 transforms (``pillow_cnnz/int8.py``) on
training images and register them with the default weights. Run it after every ``export``
(an export writes a new manifest entry, without ranges, and a new model needs new ones).

The analysis' ranges are measured on the images themselves; the synthesis' on what it decodes
from them: each image is encoded (float32 analysis, so the result does not depend on an older
ranges file) at a quality that cycles through the range, and its ŷ run through ``g_s``."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .. import codec, container, int8, weights
from .data import image_paths, load_rgb

# Synthesis levels (coarse to fine) whose blocks run int8 by default. Measured on Kodak at quality 8
# (benchmarks/int8_synthesis.py): coarsest -0.001 dB, middle -0.014, finest -0.002.
SYNTHESIS_LEVELS = "0,2"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/data/train", help="training images (never the benchmark's)")
    p.add_argument("--images", type=int, default=48, help="how many, a seeded pick, each whole")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthesis-levels", default=SYNTHESIS_LEVELS,
                   help="synthesis levels whose residual blocks run int8, 0 = coarsest, comma-separated ('' for none)")
    p.add_argument("--out", default="weights", help="folder of the weights and manifest.json")
    p.set_defaults(func=run)


def _levels(text: str, g_s: torch.nn.Sequential) -> list[int]:
    """Block indexes of the synthesis levels ``text`` names."""
    levels = int8.synthesis_levels(g_s)
    try:
        picked = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        picked = [-1]
    if any(not 0 <= v < len(levels) for v in picked):
        msg = f"--synthesis-levels takes levels 0 to {len(levels) - 1}, got {text!r}"
        raise SystemExit(msg)
    return [i for v in picked for i in levels[v]]


def _decoded_latents(model: weights.Model, rgb: np.ndarray, quality: float) -> torch.Tensor:
    """ŷ (1, M, h, w) of ``rgb`` as a decoder gets it, the synthesis' input."""
    ((z, y),) = codec.analyse_batch([rgb], [quality], "cpu", precision="float32")
    latz, laty = codec.code_latents(model, z, y)
    data = container.serialize(rgb.shape[1], rgb.shape[0], "RGB", quality, model.model_id, {"LATZ": latz, "LATY": laty})
    header, sections = container.parse(data)
    y_hat = codec.decode_y_hat(header, sections["LATZ"], sections["LATY"])
    return torch.from_numpy(y_hat[None]).contiguous(memory_format=torch.channels_last)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    model_id = manifest["default"]
    entry = manifest["models"][model_id]
    model = weights.load(bytes.fromhex(model_id))
    if codec.load().model_id != model.model_id:
        msg = f"the encoder's default model is {codec.load().model_id.hex()}, the manifest's in {out} {model_id}"
        raise SystemExit(msg)
    net = model.net("cpu")
    blocks = _levels(args.synthesis_levels, net.g_s)  # before reading any image: a bad argument fails at once
    paths = image_paths(args.data)
    picked = sorted(np.random.default_rng(args.seed).choice(len(paths), min(args.images, len(paths)), replace=False))
    images = (torch.from_numpy(load_rgb(paths[i]).copy()).permute(2, 0, 1)[None].float().div(255)
              .contiguous(memory_format=torch.channels_last) for i in picked)
    analysis = int8.measure_ranges(net.g_a, images, int8.residual_blocks(net.g_a), args.seed)
    latents = (_decoded_latents(model, load_rgb(paths[i]), 1.0 + k % 8) for k, i in enumerate(picked))
    synthesis = int8.measure_ranges(net.g_s, latents, blocks, args.seed) if blocks else {}
    source = {"data": args.data, "images": len(picked), "seed": args.seed, "synthesis_levels": args.synthesis_levels,
              "command": "python -m pillow_cnnz.train int8"}
    name = Path(entry["file"]).stem + ".int8.json"
    data = (json.dumps(int8.ranges_document(model_id, analysis, synthesis, source)) + "\n").encode()
    (out / name).write_bytes(data)
    entry["int8"] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for transform, ranges in (("analysis", analysis), ("synthesis", synthesis)):
        for key, r in ranges.items():
            print(f"{transform} block {key}: |input| {max(r['input']):.4f} max of {len(r['input'])} channels, "
                  f"ReLU output {max(r['hidden']):.4f}")
    print(f"wrote {out / name} and its entry in {manifest_path}")
    return 0
