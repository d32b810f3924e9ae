"""Export a training checkpoint as the shipped weights file and its model card.

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
from pillow_cnnz.model import ENCODER_TRANSFORMS, LAMBDA_TABLES, SCALE_MIN, CnnzNet, Config

from . import calibrate
from .data import DEFAULT_DATA, DEFAULT_VAL, RECORDED_DATA
from .loop import checkpoint_lambdas, load_checkpoint

WEIGHTS_FORMAT = "cnnz-weights-1"
SCALE_COUNT = 64
SCALE_OFFSET = round(math.log2(SCALE_MIN) * 2**hyper.FRAC_BITS)  # fixed-point log2 of the smallest scale
SCALE_STEP = 37  # fixed-point width of one scale bin: 64 bins reach a scale of about 70
Y_TAIL_SIGMAS = 8
Z_TAIL_MASS = 1e-6
Z_RANGE = 256
# what experiments/calibration measured, quoted by the model card (relative to the repository root)
CALIBRATION_RESULTS = Path("experiments/calibration/calibration.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint (RUN/last.pt)")
    p.add_argument("--out", default="weights", help="folder of the weights file, manifest and model card")
    p.add_argument("--name", default="cnnz-v1", help="weights file stem")
    p.add_argument("--hardware", default=f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), 2 cores")
    p.add_argument("--calibrate", default=DEFAULT_DATA, metavar="FOLDER",
                   help="measure the latent tables on images of this folder ('' for ideal Gaussians)")
    p.add_argument("--calibrate-images", type=int, default=96, help="images taken, spread over the folder")
    p.add_argument("--calibrate-crop", type=int, default=512, help="centre crop of each image (pixels)")
    p.add_argument("--results", default="benchmarks/results", help="where benchmarks/rd.py wrote its summaries")
    p.add_argument("--synthesis-only", action="store_true",
                   help="keep every array of the default weights but the synthesis, taken from the checkpoint "
                        "(a `distill` run of the same shape); the old model's files decode with the new one")
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
    (Path(args.out) / "README.md").write_text(model_card(info, Path(args.results)))
    print(json.dumps({k: v for k, v in info.items() if k != "meta"}, indent=2))
    return 0


def add_card_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="weights", help="folder of the weights file, manifest and model card")
    p.add_argument("--results", default="benchmarks/results", help="where benchmarks/rd.py wrote its summaries")
    p.set_defaults(func=run_card)


def run_card(args: argparse.Namespace) -> int:
    """Rewrite the model card of the default weights (after new benchmark results), no re-export."""
    out = Path(args.out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["models"][manifest["default"]]
    data = (out / entry["file"]).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    info = {"model_id": manifest["default"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "meta": meta, "file": entry["file"], "int8": entry.get("int8")}
    (out / "README.md").write_text(model_card(info, Path(args.results)))
    return 0


def _synthesis_note(meta: dict) -> str:
    """The model card's line on a synthesis retrained after the table's phases (``export --synthesis-only``)."""
    synth = meta["training"].get("synthesis")
    if not synth:
        return ""
    return (f"- then the synthesis alone: {synth['steps']:,} steps of `{_as_run_today(synth['command'])}` "
            f"({synth['seconds'] / 3600:.2f} h, {synth.get('device', 'cpu')}; λ·255²·MSE weighted by rate balance "
            f"{synth.get('rate_balance', 0):g}, every other weight frozen), exported with `export --synthesis-only`: "
            f"files of model{'s' if len(meta.get('decodes', [])) > 1 else ''} {', '.join(meta.get('decodes', []))} "
            f"(the same latents and entropy model) decode with this one.\n")


def _calibration_table(path: Path) -> str:
    if not path.exists():
        return f"\n(no `{path}` yet: run `python -m experiments.calibration.calibration`)\n"
    data = json.loads(path.read_text())
    return (f"\nCheckpoint step {data.get('checkpoint_step', '?'):,} exported both ways, {data['images']} images of "
            f"`{data['args']['data']}` coded at each quality (same pixels, so only the bytes differ):\n\n"
            f"{data['table']}\n")


def _rd_table(results: Path) -> str:
    """Markdown rows from benchmarks/rd.py summaries, when they exist."""
    rows = []
    for name in ("kodak", "val"):
        summary = results / name / "summary.json"
        if summary.exists():
            rows.append(f"\n**{name}** (from `{summary.as_posix()}`):\n")
            md = results / name / "summary.md"
            rows.append(md.read_text() if md.exists() else "```\n" + summary.read_text() + "\n```\n")
    return "".join(rows) or "\n(no `benchmarks/results/*/summary.json` yet: run `benchmarks/rd.py`)\n"


def _tables_note(meta: dict) -> str:
    cal = meta.get("y_tables", "gaussian")
    if cal == "gaussian":
        return "ideal discretized Gaussians at each scale index's nominal scale (not calibrated)."
    return (f"measured (`training/calibrate.py`): histograms of the coded symbols per scale index "
            f"over {cal['images']} images of `{cal['data']}` (centre {cal['crop']}² crops), qualities 1..8, "
            f"{cal['symbols']:,} symbols, smoothed with a Gaussian of each index's measured spread; what they "
            f"save over ideal Gaussians is below.")


def _hyperfit_note(fit: dict | None) -> str:
    if not fit:
        return ""
    first, last = fit["validation_bpp"][0], fit["validation_bpp"][-1]
    change = ", ".join(f"q{q} {first[f'q{q}']:.3f} → {last[f'q{q}']:.3f}" for q in (1, 4, 8))
    return (f"""
