"""Entropy coding of the latents, band by band: ẑ with per-channel tables, then y with the scales and means the integer hyper network (and context) give, and back.

All of it is exact integer arithmetic in numpy, so a file decodes to the same latents everywhere.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from . import batching, blas, container, context, entropy, folding, heap, hyper, tiling
from .weights import Weights, load


def _params(model: Weights, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, idx = hyper.means_and_indexes(out, model.meta["scale"])
    return mu, idx.astype(np.uint8)


def hyper_means(model: Weights, z: np.ndarray, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact means (float32) and scale indexes (uint8) of the latents of ẑ rows ``[top, bottom)``
    as the hyperprior alone gives them (with a context: the anchors' ones)."""
    return _params(model, hyper.hyper_band(model.hyper_layers, z, top, bottom))


def _push_band(enc: entropy.Encoder, symbols: np.ndarray, idx: np.ndarray, mask: np.ndarray | None) -> None:
    """Push one band's symbols with their scale indexes. With a context the anchors go last, so
    the decoder pulls them first (ANS is a stack)."""
    if mask is None:
        enc.push(symbols, idx)
    else:
        enc.push(context.split(symbols, False), context.split(idx, False))
        enc.push(context.split(symbols, True), context.split(idx, True))


def _decode_band(model: Weights, dec: entropy.Decoder, out: np.ndarray,
                 workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, means) of one band's latents, pulled from ``dec``, given the band's hyper
    output ``out`` (refined in place); the context network on up to ``workers`` threads."""
    if model.context_layers is None:
        mu, idx = _params(model, out)
        return dec.pull(idx), mu
    shape = (out.shape[0] // 2, *out.shape[1:])
    mu, symbols = np.empty(shape, np.float32), np.zeros(shape, np.int64)
    mu_a, idx = _params(model, context.split(out, True))  # the anchors' parameters are the hyperprior's
    context.merge(mu, True, mu_a)
    context.merge(symbols, True, dec.pull(idx))
    refined = context.refine(model.context_layers, out, symbols, inplace=True, workers=workers)
    mu_n, idx = _params(model, context.split(refined, False))
    context.merge(mu, False, mu_n)
    context.merge(symbols, False, dec.pull(idx))
    return symbols, mu


def code_latents(model: Weights, z: np.ndarray, y: np.ndarray, workers: int = 1) -> tuple[bytes, bytes]:
    """(LATZ, LATY) payloads: ẑ with per-channel tables, then y band by band (last band first);
    the integer networks on up to ``workers`` threads (the same bytes on any count)."""
    latz, laty, _, _ = _code(model, z, y, keep=False, workers=workers)
    return latz, laty


def code_latents_with_symbols(model: Weights, z: np.ndarray,
                              y: np.ndarray) -> tuple[bytes, bytes, np.ndarray, np.ndarray]:
    """``code_latents``, and the image's integer latent symbols and their scale indexes."""
    return _code(model, z, y, keep=True)


def _code(model: Weights, z: np.ndarray, y: np.ndarray, keep: bool,
          workers: int = 1) -> tuple[bytes, bytes, np.ndarray | None, np.ndarray | None]:
    latz = entropy.encode(z, _channel_index(z.shape), model.z_tables)
    enc = entropy.Encoder(model.y_tables)
    f = hyper.upsampling(model.hyper_layers)
    kept = []
    order = hyper.bands(z.shape[1])[::-1]

    def networks(band: tuple[int, int]) -> tuple:
        # Beside the previous band's push, which is short next to it: every thread is its own.
        top, bottom = band
        return context.band_symbols(model.hyper_layers, model.context_layers, model.meta["scale"], z, top, bottom,
                                    y[:, top * f : bottom * f], workers)

    with blas.threads(1), contextlib.closing(  # one BLAS section for all bands, see decode_y_hat
            batching.ahead(networks, order, enabled=workers > 1)) as results:
        for symbols, _, idx, mask in results:
            idx = idx.astype(np.uint8)
            _push_band(enc, symbols, idx, mask)
            if len(order) > 1:
                heap.return_freed()  # each band's temporaries otherwise fragment the heap
            if keep:
                kept.append((symbols, idx))
    if not keep:
        return latz, enc.finish(), None, None
    return (latz, enc.finish(), np.concatenate([k[0] for k in kept[::-1]], axis=1).astype(np.int64),
            np.concatenate([k[1] for k in kept[::-1]], axis=1))


