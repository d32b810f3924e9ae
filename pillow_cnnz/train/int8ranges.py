"""``int8``: measure the activation ranges of the int8 analysis (``pillow_cnnz/int8.py``) on
training images and register them with the default weights. Run it after every ``export``
(an export writes a new manifest entry, without ranges, and a new model needs new ones)."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .. import int8, weights
from .data import image_paths, load_rgb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/data/train", help="training images (never the benchmark's)")
    p.add_argument("--images", type=int, default=48, help="how many, a seeded pick, each whole")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="weights", help="folder of the weights and manifest.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    model_id = manifest["default"]
    entry = manifest["models"][model_id]
    paths = image_paths(args.data)
    picked = sorted(np.random.default_rng(args.seed).choice(len(paths), min(args.images, len(paths)), replace=False))
    g_a = weights.load(bytes.fromhex(model_id)).net("cpu").g_a
    images = (torch.from_numpy(load_rgb(paths[i]).copy()).permute(2, 0, 1)[None].float().div(255)
              .contiguous(memory_format=torch.channels_last) for i in picked)
    ranges = int8.measure_ranges(g_a, images, args.seed)
    source = {"data": args.data, "images": len(picked), "seed": args.seed, "command": "python -m pillow_cnnz.train int8"}
    name = Path(entry["file"]).stem + ".int8.json"
    data = (json.dumps(int8.ranges_document(model_id, ranges, source), indent=2) + "\n").encode()
    (out / name).write_bytes(data)
    entry["int8"] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for key, r in ranges.items():
        print(f"block {key}: |input| {r['input']:.4f}, ReLU output {r['hidden']:.4f}")
    print(f"wrote {out / name} and its entry in {manifest_path}")
    return 0
