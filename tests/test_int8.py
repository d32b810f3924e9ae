"""The encoder's int8 analysis (``pillow_cnnz/int8.py``): close to float32, exact across thread
counts, chosen only where it pays, and its ranges file checked like the weights."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from pillow_cnnz import codec, weights

from .conftest import _photo as photo

torch = pytest.importorskip("torch")
int8 = pytest.importorskip("pillow_cnnz.int8")
needs_int8 = pytest.mark.skipif(not int8.supported(), reason="no oneDNN int8 convolutions in this torch")


@needs_int8
def test_int8_analysis_moves_latents_by_less_than_a_rounding_step():
    model = weights.load()
    net = model.net("cpu")
    img = photo(192, 256, seed=3)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).contiguous(memory_format=torch.channels_last)
    gain = torch.from_numpy(2 ** model.log2_gains(8.0)[0]).float()[None, :, None, None]  # the finest step
    with torch.inference_mode():
        ref = net.g_a(x.clone()) * gain
        out = model.int8_analysis()(x.clone()) * gain
    err = (out - ref).abs()
    # measured: rms 0.023 of a quantization step on the validation photos (bfloat16: 0.038), 0.018
    # here; ReLU outputs of the red disc saturated at the 0.9999 quantile and moved a latent by
    # 2.08 steps (rms 0.028), at the 0.99999 one at most 1.23
    assert err.pow(2).mean().sqrt() < 0.03 and torch.quantile(err.flatten(), 0.999) < 0.5
    assert err.max() < 1.5
    assert (torch.round(out) != torch.round(ref)).float().mean() < 0.03


def _encode_int8(img: np.ndarray) -> bytes:
    ((z, y),) = codec.analyse_batch([img], [6.0], precision="int8")
    latz, laty = codec.code_latents(weights.load(), z, y)
    return latz + laty


@needs_int8
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_encode_gives_the_same_bytes_at_any_thread_count(threads):
    img = photo(256, 320, seed=5)
    torch.set_num_threads(2)
    first = _encode_int8(img)
    torch.set_num_threads(threads)  # the conftest fixture puts the count back
    assert all(_encode_int8(img) == first for _ in range(2))


@needs_int8
def test_int8_encoded_file_decodes_like_the_float32_one(tmp_path):
    img = photo(130, 200, seed=6)
    path = tmp_path / "x.cnnz"
    Image.fromarray(img).save(path, quality=5)  # auto: int8 on a CPU with VNNI, else float32 or bfloat16
    ((z, y),) = codec.analyse_batch([img], [5.0], precision="float32")
    ((z8, y8),) = codec.analyse_batch([img], [5.0], precision="int8")
    assert np.abs(z8 - z).max() <= 1 and np.count_nonzero(z8 != z) <= 0.02 * z.size
    with Image.open(path) as im:
        out = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(out - img).mean() < 6


def _drawing(height: int = 192, width: int = 256) -> np.ndarray:
    """Text and flat saturated colours: activations beyond the photos' ranges."""
    from PIL import ImageDraw

    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for row in range(0, height, 12):
        draw.text((4, row), "The quick brown fox jumps over the lazy dog 0123456789", fill=(0, 0, 0))
    draw.rectangle((width // 2, 10, width - 10, height // 2), fill=(255, 0, 0))
    draw.ellipse((10, height // 2, width // 2, height - 10), fill=(0, 0, 255))
    return np.asarray(im)


@needs_int8
def test_block_input_beyond_its_range_widens_the_scale_instead_of_saturating():
    block = weights.load().net("cpu").g_a[int8.residual_blocks(weights.load().net("cpu").g_a)[0]]
    x = (torch.randn(1, block.conv1.in_channels, 24, 32) * 3).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = block(x.clone())
        tight = int8._Block(block, 0.3, 0.3)  # ranges 10x too small for this input
        assert tight.scales(x)[0] > 0.3 / 127 * 20
        out = tight(x.clone())
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@needs_int8
def test_int8_keeps_a_drawing_close_to_float32(monkeypatch):
    img = _drawing()
    quality = {}
    for precision in ("float32", "int8"):
        monkeypatch.setenv("CNNZ_PRECISION", precision)
        data = codec.encode(img, "RGB", 5.0)
        out = codec.decode(data).astype(float)
        quality[precision] = (len(data), 10 * np.log10(255**2 / np.mean((out - img) ** 2)))
    (b32, p32), (b8, p8) = quality["float32"], quality["int8"]
    # measured on a 512x384 drawing: -0.3 % bytes, -0.01 to -0.04 dB (without widening: -0.2 to -0.3 dB)
    assert p8 > p32 - 0.1 and b8 < 1.02 * b32


@needs_int8
def test_int8_bytes_of_an_image_do_not_depend_on_the_rest_of_its_batch(monkeypatch):
    monkeypatch.setenv("CNNZ_PRECISION", "int8")
    photo_, drawing = photo(192, 256, seed=7), _drawing()
    together = codec.encode_batch([photo_, drawing], ["RGB", "RGB"], 4.0)
    assert together == [codec.encode(photo_, "RGB", 4.0), codec.encode(drawing, "RGB", 4.0)]


def test_auto_analysis_takes_int8_on_vnni_without_amx_when_the_model_has_ranges(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", sys.modules["torch"])
    monkeypatch.setattr(codec, "_int8_supported", lambda: True)
    monkeypatch.setattr(codec, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert codec.resolve_precision("auto", "cpu", analysis=True, int8=True) == "int8"
    assert codec.resolve_precision("auto", "cpu", analysis=True, int8=False) == "float32"  # no ranges shipped
    assert codec.resolve_precision("auto", "cpu", int8=True) == "float32"  # the synthesis never
    monkeypatch.setattr(codec, "_cpu_flags", lambda: frozenset({"avx512_vnni", "amx_tile", "amx_bf16"}))
    assert codec.resolve_precision("auto", "cpu", analysis=True, int8=True) == "bfloat16"  # AMX: faster still
    monkeypatch.setattr(codec, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert codec.resolve_precision("auto", "cpu", analysis=True, int8=True) == "float32"  # no VNNI: no gain


def test_int8_asked_for_outside_the_cpu_analysis_means_auto(monkeypatch):
    monkeypatch.setattr(codec, "_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("CNNZ_PRECISION", "int8")
    assert codec.resolve_precision(None, "cpu") == "float32"  # a decode in a process told int8
    assert codec.resolve_precision(None, "cpu", analysis=True) == "int8"  # asked for: always


def _document() -> dict:
    model = weights.load()
    return json.loads((weights.weights_dir() / model.entry["int8"]["file"]).read_text())


def test_shipped_ranges_fit_the_shipped_analysis():
    model = weights.load()
    assert model.has_int8
    doc = _document()
    ranges = int8.check_ranges(doc, model.model_id.hex(), model.net("cpu").g_a)
    assert set(ranges) == {str(i) for i in int8.residual_blocks(model.net("cpu").g_a)}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(model="0" * 16), "is for model"),
    (lambda d: d.update(format=99), "not format"),
    (lambda d: d["blocks"].pop(next(iter(d["blocks"]))), "has blocks"),
    (lambda d: d["blocks"][next(iter(d["blocks"]))].update(input=float("nan")), "not positive finite"),
    (lambda d: d["blocks"][next(iter(d["blocks"]))].update(hidden=0), "not positive finite"),
])
def test_ranges_file_that_does_not_fit_is_refused(change, message):
    model = weights.load()
    doc = _document()
    change(doc)
    with pytest.raises(ValueError, match=message):
        int8.load_ranges(json.dumps(doc).encode(), model.model_id.hex(), model.net("cpu").g_a)
    with pytest.raises(ValueError, match="not JSON"):
        int8.load_ranges(b"\xff{", model.model_id.hex(), model.net("cpu").g_a)


@pytest.fixture
def weights_copy(tmp_path):
    """A copy of the shipped weights folder, to change."""
    for f in weights.weights_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_changed_ranges_file_is_reported_not_used(weights_copy, monkeypatch):
    tmp_path = weights_copy
    model = weights.load()
    ranges_path = tmp_path / model.entry["int8"]["file"]
    ranges_path.write_text(ranges_path.read_text().replace('"input": ', '"input": 1', 1))
    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path)
    fresh = weights._read(model.model_id)
    with pytest.raises(weights.WeightsError, match="corrupted or was replaced"):
        fresh.int8_analysis()


def test_model_without_ranges_says_so():
    model = weights.load()
    bare = weights.Model(model.model_id, model.meta, model.arrays, model.z_tables, model.y_tables,
                         model.hyper_layers, model.context_layers, {k: v for k, v in model.entry.items() if k != "int8"})
    assert not bare.has_int8
    with pytest.raises(weights.WeightsError, match="no int8 activation ranges"):
        bare.int8_analysis()


def test_measured_range_is_the_quantile_of_the_magnitudes():
    g_a = weights.load().net("cpu").g_a
    img = torch.from_numpy(photo(128, 128, seed=2)).permute(2, 0, 1)[None].float().div(255)
    x = img.contiguous(memory_format=torch.channels_last)
    ranges = int8.measure_ranges(g_a, [x])
    first = int8.residual_blocks(g_a)[0]
    with torch.inference_mode():
        before = g_a[:first](x.clone())
    expected = torch.quantile(before.abs().flatten(), int8.QUANTILE).item()
    assert ranges[str(first)]["input"] == pytest.approx(expected, rel=1e-5)
    assert all(r["input"] > 0 and r["hidden"] > 0 for r in ranges.values())


def test_int8_command_registers_ranges_with_the_default_weights(weights_copy):
    from pillow_cnnz.train.__main__ import main

    tmp_path = weights_copy
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(2):
        Image.fromarray(photo(96, 128, seed=seed)).save(data / f"{seed}.png")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"][manifest["default"]].pop("int8")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["int8", "--data", str(data), "--images", "2", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"][manifest["default"]]
    written = (tmp_path / entry["int8"]["file"]).read_bytes()
    model = weights.load()
    assert int8.load_ranges(written, model.model_id.hex(), model.net("cpu").g_a)
    assert json.loads(written)["source"]["images"] == 2
