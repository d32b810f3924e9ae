"""Tests for the .cnnz container: layout, validation and damage handling."""

from __future__ import annotations

import ast
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillow_cnnz import container
from pillow_cnnz.container import (
    HEADER_SIZE,
    MAGIC,
    MODES,
    TAGS,
    CorruptFileError,
    Header,
    UnsupportedVersionError,
    accept,
    parse,
    read_directory,
    read_payload,
    serialize,
)

MODEL_ID = bytes.fromhex("0123456789abcdef")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01"


def sections_for(mode: str, metadata: bool = True) -> dict[str, bytes]:
    sections = {"LATZ": b"hyper-latents", "LATY": b"main latents, a bit longer"}
    if mode in ("LA", "RGBA"):
        sections["ALPH"] = b"alpha!"
    if metadata:
        sections["EXIF"] = b"Exif\x00\x00II*\x00"
        sections["ICCP"] = b"icc"
        sections["XMP "] = b"<x:xmpmeta/>"
    return sections


def sample(mode: str = "RGBA", metadata: bool = True) -> bytes:
    return serialize(17, 5, mode, 2.5, MODEL_ID, sections_for(mode, metadata))


def section_spans(data: bytes) -> list[tuple[str, int, int]]:
    """(tag, start of the 12-byte section header, end of payload) per section."""
    _, sections = read_directory(io.BytesIO(data))
    return [(s.tag, s.offset - 12, s.offset + s.length) for s in sections]


def raw_file(
    version: int = 1, sections: list[tuple[bytes, bytes]] | tuple = (), **kw: int
) -> bytes:
    """Build a file by hand, bypassing serialize()'s checks."""
    fields = dict(
        flags=0,
        width=4,
        height=3,
        mode=1,
        reserved8=0,
        quality=2000,
        count=len(sections),
        reserved16=0,
    )
    fields.update(kw)
    head = struct.pack(
        "<8sHHIIBBH8sHH",
        MAGIC,
        version,
        fields["flags"],
        fields["width"],
        fields["height"],
        fields["mode"],
        fields["reserved8"],
        fields["quality"],
        MODEL_ID,
        fields["count"],
        fields["reserved16"],
    )
    out = head + struct.pack("<I", zlib.crc32(head))
    for tag, payload in sections:
        out += struct.pack("<4sII", tag, len(payload), zlib.crc32(payload)) + payload
    return out


LATENTS = [(b"LATZ", b"z"), (b"LATY", b"y")]


