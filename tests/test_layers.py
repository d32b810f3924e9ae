"""The torch layers compute the same in the codec's memory-saving inference path as in training."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_in_inference_mode_matches_training_band_by_band_and_reuses_its_input(inverse, monkeypatch):
    torch = pytest.importorskip("torch")
    from pillow_cnnz.layers import GDN

    torch.manual_seed(0)
    gdn = GDN(8, inverse=inverse)
    with torch.no_grad():
        gdn.gamma_sqrt.add_(0.05 * torch.rand(8, 8))
    x = torch.randn(1, 8, 13, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = gdn(x)
    monkeypatch.setattr(GDN, "INFERENCE_CHUNK", 8 * 11 * 3)  # bands of 3 rows, the last one short
    with torch.inference_mode():
        x_inf = x.clone()
        got = gdn(x_inf)
    assert got.data_ptr() == x_inf.data_ptr()  # overwritten in place: no copy of a tile-sized tensor
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
