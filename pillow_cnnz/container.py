"""The ``.cnnz`` container: a versioned binary layout around the coded image.

This module only frames bytes; it knows nothing about the network or the
entropy coder, so it imports no torch and no numpy.  That keeps
``Image.open`` cheap: Pillow can identify a file, read its size, mode and
metadata without loading any model.  See ``docs/format.md`` for the layout.

Every number read from a file is checked before it is used to seek, read or
allocate, so a damaged or hostile file fails fast with a
:class:`CorruptFileError` naming the field or section at fault.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from .errors import CorruptFileError, UnsupportedVersionError

MAGIC = b"\x89CNNZ\r\n\x1a"
VERSION = 2  # the newest layout this writer knows; it writes the lowest one that holds a file
SUPPORTED_VERSIONS = (1, 2)
MODES = ("L", "RGB", "LA", "RGBA")
TAGS = ("EXIF", "ICCP", "XMP ", "ALPH", "LATZ", "LATY")
REQUIRED_TAGS = ("LATZ", "LATY")
ALPHA_MODES = ("LA", "RGBA")

MAX_SIDE = 65535
MIN_QUALITY = 1000  # quality is stored as an integer number of thousandths
MAX_QUALITY = 8000
MIN_SECTIONS = len(REQUIRED_TAGS)
MAX_SECTIONS = len(TAGS)
MAX_SECTION_SIZE = 2**31

# magic, version, flags, width, height, mode code, reserved, quality*1000,
# model id, section count, fold segment (reserved in version 1); followed by a
# CRC32 of those 36 bytes.
_FIELDS = struct.Struct("<8sHHIIBBH8sHH")
_CRC = struct.Struct("<I")
_SECTION = struct.Struct("<4sII")  # tag, payload length, payload CRC32
HEADER_SIZE = _FIELDS.size + _CRC.size  # 40
SECTION_HEADER_SIZE = _SECTION.size  # 12

# Version 2 flags: the coded raster is the image folded (``pillow_cnnz.folding``),
# its rows cut into segments stacked top to bottom, or its columns cut into
# segments placed left to right.  At most one is set.
FOLD_ROWS = 0x0001
FOLD_COLUMNS = 0x0002


def accept(prefix: bytes) -> bool:
    """Tell Pillow whether ``prefix`` (the first bytes of a file) is a cnnz file."""
    return prefix[: len(MAGIC)] == MAGIC


def _field_error(
    width: object,
    height: object,
    mode: object,
    quality: object,
    model_id: object,
    section_count: object,
) -> str | None:
    """Return a message naming the first invalid header field, or None."""
    for name, side in (("width", width), ("height", height)):
        if type(side) is not int or not 1 <= side <= MAX_SIDE:
            return f"{name} must be an int in 1..{MAX_SIDE}, got {side!r}"
    if mode not in MODES:
        return f"mode must be one of {MODES}, got {mode!r}"
    if (
        isinstance(quality, bool)
        or not isinstance(quality, (int, float))
        or not MIN_QUALITY / 1000 <= quality <= MAX_QUALITY / 1000
    ):
        lo, hi = MIN_QUALITY / 1000, MAX_QUALITY / 1000
        return f"quality must be a number in {lo}..{hi}, got {quality!r}"
    if not isinstance(model_id, bytes) or len(model_id) != 8:
        return f"model_id must be 8 bytes, got {model_id!r}"
    if type(section_count) is not int or not (
        MIN_SECTIONS <= section_count <= MAX_SECTIONS
    ):
        return (
            f"section_count must be in {MIN_SECTIONS}..{MAX_SECTIONS}, "
            f"got {section_count!r}"
        )
    return None


def fold_error(width: int, height: int, segment: int, columns: bool) -> str | None:
    """Return a message if a fold of ``segment`` pixels does not suit the image, or None.

    The folded raster must hold at least two segments and at most ``MAX_SIDE``
    pixels on a side; it then has fewer than twice the image's pixels (only
    the last segment is padded), so a decoder's allocation stays bounded by
    the image's size, which the decompression-bomb check limits.
    """
    along, across = (height, width) if columns else (width, height)
    if type(segment) is not int or not 1 <= segment < along:
        return f"fold segment must be an int in 1..{along - 1}, got {segment!r}"
    if -(-along // segment) * across > MAX_SIDE:
        return (
            f"fold segment {segment} stacks {-(-along // segment)} segments of "
            f"{across} pixels, more than {MAX_SIDE}"
        )
    return None


def coded_size(
    width: int, height: int, segment: int, columns: bool
) -> tuple[int, int]:
    """(width, height) of the raster a file codes: the image's own, or its fold's."""
    if not segment:
        return width, height
    along, across = (height, width) if columns else (width, height)
    stacked = -(-along // segment) * across
    return (stacked, segment) if columns else (segment, stacked)


@dataclass(frozen=True)
class Header:
    """The fixed 40-byte header: everything ``Image.open`` needs to know.

    ``width`` and ``height`` are the image's.  ``fold`` is 0 for an image coded
    as it is, else the segment length of its folded layout (version 2), along
    its rows or, with ``fold_columns``, along its columns; ``coded_size`` is
    the raster the latents code.
    """

    width: int
    height: int
    mode: str
    quality: float
    model_id: bytes
    section_count: int
    version: int = 1
    fold: int = 0
    fold_columns: bool = False

    @property
    def model_hex(self) -> str:
        """The model id as the 16 hex characters used to name weight files."""
        return self.model_id.hex()

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the raster the latents code (the image's own unless folded)."""
        return coded_size(self.width, self.height, self.fold, self.fold_columns)

    def pack(self) -> bytes:
        """Encode the header; raises ValueError naming the first bad field."""
        msg = _field_error(
            self.width,
            self.height,
            self.mode,
            self.quality,
            self.model_id,
            self.section_count,
        )
        if msg is None and self.version not in SUPPORTED_VERSIONS:
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            msg = f"version must be one of {supported}, got {self.version!r}"
        if msg is None and self.fold:
            msg = fold_error(self.width, self.height, self.fold, self.fold_columns)
            if msg is None and self.version < 2:
                msg = "a folded image needs version 2"
        elif msg is None and self.fold_columns:
            msg = "fold_columns needs a fold segment"
        if msg is not None:
            raise ValueError(msg)
        flags = (FOLD_COLUMNS if self.fold_columns else FOLD_ROWS) if self.fold else 0
        fields = _FIELDS.pack(
            MAGIC,
            self.version,
            flags,
            self.width,
            self.height,
            MODES.index(self.mode),
            0,
            round(self.quality * 1000),
            self.model_id,
            self.section_count,
            self.fold,
        )
        return fields + _CRC.pack(zlib.crc32(fields))

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Decode the header at the start of ``data`` (extra bytes are ignored).

        Raises SyntaxError when ``data`` is not a cnnz file at all,
        UnsupportedVersionError for a version this reader does not know, and
        CorruptFileError for a truncated header, bad checksum or bad field.
        The version is checked before the checksum: a later version may lay
        out (and checksum) its header differently.
        """
        data = bytes(data[:HEADER_SIZE])
        if not accept(data):
            msg = "not a cnnz file"
            raise SyntaxError(msg)
        if len(data) >= len(MAGIC) + 2:
            (version,) = struct.unpack_from("<H", data, len(MAGIC))
            if version not in SUPPORTED_VERSIONS:
                supported = ", ".join(map(str, SUPPORTED_VERSIONS))
                msg = (
                    f"unsupported cnnz version {version}; "
                    f"this reader supports version {supported}"
                )
                raise UnsupportedVersionError(msg)
        if len(data) < HEADER_SIZE:
            msg = f"truncated header: {len(data)} of {HEADER_SIZE} bytes"
            raise CorruptFileError(msg)

        (crc,) = _CRC.unpack_from(data, _FIELDS.size)
        if zlib.crc32(data[: _FIELDS.size]) != crc:
            msg = "header checksum mismatch"
            raise CorruptFileError(msg)
        (
            _,
            version,
            flags,
            width,
            height,
            mode_code,
            reserved8,
            quality,
            model_id,
            section_count,
            segment,
        ) = _FIELDS.unpack_from(data)
        known = 0 if version == 1 else FOLD_ROWS | FOLD_COLUMNS
        if flags & ~known or flags == FOLD_ROWS | FOLD_COLUMNS:
            msg = (
                f"header field 'flags' has bits this version ({version}) does not "
                f"define or allow together: {flags:#06x}"
            )
            raise CorruptFileError(msg)
        if reserved8 or (version == 1 and segment):
            msg = "header reserved fields must be 0"
            raise CorruptFileError(msg)
        if bool(flags) != bool(segment):
            msg = (
                f"header field 'fold segment' is {segment} with flags {flags:#06x}: "
                "a fold needs both"
            )
            raise CorruptFileError(msg)
        if mode_code >= len(MODES):
            msg = f"header field 'mode' has unknown code {mode_code}"
            raise CorruptFileError(msg)
        if not MIN_QUALITY <= quality <= MAX_QUALITY:
            msg = f"header field 'quality' out of range: {quality / 1000}"
            raise CorruptFileError(msg)
        header = cls(
            width,
            height,
            MODES[mode_code],
            quality / 1000,
            model_id,
            section_count,
            version,
            segment,
            flags == FOLD_COLUMNS,
        )
        msg = _field_error(
            width, height, header.mode, header.quality, model_id, section_count
        )
        if msg is None and segment:
            msg = fold_error(width, height, segment, flags == FOLD_COLUMNS)
        if msg is not None:
            msg = f"bad header field: {msg}"
            raise CorruptFileError(msg)
        return header


@dataclass
class Section:
    """Where one section's payload lies in the file (``offset`` is absolute)."""

    tag: str
    offset: int
    length: int
    crc: int


