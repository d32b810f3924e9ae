"""The int8 analysis and synthesis (``pillow_cnnz/int8.py``): close to float32, exact across thread
counts, chosen only where it pays, and their ranges file checked like the weights."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import codec, latents, precision, synthesis, tiling, weights

from .conftest import _photo as photo

torch = pytest.importorskip("torch")
int8 = pytest.importorskip("pillow_cnnz.int8")
from training import int8_calibration  # noqa: E402

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
    # measured: rms 0.013 of a quantization step on 8 Kodak photos (bfloat16 on val: 0.038; one range
    # per tensor: 0.021), 0.018 on this synthetic one; ReLU outputs of its red disc saturated at the
    # 0.9999 quantile and moved a latent by 2.08 steps, at the 0.99999 one at most 1.23 (one range
    # per tensor) and 1.55 (balanced per channel)
    assert err.pow(2).mean().sqrt() < 0.03 and torch.quantile(err.flatten(), 0.999) < 0.5
    assert err.max() < 2
    assert (torch.round(out) != torch.round(ref)).float().mean() < 0.03


def _encode_int8(img: np.ndarray) -> bytes:
    ((z, y),) = codec.analyse_batch([img], [6.0], precision="int8")
    latz, laty = latents.code_latents(weights.load(), z, y)
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
    g_a = weights.load().net("cpu").g_a
    block = g_a[int8.residual_blocks(g_a)[0]]
    channels = block.conv1.in_channels
    x = (torch.randn(1, channels, 24, 32) * 3).contiguous(memory_format=torch.channels_last)
    x[0, 5] *= 4  # one channel far beyond the others
    with torch.inference_mode():
        ref = block(x.clone())
        tight = int8._Block(block, [0.3] * channels, [0.3] * channels)  # ranges 10-40x too small for this input
        q, fine, widen = tight.quantize(x)
        assert fine is None and widen > 50 and q.min() >= 0 and q.max() <= 255
        assert (q.float() - 128).abs().amax().item() >= 126  # the widest value uses the whole range
        out = tight(x.clone())
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@needs_int8
def test_widened_scale_and_block_output_do_not_depend_on_the_band_size(monkeypatch):
    g_s = weights.load().net("cpu").g_s
    block = g_s[int8_calibration.synthesis_levels(g_s)[-1][0]]
    channels = block.conv1.in_channels
    x = torch.randn(1, channels, 40, 32, generator=torch.Generator().manual_seed(2))
    x[:, :, 5:9] *= 7  # beyond the range in an early band,
    x[:, :, 30:33] *= 11  # and further beyond in a later one
    x = x.contiguous(memory_format=torch.channels_last)
    tight = int8._Block(block, [0.5] * channels, [0.5] * channels, passes=2)
    found = []
    with torch.inference_mode():
        for rows in (40, 7, 3):  # one band, bands of 7 rows, bands of 3 rows
            monkeypatch.setattr(int8._Block, "BAND", channels * 32 * rows)
            q, fine, widen = tight.quantize(x)
            found.append((q, fine, widen, tight(x.clone())))
    for q, fine, widen, out in found[1:]:
        assert widen == found[0][2] > 1
        assert torch.equal(q, found[0][0]) and torch.equal(fine, found[0][1]) and torch.equal(out, found[0][3])


@needs_int8
def test_per_channel_ranges_keep_small_channels_that_one_range_per_tensor_rounds_away():
    g_s = weights.load().net("cpu").g_s
    block = g_s[int8_calibration.synthesis_levels(g_s)[-1][0]]
    channels = block.conv1.in_channels
    spread = torch.logspace(-1.3, 0.6, channels)  # channel ranges 80x apart
    x = (torch.randn(1, channels, 32, 48, generator=torch.Generator().manual_seed(0)) * spread.view(1, -1, 1, 1))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = block(x.clone())
        hidden = torch.relu(block.conv1(x)).flatten(2)[0].amax(1).clamp_min(1e-3)
        per_channel = int8._Block(block, (spread * 4).tolist(), hidden.tolist())(x.clone())
        per_tensor = int8._Block(block, [4 * float(spread.max())] * channels, [float(hidden.max())] * channels)(x.clone())
    error = lambda out: (out - ref).pow(2).mean().sqrt().item()  # noqa: E731
    assert error(per_channel) < 0.8 * error(per_tensor)  # measured 0.0045 against 0.0063


@needs_int8
def test_two_pass_input_brings_a_block_closer_to_float32_than_one_pass():
    g_s = weights.load().net("cpu").g_s
    block = g_s[int8_calibration.synthesis_levels(g_s)[1][0]]
    channels = block.conv1.in_channels
    x = (torch.randn(1, channels, 32, 48, generator=torch.Generator().manual_seed(1)) * 0.8)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = block(x.clone())
        hidden = torch.relu(block.conv1(x)).flatten(2)[0].amax(1).clamp_min(1e-3).tolist()
        # ranges 8x the input's reach, as an outlier in the calibration images leaves them: one pass
        # then rounds the input to ~5 bits, and that dominates the block's error
        inputs = (8 * x.abs().flatten(2)[0].amax(1)).tolist()
        one, two = (int8._Block(block, inputs, hidden, passes) for passes in (1, 2))
        q, fine, widen = two.quantize(x)
        assert widen == 1.0 and fine.dtype == torch.uint8 and 1 <= fine.min() and fine.max() <= 255
        residual = x * two.inverse_step - (q.float() - 128)  # in steps: within ±0.5, fine holds it to 1/254
        assert ((fine.float() - 128) / 254 - residual).abs().max() <= 0.5 / 254 + 1e-4
        error = {passes: (b(x.clone()) - ref).pow(2).mean().sqrt().item() for passes, b in ((1, one), (2, two))}
    assert error[2] < 0.5 * error[1]  # measured 0.0075 against 0.0266


def test_a_channel_never_active_gets_a_small_positive_range():
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    block = int8.ResBlock(4)
    with torch.no_grad():
        block.conv1.weight[2] = 0
        block.conv1.bias[2] = -1  # its ReLU output is always 0
    x = torch.rand(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    ranges = int8_calibration.measure_ranges(torch.nn.Sequential(conv, block), [x], [1])["1"]
    assert 0 < ranges["hidden"][2] < 0.01 * max(ranges["hidden"])
    assert all(v > 0 for v in ranges["input"] + ranges["hidden"])


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


def test_auto_takes_int8_on_vnni_without_bfloat16_when_the_model_has_ranges(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", sys.modules["torch"])
    monkeypatch.setattr(precision, "int8_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert precision.resolve_precision("auto", "cpu", analysis=True, int8=True) == "int8"
    assert precision.resolve_precision("auto", "cpu", int8=True) == "int8"  # the synthesis too
    assert precision.resolve_precision("auto", "cpu", analysis=True, int8=False) == "float32"  # no ranges shipped
    assert precision.resolve_precision("auto", "cuda", int8=True) in ("bfloat16", "float32")  # int8 is the CPU's
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    assert precision.resolve_precision("auto", "cpu", int8=True) == "bfloat16"  # the synthesis: faster still
    assert precision.resolve_precision("auto", "cpu", analysis=True, int8=True) == "int8"  # bfloat16 analysis unstable
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_tile", "amx_bf16"}))
    assert precision.resolve_precision("auto", "cpu", analysis=True, int8=True) == "bfloat16"  # AMX: faster still
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert precision.resolve_precision("auto", "cpu", analysis=True, int8=True) == "float32"  # no VNNI: no gain
    assert precision.resolve_precision("auto", "cpu", int8=True) == "float32"


def test_auto_decode_without_torch_installed_stays_float32(monkeypatch):
    monkeypatch.setattr(precision, "torch_installed", lambda: False)  # int8 blocks run in torch
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert precision.resolve_precision("auto", "cpu", int8=True) == "float32"


def test_int8_asked_for_on_cuda_means_auto(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("CNNZ_PRECISION", "int8")
    assert precision.resolve_precision(None, "cpu") == "int8"  # asked for: always, on a CPU
    assert precision.resolve_precision(None, "cpu", analysis=True) == "int8"
    monkeypatch.setattr(precision, "import_torch", lambda: types.SimpleNamespace(cuda=types.SimpleNamespace(is_bf16_supported=lambda: True)))
    assert precision.resolve_precision(None, "cuda") == "bfloat16"


def _decode(data: bytes, precision: str) -> np.ndarray:
    header, sections = codec.container.parse(data)
    return synthesis.decode_rgb(header, sections["LATZ"], sections["LATY"], "cpu", precision).astype(float)


@needs_int8
@pytest.mark.parametrize("quality", [2.0, 8.0])
def test_int8_synthesis_decodes_within_rounding_of_float32(quality):
    img = photo(192, 256, seed=11)
    data = codec.encode(img, "RGB", quality)
    ref, out = _decode(data, "float32"), _decode(data, "int8")
    mse = lambda a: np.mean((a - img) ** 2)  # noqa: E731
    # measured on Kodak: -0.0003 to -0.0018 dB against float32 (experiments/int8_synthesis/int8_synthesis.json)
    assert 10 * np.log10(mse(out) / mse(ref)) < 0.02
    assert np.abs(out - ref).mean() < 0.3 and np.abs(out - ref).max() <= 12


@needs_int8
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_decode_gives_the_same_pixels_at_any_thread_count(threads):
    data = codec.encode(photo(160, 224, seed=12), "RGB", 6.0)
    torch.set_num_threads(2)
    first = _decode(data, "int8")
    torch.set_num_threads(threads)  # the conftest fixture puts the count back
    assert np.array_equal(_decode(data, "int8"), first)


@needs_int8
def test_int8_decoded_image_does_not_depend_on_the_rest_of_its_batch(monkeypatch):
    monkeypatch.setenv("CNNZ_PRECISION", "int8")
    files = [codec.encode(img, "RGB", 5.0) for img in (photo(192, 256, seed=13), _drawing())]  # one size: one pass
    together = pillow_cnnz.decode_batch(files)
    assert all(np.array_equal(a, pillow_cnnz.decode_batch([f])[0]) for a, f in zip(together, files))


def _document() -> dict:
    model = weights.load()
    return json.loads((weights.weights_dir() / model.entry["int8"]["file"]).read_text())


def test_shipped_ranges_fit_the_shipped_transforms():
    model = weights.load()
    net = model.net("cpu")
    assert model.has_int8
    analysis, synthesis = int8.check_ranges(_document(), model.model_id.hex(), net.g_a, net.g_s)
    assert set(analysis) == {str(i) for i in int8.residual_blocks(net.g_a)}
    levels = int8_calibration.synthesis_levels(net.g_s)
    inner = int8.upsamplings(net.g_s)[1:]  # not the first, on the latents: 0.018 dB at quality 8 even so
    assert sorted(map(int, synthesis)) == sorted(levels[0] + levels[1] + levels[2] + inner)
    # the middle level in one pass costs 0.021 dB at quality 8 (experiments/int8_synthesis): two passes
    # there, and in the sub-pixel convolutions, whose input is the whole signal
    assert sorted(int(k) for k, r in synthesis.items() if r.get("passes", 1) == 2) == sorted(levels[1] + inner)
    rounded = model.int8_rounded(net, synthesis)  # every int8 convolution of the synthesis, rounded by gptq
    assert {(k, name) for k, convs in rounded.items() for name in convs} == {
        (k, name) for k in synthesis for name in int8.convolutions(net.g_s[int(k)])}


def _first(blocks: dict) -> dict:
    return blocks[next(iter(blocks))]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(model="0" * 16), "is for model"),
    (lambda d: d.update(format=1), "not format"),
    (lambda d: d["analysis"].pop(next(iter(d["analysis"]))), "has analysis blocks"),
    (lambda d: d["synthesis"].update({"1": _first(d["synthesis"])}), "has synthesis blocks"),  # GDN: no int8
    (lambda d: d["synthesis"].update({"15": {"input": [1.0] * 48}}), "has synthesis blocks"),  # the pixels' conv
    (lambda d: d["synthesis"].update({"0": {"input": [1.0] * 224, "hidden": [1.0] * 224}}), "have keys"),  # no hidden
    (lambda d: d["synthesis"]["4"]["input"].pop(), "not a list of 96 numbers"),
    (lambda d: d.pop("synthesis"), "has synthesis blocks"),
    (lambda d: _first(d["analysis"])["input"].__setitem__(3, float("nan")), "not positive finite"),
    (lambda d: _first(d["synthesis"])["hidden"].__setitem__(0, 0), "not positive finite"),
    (lambda d: _first(d["synthesis"])["hidden"].__setitem__(0, True), "not positive finite"),
    (lambda d: _first(d["analysis"])["hidden"].pop(), "not two lists of 96 numbers"),
    (lambda d: _first(d["analysis"]).update(input=1.0), "not two lists"),
    (lambda d: _first(d["synthesis"]).update(passes=3), "passes, if given, is 1 or 2"),
    (lambda d: _first(d["synthesis"]).update(passes=True), "passes, if given, is 1 or 2"),
    (lambda d: _first(d["analysis"]).update(step=1.0), "have keys"),
])
def test_ranges_file_that_does_not_fit_is_refused(change, message):
    model = weights.load()
    net = model.net("cpu")
    doc = _document()
    change(doc)
    with pytest.raises(ValueError, match=message):
        int8.load_ranges(json.dumps(doc).encode(), model.model_id.hex(), net.g_a, net.g_s)
    with pytest.raises(ValueError, match="not JSON"):
        int8.load_ranges(b"\xff{", model.model_id.hex(), net.g_a, net.g_s)


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
    with pytest.raises(weights.WeightsError, match="corrupted or was replaced"):
        fresh.int8_synthesis()
    ranges_path.write_bytes((weights.weights_dir() / model.entry["int8"]["file"]).read_bytes())
    rounded_path = tmp_path / model.entry["int8"]["rounded"]["file"]
    rounded_path.write_bytes(rounded_path.read_bytes()[:-1] + b"\0")
    with pytest.raises(weights.WeightsError, match="corrupted or was replaced"):
        weights._read(model.model_id).int8_synthesis()


def test_model_without_ranges_says_so():
    model = weights.load()
    bare = weights.Weights(model.model_id, model.meta, model.arrays, model.z_tables, model.y_tables,
                         model.hyper_layers, model.context_layers, {k: v for k, v in model.entry.items() if k != "int8"})
    assert not bare.has_int8
    for transform in (bare.int8_analysis, bare.int8_synthesis):
        with pytest.raises(weights.WeightsError, match="no int8 activation ranges"):
            transform()


def test_measured_range_is_each_channels_quantile_of_the_magnitudes():
    g_a = weights.load().net("cpu").g_a
    img = torch.from_numpy(photo(128, 128, seed=2)).permute(2, 0, 1)[None].float().div(255)
    x = img.contiguous(memory_format=torch.channels_last)
    first = int8.residual_blocks(g_a)[0]
    ranges = int8_calibration.measure_ranges(g_a, [x], [first])
    assert list(ranges) == [str(first)]
    with torch.inference_mode():
        before = g_a[:first](x.clone())  # 64x64 positions: fewer than are sampled, so all are used
    expected = torch.quantile(before.abs().flatten(2)[0], int8_calibration.QUANTILE, dim=1)
    assert ranges[str(first)]["input"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert len(set(ranges[str(first)]["input"])) > 1  # channels differ
    assert all(v > 0 for r in ranges.values() for part in r.values() for v in part)


def test_int8_command_registers_ranges_with_the_default_weights(weights_copy):
    from training.__main__ import main

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
    net = model.net("cpu")
    analysis, synthesis = int8.load_ranges(written, model.model_id.hex(), net.g_a, net.g_s)
    levels, inner = int8_calibration.synthesis_levels(net.g_s), int8.upsamplings(net.g_s)[1:]
    assert len(analysis) == 7 and sorted(map(int, synthesis)) == sorted(levels[0] + levels[1] + levels[2] + inner)
    assert sorted(int(k) for k, r in synthesis.items() if "passes" in r) == sorted(levels[1] + inner)
    assert json.loads(written)["source"]["images"] == 2
    rounded = (tmp_path / entry["int8"]["rounded"]["file"]).read_bytes()
    assert hashlib.sha256(rounded).hexdigest() == entry["int8"]["rounded"]["sha256"]
    assert set(int8.load_rounded(rounded, synthesis, net.g_s)) == set(synthesis)
    assert main(["int8", "--data", str(data), "--images", "1", "--synthesis-levels", "0,2", "--upsamplings", "2",
                 "--rounding", "nearest", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"][manifest["default"]]
    synthesis = int8.load_ranges((tmp_path / entry["int8"]["file"]).read_bytes(), model.model_id.hex(), net.g_a, net.g_s)[1]
    assert sorted(map(int, synthesis)) == sorted(levels[0] + levels[2] + inner[1:]) and "rounded" not in entry["int8"]
    assert not (tmp_path / Path(entry["int8"]["file"]).name.replace(".json", ".npz")).exists()  # no stale file ships
    assert [k for k, r in synthesis.items() if "passes" in r] == [str(inner[1])]
    assert main(["int8", "--data", str(data), "--images", "1", "--synthesis-levels", "", "--upsamplings", "",
                 "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"][manifest["default"]]
    assert int8.load_ranges((tmp_path / entry["int8"]["file"]).read_bytes(), model.model_id.hex(), net.g_a, net.g_s)[1] == {}


def test_int8_command_refuses_two_pass_levels_that_do_not_run_int8(weights_copy):
    from training.__main__ import main

    before = (weights_copy / "manifest.json").read_bytes()
    with pytest.raises(SystemExit, match="not all among --synthesis-levels"):
        main(["int8", "--data", str(weights_copy / "none"), "--images", "1", "--synthesis-levels", "0,2",
              "--two-pass-levels", "1", "--out", str(weights_copy)])
    assert (weights_copy / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(("option", "value", "message"), [("--upsamplings", "3", "takes 0 to 2"),
                                                         ("--upsamplings", "a", "takes 0 to 2")])
def test_int8_command_refuses_upsamplings_the_synthesis_does_not_have(weights_copy, option, value, message):
    from training.__main__ import main

    before = (weights_copy / "manifest.json").read_bytes()
    with pytest.raises(SystemExit, match=message):  # before any image is read: the folder is not there
        main(["int8", "--data", str(weights_copy / "none"), "--images", "1", option, value, "--out", str(weights_copy)])
    assert (weights_copy / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("levels", ["3", "x", "-1"])
def test_int8_command_refuses_levels_the_synthesis_does_not_have(weights_copy, levels):
    from training.__main__ import main

    before = (weights_copy / "manifest.json").read_bytes()
    with pytest.raises(SystemExit, match="levels 0 to 2"):  # before any image is read: the folder is not there
        main(["int8", "--data", str(weights_copy / "none"), "--images", "1", "--synthesis-levels", levels,
              "--out", str(weights_copy)])
    assert (weights_copy / "manifest.json").read_bytes() == before


@needs_int8
def test_the_speed_benchmark_times_an_int8_convolution():
    from benchmarks import speed

    conv = torch.nn.Conv2d(16, 16, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.randn(1, 16, 24, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        rate = speed._int8_conv_rate(conv, x, 16 * 16 * 9 * 24 * 32, 1)
    assert rate is None or rate > 0  # None: no VNNI, where int8 does not pay


@needs_int8
def test_int8_synthesis_tiles_give_one_window_s_pixels_even_beyond_the_block_ranges(monkeypatch):
    from pillow_cnnz import container

    model = weights.load()
    net = model.net("cpu")
    _, ranges = model.int8_ranges(net)
    tight = {k: {**r, "input": [v / 16 for v in r["input"]]} for k, r in ranges.items()}  # every tile exceeds them
    img = photo(200, 264, seed=5)
    header, payloads = container.parse(codec.encode(img, "RGB", 6.0))
    y = latents.y_hat_of((header, payloads))[None]

    def decode(tile: int, saturate: bool) -> np.ndarray:
        monkeypatch.setattr(tiling, "TILE", tile)
        run = synthesis.torch_synthesis(net, "cpu", "int8", int8.Int8Layers(net.g_s[:-1], tight, saturate=saturate))
        with torch.inference_mode():
            return tiling.synthesize_tiles(run, y, header.height, header.width)[0].astype(int)

    clipped = np.abs(decode(6, True) - decode(1000, True)).max()
    widened = np.abs(decode(6, False) - decode(1000, False)).max()  # each tile's scale follows its own extremes
    assert clipped <= 1 and widened >= 4  # measured 0 and 6
    assert all(block.saturate for block in model.int8_synthesis().blocks.values())
    assert not any(block.saturate for block in model.int8_analysis().blocks.values())


def test_hessian_sums_each_position_s_neighbourhood_in_the_weights_order():
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    cols = torch.nn.functional.unfold(x, 3, padding=1)[0]  # (C·3·3, positions): channel-major, as weight.reshape(O, -1)
    assert torch.allclose(int8_calibration.hessian(x), cols @ cols.T)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    w = conv.weight.detach().reshape(4, -1)  # the order the hessian's rows follow: a convolution is w @ cols
    assert torch.allclose((w @ cols).reshape(1, 4, 5, 7), conv(x).detach())


def test_gptq_rounding_leaves_less_output_error_than_rounding_to_nearest():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(16, 2000, generator=generator, dtype=torch.float64)
    inputs = torch.randn(144, 16, generator=generator, dtype=torch.float64) @ base  # correlated, as activations are
    weight = torch.randn(32, 16, 3, 3, generator=generator) * torch.rand(32, 1, 1, 1, generator=generator)
    levels, scales = int8_calibration.gptq(weight, inputs @ inputs.T)
    nearest = torch.round(weight / scales[:, None, None, None]).clamp(-127, 127)
    assert levels.dtype == torch.int8 and levels.abs().max() <= 127
    assert torch.allclose(scales, weight.abs().amax((1, 2, 3)) / 127)  # the scales rounding to nearest takes

    def output_error(q: torch.Tensor) -> float:
        w = (q.double() * scales[:, None, None, None].double()).reshape(32, -1)
        return float(((w - weight.double().reshape(32, -1)) @ inputs).norm())

    assert output_error(levels) < 0.7 * output_error(nearest)  # measured 0.33x


def _shipped_upsample(i: int = 1):
    model = weights.load()
    net = model.net("cpu")
    return model, net, net.g_s[int8.upsamplings(net.g_s)[i]], int8.upsamplings(net.g_s)[i]


@needs_int8
def test_int8_sub_pixel_convolution_is_close_to_float32_and_exact_band_by_band(monkeypatch):
    model, net, layer, index = _shipped_upsample()
    img = photo(128, 160, seed=8)
    y = torch.from_numpy(latents.y_hat_of(pillow_cnnz_parse(codec.encode(img, "RGB", 6.0)))[None])
    with torch.inference_mode():
        x = net.g_s[:index](y.contiguous(memory_format=torch.channels_last))
        ref = layer(x)
        ranges = int8_calibration.measure_ranges(net.g_s, [y.contiguous(memory_format=torch.channels_last)], [index])[str(index)]
        one, two = (int8._Upsample(layer, ranges["input"], passes, saturate=True) for passes in (1, 2))
        err_one, err_two = ((f(x) - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt() for f in (one, two))
        whole = two(x)
        monkeypatch.setattr(int8._Quantized, "BAND", x.shape[1] * x.shape[3] * 3)  # bands of 3 rows
        assert torch.equal(two(x), whole)  # integer sums: bands change nothing
    # measured: 1.3 % rms of the output in two passes, 5.4 % in one (weights rounded to nearest, the
    # range UPSAMPLING_HEADROOM times the measured one); what two passes leave is the weights' rounding
    assert err_two < 0.5 * err_one and err_two < 0.03


def pillow_cnnz_parse(data: bytes):
    from pillow_cnnz import container

    return container.parse(data)


@needs_int8
def test_shipped_int8_synthesis_runs_the_rounded_weights():
    model, net, layer, index = _shipped_upsample()
    _, synthesis = model.int8_ranges(net)
    rounded = model.int8_rounded(net, synthesis)
    layers = model.int8_synthesis()
    assert isinstance(layers.blocks[index], int8._Upsample) and layers.blocks[index].passes == 2
    levels, scales = rounded[str(index)]["conv"]
    assert torch.equal(layers.blocks[index].conv[1], scales)
    nearest = int8.Int8Layers(net.g_s[:-1], {str(index): synthesis[str(index)]}, saturate=True).blocks[index]
    assert not torch.equal(nearest.conv[1], scales) or not torch.equal(
        torch.round(nearest.scaled_weights()["conv"] / scales[:, None, None, None]).to(torch.int8), levels)


def _rounded_file(arrays: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update({"synthesis/1/conv/levels": a["synthesis/4/conv/levels"]}), "no convolution of a synthesis"),
    (lambda a: a.update({"analysis/2/conv1/levels": a["synthesis/4/conv/levels"]}), "no convolution of a synthesis"),
    (lambda a: a.update({"synthesis/4/conv1/levels": a["synthesis/4/conv/levels"]}), "no convolution of a synthesis"),
    (lambda a: a.pop("synthesis/4/conv/scales"), "are not int8 levels"),
    (lambda a: a.update({"synthesis/4/conv/levels": a["synthesis/4/conv/levels"][:-1]}), "are not int8 levels"),
    (lambda a: a.update({"synthesis/4/conv/levels": a["synthesis/4/conv/levels"].astype(np.int16)}), "are not int8 levels"),
    (lambda a: a["synthesis/4/conv/levels"].__setitem__((0, 0, 0, 0), -128), "are not int8 levels"),
    (lambda a: a["synthesis/4/conv/scales"].__setitem__(0, np.nan), "are not int8 levels"),
])
def test_rounded_weights_file_that_does_not_fit_is_refused(change, message):
    model = weights.load()
    net = model.net("cpu")
    _, synthesis = model.int8_ranges(net)
    spec = model.entry["int8"]["rounded"]
    with np.load(weights.weights_dir() / spec["file"]) as npz:
        arrays = {name: npz[name].copy() for name in npz.files}
    assert set(int8.load_rounded(_rounded_file(arrays), synthesis, net.g_s)) == set(synthesis)
    change(arrays)
    with pytest.raises(ValueError, match=message):
        int8.load_rounded(_rounded_file(arrays), synthesis, net.g_s)
    with pytest.raises(ValueError, match="not an .npz"):
        int8.load_rounded(b"PK\x03\x04 no zip", synthesis, net.g_s)