class CountingReader(io.BytesIO):
    """A BytesIO that records how many bytes were read and the largest read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0
        self.largest_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        self.largest_read = max(self.largest_read, len(data))
        return data


# --- round trips -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_every_mode(mode: str) -> None:
    data = sample(mode)
    header, payloads = parse(data)
    assert header == Header(17, 5, mode, 2.5, MODEL_ID, len(sections_for(mode)))
    assert payloads == sections_for(mode)
    assert list(payloads) == [t for t in TAGS if t in payloads]


def test_header_pack_unpack_round_trip() -> None:
    header = Header(65535, 1, "LA", 8.0, MODEL_ID, 3)
    packed = header.pack()
    assert len(packed) == HEADER_SIZE == 40
    assert Header.unpack(packed) == header
    assert header.model_hex == "0123456789abcdef"


def test_only_latents_is_the_smallest_valid_file() -> None:
    header, payloads = parse(sample("L", metadata=False))
    assert header.section_count == 2
    assert list(payloads) == ["LATZ", "LATY"]


def test_empty_payloads_are_allowed() -> None:
    data = serialize(1, 1, "RGB", 1, MODEL_ID, {"LATZ": b"", "LATY": b"", "EXIF": b""})
    assert parse(data)[1] == {"EXIF": b"", "LATZ": b"", "LATY": b""}


def test_serialize_orders_sections_canonically() -> None:
    shuffled = dict(reversed(list(sections_for("RGBA").items())))
    assert [tag for tag, _, _ in section_spans(sample("RGBA"))] == list(TAGS)
    assert serialize(17, 5, "RGBA", 2.5, MODEL_ID, shuffled) == sample("RGBA")


def test_read_payload_returns_each_section() -> None:
    fp = io.BytesIO(sample())
    _, sections = read_directory(fp)
    assert {s.tag: read_payload(fp, s) for s in sections} == sections_for("RGBA")


def test_read_directory_honours_the_start_position() -> None:
    data = sample()
    fp = io.BytesIO(b"junk" + data)
    fp.seek(4)
    header, sections = read_directory(fp)
    assert header.mode == "RGBA"
    assert read_payload(fp, sections[-1]) == b"main latents, a bit longer"


def test_read_directory_does_not_read_payloads() -> None:
    big = {"LATZ": b"z" * 50_000, "LATY": b"y" * 100_000, "EXIF": b"e" * 10_000}
    fp = CountingReader(serialize(300, 200, "RGB", 3, MODEL_ID, big))
    header, sections = read_directory(fp)
    assert [s.length for s in sections] == [10_000, 50_000, 100_000]
    assert fp.bytes_read == HEADER_SIZE + 12 * header.section_count


def test_module_imports_only_the_standard_library() -> None:
    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module.split(".")[0])
        return names

    allowed = {"__future__", "io", "struct", "zlib", "dataclasses", "typing"}
    assert imported(Path(container.__file__)) <= allowed | {"errors"}  # the package's error types, which import nothing
    assert imported(Path(container.__file__).with_name("errors.py")) <= {"__future__"}


def test_corrupt_file_error_is_both_oserror_and_valueerror() -> None:
    assert issubclass(CorruptFileError, OSError)
    assert issubclass(CorruptFileError, ValueError)
    assert issubclass(UnsupportedVersionError, CorruptFileError)
    assert str(CorruptFileError("bad")) == "bad"


# --- identification --------------------------------------------------------


def test_accept_recognises_the_magic() -> None:
    assert accept(sample()[:16])
    assert accept(MAGIC)
    assert not accept(PNG[:16])
    assert not accept(MAGIC[:7])
    assert not accept(b"")


def test_png_bytes_are_not_a_cnnz_file() -> None:
    with pytest.raises(SyntaxError):
        parse(PNG)
    with pytest.raises(SyntaxError):
        Header.unpack(PNG)


# --- damage ---------------------------------------------------------------


def test_truncation_at_every_offset_is_detected() -> None:
    data = sample()
    for n in range(len(data)):
        expected = SyntaxError if n < len(MAGIC) else CorruptFileError
        with pytest.raises(expected):
            parse(data[:n])


def test_truncation_is_detected_by_read_payload() -> None:
    data = sample("L", metadata=False)
    fp = io.BytesIO(data)
    _, sections = read_directory(fp, len(data))
    fp = io.BytesIO(data[:-3])
    with pytest.raises(CorruptFileError, match="truncated.*'LATY'"):
        read_payload(fp, sections[-1])


def test_flipped_bit_in_a_payload_or_checksum_names_the_section() -> None:
    data = sample()
    for tag, start, end in section_spans(data):
        for pos in range(start + 8, end):  # CRC field and payload
            damaged = bytearray(data)
            damaged[pos] ^= 1 << (pos % 8)
            with pytest.raises(CorruptFileError, match=repr(tag)):
                parse(bytes(damaged))


def test_flipped_bit_in_a_section_tag_is_an_unknown_tag() -> None:
    data = sample()
    for _, start, _ in section_spans(data):
        for pos in range(start, start + 4):
            for bit in range(8):
                damaged = bytearray(data)
                damaged[pos] ^= 1 << bit
                with pytest.raises(CorruptFileError, match="unknown section tag"):
                    parse(bytes(damaged))


def test_flipped_bit_in_a_section_length_names_the_section() -> None:
    # A wrong length may only show at the next section header; the message
    # then names the section it follows.
    data = sample()
    for tag, start, _ in section_spans(data):
        for pos in range(start + 4, start + 8):
            for bit in range(8):
                damaged = bytearray(data)
                damaged[pos] ^= 1 << bit
                with pytest.raises(CorruptFileError, match=repr(tag)):
                    parse(bytes(damaged))


def test_flipped_bit_in_the_header_is_detected() -> None:
    data = sample()
    for pos in range(HEADER_SIZE):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            expected = SyntaxError if pos < len(MAGIC) else CorruptFileError
            with pytest.raises(expected):
                parse(bytes(damaged))


def test_damaged_payload_is_caught_by_read_payload() -> None:
    data = bytearray(sample())
    data[-1] ^= 0x80
    fp = io.BytesIO(bytes(data))
    _, sections = read_directory(fp)  # does not look at payloads
    with pytest.raises(CorruptFileError, match="'LATY'.*checksum"):
        read_payload(fp, sections[-1])


def test_unknown_version_names_the_version() -> None:
    with pytest.raises(UnsupportedVersionError, match="version 7.*supports version 1"):
        parse(raw_file(version=7, sections=LATENTS))


def test_unknown_version_is_reported_even_if_the_rest_differs() -> None:
    with pytest.raises(UnsupportedVersionError, match="3"):
        Header.unpack(MAGIC + b"\x03\x00")


def test_nonzero_flags_are_rejected() -> None:
    with pytest.raises(CorruptFileError, match="flags"):
        parse(raw_file(flags=1, sections=LATENTS))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("width", 0, "width"),
        ("height", 70000, "height"),
        ("mode", 4, "'mode' has unknown code 4"),
        ("quality", 999, "quality"),
        ("quality", 8001, "quality"),
        ("count", 1, "section_count"),
        ("count", 7, "section_count"),
        ("reserved8", 1, "reserved"),
        ("reserved16", 1, "reserved"),
    ],
)
def test_bad_header_field_is_rejected(field: str, value: int, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match):
        parse(raw_file(sections=LATENTS, **{field: value}))


def test_huge_length_field_fails_fast() -> None:
    for length in (2**32 - 1, 2**31 + 1, 2**31 - 1):
        data = bytearray(raw_file(sections=LATENTS))
        struct.pack_into("<I", data, HEADER_SIZE + 4, length)
        fp = CountingReader(bytes(data))
        start = time.perf_counter()
        with pytest.raises(CorruptFileError, match="'LATZ'"):
            read_directory(fp)
        assert time.perf_counter() - start < 0.1
        assert fp.largest_read <= HEADER_SIZE


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(CorruptFileError, match="1 unexpected bytes.*'LATY'"):
        parse(sample() + b"\x00")


def test_declared_size_shorter_than_sections_is_truncation() -> None:
    data = sample()
    with pytest.raises(CorruptFileError, match="truncated"):
        read_directory(io.BytesIO(data), len(data) - 1)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        (b"LATZ LATZ LATY", "duplicate section 'LATZ'"),
        (b"LATY LATZ", "'LATZ' out of order"),
        (b"EXIF LATZ LATY ICCP", "'ICCP' out of order"),
        (b"ALPH EXIF LATZ LATY", "'EXIF' out of order"),
        (b"JUNK LATZ LATY", "unknown section tag b'JUNK'"),
        (b"latz LATY", "unknown section tag b'latz'"),
        (b"EXIF LATY", "missing required section 'LATZ'"),
        (b"EXIF LATZ", "missing required section 'LATY'"),
    ],
)
def test_bad_section_directory_is_rejected(tags: bytes, match: str) -> None:
    sections = [(tag, b"payload") for tag in tags.split()]
    with pytest.raises(CorruptFileError, match=match):
        parse(raw_file(mode=3, sections=sections))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_section_is_required_for_alpha_modes(mode: str) -> None:
    match = f"'ALPH' is required for mode '{mode}'"
    with pytest.raises(CorruptFileError, match=match):
        parse(raw_file(mode=MODES.index(mode), sections=LATENTS))
    sections = sections_for(mode)
    del sections["ALPH"]
    with pytest.raises(ValueError, match="'ALPH' is required"):
        serialize(4, 4, mode, 2, MODEL_ID, sections)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_alpha_section_is_forbidden_for_opaque_modes(mode: str) -> None:
    sections = [(b"ALPH", b"a"), *LATENTS]
    match = f"'ALPH' is not allowed for mode '{mode}'"
    with pytest.raises(CorruptFileError, match=match):
        parse(raw_file(mode=MODES.index(mode), sections=sections))
    with pytest.raises(ValueError, match="'ALPH' is not allowed"):
        serialize(4, 4, mode, 2, MODEL_ID, {**sections_for(mode), "ALPH": b"a"})


# --- writing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0}, "width"),
        ({"width": 70000}, "width"),
        ({"height": 0}, "height"),
        ({"height": 1.5}, "height"),
        ({"mode": "CMYK"}, "mode"),
        ({"quality": 0.5}, "quality"),
        ({"quality": 9}, "quality"),
        ({"quality": float("nan")}, "quality"),
        ({"model_id": b"short"}, "model_id"),
        ({"model_id": "0123456789abcdef"}, "model_id"),
        ({"section_count": 1}, "section_count"),
        ({"version": 3}, "version"),
        ({"version": 0}, "version"),
        ({"fold": 4}, "fold segment"),
        ({"width": 100, "fold": 10}, "version 2"),
        ({"fold_columns": True}, "fold"),
    ],
)
def test_pack_rejects_bad_field_naming_it(kwargs: dict, field: str) -> None:
    fields = dict(
        width=4, height=4, mode="RGB", quality=2.0, model_id=MODEL_ID, section_count=2
    )
    fields.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Header(**fields).pack()


def test_serialize_rejects_unknown_and_missing_sections() -> None:
    with pytest.raises(ValueError, match="unknown section tag 'JUNK'"):
        serialize(4, 4, "RGB", 2, MODEL_ID, {**sections_for("RGB"), "JUNK": b""})
    with pytest.raises(ValueError, match="missing required section 'LATY'"):
        serialize(4, 4, "RGB", 2, MODEL_ID, {"LATZ": b""})
    with pytest.raises(ValueError, match="mode"):
        serialize(4, 4, "CMYK", 2, MODEL_ID, sections_for("RGB"))


# --- fuzzing ----------------------------------------------------------------

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODES), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_files_only_raise_the_documented_errors(mode, mutations) -> None:
    data = bytearray(sample(mode))
    for kind, pos, arg in mutations:
        pos %= len(data) + 1
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << arg
        elif kind == "insert":
            data[pos:pos] = bytes([arg])
        elif kind == "delete":
            del data[pos : pos + arg]
        elif kind == "truncate":
            del data[pos:]
    try:
        header, payloads = parse(bytes(data))
    except (SyntaxError, CorruptFileError):
        return
    assert header.mode in MODES
    assert set(payloads) <= set(TAGS)


# --- the folded layout (version 2) ------------------------------------------


def folded(width: int = 100, height: int = 3, segment: int = 10, columns: bool = False) -> bytes:
    return serialize(width, height, "RGB", 2, MODEL_ID, sections_for("RGB"), segment, columns)


def test_an_unfolded_file_is_written_as_version_1_byte_for_byte() -> None:
    """Readers of version 1 read every file that needs no fold: the writer uses version 2 only for a fold."""
    data = sample("RGB")
    assert struct.unpack_from("<HH", data, 8) == (1, 0)
    assert data[34:36] == b"\x00\x00"
    assert parse(data)[0].version == 1


@pytest.mark.parametrize(
    ("width", "height", "segment", "columns", "coded"),
    [(100, 3, 10, False, (10, 30)), (100, 3, 33, False, (33, 12)), (3, 100, 10, True, (30, 10)),
     (65535, 1, 256, False, (256, 256)), (2, 7, 6, True, (4, 6))],
)
def test_a_fold_round_trips_with_its_coded_size(width, height, segment, columns, coded) -> None:
    data = folded(width, height, segment, columns)
    header, payloads = parse(data)
    assert header.version == 2 and payloads == sections_for("RGB")
    assert (header.width, header.height, header.fold, header.fold_columns) == (width, height, segment, columns)
    assert header.coded_size == coded
    flags = container.FOLD_COLUMNS if columns else container.FOLD_ROWS
    assert struct.unpack_from("<HH", data, 8) == (2, flags)
    assert struct.unpack_from("<H", data, 34) == (segment,)


def test_a_version_2_file_without_a_fold_reads_as_unfolded() -> None:
    header, _ = parse(raw_file(version=2, sections=LATENTS))
    assert (header.version, header.fold, header.coded_size) == (2, 0, (4, 3))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"flags": 4}, "flags"),
        ({"flags": 3, "reserved16": 2}, "flags"),
        ({"flags": 0x8001, "reserved16": 2}, "flags"),
        ({"flags": 1}, "fold segment"),  # a fold flag needs a segment
        ({"reserved16": 2}, "fold segment"),  # and a segment a flag
        ({"flags": 1, "reserved16": 4}, "fold segment must be an int in 1..3"),  # one segment: no fold
        ({"flags": 1, "reserved16": 9}, "fold segment"),
        ({"flags": 2, "reserved16": 3}, "fold segment must be an int in 1..2"),  # columns: along the height
        ({"flags": 1, "width": 65535, "height": 2, "reserved16": 1}, "more than 65535"),
        ({"flags": 2, "width": 3, "height": 60000, "reserved16": 2}, "more than 65535"),
        ({"flags": 1, "reserved8": 1, "reserved16": 2}, "reserved"),
    ],
)
def test_a_bad_fold_is_corrupt(fields: dict, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match):
        parse(raw_file(version=2, sections=LATENTS, **fields))


def test_a_version_1_file_may_not_fold() -> None:
    with pytest.raises(CorruptFileError, match="flags"):
        parse(raw_file(version=1, flags=1, reserved16=2, sections=LATENTS))
    with pytest.raises(CorruptFileError, match="reserved"):
        parse(raw_file(version=1, reserved16=2, sections=LATENTS))


def test_a_fold_is_checked_before_any_section_is_located() -> None:
    """The coded raster's size follows from the header alone, validated with it."""
    fp = CountingReader(raw_file(version=2, flags=1, width=65535, height=2, reserved16=1, sections=LATENTS))
    with pytest.raises(CorruptFileError, match="fold"):
        read_directory(fp)
    assert fp.bytes_read <= HEADER_SIZE


@pytest.mark.parametrize(
    ("args", "match"),
    [((100, 3, 100, False), "fold segment"), ((100, 3, 0.5, False), "fold segment"),
     ((3, 100, 10, False), "fold segment"), ((30000, 3, 1, False), "more than 65535")],
)
def test_serialize_rejects_a_bad_fold(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        folded(*args)


@given(st.integers(1, 65535), st.integers(1, 64), st.integers(1, 65535), st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_valid_fold_codes_fewer_than_twice_the_pixels(along, across, segment, columns) -> None:
    """What a reader may allocate for the raster is bounded by the image's own size."""
    width, height = (across, along) if columns else (along, across)
    if container.fold_error(width, height, segment, columns) is not None:
        return
    w, h = container.coded_size(width, height, segment, columns)
    assert w * h < 2 * width * height and max(w, h) <= 65535