def _check_tags(mode: str, tags: list[str]) -> str | None:
    """Return a message if the set of section tags does not suit ``mode``."""
    for tag in REQUIRED_TAGS:
        if tag not in tags:
            return f"missing required section {tag!r}"
    if mode in ALPHA_MODES and "ALPH" not in tags:
        return f"section 'ALPH' is required for mode {mode!r}"
    if mode not in ALPHA_MODES and "ALPH" in tags:
        return f"section 'ALPH' is not allowed for mode {mode!r}"
    return None


def serialize(
    width: int,
    height: int,
    mode: str,
    quality: float,
    model_id: bytes,
    sections: dict[str, bytes],
    fold: int = 0,
    fold_columns: bool = False,
) -> bytes:
    """Build a complete cnnz file; sections are written in canonical order.

    A ``fold`` (the segment length of a folded layout, ``Header``) is written
    as version 2; a file without one as version 1, which every reader reads.
    Raises ValueError for a bad header field or fold, an unknown tag, a missing
    required section, an ``ALPH`` section that does not match the mode, or an
    oversized payload.
    """
    for tag, payload in sections.items():
        if tag not in TAGS:
            msg = f"unknown section tag {tag!r}; known tags are {TAGS}"
            raise ValueError(msg)
        if len(payload) > MAX_SECTION_SIZE:
            msg = f"section {tag!r} is larger than {MAX_SECTION_SIZE} bytes"
            raise ValueError(msg)
    if mode in MODES:
        msg = _check_tags(mode, list(sections))
        if msg is not None:
            raise ValueError(msg)
    header = Header(
        width,
        height,
        mode,
        quality,
        model_id,
        len(sections),
        2 if fold else 1,
        fold,
        fold_columns,
    )
    out = [header.pack()]
    for tag in TAGS:
        if tag in sections:
            payload = sections[tag]
            out.append(
                _SECTION.pack(tag.encode("ascii"), len(payload), zlib.crc32(payload))
            )
            out.append(bytes(payload))
    return b"".join(out)


