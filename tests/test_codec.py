"""The codec's exactness guarantees: integer entropy path, tiles, weights integrity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from pillow_cnnz import batching, blas, codec, container, context, entropy, hyper, latents, precision, synthesis, tiling, weights

from .conftest import _photo as photo

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_decoded_latents_identical_across_processes_threads_and_precision(tmp_path):
    # Encoder: one thread. Decoders: two threads, float32 and float64 synthesis.
    np.save(tmp_path / "img.npy", photo(96, 160))
    run_py(f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        from pillow_cnnz import codec
        img = np.load({str(tmp_path / 'img.npy')!r})
        _, z, sym, _, data = codec.encode_latents(img, 3.3)
        np.save({str(tmp_path / 'enc_z.npy')!r}, z); np.save({str(tmp_path / 'enc_y.npy')!r}, sym)
        open({str(tmp_path / 'f.cnnz')!r}, 'wb').write(data)
    """)
    decode = f"""
        import numpy as np
        from pillow_cnnz import codec, container, latents, precision
        h, p = container.parse(open({str(tmp_path / 'f.cnnz')!r}, 'rb').read())
        z, sym, _ = latents.decode_latents(h, p['LATZ'], p['LATY'])
        tag = precision.resolve_precision()
        np.save({str(tmp_path)!r} + '/z_%s.npy' % tag, z)
        np.save({str(tmp_path)!r} + '/y_%s.npy' % tag, sym)
        np.save({str(tmp_path)!r} + '/px_%s.npy' % tag, codec.decode_payloads(h, p))
    """
    cpu = {"CNNZ_DEVICE": "cpu", "CNNZ_THREADS": "2"}  # the thread count and precisions of the CPU path
    run_py(decode, cpu | {"CNNZ_PRECISION": "float64"})
    run_py(decode, cpu | {"CNNZ_PRECISION": "float32"})
    enc_y = np.load(tmp_path / "enc_y.npy")
    for tag in ("float64", "float32"):
        assert np.array_equal(np.load(tmp_path / "enc_z.npy"), np.load(tmp_path / f"z_{tag}.npy"))
        assert np.array_equal(enc_y, np.load(tmp_path / f"y_{tag}.npy"))
    # Pixels differ by float rounding of the synthesis only.
    diff = np.abs(np.load(tmp_path / "px_float64.npy").astype(int) - np.load(tmp_path / "px_float32.npy"))
    assert diff.max() <= 1


def test_hyper_network_in_strips_equals_one_pass():
    model = weights.load()
    rng = np.random.default_rng(1)
    z = rng.integers(-6, 7, size=(model.meta["config"]["Nz"], 13, 7))
    whole = hyper.run_layers(model.hyper_layers, z)
    assert np.array_equal(hyper.hyper_synthesis(model.hyper_layers, z, strip_rows=3), whole)
    for cols in (1, 2, 5):
        for workers in (1, 2, 3):
            band = hyper.hyper_band(model.hyper_layers, z, 3, 9, cols=cols, workers=workers)
            assert np.array_equal(band, whole[:, 3 * 4 : 9 * 4])
    assert np.array_equal(whole, np.round(whole))  # integer-valued: exact in float64


@pytest.mark.parametrize("workers", [2, 3])
def test_the_exact_decode_stage_gives_the_same_latents_on_any_number_of_threads(workers):
    data = codec.encode(photo(1100, 1100), "RGB", 5.0)  # two bands of latent rows, two column chunks each
    header, payloads = container.parse(data)
    one = latents.decode_y_hat(header, payloads["LATZ"], payloads["LATY"], 1)
    assert np.array_equal(latents.decode_y_hat(header, payloads["LATZ"], payloads["LATY"], workers), one)
    model = weights.load()
    z, symbols, _ = latents.decode_latents(header, payloads["LATZ"], payloads["LATY"])
    out = hyper.hyper_band(model.hyper_layers, z, 0, 16)
    refined = context.refine(model.context_layers, out, symbols[:, :64], chunk=64)
    assert np.array_equal(context.refine(model.context_layers, out, symbols[:, :64], chunk=64, workers=workers), refined)


