"""Encoder-side latent refinement (``method`` > 0): smaller files for the same decoder."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from pillow_cnnz import codec, container, refine, tiling, weights

from .conftest import _photo as photo


def rd_loss(data: bytes, original: np.ndarray) -> float:
    """The training loss of a real file: bits per pixel + λ·MSE (0-255 levels), its quality's λ."""
    header = container.parse(data)[0]
    decoded = codec.decode(data).astype(np.float64)
    h, w = original.shape[:2]
    mse = np.mean((decoded - original) ** 2)
    return len(data) * 8 / (h * w) + weights.load().lambda_for(header.quality) * mse


def test_refined_files_have_a_lower_rate_distortion_loss_and_decode_as_usual():
    img = photo(96, 160)
    plain = codec.encode(img, "RGB", 4.0)
    refined = codec.encode(img, "RGB", 4.0, method=3)
    assert refined != plain
    assert rd_loss(refined, img) < rd_loss(plain, img)


def test_refinement_is_deterministic():
    img = photo(64, 80, seed=3)
    assert codec.encode(img, "RGB", 2.5, method=2) == codec.encode(img, "RGB", 2.5, method=2)


def test_refinement_in_tiles_matches_one_tile(monkeypatch):
    # On the CPU: bfloat16 rounds differently per tile shape, and so do a GPU's convolutions.
    monkeypatch.setenv("CNNZ_DEVICE", "cpu")
    monkeypatch.setenv("CNNZ_PRECISION", "float32")
    img = photo(80, 112, seed=1)
    monkeypatch.setattr(tiling, "TILE", 3)  # many tiles, each with its halo
    (z_tiled, y_tiled), = codec.analyse_batch([img], [5.0], method=1)
    monkeypatch.setattr(tiling, "TILE", 1000)
    (z_whole, y_whole), = codec.analyse_batch([img], [5.0], method=1)
    np.testing.assert_array_equal(z_tiled, z_whole)
    np.testing.assert_allclose(y_tiled, y_whole, atol=1e-3)


@pytest.mark.parametrize(("precision", "threads"), [("float32", 2), ("bfloat16", 1)])
def test_batch_refinement_matches_one_at_a_time(monkeypatch, precision, threads):
    # bfloat16 at one thread is where a batch used to differ (on an AMX CPU, from 256x384 up):
    # the float32 hyper network rounded two images differently from one, and the bfloat16
    # synthesis turned that into other latents; refine now runs the rate path image by image
    # (a GPU picks its convolution kernels by batch size, so this pins the CPU only).
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("CNNZ_DEVICE", "cpu")
    monkeypatch.setenv("CNNZ_PRECISION", precision)
    torch.set_num_threads(threads)  # the conftest fixture puts the count back
    a, b = photo(256, 384, seed=4), photo(256, 384, seed=5)
    batch = codec.encode_batch([a, b], ["RGB", "RGB"], 3.0, method=1)
    assert batch == [codec.encode(a, "RGB", 3.0, method=1), codec.encode(b, "RGB", 3.0, method=1)]


def test_pillow_save_takes_method_like_webp(photo_image):
    fast, small = io.BytesIO(), io.BytesIO()
    photo_image.save(fast, format="CNNZ", quality=4)
    photo_image.save(small, format="CNNZ", quality=4, method=2)
    assert fast.getvalue() != small.getvalue()
    with Image.open(small) as im:
        assert im.size == photo_image.size
        im.load()


@pytest.mark.parametrize("method", [-1, 7, 1.5, True, "6"])
def test_method_out_of_range_is_a_clear_error(photo_image, method):
    with pytest.raises(ValueError, match="method must be an integer from 0"):
        photo_image.save(io.BytesIO(), format="CNNZ", method=method)


def test_method_steps_grow_with_method():
    steps = refine.METHOD_STEPS
    assert steps[0] == 0 and all(a < b for a, b in zip(steps, steps[1:]))


def test_weights_without_a_float_entropy_model_refuse_method_but_still_encode(tmp_path, monkeypatch):
    from training.export import deterministic_npz

    src = weights.weights_dir()
    manifest = json.loads((src / "manifest.json").read_text())
    with np.load(src / manifest["models"][manifest["default"]]["file"]) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith(("net/h_s.", "net/density_z.", "net/context."))}
    data = deterministic_npz(arrays)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "old.npz").write_bytes(data)
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {sha[:16]: {"file": "old.npz", "sha256": sha}},
                                                        "default": sha[:16]}))
    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path)
    monkeypatch.setattr(weights, "_cache", {})
    img = photo(48, 64)
    assert codec.decode(codec.encode(img, "RGB", 4.0)).shape == img.shape
    with pytest.raises(weights.WeightsError, match="no float entropy model"):
        codec.encode(img, "RGB", 4.0, method=1)


@pytest.mark.parametrize("size", [(1, 1), (5, 17), (70, 3)])
def test_refinement_handles_tiny_and_thin_images(size):
    img = photo(*size, seed=2)
    assert codec.decode(codec.encode(img, "RGB", 6.0, method=1)).shape == img.shape


def test_a_step_size_that_overshoots_keeps_the_analysis_latents(monkeypatch):
    img = photo(64, 96, seed=6)
    monkeypatch.setattr(refine, "LEARNING_RATE", 50.0)  # every step lands far off
    assert codec.encode(img, "RGB", 4.0, method=2) == codec.encode(img, "RGB", 4.0)


def test_imageio_imwrite_passes_method_through(tmp_path, photo_array):
    import imageio.v3 as iio

    fast, small = tmp_path / "fast.cnnz", tmp_path / "small.cnnz"
    iio.imwrite(fast, photo_array, quality=4)
    iio.imwrite(small, photo_array, quality=4, method=2)
    assert fast.read_bytes() != small.read_bytes()
    assert iio.imread(small).shape == photo_array.shape


def test_cli_encode_takes_method_and_rejects_a_bad_one(tmp_path, photo_image):
    from pillow_cnnz import cli

    src, out = tmp_path / "in.png", tmp_path / "out.cnnz"
    photo_image.save(src)
    assert cli.main(["encode", str(src), str(out), "-q", "3", "-m", "2"]) == 0
    with Image.open(out) as im:
        assert im.size == photo_image.size
    before = out.read_bytes()
    assert cli.main(["encode", str(src), str(out), "-m", "9"]) == 1
    assert out.read_bytes() == before  # a bad option loses nothing