def read_directory(
    fp: BinaryIO, total_size: int | None = None
) -> tuple[Header, list[Section]]:
    """Read the header and locate every section, without reading payloads.

    The container starts at ``fp``'s current position; ``total_size`` is its
    length in bytes, found by seeking to the end when not given (``fp`` must
    be seekable).  Section offsets are absolute positions in ``fp``, ready
    for :func:`read_payload`.  On return ``fp`` is at the end of the last
    section.  Payload checksums are not verified here: ``Image.open`` should
    stay cheap, and :func:`read_payload` checks each one as it is read.
    """
    start = fp.tell()
    if total_size is None:
        total_size = fp.seek(0, io.SEEK_END) - start
        fp.seek(start)
    header = Header.unpack(fp.read(HEADER_SIZE))
    if total_size < HEADER_SIZE:
        msg = f"truncated header: file is {total_size} bytes"
        raise CorruptFileError(msg)

    remaining = total_size - HEADER_SIZE
    sections: list[Section] = []
    last = -1
    for i in range(header.section_count):
        where = f"section {i + 1} of {header.section_count}"
        if sections:
            # A bad length in the previous section lands us here, so name it.
            where += f", after section {sections[-1].tag!r}"
        if remaining < SECTION_HEADER_SIZE:
            msg = f"truncated: {where} is missing"
            raise CorruptFileError(msg)
        data = fp.read(SECTION_HEADER_SIZE)
        if len(data) < SECTION_HEADER_SIZE:
            msg = f"truncated: {where} header is cut short"
            raise CorruptFileError(msg)
        raw_tag, length, crc = _SECTION.unpack(data)
        remaining -= SECTION_HEADER_SIZE

        tag = raw_tag.decode("latin-1")
        if tag not in TAGS:
            msg = f"unknown section tag {raw_tag!r} ({where})"
            raise CorruptFileError(msg)
        index = TAGS.index(tag)
        if index == last:
            msg = f"duplicate section {tag!r}"
            raise CorruptFileError(msg)
        if index < last:
            msg = f"section {tag!r} out of order: it must come before {TAGS[last]!r}"
            raise CorruptFileError(msg)
        last = index

        if length > MAX_SECTION_SIZE:
            msg = f"section {tag!r} length {length} exceeds {MAX_SECTION_SIZE}"
            raise CorruptFileError(msg)
        if length > remaining:
            msg = (
                f"truncated: section {tag!r} length {length} runs past the end "
                f"of the file ({remaining} bytes left)"
            )
            raise CorruptFileError(msg)
        offset = fp.tell()
        sections.append(Section(tag, offset, length, crc))
        fp.seek(offset + length)
        remaining -= length

    if remaining:
        tag = sections[-1].tag
        msg = f"{remaining} unexpected bytes after the last section {tag!r}"
        raise CorruptFileError(msg)
    msg = _check_tags(header.mode, [section.tag for section in sections])
    if msg is not None:
        raise CorruptFileError(msg)
    return header, sections


def _verify(section: Section, payload: bytes) -> bytes:
    if len(payload) != section.length:
        msg = (
            f"truncated: section {section.tag!r} has {len(payload)} "
            f"of {section.length} bytes"
        )
        raise CorruptFileError(msg)
    if zlib.crc32(payload) != section.crc:
        msg = f"section {section.tag!r} is damaged: checksum mismatch"
        raise CorruptFileError(msg)
    return payload


def read_payload(fp: BinaryIO, section: Section) -> bytes:
    """Read one section's payload and verify its checksum."""
    fp.seek(section.offset)
    return _verify(section, fp.read(section.length))


def parse(data: bytes) -> tuple[Header, dict[str, bytes]]:
    """Fully validate an in-memory cnnz file; return its header and payloads."""
    header, sections = read_directory(io.BytesIO(data), len(data))
    view = memoryview(data)
    payloads = {
        s.tag: _verify(s, bytes(view[s.offset : s.offset + s.length]))
        for s in sections
    }
    return header, payloads
