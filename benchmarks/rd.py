#!/usr/bin/env python
"""Rate-distortion benchmark: CNNZ against the classic codecs Pillow can drive.

Every codec is used through Pillow, exactly as a user would:
``img.save(buf, format=..., **options)`` to encode and
``Image.open(buf).convert("RGB")`` to decode.  For each codec and quality
point it measures, per image, the real size of the encoded buffer (bits per
pixel), PSNR and MS-SSIM on 8-bit RGB, and the encode / decode wall time;
values are then averaged over images (CompressAI's convention: mean of
per-image PSNR, not PSNR of the mean MSE).

Outputs under ``--out``:

* ``<codec>.json``: CompressAI results schema
  ``{"name", "description", "results": {"bpp", "psnr-rgb", "ms-ssim-rgb",
  "encoding_time", "decoding_time", "quality"}}`` plus a ``meta`` block;
* ``summary.json`` / ``summary.md``: BD-rate (PCHIP, see ``bdrate.py``) of
  every codec against JPEG and AVIF, on PSNR and on MS-SSIM (dB), BD-PSNR, and
  PSNR interpolated at 0.25 / 0.5 / 1.0 / 1.5 bpp; with ``--anchors``, also
  the BD-rate (PSNR) of every codec against each published curve of that
  folder (CompressAI's JSON: VTM, AV1, the learned models), and the anchors'
  own PSNR at those rates, as rows of their own marked "published";
* ``rd.png``: rate-distortion plot of every codec (anchors dashed).

``avif-444-s2`` is AVIF as a user tuning for size sets it (speed 2, 4:4:4);
``avif`` is Pillow's default (speed 6, 4:2:0).

Example (from the repository root)::

    python -m benchmarks.rd --data data/kodak --out benchmarks/results/kodak --anchors data/anchors/kodak
    python -m benchmarks.rd --data data/kodak --out /tmp/rd --codecs jpeg,webp,avif --limit 3
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, features

from benchmarks._common import DEFAULT_KODAK
from benchmarks.bdrate import bd_psnr, bd_rate

HERE = Path(__file__).resolve().parent

IMAGE_EXTENSIONS = {".png", ".ppm", ".bmp", ".tif", ".tiff"}
REFERENCES = ("jpeg", "avif")
PSNR_AT_BPP = (0.25, 0.5, 1.0, 1.5)

# Quality sweeps of the classic codecs, chosen so that on Kodak (768x512) the
# rates span roughly 0.1 - 2 bpp and beyond, with enough points for BD-rate.
DEFAULT_QUALITIES: dict[str, list[float]] = {
    "cnnz": [1, 2, 3, 4, 5, 6, 7, 8],
    "cnnz-m6": [1, 2, 3, 4, 5, 6, 7, 8],  # the same decoder, latents refined at encode (method=6)
    "jpeg": [5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "webp": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "avif": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
    "avif-444-s2": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
    "heic": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60],  # x265 saturates above ~60
    "jxl": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
}
ALL_CODECS = list(DEFAULT_QUALITIES)
CNNZ_METHODS = {"cnnz": 0, "cnnz-m6": 6}  # CNNZ codec names and the encode effort (``method``) each saves with
SLOW_CODECS = ("cnnz-m6", "avif-444-s2")  # many times their peers' encode time: run when named in --codecs
AVIF_SETTINGS = {"avif": (6, "4:2:0"), "avif-444-s2": (2, "4:4:4")}  # codec name -> (speed, subsampling)


def cnnz_model_id() -> str:
    """The installed default weights: CNNZ results of other weights are not merged by ``--reuse``."""
    from pillow_cnnz import weights

    return weights.default_model_id().hex()


# --------------------------------------------------------------------------- metrics


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two uint8 arrays of the same shape (capped at 100 dB)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse <= 1e-10 * peak * peak:
        return 100.0
    return float(10.0 * math.log10(peak * peak / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of a CxHxW array over its last two axes, 'valid' region only."""
    from numpy.lib.stride_tricks import sliding_window_view

    y = sliding_window_view(x, win.size, axis=2) @ win
    return np.einsum("chwk,k->chw", sliding_window_view(y, win.size, axis=1), win)


