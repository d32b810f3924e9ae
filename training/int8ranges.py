"""``int8``: measure the activation ranges of the int8 transforms (``pillow_cnnz/int8.py``) on
training images, round the synthesis' int8 weights (``int8_calibration.py``) and register both
with the default weights. Run it after every ``export``
(an export writes a new manifest entry, without ranges, and a new model needs new ones).

The analysis' ranges are measured on the images themselves; the synthesis' on what it decodes
from them: each image is encoded (float32 analysis, so the result does not depend on an older
ranges file) at a quality that cycles through the range, and its ŷ run through ``g_s``."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pillow_cnnz import codec, container, int8, latents, weights

from . import int8_calibration
from .data import DEFAULT_DATA, image_paths, load_rgb

# Synthesis levels (coarse to fine) whose blocks run int8 by default, and those of them whose blocks
# quantize their input in two passes. Measured on Kodak at quality 8 (experiments/int8_synthesis):
# coarsest -0.0002 dB, middle -0.021 in one pass and -0.0099 in two, finest -0.0026 (-0.0011 in two,
# not worth the time of its large blocks); all together -0.0127, Kodak BD-rate -50.01 % vs JPEG.
SYNTHESIS_LEVELS = "0,1,2"
TWO_PASS_LEVELS = "1"
# Sub-pixel convolutions (0 = the first, on the latents) that run in int8, their input in two passes.
# Weights rounded by int8_calibration.gptq, at quality 4 / 8: the first -0.0033 / -0.018 dB (8 Kodak images; the
# weights on the latents are heavy-tailed), the second -0.0003 / -0.0016, the third -0.0005 / -0.0024
# (24 Kodak images, experiments/int8_synthesis).
UPSAMPLINGS = "1,2"
HESSIAN_POSITIONS = 8192  # positions of each calibration image a hessian sums over (int8_calibration.hessian)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=DEFAULT_DATA, help="training images (never the benchmark's)")
    p.add_argument("--images", type=int, default=48, help="how many, a seeded pick, each whole")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthesis-levels", default=SYNTHESIS_LEVELS,
                   help="synthesis levels whose residual blocks run int8, 0 = coarsest, comma-separated ('' for none)")
    p.add_argument("--two-pass-levels", default=None,
                   help="of those, the levels whose blocks quantize their input in two passes (~15 bits, 1.5x the "
                        f"int8 work; default: {TWO_PASS_LEVELS} where among --synthesis-levels)")
    p.add_argument("--upsamplings", default=UPSAMPLINGS,
                   help="synthesis sub-pixel convolutions that run int8 (input in two passes), 0 = the first, "
                        "comma-separated ('' for none)")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="how the synthesis' int8 weights are rounded: gptq (int8_calibration.gptq, on the calibration "
                        "images' ŷ, shipped in <name>.int8.npz) or to nearest (no such file)")
    p.add_argument("--out", default="weights", help="folder of the weights and manifest.json")
    p.set_defaults(func=run)


def _picked(text: str, count: int, option: str, noun: str = "") -> list[int]:
    """The sorted numbers of a comma-separated ``option``, each below ``count``, or SystemExit."""
    try:
        picked = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        picked = [-1]
    if any(not 0 <= v < count for v in picked):
        msg = f"{option} takes {noun}0 to {count - 1}, got {text!r}"
        raise SystemExit(msg)
    return picked


def _levels(text: str, g_s: torch.nn.Sequential, option: str = "--synthesis-levels") -> list[int]:
    """Block indexes of the synthesis levels ``text`` names."""
    levels = int8_calibration.synthesis_levels(g_s)
    return [i for v in _picked(text, len(levels), option, "levels ") for i in levels[v]]


def _upsamplings(text: str, g_s: torch.nn.Sequential) -> list[int]:
    """Indexes of the sub-pixel convolutions ``text`` names."""
    possible = int8.upsamplings(g_s)
    return [possible[v] for v in _picked(text, len(possible), "--upsamplings")]


def rounded_weights(layers: int8.Int8Layers, inputs: list[torch.Tensor], seed: int = 0) -> dict[str, dict[str, tuple]]:
    """``int8_calibration.gptq`` levels and scales of every convolution of ``layers``' int8 layers, from hessians
    of what they see of ``inputs`` (each through the float layers, ``HESSIAN_POSITIONS`` a tensor)."""
    generator = torch.Generator().manual_seed(seed)
    sums: dict[tuple[int, str], torch.Tensor] = {}
    with torch.inference_mode():
        for x in inputs:
            x = x.float().contiguous(memory_format=torch.channels_last)
            for i, layer in enumerate(layers.layers):
                if i in layers.blocks:
                    for name, seen in int8_calibration.conv_inputs(layers.blocks[i], x).items():
                        h = int8_calibration.hessian(seen, generator=generator, positions=HESSIAN_POSITIONS)
                        sums[i, name] = sums[i, name] + h if (i, name) in sums else h
                x = layer(x)
    rounded: dict[str, dict[str, tuple]] = {}
    for (i, name), h in sorted(sums.items()):
        rounded.setdefault(str(i), {})[name] = int8_calibration.gptq(layers.blocks[i].scaled_weights()[name], h)
    return rounded


def calibration_paths(data: str, images: int, seed: int) -> list[Path]:
    """The seeded pick of ``images`` training images the ranges are measured on."""
    paths = image_paths(data)
    return [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), min(images, len(paths)), replace=False))]


def decoded_latents(model: weights.Weights, rgb: np.ndarray, quality: float) -> torch.Tensor:
    """ŷ (1, M, h, w) of ``rgb`` as a decoder gets it, the synthesis' input."""
    ((z, y),) = codec.analyse_batch([rgb], [quality], "cpu", precision="float32")
    latz, laty = latents.code_latents(model, z, y)
    data = container.serialize(rgb.shape[1], rgb.shape[0], "RGB", quality, model.model_id, {"LATZ": latz, "LATY": laty})
    return torch.from_numpy(latents.y_hat_of(container.parse(data))[None]).contiguous(memory_format=torch.channels_last)


