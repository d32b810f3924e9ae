"""``distill``: train a smaller synthesis for the trained analysis and entropy model.

Why: decoding is the synthesis' cost (60k multiply-adds a pixel in the shipped one), and the
decode bar on a CPU without bfloat16 needs about a quarter of that. Retraining everything costs
days on 2 cores. With the analysis, hyperprior and context frozen, the latents and their rate do
not change: only the distortion of a smaller ``g_s`` has to be won back, the loss is the training
loss' λ·255²·MSE at a random quality, and a step costs the teacher's (no-gradient) analysis plus
the student synthesis' forward and backward.

The student is the teacher's network with other synthesis widths or residual blocks per level
(``--dec``, ``--res``); each of its layers starts from the teacher's layer in the same place
(the first blocks of a level) where the shapes agree. The run folder holds ``last.pt`` in the
format ``fit`` writes, so ``export`` makes a weights file of it (a new model: old files keep
decoding with theirs), and ``log.jsonl``; ``--resume`` goes on from ``last.pt``.

Example (from the repository root)::

    python -m training distill --res 2,1,0 --steps 20000 --run runs/distill
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pillow_cnnz.model import QUALITY_MAX, QUALITY_MIN, CnnzNet, Config, lambda_for

from .data import DEFAULT_DATA, DEFAULT_VAL, CropSampler, image_paths, load_rgb
from .surgery import slots
from .loop import (checkpoint_lambdas, load_checkpoint, read_checkpoint, sample_weight, save_checkpoint,
                   validate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="checkpoints/last.pt", help="the trained checkpoint whose synthesis is replaced")
    p.add_argument("--run", default="runs/distill", help="folder for last.pt and log.jsonl")
    p.add_argument("--dec", default=None, help="synthesis widths, coarse to fine (default: the teacher's)")
    p.add_argument("--res", default="2,1,0", help="residual blocks per synthesis level, coarse to fine")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--val", default=DEFAULT_VAL)
    p.add_argument("--steps", type=int, default=20000, help="total steps (a resumed run goes on to this many)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rate-balance", type=float, default=0.5,
                   help="weight each sample's loss by (λ/λ_mid)^-B, as fit does (the shipped weights trained "
                        "at 0.5; 0: plain sum, where quality 8's error drowns quality 1's)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=run)


def _widths(text: str | None, default: tuple[int, int, int], name: str, minimum: int) -> tuple[int, int, int]:
    if text is None:
        return default
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < minimum:
        msg = f"--{name} takes three integers of at least {minimum}, coarse to fine, got {text!r}"
        raise SystemExit(msg)
    return values


def student_config(teacher: Config, dec: tuple[int, int, int], res: tuple[int, int, int]) -> Config:
    return Config.from_dict(teacher.to_dict() | {"dec": dec, "res": res})


def adopt_teacher(student: CnnzNet, teacher: CnnzNet) -> list[str]:
    """Copy every teacher parameter into the student where the student has the same layer (by
    place: resampling conv, GDN, k-th residual block of a level, last conv) with the same
    shape; everything outside ``g_s`` is the teacher's. Returns the student keys not copied."""
    t_slots = {slot: i for i, slot in enumerate(slots(teacher.config.res, "up"))}
    s_slots = slots(student.config.res, "up")
    source = teacher.state_dict()
    state = student.state_dict()
    fresh = []
    for key in state:
        t_key = key
        if key.startswith("g_s."):
            index, rest = key[4:].split(".", 1)
            slot = s_slots[int(index)]
            t_key = f"g_s.{t_slots[slot]}.{rest}" if slot in t_slots else None
        if t_key in source and source[t_key].shape == state[key].shape:
            state[key] = source[t_key].clone()
        else:
            fresh.append(key)
    student.load_state_dict(state)
    return fresh


