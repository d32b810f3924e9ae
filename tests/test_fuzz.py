"""A CI-sized run of the mutation fuzzer (the long run is benchmarks/fuzz.py)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from benchmarks import fuzzing
from pillow_cnnz import container


@pytest.fixture(scope="module")
def corpus():
    return fuzzing.corpus()


def test_every_mutant_ends_in_a_clear_exception_or_a_valid_image(corpus):
    rng = np.random.default_rng(1234)
    outcomes = collections.Counter()
    for i in range(400):
        original = corpus[i % len(corpus)]
        outcomes[fuzzing.run_case(original, fuzzing.mutate(original, rng))] += 1
    assert outcomes["CorruptFileError"] > 100  # the checks are actually reached


def test_every_single_bit_flip_in_a_payload_is_reported_with_its_section(corpus):
    data = corpus[0]
    header, sections = container.read_directory(__import__("io").BytesIO(data))
    for section in sections:
        for offset in range(section.offset, section.offset + section.length, max(section.length // 13, 1)):
            damaged = bytearray(data)
            damaged[offset] ^= 0x10
            with pytest.raises(container.CorruptFileError, match=repr(section.tag)):
                fuzzing.decode_via_pillow(bytes(damaged))


def test_huge_dimensions_are_refused_before_decoding(corpus):
    import struct

    data = bytearray(corpus[0])
    struct.pack_into("<II", data, 12, 60000, 60000)
    with pytest.raises((OSError, ValueError, __import__("PIL").Image.DecompressionBombError)):
        fuzzing.decode_via_pillow(fuzzing.reseal(data))


def test_numpy_api_honours_max_image_pixels(corpus, monkeypatch):
    from PIL import Image

    import pillow_cnnz

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):
        pillow_cnnz.decode(corpus[0])


def _with_alpha_payload(payload: bytes) -> bytes:
    """A valid RGBA file whose ALPH section is replaced (checksums recomputed)."""
    from pillow_cnnz import codec

    pixels = np.zeros((16, 24, 4), np.uint8)
    header, sections = container.parse(codec.encode(pixels, "RGBA", 2.0))
    sections["ALPH"] = payload
    return container.serialize(header.width, header.height, header.mode, header.quality, header.model_id, sections)


@pytest.mark.parametrize("stated", [2**62, 16 * 24 + 1])
def test_alpha_frame_stating_a_wrong_size_is_refused_before_allocating(stated):
    import zstandard

    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(16 * 24)))
    # Re-state the content size: an 8-byte Frame_Content_Size field after the descriptor.
    descriptor = frame[4]
    assert zstandard.frame_content_size(bytes(frame)) == 16 * 24
    header = bytes(frame[:4]) + bytes([(descriptor & 0x3F) | 0xC0 | 0x20])  # FCS 8 bytes, single segment
    body = bytes(frame[5 + _fcs_offset(descriptor):])
    forged = header + int(stated).to_bytes(8, "little") + body
    assert zstandard.frame_content_size(forged) == stated
    with pytest.raises(container.CorruptFileError, match="ALPH"):
        fuzzing.decode_via_pillow(_with_alpha_payload(forged))


def _fcs_offset(descriptor: int) -> int:
    """Bytes between the frame descriptor and the blocks: window, dictionary id, content size."""
    single = bool(descriptor & 0x20)
    fcs = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    dict_id = {0: 0, 1: 1, 2: 2, 3: 4}[descriptor & 0x3]
    return (0 if single else 1) + dict_id + fcs


def test_alpha_that_inflates_beyond_the_image_is_refused():
    import zstandard

    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(10**7))
    with pytest.raises(container.CorruptFileError, match="more than"):
        fuzzing.decode_via_pillow(_with_alpha_payload(bomb))
