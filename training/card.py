"""The model card (``weights/README.md``) and the training-phase page (``docs/training-phases.md``)
of exported weights, generated from the weights file's metadata, its manifest and the
rate-distortion results: ``python -m training card`` after new results; ``export`` writes them too.

The card stays short (files and hashes, architecture, training in brief, metrics, limitations;
under 100 lines for the shipped weights). The phase page holds what reproducing the weights
needs: every phase's settings, the commands that replay them, and the validation figures at the
end of each phase. ``docs/training.md`` explains the recipe around them.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np

from pillow_cnnz.heads import synthesis_levels
from pillow_cnnz.model import Config

from .data import DEFAULT_DATA, DEFAULT_VAL, RECORDED_DATA

RESULTS = "benchmarks/results"
# results folders (under RESULTS) whose summaries the card quotes, the first as the headline set:
# Kodak in the shipped runtime's default precision, then the validation photos
RD_SETS = "kodak-int8,val"
# the phase page's place relative to the weights folder's parent (``weights`` -> ``docs/...``)
PHASES_PAGE = Path("docs") / "training-phases.md"
# the image sets' parent folder then (as early phases recorded it) and now
_SETS_THEN = RECORDED_DATA.rsplit("/", 1)[0] + "/"
_SETS_NOW = DEFAULT_DATA.rsplit("/", 1)[0] + "/"
DEFAULT_SETS_NOTE = {  # what the default folders held for the shipped weights (data/README.md)
    DEFAULT_DATA: "594 photos (500 of BSDS500, 94 from USC-SIPI, Waterloo and Wikipedia)",
    DEFAULT_VAL: "6 Wikipedia photos",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="weights", help="folder of the weights file, manifest and model card")
    add_page_arguments(p)
    p.set_defaults(func=run)


def add_page_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``card`` and ``export`` share: where the results are, where the phase page goes."""
    p.add_argument("--results", default=RESULTS, help="where python -m benchmarks.rd wrote its result folders")
    p.add_argument("--rd-sets", default=RD_SETS,
                   help="result folders (under --results) the card quotes, comma-separated, the headline set first")
    p.add_argument("--phases", default=None, metavar="PATH",
                   help=f"the training-phase page (default: {PHASES_PAGE.as_posix()} beside the --out folder; '' for none)")


def run(args: argparse.Namespace) -> int:
    """Rewrite the model card and the phase page of the default weights of ``--out`` (no re-export)."""
    write(Path(args.out), Path(args.results), args.rd_sets.split(","), args.phases)
    return 0


def write(out: Path, results: Path, sets: list[str], phases_path: str | None = None) -> None:
    """Write ``out/README.md`` and the phase page for the default weights of ``out``."""
    info = default_weights(out)
    (out / "README.md").write_text(model_card(info, results, sets))
    page = out.resolve().parent / PHASES_PAGE if phases_path is None else Path(phases_path) if phases_path else None
    if page is not None:
        page.parent.mkdir(parents=True, exist_ok=True)
        card = Path(os.path.relpath((out / "README.md").resolve(), page.parent.resolve())).as_posix()
        page.write_text(phases_page(info, card))


