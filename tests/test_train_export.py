"""Exporting a training checkpoint gives weights the codec loads and codes with."""
from __future__ import annotations

import pytest

from pillow_cnnz import codec, weights

from .conftest import _photo as photo


def test_exported_checkpoint_loads_and_round_trips_an_image(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from pillow_cnnz.train import export

    torch.manual_seed(0)
    net = CnnzNet(Config())
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 3, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu"}}, ckpt)
    info = export.export(ckpt, tmp_path / "w", "test", "test hardware")
    again = export.export(ckpt, tmp_path / "w2", "test", "test hardware")
    assert again["sha256"] == info["sha256"]  # same checkpoint, same bytes, same model id

    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path / "w")
    monkeypatch.setattr(weights, "_cache", {})
    model = weights.load()
    assert model.model_id.hex() == info["model_id"]
    assert model.meta["training"]["step"] == 3 and model.meta["training"]["hardware"] == "test hardware"
    data = codec.encode(photo(64, 80), "RGB", 4.0)
    assert codec.decode(data).shape == (64, 80, 3)