def _to_chw(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _downsample(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of a CxHxW array (an odd last row / column is dropped)."""
    c, h, w = x.shape[0], (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    return x[:, :h, :w].reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


class MsSsim:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) against a fixed reference image.

    Standard settings: 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363,
    0.1333), Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03,
    'valid' filtering, 2x2 average pooling between scales.  Computed per
    channel and averaged over channels (as pytorch_msssim / CompressAI do on
    RGB).  Odd sizes are cropped by one pixel before pooling.  The smallest
    scale needs at least 11 pixels, i.e. images of at least 176x176.

    The reference's pyramid and local statistics are computed once, so scoring
    many decoded versions of one image costs about 40 % less.
    """

    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])

    def __init__(self, reference: np.ndarray, peak: float = 255.0):
        self.shape = np.shape(reference)
        self.c1 = (0.01 * peak) ** 2
        self.c2 = (0.03 * peak) ** 2
        self.win = _gaussian_window(11, 1.5)
        levels = self.weights.size
        if min(self.shape[:2]) < self.win.size * 2 ** (levels - 1):
            raise ValueError(f"image {self.shape[:2]} too small for {levels}-scale MS-SSIM")
        x = _to_chw(reference)
        self._ref = []  # per scale: (x, mu_x, var_x)
        for level in range(levels):
            mu = _filter_valid(x, self.win)
            var = _filter_valid(x * x, self.win) - mu * mu
            self._ref.append((x, mu, var))
            if level < levels - 1:
                x = _downsample(x)

    def __call__(self, image: np.ndarray) -> float:
        if np.shape(image) != self.shape:
            raise ValueError(f"shape mismatch {np.shape(image)} != {self.shape}")
        y = _to_chw(image)
        levels = self.weights.size
        terms = []
        for level, (x, mu_x, var_x) in enumerate(self._ref):
            mu_y = _filter_valid(y, self.win)
            var_y = _filter_valid(y * y, self.win) - mu_y * mu_y
            cov = _filter_valid(x * y, self.win) - mu_x * mu_y
            cs_map = (2.0 * cov + self.c2) / (var_x + var_y + self.c2)
            if level < levels - 1:
                terms.append(cs_map.mean(axis=(1, 2)))
                y = _downsample(y)
            else:
                lum_map = (2.0 * mu_x * mu_y + self.c1) / (mu_x * mu_x + mu_y * mu_y + self.c1)
                terms.append((lum_map * cs_map).mean(axis=(1, 2)))
        t = np.maximum(np.stack(terms, axis=0), 0.0)  # (levels, C); relu as pytorch_msssim
        return float(np.prod(t ** self.weights[:, None], axis=0).mean())


