"""A CI-sized run of the mutation fuzzer (the long run is benchmarks/fuzz.py)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from pillow_cnnz import container, fuzzing


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