def synthesis_inputs(model: weights.Weights, rgbs: list[np.ndarray]) -> Iterator[torch.Tensor]:
    """What the synthesis' ranges are measured on: each image's ŷ at a quality cycling through the range."""
    return (decoded_latents(model, rgb, 1.0 + k % 8) for k, rgb in enumerate(rgbs))


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    model_id = manifest["default"]
    entry = manifest["models"][model_id]
    model = weights.load(bytes.fromhex(model_id))
    if weights.load().model_id != model.model_id:
        msg = f"the encoder's default model is {weights.load().model_id.hex()}, the manifest's in {out} {model_id}"
        raise SystemExit(msg)
    net = model.net("cpu")
    blocks = _levels(args.synthesis_levels, net.g_s)  # before reading any image: a bad argument fails at once
    upsampling = _upsamplings(args.upsamplings, net.g_s)
    given = TWO_PASS_LEVELS if args.two_pass_levels is None else args.two_pass_levels
    two_pass = _levels(given, net.g_s, "--two-pass-levels")
    if args.two_pass_levels is None:
        two_pass = [i for i in two_pass if i in blocks]
    elif not set(two_pass) <= set(blocks):
        msg = f"--two-pass-levels {args.two_pass_levels!r} are not all among --synthesis-levels {args.synthesis_levels!r}"
        raise SystemExit(msg)
    rgbs = [load_rgb(p) for p in calibration_paths(args.data, args.images, args.seed)]
    images = (torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)
              .contiguous(memory_format=torch.channels_last) for rgb in rgbs)
    analysis = int8_calibration.measure_ranges(net.g_a, images, int8.residual_blocks(net.g_a), args.seed)
    layers = sorted(blocks + upsampling)
    latents = list(synthesis_inputs(model, rgbs)) if layers else []
    synthesis = int8_calibration.measure_ranges(net.g_s, latents, layers, args.seed) if layers else {}
    two_pass = sorted(two_pass + upsampling)  # a sub-pixel convolution's input is the whole signal
    source = {"data": args.data, "images": len(rgbs), "seed": args.seed, "synthesis_levels": args.synthesis_levels,
              "two_pass_blocks": two_pass, "upsamplings": upsampling, "rounding": args.rounding,
              "command": "python -m training int8"}
    stem = Path(entry["file"]).stem
    name = stem + ".int8.json"
    data = (json.dumps(int8_calibration.ranges_document(model_id, analysis, synthesis, source, two_pass)) + "\n").encode()
    spec = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
    rounded = {}
    if args.rounding == "gptq" and synthesis:
        ranges = int8_calibration.with_two_pass(synthesis, two_pass)
        rounded = rounded_weights(int8.Int8Layers(net.g_s[:-1], ranges, saturate=True), latents, args.seed)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **int8_calibration.rounded_arrays(rounded))
        (out / (stem + ".int8.npz")).write_bytes(buffer.getvalue())
        spec["rounded"] = {"file": stem + ".int8.npz", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    else:  # an older run's rounded weights would ship in the wheel, named by no manifest entry
        (out / (stem + ".int8.npz")).unlink(missing_ok=True)
    (out / name).write_bytes(data)
    entry["int8"] = spec
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for transform, ranges in (("analysis", analysis), ("synthesis", synthesis)):
        for key, r in ranges.items():
            hidden = f", ReLU output {max(r['hidden']):.4f}" if "hidden" in r else ""
            print(f"{transform} layer {key}: |input| {max(r['input']):.4f} max of {len(r['input'])} channels{hidden}"
                  + (", input in two passes" if transform == "synthesis" and int(key) in two_pass else "")
                  + (", weights rounded by gptq" if transform == "synthesis" and key in rounded else ""))
    print(f"wrote {out / name}" + (f", {out / spec['rounded']['file']}" if "rounded" in spec else "")
          + f" and their entry in {manifest_path}")
    return 0
