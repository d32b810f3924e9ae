"""Pixels <-> ``.cnnz`` bytes, the orchestration: validate, analyse, code the latents, write the container, and back.

Each step lives in a module named for its job: ``modes`` (colour, alpha, luma), ``analysis``
(the encoder's float transforms, ``refine`` for ``method`` > 0), ``latents`` (the exact
entropy coding, numpy only), ``synthesis`` (the decoder's float transform, torch or numpy),
``precision`` (device and number type), ``tiling`` and ``batching``. Only the float
transforms run in torch, so a file decodes to the same latents everywhere.
"""
from __future__ import annotations

import numbers
import os
import warnings

import numpy as np

from . import batching, container, errors, folding, heads, refine, settings
from .analysis import analyse_batch
from .latents import code_latents, code_latents_with_symbols, y_hat_of
from .modes import check_image, finish, pack_alpha, unpack_alpha
from .precision import check_installed, require_torch, resolve_device
from .synthesis import reduced, synthesize_batch
from .weights import Weights, load


def check_quality(quality: float) -> float:
    """The quality as the header holds it (1 to 8, in thousandths), else ValueError."""
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not 1 <= quality <= 8:
        msg = f"quality must be a number from 1 (smallest) to 8 (best), got {quality!r}"
        raise ValueError(msg)
    return round(float(quality) * 1000) / 1000  # what the header holds, so decoding uses the same gains