@pytest.mark.parametrize("workers", [2, 3])
def test_the_encoders_exact_stage_writes_the_same_bytes_on_any_number_of_threads(workers):
    model = weights.load()
    ((z, y),) = codec.analyse_batch([photo(2 * 64 * hyper.BAND_ROWS + 70, 96)], [5.0], "cpu")  # three bands
    assert latents.code_latents(model, z, y, workers) == latents.code_latents(model, z, y, 1)


def test_hyper_network_is_exact_for_any_summation_order():
    model = weights.load()
    z = np.random.default_rng(2).integers(-4, 5, size=(model.meta["config"]["Nz"], 5, 6))
    layer = next(l for l in model.hyper_layers if l["kind"] == "conv")
    x = z.astype(np.float64) * 2.0**hyper.FRAC_BITS
    ref = hyper.conv(x, layer["weight"], layer["bias"], layer["shift"])
    # Reverse the input-channel order: a different summation order, same integers.
    rev = hyper.conv(x[::-1].copy(), layer["weight"][:, ::-1].copy(), layer["bias"], layer["shift"])
    assert np.array_equal(ref, rev)


def test_entropy_roundtrip_with_escapes_is_exact():
    tables = weights.load().y_tables
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(tables.lo), size=(8, 9, 10)).astype(np.int32)
    values = np.round(rng.normal(0, 2, idx.shape)).astype(np.int64)
    values[0, 0, :4] = [10_000, -10_000, int(tables.lo[idx[0, 0, 2]]), 2**21]
    decoded = entropy.decode(entropy.encode(values, idx, tables), idx, tables)
    values[0, 0, 3] = entropy.ESCAPE_LIMIT  # clipped on encode
    assert np.array_equal(decoded, values)


@pytest.mark.parametrize("where", ["low", "high"])
def test_an_escape_value_inside_its_tables_span_is_damage(where):
    tables = weights.load().y_tables
    k = int(np.argmax(tables.length))
    idx = np.full((2, 3, 3), k, np.int32)
    values = np.zeros(idx.shape, np.int64)
    lo, hi = int(tables.lo[k]), int(tables.lo[k] + tables.length[k] - 1)
    values[1, 2, 0] = lo - 50 if where == "low" else hi + 50
    payload = bytearray(entropy.encode(values, idx, tables))
    assert np.array_equal(entropy.decode(bytes(payload), idx, tables), values)
    payload[4:8] = np.array([lo + 1 if where == "low" else hi - 1], "<i4").tobytes()  # the one escape
    with pytest.raises(entropy.EntropyError, match="outside its table's tail"):
        entropy.decode(bytes(payload), idx, tables)


@pytest.mark.parametrize("cut", [0, 3, 7, 50])
def test_entropy_payload_damage_is_a_clear_error(cut):
    tables = weights.load().y_tables
    idx = np.zeros((4, 5, 5), np.int32) + 20
    values = np.arange(100).reshape(4, 5, 5) % 7 - 3
    payload = entropy.encode(values, idx, tables)
    damaged = payload[:cut] + payload[cut + 1 :] if cut < len(payload) else payload[:-1]
    try:
        out = entropy.decode(damaged, idx, tables)
    except entropy.EntropyError:
        return
    assert not np.array_equal(out, values)  # ANS may decode other symbols, never crash


