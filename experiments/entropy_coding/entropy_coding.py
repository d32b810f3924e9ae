#!/usr/bin/env python
"""How close the ANS coder comes to the entropy of the codec's own latents.

For every image and quality the image is encoded exactly as a user would
(``Image.save(buf, format="CNNZ", quality=q)``); the symbols, table indexes and
tables the codec hands to ``pillow_cnnz.entropy.encode`` are recorded on the way
(the function is wrapped, not re-implemented), and the recorded payloads are
checked to be the file's ``LATZ`` / ``LATY`` sections. Then, for the hyper-latents
ẑ ("z") and the latents ŷ ("y") separately:

(a) ``ans``        bytes of the codec's payload (escape count + escapes + ANS words);
(b) ``ideal``      −Σ log2 q(symbol) / 8 under the *same quantized* tables
                    (constriction's 24-bit weights; see ``_common.quantized_weights``),
                    i.e. the code length an ideal coder reaches with these models;
                    ``ideal_float`` is the same with the float tables before quantization
                    (floored at 2**-24 like the coder, so zero-mass tails stay finite);
(c) ``zstd``       zstd level 19 of the integer symbols, int16 (int32 if they do not
                    fit) in plain channel-major order;
(d) ``zstd_sorted`` the same after the permutation the ANS path applies (positions
                    stably sorted by table index: by predicted scale for y, by channel
                    for z, where it is the identity).

Overheads are relative to (b), in percent, on the totals over all images. The
ANS encode / decode times are medians over images (each the median of
``--repeat`` calls of ``entropy.encode`` / of pulling the codec's bands (or, with a
context, halves) from an ``entropy.Decoder`` on that image's symbols, tables built
inside as the codec does).

Example (from the repository root)::

    python -m experiments.entropy_coding.entropy_coding        # all Kodak images, q 1, 4, 8
    python -m experiments.entropy_coding.entropy_coding --limit 2 --qualities 4 --out /tmp/ec.json
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_cnnz  # noqa: F401  (registers the format)
from benchmarks._common import (
    ANS_PRECISION,
    DEFAULT_KODAK,
    capture_entropy_calls,
    environment,
    finish_environment,
    image_paths,
    load_rgb,
    md_table,
    median,
    model_info,
    quantized_weights,
    time_calls,
    write_json,
    weights_note,
)
from pillow_cnnz import container, entropy, weights

HERE = Path(__file__).resolve().parent

STREAMS = ("y", "z")


class CodeLengths:
    """−log2 of every symbol of every table, quantized (what ANS codes with) and float."""

    def __init__(self, tables: entropy.Tables) -> None:
        k, width = len(tables.lo), int(tables.length.max())
        self.quantized = np.zeros((k, width))
        self.floating = np.zeros((k, width))
        for i in range(k):
            n = int(tables.length[i])
            p = tables.pmf[i, :n].astype(np.float64)
            self.quantized[i, :n] = ANS_PRECISION - np.log2(quantized_weights(p))
            # The coder gives every symbol at least 2**-24; the same floor keeps the float
            # code length finite where a table holds exactly zero mass.
            self.floating[i, :n] = -np.log2(np.maximum(p / p.sum(), 2.0**-ANS_PRECISION))
        self.tables = tables

    def bits(self, values: np.ndarray, index: np.ndarray) -> tuple[float, float, int]:
        """(quantized bits, float bits, escapes) of ``values`` coded with tables ``index``."""
        t = self.tables
        v = np.clip(values.reshape(-1).astype(np.int64), -entropy.ESCAPE_LIMIT, entropy.ESCAPE_LIMIT)
        idx = index.reshape(-1)
        lo = t.lo[idx]
        hi = lo + t.length[idx] - 1
        sym = np.clip(v, lo, hi) - lo
        escapes = int(np.count_nonzero((v <= lo) | (v >= hi)))
        return float(self.quantized[idx, sym].sum()), float(self.floating[idx, sym].sum()), escapes


def sort_order(index: np.ndarray, count: int) -> np.ndarray:
    """The permutation ``entropy.encode`` codes symbols in (positions stably sorted by table)."""
    groups = getattr(entropy, "_groups", None)
    if groups is not None:
        return groups(index.reshape(-1), count)[0]
    return np.argsort(index.reshape(-1), kind="stable")


def int_bytes(values: np.ndarray) -> tuple[bytes, str]:
    flat = values.reshape(-1)
    dtype = "<i2" if flat.size == 0 or (flat.min() >= -(2**15) and flat.max() < 2**15) else "<i4"
    return flat.astype(dtype).tobytes(), dtype


def measure(path: Path, quality: float, lengths: dict[str, CodeLengths], model: weights.Weights,
            zstd_level: int, repeat: int) -> dict:
    import zstandard

    rgb = load_rgb(path)
    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    with capture_entropy_calls() as calls:
        Image.fromarray(rgb).save(buf, format="CNNZ", quality=quality)
    data = buf.getvalue()
    _, sections = container.parse(data)
    by_stream = {}
    for call in calls:
        stream = "z" if call["tables"] is model.z_tables else "y" if call["tables"] is model.y_tables else None
        if stream is None or stream in by_stream:
            raise RuntimeError("unexpected entropy.encode call: the codec changed, update this benchmark")
        by_stream[stream] = call
    if set(by_stream) != set(STREAMS):
        raise RuntimeError(f"expected one y and one z entropy.encode call, got {sorted(by_stream)}")
    compressor = zstandard.ZstdCompressor(level=zstd_level)
    rec: dict = {"image": path.name, "width": w, "height": h, "quality": quality, "file_bytes": len(data)}
    for stream, tag in (("y", "LATY"), ("z", "LATZ")):
        call = by_stream[stream]
        values, index, tables, payload = call["values"], call["index"], call["tables"], call["payload"]
        if sections[tag] != payload:
            raise RuntimeError(f"{path.name}: recorded {stream} payload is not the file's {tag} section")
        q_bits, f_bits, escapes = lengths[stream].bits(values, index)
        (n_escapes,) = struct.unpack_from("<I", payload)
        assert n_escapes == escapes, (n_escapes, escapes)
        raw, dtype = int_bytes(np.asarray(values))
        order = sort_order(np.asarray(index), len(tables.lo))
        raw_sorted, _ = int_bytes(np.asarray(values).reshape(-1)[order])
        def decode_pushes(payload=payload, call=call, tables=tables) -> list:
            """The codec's bands (or halves), pulled in decoding order as the decoder does."""
            dec = entropy.Decoder(payload, tables, sum(v.size for v, _ in call["pushes"]))
            out = [dec.pull(pushed_index) for _, pushed_index in call["pushes"]]
            dec.finish()
            return out

        for got, (pushed, _) in zip(decode_pushes(), call["pushes"]):
            if not np.array_equal(got, np.clip(pushed, -entropy.ESCAPE_LIMIT, entropy.ESCAPE_LIMIT)):
                raise RuntimeError(f"{path.name}: ANS round trip of {stream} failed")
        enc_s = [call["seconds"]]  # the codec's own call, then repeat - 1 more
        for _ in range(repeat - 1):
            enc_s.append(time_calls(lambda: entropy.encode(values, index, tables), 1))
        rec[stream] = {
            "symbols": int(np.asarray(values).size),
            "shape": list(np.asarray(values).shape),
            "tables": len(tables.lo),
            "escapes": escapes,
            "min": int(np.min(values)),
            "max": int(np.max(values)),
            "ans_bytes": len(payload),
            "ans_words_bytes": len(payload) - 4 - 4 * n_escapes,
            "ideal_bits": q_bits,
            "ideal_float_bits": f_bits,
            "zstd_dtype": dtype,
            "zstd_bytes": len(compressor.compress(raw)),
            "zstd_sorted_bytes": len(compressor.compress(raw_sorted)),
            "ans_encode_s": median(enc_s),
            "ans_decode_s": time_calls(decode_pushes, repeat),
        }
    return rec


