"""Pixels <-> ``.cnnz`` bytes: the networks, the integer entropy path and the container.

Only the float transforms (analysis, synthesis) run in torch, on CUDA when available;
they run in overlapping tiles so memory stays bounded for any image size. What the
entropy coder depends on (ẑ, the integer hyper network, scale indexes) is exact
integer arithmetic in numpy, so a file decodes to the same latents everywhere.
"""
from __future__ import annotations

import functools
import importlib.util
import numbers
import os
import sys
import warnings
from typing import Any

import numpy as np

from . import blas, container, context, entropy, errors, forksafe, hyper, refine, settings
from .weights import Model, load

LATENT_STRIDE = 16  # pixels per latent
PAD_MULTIPLE = 64  # pixels per hyper-latent
TILE = 64  # latents per tile side (1024 pixels)
HALO = 7  # latents of context around each tile: more than the transforms' receptive radius (Config.synthesis_radius)
# From this many pixels a float32 synthesis on a CPU runs in torch (where installed), below it in numpy:
# torch's convolutions are faster, but importing torch costs 1-2 s, which only a large image pays back
# in a process that only decodes (synthesize_batch). A function of the image, so a file decodes to the
# same pixels in any process.
TORCH_FROM_PIXELS = 2_000_000

_torch_lock = forksafe.Lock()  # a child forked mid-import must not wait on it
_torch_ready = False


def _torch() -> Any:
    """Import torch once, apply CNNZ_THREADS, and make forked children safe."""
    global _torch_ready
    import torch

    with _torch_lock:
        if not _torch_ready:
            threads = settings.threads()
            if threads:
                torch.set_num_threads(threads)
            # torch's OpenMP pool hangs in a fork()ed child once the parent used it
            # (pytorch #41197); a single thread in the child avoids it.
            os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))
            _torch_ready = True
    return torch