def ms_ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """MS-SSIM of two HxWxC (or HxW) images; see :class:`MsSsim`."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shape mismatch {np.shape(a)} != {np.shape(b)}")
    return MsSsim(a, peak)(b)


def ms_ssim_db(v: float) -> float:
    return -10.0 * math.log10(max(1.0 - v, 1e-10))


# --------------------------------------------------------------------------- codecs


@dataclass
class Codec:
    name: str
    pil_format: str
    description: str
    options: Callable[[float], dict]
    qualities: list[float] = field(default_factory=list)


def _pkg_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


def _pil_desc(feature: str, lib: str) -> str:
    v = features.version(feature)
    return f"Pillow {Image.__version__} ({lib} {v or '?'})"


def make_codec(name: str) -> tuple[Codec | None, str]:
    """Return (codec, note); codec is None when it cannot be used here."""
    pil = Image.__version__
    if name in CNNZ_METHODS:
        method = CNNZ_METHODS[name]
        try:
            import pillow_cnnz  # noqa: F401  (registers the plugin)
        except Exception as exc:  # the codec may be mid-development
            return None, f"pillow_cnnz failed to import: {type(exc).__name__}: {exc}"
        Image.init()
        if "CNNZ" not in Image.SAVE:
            return None, "pillow_cnnz imported but did not register a CNNZ save handler"
        ver = getattr(pillow_cnnz, "__version__", "?")
        return Codec(
            name,
            "CNNZ",
            f"pillow_cnnz {ver} learned codec via Pillow {pil} (img.save(format='CNNZ', quality=q"
            + (f", method={method}))" if method else "))"),
            lambda q: {"quality": float(q), **({"method": method} if method else {})},
        ), ""
    if name == "jpeg":
        return Codec(
            "jpeg",
            "JPEG",
            _pil_desc("libjpeg_turbo", "libjpeg-turbo") + ", 4:2:0, optimize=True",
            lambda q: {"quality": int(q), "subsampling": 2, "optimize": True},
        ), ""
    if name == "webp":
        if not features.check("webp"):
            return None, "Pillow built without WebP"
        return Codec(
            "webp",
            "WEBP",
            _pil_desc("webp", "libwebp") + ", lossy, method=6",
            lambda q: {"quality": int(q), "method": 6},
        ), ""
    if name in AVIF_SETTINGS:
        if not features.check("avif"):
            return None, "Pillow built without AVIF (PIL.features.check('avif') is False)"
        speed, subsampling = AVIF_SETTINGS[name]
        return Codec(
            name,
            "AVIF",
            _pil_desc("avif", "libavif") + f", {subsampling}, speed={speed}",
            lambda q: {"quality": int(q), "speed": speed, "subsampling": subsampling},
        ), ""
    if name == "heic":
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            enc = pillow_heif.libheif_info().get("HEIF", "?")
        except Exception as exc:
            return None, f"pillow-heif not importable ({type(exc).__name__}: {exc})"
        return Codec(
            "heic",
            "HEIF",
            f"pillow-heif {_pkg_version('pillow-heif')} via Pillow {pil} ({enc}), 4:2:0, default preset",
            lambda q: {"quality": int(q), "chroma": 420},
        ), ""
    if name == "jxl":
        try:
            import pillow_jxl  # noqa: F401  (registers the plugin)
        except Exception as exc:
            return None, f"pillow-jxl-plugin not importable ({type(exc).__name__}: {exc})"
        return Codec(
            "jxl",
            "JXL",
            f"pillow-jxl-plugin {_pkg_version('pillow-jxl-plugin')} (libjxl) via Pillow {pil}, effort=7",
            lambda q: {"quality": int(q), "effort": 7},
        ), ""
    return None, f"unknown codec {name!r} (known: {', '.join(ALL_CODECS)})"


def encode(codec: Codec, img: Image.Image, q: float) -> tuple[bytes, float]:
    buf = io.BytesIO()
    t0 = time.perf_counter()
    img.save(buf, format=codec.pil_format, **codec.options(q))
    dt = time.perf_counter() - t0
    return buf.getvalue(), dt


def decode(data: bytes) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    dt = time.perf_counter() - t0
    return np.asarray(rgb), dt


# --------------------------------------------------------------------------- per-image work

_WARMED: set[str] = set()
_CODECS: dict[str, Codec] = {}


def _worker_init(names: list[str], qualities: dict[str, list[float]]) -> None:
    for name in names:
        codec, _ = make_codec(name)
        if codec is not None:
            codec.qualities = qualities[name]
            _CODECS[name] = codec


def process_image(path: str, names: list[str]) -> dict:
    """Run every codec / quality on one image; returns per-point records or errors."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    img.load()
    ref = np.asarray(img)
    msssim_ref = MsSsim(ref)
    pixels = img.width * img.height
    out: dict = {"image": os.path.basename(path), "records": {}, "errors": {}}
    for name in names:
        codec = _CODECS[name]
        recs = []
        try:
            if name not in _WARMED:  # lazy initialisation (weights, libraries) is not timed
                data, _ = encode(codec, img, codec.qualities[len(codec.qualities) // 2])
                decode(data)
                _WARMED.add(name)
            for q in codec.qualities:
                data, t_enc = encode(codec, img, q)
                rec, t_dec = decode(data)
                if rec.shape != ref.shape:
                    raise RuntimeError(f"decoded shape {rec.shape} != original {ref.shape} at quality {q}")
                recs.append(
                    {
                        "quality": q,
                        "bpp": len(data) * 8.0 / pixels,
                        "psnr": psnr(ref, rec),
                        "ms_ssim": msssim_ref(rec),
                        "t_enc": t_enc,
                        "t_dec": t_dec,
                    }
                )
        except Exception as exc:
            out["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            continue
        out["records"][name] = recs
    return out


# --------------------------------------------------------------------------- aggregation


def _curve(results: dict, metric: str = "psnr-rgb") -> tuple[list[float], list[float]]:
    bpp = list(results["bpp"])
    if metric == "ms-ssim-db":
        y = [ms_ssim_db(v) for v in results["ms-ssim-rgb"]]
    else:
        y = list(results[metric])
    return bpp, y


def _safe(fn, *args) -> float | None:
    try:
        v = fn(*args)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def psnr_at_bpp(results: dict, bpp: float) -> float | None:
    """PSNR at a given rate by PCHIP interpolation on log-rate (no extrapolation)."""
    from benchmarks.bdrate import pchip_curve

    r, p = _curve(results)
    try:
        f = pchip_curve(np.log(r), p)
    except ValueError:
        return None
    v = float(f(math.log(bpp)))
    return v if math.isfinite(v) else None


def load_anchors(folder: Path) -> dict[str, dict]:
    """The published curves of ``folder`` (CompressAI's results JSON, one file per codec), by
    file stem; a file without ``bpp`` and ``psnr-rgb`` results is an error, not skipped."""
    anchors = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        res = doc.get("results", {})
        if not (isinstance(res.get("bpp"), list) and isinstance(res.get("psnr-rgb"), list)
                and len(res["bpp"]) == len(res["psnr-rgb"]) >= 4):
            msg = f"{path}: not a rate-distortion curve (results.bpp and results.psnr-rgb, 4 points or more)"
            raise ValueError(msg)
        anchors[path.stem] = doc
    if not anchors:
        msg = f"no anchor curve (*.json) in {folder}"
        raise ValueError(msg)
    return anchors


def summarize(all_results: dict[str, dict], meta: dict, skipped: dict[str, str],
              anchors: dict[str, dict] | None = None) -> dict:
    summary: dict = {"meta": meta, "skipped": skipped, "codecs": {}}
    anchors = anchors or {}
    if anchors:
        summary["anchors"] = {
            name: {"description": doc.get("name", name),
                   "psnr_at_bpp": {str(b): psnr_at_bpp(doc["results"], b) for b in PSNR_AT_BPP}}
            for name, doc in anchors.items()
        }
    for name, doc in all_results.items():
        res = doc["results"]
        entry: dict = {
            "bpp_range": [min(res["bpp"]), max(res["bpp"])],
            "psnr_range": [min(res["psnr-rgb"]), max(res["psnr-rgb"])],
            "psnr_at_bpp": {str(b): psnr_at_bpp(res, b) for b in PSNR_AT_BPP},
            "mean_encoding_time": float(np.mean(res["encoding_time"])),
            "mean_decoding_time": float(np.mean(res["decoding_time"])),
        }
        for ref in REFERENCES:
            if ref not in all_results:
                continue
            rres = all_results[ref]["results"]
            for metric, key in (("psnr-rgb", "psnr"), ("ms-ssim-db", "msssim")):
                ra, qa = _curve(rres, metric)
                rb, qb = _curve(res, metric)
                entry[f"bd_rate_{key}_vs_{ref}"] = _safe(bd_rate, ra, qa, rb, qb)
                entry[f"bd_{key}_db_vs_{ref}"] = _safe(bd_psnr, ra, qa, rb, qb)
        if anchors:
            rb, qb = _curve(res)
            entry["bd_rate_psnr_vs_anchor"] = {
                a: _safe(bd_rate, *_curve(doc["results"]), rb, qb) for a, doc in anchors.items()}
        summary["codecs"][name] = entry
    for name in CNNZ_METHODS:
        if name in all_results:
            res = all_results[name]["results"]
            order = np.argsort(res["quality"])
            bpp, ps = np.asarray(res["bpp"])[order], np.asarray(res["psnr-rgb"])[order]
            summary[f"{name.replace('-', '_')}_monotone"] = bool(np.all(np.diff(bpp) > 0) and np.all(np.diff(ps) > 0))
    return summary


def cnnz_table(doc: dict, jpeg: dict | None = None) -> str:
    """One row per CNNZ quality: mean bpp, PSNR, MS-SSIM and times per image, and JPEG's
    PSNR at the same bpp (PCHIP on its log-rate curve) when JPEG ran."""
    res = doc["results"]
    lines = ["| quality | bpp | PSNR-RGB dB | JPEG PSNR at this bpp | MS-SSIM | encode s | decode s |",
             "|---|---|---|---|---|---|---|"]
    for i in np.argsort(res["quality"]):
        ref = psnr_at_bpp(jpeg["results"], res["bpp"][i]) if jpeg else None
        lines.append(f"| {res['quality'][i]:g} | {res['bpp'][i]:.3f} | {res['psnr-rgb'][i]:.2f} | {_fmt(ref, '.2f')} | "
                     f"{res['ms-ssim-rgb'][i]:.4f} | {res['encoding_time'][i]:.3f} | {res['decoding_time'][i]:.3f} |")
    return "\n".join(lines)


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "n/a"
    if spec.endswith("%"):  # a value already in percent
        return format(v, spec[:-1]) + " %"
    return format(v, spec)


def markdown_table(summary: dict) -> str:
    head = (
        "| codec | BD-rate vs JPEG (PSNR / MS-SSIM) | BD-rate vs AVIF (PSNR / MS-SSIM) "
        "| " + " | ".join(f"PSNR @{b:g}" for b in PSNR_AT_BPP) + " | bpp range | enc s | dec s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in summary["codecs"].items():
        cols = [name]
        for ref in REFERENCES:
            if name == ref:
                cols.append("(ref)")
            else:
                cols.append(
                    f"{_fmt(e.get(f'bd_rate_psnr_vs_{ref}'), '+.1f%')} / "
                    f"{_fmt(e.get(f'bd_rate_msssim_vs_{ref}'), '+.1f%')}"
                )
        cols += [_fmt(e["psnr_at_bpp"][str(b)], ".2f") for b in PSNR_AT_BPP]
        cols.append(f"{e['bpp_range'][0]:.3f}–{e['bpp_range'][1]:.2f}")
        cols.append(f"{e['mean_encoding_time']:.3f}")
        cols.append(f"{e['mean_decoding_time']:.3f}")
        lines.append("| " + " | ".join(cols) + " |")
    for name, a in summary.get("anchors", {}).items():
        cols = [f"{name} (published)", "", ""] + [_fmt(a["psnr_at_bpp"][str(b)], ".2f") for b in PSNR_AT_BPP]
        lines.append("| " + " | ".join(cols + ["", "", ""]) + " |")
    return "\n".join(lines)


def anchor_table(summary: dict) -> str:
    """BD-rate (PSNR) of every codec run against each published anchor curve."""
    anchors = list(summary.get("anchors", {}))
    if not anchors:
        return ""
    lines = ["| codec | " + " | ".join(f"vs {a}" for a in anchors) + " |", "|---|" + "---|" * len(anchors)]
    for name, e in summary["codecs"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(e["bd_rate_psnr_vs_anchor"][a], "+.1f%") for a in anchors) + " |")
    return "\n".join(lines)


def plot(all_results: dict[str, dict], path: Path, title: str, anchors: dict[str, dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    max_bpp = 0.0
    for name, doc in all_results.items():
        res = doc["results"]
        order = np.argsort(res["bpp"])
        bpp = np.asarray(res["bpp"])[order]
        max_bpp = max(max_bpp, float(bpp.max()))
        style = dict(marker="o", ms=3.5, lw=2.2 if name in CNNZ_METHODS else 1.4, label=name)
        axes[0].plot(bpp, np.asarray(res["psnr-rgb"])[order], **style)
        axes[1].plot(bpp, [ms_ssim_db(v) for v in np.asarray(res["ms-ssim-rgb"])[order]], **style)
    for name, doc in (anchors or {}).items():
        res = doc["results"]
        order = np.argsort(res["bpp"])
        style = dict(ls="--", lw=1.0, label=f"{name} (published)")
        axes[0].plot(np.asarray(res["bpp"])[order], np.asarray(res["psnr-rgb"])[order], **style)
    for ax, ylabel in zip(axes, ("PSNR-RGB [dB]", "MS-SSIM-RGB [dB]  (-10 log10(1 - MS-SSIM))")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, min(max_bpp, 2.5) * 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _parse_floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_KODAK), help="folder of images")
    ap.add_argument("--out", default=str(HERE / "results" / "kodak"), help="output folder")
    ap.add_argument("--codecs", default=",".join(c for c in ALL_CODECS if c not in SLOW_CODECS),
                    help="comma-separated subset of " + ",".join(ALL_CODECS) + " (default: all but "
                    + ",".join(SLOW_CODECS) + ")")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (sorted by name)")
    ap.add_argument("--cnnz-qualities", default=None, help="comma-separated CNNZ qualities in [1, 8] (default 1..8)")
    for c in ALL_CODECS[1:]:
        ap.add_argument(f"--{c}-qualities", default=None, help=f"override the {c} quality sweep")
    ap.add_argument("--anchors", default=None,
                    help="folder of published curves (CompressAI JSON) to report BD-rates against, "
                         "e.g. data/anchors/kodak")
    ap.add_argument("--jobs", type=int, default=1, help="images processed in parallel (timings then contend)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="for the summary, also load <out>/<codec>.json of codecs not run now, if made on the same images",
    )
    args = ap.parse_args(argv)

    data = Path(args.data)
    images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if data.is_dir() else []
    if not images:
        print(f"error: no images found in {data}", file=sys.stderr)
        return 2
    if args.limit > 0:
        images = images[: args.limit]
    try:
        anchors = load_anchors(Path(args.anchors)) if args.anchors else {}
    except (OSError, ValueError) as exc:
        print(f"error: --anchors: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    names = [c.strip().lower() for c in args.codecs.split(",") if c.strip()]
    qualities = {c: list(DEFAULT_QUALITIES[c]) for c in ALL_CODECS}
    for c in ALL_CODECS:
        override = getattr(args, f"{c.replace('-', '_')}_qualities")
        if override:
            qualities[c] = _parse_floats(override)
    if any(not 1.0 <= q <= 8.0 for name in CNNZ_METHODS for q in qualities[name]):
        print("error: CNNZ qualities must lie in [1, 8]", file=sys.stderr)
        return 2

    skipped: dict[str, str] = {}
    active: list[str] = []
    descriptions: dict[str, str] = {}
    for name in names:
        codec, note = make_codec(name)
        if codec is None:
            print(f"note: skipping {name}: {note}", file=sys.stderr)
            skipped[name] = note
            continue
        active.append(name)
        descriptions[name] = codec.description
    if not active:
        print("error: no codec to run", file=sys.stderr)
        return 1

    print(f"{len(images)} images from {data}; codecs: {', '.join(active)}", flush=True)
    per_image: list[dict] = []
    t_start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_worker_init, initargs=(active, qualities)) as ex:
            futures = [ex.submit(process_image, str(p), active) for p in images]
            for i, fut in enumerate(futures):
                per_image.append(fut.result())
                print(f"  [{i + 1}/{len(images)}] {per_image[-1]['image']}", flush=True)
    else:
        _worker_init(active, qualities)
        for i, p in enumerate(images):
            t0 = time.perf_counter()
            per_image.append(process_image(str(p), active))
            print(f"  [{i + 1}/{len(images)}] {p.name}  {time.perf_counter() - t0:.1f} s", flush=True)

    # a codec that failed on any image is dropped (its average would be biased)
    for r in per_image:
        for name, err in r["errors"].items():
            if name in active:
                print(f"note: {name} failed on {r['image']}, dropping it:\n{err}", file=sys.stderr)
                skipped[name] = f"failed on {r['image']}: {err.splitlines()[0]}"
                active.remove(name)

    image_names = [p.name for p in images]
    meta = {
        "dataset": str(data),
        "n_images": len(images),
        "images": image_names,
        "platform": f"{sys.platform}, {os.cpu_count()} cpus",
        "jobs": args.jobs,
        "wall_time_s": round(time.perf_counter() - t_start, 2),
    }
    all_results: dict[str, dict] = {}
    model = cnnz_model_id()
    for name in active:
        qs = qualities[name]
        per_q = [[r["records"][name][k] for r in per_image] for k in range(len(qs))]

        def mean(key: str) -> list[float]:
            return [float(np.mean([rec[key] for rec in recs])) for recs in per_q]

        doc = {
            "name": name,
            "description": descriptions[name],
            "results": {
                "bpp": mean("bpp"),
                "psnr-rgb": mean("psnr"),
                "ms-ssim-rgb": mean("ms_ssim"),
                "encoding_time": mean("t_enc"),
                "decoding_time": mean("t_dec"),
                "quality": [q if name in CNNZ_METHODS else int(q) for q in qs],
            },
            "meta": {k: meta[k] for k in ("dataset", "n_images", "images")},
        }
        if name in CNNZ_METHODS:
            doc["meta"]["model"] = model
        all_results[name] = doc
        with open(out / f"{name}.json", "w") as f:
            json.dump(doc, f, indent=2)

    if args.reuse:
        for name in ALL_CODECS:
            path = out / f"{name}.json"
            if name in all_results or not path.exists():
                continue
            doc = json.loads(path.read_text())
            if name in CNNZ_METHODS and doc.get("meta", {}).get("model") != model:
                print(f"note: not reusing {path}: made with other weights", file=sys.stderr)
            elif doc.get("meta", {}).get("images") == image_names:
                print(f"note: reusing {path} for the summary", file=sys.stderr)
                all_results[name] = doc
            else:
                print(f"note: not reusing {path}: made on other images", file=sys.stderr)

    summary = summarize(all_results, meta, skipped, anchors)
    table = markdown_table(summary)
    if anchors:
        table += "\n\nBD-rate (PSNR) against the published curves of `" + str(args.anchors) + "`:\n\n" + anchor_table(summary)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    (out / "summary.md").write_text(
        f"{len(images)} images from `{data}`; BD-rate: PCHIP Bjøntegaard delta, "
        "negative = fewer bits than the reference; MS-SSIM BD-rate on -10 log10(1 - MS-SSIM).\n\n" + table + "\n"
        + "".join(f"\n{name} per quality (means over the images; quality monotone in bytes and PSNR: "
                  f"{'yes' if summary[name.replace('-', '_') + '_monotone'] else 'NO'}):\n\n"
                  f"{cnnz_table(all_results[name], all_results.get('jpeg'))}\n"
                  for name in CNNZ_METHODS if name in all_results)
    )
    plot(all_results, out / "rd.png", f"{data.name}, {len(images)} images", anchors)
    print()
    print(table)
    if skipped:
        print()
        for name, why in skipped.items():
            print(f"skipped {name}: {why}")
    print(f"\nwrote {out}/{{{','.join(all_results)}}}.json, summary.json, summary.md, rd.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