**Hyperprior fitted on whole images** (`hyperfit`, `training/hyperfit.py`): after the crops,
`h_a`, `h_s` and the ẑ density alone were trained {fit['steps']:,} steps of {fit['batch']} whole training
images each (lr {fit['lr']:g}, density lr {fit['density_lr']:g}{', both decaying to a tenth' if fit.get('decay') else ''}; {fit['seconds'] / 60:.0f} min on {fit['threads']}
threads) on the real code length of the rounded symbols, with `g_a`, `g_s` and the gains frozen. On crops
ẑ is a 2×2 or 4×4 grid, all border; on whole images the fitted hyperprior codes the same latents in far
fewer bits. Validation bpp (`{fit.get('val', DEFAULT_VAL)}`, ideal Gaussian code length): {change}.
""")


def _residual_note(cfg: dict) -> str:
    res = Config.from_dict(cfg).res
    if not any(res):
        return ""
    where = ", ".join(f"{n} after the {w}-channel level" for n, w in zip(res, cfg["dec"]) if n)
    return (f"residual blocks (3×3 conv, ReLU, 3×3 conv; added to the trained network as identity blocks, "
            f"`fit --grow`): {where}; ")


def _analysis_note(cfg: dict) -> str:
    config = Config.from_dict(cfg)
    if not any(config.ares):
        return ""
    where = ", ".join(f"{n} at 1/{2 ** (k + 1)} resolution" for k, n in enumerate(config.ares) if n)
    return (f"- analysis residual blocks ({config.N} channels, added as identity blocks, `fit --grow-analysis`): "
            f"{where}; the analysis costs {config.analysis_macs() / 1e3:.1f}k multiply-adds per pixel "
            f"(encode only).\n")


def _int8_note(info: dict) -> str:
    spec = info.get("int8")
    if not spec:
        return ("- int8 transforms: no activation ranges registered yet (`python -m training int8`); "
                "CPUs with VNNI run the analysis and synthesis in float32 until then.\n")
    rounded = spec.get("rounded")
    weights = (f"; the synthesis' int8 weights rounded on the same images to keep their error off its outputs "
               f"(GPTQ, `training/int8_calibration.py`) in `{rounded['file']}` (sha256 `{rounded['sha256'][:16]}…`)" if rounded
               else "; weights rounded to nearest")
    return (f"- int8 transforms (CPUs with VNNI and no bfloat16, `pillow_cnnz/int8.py`): per-channel activation "
            f"ranges of the analysis' residual blocks and of the synthesis layers that run in int8 (residual "
            f"blocks, inner sub-pixel convolutions) in `{spec['file']}` (sha256 `{spec['sha256'][:16]}…`; a layer "
            f"with `passes: 2` quantizes its input in two passes), measured on training images by "
            f"`python -m training int8`{weights}.\n")


def _context_note(meta: dict) -> str:
    if not meta.get("context"):
        return ""
    return (f"- checkerboard context ({meta['context']['channels']} channels; added to the trained network as no "
            f"change, `fit --context`): each band codes the anchor latents first, then the rest with (μ, scale) "
            f"refined from the anchors around them (3×3 conv) and the hyper output (1×1 convs), exported as a "
            f"fixed-point integer network (`pillow_cnnz/context.py`); it trains at the density's learning rate.\n")


def phases(history: list[dict]) -> list[dict]:
    """The history with each resume that changed no setting merged into the phase before it."""
    def setting(h: dict) -> dict:  # phases recorded before the data folder was: the default one
        return {k: v for k, v in h.items() if k not in ("from_step", "seeded_gdn")} | {"data": phase_data(h)}

    merged: list[dict] = []
    for h in history:
        if not merged or setting(h) != setting(merged[-1]):
            merged.append(h)
    return merged


def _as_run_today(command: str) -> str:
    """A command recorded in a checkpoint or weights file, as it runs from a checkout today (the
    training code was ``pillow_cnnz.train`` before it left the package)."""
    return command.replace("python -m pillow_cnnz.train ", "python -m training ")


def phase_data(h: dict) -> str:
    """The training images of a phase: its own folder, or the default where it recorded none or
    recorded the default set's former folder."""
    data = h.get("data", DEFAULT_DATA)
    return DEFAULT_DATA if data == RECORDED_DATA else data


