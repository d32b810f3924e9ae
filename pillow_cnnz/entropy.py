"""Symbols <-> bytes with an ANS coder (constriction) driven by fixed probability tables.

Entropy *models* here are plain tables shipped in the weights file: one table per
hyper-latent channel for ẑ, one per scale index for the latents. Which table codes
which symbol is decided by integers only (channel, or the exact scale index from
``hyper.py``), and constriction quantizes a given float64 table deterministically,
so encoder and decoder always agree.

A table ``k`` covers the integers ``lo_k .. lo_k + n_k - 1``; its first and last
entries also hold the mass of the tails. A value on or beyond either end is coded
as that end symbol plus an *escape*: the exact value stored beside the ANS words.

An image's latents are coded in bands of rows (see ``hyper.bands``) into one ANS
stream: band by band, within a band table by table, within a table in raster
order. Escapes are listed in that same order.

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

    @property
    def models(self) -> list:
        """constriction's quantized tables, built once (they are immutable).

        Not a ``functools.cached_property``: before Python 3.12 that holds one lock, shared by
        every instance, while it builds, and a child forked meanwhile waits on it forever. Two
        threads that meet here build the same tables; either's are kept."""
        models = self.__dict__.get("_models")
        if models is None:
            import constriction

            models = [
                constriction.stream.model.Categorical(self.pmf[k, : self.length[k]].copy(), perfect=False)
                for k in range(len(self.lo))
            ]
            self.__dict__["_models"] = models  # frozen: not through setattr
        return models


def _groups(index: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by table (stable), and where each table's run starts."""
    small = index.astype(np.uint8) if count <= 256 else index  # sorting bytes is ~5x faster
    order = np.argsort(small, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(count + 1))
    return order, bounds


class Encoder:
    """One ANS stream over several bands of symbols, pushed **last band first**.

    ANS is a stack: what is pushed last comes out first, so the codec pushes the
    bands of an image in reverse and :class:`Decoder` pulls them top to bottom.
    Only one band's symbols are in memory at a time.
    """

    def __init__(self, tables: Tables) -> None:
        import constriction

        self.tables = tables
        self._models = tables.models
        self._coder = constriction.stream.stack.AnsCoder()
        self._escapes: list[np.ndarray] = []

    def push(self, values: np.ndarray, index: np.ndarray) -> None:
        """Code integer ``values`` (any shape), each with the table ``index`` says."""
        tables = self.tables
        # int32 throughout (ESCAPE_LIMIT and the tables fit): a 50-megapixel band is ~8M symbols
        v = np.clip(values.reshape(-1), -ESCAPE_LIMIT, ESCAPE_LIMIT).astype(np.int32)
        idx = index.reshape(-1)
        lo = tables.lo.astype(np.int32)[idx]
        hi = lo + tables.length.astype(np.int32)[idx] - 1
        sym = np.clip(v, lo, hi)
        escaped = (v <= lo) | (v >= hi)
        sym -= lo
        del hi
        order, bounds = _groups(idx, len(tables.lo))
        for k in reversed(range(len(self._models))):
            if bounds[k + 1] > bounds[k]:
                self._coder.encode_reverse(sym[order[bounds[k] : bounds[k + 1]]], self._models[k])
        self._escapes.append(v[order][escaped[order]].astype("<i4"))

    def finish(self) -> bytes:
        """The payload: escape count, escapes in decoding order, ANS words."""
        escapes = np.concatenate(self._escapes[::-1]) if self._escapes else np.empty(0, "<i4")
        words = self._coder.get_compressed().astype("<u4")
        return struct.pack("<I", escapes.size) + escapes.tobytes() + words.tobytes()


class Decoder:
    """Reads back what :class:`Encoder` wrote, band by band, top to bottom."""

    def __init__(self, payload: bytes, tables: Tables, max_symbols: int) -> None:
        import constriction

        if len(payload) < 4:
            raise EntropyError("entropy payload is shorter than its escape count")
        (n_escapes,) = struct.unpack_from("<I", payload)
        if n_escapes > max_symbols or 4 + 4 * n_escapes > len(payload) or (len(payload) - 4 - 4 * n_escapes) % 4:
            msg = f"entropy payload of {len(payload)} bytes cannot hold {n_escapes} escapes and whole words"
            raise EntropyError(msg)
        self.tables = tables
        self._models = tables.models
        self._escapes = np.frombuffer(payload, "<i4", n_escapes, 4).astype(np.int64)
        self._used = 0
        words = np.frombuffer(payload, "<u4", offset=4 + 4 * n_escapes)
        try:
            self._coder = constriction.stream.stack.AnsCoder(words.copy())
        except ValueError as e:  # constriction's check of the last word: damage, like any other
            raise EntropyError(f"entropy payload is damaged: {e}") from e

    def pull(self, index: np.ndarray) -> np.ndarray:
        """The next band's integer values, shaped like ``index``."""
        tables = self.tables
        idx = index.reshape(-1)
        order, bounds = _groups(idx, len(tables.lo))
        # Worked in table order (each table's symbols are one run there), then scattered once.
        ranked = np.empty(idx.size, np.int64)
        escaped = np.zeros(idx.size, bool)
        for k in range(len(self._models)):
            a, b = bounds[k], bounds[k + 1]
            if b > a:
                run = self._coder.decode(self._models[k], b - a)
                escaped[a:b] = (run == 0) | (run == tables.length[k] - 1)
                ranked[a:b] = run + tables.lo[k]
        at = np.flatnonzero(escaped)  # ranks of the escaped symbols: their order in the payload
        escapes = self._escapes[self._used : self._used + at.size]
        if escapes.size != at.size:
            msg = f"entropy payload has {self._escapes.size} escapes, fewer than its escaped symbols"
            raise EntropyError(msg)
        self._used += at.size
        table = np.searchsorted(bounds, at, side="right") - 1
        lo = tables.lo[table]
        ok = np.where(ranked[at] == lo, escapes <= lo, escapes >= lo + tables.length[table] - 1)
        if not np.all(ok) or np.any(np.abs(escapes) > ESCAPE_LIMIT):
            raise EntropyError("entropy payload has an escape value outside its table's tail")
        ranked[at] = escapes
        values = np.empty(idx.size, np.int64)
        values[order] = ranked
        return values.reshape(index.shape)

    def finish(self) -> None:
        """Check that every word and escape was used: anything left means damage."""
        if not self._coder.is_empty():
            raise EntropyError("entropy payload has data left over after the last symbol")
        if self._used != self._escapes.size:
            msg = f"entropy payload has {self._escapes.size} escapes for {self._used} escaped symbols"
            raise EntropyError(msg)


def encode(values: np.ndarray, index: np.ndarray, tables: Tables) -> bytes:
    """Code integer ``values`` (any shape), each with the table ``index`` says, as one band."""
    enc = Encoder(tables)
    enc.push(values, index)
    return enc.finish()


def decode(payload: bytes, index: np.ndarray, tables: Tables) -> np.ndarray:
    """Inverse of :func:`encode`: integer values shaped like ``index``."""
    dec = Decoder(payload, tables, index.size)
    values = dec.pull(index)
    dec.finish()
    return values
