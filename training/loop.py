"""The training loop: rate + λ·distortion over random crops, one model for all qualities.

Each sample of a batch draws a fractional quality in [1, 8]; its λ is interpolated
geometrically between the levels' λ, so fractional qualities are trained, not guessed.
Checkpoints are written atomically every ``--save-every`` steps and ``--resume``
continues from the last one (optimizer and RNG state included). ``slim`` drops the
optimizer state (two thirds of the bytes) and packs the weights (:func:`pack_model`) for
the copy committed to the repo; resuming from a slim checkpoint starts a fresh Adam and
keeps the step, history and RNG state.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from pillow_cnnz.layers import GDN
from pillow_cnnz.model import ENCODER_PARAMETERS, LAMBDA_TABLES, QUALITY_MAX, QUALITY_MIN, CnnzNet, Config, lambda_for

from . import surgery
from .data import DEFAULT_DATA, DEFAULT_VAL, CropSampler, image_paths, load_rgb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=DEFAULT_DATA, help="folder of training images")
    p.add_argument("--val", default=DEFAULT_VAL, help="folder of validation images")
    p.add_argument("--run", default="runs/main", help="folder for checkpoints and the log")
    p.add_argument("--steps", type=int, default=100_000, help="stop at this total step count")
    p.add_argument("--max-minutes", type=float,
                   help="also stop (validating and saving) after this many minutes of this invocation: "
                        "for a machine lent for a fixed time")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--density-lr", type=float, default=3e-3,
                   help="learning rate of the hyper-latent density (it must narrow fast, or ẑ collapses)")
    p.add_argument("--gain-lr", type=float, default=1e-3,
                   help="learning rate of the per-quality gain vectors (rate control per channel)")
    p.add_argument("--lambdas", choices=sorted(LAMBDA_TABLES), default="wide5",
                   help="λ of each integer quality (a checkpoint on another table has its gains remapped)")
    p.add_argument("--rate-balance", type=float, default=0.0,
                   help="weight each sample's loss by (λ/λ_mid)^-B: with B=0.5 a bit saved at quality 1 "
                        "counts about as much, relative to its file size, as one at quality 8 (0: plain sum)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast for the transforms (default on; off for exact float32)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--val-every", type=int, default=2000,
                   help="validate every N steps and at the last one (0: never, and --val is not read)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--init", help="start from this checkpoint's weights (fresh optimizer)")
    p.add_argument("--grow", type=lambda v: tuple(int(n) for n in v.split(",")), metavar="A,B,C",
                   help="residual blocks after each synthesis level (e.g. 0,1,0): a resumed network gets "
                        "the missing ones as identity blocks (surgery.grown); Adam keeps the old parameters' moments")
    p.add_argument("--grow-analysis", type=lambda v: tuple(int(n) for n in v.split(",")), metavar="A,B,C",
                   help="residual blocks after each analysis level, fine to coarse (e.g. 0,2,2): like --grow, "
                        "for the encoder; they cost encode time only")
    p.add_argument("--context", type=int, metavar="C",
                   help="add a checkerboard context of C channels to a resumed network without one "
                        "(surgery.with_context: it starts as no change; trained with the density's rate)")
    p.add_argument("--widen", type=int, metavar="M",
                   help="give a resumed network M latent channels (surgery.widened: it starts reconstructing "
                        "as before; Adam starts afresh, the parameters' shapes change)")
    p.add_argument("--dec", type=lambda v: tuple(int(n) for n in v.split(",")), metavar="A,B,C",
                   help="synthesis widths, coarse to fine: a new network's, or a resumed one widened to them "
                        "(surgery.widened_synthesis: it starts reconstructing about as before; Adam starts afresh)")
    p.add_argument("--width", type=int, metavar="N",
                   help="encoder width of a new network (default: model.Config's); a resumed one keeps its own")
    p.add_argument("--encoder-only", action="store_true",
                   help="train only what the encoder alone runs (model.ENCODER_PARAMETERS: g_a, h_a, the gains "
                        "y is scaled by): the decoder's networks stay bit for bit, so a phase can only change "
                        "which symbols the encoder picks (the export re-measures the latent tables for them)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def freeze_decoder(net: CnnzNet) -> int:
    """Stop gradients to every parameter the decoder uses; returns how many stay trainable."""
    trainable = 0
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(ENCODER_PARAMETERS))
        trainable += param.numel() if param.requires_grad else 0
    return trainable


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def checkpoint_net(state: dict) -> CnnzNet:
    """The network of a loaded checkpoint, built to the checkpoint's own config."""
    net = CnnzNet(Config.from_dict(state["config"]))
    net.load_state_dict(state["model"])
    return net


