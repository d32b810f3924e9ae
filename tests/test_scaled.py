"""Reduced-resolution decoding (``heads.py``): ``decode(scale=)``, ``decode_batch(scale=)``,
``draft()`` / ``thumbnail()``, ``reduce()`` and ``cnnz decode --scale``.

Pixel checks compare a reduced decode with a Lanczos downscale of the full decode: the heads are
trained to give the Lanczos downscale of the original, which the full decode approximates."""
from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import cli, codec, heads, synthesis, tiling, weights

from .conftest import _photo as photo

pytest.importorskip("torch")  # encoding needs it

HEIGHT, WIDTH = 200, 264  # not multiples of 8: reduced sizes round up


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def lanczos(pixels: np.ndarray, scale: int) -> np.ndarray:
    im = Image.fromarray(pixels)
    return np.asarray(im.resize(heads.scaled_size(*im.size, scale), Image.LANCZOS))


@pytest.fixture(scope="module")
def data() -> bytes:
    return pillow_cnnz.encode(photo(HEIGHT, WIDTH, seed=5), 4)


@pytest.fixture(scope="module")
def full(data) -> np.ndarray:
    return pillow_cnnz.decode(data)


def test_the_shipped_model_has_a_head_for_each_reduced_scale():
    model = weights.load()
    assert sorted(model.heads()) == [2, 4, 8]
    assert all(h.tap in heads.readable_taps(model.meta["config"]) for h in model.heads().values())


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_a_reduced_decode_has_the_rounded_up_size_and_is_the_downscaled_picture(data, full, scale):
    out = pillow_cnnz.decode(data, scale=scale)
    assert out.shape == (-(-HEIGHT // scale), -(-WIDTH // scale), 3) and out.dtype == np.uint8
    reference = lanczos(full, scale)
    assert psnr(out, reference) > 30, psnr(out, reference)
    assert psnr(out, reference) > psnr(out, reference[::-1, ::-1]) + 10


def test_scale_1_is_the_full_decode(data, full):
    assert np.array_equal(pillow_cnnz.decode(data, scale=1), full)


@pytest.mark.parametrize("bad", [0, 3, 16, -2, 2.0, True, "2", None])
def test_a_scale_other_than_1_2_4_or_8_raises_valueerror(data, bad):
    with pytest.raises(ValueError, match="scale must be one of 1, 2, 4, 8"):
        pillow_cnnz.decode(data, scale=bad)
    with pytest.raises(ValueError, match="scale must be one of"):
        pillow_cnnz.decode_batch([data], scale=bad)


def test_decode_batch_at_a_scale_decodes_each_file_as_decode_does(data, full):
    other = pillow_cnnz.encode(photo(HEIGHT, WIDTH, seed=6), 2)
    batch = pillow_cnnz.decode_batch([data, other, data], scale=4)
    assert np.array_equal(batch[0], pillow_cnnz.decode(data, scale=4))
    assert np.array_equal(batch[1], pillow_cnnz.decode(other, scale=4))
    assert np.array_equal(batch[2], batch[0])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_every_mode_decodes_at_a_scale_its_alpha_reduced_by_area(mode):
    rgb = photo(HEIGHT, WIDTH, seed=7)
    im = Image.fromarray(rgb).convert(mode[0] if mode != "RGBA" else "RGB")
    if "A" in mode:
        im.putalpha(Image.fromarray((np.arange(HEIGHT * WIDTH) % 251).reshape(HEIGHT, WIDTH).astype(np.uint8)))
    data = pillow_cnnz.encode(im, 4)
    out = pillow_cnnz.decode(data, scale=4)
    size = (-(-HEIGHT // 4), -(-WIDTH // 4))
    assert out.shape == size + ((len(mode),) if len(mode) > 1 else ())
    if "A" in mode:
        alpha = np.asarray(Image.fromarray(pillow_cnnz.decode(data)[..., -1]).reduce(4))
        assert np.array_equal(out[..., -1], alpha)


def test_numpy_and_torch_reduced_decodes_agree_within_2_levels(data, monkeypatch):
    monkeypatch.setenv("CNNZ_PRECISION", "float32")
    for scale in (2, 4, 8):
        in_numpy = pillow_cnnz.decode(data, scale=scale)
        with monkeypatch.context() as m:
            m.setattr(synthesis, "TORCH_FROM_PIXELS", 0)
            in_torch = pillow_cnnz.decode(data, scale=scale)
        assert np.abs(in_numpy.astype(int) - in_torch).max() <= 2, scale


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_decodes_in_other_precisions_are_close_to_float32(data, monkeypatch, precision):
    from pillow_cnnz import precision as policy

    if precision == "int8" and not policy.int8_supported():
        pytest.skip("this torch build has no oneDNN int8 convolutions")
    if precision == "bfloat16" and not policy.cpu_has_bf16():
        pytest.skip("the running CPU has no native bfloat16")
    monkeypatch.setenv("CNNZ_PRECISION", "float32")
    reference = {s: pillow_cnnz.decode(data, scale=s) for s in (2, 4)}
    monkeypatch.setenv("CNNZ_PRECISION", precision)
    for scale, expected in reference.items():
        assert psnr(pillow_cnnz.decode(data, scale=scale), expected) > 38


def test_a_tiled_reduced_decode_is_the_whole_images(monkeypatch):
    data = pillow_cnnz.encode(photo(300, 420, seed=8), 4)
    monkeypatch.setenv("CNNZ_PRECISION", "float32")
    for scale in (2, 8):
        monkeypatch.setattr(tiling, "TILE", 6)  # 96-pixel tiles: several, with partial ones at the edges
        tiled = pillow_cnnz.decode(data, scale=scale)
        monkeypatch.setattr(tiling, "TILE", 1000)
        whole = pillow_cnnz.decode(data, scale=scale)
        assert tiled.shape == whole.shape and np.abs(tiled.astype(int) - whole).max() <= 1


def test_a_model_without_heads_reduces_the_full_decode_by_area(data, full, monkeypatch):
    monkeypatch.setattr(weights.load(), "heads", lambda: {})
    for scale in (2, 8):
        expected = np.asarray(Image.fromarray(full).reduce(scale))
        assert np.array_equal(pillow_cnnz.decode(data, scale=scale), expected)


@pytest.mark.parametrize("request_size", [(264, 200), (132, 100), (131, 99), (100, 100), (66, 50), (65, 49),
                                          (34, 26), (33, 25), (10, 10), (1, 1), (400, 400)])
def test_draft_picks_the_scale_and_size_pillows_jpeg_plugin_picks(data, request_size):
    jpeg = io.BytesIO()
    Image.fromarray(photo(HEIGHT, WIDTH, seed=5)).save(jpeg, format="JPEG")
    with Image.open(jpeg) as reference, Image.open(io.BytesIO(data)) as im:
        expected = reference.draft("RGB", request_size)
        got = im.draft("RGB", request_size)
        assert got == expected and im.size == reference.size
        im.load()
        assert im.size == reference.size


def test_thumbnail_decodes_at_the_draft_scale(data, monkeypatch):
    scales = []
    decode = codec.decode_payloads
    monkeypatch.setattr(codec, "decode_payloads", lambda *a, **k: scales.append(k.get("scale", 1)) or decode(*a, **k))
    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((32, 32))  # draft((64, 64)): 264 // 64 = 4, 200 // 64 = 3, so 1/2
        assert scales == [2] and im.size == (32, 24)
        pixels = np.asarray(im)
    reference = Image.fromarray(pillow_cnnz.decode(data))
    reference.thumbnail((32, 32))
    assert psnr(pixels, np.asarray(reference)) > 30


def test_draft_after_load_changes_nothing(data):
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.draft(None, (10, 10)) is None and im.size == (WIDTH, HEIGHT)


def test_reduce_before_load_decodes_at_that_scale_and_leaves_the_image_unloaded(data, full):
    with Image.open(io.BytesIO(data)) as im:
        small = im.reduce(4)
        assert small.size == (66, 50) and small.mode == "RGB" and small.info["quality"] == im.info["quality"]
        assert np.array_equal(np.asarray(small), pillow_cnnz.decode(data, scale=4))
        assert im.size == (WIDTH, HEIGHT)
        assert np.array_equal(np.asarray(im), full)  # loads whole afterwards
        assert np.array_equal(np.asarray(im.reduce(4)), np.asarray(Image.fromarray(full).reduce(4)))  # now Pillow's


def test_reduce_of_a_box_or_a_factor_without_a_head_is_pillows(data, full):
    with Image.open(io.BytesIO(data)) as im:
        box = (8, 8, 200, 160)
        assert np.array_equal(np.asarray(im.reduce(2, box)), np.asarray(Image.fromarray(full).reduce(2, box)))
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(np.asarray(im.reduce(3)), np.asarray(Image.fromarray(full).reduce(3)))


def test_cli_decode_writes_the_image_at_a_scale(data, tmp_path):
    src, out = tmp_path / "x.cnnz", tmp_path / "x.png"
    src.write_bytes(data)
    assert cli.main(["decode", str(src), str(out), "--scale", "8"]) == 0
    with Image.open(out) as im:
        assert im.size == (33, 25)
        assert np.array_equal(np.asarray(im), pillow_cnnz.decode(data, scale=8))


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    dst = tmp_path / "weights"
    shutil.copytree(weights.weights_dir(), dst)
    monkeypatch.setattr(weights, "weights_dir", lambda: dst)
    monkeypatch.setattr(weights, "_cache", {})
    return dst


def test_a_damaged_heads_file_fails_reduced_decodes_only(data, full, weights_copy):
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    path = weights_copy / manifest["models"][manifest["default"]]["heads"]["file"]
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(weights.WeightsError, match="corrupted or was replaced"):
        pillow_cnnz.decode(data, scale=2)
    assert np.array_equal(pillow_cnnz.decode(data), full)


def test_a_heads_file_for_another_model_or_layer_is_refused():
    model = weights.load()
    path = weights.weights_dir() / model.entry["heads"]["file"]
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(str(arrays["meta"]))

    def packed(meta: dict, **replace: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **(arrays | replace | {"meta": np.array(json.dumps(meta))}))
        return buf.getvalue()

    config = model.meta["config"]
    assert sorted(heads.parse(packed(meta), model.model_id.hex(), config)) == [2, 4, 8]
    with pytest.raises(ValueError, match="for model"):
        heads.parse(packed(meta), "00" * 8, config)
    moved = json.loads(json.dumps(meta))
    moved["heads"]["2"]["tap"] = 0  # a sub-pixel convolution's output
    with pytest.raises(ValueError, match="does not have"):
        heads.parse(packed(moved), model.model_id.hex(), config)
    moved["heads"]["2"]["tap"] = 1  # 96 channels at 1/8: not what the head was made for
    with pytest.raises(ValueError, match="does not fit"):
        heads.parse(packed(moved), model.model_id.hex(), config)
    key = next(k for k in arrays if k.startswith("4/0.weight"))
    with pytest.raises(ValueError, match="does not fit"):
        heads.parse(packed(meta, **{key: arrays[key][:, :5]}), model.model_id.hex(), config)


@pytest.mark.parametrize(("size", "request_size", "scale"), [((264, 200), (132, 100), 2), ((264, 200), (65, 49), 4),
                                                             ((264, 200), (400, 1), 1), ((9000, 8), (10, 1), 8)])
def test_draft_scale_is_the_largest_scale_within_the_ratio_of_sizes(size, request_size, scale):
    assert heads.draft_scale(*size, request_size) == scale
