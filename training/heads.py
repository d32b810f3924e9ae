"""``heads``: train the reduced-resolution output heads of a shipped model, everything else frozen.

A head (``layers.output_head``) reads the synthesis' features after layer ``tap`` of ``g_s`` and
outputs the image at 1/2, 1/4 or 1/8 of full size (``pillow_cnnz.heads`` runs them: ``draft()``,
``decode(scale=)``). Nothing the files or the full-size decode depend on changes: the latents,
the entropy model and ``g_s`` are the shipped model's, bit for bit, so old files gain the
reduced sizes too.

Training: crops of the training set are encoded once by the shipped model at random qualities
(ŷ kept in memory as float16), and their targets are Lanczos downscales of the crops (what
``benchmarks/scaled.py`` measures against). Each step runs the frozen synthesis up to the
deepest tap without gradients and trains every candidate head on the same batch; the loss is
the mean of log MSE over samples, so each sample's PSNR counts alike at every quality. The
validation images are decoded whole at qualities 1, 4 and 8: for each head, its PSNR against the
Lanczos downscale of the original, minus that of the Lanczos downscale of the full decode (the
bar: within 0.5 dB).

``--export 2:11@runs/other,4:7,8:3`` (scale:tap, and the run that trained it where not ``--run``)
writes the chosen heads as ``<weights>/<model file stem>.heads.npz`` and names it in the model's
manifest entry.

Example (from the repository root)::

    python -m training heads --candidates 2:9,2:11,4:5,4:9,8:1,8:3 --steps 3000 --run runs/heads
    python -m training heads --run runs/heads --export 2:11,4:7,8:3
    python -m training heads --candidates 2:9,4:5,8:3 --init runs/heads --lr 3e-4 --steps 6000 --run runs/heads-long
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pillow_cnnz import heads as runtime
from pillow_cnnz import weights as shipped
from pillow_cnnz.layers import output_head
from pillow_cnnz.model import QUALITY_MAX, QUALITY_MIN

from .data import DEFAULT_DATA, DEFAULT_VAL, CropSampler, image_paths, load_rgb
from .distill import decoder_input
from .export import deterministic_npz
from .loop import pad64

HIDDEN = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="runs/heads", help="folder for heads.pt and log.jsonl")
    p.add_argument("--candidates", default="2:5,2:7,2:9,2:11,4:3,4:5,4:7,4:9,8:1,8:3",
                   help="heads to train, as scale:tap (tap: the g_s layer whose output a head reads)")
    p.add_argument("--hidden", type=int, default=HIDDEN, help="channels of a head's hidden layer")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--val", default=DEFAULT_VAL)
    p.add_argument("--crops", type=int, default=2048, help="training crops encoded once and kept")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, metavar="RUN",
                   help="start a new run's heads from those of the same scale:tap and width another run trained")
    p.add_argument("--export", default=None, metavar="SCALE:TAP[@RUN],...",
                   help="write these trained heads (of --run, or of the run folder after @) into the weights "
                        "folder instead of training")
    p.add_argument("--weights", default=None, help="weights folder to export into (default: the installed one)")
    p.set_defaults(func=run)


def parse_heads(text: str) -> list[tuple[int, int]]:
    """``"2:9,4:5"`` -> [(2, 9), (4, 5)]."""
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or p[0] not in runtime.SCALES for p in pairs):
        msg = f"expected scale:tap pairs with scale in {runtime.SCALES}, got {text!r}"
        raise SystemExit(msg)
    return pairs  # type: ignore[return-value]


def build_heads(config: dict, pairs: list[tuple[int, int]], hidden: int) -> torch.nn.ModuleDict:
    """A fresh head per (scale, tap), shaped for the features the synthesis of ``config`` has there."""
    out = torch.nn.ModuleDict()
    levels = runtime.synthesis_levels(config)
    for scale, tap in pairs:
        if tap not in runtime.readable_taps(config):
            msg = f"a head reads one of layers {runtime.readable_taps(config)} of g_s, not {tap}"
            raise SystemExit(msg)
        channels, level = levels[tap]
        if level % scale or level // scale not in (1, 2):
            msg = f"layer {tap} of g_s is at 1/{level} scale: a head there gives 1/{level} or 1/{level // 2}, not 1/{scale}"
            raise SystemExit(msg)
        out[f"{scale}:{tap}"] = output_head(channels, hidden, level // scale)
    return out


def lanczos(im: np.ndarray, scale: int) -> np.ndarray:
    """``im`` (H, W, 3) uint8 downscaled by ``scale`` with Lanczos (sizes rounded up, as draft's)."""
    pil = Image.fromarray(im)
    return np.asarray(pil.resize(runtime.scaled_size(*pil.size, scale), Image.LANCZOS))


def features(g_s: torch.nn.Sequential, y_hat: torch.Tensor, taps: list[int]) -> dict[int, torch.Tensor]:
    """The outputs of ``g_s`` after each layer in ``taps`` (float32, no gradient)."""
    out, x = {}, y_hat
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=y_hat.device.type == "cpu"):
        for i in range(max(taps) + 1):
            x = g_s[i](x)
            if i in taps:
                out[i] = x.float()
    return out


