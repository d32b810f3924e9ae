"""Latent tables measured on images code real latents in fewer bits than assumed Gaussians."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pillow_cnnz import entropy

from .conftest import _photo as photo

pytest.importorskip("torch")
from training import calibrate  # noqa: E402


def _bits(tables: entropy.Tables, k: int, values: np.ndarray) -> float:
    lo, n = tables.lo[k], tables.length[k]
    pmf = tables.pmf[k, :n] / tables.pmf[k, :n].sum()
    return float(-np.log2(pmf[np.clip(values - lo, 0, n - 1)]).sum())


def _counts(samples: dict[int, np.ndarray], bins: int) -> np.ndarray:
    counts = np.zeros((bins, 2 * calibrate.HIST_HALF + 1), np.int64)
    for k, v in samples.items():
        counts[k] = np.bincount(v + calibrate.HIST_HALF, minlength=counts.shape[1])
    return counts


def test_measured_table_fits_a_narrower_heavier_tailed_bin_better_than_its_nominal_gaussian():
    rng = np.random.default_rng(0)
    laplace = lambda n: np.round(rng.laplace(0, 1.5, n)).astype(np.int64)  # noqa: E731
    nominal = [0.5, 6.0, 20.0]
    tables = entropy.Tables(*calibrate.tables_from_histograms(_counts({1: laplace(50_000)}, 3), nominal, 200))
    held_out = laplace(20_000)
    gaussian = calibrate.discretized_gaussian(nominal[1], 48)
    nominal_bits = float(-np.log2(gaussian[np.clip(held_out + 48, 0, 96)]).sum())
    assert _bits(tables, 1, held_out) < 0.8 * nominal_bits
    # a bin with no samples keeps its nominal spread: 8 sigma each side
    assert tables.length[2] == 2 * math.ceil(8 * 20.0) + 1 and tables.lo[0] == -max(2, math.ceil(8 * 0.5))


def test_measured_tables_code_every_symbol_of_their_span_and_escapes_beyond():
    rng = np.random.default_rng(1)
    tables = entropy.Tables(*calibrate.tables_from_histograms(
        _counts({0: np.round(rng.normal(0, 2, 10_000)).astype(np.int64)}, 1), [2.0], 200))
    values = np.arange(tables.lo[0] - 3, tables.lo[0] + tables.length[0] + 3).reshape(1, 1, -1)
    index = np.zeros(values.shape, np.uint8)
    enc = entropy.Encoder(tables)
    enc.push(values, index)
    dec = entropy.Decoder(enc.finish(), tables, values.size)
    assert np.array_equal(dec.pull(index), values)


def test_calibrated_export_records_its_images_and_round_trips(tmp_path, monkeypatch):
    import torch
    from PIL import Image

    from pillow_cnnz import codec, weights
    from pillow_cnnz.model import CnnzNet, Config
    from training import export

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(photo(70, 90, seed=i)).save(data / f"{i}.png")
    torch.manual_seed(0)
    net = CnnzNet(Config())
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 1, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu"}}, ckpt)
    info = export.export(ckpt, tmp_path / "w", "t", "test", {"data": str(data), "images": 2, "crop": 64})
    assert info["meta"]["y_tables"]["images"] == 2 and info["meta"]["y_tables"]["symbols"] == 2 * 8 * 160 * 16

    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path / "w")
    monkeypatch.setattr(weights, "_cache", {})
    data_bytes = codec.encode(photo(64, 80), "RGB", 4.0)
    assert codec.decode(data_bytes).shape == (64, 80, 3)