@torch.no_grad()
def decoder_input(teacher: CnnzNet, x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """ŷ·inverse gain of a batch, as the teacher's evaluation pass hands it to ``g_s``: the latents
    the frozen encoder and entropy model make, with rounded ẑ and rounded y − μ."""
    gain, inv_gain = teacher.gains(quality)
    y = teacher.g_a(x) * gain
    hyper = teacher.h_s(torch.round(teacher.h_a(y)))
    mu, _ = teacher.entropy_parameters(hyper, y)
    return (torch.round(y - mu) + mu) * inv_gain


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, state = load_checkpoint(Path(args.teacher))
    teacher.to(args.device).eval().requires_grad_(False)
    lambdas = checkpoint_lambdas(state)
    config = student_config(teacher.config, _widths(args.dec, teacher.config.dec, "dec", 1),
                            _widths(args.res, teacher.config.res, "res", 0))
    student = CnnzNet(config)
    fresh = adopt_teacher(student, teacher.cpu())
    teacher.to(args.device)
    folder = Path(args.run)
    folder.mkdir(parents=True, exist_ok=True)
    step, seconds = 0, 0.0
    student.to(args.device).requires_grad_(False)
    student.g_s.requires_grad_(True).train()
    opt = torch.optim.Adam(student.g_s.parameters(), lr=args.lr)  # after the move: its state follows the parameters
    if args.resume and (folder / "last.pt").exists():
        saved = read_checkpoint(folder / "last.pt")
        if saved["config"] != config.to_dict():
            msg = f"{folder / 'last.pt'} is a student of config {saved['config']}, not {config.to_dict()}"
            raise SystemExit(msg)
        student.load_state_dict(saved["model"])
        opt.load_state_dict(saved["distill"]["optimizer"])
        for group in opt.param_groups:  # the saved state carries the old rate: this run's --lr wins
            group["lr"] = args.lr
        step, seconds = saved["distill"]["step"], saved["distill"]["seconds"]
    sampler = CropSampler(args.data, args.crop, args.seed + step)
    val = [load_rgb(p) for p in image_paths(args.val)]
    print(f"student synthesis {config.synthesis_macs() / 1e3:.1f}k MAC/px (teacher {teacher.config.synthesis_macs() / 1e3:.1f}k); "
          f"{len(fresh)} tensors start fresh; step {step} of {args.steps}", flush=True)
    start = time.time()
    with (folder / "log.jsonl").open("a") as log:
        if step == 0:  # what the student is measured against, and where it starts
            entry = {"step": 0, "teacher_val": validate(teacher, val, args.device), "val": validate(student, val, args.device)}
            teacher.eval()  # validate hands networks back in training mode
            log.write(json.dumps(entry) + "\n")
            print(json.dumps(entry), flush=True)
        while step < args.steps:
            x = torch.from_numpy(sampler.batch(args.batch)).to(args.device)
            q = torch.empty(args.batch, device=args.device).uniform_(QUALITY_MIN, QUALITY_MAX)
            y_hat = decoder_input(teacher, x, q)
            mse = torch.mean((student.g_s(y_hat) - x) ** 2, dim=(1, 2, 3))
            lam = lambda_for(q, lambdas)
            loss = torch.mean(lam * 255**2 * mse * sample_weight(lam, args.rate_balance, lambdas))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                psnr = float(torch.mean(10 * torch.log10(1 / mse.detach().clamp_min(1e-10))))
                log.write(json.dumps({"step": step, "loss": loss.item(), "psnr": psnr,
                                      "seconds": seconds + time.time() - start}) + "\n")
                log.flush()
            if step % args.val_every == 0 or step == args.steps:
                student.eval()
                entry = {"step": step, "val": validate(student, val, args.device)}
                student.g_s.train()
                log.write(json.dumps(entry) + "\n")
                log.flush()
                print(json.dumps(entry), flush=True)
                _save(folder / "last.pt", state, student, opt, lambdas, args, step, seconds + time.time() - start)
    return 0


def _save(path: Path, teacher_state: dict, student: CnnzNet, opt: torch.optim.Optimizer, lambdas: tuple[float, ...],
          args: argparse.Namespace, step: int, seconds: float) -> None:
    """The student as a ``fit`` checkpoint (``export`` reads it), its distillation state under ``distill``."""
    model = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    distill = {"step": step, "seconds": seconds, "optimizer": opt.state_dict(), "teacher_step": teacher_state["step"],
               "args": {k: v for k, v in vars(args).items() if k != "func"}}
    history = list(teacher_state.get("history") or []) + [{"from_step": teacher_state["step"], "distill": True,
                                                            "lr": args.lr, "batch": args.batch, "crop": args.crop,
                                                            "rate_balance": args.rate_balance, "device": args.device}]
    keep = {k: v for k, v in teacher_state.items() if k not in ("model", "packed_model", "optimizer")}
    save_checkpoint(path, keep | {"model": model, "config": student.config.to_dict(), "lambdas": list(lambdas),
                                  "history": history, "distill": distill})
