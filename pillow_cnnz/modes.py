"""Image modes: an array's colour and alpha planes in, the file's mode out (luma as Pillow computes it), and the alpha section's compression."""
from __future__ import annotations

import numpy as np

from . import container


def split(pixels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
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


def check_image(pixels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``split`` of an array whose mode and size the container can hold, else ValueError."""
    if mode not in container.MODES:
        msg = f"cannot encode mode {mode!r}; supported modes are {', '.join(container.MODES)}"
        raise ValueError(msg)
    h, w = pixels.shape[:2]
    if not (1 <= h <= container.MAX_SIDE and 1 <= w <= container.MAX_SIDE):
        msg = f"image size {w}x{h} is outside 1..{container.MAX_SIDE} on a side"
        raise ValueError(msg)
    return split(pixels, mode)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma with Pillow's rounding, as ``Image.convert("L")`` computes it."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def pack_alpha(alpha: np.ndarray) -> bytes:
    """The ``ALPH`` section of an (H, W) uint8 alpha plane."""
    import zstandard

    return zstandard.ZstdCompressor(level=10).compress(np.ascontiguousarray(alpha).tobytes())


def unpack_alpha(header: container.Header, payloads: dict[str, bytes]) -> np.ndarray | None:
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


def finish(header: container.Header, rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Pixels in the file's mode: (H, W) for L, (H, W, C) otherwise."""
    if header.mode == "RGB":
        return rgb
    if header.mode == "RGBA":
        return np.dstack([rgb, alpha])
    gray = luma(rgb)
    return gray if header.mode == "L" else np.dstack([gray, alpha])
