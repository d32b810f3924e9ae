"""pillow-cnnz: the ``.cnnz`` learned image format for Pillow and imageio.

``import pillow_cnnz`` registers the format; torch and the weights load only on the
first encode or decode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import imageio_plugin, pil_plugin

if TYPE_CHECKING:
    import numpy as np

__all__ = ["register", "encode", "decode", "__version__"]
__version__ = "0.1.0"


def register() -> None:
    """Register ``.cnnz`` with Pillow and imageio (done on import; safe to repeat)."""
    pil_plugin.register()
    imageio_plugin.register()


def encode(pixels: "np.ndarray", mode: str = "RGB", quality: float = 4.0, *, device: str | None = None) -> bytes:
    """A ``.cnnz`` file (bytes) of a uint8 array in mode L, LA, RGB or RGBA."""
    from . import codec

    return codec.encode(pixels, mode, quality, device=device)


def decode(data: bytes, *, device: str | None = None) -> "np.ndarray":
    """The uint8 pixels of a ``.cnnz`` file."""
    from . import codec

    return codec.decode(data, device=device)


register()
