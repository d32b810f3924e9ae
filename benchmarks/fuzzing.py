"""Mutation fuzzing of the decoder: hostile ``.cnnz`` files must end in a clear exception.

Used by ``tests/test_fuzz.py`` (a few hundred cases) and ``benchmarks/fuzz.py`` (100k+); a
test helper, not part of the installed package.
Two kinds of mutants:

- *raw*: bytes flipped, inserted, deleted, truncated, or header/section numbers set to
  0 / negative / huge / mismatched. Checksums catch these: decoding must raise.
- *resealed*: the same damage to a payload or header field, with every CRC recomputed,
  so it reaches the entropy decoder and the networks. Those may decode to *some* image
  of the declared size, or raise; they must never crash, hang or allocate wildly.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pillow_cnnz import container

# What Pillow raises for a damaged file: SyntaxError only while identifying it, OSError (the
# package's errors are OSErrors) and the bomb check after; a bare ValueError is a leak from inside.
ALLOWED = (SyntaxError, OSError, Image.DecompressionBombError)
_HEADER_FIELDS = {"width": (12, "<I"), "height": (16, "<I"), "mode": (20, "<B"), "quality": (22, "<H"),
                  "sections": (32, "<H"), "version": (8, "<H"), "flags": (10, "<H"), "fold": (34, "<H")}
_EXTREMES = (0, 1, 2, 63, 64, 65, 2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1)


def corpus() -> list[bytes]:
    """Small valid files of every mode, with every optional section present somewhere, a thin
    one coded folded (version 2, ``pillow_cnnz.folding``) and one tall enough for two bands of
    latent rows (``hyper.bands``: coded in one stream, decoded with the next band's network
    running ahead)."""
    from pillow_cnnz import codec

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:72]
    rgb = np.stack([xx * 3, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    alpha = (xx * 3).astype(np.uint8)
    meta = {"EXIF": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00", "ICCP": bytes(range(64)), "XMP ": b"<x:xmpmeta/>"}
    return [
        codec.encode(rgb, "RGB", 4.0, metadata=meta),
        codec.encode(rgb[..., 0], "L", 1.0),
        codec.encode(np.dstack([rgb[..., 1], alpha]), "LA", 6.5, metadata={"XMP ": meta["XMP "]}),
        codec.encode(np.dstack([rgb, alpha])[:17, :33], "RGBA", 8.0, metadata={"EXIF": meta["EXIF"]}),
        codec.encode(np.concatenate([np.dstack([rgb, alpha])[:2]] * 3, axis=1), "RGBA", 4.0),
        codec.encode(np.concatenate([rgb[:, :16]] * 28)[:1100], "RGB", 5.0),
    ]


def reseal(data: bytearray) -> bytes:
    """Recompute the header CRC and every section CRC that the framing still allows."""
    if len(data) >= container.HEADER_SIZE:
        struct.pack_into("<I", data, 36, zlib.crc32(bytes(data[:36])))
    pos = container.HEADER_SIZE
    while pos + container.SECTION_HEADER_SIZE <= len(data):
        _, length, _ = struct.unpack_from("<4sII", data, pos)
        start = pos + container.SECTION_HEADER_SIZE
        if start + length > len(data):
            break
        struct.pack_into("<I", data, pos + 8, zlib.crc32(bytes(data[start : start + length])))
        pos = start + length
    return bytes(data)


def _section_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start of section header, payload length) of each section."""
    out, pos = [], container.HEADER_SIZE
    while pos + container.SECTION_HEADER_SIZE <= len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0]
        out.append((pos, length))
        pos += container.SECTION_HEADER_SIZE + length
    return out


@dataclass
class Mutant:
    data: bytes
    kind: str
    resealed: bool


def mutate(data: bytes, rng: np.random.Generator) -> Mutant:
    """One random mutant of a valid file."""
    buf = bytearray(data)
    sections = _section_offsets(data)
    op = rng.choice(["flip", "insert", "delete", "truncate", "section_cut", "header_field", "length_field",
                     "payload_bytes"])
    if op == "flip":
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(buf))
            buf[i] ^= 1 << rng.integers(8)
    elif op == "insert":
        i = rng.integers(len(buf) + 1)
        buf[i:i] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
    elif op == "delete":
        i = rng.integers(len(buf))
        del buf[i : i + rng.integers(1, 9)]
    elif op == "truncate":
        del buf[rng.integers(len(buf)) :]
    elif op == "section_cut":  # truncate exactly at, or just around, a section boundary
        pos, _ = sections[rng.integers(len(sections))]
        del buf[max(pos + rng.integers(-1, 13), 0) :]
    elif op == "header_field":
        name = rng.choice(list(_HEADER_FIELDS))
        offset, fmt = _HEADER_FIELDS[name]
        limit = 2 ** (8 * struct.calcsize(fmt))
        value = int(rng.choice(_EXTREMES)) % limit if rng.random() < 0.7 else int(rng.integers(limit))
        struct.pack_into(fmt, buf, offset, value)
    elif op == "length_field":
        pos, length = sections[rng.integers(len(sections))]
        choices = [0, 1, length - 1, length + 1, 2**31, 2**32 - 1, len(buf), length * 2]
        struct.pack_into("<I", buf, pos + 4, int(choices[rng.integers(len(choices))]) % 2**32)
    else:  # payload_bytes: overwrite bytes inside one payload
        pos, length = sections[rng.integers(len(sections))]
        if length:
            start = pos + container.SECTION_HEADER_SIZE + rng.integers(length)
            n = int(rng.integers(1, 17))
            buf[start : start + n] = rng.integers(0, 256, len(buf[start : start + n]), dtype=np.uint8).tobytes()
    resealed = bool(rng.random() < 0.5)
    return Mutant(reseal(buf) if resealed else bytes(buf), str(op), resealed)


def decode_via_pillow(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


def run_case(original: bytes, mutant: Mutant) -> str:
    """Outcome name of decoding one mutant; raises AssertionError on a forbidden outcome."""
    try:
        im = decode_via_pillow(mutant.data)
    except ALLOWED as e:
        return type(e).__name__
    if mutant.data == original:
        return "unchanged"
    header = container.parse(mutant.data)[0]  # it decoded, so it must be a well-formed file
    assert mutant.resealed, f"damaged file ({mutant.kind}) decoded without an error"
    assert im.size == (header.width, header.height) and im.mode == header.mode
    return "decoded"
