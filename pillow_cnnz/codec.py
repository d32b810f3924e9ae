"""Pixels <-> ``.cnnz`` bytes: the networks, the integer entropy path and the container.

Only the float transforms (analysis, synthesis) run in torch, on CUDA when available;
they run in overlapping tiles so memory stays bounded for any image size. What the
entropy coder depends on (ẑ, the integer hyper network, scale indexes) is exact
integer arithmetic in numpy, so a file decodes to the same latents everywhere.
"""
from __future__ import annotations

import numbers
import os
import threading
from typing import Any

import numpy as np

from . import container, entropy, hyper
from .weights import Model, load

LATENT_STRIDE = 16  # pixels per latent
PAD_MULTIPLE = 64  # pixels per hyper-latent
TILE = 48  # latents per tile side (768 pixels)
HALO = 3  # latents of context around each tile: more than the transforms' receptive radius

_torch_lock = threading.Lock()
_torch_ready = False


def _torch() -> Any:
    """Import torch once, apply CNNZ_THREADS, and make forked children safe."""
    global _torch_ready
    import torch

    with _torch_lock:
        if not _torch_ready:
            threads = os.environ.get("CNNZ_THREADS")
            if threads:
                torch.set_num_threads(int(threads))
            # torch's OpenMP pool hangs in a fork()ed child once the parent used it
            # (pytorch #41197); a single thread in the child avoids it.
            os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))
            _torch_ready = True
    return torch


def resolve_device(device: str | None = None) -> str:
    """Explicit argument, else ``CNNZ_DEVICE``, else CUDA when available, else CPU."""
    device = device or os.environ.get("CNNZ_DEVICE")
    torch = _torch()
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"device {device!r} was asked for but CUDA is not available"
        raise ValueError(msg)
    if not device.startswith(("cpu", "cuda")):
        msg = f"unknown device {device!r}; use 'cpu' or 'cuda'"
        raise ValueError(msg)
    return device


def resolve_precision(precision: str | None = None) -> str:
    """Float type of the synthesis: argument, else ``CNNZ_PRECISION``, else float32.

    It changes pixels by rounding only: the latents never depend on it.
    """
    precision = precision or os.environ.get("CNNZ_PRECISION") or "float32"
    if precision not in ("float32", "float64", "bfloat16"):
        msg = f"unknown precision {precision!r}; use float32, float64 or bfloat16"
        raise ValueError(msg)
    return precision


def _tiles(size: int) -> list[tuple[int, int]]:
    return [(start, min(start + TILE, size)) for start in range(0, size, TILE)]


def _tiled(fn, x, in_scale: int, out_scale: int, out_channels: int, out_size: tuple[int, int]):
    """Apply ``fn`` over overlapping tiles of ``x`` (N, C, H, W) on a latent grid.

    ``in_scale``/``out_scale`` are pixels per latent on each side, so a tile of latents
    ``[a, b)`` reads input ``[a·in, b·in)`` plus the halo and keeps output ``[a·out, b·out)``.
    """
    torch = _torch()
    rows, cols = out_size[0] // out_scale, out_size[1] // out_scale
    out = torch.empty((x.shape[0], out_channels, *out_size), dtype=torch.float32)
    for r0, r1 in _tiles(rows):
        for c0, c1 in _tiles(cols):
            a0, a1 = max(r0 - HALO, 0), min(r1 + HALO, rows)
            b0, b1 = max(c0 - HALO, 0), min(c1 + HALO, cols)
            y = fn(x[..., a0 * in_scale : a1 * in_scale, b0 * in_scale : b1 * in_scale])
            out[..., r0 * out_scale : r1 * out_scale, c0 * out_scale : c1 * out_scale] = y[
                ..., (r0 - a0) * out_scale : (r1 - a0) * out_scale, (c0 - b0) * out_scale : (c1 - b0) * out_scale
            ].float().cpu()
    return out