def pack_model(model: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Weights losslessly packed for the committed checkpoint: each tensor's bytes split into
    planes (all first bytes, then all second bytes, ...) and deflated. The sign/exponent plane
    of float32 weights compresses well where interleaved bytes do not: 17.4 MB against 20.4
    MB stored (18.9 MB deflated without the split), for the 229k checkpoint."""
    packed = {}
    for key, value in model.items():
        a = value.detach().cpu().contiguous().numpy()
        planes = a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()
        # A uint8 tensor, not bytes: torch.save's pickle (protocol 2) would store bytes as
        # latin-1 text, half again as large.
        data = torch.frombuffer(bytearray(zlib.compress(planes, 9)), dtype=torch.uint8)
        packed[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": data}
    return packed


def unpack_model(packed: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The tensors :func:`pack_model` packed, bit for bit."""
    model = {}
    for key, entry in packed.items():
        dtype = np.dtype(entry["dtype"])
        planes = np.frombuffer(zlib.decompress(entry["data"].numpy().tobytes()), np.uint8).reshape(dtype.itemsize, -1)
        model[key] = torch.from_numpy(planes.T.copy().view(dtype).reshape(entry["shape"]))
    return model


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's whole state, as ``fit`` wrote it or as ``slim`` packed it.

    Loaded with ``weights_only=True``: a checkpoint holds tensors and plain data only, and
    unpickling anything else would run code from a file passed as ``--resume`` or ``--teacher``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "packed_model" in state:
        state["model"] = unpack_model(state.pop("packed_model"))
    return state


def load_checkpoint(path: Path) -> tuple[CnnzNet, dict]:
    """The network of a training checkpoint (on the CPU) and the checkpoint's whole state."""
    state = read_checkpoint(path)
    return checkpoint_net(state), state


def checkpoint_lambdas(state: dict) -> tuple[float, ...]:
    """The λ table a checkpoint was trained on (those made before tables were recorded: zoo)."""
    return tuple(state.get("lambdas", LAMBDA_TABLES["zoo"]))


def adopt_lambdas(net: CnnzNet, state: dict, lambdas: tuple[float, ...]) -> bool:
    """Move the gains of a checkpoint trained on another λ table onto ``lambdas``.
    Returns whether anything moved."""
    old = checkpoint_lambdas(state)
    if old == lambdas:
        return False
    surgery.remap_gains(net, old, lambdas)
    return True


def sample_weight(lam: torch.Tensor, balance: float, lambdas: tuple[float, ...]) -> torch.Tensor:
    """Per-sample loss weight (λ/λ_mid)^-balance, λ_mid the geometric middle of the table.

    With one plain sum, a quality-8 crop's loss is ~25x a quality-1 crop's, so the shared
    transforms learn almost only the high rates. BD-rate weighs every octave of bitrate
    alike; bits per pixel grow roughly as λ^0.5-0.6, so balance 0.5 makes each sample's
    gradient about proportional to its relative (not absolute) rate change. The optimum of
    each quality alone is unchanged: only the trade between qualities moves.
    """
    mid = math.sqrt(lambdas[0] * lambdas[-1])
    return (lam / mid) ** -balance


def pad64(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")


@torch.no_grad()
def validate(net: CnnzNet, images: list[np.ndarray], device: str) -> dict[str, float]:
    """Mean estimated bpp and PSNR at qualities 1, 4 and 8 (rounded latents, ideal rate)."""
    net.eval()
    result = {}
    for q in (1.0, 4.0, 8.0):
        bpp, psnr = [], []
        for im in images:
            x = torch.from_numpy(im.copy()).permute(2, 0, 1)[None].float().div(255).to(device)
            h, w = x.shape[-2:]
            out = net(pad64(x), torch.tensor([q], device=device))
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
            bpp.append(out["bits"].item() / (h * w))
            mse = torch.mean((torch.round(x_hat * 255) - x * 255) ** 2).item()
            psnr.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        result[f"q{q:g}"] = {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr))}
    net.train()
    return result


