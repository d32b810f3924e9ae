"""One image converted, engine-neutral: :func:`convert_bytes` and :func:`convert_file` (a process pool, Dask, Ray or Spark calls them as they are), reading and writing local paths or fsspec URLs.

Outputs are written whole or not at all (``atomic``), so an output that exists is complete.
A file that fails gives a :class:`Result` carrying the reason. Nothing here imports torch
until an image is converted; the model loads once per process, on its first image.
"""
from __future__ import annotations

import dataclasses
import io
import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import atomic, pil_plugin
from .precision import require_torch

CNNZ = "cnnz"
IF_EXISTS = ("fail", "skip", "overwrite")
EXISTS = "the output exists (--skip-existing keeps it, --overwrite replaces it)"
_NOT_8_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_OTHER_COLOURS = ("CMYK", "LAB", "HSV")


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one source. ``bytes_in`` / ``bytes_out``: read and written by this run
    (0 for a skipped file); ``error``: the reason it failed, else None."""

    source: str
    output: str | None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def target(to: str) -> tuple[str, str]:
    """(Pillow format id, output extension) of ``to``: ``cnnz`` or an extension Pillow writes."""
    name = to.lower().lstrip(".")
    if name == CNNZ:
        require_torch("converting to .cnnz")  # cnnz convert asks before any work
        return pil_plugin.FORMAT, pil_plugin.EXTENSION
    fmt = Image.registered_extensions().get(f".{name}")
    if fmt is None or fmt not in Image.SAVE:
        msg = f"cannot convert to {to!r}: Pillow writes no format of that name or extension"
        raise ValueError(msg)
    return fmt, f".{name}"


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The save options that carry an image's EXIF, ICC profile and XMP."""
    return {key: info[key] for key in ("exif", "icc_profile", "xmp") if info.get(key)}


def _to_8_bits(im: Image.Image) -> Image.Image:
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        msg = f"mode {im.mode} holds values outside 0..65535, which have no 16-bit scale to 8 bits"
        raise OSError(msg)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if im.mode == "HSV" or not icc:
        return im.convert("RGB")  # Pillow's own formulas; CMYK without a profile is naive
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")


def _storable(im: Image.Image, fmt: str, convert_modes: bool) -> tuple[Image.Image, dict[str, Any]]:
    """The image to save in ``fmt`` and the metadata options to save it with."""
    meta = _metadata(im.info)
    if fmt != pil_plugin.FORMAT or im.mode not in _NOT_8_BIT + _OTHER_COLOURS + ("F",):
        return im, meta
    if not convert_modes or im.mode == "F":
        why = ("floating-point pixels have no fixed range to scale" if im.mode == "F" else
               "16-bit" if im.mode in _NOT_8_BIT else "another colour space")
        how = ("" if im.mode == "F" else
               "; --convert (convert_modes=True) scales it to 8 bits" if im.mode in _NOT_8_BIT else
               "; --convert (convert_modes=True) converts it to sRGB through its ICC profile")
        msg = f"mode {im.mode} is not stored as it is ({why}){how}"
        raise OSError(msg)
    if im.mode in _NOT_8_BIT:
        return _to_8_bits(im), meta  # a grey ICC profile still describes the scaled values
    # The source's profile no longer describes the pixels (ImageCms tags its output with sRGB's)
    return _to_rgb(im, meta.pop("icc_profile", None)), meta


def _opened(data: bytes, device: str | None) -> Image.Image:
    """The decoded image in ``data``, its ``info`` included."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        msg = "not an image Pillow can read (no installed plugin recognises it)"
        raise OSError(msg) from None
    if im.format == pil_plugin.FORMAT and device is not None:
        from . import decode  # Image.load() has no device option

        decoded = Image.fromarray(decode(data, device=device))
        decoded.info = dict(im.info)
        return decoded
    im.load()
    return im


def convert_bytes(data: bytes, *, to: str = CNNZ, quality: float = 4.0, method: int = 0,
                  device: str | None = None, convert_modes: bool = False) -> bytes:
    """``data`` (an image file any Pillow plugin reads) as a file of format ``to``.

    ``to``: ``cnnz`` (encode, at ``quality`` and ``method``) or a format Pillow writes, by
    name or extension (``png``, ``jpeg``, ``webp``, ...: decode, with Pillow's default options
    for that format). EXIF (Orientation included, as stored), ICC profile and XMP are kept
    where the format stores them. Modes the target cannot store raise ``OSError``, unless
    ``convert_modes``: to CNNZ, 16-bit greys scale to 8 bits and CMYK, LAB and HSV convert
    to sRGB (CMYK through its embedded ICC profile when it has one); to other formats, an
    image the format refuses is saved as RGB (L for greys) instead, alpha dropped.
    Engine-neutral: no state but the model each process loads once.
    """
    fmt, _ = target(to)
    im = _opened(data, device)
    im, options = _storable(im, fmt, convert_modes)
    if fmt == pil_plugin.FORMAT:
        options.update(quality=quality, method=method, device=device)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **options)
    except OSError:
        if not convert_modes or fmt == pil_plugin.FORMAT:
            raise
        buf = io.BytesIO()
        im.convert("L" if im.mode in ("1", "L", "LA", "La") else "RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``file://`` paths are local)."""
    return "://" in path and not path.startswith("file://")


def local(path: str) -> str:
    """A local path, ``file://`` dropped."""
    return path[len("file://"):] if path.startswith("file://") else path


def read(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a local path or an fsspec URL (``s3://``, ``memory://``, ...)."""
    path = os.fspath(path)
    if is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as fp:
            return fp.read()
    return Path(local(path)).read_bytes()


def write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` whole or not at all: a local file through a rename, a URL in one put."""
    path = os.fspath(path)
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        fs.makedirs(posixpath.dirname(inner), exist_ok=True)
        fs.pipe_file(inner, data)
        return
    target_path = Path(local(path))
    target_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(target_path, data)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a local path or an fsspec URL exists."""
    path = os.fspath(path)
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return fs.exists(inner)
    return os.path.lexists(local(path))


def reason(e: BaseException) -> str:
    """The one-line reason a file failed, from its exception."""
    text = str(e)
    return text if isinstance(e, (OSError, ValueError)) and text else f"{type(e).__name__}: {text}"


def convert_file(source: str | os.PathLike[str], output: str | os.PathLike[str], *, if_exists: str = "overwrite",
                 **options: Any) -> Result:
    """Convert one file (local path or fsspec URL) into ``output``; never raises for the file.

    ``options`` are :func:`convert_bytes`'s. ``if_exists``: ``overwrite``, ``skip`` (an output
    that exists is complete, as outputs are written whole) or ``fail``. Any error becomes the
    result's ``error``; the output is then left as it was.
    """
    source, output = os.fspath(source), os.fspath(output)
    if if_exists not in IF_EXISTS:
        msg = f"if_exists must be one of {', '.join(IF_EXISTS)}, not {if_exists!r}"
        raise ValueError(msg)
    bytes_in = 0
    try:
        if if_exists != "overwrite" and exists(output):
            if if_exists == "skip":
                return Result(source, output, skipped=True)
            raise FileExistsError(EXISTS)
        data = read(source)
        bytes_in = len(data)
        out = convert_bytes(data, **options)
        write(output, out)
        return Result(source, output, bytes_in, len(out))
    except Exception as e:  # noqa: BLE001  (every failure of one file is that file's result)
        return Result(source, output, bytes_in, error=reason(e))