def _hyper(model: Model, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact means and scale indexes of the latents from integer ẑ."""
    out = hyper.hyper_synthesis(model.hyper_layers, z)
    m = out.shape[0] // 2
    mu = (out[:m] * 2.0**-hyper.FRAC_BITS).astype(np.float32)
    s = model.meta["scale"]
    return mu, hyper.scale_index(out[m:], s["offset"], s["step"], s["count"])


def encode_latents_batch(rgbs: list[np.ndarray], qualities: list[float], device: str | None = None
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(integer ẑ, integer latent symbols, scale indexes) of same-size (H, W, 3) uint8 images.

    The transforms run on the whole batch at once (one pass per tile), which keeps a GPU busy.
    """
    torch = _torch()
    device = resolve_device(device)
    model = load()
    net = model.net(device)
    h, w = rgbs[0].shape[:2]
    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float().div_(255)
    x = torch.nn.functional.pad(x, (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE), mode="replicate")
    gains = torch.from_numpy(np.stack([2 ** model.log2_gains(q)[0] for q in qualities])).float()
    with torch.inference_mode():
        y = _tiled(lambda t: net.g_a(t.to(device)), x, LATENT_STRIDE, 1, net.config.M,
                   (x.shape[2] // LATENT_STRIDE, x.shape[3] // LATENT_STRIDE))
        y = y * gains[:, :, None, None]
        z = torch.round(net.h_a(y.to(device))).cpu().numpy().astype(np.int64)
    out = []
    for i in range(len(rgbs)):
        mu, idx = _hyper(model, z[i])
        out.append((z[i], np.round(y[i].numpy() - mu).astype(np.int64), idx))
    return out


def encode_latents(rgb: np.ndarray, quality: float, device: str | None = None) -> tuple[Model, np.ndarray, np.ndarray, np.ndarray]:
    """(model, integer ẑ, integer latent symbols, their scale indexes) of an (H, W, 3) uint8 image."""
    return load(), *encode_latents_batch([rgb], [quality], device)[0]


def _channel_index(shape: tuple[int, ...]) -> np.ndarray:
    """Table index of each ẑ: its channel."""
    return np.broadcast_to(np.arange(shape[0], dtype=np.int32)[:, None, None], shape)


def encode_rgb(rgb: np.ndarray, quality: float, device: str | None = None) -> tuple[bytes, bytes, bytes]:
    """(model id, LATZ payload, LATY payload) for an (H, W, 3) uint8 image."""
    model, z_int, symbols, idx = encode_latents(rgb, quality, device)
    latz = entropy.encode(z_int, _channel_index(z_int.shape), model.z_tables)
    laty = entropy.encode(symbols, idx, model.y_tables)
    return model.model_id, latz, laty


def decode_latents(header: container.Header, latz: bytes, laty: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ẑ, integer latent symbols and their float means: numpy only, exact."""
    model = load(header.model_id)
    zh, zw = -(-header.height // PAD_MULTIPLE), -(-header.width // PAD_MULTIPLE)
    try:
        z_int = entropy.decode(latz, _channel_index((model.meta["config"]["Nz"], zh, zw)), model.z_tables)
        mu, idx = _hyper(model, z_int)
        symbols = entropy.decode(laty, idx, model.y_tables)
    except entropy.EntropyError as e:
        raise container.CorruptFileError(str(e)) from e
    return z_int, symbols, mu


def synthesize_batch(headers: list[container.Header], latents: list[tuple[np.ndarray, np.ndarray]],
                     device: str | None = None, precision: str | None = None) -> list[np.ndarray]:
    """(H, W, 3) uint8 pixels from decoded (symbols, means) of same-size files, in one batch."""
    torch = _torch()
    device = resolve_device(device)
    dtype = resolve_precision(precision)
    model = load(headers[0].model_id)
    net = model.net(device, dtype)
    y_hat = torch.from_numpy(np.stack([
        (symbols + mu) * (2 ** model.log2_gains(h.quality)[1])[:, None, None].astype(np.float32)
        for h, (symbols, mu) in zip(headers, latents)
    ])).float()
    height, width = headers[0].height, headers[0].width
    with torch.inference_mode():
        x = _tiled(lambda t: net.g_s(t.to(device, getattr(torch, dtype))), y_hat, 1, LATENT_STRIDE, 3,
                   (y_hat.shape[2] * LATENT_STRIDE, y_hat.shape[3] * LATENT_STRIDE))
        x = x[:, :, :height, :width].clamp_(0, 1).mul_(255).round_()
        x = x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return list(x)


def decode_rgb(header: container.Header, latz: bytes, laty: bytes, device: str | None = None,
               precision: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a file's latent sections."""
    _, symbols, mu = decode_latents(header, latz, laty)
    return synthesize_batch([header], [(symbols, mu)], device, precision)[0]


def _split(pixels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) colour and optional (H, W) alpha of an array in one of the container's modes."""
    expected = {"L": 2, "LA": 3, "RGB": 3, "RGBA": 3}[mode]
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    shape_ok = pixels.ndim == expected and (pixels.ndim == 2 or pixels.shape[2] == channels)
    if pixels.dtype != np.uint8 or not shape_ok:
        msg = f"mode {mode} needs a uint8 array of {channels} channel(s), got {pixels.dtype} {pixels.shape}"
        raise ValueError(msg)
    if mode == "L":
        return np.repeat(pixels[..., None], 3, axis=2), None
    if mode == "LA":
        return np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1]
    if mode == "RGBA":
        return pixels[..., :3], pixels[..., 3]
    return pixels, None


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma with Pillow's rounding, as ``Image.convert("L")`` computes it."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _check_quality(quality: float) -> float:
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not 1 <= quality <= 8:
        msg = f"quality must be a number from 1 (smallest) to 8 (best), got {quality!r}"
        raise ValueError(msg)
    return round(float(quality) * 1000) / 1000  # what the header holds, so decoding uses the same gains


def _check_image(pixels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    if mode not in container.MODES:
        msg = f"cannot encode mode {mode!r}; supported modes are {', '.join(container.MODES)}"
        raise ValueError(msg)
    h, w = pixels.shape[:2]
    if not (1 <= h <= container.MAX_SIDE and 1 <= w <= container.MAX_SIDE):
        msg = f"image size {w}x{h} is outside 1..{container.MAX_SIDE} on a side"
        raise ValueError(msg)
    return _split(pixels, mode)


def _groups(shapes: list[tuple], batch_size: int) -> list[list[int]]:
    """Indexes of same-size items, in chunks of at most ``batch_size``."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(shape, []).append(i)
    return [ids[k : k + batch_size] for ids in by_shape.values() for k in range(0, len(ids), batch_size)]


def encode_batch(images: list[np.ndarray], modes: list[str], quality: float = 4.0, *, device: str | None = None,
                 metadata: list[dict[str, bytes] | None] | None = None, batch_size: int = 8) -> list[bytes]:
    """``.cnnz`` files of many uint8 arrays; same-size images share one network pass.

    ``metadata`` maps the container tags ``EXIF``, ``ICCP`` and ``XMP `` to raw bytes.
    Everything is validated before any encoding starts.
    """
    import zstandard

    quality = _check_quality(quality)
    if len(modes) != len(images):
        msg = f"{len(images)} images but {len(modes)} modes"
        raise ValueError(msg)
    split = [_check_image(px, mode) for px, mode in zip(images, modes)]
    metadata = metadata or [None] * len(images)
    out: list[bytes] = [b""] * len(images)
    for ids in _groups([px.shape[:2] for px in images], batch_size):
        latents = encode_latents_batch([split[i][0] for i in ids], [quality] * len(ids), device)
        model = load()
        for i, (z_int, symbols, idx) in zip(ids, latents):
            sections = {k: v for k, v in (metadata[i] or {}).items() if v}
            alpha = split[i][1]
            if alpha is not None:
                sections["ALPH"] = zstandard.ZstdCompressor(level=10).compress(np.ascontiguousarray(alpha).tobytes())
            sections["LATZ"] = entropy.encode(z_int, _channel_index(z_int.shape), model.z_tables)
            sections["LATY"] = entropy.encode(symbols, idx, model.y_tables)
            h, w = images[i].shape[:2]
            out[i] = container.serialize(w, h, modes[i], quality, model.model_id, sections)
    return out


def encode(pixels: np.ndarray, mode: str, quality: float = 4.0, *, device: str | None = None,
           metadata: dict[str, bytes] | None = None) -> bytes:
    """A complete ``.cnnz`` file for an (H, W[, C]) uint8 array in mode L, LA, RGB or RGBA."""
    return encode_batch([pixels], [mode], quality, device=device, metadata=[metadata])[0]


def _alpha(header: container.Header, payloads: dict[str, bytes]) -> np.ndarray | None:
    import zstandard

    if "ALPH" not in payloads:
        return None
    size = header.width * header.height
    try:
        raw = zstandard.ZstdDecompressor().decompress(payloads["ALPH"], max_output_size=size)
    except zstandard.ZstdError as e:
        msg = f"section 'ALPH' does not decompress: {e}"
        raise container.CorruptFileError(msg) from e
    if len(raw) != size:
        msg = f"section 'ALPH' holds {len(raw)} bytes, expected {size}"
        raise container.CorruptFileError(msg)
    return np.frombuffer(raw, np.uint8).reshape(header.height, header.width)


def _finish(header: container.Header, rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Pixels in the file's mode: (H, W) for L, (H, W, C) otherwise."""
    if header.mode == "RGB":
        return rgb
    if header.mode == "RGBA":
        return np.dstack([rgb, alpha])
    luma = _luma(rgb)
    return luma if header.mode == "L" else np.dstack([luma, alpha])


def _check_bomb(header: container.Header) -> None:
    """Honour ``PIL.Image.MAX_IMAGE_PIXELS`` on the numpy path too, before any allocation."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and header.width * header.height > 2 * limit:
        msg = (f"image size ({header.width * header.height} pixels) exceeds limit of {2 * limit} pixels, "
               "could be decompression bomb DOS attack; raise PIL.Image.MAX_IMAGE_PIXELS to allow it")
        raise Image.DecompressionBombError(msg)


def decode_parsed(files: list[tuple[container.Header, dict[str, bytes]]], device: str | None = None,
                  batch_size: int = 8) -> list[np.ndarray]:
    """Pixels of parsed files; same-size files share one synthesis pass."""
    for header, _ in files:
        _check_bomb(header)
    out: list[np.ndarray] = [np.empty(0)] * len(files)
    for ids in _groups([(f[0].height, f[0].width, f[0].model_id) for f in files], batch_size):
        headers = [files[i][0] for i in ids]
        alphas = [_alpha(*files[i]) for i in ids]
        latents = [decode_latents(h, files[i][1]["LATZ"], files[i][1]["LATY"])[1:] for h, i in zip(headers, ids)]
        for i, h, a, rgb in zip(ids, headers, alphas, synthesize_batch(headers, latents, device)):
            out[i] = _finish(h, rgb, a)
    return out


def decode_payloads(header: container.Header, payloads: dict[str, bytes], device: str | None = None) -> np.ndarray:
    """Pixels of one parsed file: (H, W) for L, (H, W, C) otherwise."""
    return decode_parsed([(header, payloads)], device)[0]


def decode_batch(files: list[bytes], device: str | None = None, batch_size: int = 8) -> list[np.ndarray]:
    """Pixels of many complete ``.cnnz`` files (all validated before any decoding)."""
    return decode_parsed([container.parse(data) for data in files], device, batch_size)


def decode(data: bytes, device: str | None = None) -> np.ndarray:
    """Pixels of a complete ``.cnnz`` file (see :func:`decode_payloads`)."""
    return decode_batch([data], device)[0]
