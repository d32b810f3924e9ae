"""The decoder's float transform: the tiled synthesis in torch or in numpy, and which of the two a decode runs."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import blas, container, tiling
from . import precision as policy
from .latents import decode_y_hat
from .weights import Weights, load

# From this many pixels a float32 synthesis on a CPU runs in torch (where installed), below it in numpy:
# torch's convolutions are faster, but importing torch is slow, which only a large image pays back
# in a process that only decodes (synthesize_batch). A function of the image, so a file decodes to the
# same pixels in any process.
TORCH_FROM_PIXELS = 2_000_000


def torch_synthesis(net: Any, device: str, precision: str, body: Any = None, head: Any = None,
                    tap: int = 0, scale: int = 1) -> Any:
    """Tile synthesis in torch; the last, cheap layer runs in float32 so bfloat16 does not
    round the output pixels. ``body`` replaces ``net.g_s[:-1]`` (the int8 synthesis); a ``head``
    (``layers.output_head``) replaces what follows layer ``tap`` of ``g_s``: the image at
    1/``scale`` (``heads.py``). Each layer computes only the part of its output the tile's own pixels
    depend on (``layers.TileCrops``): the same pixels as the whole window, for less work."""
    torch = policy.import_torch()
    from .layers import TileCrops, run_cropped

    modules = list(net.g_s) if head is None else [*net.g_s[: tap + 1], *head]
    last = modules[-1]
    wide = torch.float64 if precision == "float64" else torch.float32
    if body is None:  # the float layers: crops copied dense, for oneDNN's in-place sums
        def hidden(t: Any, crops: TileCrops) -> Any:
            return policy.run_in(torch, lambda v: run_cropped(modules[:-1], v, crops), t, precision)
    else:  # int8 layers read cropped views band by band, a head's hidden layer runs in float32
        stop = len(net.g_s) - 1 if head is None else tap + 1

        def hidden(t: Any, crops: TileCrops) -> Any:
            x = body(t, crops, stop)
            for i in range(stop, len(modules) - 1):
                x = crops(i, modules[i](x))
            return x

    def run(y: np.ndarray, core: tuple | None = None) -> np.ndarray:
        """The window's output pixels ``core`` (default: all of them)."""
        stride = tiling.LATENT_STRIDE // scale
        whole = ((0, stride * y.shape[2]), (0, stride * y.shape[3]))
        crops = TileCrops(modules, core or whole, y.shape[2:], dense=body is None, in_output=True)
        t = torch.from_numpy(np.ascontiguousarray(y)).to(device).contiguous(memory_format=torch.channels_last)
        x = last.conv(hidden(t, crops).to(wide))
        # Rounded to bytes before the pixel shuffle (per-value steps: the same bytes), and shuffled
        # straight into (N, H, W, 3): a float32 shuffle to 3 channels is a costly copy.
        x = x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        n, c, h, w = x.shape
        r = last.shuffle.upscale_factor
        x = x.permute(0, 2, 3, 1).reshape(n, h, w, c // (r * r), r, r).permute(0, 1, 4, 2, 5, 3)
        rows, cols = crops.slices(len(modules) - 1)
        return x.reshape(n, h * r, w * r, c // (r * r))[:, rows, cols].cpu().numpy()

    return run


def numpy_synthesis(model: Weights, scale: int = 1) -> Any:
    """Tile synthesis in numpy float32 (``synthesis_np``): a float32 CPU decode of an image under
    ``TORCH_FROM_PIXELS`` needs no torch."""
    synth = model.numpy_synthesis(scale)

    def run(y: np.ndarray, core: tuple | None = None) -> np.ndarray:
        """The window's output pixels ``core`` (default: all of them)."""
        workers = blas.default_count()
        with blas.threads(1):  # bands on a thread per core, each sgemm on one (synthesis_np)
            x = synth(y, workers, core)
        np.clip(x, 0, 1, out=x)
        x *= 255
        return np.rint(x, out=x).astype(np.uint8).transpose(0, 2, 3, 1)

    return run


def synthesize_batch(headers: list[container.Header], y_hats: list[np.ndarray],
                     device: str | None = None, precision: str | None = None, scale: int = 1) -> list[np.ndarray]:
    """(H, W, 3) uint8 pixels of same-size files from their decoded ŷ, in one batch; with a
    ``scale``, the image at 1/``scale`` (``heads.scaled_size``).

    A float32 synthesis on a CPU runs in numpy for an image under ``TORCH_FROM_PIXELS`` (and
    wherever torch is not installed), in torch from there: numpy spares a process that only
    decodes the torch import, which torch's faster convolutions pay back on a large image
    only. The two give pixels within float rounding of each other, not the same ones, so the
    choice follows the image and never whether torch is imported already. bfloat16, int8 (the
    residual blocks the model's ranges file names, ``int8.py``), float64 and CUDA run in torch.

    A scale the model has a head for runs the synthesis up to the head, then the head
    (``heads.py``); any other runs it whole and reduces the result by area, so every scale
    works with every model.
    """
    device = policy.resolve_device(device)
    model = load(headers[0].model_id)
    precision = policy.resolve_precision(precision, device, int8=model.has_int8)
    y = y_hats[0][None] if len(y_hats) == 1 else np.stack(y_hats)
    height, width = headers[0].height, headers[0].width
    if scale > 1 and scale not in model.heads():
        return [reduced(rgb, scale) for rgb in synthesize_batch(headers, y_hats, device, precision)]
    if device == "cpu" and precision == "float32" and (width * height < TORCH_FROM_PIXELS or not policy.torch_installed()):
        return list(tiling.synthesize_tiles(numpy_synthesis(model, scale), y, height, width, scale))
    torch = policy.import_torch()
    net = model.net(device, "float64" if precision == "float64" else "float32")
    body = model.int8_synthesis() if precision == "int8" else None
    head, tap = None, 0
    if scale > 1:
        head, tap = model.head_net(scale, device, "float64" if precision == "float64" else "float32"), model.heads()[scale].tap
    with torch.inference_mode():
        run = torch_synthesis(net, device, precision, body, head, tap, scale)
        return list(tiling.synthesize_tiles(run, y, height, width, scale))


def reduced(rgb: np.ndarray, scale: int) -> np.ndarray:
    """``rgb`` reduced by ``scale`` by area (Pillow's ``reduce``: each pixel the mean of a
    ``scale``×``scale`` block, edge blocks of what they hold; sizes rounded up)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).reduce(scale))


def decode_rgb(header: container.Header, latz: bytes, laty: bytes, device: str | None = None,
               precision: str | None = None, scale: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a file's latent sections (at 1/``scale``)."""
    return synthesize_batch([header], [decode_y_hat(header, latz, laty)], device, precision, scale)[0]
