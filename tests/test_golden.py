"""The golden files (``tests/golden/``) decode as they did when they were made, in every
precision path, and the encoder still writes them: what a code move must not change.

What is exact where:
- the files' entropy-decoded latents (ẑ, symbols, means): integer arithmetic, pinned by sha256
  on every machine;
- the decoded pixels of each precision path: pinned by sha256 on the configuration the goldens
  were made on (``make_golden.configuration()``), and on every CPU that runs the path within
  ``tolerance`` levels of its committed reference pixels (float64's, or int8's for int8: a
  float path's rounding moves with the CPU's kernels); the alpha plane is lossless, so exact
  everywhere;
- the encoder's bytes (float32 analysis): pinned on that configuration; elsewhere a latent lying
  within float rounding of a quantization boundary may round the other way, so the re-encoded
  file's latents must match the golden's but for such flips.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from pillow_cnnz import container, latents
from tests.golden import make_golden as golden

MANIFEST = json.loads(golden.MANIFEST.read_text())
FILES = MANIFEST["files"]
TOLERANCE = MANIFEST["tolerance"]
TORCH_PATHS = [p for p in golden.PATHS if p != "float32-numpy"]


def _data(name: str) -> bytes:
    return (golden.HERE / name).read_bytes()


def _reference(name: str, path: str) -> np.ndarray:
    return np.asarray(Image.open(golden.reference_file(name, path)))


@pytest.fixture(scope="module")
def reference_configuration() -> str | None:
    """None on the configuration the goldens were made on, else what differs (a skip reason)."""
    here, there = golden.configuration(), MANIFEST["configuration"]
    differs = sorted(k for k in there if here.get(k) != there[k])
    return f"not the goldens' configuration ({', '.join(differs)} differ)" if differs else None


@pytest.fixture(scope="module")
def numpy_pixels() -> dict[str, np.ndarray]:
    """Every golden file decoded by a process that never imports torch (one process for all)."""
    return dict(zip(FILES, golden.numpy_decodes([_data(n) for n in FILES])))


@pytest.fixture(scope="module")
def torch_pixels():
    """``torch_pixels(name, path)``: a torch path's decode of a golden file, decoded once."""
    cache: dict[tuple[str, str], np.ndarray] = {}

    def get(name: str, path: str) -> np.ndarray:
        if (name, path) not in cache:
            cache[name, path] = golden.decode(_data(name), path)
        return cache[name, path]

    return get


def _pixels(name, path, numpy_pixels, torch_pixels) -> np.ndarray:
    reason = golden.unsupported(path)
    if reason:
        pytest.skip(reason)
    return numpy_pixels[name] if path == "float32-numpy" else torch_pixels(name, path)


def test_the_goldens_cover_every_mode_and_both_ends_of_the_quality_range():
    assert {e["mode"] for e in FILES.values()} == {"L", "RGB", "RGBA"}
    assert {e["quality"] for e in FILES.values()} == {1, 8}
    assert set(golden.files()) == set(FILES)
    for e in FILES.values():
        assert set(e["pixels_sha256"]) == set(golden.PATHS)


@pytest.mark.parametrize("name", FILES)
def test_a_golden_file_is_the_committed_one_and_parses_to_its_mode_and_size(name):
    entry, data = FILES[name], _data(name)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    header, _ = container.parse(data)
    src = golden.source_pixels(golden.files()[name][0])
    assert (header.mode, header.height, header.width, header.quality) == (
        entry["mode"], *src.shape[:2], entry["quality"])


@pytest.mark.parametrize("name", FILES)
def test_the_entropy_decoded_latents_are_the_pinned_ones_on_every_machine(name):
    assert golden.latents_digest(_data(name)) == FILES[name]["latents_sha256"]


@pytest.mark.parametrize("path", golden.PATHS)
@pytest.mark.parametrize("name", FILES)
def test_every_precision_path_decodes_within_tolerance_of_its_reference(name, path, numpy_pixels, torch_pixels):
    pixels, ref = _pixels(name, path, numpy_pixels, torch_pixels), _reference(name, golden.REFERENCE_OF[path])
    assert pixels.shape == ref.shape and pixels.dtype == np.uint8
    colour = slice(0, 3) if FILES[name]["mode"] == "RGBA" else slice(None)
    assert np.abs(pixels[..., colour].astype(int) - ref[..., colour]).max() <= TOLERANCE
    if FILES[name]["mode"] == "RGBA":
        np.testing.assert_array_equal(pixels[..., 3], ref[..., 3])  # alpha is lossless


@pytest.mark.parametrize("path", golden.PATHS)
@pytest.mark.parametrize("name", FILES)
def test_every_precision_path_decodes_to_the_pinned_pixels_on_the_goldens_configuration(
        name, path, numpy_pixels, torch_pixels, reference_configuration):
    if reference_configuration:
        pytest.skip(reference_configuration)
    pixels = _pixels(name, path, numpy_pixels, torch_pixels)
    assert golden.digest(pixels) == FILES[name]["pixels_sha256"][path]


def test_the_references_are_the_pinned_decodes_of_their_paths():
    assert MANIFEST["reference_of"] == golden.REFERENCE_OF
    for name, entry in FILES.items():
        for path in set(golden.REFERENCE_OF.values()):
            assert golden.digest(_reference(name, path)) == entry["pixels_sha256"][path]


def _latents(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """ẑ and ŷ of a file, ŷ in quantization steps (times the quality's gain): symbols + means."""
    header, payloads = container.parse(data)
    z, symbols, mu = latents.decode_latents(header, payloads["LATZ"], payloads["LATY"])
    return z, symbols + mu


@pytest.mark.parametrize("name", FILES)
def test_the_float32_encoder_writes_the_golden_file(name, reference_configuration):
    """Bit for bit on the goldens' configuration. Elsewhere the analysis' float rounding may put
    a latent on the other side of a quantization boundary: ẑ may then differ by one, and a
    latent by at most one step plus the shift of its mean (each ŷ lies within half a step of
    the same float latent); such flips stay rare (under 1 % of the latents)."""
    entry = FILES[name]
    src, mode, quality = golden.files()[name]
    data = golden.encode(src, mode, quality)
    if not reference_configuration:
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        return
    z, y = _latents(data)
    z0, y0 = _latents(_data(name))
    assert z.shape == z0.shape and np.abs(z - z0).max() <= 1
    assert np.abs(y - y0).max() <= 1.01 and np.mean(np.abs(y - y0) > 0.5) < 0.01