def test_entropy_bands_share_one_stream_and_come_back_in_order():
    tables = weights.load().y_tables
    rng = np.random.default_rng(4)
    bands = [(rng.integers(0, len(tables.lo), size=(6, 3, 5)).astype(np.uint8), None) for _ in range(3)]
    bands = [(idx, np.round(rng.normal(0, 3, idx.shape)).astype(np.int32)) for idx, _ in bands]
    bands[0][1][0, 0, 0] = 5000  # an escape in the first and in the last band
    bands[2][1][1, 1, 1] = -7000
    enc = entropy.Encoder(tables)
    for idx, values in reversed(bands):
        enc.push(values, idx)
    dec = entropy.Decoder(enc.finish(), tables, 10**6)
    for idx, values in bands:
        assert np.array_equal(dec.pull(idx), values)
    dec.finish()


def test_entropy_decoder_reports_unused_symbols_as_damage():
    tables = weights.load().y_tables
    idx = np.full((2, 4, 4), 30, np.uint8)
    values = np.arange(32).reshape(idx.shape) % 5 - 2
    enc = entropy.Encoder(tables)
    enc.push(values, idx)
    enc.push(values, idx)
    dec = entropy.Decoder(enc.finish(), tables, 10**6)
    dec.pull(idx)
    with pytest.raises(entropy.EntropyError, match="left over"):
        dec.finish()


def test_image_of_several_bands_decodes_to_the_encoded_latents():
    img = photo(2 * 64 * hyper.BAND_ROWS + 70, 48)  # three bands of ẑ rows
    _, z, sym, _, data = codec.encode_latents(img, 4.0)
    h, p = container.parse(data)
    z_dec, sym_dec, _ = latents.decode_latents(h, p["LATZ"], p["LATY"])
    assert len(hyper.bands(z.shape[1])) == 3
    assert np.array_equal(z, z_dec) and np.array_equal(sym, sym_dec)


def test_damage_in_the_first_band_is_reported_while_the_next_bands_network_runs_ahead():
    img = photo(2 * 64 * hyper.BAND_ROWS + 70, 48)  # three bands: the second's network runs beside the first
    h, p = container.parse(codec.encode(img, "RGB", 4.0))
    laty = bytearray(p["LATY"])
    laty[-40:] = bytes(40)  # the words the first band's symbols are pulled from first
    before = threading.active_count()
    with pytest.raises(container.CorruptFileError):
        latents.decode_y_hat(h, p["LATZ"], bytes(laty), workers=2)
    assert threading.active_count() == before  # the helper thread ended with the decode


def test_bfloat16_transforms_change_pixels_by_at_most_a_few_levels():
    img = photo(128, 192)
    h, p = container.parse(codec.encode(img, "RGB", 6.0))
    ref = synthesis.decode_rgb(h, p["LATZ"], p["LATY"], precision="float64").astype(int)
    bf16 = synthesis.decode_rgb(h, p["LATZ"], p["LATY"], precision="bfloat16")
    diff = np.abs(bf16 - ref)
    assert diff.max() <= 3 and diff.mean() < 0.3  # measured on Kodak: max 2, mean 0.11


def test_auto_precision_is_a_real_float_type():
    assert precision.resolve_precision("auto", "cpu") in ("float32", "bfloat16")
    assert precision.resolve_precision("auto", "cpu", analysis=True) in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve_precision("float16")


def test_cpu_analysis_takes_bfloat16_only_with_amx(monkeypatch):
    monkeypatch.setattr(precision, "torch_installed", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_precision("auto", "cpu") == "bfloat16"
    assert precision.resolve_precision("auto", "cpu", analysis=True) == "float32"  # seen to round differently per call
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_tile", "amx_bf16"}))
    assert precision.resolve_precision("auto", "cpu", analysis=True) == "bfloat16"
    monkeypatch.setenv("CNNZ_PRECISION", "float32")  # asked for: always
    assert precision.resolve_precision(None, "cpu", analysis=True) == "float32"


@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_image_gives_the_same_bytes_from_call_to_call(threads):
    # under the default precision, whatever this CPU makes of it (bfloat16 analysis on AMX)
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)  # the conftest fixture puts the count back
    img = photo(256, 384, seed=4)
    first = codec.encode(img, "RGB", 5.0)
    assert all(codec.encode(img, "RGB", 5.0) == first for _ in range(3))