def make_cache(net: torch.nn.Module, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """ŷ·inverse gain of ``args.crops`` random training crops at random qualities, and their targets."""
    sampler = CropSampler(args.data, args.crop, args.seed)
    y_hats, targets = [], {s: [] for s in runtime.SCALES}
    for start in range(0, args.crops, 16):
        n = min(16, args.crops - start)
        x = torch.from_numpy(sampler.batch(n))
        q = torch.empty(n).uniform_(QUALITY_MIN, QUALITY_MAX)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_hats.append(decoder_input(net, x, q).float().half())
        pixels = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for s in runtime.SCALES:
            targets[s].append(np.stack([lanczos(p, s) for p in pixels]))
    cache = {"y_hat": torch.cat(y_hats)}
    for s in runtime.SCALES:
        cache[f"x{s}"] = torch.from_numpy(np.concatenate(targets[s])).permute(0, 3, 1, 2).contiguous()
    return cache


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-10))


@torch.no_grad()
def validate(net: torch.nn.Module, heads: torch.nn.ModuleDict, images: list[np.ndarray]) -> dict[str, dict]:
    """Per head and quality: mean PSNR against the Lanczos downscale of the original, and its
    difference from that of the Lanczos downscale of the full decode."""
    heads.eval()
    pairs = [tuple(int(v) for v in key.split(":")) for key in heads]
    taps = sorted({t for _, t in pairs})
    result: dict[str, dict] = {key: {} for key in heads}
    for q in (1.0, 4.0, 8.0):
        rows: dict[str, list[tuple[float, float]]] = {key: [] for key in heads}
        for im in images:
            h, w = im.shape[:2]
            x = pad64(torch.from_numpy(im.copy()).permute(2, 0, 1)[None].float().div(255))
            y_hat = decoder_input(net, x, torch.tensor([q]))
            full = net.g_s(y_hat)[0, :, :h, :w].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            feats = features(net.g_s, y_hat, taps)
            for (scale, tap), key in zip(pairs, heads):
                small = heads[key](feats[tap])[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
                small = small[: -(-h // scale), : -(-w // scale)]
                ref = lanczos(im, scale)
                rows[key].append((psnr(small, ref), psnr(lanczos(full, scale), ref)))
        for key, values in rows.items():
            mine, full_psnr = np.mean(values, axis=0)
            result[key][f"q{q:g}"] = {"psnr": round(float(mine), 3), "delta": round(float(mine - full_psnr), 3)}
    heads.train()
    return result


def train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = shipped.load()
    net = model.net("cpu", entropy=True)
    pairs = parse_heads(args.candidates)
    heads = build_heads(model.meta["config"], pairs, args.hidden)
    opt = torch.optim.Adam(heads.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    folder = Path(args.run)
    folder.mkdir(parents=True, exist_ok=True)
    step = 0
    if (folder / "heads.pt").exists():
        saved = torch.load(folder / "heads.pt", weights_only=True)
        if saved["model_id"] != model.model_id.hex() or saved["candidates"] != args.candidates:
            msg = f"{folder / 'heads.pt'} holds heads {saved['candidates']} of model {saved['model_id']}"
            raise SystemExit(msg)
        heads.load_state_dict(saved["heads"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        step = saved["step"]
    elif args.init:
        warm_start(heads, Path(args.init) / "heads.pt", model.model_id.hex(), args.hidden)
    start = time.time()
    cache = make_cache(net, args)
    val = [load_rgb(p) for p in image_paths(args.val)]
    taps = sorted({t for _, t in pairs})
    print(f"{len(cache['y_hat'])} crops encoded in {time.time() - start:.0f} s; step {step} of {args.steps}", flush=True)
    rng = torch.Generator().manual_seed(args.seed + step)
    with (folder / "log.jsonl").open("a") as log:
        while step < args.steps:
            idx = torch.randint(len(cache["y_hat"]), (args.batch,), generator=rng)
            feats = features(net.g_s, cache["y_hat"][idx].float(), taps)
            loss = torch.zeros(())
            losses = {}
            for (scale, tap), key in zip(pairs, heads):
                target = cache[f"x{scale}"][idx].float().div(255)
                mse = torch.mean((heads[key](feats[tap]) - target) ** 2, dim=(1, 2, 3))
                term = torch.mean(torch.log10(mse.clamp_min(1e-10)))
                losses[key] = round(-10 * term.item(), 3)
                loss = loss + term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                log.write(json.dumps({"step": step, "psnr": losses, "seconds": round(time.time() - start, 1)}) + "\n")
                log.flush()
            if step % args.val_every == 0 or step == args.steps:
                entry = {"step": step, "val": validate(net, heads, val)}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                print(json.dumps(entry), flush=True)
                torch.save({"model_id": model.model_id.hex(), "candidates": args.candidates, "hidden": args.hidden,
                            "heads": heads.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "step": step}, folder / "heads.pt")
    return 0


def warm_start(heads: torch.nn.ModuleDict, path: Path, model_id: str, hidden: int) -> None:
    """Load into ``heads`` the weights of the same heads (scale:tap) from another run's ``heads.pt``:
    a longer or slower schedule goes on from where that run ended, with a fresh optimizer."""
    saved = torch.load(path, weights_only=True)
    if saved["model_id"] != model_id or saved["hidden"] != hidden:
        msg = f"{path} holds heads {saved['hidden']} wide of model {saved['model_id']}, not {hidden} wide of {model_id}"
        raise SystemExit(msg)
    missing = [key for key in heads if key not in saved["candidates"].split(",")]
    if missing:
        msg = f"{path} has no head {', '.join(missing)} (it has {saved['candidates']})"
        raise SystemExit(msg)
    heads.load_state_dict({k: v for k, v in saved["heads"].items() if k.split(".")[0] in heads})


def export(run: Path, chosen: list[tuple[int, int, str | None]], out: Path | None) -> dict:
    """Write the chosen heads (scale, tap, run folder or None for ``run``) next to the model they
    were trained for and name the file in its manifest entry; returns what was written."""
    out = out or shipped.weights_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    spec, model_ids = {}, set()
    for scale, tap, folder in chosen:
        path = Path(folder or run) / "heads.pt"
        saved = torch.load(path, weights_only=True)
        key = f"{scale}:{tap}"
        if key not in saved["candidates"].split(","):
            msg = f"{path} has no head {key} (it has {saved['candidates']})"
            raise SystemExit(msg)
        model_ids.add(saved["model_id"])
        for name, value in saved["heads"].items():
            if name.startswith(key + "."):
                arrays[f"{scale}/{name[len(key) + 1:]}"] = value.numpy().astype(np.float32)
        spec[str(scale)] = {"tap": tap, "hidden": saved["hidden"], "trained_steps": saved["step"]}
    if len(model_ids) != 1:
        msg = f"the chosen heads were trained for different models: {sorted(model_ids)}"
        raise SystemExit(msg)
    (model_id,) = model_ids
    entry = manifest["models"][model_id]
    meta = {"format": runtime.FORMAT, "model_id": model_id, "heads": spec}
    arrays["meta"] = np.array(json.dumps(meta))
    data = deterministic_npz(arrays)
    name = Path(entry["file"]).stem + ".heads.npz"
    (out / name).write_bytes(data)
    entry["heads"] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"file": str(out / name), "bytes": len(data), **meta}


def parse_export(text: str) -> list[tuple[int, int, str | None]]:
    """``"2:11@runs/h24,4:7"`` -> [(2, 11, "runs/h24"), (4, 7, None)]: each head, and the run that trained it."""
    items = [item.partition("@") for item in text.split(",")]
    pairs = parse_heads(",".join(head for head, _, _ in items))
    return [(scale, tap, folder or None) for (scale, tap), (_, _, folder) in zip(pairs, items)]


def run(args: argparse.Namespace) -> int:
    if args.export:
        print(json.dumps(export(Path(args.run), parse_export(args.export), Path(args.weights) if args.weights else None)))
        return 0
    return train(args)