def default_weights(out: Path) -> dict:
    """The default weights of ``out``: id, sha256, size, metadata, file name and int8 files (manifest)."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["models"][manifest["default"]]
    data = (out / entry["file"]).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    heads = entry.get("heads")
    if heads:
        with np.load(out / heads["file"], allow_pickle=False) as npz:
            heads = heads | {"meta": json.loads(str(npz["meta"]))}
    return {"model_id": manifest["default"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "meta": meta, "file": entry["file"], "int8": entry.get("int8"), "heads": heads}


# --------------------------------------------------------------------------- the phase history


def phases(history: list[dict]) -> list[dict]:
    """The history with each resume that changed no setting merged into the phase before it."""
    def setting(h: dict) -> dict:  # phases recorded before the data folder was: the default one
        return {k: v for k, v in h.items() if k not in ("from_step", "seeded_gdn")} | {"data": phase_data(h)}

    merged: list[dict] = []
    for h in history:
        if not merged or setting(h) != setting(merged[-1]):
            merged.append(h)
    return merged


def spans(train: dict) -> list[tuple[dict, int, int]]:
    """Each phase with its first step and the step it ended at."""
    hist = phases(train["history"])
    ends = [h["from_step"] for h in hist[1:]] + [train["step"]]
    return [(h, h["from_step"], end) for h, end in zip(hist, ends)]


def as_run_today(command: str) -> str:
    """A command or folder recorded in a checkpoint or weights file, as it runs from a checkout today
    (the training code was ``pillow_cnnz.train`` and the image sets sat in ``../shared/data`` before
    both moved into the repository)."""
    return command.replace("python -m pillow_cnnz.train ", "python -m training ").replace(_SETS_THEN, _SETS_NOW)


def phase_data(h: dict) -> str:
    """The training images of a phase: its own folder, or the default where it recorded none."""
    return as_run_today(h.get("data", DEFAULT_DATA))


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    """A figure for the card, with a true minus sign; an en dash where it was not measured."""
    return "–" if value is None else f"{value:{spec}}{unit}".replace("-", "−")


# --------------------------------------------------------------------------- the model card


def model_card(info: dict, results: Path, sets: list[str] | None = None) -> str:
    """The model card of the weights ``info`` describes (``export``'s or ``default_weights``' dict),
    with the figures of the ``sets`` result folders under ``results`` that were made with them."""
    meta = info["meta"]
    found = rd_results(results, RD_SETS.split(",") if sets is None else sets, info["model_id"])
    stem = info["file"].removesuffix(".npz")
    return f"""# Model card: CNNZ weights `{stem}` (model `{info['model_id']}`)

The weights the `pillow-cnnz` codec ships with and decodes `.cnnz` files with. How they were
trained, and the commands that reproduce them: [docs/training.md](../docs/training.md).

## Files

{_files(info)}
## Architecture

A mean-scale hyperprior autoencoder (Ballé et al. 2018, Minnen et al. 2018) with one model for
every quality from 1 to 8 through per-quality gain vectors (Cui et al. 2021):

{_architecture(meta, info.get("heads"))}
## Training

{_training(meta)}
## Metrics

{_metrics(found)}
## Limitations

{_limitations(found[0] if found else None)}
## License

