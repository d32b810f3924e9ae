"""Symbols <-> bytes with an ANS coder (constriction) driven by fixed probability tables.

Entropy *models* here are plain tables shipped in the weights file: one table per
hyper-latent channel for ẑ, one per scale index for the latents. Which table codes
which symbol is decided by integers only (channel, or the exact scale index from
``hyper.py``), and constriction quantizes a given float64 table deterministically,
so encoder and decoder always agree.

A table ``k`` covers the integers ``lo_k .. lo_k + n_k - 1``; its first and last
entries also hold the mass of the tails. A value on or beyond either end is coded
as that end symbol plus an *escape*: the exact value stored beside the ANS words.

Payload layout: u32 escape count, that many i32 escapes, then the ANS words (u32).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

ESCAPE_LIMIT = 2**20  # |value| bound; the encoder clips to it and the decoder rejects more


class EntropyError(ValueError):
    """The coded symbols do not fit their tables: the payload is damaged."""


@dataclass(frozen=True)
class Tables:
    pmf: np.ndarray  # (K, L) float64, row k valid in [:length[k]]
    lo: np.ndarray  # (K,) int64, value of symbol 0 of each table
    length: np.ndarray  # (K,) int64

    def models(self) -> list:
        import constriction

        return [
            constriction.stream.model.Categorical(self.pmf[k, : self.length[k]].copy(), perfect=False)
            for k in range(len(self.lo))
        ]


def _groups(index: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by table (stable), and where each table's run starts."""
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(count + 1))
    return order, bounds


def encode(values: np.ndarray, index: np.ndarray, tables: Tables) -> bytes:
    """Code integer ``values`` (any shape), each with the table ``index`` says."""
    import constriction

    v = np.clip(values.reshape(-1).astype(np.int64), -ESCAPE_LIMIT, ESCAPE_LIMIT)
    idx = index.reshape(-1)
    lo = tables.lo[idx]
    hi = lo + tables.length[idx] - 1
    sym = np.clip(v, lo, hi) - lo
    escaped = (v <= lo) | (v >= hi)
    order, bounds = _groups(idx, len(tables.lo))
    models = tables.models()
    coder = constriction.stream.stack.AnsCoder()
    for k in reversed(range(len(models))):
        chunk = sym[order[bounds[k] : bounds[k + 1]]]
        if chunk.size:
            coder.encode_reverse(chunk.astype(np.int32), models[k])
    escapes = v[order][escaped[order]].astype("<i4")
    words = coder.get_compressed().astype("<u4")
    return struct.pack("<I", escapes.size) + escapes.tobytes() + words.tobytes()


def decode(payload: bytes, index: np.ndarray, tables: Tables) -> np.ndarray:
    """Inverse of :func:`encode`: integer values shaped like ``index``."""
    import constriction

    if len(payload) < 4:
        raise EntropyError("entropy payload is shorter than its escape count")
    (n_escapes,) = struct.unpack_from("<I", payload)
    if n_escapes > index.size or 4 + 4 * n_escapes > len(payload) or (len(payload) - 4 - 4 * n_escapes) % 4:
        msg = f"entropy payload of {len(payload)} bytes cannot hold {n_escapes} escapes and whole words"
        raise EntropyError(msg)
    escapes = np.frombuffer(payload, "<i4", n_escapes, 4).astype(np.int64)
    words = np.frombuffer(payload, "<u4", offset=4 + 4 * n_escapes)
    idx = index.reshape(-1)
    order, bounds = _groups(idx, len(tables.lo))
    models = tables.models()
    coder = constriction.stream.stack.AnsCoder(words.copy())
    sym = np.empty(idx.size, np.int64)
    for k in range(len(models)):
        n = bounds[k + 1] - bounds[k]
        if n:
            sym[order[bounds[k] : bounds[k + 1]]] = coder.decode(models[k], n)
    if not coder.is_empty():
        raise EntropyError("entropy payload has data left over after the last symbol")
    lo = tables.lo[idx]
    last = tables.length[idx] - 1
    values = sym + lo
    escaped = (sym == 0) | (sym == last)
    if np.count_nonzero(escaped) != n_escapes:
        msg = f"entropy payload has {n_escapes} escapes for {np.count_nonzero(escaped)} escaped symbols"
        raise EntropyError(msg)
    pos = order[escaped[order]]
    esc_lo = sym[pos] == 0
    ok_lo = escapes <= lo[pos]
    ok_hi = escapes >= lo[pos] + last[pos]
    if not np.all(np.where(esc_lo, ok_lo, ok_hi)) or np.any(np.abs(escapes) > ESCAPE_LIMIT):
        raise EntropyError("entropy payload has an escape value outside its table's tail")
    values[pos] = escapes
    return values.reshape(index.shape)