def file_bits(model: Weights, y: np.ndarray, z: np.ndarray) -> list[float]:
    """Bits of the coded latents of each image of a batch of float (y, z); infinite for
    latents no file should hold (not finite, or beyond 2**20: a refinement that diverged)."""
    def bits(yi: np.ndarray, zi: np.ndarray) -> float:
        if not (np.all(np.abs(yi) < 2**20) and np.all(np.abs(zi) < 2**20)):  # also False for NaN
            return float("inf")
        return 8.0 * sum(map(len, code_latents(model, np.round(zi).astype(np.int64), yi)))

    return [bits(yi, zi) for yi, zi in zip(y, z)]


def _channel_index(shape: tuple[int, ...]) -> np.ndarray:
    """Table index of each ẑ: its channel."""
    return np.broadcast_to(np.arange(shape[0], dtype=np.int32)[:, None, None], shape)


def _latent_bands(header: container.Header, latz: bytes, laty: bytes, workers: int = 1) -> Iterator:
    """(model, ẑ, then per band: latent rows, symbols, means): numpy only, exact. A folded file's
    latents are those of its raster (``folding.coded_header``)."""
    header = folding.coded_header(header)
    model = load(header.model_id)
    zh, zw = tiling.hyper_grid(header.height, header.width)
    f = hyper.upsampling(model.hyper_layers)
    m = model.meta["config"]["M"]
    try:
        z = entropy.decode(latz, _channel_index((model.meta["config"]["Nz"], zh, zw)), model.z_tables)
        dec = entropy.Decoder(laty, model.y_tables, m * zh * f * zw * f)
        yield model, z
        bands = hyper.bands(zh)

        def hyper_out(i: int) -> np.ndarray:
            # Past the first band, this runs beside the previous band's pulls and context:
            # it leaves that one of the threads.
            return hyper.hyper_band(model.hyper_layers, z, *bands[i], workers=workers if i == 0 else max(1, workers - 1))

        with contextlib.closing(batching.ahead(hyper_out, list(range(len(bands))), enabled=workers > 1)) as outs:
            for (top, bottom), out in zip(bands, outs):
                yield (top * f, bottom * f), *_decode_band(model, dec, out, workers)
        dec.finish()
    except entropy.EntropyError as e:
        raise container.CorruptFileError(str(e)) from e


def decode_latents(header: container.Header, latz: bytes, laty: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ẑ, integer latent symbols and their float means: numpy only, exact."""
    with blas.threads(1):  # see decode_y_hat
        it = _latent_bands(header, latz, laty)
        _, z = next(it)
        parts = list(it)
    return z, np.concatenate([p[1] for p in parts], axis=1), np.concatenate([p[2] for p in parts], axis=1)


def decode_y_hat(header: container.Header, latz: bytes, laty: bytes, workers: int = 1) -> np.ndarray:
    """The synthesis input ŷ = (symbols + μ) × inverse gain, (M, h, w) float32, built band by band,
    the integer networks on up to ``workers`` threads (the same values on any count)."""
    # One BLAS section for the whole file, inside which the integer networks' sections just
    # run: BLAS's count changes once, not at every band (raising it again lets OpenBLAS's
    # idle workers spin, which took the cores from the other files of a batch).
    with blas.threads(1):
        it = _latent_bands(header, latz, laty, workers)
        model, z = next(it)
        f = hyper.upsampling(model.hyper_layers)
        inv_gain = (2 ** model.log2_gains(header.quality)[1]).astype(np.float32)[:, None, None]
        y_hat = np.empty((model.meta["config"]["M"], z.shape[1] * f, z.shape[2] * f), np.float32)
        for (a, b), symbols, mu in it:
            np.multiply(symbols + mu, inv_gain, out=y_hat[:, a:b])
    return y_hat


def y_hat_of(file: tuple[container.Header, dict[str, bytes]], workers: int = 1) -> np.ndarray:
    """``decode_y_hat`` of a parsed file (header, sections): the exact stage of its decode."""
    header, payloads = file
    return decode_y_hat(header, payloads["LATZ"], payloads["LATY"], workers)