def aggregate(records: list[dict], quality: float) -> dict:
    rows = [r for r in records if r["quality"] == quality]
    pixels = sum(r["width"] * r["height"] for r in rows)
    out: dict = {"quality": quality, "images": len(rows), "pixels": pixels,
                 "file_bytes": sum(r["file_bytes"] for r in rows)}
    out["file_bpp"] = out["file_bytes"] * 8 / pixels
    for stream in STREAMS:
        s = {k: sum(r[stream][k] for r in rows)
             for k in ("symbols", "escapes", "ans_bytes", "ans_words_bytes", "ideal_bits", "ideal_float_bits",
                       "zstd_bytes", "zstd_sorted_bytes")}
        ideal = s["ideal_bits"] / 8
        s["ideal_bytes"] = ideal
        s["ideal_float_bytes"] = s["ideal_float_bits"] / 8
        s["bits_per_symbol"] = s["ideal_bits"] / s["symbols"]
        s["ideal_bpp"] = s["ideal_bits"] / pixels
        for k in ("ans_bytes", "ans_words_bytes", "zstd_bytes", "zstd_sorted_bytes"):
            s[k.replace("_bytes", "_overhead_pct")] = 100 * (s[k] / ideal - 1) if ideal else float("nan")
        s["quantization_cost_pct"] = 100 * (s["ideal_bits"] / s["ideal_float_bits"] - 1)
        s["ans_encode_ms_median"] = 1e3 * median(r[stream]["ans_encode_s"] for r in rows)
        s["ans_decode_ms_median"] = 1e3 * median(r[stream]["ans_decode_s"] for r in rows)
        s["ans_encode_msym_per_s"] = s["symbols"] / sum(r[stream]["ans_encode_s"] for r in rows) / 1e6
        s["ans_decode_msym_per_s"] = s["symbols"] / sum(r[stream]["ans_decode_s"] for r in rows) / 1e6
        out[stream] = s
    out["ans_encode_ms_median_total"] = 1e3 * median(r["y"]["ans_encode_s"] + r["z"]["ans_encode_s"] for r in rows)
    out["ans_decode_ms_median_total"] = 1e3 * median(r["y"]["ans_decode_s"] + r["z"]["ans_decode_s"] for r in rows)
    return out