def _cuda_possible() -> bool:
    """Whether CUDA could be available, answered without importing torch where possible.

    Importing torch costs 1-2 s, most of a cold start. With no NVIDIA driver on the
    machine, ``torch.cuda.is_available()`` is False anyway, so it need not be asked.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available() and not _cuda_unusable_here()
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _NVIDIA_PATHS):
        return False
    return _torch().cuda.is_available()


def _cuda_unusable_here() -> bool:
    """Whether this process should not use CUDA by default although the machine has it.

    A fork()ed child of a process that used CUDA cannot (torch raises "Cannot re-initialize
    CUDA in forked subprocess"), and a DataLoader worker should not: the workers are there to
    do CPU work beside the training process, and each would hold its own CUDA context (~0.5 GB).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    data = sys.modules.get("torch.utils.data")
    return torch.cuda._is_in_bad_fork() or (data is not None and data.get_worker_info() is not None)


_NVIDIA_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def resolve_device(device: str | None = None) -> str:
    """Explicit argument, else ``CNNZ_DEVICE``, else CUDA when available, else CPU."""
    device = settings.device(device or None)
    if not device:
        return "cuda" if _cuda_possible() else "cpu"
    if device.startswith("cuda") and not _torch().cuda.is_available():
        msg = f"device {device!r} was asked for but CUDA is not available"
        raise ValueError(msg)
    if device.startswith("cuda") and _torch().cuda._is_in_bad_fork():
        msg = (f"device {device!r} was asked for in a process forked from one that had used CUDA; "
               "use the 'spawn' start method, or decode on the CPU here")
        raise ValueError(msg)
    return device


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux, no torch); None where there is none.

    Cached: every decode resolves its precision, and the CPU does not change under a process."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (from its flags, else asked of torch)."""
    flags = _cpu_flags()
    if flags is None:
        return bool(getattr(_torch().cpu, "_is_avx512_bf16_supported", lambda: False)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_has_amx() -> bool:
    """AMX tiles for bfloat16 on this CPU (Intel Xeon since Sapphire Rapids)."""
    flags = _cpu_flags()
    return flags is not None and "amx_bf16" in flags


def _cpu_has_vnni() -> bool:
    """8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI): where oneDNN's int8 pays."""
    flags = _cpu_flags()
    return flags is not None and ("avx512_vnni" in flags or "avx_vnni" in flags)


def resolve_precision(precision: str | None = None, device: str = "cpu", analysis: bool = False,
                      int8: bool = False) -> str:
    """Number type of the transforms: argument, else ``CNNZ_PRECISION``, else ``auto``.

    ``auto`` follows the hardware and the installed packages alone, never what the process
    happens to have imported or done before: the same file decodes to the same pixels at any
    point of any process on one machine (``synthesize_batch`` picks numpy or torch the same
    way). It is bfloat16 where the hardware runs it natively (CUDA, CPUs with AVX512-BF16 or
    AMX: about 1.8x faster synthesis, within 2 levels of float32), int8 blocks on a CPU with
    8-bit dot products (below), and float32 elsewhere. On a CPU, bfloat16 and int8 run in
    torch, so ``auto`` takes them only where torch is installed; a decode on such a CPU
    therefore imports torch (1-2 s once), the price of one answer per file. A process that
    wants the cold start of a decode without torch sets ``CNNZ_PRECISION=float32``, whose
    synthesis runs in numpy (below ``TORCH_FROM_PIXELS``). The synthesis' precision changes
    pixels by rounding only: the decoded latents never depend on it.

    The encoder's ``analysis`` takes bfloat16 on a CPU only with AMX: there it is 3-5x faster
    than float32 and was checked to give the same latents from call to call, alone or in a
    batch, at 1 or 2 threads (a test pins the bytes). On AVX512-BF16 without AMX a bfloat16
    analysis was seen to round a latent differently from one call to the next. There, and on
    any other CPU with 8-bit dot products (VNNI), the analysis takes ``int8`` when the model
    ships its ranges (``int8``, ``pillow_cnnz/int8.py``): residual blocks in integers, 2x
    faster than float32 on a Kodak image (AVX-512 Xeon, 2 cores), latents closer to
    float32's than bfloat16's, the same bytes at any thread count. A synthesis on such a
    CPU without bfloat16 takes ``int8`` too: the blocks its ranges name in integers.
    ``int8`` is the CPU's only: asked for on CUDA it means ``auto``. The weights train under
    bfloat16 autocast, and the bfloat16 analysis codes Kodak as small or smaller (BD-rate
    −0.08 % with the 347.5k weights, −0.5 % with the 325k ones,
    ``benchmarks/analysis_precision.py``) than the float32 one. ``analyse_batch`` still runs
    the hyper-analysis in float32: bfloat16 oneDNN got a one-column ẑ wrong.

    The hardware probes (``_cpu_flags``, ``_torch_installed``, ``_int8_supported``) are
    module functions so that tests can stand in for CPUs other than their own.
    """
    precision = settings.precision(precision or None)
    if precision == "int8" and device != "cpu":
        precision = "auto"
    if precision == "auto":
        if device.startswith("cuda"):
            precision = "bfloat16" if _torch().cuda.is_bf16_supported() else "float32"
        elif not _torch_installed():
            precision = "float32"
        elif _cpu_has_amx() or (not analysis and _cpu_has_bf16()):
            precision = "bfloat16"
        else:
            precision = "int8" if int8 and _cpu_has_vnni() and _int8_supported() else "float32"
    return precision


@functools.cache
def _torch_installed() -> bool:
    """Whether torch can be imported here (asked of the import system, without importing it)."""
    return importlib.util.find_spec("torch") is not None


def _int8_supported() -> bool:
    from . import int8

    return int8.supported()


def _tiles(size: int) -> list[tuple[int, int]]:
    return [(start, min(start + TILE, size)) for start in range(0, size, TILE)]


def _windows(rows: int, cols: int, grid: tuple[int, int]):
    """Tiles ``(r0, r1, c0, c1)`` covering ``rows x cols`` latents, each with the window
    ``(a0, a1, b0, b1)`` it reads: the tile plus ``HALO`` latents, within ``grid``."""
    for r0, r1 in _tiles(rows):
        for c0, c1 in _tiles(cols):
            yield (r0, r1, c0, c1), (max(r0 - HALO, 0), min(r1 + HALO, grid[0]),
                                     max(c0 - HALO, 0), min(c1 + HALO, grid[1]))


def _run(torch: Any, layers: Any, x: Any, precision: str) -> Any:
    """``layers(x)`` in ``precision``: bfloat16 via autocast, so weights stay float32; int8
    layers (``int8.Int8Layers``) take float32 and quantize inside."""
    if precision == "int8":
        return layers(x)
    if precision == "bfloat16":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return layers(x)
    return layers(x.to(getattr(torch, precision)))


def _return_freed_heap() -> None:
    """Hand the C heap's freed pages back to the OS (glibc's ``malloc_trim``; elsewhere a no-op).

    The analysis' tile activations leave ~220 MB of them after a 50-megapixel encode, and
    the entropy coder's band arrays, each large enough to be mapped on its own, cannot
    reuse them: trimming lowered that encode's peak RSS (measured with ``/proc``)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hyper_grid(height: int, width: int) -> tuple[int, int]:
    """Hyper-latent rows and columns of an image: one per started 64x64 block."""
    return -(-height // PAD_MULTIPLE), -(-width // PAD_MULTIPLE)


def _analysis(net: Any, rgbs: list[np.ndarray], device: str, precision: str, g_a: Any = None) -> np.ndarray:
    """Latents y (N, M, H/16, W/16) float32 of same-size (H, W, 3) uint8 images, tile by tile.

    The images are taken as edge-padded to a multiple of 64; each tile pads its own
    window, so no padded copy of a whole (possibly 50-megapixel) image is made. ``g_a``
    replaces ``net.g_a`` (the int8 analysis).
    """
    torch = _torch()
    g_a = net.g_a if g_a is None else g_a
    h, w = rgbs[0].shape[:2]
    zh, zw = _hyper_grid(h, w)
    grid = (zh * PAD_MULTIPLE // LATENT_STRIDE, zw * PAD_MULTIPLE // LATENT_STRIDE)
    y = np.empty((len(rgbs), net.config.M, *grid), np.float32)
    s = LATENT_STRIDE
    windows = list(_windows(*grid, grid))
    for (r0, r1, c0, c1), (a0, a1, b0, b1) in windows:
        tile = np.stack([_edge_padded(im, a0 * s, a1 * s, b0 * s, b1 * s) for im in rgbs])
        x = torch.from_numpy(tile).to(device).permute(0, 3, 1, 2)
        x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
        out = _run(torch, g_a, x, precision)
        y[:, :, r0:r1, c0:c1] = out[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0].float().cpu().numpy()
        if len(windows) > 1:  # a tile's temporaries otherwise fragment the heap (50 MP: 1420 -> 1149 MiB peak)
            del tile, x, out
            _return_freed_heap()
    return y


def _edge_padded(im: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of ``im``, its last row and column
    repeated past its edges (a slice, padded only where the window leaves the image; indexing
    the window with clamped indices copied a Kodak image in 7 ms)."""
    h, w = im.shape[:2]
    part = im[top:min(bottom, h), left:min(right, w)]
    pad = ((0, bottom - top - part.shape[0]), (0, right - left - part.shape[1])) + ((0, 0),) * (im.ndim - 2)
    return np.pad(part, pad, mode="edge") if pad[0][1] or pad[1][1] else part


def _synthesis(run: Any, y_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, height, width, 3) uint8 pixels of (N, M, h, w) float32 latents, tile by tile.

    ``run(window, core)`` maps a window of latents to the (N, rows, cols, 3) uint8 pixels
    ``core`` of its output (((row0, row1), (col0, col1)), in pixels of the window's synthesis).
    Only the image's own pixels are synthesized, each layer computing just what they depend on
    (the padding latents serve as context): a decode costs what its pixels cost, also where an
    image is thinner than the 64-pixel blocks the format codes.
    """
    s = LATENT_STRIDE
    out = np.empty((y_hat.shape[0], height, width, 3), np.uint8)
    rows, cols = -(-height // s), -(-width // s)
    for (r0, r1, c0, c1), (a0, a1, b0, b1) in _windows(rows, cols, y_hat.shape[2:]):
        top, left = (r0 - a0) * s, (c0 - b0) * s
        core = ((top, top + min(r1 * s, height) - r0 * s), (left, left + min(c1 * s, width) - c0 * s))
        out[:, r0 * s : min(r1 * s, height), c0 * s : min(c1 * s, width)] = run(y_hat[:, :, a0:a1, b0:b1], core)
    return out


def _torch_synthesis(net: Any, device: str, precision: str, body: Any = None) -> Any:
    """Tile synthesis in torch; the last, cheap layer runs in float32 so bfloat16 does not
    round the output pixels. ``body`` replaces ``net.g_s[:-1]`` (the int8 synthesis). Each
    layer computes only the part of its output the tile's own pixels depend on
    (``layers.TileCrops``): the same pixels as the whole window, for less work."""
    torch = _torch()
    from .layers import TileCrops, run_cropped

    modules, last = list(net.g_s), net.g_s[-1]
    wide = torch.float64 if precision == "float64" else torch.float32
    if body is None:  # the float layers: crops copied dense, for oneDNN's in-place sums
        def hidden(t: Any, crops: TileCrops) -> Any:
            return _run(torch, lambda v: run_cropped(modules[:-1], v, crops), t, precision)
    else:  # int8 layers read cropped views band by band
        def hidden(t: Any, crops: TileCrops) -> Any:
            return body(t, crops)

    def run(y: np.ndarray, core: tuple | None = None) -> np.ndarray:
        """The window's output pixels ``core`` (default: all of them)."""
        whole = ((0, LATENT_STRIDE * y.shape[2]), (0, LATENT_STRIDE * y.shape[3]))
        crops = TileCrops(modules, core or whole, y.shape[2:], dense=body is None, in_output=True)
        t = torch.from_numpy(np.ascontiguousarray(y)).to(device).contiguous(memory_format=torch.channels_last)
        x = last.conv(hidden(t, crops).to(wide))
        # Rounded to bytes before the pixel shuffle (per-value steps: the same bytes), and shuffled
        # straight into (N, H, W, 3): a float32 shuffle to 3 channels cost ~4 ms of a Kodak decode.
        x = x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        n, c, h, w = x.shape
        r = last.shuffle.upscale_factor
        x = x.permute(0, 2, 3, 1).reshape(n, h, w, c // (r * r), r, r).permute(0, 1, 4, 2, 5, 3)
        rows, cols = crops.slices(len(modules) - 1)
        return x.reshape(n, h * r, w * r, c // (r * r))[:, rows, cols].cpu().numpy()

    return run


def _numpy_synthesis(model: Model) -> Any:
    """Tile synthesis in numpy float32 (``synthesis_np``): a float32 CPU decode of an image under
    ``TORCH_FROM_PIXELS`` needs no torch."""
    synth = model.numpy_synthesis()

    def run(y: np.ndarray, core: tuple | None = None) -> np.ndarray:
        """The window's output pixels ``core`` (default: all of them)."""
        workers = blas.default_count()
        with blas.threads(1):  # bands on a thread per core, each sgemm on one (synthesis_np)
            x = synth(y, workers, core)
        np.clip(x, 0, 1, out=x)
        x *= 255
        return np.rint(x, out=x).astype(np.uint8).transpose(0, 2, 3, 1)

    return run


def _hyper(model: Model, z: np.ndarray, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact means (float32) and scale indexes (uint8) of the latents of ẑ rows ``[top, bottom)``
    as the hyperprior alone gives them (with a context: the anchors' ones)."""
    return _params(model, hyper.hyper_band(model.hyper_layers, z, top, bottom))


def _params(model: Model, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, idx = hyper.means_and_indexes(out, model.meta["scale"])
    return mu, idx.astype(np.uint8)


def _encode_band(model: Model, enc: entropy.Encoder, z: np.ndarray, top: int, bottom: int,
                 y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Push the latents ``y`` of ẑ rows ``[top, bottom)``; returns (symbols, scale indexes).

    With a context the anchors go last, so the decoder pulls them first (ANS is a stack)."""
    symbols, _, idx, mask = context.band_symbols(model.hyper_layers, model.context_layers, model.meta["scale"],
                                                 z, top, bottom, y)
    idx = idx.astype(np.uint8)
    if mask is None:
        enc.push(symbols, idx)
    else:
        enc.push(symbols[:, ~mask], idx[:, ~mask])
        enc.push(symbols[:, mask], idx[:, mask])
    return symbols, idx


def _decode_band(model: Model, dec: entropy.Decoder, z: np.ndarray, top: int,
                 bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, means) of the latents of ẑ rows ``[top, bottom)``, pulled from ``dec``."""
    out = hyper.hyper_band(model.hyper_layers, z, top, bottom)
    mu, idx = _params(model, out)
    if model.context_layers is None:
        return dec.pull(idx), mu
    mask = context.anchors(idx.shape[1], idx.shape[2])
    symbols = np.zeros(idx.shape, np.int64)
    symbols[:, mask] = dec.pull(idx[:, mask])
    mu_n, idx_n = _params(model, context.refine(model.context_layers, out, symbols, inplace=True))
    symbols[:, ~mask] = dec.pull(idx_n[:, ~mask])
    return symbols, np.where(mask, mu, mu_n)


def analyse_batch(rgbs: list[np.ndarray], qualities: list[float], device: str | None = None,
                  precision: str | None = None, method: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(integer ẑ, gained latents y) of same-size (H, W, 3) uint8 images.

    The transforms run on the whole batch at once (one pass per tile), which keeps a GPU busy.
    ``method`` > 0 then refines the latents on each image's own loss (``refine.py``).
    """
    torch = _torch()
    steps = refine.steps_for(method)
    device = resolve_device(device)
    model = load()
    precision = resolve_precision(precision, device, analysis=True, int8=model.has_int8)
    wide = "float64" if precision == "float64" else "float32"  # the weights', and h_a's
    net = model.net(device, wide)
    g_a = model.int8_analysis() if precision == "int8" else net.g_a
    gains = np.stack([2 ** model.log2_gains(q)[0] for q in qualities]).astype(np.float32)
    with torch.inference_mode():
        y = _analysis(net, rgbs, device, precision, g_a)  # hands freed heap back tile by tile
        y *= gains[:, :, None, None]
        # ẑ in float32 (float64) whatever the analysis ran in: h_a is ~1 % of the analysis; oneDNN's
        # bfloat16 5x5 stride-2 convolution returns garbage where its output is one column wide
        # (an image at most 64 pixels wide): ẑ of 3e12 was seen, and calls disagreed
        z = _run(torch, net.h_a, torch.from_numpy(y).to(device), wide).float().cpu().numpy()
    if steps:
        h, w = rgbs[0].shape[:2]
        windows = list(_windows(-(-h // LATENT_STRIDE), -(-w // LATENT_STRIDE), y.shape[2:]))
        inv_gains = np.stack([2 ** model.log2_gains(q)[1] for q in qualities])
        y, z = refine.refine(model.net(device, "float32", entropy=True), rgbs, y, z,
                             [model.lambda_for(q) for q in qualities], inv_gains, steps, windows,
                             LATENT_STRIDE, functools.partial(_file_bits, model), device,
                             resolve_precision(None, device))
    z = np.round(z).astype(np.int64)
    return [(z[i], y[i]) for i in range(len(rgbs))]


def _file_bits(model: Model, y: np.ndarray, z: np.ndarray) -> list[float]:
    """Bits of the coded latents of each image of a batch of float (y, z); infinite for
    latents no file should hold (not finite, or beyond 2**20: a refinement that diverged)."""
    def bits(yi: np.ndarray, zi: np.ndarray) -> float:
        if not (np.all(np.abs(yi) < 2**20) and np.all(np.abs(zi) < 2**20)):  # also False for NaN
            return float("inf")
        return 8.0 * sum(map(len, code_latents(model, np.round(zi).astype(np.int64), yi)))

    return [bits(yi, zi) for yi, zi in zip(y, z)]


def code_latents(model: Model, z: np.ndarray, y: np.ndarray) -> tuple[bytes, bytes]:
    """(LATZ, LATY) payloads: ẑ with per-channel tables, then y band by band (last band first)."""
    latz, laty, _, _ = _code_latents(model, z, y, keep=False)
    return latz, laty


def _code_latents(model: Model, z: np.ndarray, y: np.ndarray,
                  keep: bool) -> tuple[bytes, bytes, np.ndarray | None, np.ndarray | None]:
    """``code_latents``, and with ``keep`` also the image's symbols and scale indexes."""
    latz = entropy.encode(z, _channel_index(z.shape), model.z_tables)
    enc = entropy.Encoder(model.y_tables)
    f = hyper.upsampling(model.hyper_layers)
    kept = []
    bands = hyper.bands(z.shape[1])
    with blas.threads(1):  # one section for all bands, see decode_y_hat
        for top, bottom in reversed(bands):
            symbols, idx = _encode_band(model, enc, z, top, bottom, y[:, top * f : bottom * f])
            if len(bands) > 1:
                _return_freed_heap()  # each band's temporaries otherwise fragment the heap
            if keep:
                kept.append((symbols, idx))
    if not keep:
        return latz, enc.finish(), None, None
    return (latz, enc.finish(), np.concatenate([k[0] for k in kept[::-1]], axis=1).astype(np.int64),
            np.concatenate([k[1] for k in kept[::-1]], axis=1))


def encode_latents(rgb: np.ndarray, quality: float, device: str | None = None) -> tuple[Model, np.ndarray, np.ndarray, np.ndarray, bytes]:
    """(model, integer ẑ, integer latent symbols, their scale indexes, the RGB ``.cnnz`` file)
    of an (H, W, 3) uint8 image, all from one analysis.

    One analysis matters for comparisons: two float analyses of the same pixels may round a
    latent differently on some CPUs (bfloat16 kernels); the file is what the symbols code.
    """
    model = load()
    ((z, y),) = analyse_batch([rgb], [quality], device)
    latz, laty, symbols, idx = _code_latents(model, z, y, keep=True)
    data = container.serialize(rgb.shape[1], rgb.shape[0], "RGB", _check_quality(quality), model.model_id,
                               {"LATZ": latz, "LATY": laty})
    return model, z, symbols, idx, data


def _channel_index(shape: tuple[int, ...]) -> np.ndarray:
    """Table index of each ẑ: its channel."""
    return np.broadcast_to(np.arange(shape[0], dtype=np.int32)[:, None, None], shape)


def _latent_bands(header: container.Header, latz: bytes, laty: bytes):
    """(model, ẑ, then per band: latent rows, symbols, means): numpy only, exact."""
    model = load(header.model_id)
    zh, zw = _hyper_grid(header.height, header.width)
    f = hyper.upsampling(model.hyper_layers)
    m = model.meta["config"]["M"]
    try:
        z = entropy.decode(latz, _channel_index((model.meta["config"]["Nz"], zh, zw)), model.z_tables)
        dec = entropy.Decoder(laty, model.y_tables, m * zh * f * zw * f)
        yield model, z
        for top, bottom in hyper.bands(zh):
            yield (top * f, bottom * f), *_decode_band(model, dec, z, top, bottom)
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


def decode_y_hat(header: container.Header, latz: bytes, laty: bytes) -> np.ndarray:
    """The synthesis input ŷ = (symbols + μ) × inverse gain, (M, h, w) float32, built band by band."""
    # One BLAS section for the whole file, inside which the integer networks' sections just
    # run: BLAS's count changes once, not at every band (raising it again lets OpenBLAS's
    # idle workers spin, which took the cores from the other files of a batch).
    with blas.threads(1):
        it = _latent_bands(header, latz, laty)
        model, z = next(it)
        f = hyper.upsampling(model.hyper_layers)
        inv_gain = (2 ** model.log2_gains(header.quality)[1]).astype(np.float32)[:, None, None]
        y_hat = np.empty((model.meta["config"]["M"], z.shape[1] * f, z.shape[2] * f), np.float32)
        for (a, b), symbols, mu in it:
            np.multiply(symbols + mu, inv_gain, out=y_hat[:, a:b])
    return y_hat


def synthesize_batch(headers: list[container.Header], y_hats: list[np.ndarray],
                     device: str | None = None, precision: str | None = None) -> list[np.ndarray]:
    """(H, W, 3) uint8 pixels of same-size files from their decoded ŷ, in one batch.

    A float32 synthesis on a CPU runs in numpy for an image under ``TORCH_FROM_PIXELS`` (and
    wherever torch is not installed), in torch from there: numpy spares a process that only
    decodes the 1-2 s torch import, which torch's faster convolutions pay back on a large image
    only. The two give pixels within float rounding of each other, not the same ones, so the
    choice follows the image and never whether torch is imported already. bfloat16, int8 (the
    residual blocks the model's ranges file names, ``int8.py``), float64 and CUDA run in torch.
    """
    device = resolve_device(device)
    model = load(headers[0].model_id)
    precision = resolve_precision(precision, device, int8=model.has_int8)
    y = y_hats[0][None] if len(y_hats) == 1 else np.stack(y_hats)
    height, width = headers[0].height, headers[0].width
    if device == "cpu" and precision == "float32" and (width * height < TORCH_FROM_PIXELS or not _torch_installed()):
        return list(_synthesis(_numpy_synthesis(model), y, height, width))
    torch = _torch()
    net = model.net(device, "float64" if precision == "float64" else "float32")
    body = model.int8_synthesis() if precision == "int8" else None
    with torch.inference_mode():
        return list(_synthesis(_torch_synthesis(net, device, precision, body), y, height, width))


def decode_rgb(header: container.Header, latz: bytes, laty: bytes, device: str | None = None,
               precision: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a file's latent sections."""
    return synthesize_batch([header], [decode_y_hat(header, latz, laty)], device, precision)[0]


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


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        msg = f"batch_size must be a whole number from 1, got {batch_size!r}"
        raise ValueError(msg)
    return int(batch_size)


def _groups(shapes: list[tuple], batch_size: int) -> list[list[int]]:
    """Indexes of same-size items, in chunks of at most ``batch_size`` (checked: ``_check_batch_size``)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(shape, []).append(i)
    return [ids[k : k + batch_size] for ids in by_shape.values() for k in range(0, len(ids), batch_size)]


def encode_batch(images: list[np.ndarray], modes: list[str], quality: float = 4.0, *, device: str | None = None,
                 metadata: list[dict[str, bytes] | None] | None = None, batch_size: int = 8,
                 method: int = 0) -> list[bytes]:
    """``.cnnz`` files of many uint8 arrays; same-size images share one network pass.

    ``metadata`` maps the container tags ``EXIF``, ``ICCP`` and ``XMP `` to raw bytes.
    ``method`` trades encode time for size, as in Pillow's WebP: 0 (default) is the analysis
    alone; 1-6 refine the latents on each image (``refine.METHOD_STEPS``), same decoder.
    Everything is validated before any encoding starts.
    """
    import zstandard

    settings.check_all()
    quality = _check_quality(quality)
    method = refine.check_method(method)
    batch_size = _check_batch_size(batch_size)
    if len(modes) != len(images):
        msg = f"{len(images)} images but {len(modes)} modes"
        raise ValueError(msg)
    split = [_check_image(px, mode) for px, mode in zip(images, modes)]
    metadata = metadata or [None] * len(images)
    out: list[bytes] = [b""] * len(images)
    for ids in _groups([px.shape[:2] for px in images], batch_size):
        latents = analyse_batch([split[i][0] for i in ids], [quality] * len(ids), device, method=method)
        model = load()

        def exact_stage(job: tuple[int, tuple[np.ndarray, np.ndarray]]) -> bytes:
            i, (z, y) = job
            sections = {k: v for k, v in (metadata[i] or {}).items() if v}
            alpha = split[i][1]
            if alpha is not None:
                sections["ALPH"] = zstandard.ZstdCompressor(level=10).compress(np.ascontiguousarray(alpha).tobytes())
            sections["LATZ"], sections["LATY"] = code_latents(model, z, y)
            h, w = images[i].shape[:2]
            return container.serialize(w, h, modes[i], quality, model.model_id, sections)

        for i, data in zip(ids, _per_file(exact_stage, list(zip(ids, latents)))):
            out[i] = data
    return out


def encode(pixels: np.ndarray, mode: str, quality: float = 4.0, *, device: str | None = None,
           metadata: dict[str, bytes] | None = None, method: int = 0) -> bytes:
    """A complete ``.cnnz`` file for an (H, W[, C]) uint8 array in mode L, LA, RGB or RGBA."""
    return encode_batch([pixels], [mode], quality, device=device, metadata=[metadata], method=method)[0]


def _alpha(header: container.Header, payloads: dict[str, bytes]) -> np.ndarray | None:
    """The alpha plane, decompressed to at most its known size.

    zstd frames may state a content size, and the one-shot decompressor allocates what
    it states: a damaged header would ask for any amount. So the stated size is checked
    first and the data is read through a stream, never more than ``width * height + 1`` bytes.
    """
    import zstandard

    if "ALPH" not in payloads:
        return None
    size = header.width * header.height
    data = payloads["ALPH"]
    try:
        stated = zstandard.frame_content_size(data)
        if stated >= 0 and stated != size:  # negative: not stated
            msg = f"section 'ALPH' states {stated} bytes, expected {size}"
            raise container.CorruptFileError(msg)
        chunks, got = [], 0
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while got <= size:
                chunk = reader.read(size + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except zstandard.ZstdError as e:
        msg = f"section 'ALPH' does not decompress: {e}"
        raise container.CorruptFileError(msg) from e
    if got != size:
        msg = f"section 'ALPH' holds {'more than ' if got > size else ''}{got} bytes, expected {size}"
        raise container.CorruptFileError(msg)
    return np.frombuffer(b"".join(chunks), np.uint8).reshape(header.height, header.width)


def _finish(header: container.Header, rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Pixels in the file's mode: (H, W) for L, (H, W, C) otherwise."""
    if header.mode == "RGB":
        return rgb
    if header.mode == "RGBA":
        return np.dstack([rgb, alpha])
    luma = _luma(rgb)
    return luma if header.mode == "L" else np.dstack([luma, alpha])


def _check_bomb(header: container.Header) -> None:
    """``Image.open``'s decompression-bomb check for the numpy API, before any allocation: a
    ``DecompressionBombWarning`` above ``PIL.Image.MAX_IMAGE_PIXELS``, a ``DecompressionBombError``
    above twice it. (Pillow checks a file opened with ``Image.open`` itself.)"""
    from PIL import Image

    limit, pixels = Image.MAX_IMAGE_PIXELS, header.width * header.height
    if limit and pixels > 2 * limit:
        msg = (f"image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, "
               "could be decompression bomb DOS attack; raise PIL.Image.MAX_IMAGE_PIXELS to allow it")
        raise Image.DecompressionBombError(msg)
    if limit and pixels > limit:
        msg = f"image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack"
        warnings.warn(msg, Image.DecompressionBombWarning, stacklevel=3)


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _per_file(fn: Any, items: list) -> list:
    """``[fn(x) for x in items]``, on a thread per CPU core when there are several items.

    For the exact per-file stage of a batch (entropy coding, the integer networks, alpha):
    numpy and zstd release the GIL for most of it, and its results do not depend on
    threads. On a GPU this stage bounded a batch decode: 93 % of it on one core
    (``benchmarks/gpu.py``). ``fn`` runs in the one-thread BLAS section held here
    (``blas.lend``), so it must not ask for another count (the float synthesis)."""
    workers = min(len(items), _cores())
    if workers < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    # One BLAS section for the batch, lent to the workers: BLAS's count is set once, by this
    # thread (restored between files, OpenBLAS's idle workers spin and take the cores).
    with blas.threads(1), ThreadPoolExecutor(workers, thread_name_prefix="cnnz-batch") as pool:
        return list(pool.map(blas.lend(fn), items))


def y_hat_of(file: tuple[container.Header, dict[str, bytes]]) -> np.ndarray:
    """``decode_y_hat`` of a parsed file (header, sections): the exact stage of its decode."""
    header, payloads = file
    return decode_y_hat(header, payloads["LATZ"], payloads["LATY"])


def decode_parsed(files: list[tuple[container.Header, dict[str, bytes]]], device: str | None = None,
                  batch_size: int = 8) -> list[np.ndarray]:
    """Pixels of parsed files. Their entropy decoding runs on a thread per core; on a GPU
    same-size files then share one synthesis pass, on a CPU they are synthesized one at a
    time (a batch of 8 Kodak images took 189 ms a file against 172 one by one)."""
    settings.check_all()
    batch_size = _check_batch_size(batch_size)
    out: list[np.ndarray] = [np.empty(0)] * len(files)

    def exact_stage(i: int) -> tuple[np.ndarray | None, np.ndarray]:
        return _alpha(*files[i]), y_hat_of(files[i])

    for ids in _groups([(f[0].height, f[0].width, f[0].model_id) for f in files], batch_size):
        headers = [files[i][0] for i in ids]
        alphas, y_hats = zip(*_per_file(exact_stage, ids))
        if resolve_device(device) == "cpu":
            rgbs = [synthesize_batch([h], [y], device)[0] for h, y in zip(headers, y_hats)]
        else:
            rgbs = synthesize_batch(headers, list(y_hats), device)
        for i, h, a, rgb in zip(ids, headers, alphas, rgbs):
            out[i] = _finish(h, rgb, a)
    return out


def decode_payloads(header: container.Header, payloads: dict[str, bytes], device: str | None = None) -> np.ndarray:
    """Pixels of one parsed file: (H, W) for L, (H, W, C) otherwise."""
    return decode_parsed([(header, payloads)], device)[0]


def decode_batch(files: list[bytes | str | os.PathLike], device: str | None = None,
                 batch_size: int = 8) -> list[np.ndarray]:
    """Pixels of many complete ``.cnnz`` files, given as bytes or as paths (all validated,
    and checked against ``PIL.Image.MAX_IMAGE_PIXELS``, before any decoding).

    Raises ``CorruptFileError`` (an ``OSError`` and a ``ValueError``) for bytes that are not a
    complete, undamaged ``.cnnz`` file, including bytes of another format."""
    _check_batch_size(batch_size)
    parsed = [_parse(file) for file in files]
    for header, _ in parsed:
        _check_bomb(header)
    return decode_parsed(parsed, device, batch_size)


def decode(data: bytes | str | os.PathLike, device: str | None = None) -> np.ndarray:
    """Pixels of a complete ``.cnnz`` file, given as bytes or a path (see :func:`decode_batch`)."""
    return decode_batch([data], device)[0]


def _parse(file: bytes | str | os.PathLike) -> tuple[container.Header, dict[str, bytes]]:
    """(header, payloads) of a file's bytes or of the file at a path.

    ``container.parse`` raises ``SyntaxError`` for another format, Pillow's signal to try its
    next plugin (``Image.open``); here there is no next plugin, so it is a ``CorruptFileError``.
    A path is read only past a valid header, so a large file of another kind is not read whole."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fp:
            start = fp.read(container.HEADER_SIZE)
            data = start + fp.read() if container.accept(start) else start
        name = os.fsdecode(file)
    elif isinstance(file, (bytes, bytearray, memoryview)):
        data, name = bytes(file), None
    else:
        msg = f"expected the bytes of a .cnnz file or a path, got {type(file).__name__}"
        raise TypeError(msg)
    try:
        return container.parse(data)
    except SyntaxError:
        if name is not None:
            msg = f"{name} is not a cnnz file"
        else:
            msg = f"not a cnnz file: the data starts {data[:8]!r}" if data else "not a cnnz file: the data is empty"
        raise errors.CorruptFileError(msg) from None
    except errors.CorruptFileError as e:
        if name is None:
            raise
        msg = f"{name}: {e}"
        raise type(e)(msg) from e
