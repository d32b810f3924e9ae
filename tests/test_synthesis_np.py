"""The numpy synthesis transform: same pixels as torch's ``g_s``, and no torch import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pillow_cnnz import synthesis_np, weights
from pillow_cnnz.synthesis_np import NumpySynthesis


@pytest.fixture(scope="module")
def synth() -> NumpySynthesis:
    return NumpySynthesis(weights.load())


@pytest.fixture(scope="module")
def torch_g_s():
    torch = pytest.importorskip("torch")
    net = weights.load().net("cpu", "float32")

    def run(y: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net.g_s(torch.from_numpy(y)).numpy()

    return run


def _latents(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random latents about as spread as real ones (std 2)."""
    m = weights.load().meta["config"]["M"]
    return 2 * np.random.default_rng(seed).standard_normal((n, m, h, w), dtype=np.float32)


@pytest.mark.parametrize("n, h, w", [(2, 3, 5), (1, 1, 1), (1, 4, 2)])
def test_matches_torch_synthesis_on_random_latents(synth, torch_g_s, n, h, w) -> None:
    y = _latents(n, h, w)
    out = synth(y)
    assert out.shape == (n, 3, 16 * h, 16 * w) and out.dtype == np.float32
    assert np.abs(out - torch_g_s(y)).max() < 1e-4  # float rounding only: 1/40 of an 8-bit level


# For 3x5 latents: 1 byte = one row a band everywhere; 60,000 = a short last band in the
# first layer; 100,000 = a short last band in the last layer.
@pytest.mark.parametrize("band_bytes", [1, 60_000, 100_000])
def test_band_edges_change_no_pixel(synth, torch_g_s, monkeypatch, band_bytes) -> None:
    y = _latents(1, 3, 5, seed=1)
    whole = synth(y)
    monkeypatch.setattr(synthesis_np, "BAND_BYTES", band_bytes)
    banded = synth(y)
    assert np.abs(banded - whole).max() < 1e-5
    assert np.abs(banded - torch_g_s(y)).max() < 1e-4


@pytest.mark.parametrize("workers", [2, 3])
def test_bands_on_several_threads_give_the_same_pixels(synth, monkeypatch, workers) -> None:
    from threadpoolctl import threadpool_limits

    y = _latents(2, 4, 6, seed=2)
    monkeypatch.setattr(synthesis_np, "BAND_BYTES", 60_000)  # several bands a layer, to share out
    with threadpool_limits(1, user_api="blas"):  # as the codec runs it: each sgemm on one thread
        assert np.array_equal(synth(y, workers), synth(y, 1))


def test_a_failing_band_raises_instead_of_leaving_rows_unwritten(synth, monkeypatch) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise MemoryError("band")

    monkeypatch.setattr(synthesis_np, "_im2col", broken)
    with pytest.raises(MemoryError, match="band"):
        synth(_latents(1, 2, 3), 2)


def test_float64_latents_are_accepted_and_give_float32(synth) -> None:
    y = _latents(1, 2, 3)
    out = synth(y.astype(np.float64))
    assert out.dtype == np.float32
    assert np.array_equal(out, synth(y))


def test_wrong_latent_channels_are_refused(synth) -> None:
    with pytest.raises(ValueError, match="latents shaped"):
        synth(np.zeros((1, 3, 2, 2), np.float32))


def test_synthesis_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from pillow_cnnz import weights\n"
        "from pillow_cnnz.synthesis_np import NumpySynthesis\n"
        "model = weights.load()\n"
        "y = np.ones((1, model.meta['config']['M'], 2, 3), np.float32)\n"
        "assert NumpySynthesis(model)(y).shape == (1, 3, 32, 48)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("band_bytes", [1, synthesis_np.BAND_BYTES])
def test_residual_blocks_match_torch(monkeypatch, band_bytes) -> None:
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from pillow_cnnz.model import CnnzNet, Config

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=12, Nz=4, Nh=8, dec=(16, 12, 8), res=(1, 2, 1))).eval()
    with torch.no_grad():
        for name, p in net.g_s.named_parameters():
            if "conv2" in name:  # zero at init; give the blocks something to compute
                p.normal_(0, 0.05)
    arrays = {f"net/{k}": v.numpy() for k, v in net.state_dict().items() if k.startswith("g_s.")}
    monkeypatch.setattr(synthesis_np, "BAND_BYTES", band_bytes)
    synth = NumpySynthesis(SimpleNamespace(arrays=arrays))
    y = 2 * np.random.default_rng(3).standard_normal((2, 12, 3, 5), dtype=np.float32)
    with torch.inference_mode():
        ref = net.g_s(torch.from_numpy(y)).numpy()
    assert synth(y).shape == ref.shape == (2, 3, 48, 80)
    assert np.abs(synth(y) - ref).max() < 1e-4


def test_gdn_weights_hold_no_subnormal_floats(synth) -> None:
    """Squared GDN roots below 1e-19 are float32 subnormals (the shipped weights had hundreds):
    OpenBLAS multiplies them ~50x slower, and they add nothing to a norm."""
    tiny = np.finfo(np.float32).tiny
    assert all(not np.any((layer.gamma_t > 0) & (layer.gamma_t < tiny)) for layer in synth.layers
               if hasattr(layer, "gamma_t"))
    roots = np.full((4, 4), 0.1, np.float32)
    roots[0, 1], roots[1, 0] = 1e-21, 2e-19  # squares: 1e-42 (subnormal), 4e-38 (normal)
    up = synthesis_np._Upsample(np.zeros((16, 4, 3, 3), np.float32), np.zeros(16, np.float32),
                                np.ones(4, np.float32), roots)
    assert up.gamma_t[1, 0] == 0 and up.gamma_t[0, 1] == pytest.approx(4e-38, rel=1e-3)  # transposed