def encode_batch(images: list[np.ndarray], modes: list[str], quality: float = 4.0, *, device: str | None = None,
                 metadata: list[dict[str, bytes] | None] | None = None, batch_size: int = 8,
                 method: int = 0) -> list[bytes]:
    """``.cnnz`` files of many uint8 arrays; same-size images share one network pass.

    ``metadata`` maps the container tags ``EXIF``, ``ICCP`` and ``XMP `` to raw bytes.
    ``method`` trades encode time for size, as in Pillow's WebP: 0 (default) is the analysis
    alone; 1-6 refine the latents on each image (``refine.METHOD_STEPS``), same decoder.
    Everything is validated before any encoding starts; without torch installed (writing
    needs it: ``pip install "pillow-cnnz[torch]"``), an OSError saying so comes first.
    """
    require_torch("writing .cnnz")
    settings.check_all()
    quality = check_quality(quality)
    method = refine.check_method(method)
    batch_size = batching.check_batch_size(batch_size)
    if len(modes) != len(images):
        msg = f"{len(images)} images but {len(modes)} modes"
        raise ValueError(msg)
    split = [check_image(px, mode) for px, mode in zip(images, modes)]
    folds = [folding.plan(*px.shape[:2]) for px in images]  # a thin image is coded folded (folding.py)
    rasters = [folding.fold(rgb, *f) if f[0] else rgb for (rgb, _), f in zip(split, folds)]
    metadata = metadata or [None] * len(images)
    out: list[bytes] = [b""] * len(images)
    for ids in batching.groups([px.shape[:2] for px in rasters], batch_size):
        latents = analyse_batch([rasters[i] for i in ids], [quality] * len(ids), device, method=method)
        model = load()
        workers = max(1, batching.cores() // len(ids))  # the cores the group's files leave free

        def exact_stage(job: tuple[int, tuple[np.ndarray, np.ndarray]]) -> bytes:
            i, (z, y) = job
            sections = {k: v for k, v in (metadata[i] or {}).items() if v}
            alpha = split[i][1]
            if alpha is not None:
                sections["ALPH"] = pack_alpha(alpha)
            sections["LATZ"], sections["LATY"] = code_latents(model, z, y, workers)
            h, w = images[i].shape[:2]
            return container.serialize(w, h, modes[i], quality, model.model_id, sections, *folds[i])

        for i, data in zip(ids, batching.per_file(exact_stage, list(zip(ids, latents)))):
            out[i] = data
    return out


def encode(pixels: np.ndarray, mode: str, quality: float = 4.0, *, device: str | None = None,
           metadata: dict[str, bytes] | None = None, method: int = 0) -> bytes:
    """A complete ``.cnnz`` file for an (H, W[, C]) uint8 array in mode L, LA, RGB or RGBA."""
    return encode_batch([pixels], [mode], quality, device=device, metadata=[metadata], method=method)[0]


def encode_latents(rgb: np.ndarray, quality: float,
                   device: str | None = None) -> tuple[Weights, np.ndarray, np.ndarray, np.ndarray, bytes]:
    """(weights, integer ẑ, integer latent symbols, their scale indexes, the RGB ``.cnnz`` file)
    of an (H, W, 3) uint8 image, all from one analysis.

    One analysis matters for comparisons: two float analyses of the same pixels may round a
    latent differently on some CPUs (bfloat16 kernels); the file is what the symbols code.
    """
    model = load()
    ((z, y),) = analyse_batch([rgb], [quality], device)
    latz, laty, symbols, idx = code_latents_with_symbols(model, z, y)
    data = container.serialize(rgb.shape[1], rgb.shape[0], "RGB", check_quality(quality), model.model_id,
                               {"LATZ": latz, "LATY": laty})
    return model, z, symbols, idx, data


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


def decode_parsed(files: list[tuple[container.Header, dict[str, bytes]]], device: str | None = None,
                  batch_size: int = 8, scale: int = 1) -> list[np.ndarray]:
    """Pixels of parsed files (at 1/``scale`` of their size, ``heads.py``). Their entropy decoding
    runs on a thread per core; on a GPU same-size files then share one synthesis pass, on a CPU
    they are synthesized one at a time (a CPU gains nothing from a batch, and one file at a time
    bounds the memory)."""
    settings.check_all()
    check_installed(device)  # without torch, a device or precision that needs it fails before any work
    batch_size = batching.check_batch_size(batch_size)
    scale = heads.check_scale(scale)
    out: list[np.ndarray] = [np.empty(0)] * len(files)
    # The latents code a folded file's raster (latents reads them as such): it is synthesized as its own image.
    coded = [folding.coded_header(header) for header, _ in files]
    keys = [(c.height, c.width, c.model_id, f[0].fold > 0) for c, f in zip(coded, files)]
    for ids in batching.groups(keys, batch_size):
        headers = [coded[i] for i in ids]
        workers = max(1, batching.cores() // len(ids))  # the cores the group's files leave free

        def exact_stage(i: int) -> tuple[np.ndarray | None, np.ndarray]:
            alpha = unpack_alpha(*files[i])  # in the image's layout, folded or not
            return (alpha if alpha is None or scale == 1 else reduced(alpha, scale)), y_hat_of(files[i], workers)

        # A folded raster's pixels are not the image's at any scale: it is synthesized whole,
        # unfolded, then reduced by area (a head would blur across the seams between segments).
        at = 1 if files[ids[0]][0].fold else scale
        alphas, y_hats = zip(*batching.per_file(exact_stage, ids))
        if resolve_device(device) == "cpu":
            rgbs = [synthesize_batch([h], [y], device, scale=at)[0] for h, y in zip(headers, y_hats)]
        else:
            rgbs = synthesize_batch(headers, list(y_hats), device, scale=at)
        for i, a, rgb in zip(ids, alphas, rgbs):
            header = files[i][0]
            if header.fold:
                rgb = folding.unfold(rgb, header.height, header.width, header.fold, header.fold_columns)
                rgb = rgb if scale == 1 else reduced(rgb, scale)
            out[i] = finish(header, rgb, a)
    return out


def decode_payloads(header: container.Header, payloads: dict[str, bytes], device: str | None = None,
                    scale: int = 1) -> np.ndarray:
    """Pixels of one parsed file: (H, W) for L, (H, W, C) otherwise (at 1/``scale``)."""
    return decode_parsed([(header, payloads)], device, scale=scale)[0]


def decode_batch(files: list[bytes | str | os.PathLike], device: str | None = None,
                 batch_size: int = 8, scale: int = 1) -> list[np.ndarray]:
    """Pixels of many complete ``.cnnz`` files, given as bytes or as paths (all validated,
    and checked against ``PIL.Image.MAX_IMAGE_PIXELS``, before any decoding), at 1/``scale``
    of their size (``heads.SCALES``).

    Raises ``CorruptFileError`` (an ``OSError`` and a ``ValueError``) for bytes that are not a
    complete, undamaged ``.cnnz`` file, including bytes of another format."""
    batching.check_batch_size(batch_size)
    heads.check_scale(scale)
    parsed = [_parse(file) for file in files]
    for header, _ in parsed:
        _check_bomb(header)
    return decode_parsed(parsed, device, batch_size, scale)


def decode(data: bytes | str | os.PathLike, device: str | None = None, scale: int = 1) -> np.ndarray:
    """Pixels of a complete ``.cnnz`` file, given as bytes or a path (see :func:`decode_batch`)."""
    return decode_batch([data], device, scale=scale)[0]


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
