"""pillow-cnnz: the ``.cnnz`` learned image format for Pillow and imageio.

``import pillow_cnnz`` registers the format; torch and the weights load only on the
first encode or decode.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from . import imageio_plugin, pil_plugin
from .errors import CorruptFileError, UnsupportedVersionError, WeightsError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["register", "save", "encode", "decode", "encode_batch", "decode_batch", "CorruptFileError",
           "UnsupportedVersionError", "WeightsError", "__version__"]
__version__ = "0.1.0"

_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def register() -> None:
    """Register ``.cnnz`` with Pillow and imageio (done on import; safe to repeat)."""
    pil_plugin.register()
    imageio_plugin.register()


def save(image: "Image.Image", path: str | os.PathLike[str], quality: float = 4.0, **params: Any) -> None:
    """``image.save(path, quality=...)`` that never leaves a partial file nor damages an existing one.

    Pillow truncates the target before encoding starts; this encodes in memory and
    renames a complete file into place. Otherwise the file is written as ``open(path, "wb")``
    would write it (``atomic``): a symlink is followed, a FIFO or device is written in place,
    a file keeps its mode and (where permitted) owner, and a path that ``open`` would refuse
    is refused with its error, before the encode. ``params`` are the usual save options
    (``exif``, ``icc_profile``, ``xmp``, ``device``, ``method``).
    """
    import io

    from . import atomic, precision

    precision.require_torch("writing .cnnz")  # before the target is looked at
    target = atomic.Target(path)
    buf = io.BytesIO()
    image.save(buf, format=pil_plugin.FORMAT, quality=quality, **params)
    target.write_bytes(buf.getvalue())


def _as_array(image: "np.ndarray | Image.Image") -> tuple["np.ndarray", str]:
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        image = pil_plugin._storable(image)
        return np.asarray(image), image.mode
    array = np.asarray(image)
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if array.ndim not in (2, 3) or channels not in _MODES_BY_CHANNELS:
        msg = f"cannot tell the mode of an array shaped {array.shape}; expected (H, W) or (H, W, 1-4)"
        raise ValueError(msg)
    if array.ndim == 3 and channels == 1:
        array = array[..., 0]
    return array, _MODES_BY_CHANNELS[channels]


def encode(image: "np.ndarray | Image.Image", quality: float = 4.0, *, device: str | None = None,
           method: int = 0, metadata: dict[str, Any] | None = None) -> bytes:
    """A ``.cnnz`` file (bytes) of a uint8 array (mode from its channels) or a PIL image.

    ``method`` 0-6 trades encode time for smaller files, as in Pillow's WebP (0: fastest).
    Metadata as in :func:`encode_batch` (``metadata`` is one image's entry)."""
    return encode_batch([image], quality, device=device, method=method, metadata=[metadata])[0]


def decode(data: bytes | str | os.PathLike[str], *, device: str | None = None, scale: int = 1) -> "np.ndarray":
    """The uint8 pixels of a ``.cnnz`` file, given as bytes or a path: (H, W) for L, (H, W, C) otherwise.

    ``scale`` 2, 4 or 8 decodes the image at 1/scale of its size (each side rounded up), for a
    fraction of a full decode's time where the weights ship an output head for that scale.

    Raises ``CorruptFileError`` (an ``OSError`` and a ``ValueError``) for anything that is not a
    complete, undamaged ``.cnnz`` file, and Pillow's ``DecompressionBombError`` above twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` (above it, a ``DecompressionBombWarning``), as ``Image.open`` does."""
    return decode_batch([data], device=device, scale=scale)[0]


def encode_batch(images: Sequence["np.ndarray | Image.Image"], quality: float = 4.0, *,
                 device: str | None = None, batch_size: int = 8, method: int = 0,
                 metadata: Sequence[dict[str, Any] | None] | None = None) -> list[bytes]:
    """Encode many images; same-size images go through the network together (fills a GPU).

    Each file keeps its image's EXIF (Orientation included), ICC profile and XMP as
    ``image.save`` does: a PIL image's from its ``info``. ``metadata[i]`` (the keys of Pillow's
    save options: ``exif``, ``icc_profile``, ``xmp``) gives them for an array, or replaces an
    image's (an empty value drops one)."""
    from . import codec

    metadata = [None] * len(images) if metadata is None else list(metadata)
    if len(metadata) != len(images):
        msg = f"metadata has {len(metadata)} entries for {len(images)} images"
        raise ValueError(msg)
    sections = [_metadata(image, given) for image, given in zip(images, metadata)]
    arrays, modes = zip(*map(_as_array, images)) if images else ((), ())
    return codec.encode_batch(list(arrays), list(modes), quality, device=device, batch_size=batch_size,
                              method=method, metadata=sections)


def _metadata(image: "np.ndarray | Image.Image", given: dict[str, Any] | None) -> dict[str, bytes]:
    """The EXIF / ICC / XMP sections of one file: ``given`` over a PIL image's ``info``."""
    from types import SimpleNamespace

    from PIL import Image

    unknown = sorted(set(given or {}) - {"exif", "icc_profile", "xmp"})
    if unknown:
        msg = f"metadata keys are exif, icc_profile and xmp, not {', '.join(unknown)}"
        raise ValueError(msg)
    info = image.info if isinstance(image, Image.Image) else {}
    # Read as the plugin reads a save's options over the image's info (the same bytes as img.save)
    return pil_plugin._metadata(SimpleNamespace(encoderinfo=dict(given or {}), info=info))


def decode_batch(files: Sequence[bytes | str | os.PathLike[str]], *, device: str | None = None,
                 batch_size: int = 8, scale: int = 1) -> list["np.ndarray"]:
    """Decode many ``.cnnz`` files (bytes or paths, as :func:`decode`, at 1/``scale``); same-size
    files share one synthesis pass. ``batch_size`` (from 1) bounds how many go through the network together."""
    from . import codec

    return codec.decode_batch(list(files), device=device, batch_size=batch_size, scale=scale)


register()