@torch.no_grad()
def seed_gdn_off_diagonals(net: CnnzNet) -> int:
    """Give GDN layers whose off-diagonal roots are all exactly 0 (checkpoints made before
    ``GDN.OFF_DIAGONAL_ROOT``) that small start, so they can learn. Returns layers changed."""
    changed = 0
    for m in net.modules():
        if isinstance(m, GDN):
            off = ~torch.eye(m.gamma_sqrt.shape[0], dtype=torch.bool)
            if torch.all(m.gamma_sqrt[off] == 0):
                m.gamma_sqrt[off] = GDN.OFF_DIAGONAL_ROOT
                changed += 1
    return changed


def logged_validation(log: Path, until: int) -> list[dict]:
    """Validation entries of a run's ``log.jsonl`` up to step ``until`` (for checkpoints made
    before the validation history was kept in the checkpoint itself)."""
    if not log.exists():
        return []
    entries = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "val" in entry and entry["step"] <= until:
            entries[entry["step"]] = {"step": entry["step"], **entry["val"]}
    return [entries[k] for k in sorted(entries)]


def group_members(net: CnnzNet, count: int = 3) -> list[list[torch.nn.Parameter]]:
    """Parameters per optimizer group: transforms, entropy model (hyper-latent density and
    context), per-quality gains.

    ``count`` < 3 gives the groupings of older checkpoints (1: all together; 2: the
    gains still with the transforms), so their optimizer state can be renumbered.
    """
    density = {id(p) for p in net.density_z.parameters()}
    if net.context is not None:
        density |= {id(p) for p in net.context.parameters()}
    gains = {id(net.log2_gain), id(net.log2_inv_gain)} if count >= 3 else set()
    rest = [p for p in net.parameters() if id(p) not in density and id(p) not in gains]
    groups = [[p for p in net.parameters() if id(p) in density], [p for p in net.parameters() if id(p) in gains]]
    return [list(net.parameters())] if count == 1 else [rest, *groups[: count - 1]]


def param_groups(net: CnnzNet) -> list[dict]:
    """The density and the gains get their own (higher) rates: both must move far, and
    at the transforms' rate a gain changes by at most ~1e-4 (in log2) per step."""
    return [{"params": members} for members in group_members(net)]


def regroup(opt_state: dict, net: CnnzNet) -> dict:
    """Optimizer state of a checkpoint with an older grouping, renumbered for :func:`param_groups`."""
    old_count = len(opt_state["param_groups"])
    if old_count == 3:
        return opt_state
    ids = {id(p): i for i, p in enumerate(p for g in group_members(net, old_count) for p in g)}
    new = group_members(net)
    new_index = {ids[id(p)]: k for k, p in enumerate(p for g in new for p in g)}
    return {
        "state": {new_index[i]: v for i, v in opt_state["state"].items()},
        "param_groups": numbered_groups([opt_state["param_groups"][0]] * len(new), new),
    }


def numbered_groups(settings: list[dict], groups: list[list[torch.nn.Parameter]]) -> list[dict]:
    """Optimizer ``param_groups`` with each group's settings and its parameters numbered in order."""
    starts = np.cumsum([0] + [len(g) for g in groups])
    return [dict({k: v for k, v in s.items() if k != "params"}, params=list(range(int(a), int(b))))
            for s, a, b in zip(settings, starts[:-1], starts[1:])]