@pytest.mark.parametrize("height, width", [(2 * 64 * hyper.BAND_ROWS + 70, 48), (300, 17)])
def test_narrow_image_gets_the_float32_hyper_latents_under_the_default_precision(height, width):
    # a one-column ẑ (width <= 64) once came out of bfloat16 oneDNN as garbage (3e12) and
    # differed call to call; only the analysis' own rounding may move a ẑ, by one (an int8
    # analysis moved 4 of the 320 of a 300x17 image)
    img = photo(height, width)
    ref = codec.analyse_batch([img], [4.0], precision="float32")[0][0]
    for _ in range(2):
        z = codec.analyse_batch([img], [4.0])[0][0]
        assert np.abs(z - ref).max() <= 1 and np.count_nonzero(z != ref) <= 0.02 * z.size


def test_tile_halo_covers_the_shipped_synthesis_receptive_field():
    pytest.importorskip("torch")
    from pillow_cnnz.model import Config

    config = Config.from_dict(weights.load().meta["config"])
    assert tiling.HALO >= config.synthesis_radius()
    assert tiling.HALO >= config.analysis_radius()
    assert Config().synthesis_radius() == 1 + 1 / 2 + 1 / 4 + 1 / 8
    assert Config(res=(0, 1, 0)).synthesis_radius() == Config().synthesis_radius() + 2 / 4


def test_tiled_synthesis_matches_one_tile_within_one_level(monkeypatch):
    img = photo(200, 264)
    data = codec.encode(img, "RGB", 5.0)
    monkeypatch.setattr(tiling, "TILE", 5)  # many tiles with halos
    tiled = codec.decode(data)
    monkeypatch.setattr(tiling, "TILE", 1000)
    whole = codec.decode(data)
    assert np.abs(tiled.astype(int) - whole).max() <= 1


def test_tiled_analysis_gives_nearly_the_same_file(monkeypatch):
    img = photo(200, 264)
    monkeypatch.setattr(tiling, "TILE", 5)
    _, _, tiled, _, _ = codec.encode_latents(img, 5.0)
    monkeypatch.setattr(tiling, "TILE", 1000)
    _, _, whole, _, _ = codec.encode_latents(img, 5.0)
    assert np.mean(tiled != whole) < 0.01  # float rounding can flip a few roundings


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    src = weights.weights_dir()
    dst = tmp_path / "weights"
    shutil.copytree(src, dst)
    monkeypatch.setattr(weights, "weights_dir", lambda: dst)
    monkeypatch.setattr(weights, "_cache", {})
    return dst


def test_corrupted_weights_file_is_detected(weights_copy):
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    path = weights_copy / manifest["models"][manifest["default"]]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="corrupted or was replaced"):
        weights.load()


def test_every_model_the_manifest_names_loads_so_its_files_keep_decoding():
    models = weights.manifest()["models"]
    assert weights.manifest()["default"] in models and len(models) >= 2  # the default and the one it replaced
    for model_id, entry in models.items():
        model = weights.load(bytes.fromhex(model_id))
        assert model.y_tables is not None
        if "decoded_by" in entry:
            assert model is weights.load(bytes.fromhex(entry["decoded_by"]))


def test_unknown_model_id_names_it(weights_copy):
    with pytest.raises(weights.WeightsError, match="0123456789abcdef"):
        weights.load(bytes.fromhex("0123456789abcdef"))


def test_weights_load_without_pickle():
    path = weights.weights_dir() / weights.manifest()["models"][weights.manifest()["default"]]["file"]
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_quality_is_stored_and_drives_rate():
    img = photo(64, 96)
    sizes = [len(codec.encode(img, "RGB", q)) for q in (1.0, 4.0, 8.0)]
    assert sizes[0] < sizes[1] < sizes[2]
    header, _ = container.parse(codec.encode(img, "RGB", 2.5))
    assert header.quality == 2.5