def report(summary: list[dict], env: dict) -> str:
    lines = ["## Entropy coding of the CNNZ latents", ""]
    lines.append(f"{summary[0]['images']} image(s); bytes summed over images; overhead = bytes / ideal − 1. "
                 "ideal = −Σ log2 q with constriction's quantized 24-bit tables; "
                 "'float ideal' = the same with the unquantized tables (floored at 2^-24). "
                 "ANS B = the whole payload; 'words ovh' counts only the ANS words, without the "
                 "4-byte escape count and the 4 raw bytes per escape (a value at or beyond a table's end).")
    lines.append("")
    headers = ["q", "stream", "symbols", "bits/sym", "ideal B", "ANS B", "ANS ovh", "escapes", "words ovh",
               "zstd19 B", "zstd ovh", "zstd19 sorted B", "sorted ovh", "float ideal B", "quant. cost"]
    rows = []
    for agg in summary:
        for stream in STREAMS:
            s = agg[stream]
            rows.append([f"{agg['quality']:g}", stream, s["symbols"], f"{s['bits_per_symbol']:.3f}",
                         f"{s['ideal_bytes']:,.0f}", f"{s['ans_bytes']:,}", f"{s['ans_overhead_pct']:+.3f}%",
                         s["escapes"], f"{s['ans_words_overhead_pct']:+.3f}%", f"{s['zstd_bytes']:,}", f"{s['zstd_overhead_pct']:+.1f}%",
                         f"{s['zstd_sorted_bytes']:,}", f"{s['zstd_sorted_overhead_pct']:+.1f}%",
                         f"{s['ideal_float_bytes']:,.0f}", f"{s['quantization_cost_pct']:+.3f}%"])
    lines.append(md_table(headers, rows))
    lines += ["", "### ANS speed (median over images, tables built per call as in the codec)", ""]
    headers = ["q", "file bpp", "y enc ms", "y dec ms", "z enc ms", "z dec ms", "y+z enc ms", "y+z dec ms",
               "y enc Msym/s", "y dec Msym/s"]
    rows = [[f"{a['quality']:g}", f"{a['file_bpp']:.3f}", f"{a['y']['ans_encode_ms_median']:.1f}",
             f"{a['y']['ans_decode_ms_median']:.1f}", f"{a['z']['ans_encode_ms_median']:.2f}",
             f"{a['z']['ans_decode_ms_median']:.2f}", f"{a['ans_encode_ms_median_total']:.1f}",
             f"{a['ans_decode_ms_median_total']:.1f}", f"{a['y']['ans_encode_msym_per_s']:.1f}",
             f"{a['y']['ans_decode_msym_per_s']:.1f}"] for a in summary]
    lines.append(md_table(headers, rows))
    lines += ["", "Notes:"]
    lines += [f"- {n}" for n in env["notes"]]
    lines.append(f"- load average {env['loadavg_1_5_15'][0]:.1f} at the start, "
                 f"{env['loadavg_1_5_15_end'][0]:.1f} at the end; run took {env['elapsed_s'] / 60:.1f} min")
    lines.append(f"- {weights_note()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_KODAK, help="folder of images (default: Kodak)")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--qualities", default="1,4,8", help="comma-separated qualities (default 1,4,8)")
    parser.add_argument("--repeat", type=int, default=3, help="ANS encode/decode calls timed per image (default 3)")
    parser.add_argument("--zstd-level", type=int, default=19)
    parser.add_argument("--out", type=Path, default=HERE / "entropy_coding.json")
    args = parser.parse_args(argv)

    qualities = [float(q) for q in args.qualities.split(",")]
    paths = image_paths(args.data, args.limit)
    env = environment()
    model = weights.load()
    lengths = {"y": CodeLengths(model.y_tables), "z": CodeLengths(model.z_tables)}
    # Warm-up: torch, the network and constriction are loaded before anything is timed.
    Image.fromarray(load_rgb(paths[0])[:64, :64]).save(io.BytesIO(), format="CNNZ")

    records = []
    t_start = time.perf_counter()
    for q in qualities:
        for path in paths:
            rec = measure(path, q, lengths, model, args.zstd_level, max(args.repeat, 1))
            records.append(rec)
            print(f"q{q:g} {path.name}: y ANS {rec['y']['ans_bytes']} B (ideal {rec['y']['ideal_bits'] / 8:.0f}), "
                  f"z ANS {rec['z']['ans_bytes']} B (ideal {rec['z']['ideal_bits'] / 8:.0f})", file=sys.stderr)
    summary = [aggregate(records, q) for q in qualities]
    finish_environment(env)
    env["elapsed_s"] = time.perf_counter() - t_start
    text = report(summary, env)
    print(text)
    write_json(args.out, {
        "benchmark": "entropy_coding",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env,
        "model": model_info(),
        "method": {
            "ans": "pillow_cnnz.entropy.encode payload as produced by Image.save (u32 escape count, i32 escapes, u32 ANS words)",
            "ideal": f"-sum log2(q) with constriction's fast {ANS_PRECISION}-bit quantization of each table",
            "ideal_float": "-sum log2(p) with the float tables (normalized)",
            "zstd": f"zstd level {args.zstd_level} of the int symbols (int16 when they fit, else int32), channel-major",
            "zstd_sorted": "same, positions stably sorted by table index (the ANS coding order)",
        },
        "summary": summary,
        "images": records,
    })
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