Distributed with the code under the MIT license ([LICENSE](../LICENSE)). Where the training
images come from: [docs/training.md](../docs/training.md#data).
"""


def _files(info: dict) -> str:
    ctx = bool(info["meta"].get("context"))
    rows = [f"| `{info['file']}` ({info['bytes'] / 1e6:.1f} MB) | the networks, the integer hyper"
            f"{' and context networks' if ctx else ' network'}, the latent tables | `{info['sha256']}` |"]
    spec = info.get("int8")
    if spec:
        rows.append(f"| `{spec['file']}` | per-channel activation ranges of the layers that run in int8 | "
                    f"`{spec['sha256']}` |")
        if spec.get("rounded"):
            rows.append(f"| `{spec['rounded']['file']}` | the synthesis' int8 weights, rounded by GPTQ | "
                        f"`{spec['rounded']['sha256']}` |")
    heads = info.get("heads")
    if heads:
        rows.append(f"| `{heads['file']}` | the reduced-resolution output heads (1/{', 1/'.join(sorted(heads['meta']['heads'], key=int))}) | "
                    f"`{heads['sha256']}` |")
    rows.append("| `manifest.json` | the default model, each file's hash, and old models decoded by this one | |")
    decodes = info["meta"].get("decodes", [])
    older = (f" Files written with model{'s' if len(decodes) > 1 else ''} {', '.join(f'`{m}`' for m in decodes)} "
             f"(earlier weights with the same latents and entropy model) decode with these weights."
             if decodes else "")
    return ("| file | contents | sha256 |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            + _wrap("The model id is the first 16 hex digits of the weights file's sha256; every `.cnnz` header "
                    "names the model it needs. Each file is hash-checked when loaded, and `.npz` files are read "
                    f"with `allow_pickle=False`.{older}"))


def _architecture(meta: dict, heads: dict | None = None) -> str:
    cfg = Config.from_dict(meta["config"])
    analysis = (f"; residual blocks ({cfg.N} channels) {' / '.join(map(str, cfg.ares))} at "
                f"{_and(f'1/{2 ** (k + 1)}' for k in range(len(cfg.ares)))} resolution" if any(cfg.ares) else "")
    synthesis = (f"; residual blocks {' / '.join(map(str, cfg.res))} after the "
                 f"{_and([f'{w}-' for w in cfg.dec[:-1]] + [str(cfg.dec[-1])])}-channel levels" if any(cfg.res) else "")
    items = [
        f"analysis `g_a`: 4 × (5×5 convolution, stride 2) with simplified GDN, {cfg.N} channels, to {cfg.M} latent "
        f"channels{analysis}; {cfg.analysis_macs() / 1e3:.1f}k multiply-adds per pixel (encode only);",
        f"synthesis `g_s`: 4 sub-pixel 3×3 convolutions with inverse simplified GDN, widths "
        f"{', '.join(map(str, cfg.dec))} → 3{synthesis}; {cfg.synthesis_macs() / 1e3:.1f}k multiply-adds per pixel;",
        f"hyperprior: hyper-analysis of 3 convolutions to {cfg.Nz} channels; hyper-synthesis exported as a "
        f"fixed-point integer network whose scale index picks one of {meta['scale']['count']} latent tables; "
        "factorized prior tables for ẑ;",
    ]
    if meta.get("context"):
        items.append(f"checkerboard context (He et al. 2021, {meta['context']['channels']} channels) as a fixed-point "
                     "integer network: each band codes its anchor latents first, then the rest with parameters "
                     "refined from the anchors;")
    tables = meta.get("y_tables", "gaussian")
    items.append("latent tables: ideal discretized Gaussians at each scale index's nominal scale;" if tables == "gaussian"
                 else f"latent tables measured on {tables['images']} training images (centre {tables['crop']}² crops) "
                      "at qualities 1 to 8;")
    if heads:
        levels = synthesis_levels(meta["config"])
        taps = [f"1/{s} after layer {h['tap']} of `g_s` ({levels[h['tap']][0]} channels at 1/{levels[h['tap']][1]}; "
                f"{h['hidden']} hidden channels, {h['trained_steps']:,} steps)"
                for s, h in sorted(heads["meta"]["heads"].items(), key=lambda kv: int(kv[0]))]
        items.append("reduced-resolution output heads (3×3 convolution, ReLU, sub-pixel 3×3 convolution to RGB), "
                     f"trained with everything else frozen against Lanczos downscales of training crops "
                     f"(`training heads`): {_and(taps)};")
    items.append(f"{meta['parameters']:,} parameters in training, {meta['decoder_parameters']:,} of them in the "
                 "synthesis. The file also keeps the float entropy model, which only the encoder's `method` 1–6 uses.")
    return _bullets(items)


def _and(words) -> str:
    """``a, b and c``."""
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _wrap(text: str, indent: str = "") -> str:
    """``text`` wrapped at 100 columns, continuation lines indented by ``indent``."""
    return textwrap.fill(text, 100, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False) + "\n"


def _bullets(items: list[str]) -> str:
    return "".join(_wrap(f"- {item}", "  ") for item in items)


def _training(meta: dict) -> str:
    train = meta["training"]
    parts = spans(train)
    last = parts[-1][0]
    data = phase_data(parts[0][0])
    data_item = f"data: `{data}`" + (f", {DEFAULT_SETS_NOTE[data]}" if data in DEFAULT_SETS_NOTE else "")
    for h, start, end in parts:
        if phase_data(h) != data:
            data_item += (f"; steps {start:,}–{end:,} on `{phase_data(h)}`"
                          + (", a subset of it (`subset`)" if h.get("data_from") else ""))
    val = as_run_today(train["args"].get("val", DEFAULT_VAL))
    data_item += (f"; validation on `{val}`" + (f", {DEFAULT_SETS_NOTE[val]}" if val in DEFAULT_SETS_NOTE else "")
                  + "; Kodak never used for training or selection;")
    lambdas = meta["lambdas"]
    bf16 = sum(end - start for h, start, end in parts if h.get("bf16"))
    autocast = f"bfloat16 autocast for {100 * bf16 / train['step']:.0f} % of the steps" if bf16 else "float32 throughout"
    crops = _and(f"{c}²" for c in sorted({h["crop"] for h, _, _ in parts}))
    items = [data_item,
             f"loss: bpp + λ(q)·255²·MSE, q uniform in [1, 8] per crop, λ from {lambdas[0]:g} to {lambdas[-1]:g} "
             f"(`{last.get('lambdas', 'zoo')}`), rate balance {last.get('rate_balance', 0):g}; Adam, gradient norm "
             f"clipped at 1; {autocast};",
             f"{train['step']:,} steps ({train['seconds'] / 3600:.1f} h) on {crops} crops; {train['hardware']};"]
    fit = train.get("hyperfit")
    if fit:
        items.append(f"then the hyperprior alone on whole images, {fit['steps']:,} steps (`hyperfit`, the transforms "
                     "frozen);")
    synth = train.get("synthesis")
    if synth:
        items.append(f"then {synth['steps']:,} steps of the synthesis alone (`distill`, every other array frozen);")
    grew = [what for what, keys in (("residual blocks added as identities", ("grown", "grown_analysis")),
                                    (f"latents widened to {Config.from_dict(meta['config']).M}", ("widened",)),
                                    ("the context added as no change", ("context",)))
            if any(h.get(k) for h, _, _ in parts for k in keys)]
    items.append((f"the network grew during training ({', '.join(grew)}); " if grew else "")
                 + "every phase, its settings and the commands: [docs/training-phases.md](../docs/training-phases.md).")
    return _bullets(items)


def rd_results(results: Path, sets: list[str], model_id: str) -> list[dict]:
    """The rate-distortion summaries of ``results/<set>`` whose CNNZ results were made with
    ``model_id`` (``python -m benchmarks.rd`` records it), in the order of ``sets``."""
    found = []
    for name in sets:
        folder = results / name
        if not (folder / "summary.json").exists():
            continue
        summary = json.loads((folder / "summary.json").read_text())
        points = json.loads((folder / "cnnz.json").read_text()) if (folder / "cnnz.json").exists() else {}
        if points.get("meta", {}).get("model", model_id) != model_id or "cnnz" not in summary["codecs"]:
            continue
        dataset = Path(summary["meta"]["dataset"]).name
        found.append({"name": "Kodak" if dataset == "kodak" else dataset, "images": summary["meta"]["n_images"],
                      "file": (folder / "summary.md").as_posix(), "platform": summary["meta"].get("platform"),
                      "codecs": summary["codecs"], "points": points.get("results", {})})
    return found


def _metrics(found: list[dict]) -> str:
    if not found:
        return ("No rate-distortion results of these weights yet: run `python -m benchmarks.rd` "
                "(see [docs/performance.md](../docs/performance.md)), then `python -m training card`.\n")
    platforms = ", ".join(sorted({s["platform"] for s in found if s["platform"]})) or "the machine named there"
    files = ", ".join(f"`{s['file']}`" for s in found)
    rows = []
    for s in found:
        c = s["codecs"]["cnnz"]
        at = c.get("psnr_at_bpp", {})
        lo, hi = c["bpp_range"]
        rows.append(f"| {s['name']}, {s['images']} images | {_fmt(c.get('bd_rate_psnr_vs_jpeg'), '+.1f', ' %')} / "
                    f"{_fmt(c.get('bd_rate_msssim_vs_jpeg'), '+.1f', ' %')} | "
                    f"{_fmt(c.get('bd_rate_psnr_vs_avif'), '+.1f', ' %')} | "
                    f"{' / '.join(_fmt(at.get(b), '.2f') for b in ('0.25', '0.5', '1.0'))} dB | {lo:.3f} … {hi:.3f} |")
    text = (_wrap("Real files through `img.save()`, bpp and PSNR averaged per image, CNNZ in the default precision "
                  f"of the machine that ran them ({platforms}); JPEG and AVIF from the same summaries ({files}):")
            + "\n| data | BD-rate vs JPEG (PSNR / MS-SSIM) | BD-rate vs AVIF (PSNR) | PSNR at 0.25 / 0.5 / 1.0 bpp | "
            "bpp range |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    points = found[0]["points"]
    picked = [i for i, q in enumerate(points.get("quality", [])) if q in (1, 4, 8)]
    if picked:
        text += ("\n| quality | " + " | ".join(f"{points['quality'][i]:g}" for i in picked) + " |\n|---|"
                 + "---|" * len(picked) + f"\n| {found[0]['name']} bpp / PSNR | "
                 + " | ".join(f"{points['bpp'][i]:.3f} / {points['psnr-rgb'][i]:.2f} dB" for i in picked) + " |\n")
    return text + "\n" + _wrap("That machine's CPU and precision, every codec compared, speed, and how to rerun: "
                               "[docs/performance.md](../docs/performance.md).")


def _limitations(headline: dict | None) -> str:
    items = []
    if headline:
        cnnz, avif, name = headline["codecs"]["cnnz"], headline["codecs"].get("avif", {}), headline["name"]
        if "bd_rate_msssim_vs_avif" in cnnz:
            items.append(f"Trained for MSE: on {name} its BD-rate against AVIF is "
                         f"{_fmt(cnnz.get('bd_rate_psnr_vs_avif'), '+.1f', ' %')} in PSNR but "
                         f"{_fmt(cnnz['bd_rate_msssim_vs_avif'], '+.1f', ' %')} in MS-SSIM.")
        points = headline["points"]
        if points.get("psnr-rgb"):
            top = (f"The high-rate end is capped by the transforms: quality {points['quality'][-1]:g} stops at "
                   f"{points['psnr-rgb'][-1]:.1f} dB on {name} ({points['bpp'][-1]:.2f} bpp)")
            ours, theirs = cnnz.get("psnr_at_bpp", {}).get("1.0"), avif.get("psnr_at_bpp", {}).get("1.0")
            if ours and theirs:
                top += f", {abs(theirs - ours):.1f} dB {'under' if theirs > ours else 'above'} AVIF at 1 bpp"
            items.append(top + ". Not meant for near-lossless use.")
    items += ["Trained on natural photos, many of them JPEG originals; screenshots, text and drawings are not "
              "measured and likely code worse.",
              "8 bits per channel only; alpha is stored losslessly beside the coded colour."]
    if headline and headline["codecs"]["cnnz"].get("mean_decoding_time"):
        codecs = headline["codecs"]
        peers = [f"{_ms(codecs[p]['mean_decoding_time'])} for {p.upper()}" for p in ("avif", "webp", "jpeg")
                 if codecs.get(p, {}).get("mean_decoding_time")]
        items.append(f"Decoding is much slower than classic codecs': {_ms(codecs['cnnz']['mean_decoding_time'])} a "
                     f"{headline['name']} image in the rate-distortion run ({headline['platform']})"
                     + (f", against {_and(peers)}" if peers else "") + ".")
    items += ["Pixels depend on the precision and device within a level or two; the latents a file decodes to "
              "do not.",
              "A file needs these weights (or weights whose manifest says they decode its model)."]
    return _bullets(items)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


# --------------------------------------------------------------------------- the phase page


def phases_page(info: dict, card: str = "../weights/README.md") -> str:
    """Every training phase of the weights ``info`` describes: settings, the commands that replay
    them, validation at each phase's end. ``card`` is the model card's path relative to the page."""
    meta = info["meta"]
    train = meta["training"]
    parts = spans(train)
    rows, commands = [], []
    for i, (h, start, end) in enumerate(parts):
        dlr, glr = h.get("density_lr", h["lr"]), h.get("gain_lr", h["lr"])
        bf16, threads = h.get("bf16", False), h.get("threads", "?")
        table = h.get("lambdas", "zoo")  # phases before tables were recorded used the zoo's
        balance = h.get("rate_balance", 0.0)
        lr = f"{h['lr']:g}" + (" (encoder only)" if h.get("encoder_only") else "")
        data = phase_data(h)
        rows.append(f"| {start} | {end} | {lr} | {dlr:g} | {glr:g} | {table} | {balance:g} | {h['batch']} | "
                    f"{h['crop']} | {'bfloat16' if bf16 else 'float32'} | {threads} | {h['device']} | "
                    f"{'all' if data == DEFAULT_DATA else f'`{data}`'} |")
        # phases recorded before ``from_slim`` existed: a fresh Adam that no λ change, grow or widening explains
        if h.get("from_slim") or (h.get("fresh_optimizer") and not h.get("remapped_gains") and not h.get("grown")
                                  and not h.get("widened")):
            commands.append("python -m training slim runs/main/last.pt runs/main/last.pt")  # resumed from a slim one
        if h.get("data_from"):  # how a phase's own data folder was made (``subset``)
            commands.append(as_run_today(h["data_from"]))
        commands.append(f"python -m training fit --run runs/main --steps {end} --lr {h['lr']:g} "
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
    fit = train.get("hyperfit")
    if fit:
        commands.append(f"python -m training hyperfit runs/main/last.pt runs/main/hyperfit.pt "
                        f"--steps {fit['steps']} --batch {fit['batch']} --lr {fit['lr']:g} "
                        f"--density-lr {fit['density_lr']:g} --threads {fit['threads']}")
    export_from = "runs/main/hyperfit.pt" if fit else "runs/main/last.pt"
    commands.append(f"python -m training export {export_from} --out weights")
    synth = train.get("synthesis")
    if synth:
        distill = as_run_today(synth["command"]).replace(f" --data {DEFAULT_DATA}", "")
        if "--teacher" not in distill:
            distill = distill.replace("python -m training distill", "python -m training distill --teacher "
                                      f"{export_from} --run runs/distill --steps {synth['steps']}", 1)
        commands += [distill, "python -m training export runs/distill/last.pt --out weights --synthesis-only"]
    commands.append("python -m training int8 --out weights")
    subset = any(phase_data(h) != DEFAULT_DATA for h, _, _ in parts)
    val = as_run_today(train["args"].get("val", DEFAULT_VAL))
    return (f"# Training phases of model `{info['model_id']}`\n\n"
            + _wrap(f"Generated by `python -m training card` from the phase history recorded in `{info['file']}` "
                    f"(the [model card]({card})); change the generator, `training/card.py`, not this page. What "
                    "each phase changed and why: [training.md](training.md#phases).")
            + "\n## Settings\n\n"
            + _wrap("One row per phase (a resume that changed no setting belongs to the phase before it). Learning "
                    "rates of the transforms, the ẑ density and the per-quality gains; \"transforms\" is the "
                    f"precision they trained in; \"data\" is `all` for `{DEFAULT_DATA}`"
                    + (", or the subset a phase trained on." if subset else "."))
            + "\n| from step | to step | lr | density lr | gain lr | λ table | rate balance | batch | crop | "
              "transforms | threads | device | data |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n"
            + _synthesis_note(meta)
            + "\n## Commands\n\n"
            + _wrap("One `fit` call per row, each resuming from `runs/main/last.pt` (`runs/` is ignored by git), "
                    "then the export. `slim` drops the optimizer state where a phase started with a fresh Adam"
                    + ("; a phase on a subset trains on the folder the `subset` command above it makes. " if subset
                       else ". ")
                    + "Crops are seeded, but multi-threaded CPU training (float32 or bfloat16) is not "
                    "bit-reproducible: a rerun follows the same recipe and lands within noise of these figures.")
            + "\n```sh\n" + "\n".join(commands) + "\n```\n"
            + _hyperfit_note(fit, train)
            + "\n## Validation during training\n\n"
            + _wrap(f"On `{val}`, at the end of each phase: bpp / PSNR dB at quality 1, 4 and 8, from rounded "
                    "latents and the model's own rate estimate (not real files). A quality stands for another λ "
                    "on another λ table, so rows on different tables are not comparable.")
            + "\n| step | λ table | q1 | q4 | q8 |\n|---|---|---|---|---|\n"
            + _validation_rows(train, parts) + "\n")


def _validation_rows(train: dict, parts: list[tuple[dict, int, int]]) -> str:
    """The last validation of each phase."""
    rows = []
    for h, start, end in parts:
        inside = [v for v in train.get("validation", []) if start < v["step"] <= end]
        if inside:
            v = inside[-1]
            rows.append(f"| {v['step']:,} | {h.get('lambdas', 'zoo')} | "
                        + " | ".join(f"{v[q]['bpp']:.3f} / {v[q]['psnr']:.2f}" for q in ("q1", "q4", "q8")) + " |")
    return "\n".join(rows) or "| (none recorded) | | | | |"


def _synthesis_note(meta: dict) -> str:
    """The synthesis retrained after the table's phases (``distill``, then ``export --synthesis-only``)."""
    synth = meta["training"].get("synthesis")
    if not synth:
        return ""
    decodes = meta.get("decodes", [])
    return "\n" + _wrap(
        f"Then the synthesis alone: {synth['steps']:,} steps of `distill` ({synth['seconds'] / 3600:.2f} h, "
        f"{synth.get('device', 'cpu')}; lr {synth.get('lr', '?')}, batch {synth.get('batch', '?')}, "
        f"{synth.get('crop', '?')}² crops, rate balance {synth.get('rate_balance', 0):g}; every other weight frozen), "
        f"exported with `export --synthesis-only`: files of model{'s' if len(decodes) > 1 else ''} "
        f"{', '.join(f'`{m}`' for m in decodes)} (the same latents and entropy model) decode with this one.")


def _hyperfit_note(fit: dict | None, train: dict) -> str:
    if not fit:
        return ""
    first, last = fit["validation_bpp"][0], fit["validation_bpp"][-1]
    change = ", ".join(f"q{q} {first[f'q{q}']:.3f} → {last[f'q{q}']:.3f}" for q in (1, 4, 8))
    decay = ", both decaying to a tenth" if fit.get("decay") else ""
    return "\n" + _wrap(
        f"**Hyperprior fitted on whole images** (`hyperfit`): after the crops, `h_a`, `h_s` and the ẑ density alone "
        f"trained {fit['steps']:,} steps of {fit['batch']} whole training images each (lr {fit['lr']:g}, density lr "
        f"{fit['density_lr']:g}{decay}; {fit['seconds'] / 60:.0f} min on {fit['threads']} threads) on the real code "
        "length of the rounded symbols, with `g_a`, `g_s` and the gains frozen. On crops ẑ is a 2×2 or 4×4 grid, "
        "all border; on whole images the fitted hyperprior codes the same latents in fewer bits. Validation bpp "
        f"(`{as_run_today(fit.get('val', train['args'].get('val', DEFAULT_VAL)))}`, ideal Gaussian code length): "
        f"{change}.")