def test_device_override_is_validated(monkeypatch):
    monkeypatch.setenv("CNNZ_DEVICE", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        precision.resolve_device()
    monkeypatch.setenv("CNNZ_DEVICE", "cpu")
    assert precision.resolve_device() == "cpu"


def test_batch_api_matches_one_at_a_time():
    import pillow_cnnz

    images = [photo(64, 96, seed=s) for s in range(3)] + [photo(80, 48, seed=9)]
    batch = pillow_cnnz.encode_batch(images, 3.0)
    single = [pillow_cnnz.encode(im, 3.0) for im in images]
    assert [container.parse(b)[1]["LATZ"] for b in batch] == [container.parse(s)[1]["LATZ"] for s in single]
    decoded = pillow_cnnz.decode_batch(batch)
    for one, many in zip((pillow_cnnz.decode(b) for b in batch), decoded):
        assert np.abs(one.astype(int) - many).max() <= 1


def test_numpy_api_infers_mode_from_channels():
    import pillow_cnnz

    gray = photo(40, 56)[..., 0]
    assert pillow_cnnz.decode(pillow_cnnz.encode(gray)).shape == gray.shape
    rgba = np.dstack([photo(40, 56), np.full((40, 56), 7, np.uint8)])
    out = pillow_cnnz.decode(pillow_cnnz.encode(rgba))
    assert out.shape == rgba.shape and np.array_equal(out[..., 3], rgba[..., 3])
    with pytest.raises(ValueError, match="shaped"):
        pillow_cnnz.encode(np.zeros((4, 4, 5), np.uint8))


def test_weights_arrays_inflate_on_first_use_and_equal_the_file():
    import io

    stored = {"a": np.arange(6.0).reshape(2, 3), "b": np.ones(4, np.float16), "c": np.array("text")}
    buf = io.BytesIO()
    np.savez_compressed(buf, **stored)
    arrays = weights.LazyArrays(buf.getvalue())
    assert sorted(arrays) == ["a", "b", "c"] and len(arrays) == 3 and "b" in arrays and "d" not in arrays
    assert arrays.inflated() == frozenset()
    np.testing.assert_array_equal(arrays["b"], stored["b"])
    assert arrays["b"] is arrays["b"] and arrays.inflated() == {"b"}  # kept, not inflated again
    with pytest.raises(KeyError):
        arrays["d"]
    for k, v in stored.items():
        np.testing.assert_array_equal(arrays[k], v)
        assert arrays[k].dtype == v.dtype
    assert arrays.inflated() == {"a", "b", "c"}


def test_batch_exact_stage_runs_on_a_thread_per_core_with_the_same_results(monkeypatch):
    """A batch's exact stage (entropy coding, the integer networks) goes to a pool of a thread per
    core, at most one per file, every file's on a pool thread, and gives the bytes and pixels of one
    file at a time. Pinned by what is handed to the pool, not by timing: which of the pool's threads
    takes which file is the scheduler's business (a barrier that waited for two files decoding at
    once timed out on a loaded machine)."""
    import concurrent.futures

    images = [photo(64, 96, seed=s) for s in range(4)]
    files = [codec.encode(im, "RGB", 3.0) for im in images]
    alone = [codec.decode(f, device="cpu") for f in files]
    pools = []  # (max_workers, thread_name_prefix, tasks submitted) of each pool _per_file made

    class RecordingPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers=None, thread_name_prefix="", *args, **kwargs):
            super().__init__(max_workers, thread_name_prefix, *args, **kwargs)
            self.record = [max_workers, thread_name_prefix, 0]
            pools.append(self.record)

        def submit(self, fn, /, *args, **kwargs):
            self.record[2] += 1
            return super().submit(fn, *args, **kwargs)

    ran_on = []
    real = latents.decode_y_hat

    def recording(*args):
        ran_on.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", RecordingPool)
    monkeypatch.setattr(latents, "decode_y_hat", recording)
    monkeypatch.setattr(batching, "cores", lambda: 4)
    batch = codec.decode_batch(files, device="cpu")
    assert pools == [[4, "cnnz-batch", 4]]  # four files, four cores: a thread each
    assert len(ran_on) == 4 and all(name.startswith("cnnz-batch") for name in ran_on)
    for one, many in zip(alone, batch):
        np.testing.assert_array_equal(one, many)  # the same latents; on a CPU the same synthesis, file by file
    pools.clear()
    again = codec.encode_batch(images, ["RGB"] * 4, 3.0)
    assert [p for p in pools if p[1] == "cnnz-batch"] == [[4, "cnnz-batch", 4]]
    assert again == files  # encoder's exact stage on threads: the same bytes
    monkeypatch.setattr(batching, "cores", lambda: 2)
    pools.clear()
    for one, many in zip(alone, codec.decode_batch(files, device="cpu")):
        np.testing.assert_array_equal(one, many)
    assert pools == [[2, "cnnz-batch", 4]]  # two cores: two threads share the four files