def model_card(info: dict, results: Path) -> str:
    meta = info["meta"]
    cfg = meta["config"]
    train = meta["training"]
    args = train["args"]
    rows, commands = [], []
    hist = phases(train["history"])
    tables = [h.get("lambdas", "zoo") for h in hist]  # phases before tables were recorded used the zoo's
    for i, h in enumerate(hist):
        until = hist[i + 1]["from_step"] if i + 1 < len(hist) else train["step"]
        dlr = h.get("density_lr", h["lr"])
        glr = h.get("gain_lr", h["lr"])
        bf16 = h.get("bf16", False)
        threads = h.get("threads", "?")
        table = tables[i]
        balance = h.get("rate_balance", 0.0)
        lr = f"{h['lr']:g}" + (" (encoder only)" if h.get("encoder_only") else "")
        data = phase_data(h)
        rows.append(f"| {h['from_step']} | {until} | {lr} | {dlr:g} | {glr:g} | {table} | {balance:g} | "
                    f"{h['batch']} | {h['crop']} | {'bfloat16' if bf16 else 'float32'} | {threads} | {h['device']} | "
                    f"{'all' if data == DEFAULT_DATA else f'`{data}`'} |")
        # phases recorded before ``from_slim`` existed: a fresh Adam that no λ change, grow or widening explains
        if h.get("from_slim") or (h.get("fresh_optimizer") and not h.get("remapped_gains") and not h.get("grown")
                                  and not h.get("widened")):
            commands.append("python -m training slim runs/main/last.pt runs/main/last.pt")  # resumed from a slim one
        if h.get("data_from"):  # how a phase's own data folder was made (``subset``)
            commands.append(_as_run_today(h["data_from"]))
        commands.append(f"python -m training fit --run runs/main --steps {until} --lr {h['lr']:g} "
                        f"--density-lr {dlr:g} --gain-lr {glr:g} --batch {h['batch']} --crop {h['crop']} "
                        f"--lambdas {table} --rate-balance {balance:g} "
                        f"--threads {threads if threads != '?' else 0} {'--bf16' if bf16 else '--no-bf16'}"
                        + (" --resume" if i else "") + (f" --grow {','.join(map(str, h['grown']))}" if h.get("grown") else "")
                        + (f" --grow-analysis {','.join(map(str, h['grown_analysis']))}"
                           if h.get("grown_analysis") else "")
                        + (f" --context {h['context']}" if h.get("context") else "")
                        + (f" --widen {h['widened']}" if h.get("widened") else "")
                        + (" --encoder-only" if h.get("encoder_only") else "")
                        + (f" --data {data}" if data != DEFAULT_DATA else "")
                        + (f" --device {h['device']}" if h["device"] != "cpu" else ""))
    history = "\n".join(rows)
    switches = [h["from_step"] for h, a, b in zip(hist[1:], tables, tables[1:]) if a != b]
    table_note = "".join(f"; from step {s:,} on, quality 1 and 4 stand for other λ (the λ table changed), so rows "
                         f"before and after it are not comparable" for s in switches)
    curve = "\n".join(
        f"| {v['step']:,} | " + " | ".join(f"{v[q]['bpp']:.3f} / {v[q]['psnr']:.2f}" for q in ("q1", "q4", "q8")) + " |"
        for v in train.get("validation", []))
    fit = train.get("hyperfit")
    if fit:
        commands.append(f"python -m training hyperfit runs/main/last.pt runs/main/hyperfit.pt "
                        f"--steps {fit['steps']} --batch {fit['batch']} --lr {fit['lr']:g} "
                        f"--density-lr {fit['density_lr']:g} --threads {fit['threads']}")
    reproduce = "\n".join(commands)
    export_from = "runs/main/hyperfit.pt" if fit else "runs/main/last.pt"
    return f"""# CNNZ weights `{info['file']}` (model id `{info['model_id']}`)

sha256 `{info['sha256']}` ({info['bytes'] / 1e6:.1f} MB, `.npz` read with `allow_pickle=False`).

## Architecture
Mean-scale hyperprior autoencoder with per-quality gain vectors (one model for quality 1..8):
- analysis: 4 × (5×5 conv, stride 2) with simplified GDN, N={cfg['N']}, M={cfg['M']} latent channels;
- synthesis: 4 sub-pixel 3×3 convolutions with inverse simplified GDN, widths {tuple(cfg['dec'])} → 3,
  {_residual_note(cfg)}{Config.from_dict(cfg).synthesis_macs() / 1e3:.1f}k multiply-adds per pixel;
- hyper-analysis 3 convs to Nz={cfg['Nz']} channels; hyper-synthesis (conv, 2 sub-pixel convs, 1×1) exported
  as a fixed-point integer network (`pillow_cnnz/hyper.py`) whose integer scale index picks one of
  {meta['scale']['count']} latent tables; factorized prior tables for ẑ.
{_analysis_note(cfg)}{_int8_note(info)}{_context_note(meta)}- latent tables: {_tables_note(meta)}
- parameters: {meta['parameters']:,} in training, of which synthesis {meta['decoder_parameters']:,}. The file also
  keeps the float hyper-synthesis, ẑ prior and context: the encoder's latent refinement (`method` 1-6,
  `pillow_cnnz/refine.py`) needs the rate as a differentiable function; decoding never reads them.

## Training
- data: `{args['data']}` (594 photos: BSDS500 + USC-SIPI/Waterloo/Wikipedia, see `data/README.md`;
  a phase whose data column names another folder trained on a subset of it, made by the `subset` command above its `fit`);
  validation `{args['val']}`; Kodak never used for training or selection.
- loss: bpp + λ(q)·255²·MSE, λ interpolated geometrically between the {len(meta['lambdas'])} levels of the
  table (`--lambdas`: {'; '.join(f'{name} = {list(table)}' for name, table in LAMBDA_TABLES.items())});
  the shipped weights use {meta['lambdas']}. q drawn uniformly in [1, 8] per crop; with `--rate-balance B`
  each crop's loss is weighted by (λ/λ_mid)^-B so low qualities are not drowned by high ones.
  A phase on another table than the checkpoint's first remaps the per-quality gains (interpolated in log λ).
  Adam, gradient norm clipped at 1.
- steps: {train['step']:,}; wall time {train['seconds'] / 3600:.2f} h; hardware: {train['hardware']}.
{_synthesis_note(meta)}
| from step | to step | lr | density lr | gain lr | λ table | rate balance | batch | crop | transforms | threads | device | data |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{history}

Reproduce: one `fit` call per row (each resumes from `runs/main/last.pt`), then the export.
Crops are seeded, but multi-threaded CPU training (float32 or bfloat16) is not bit-reproducible: a rerun
follows the same recipe and lands within noise of these figures. The resumable checkpoint itself is
committed as `checkpoints/last.pt` (model, step, phase history and RNG state; no optimizer state, which
would triple its size, so a resume from it starts a fresh Adam; the weights packed losslessly by
`slim`, which keeps it under 20 MB): to continue training,
`mkdir -p runs/main && cp checkpoints/last.pt runs/main/ && python -m training fit --run runs/main --resume ...`.

```sh
{reproduce}
python -m training export {export_from} --out weights
python -m training int8 --out weights
```
{_hyperfit_note(fit)}
Training-loop validation on `{args['val']}` (bpp / PSNR dB at quality 1, 4 and 8; rounded latents and
the model's own rate estimate, not real files){table_note}:

| step | q1 | q4 | q8 |
|---|---|---|---|
{curve or "| (none recorded) | | | |"}

## Measured vs Gaussian latent tables (`experiments/calibration`)
{_calibration_table(CALIBRATION_RESULTS)}
## Rate-distortion (real files through `img.save(..., quality=q)`, `benchmarks/rd.py`)
{_rd_table(results)}
"""