def grown_adam(opt_state: dict, old: CnnzNet, new: CnnzNet) -> dict:
    """Adam state of ``old`` renumbered for ``new`` (``old`` grown or given a context): the
    parameters both share keep their moments, the new ones start without. Resetting them all
    cost ~0.4 dB at the top quality for ~2k steps."""
    opt_state = regroup(opt_state, old)
    old_names = {id(p): n for n, p in old.named_parameters()}
    carried = [surgery.grown_key(old_names[id(p)], old.config, new.config) for g in group_members(old) for p in g]
    new_names = {id(p): n for n, p in new.named_parameters()}
    groups = group_members(new)
    index = {new_names[id(p)]: k for k, p in enumerate(p for g in groups for p in g)}
    return {
        "state": {index[carried[i]]: v for i, v in opt_state["state"].items()},
        "param_groups": numbered_groups(opt_state["param_groups"], groups),
    }


def forget_gain_moments(opt: torch.optim.Optimizer) -> None:
    """Drop the Adam moments of the gain group (the last of :func:`param_groups`) only: after
    a λ remap its rows mean other λs, while the transforms' moments still hold; a fresh Adam
    for all of them shocks a converged network (see :func:`grown_adam`)."""
    for p in opt.param_groups[-1]["params"]:
        opt.state.pop(p, None)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    torch.manual_seed(args.seed)
    step, seconds, history, fresh_adam, validation, remapped = 0, 0.0, [], False, [], False
    lambdas = LAMBDA_TABLES[args.lambdas]
    sampler = CropSampler(args.data, args.crop, seed=args.seed)
    state = read_checkpoint(last) if args.resume and last.exists() else None
    init = read_checkpoint(Path(args.init)) if args.init and state is None else None
    source = state or init
    if source and args.width and args.width != Config.from_dict(source["config"]).N:
        msg = f"--width sets a new network's encoder width; this checkpoint's is {source['config']['N']}"
        raise SystemExit(msg)
    fresh = Config(**{k: v for k, v in (("N", args.width), ("dec", args.dec)) if v})
    net = checkpoint_net(source) if source else CnnzNet(fresh)
    if source:
        remapped = adopt_lambdas(net, source, lambdas)
    grown = args.grow is not None and tuple(args.grow) != net.config.res
    grown_a = args.grow_analysis is not None and tuple(args.grow_analysis) != net.config.ares
    before = net
    if grown or grown_a:
        net = surgery.grown(net, args.grow, args.grow_analysis)
    contexted = bool(args.context) and not net.config.ctx
    if contexted:
        net = surgery.with_context(net, args.context)
    widened = bool(args.widen) and args.widen != net.config.M
    if widened:
        net = surgery.widened(net, args.widen)
    widened_s = bool(args.dec) and tuple(args.dec) != net.config.dec
    if widened_s:
        net = surgery.widened_synthesis(net, args.dec)
    net = net.to(args.device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(param_groups(net), lr=args.lr)
    if state:
        if "optimizer" in state and not (widened or widened_s):
            changed = grown or grown_a or contexted
            opt_state = grown_adam(state["optimizer"], before, net) if changed else regroup(state["optimizer"], net)
            opt.load_state_dict(opt_state)
            if remapped:
                forget_gain_moments(opt)
                print("its λ table changed: the gains' Adam moments start afresh", file=sys.stderr)
        else:
            fresh_adam = True
            why = ("the latents were widened" if widened else "the synthesis was widened" if widened_s
                   else "checkpoint has no optimizer state (slim)")
            print(f"{why}: Adam starts afresh", file=sys.stderr)
        step, seconds = state["step"], state["seconds"]
        a = state["args"]
        history = state.get("history") or [{"from_step": 0, "lr": a["lr"], "batch": a["batch"], "crop": a["crop"],
                                            "device": a["device"], "init": a.get("init")}]
        validation = state.get("validation") or logged_validation(run_dir / "log.jsonl", step)
        sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {last} at step {step}", file=sys.stderr)
    for group, lr in zip(opt.param_groups, (args.lr, args.density_lr, args.gain_lr)):
        group["lr"] = lr
    seeded = seed_gdn_off_diagonals(net)
    if args.encoder_only:
        print(f"encoder only: {freeze_decoder(net):,} parameters train", file=sys.stderr)
    history.append({"from_step": step, "lr": args.lr, "density_lr": args.density_lr,
                    "gain_lr": args.gain_lr, "lambdas": args.lambdas, "rate_balance": args.rate_balance,
                    "batch": args.batch, "data": args.data,
                    "crop": args.crop, "device": args.device, "init": args.init, "bf16": args.bf16,
                    "threads": torch.get_num_threads(), "seeded_gdn": seeded}
                   | ({"fresh_optimizer": True} if fresh_adam else {})
                   | ({"from_slim": True} if state and "optimizer" not in state else {})
                   | ({"remapped_gains": True} if remapped else {})
                   | ({"grown": list(net.config.res)} if grown else {})
                   | ({"grown_analysis": list(net.config.ares)} if grown_a else {})
                   | ({"context": net.config.ctx} if contexted else {})
                   | ({"widened": net.config.M} if widened else {})
                   | ({"widened_synthesis": list(net.config.dec)} if widened_s else {})
                   | ({"encoder_only": True} if args.encoder_only else {}))
    val_images = [load_rgb(p) for p in image_paths(args.val)] if args.val_every > 0 else []
    log = open(run_dir / "log.jsonl", "a")
    hist: list[tuple[float, float, float]] = []
    start = time.time() - seconds
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else math.inf
    lap, lap_step = time.time(), step
    if str(args.device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # the crop size never changes: pick the fastest kernels once
    while step < args.steps:
        x = torch.from_numpy(sampler.batch(args.batch)).to(args.device, memory_format=torch.channels_last)
        q = torch.empty(args.batch, device=args.device).uniform_(QUALITY_MIN, QUALITY_MAX)
        out = net(x, q, bf16=args.bf16)
        mse = ((out["x_hat"] - x) ** 2).mean((1, 2, 3))
        bpp = out["bits"] / (args.crop**2)
        lam = lambda_for(q, lambdas).to(args.device)
        loss = ((bpp + lam * 255**2 * mse) * sample_weight(lam, args.rate_balance, lambdas)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        hist.append((loss.item(), bpp.mean().item(), (10 * torch.log10(1 / mse.detach())).mean().item()))
        last_step = step == args.steps or time.time() >= deadline
        if step % 50 == 0:
            l, b, p = np.mean(hist, axis=0)
            hist.clear()
            elapsed = time.time() - start
            # the rate of the steps since the last line: a resumed run's average would hide this machine's
            rate = (time.time() - lap) / (step - lap_step)
            lap, lap_step = time.time(), step
            print(f"\rstep {step}/{args.steps} loss {l:.4f} bpp {b:.3f} psnr {p:.2f} "
                  f"[{elapsed / 60:.1f} min, {rate:.2f} s/step]", end="", file=sys.stderr, flush=True)
            log.write(json.dumps({"step": step, "loss": l, "bpp": b, "psnr": p, "seconds": elapsed}) + "\n")
        if val_images and (step % args.val_every == 0 or last_step):
            v = validate(net, val_images, args.device)
            validation.append({"step": step, **v})
            print(f"\nval step {step}: {json.dumps(v)}", file=sys.stderr, flush=True)
            log.write(json.dumps({"step": step, "val": v}) + "\n")
        if step % args.save_every == 0 or last_step:
            save_checkpoint(last, {
                "model": net.state_dict(), "optimizer": opt.state_dict(), "config": net.config.to_dict(),
                "lambdas": list(lambdas), "step": step, "seconds": time.time() - start, "args": vars(args) | {"func": None},
                "history": history, "validation": validation,
                "sampler_rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            })
        log.flush()
        if last_step:
            break
    return 0


def add_slim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint (RUN/last.pt)")
    p.add_argument("out", help="where to write the checkpoint without optimizer state")
    p.set_defaults(func=run_slim)


def slim(checkpoint: Path, out: Path) -> dict:
    """Copy ``checkpoint`` without its optimizer state and with its weights packed
    (:func:`pack_model`); ``fit --resume``, ``--init`` and ``export`` accept the result."""
    state = read_checkpoint(checkpoint)
    state.pop("optimizer", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, {k: v for k, v in state.items() if k != "model"} | {"packed_model": pack_model(state["model"])})
    return state


def run_slim(args: argparse.Namespace) -> int:
    state = slim(Path(args.checkpoint), Path(args.out))
    print(f"{args.out}: step {state['step']}, {Path(args.out).stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return 0