@pytest.mark.parametrize("shape", [(70, 130, 3), (1030, 90, 3), (17, 300, 3)])
def test_encode_window_repeats_the_edge_pixels_past_the_image(shape):
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    for top, bottom, left, right in [(0, h, 0, w), (0, h + 50, 0, w + 13), (h // 2, h + 24, w // 3, w + 1)]:
        clamped = im[np.ix_(np.minimum(np.arange(top, bottom), h - 1), np.minimum(np.arange(left, right), w - 1))]
        assert np.array_equal(tiling.edge_padded(im, top, bottom, left, right), clamped)


def test_files_of_a_model_the_shipped_one_replaced_decode_with_it():
    from pillow_cnnz import container

    models = weights.manifest()["models"]
    replaced = [bytes.fromhex(k) for k, v in models.items() if "decoded_by" in v]
    img = photo(48, 64, seed=4)
    header, sections = container.parse(codec.encode(img, "RGB", 4.0))
    ours = codec.decode(container.serialize(header.width, header.height, header.mode, header.quality,
                                            header.model_id, sections))
    for old in replaced:  # the 352k model's files, for the synthesis-only release
        data = container.serialize(header.width, header.height, header.mode, header.quality, old, sections)
        assert np.array_equal(codec.decode(data), ours)
        assert weights.load(old) is weights.load()
    assert bytes.fromhex("1be8391618fb0328") in replaced  # the 352k release's files keep decoding


def test_the_manifest_is_read_again_when_it_changes(weights_copy):
    first = weights.manifest()
    assert weights.manifest() is first  # unchanged file: no new read
    path = weights_copy / "manifest.json"
    changed = dict(first, default=first["default"])
    changed["models"] = dict(first["models"], **{"00" * 8: {"decoded_by": first["default"]}})
    path.write_text(json.dumps(changed, indent=4))  # another size
    assert "00" * 8 in weights.manifest()["models"]
    path.write_text("{not json")
    with pytest.raises(weights.WeightsError, match="cannot read the weights manifest"):
        weights.manifest()


def test_ahead_runs_the_next_item_beside_the_current_one_and_keeps_order_and_errors():
    seen: list[str] = []

    def square(x: int) -> int:
        if x == 3:
            raise ValueError("item 3")
        seen.append(threading.current_thread().name)
        return x * x

    with blas.threads(1):
        assert list(batching.ahead(square, [0, 1, 2])) == [0, 1, 4]
        assert all(name.startswith("cnnz-ahead") for name in seen)
        with pytest.raises(ValueError, match="item 3"):
            list(batching.ahead(square, [1, 2, 3, 4]))
        seen.clear()
        assert list(batching.ahead(square, [5, 6], enabled=False)) == [25, 36]
        assert seen == [threading.current_thread().name] * 2
