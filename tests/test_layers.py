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


def test_residual_block_fuses_relu_and_sum_on_cpu_inference_and_matches_training():
    torch = pytest.importorskip("torch")
    from pillow_cnnz import layers

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    assert layers._POINTWISE_CONV is not None  # the pinned torch has the fused op: the path below is taken
    torch.manual_seed(0)
    block = layers.ResBlock(16)
    with torch.no_grad():
        block.conv2.weight.normal_(0, 0.05)
        block.conv2.bias.normal_(0, 0.05)
    x = torch.randn(1, 16, 19, 23).contiguous(memory_format=torch.channels_last)
    x16 = x.to(torch.bfloat16)  # in the decoder the block's input is a bfloat16 conv's output
    with torch.no_grad():
        plain = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16 = block(x16)
            block(x)  # a float32 input under autocast keeps the plain path (its sum is float32)
    calls = []
    fused = block._fused
    block._fused = lambda t: calls.append(t.dtype) or fused(t)
    x_in, x_nchw = x.clone(), x.contiguous()
    with torch.inference_mode():
        exact = block(x_in)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = block(x16.clone())
            assert block(x).dtype == torch.float32
        other_layout = block(x_nchw)
    assert calls == [torch.float32, torch.bfloat16, torch.float32]  # inference calls in one type: the fused path
    assert exact.data_ptr() == x_in.data_ptr()  # the sum went into the input: one activation fewer at the peak
    assert torch.equal(exact, plain)  # float32: the same sums in the same order
    assert torch.equal(x_nchw, x) and torch.allclose(other_layout, plain, atol=1e-6)  # not channels-last: a new tensor
    assert rounded.dtype == plain_bf16.dtype == torch.bfloat16
    # bfloat16: the sum is rounded once instead of twice, so within one rounding of the output
    assert torch.allclose(rounded.float(), plain_bf16.float(), rtol=2**-7, atol=2**-7)
    assert not torch.equal(rounded, plain_bf16)


def test_the_fused_block_casts_its_weights_once_and_again_after_they_change():
    torch = pytest.importorskip("torch")
    from pillow_cnnz import layers

    block = layers.ResBlock(8)
    first = block._parameters_in(torch.bfloat16)
    assert block._parameters_in(torch.bfloat16)[0] is first[0]  # cast once, then reused
    assert block._parameters_in(torch.float32)[0] is block.conv1.weight  # no cast needed
    with torch.no_grad():
        block.conv1.weight.add_(1.0)  # in place, as an optimizer step or load_state_dict
    again = block._parameters_in(torch.bfloat16)
    assert torch.equal(again[0], block.conv1.weight.to(torch.bfloat16))
    assert not torch.equal(again[0], first[0])


def test_gdn_sets_subnormal_gamma_entries_to_zero_in_training_and_inference():
    """Trained off-diagonal roots below 1e-19 square to float32 subnormals, which made the CPU's
    convolution ~50x slower (the shipped synthesis has hundreds of them)."""
    torch = pytest.importorskip("torch")
    from pillow_cnnz.layers import GDN

    gdn = GDN(4, inverse=True)
    with torch.no_grad():
        gdn.gamma_sqrt[0, 1] = 1e-21  # square 1e-42: subnormal
        gdn.gamma_sqrt[1, 0] = 2e-19  # square 4e-38: the smallest kind of normal float32, kept
    gamma = gdn.gamma()
    tiny = torch.finfo(torch.float32).tiny
    assert not torch.any((gamma > 0) & (gamma < tiny))
    assert gamma[0, 1].item() == 0 and gamma[1, 0].item() == pytest.approx(4e-38, rel=1e-3)
    x = torch.randn(1, 4, 3, 3)
    gamma.sum().backward()  # still trainable: the other entries get their gradient
    assert gdn.gamma_sqrt.grad[1, 1] != 0
    with torch.inference_mode():
        assert torch.allclose(gdn(x.clone()), x * torch.nn.functional.conv2d(x.abs(), gamma.detach()[..., None, None],
                                                                              gdn.beta_sqrt.detach() ** 2 + 1e-6))


def test_gdn_drops_negligible_entries_where_the_codec_runs_and_the_norms_stay_the_same():
    """Entries above the subnormal ones but below 2**-60 still make subnormal products with the
    activations (the middle synthesis level's GDN ran 2.6x slower); the codec (inference) drops them."""
    torch = pytest.importorskip("torch")
    from pillow_cnnz import latents, synthesis_np, weights
    from pillow_cnnz.layers import GDN

    from .conftest import _photo

    assert synthesis_np.NEGLIGIBLE == GDN.NEGLIGIBLE  # the numpy decoder drops the same entries
    gdn = GDN(4)
    with torch.no_grad():
        gdn.gamma_sqrt[0, 1] = 1e-12  # square 1e-24: dropped where the codec runs
        gdn.gamma_sqrt[1, 0] = 1e-9  # square 1e-18 > 2**-60: kept
    gamma = gdn.gamma(GDN.NEGLIGIBLE)
    assert gamma[0, 1].item() == 0 and gamma[1, 0].item() > 0 and gdn.gamma()[0, 1].item() > 0  # training keeps it
    y_hat = latents.decode_y_hat(*_parsed(_photo(128, 192, seed=4)))
    x = torch.from_numpy(y_hat[None].copy()).contiguous(memory_format=torch.channels_last)
    g_s = weights.load().net("cpu").g_s
    with torch.inference_mode():
        for layer in g_s:
            if isinstance(layer, GDN):
                c = x.shape[1]
                beta = layer.beta_sqrt**2 + 1e-6
                norms = [torch.nn.functional.conv2d(x.abs(), layer.gamma(floor).reshape(c, c, 1, 1), beta)
                         for floor in (GDN.TINY, GDN.NEGLIGIBLE)]
                assert torch.equal(*norms)
            x = layer(x)


def _parsed(rgb):
    import io

    from PIL import Image

    from pillow_cnnz import container

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="CNNZ", quality=8)
    header, sections = container.parse(buf.getvalue())
    return header, sections["LATZ"], sections["LATY"]


def test_needed_spans_shrink_level_by_level_to_the_tile_and_stop_at_the_edges():
    pytest.importorskip("torch")
    from pillow_cnnz import weights
    from pillow_cnnz.layers import needed_spans

    g_s = list(weights.load().net("cpu").g_s)  # 3 upsamplings, 2 + 4 + 2 blocks, then the last upsampling
    spans = needed_spans(g_s, (7, 71), 78)  # a tile of 64 latents with its 7-latent halo on each side
    assert spans[-1] == (7 * 16, 71 * 16)  # the tile's own pixels
    assert spans[-2] == (7 * 8 - 1, 71 * 8 + 1)  # the last 3x3 convolution's input: one pixel more
    # each level's upsampling output keeps 5.5, 2 and 0.625 latents of the halo's 7 a side
    assert (spans[0], spans[4], spans[10]) == ((3, 153), (16, 296), (51, 573))
    assert needed_spans(g_s, (0, 64), 71)[0] == (0, 139)  # clipped at the grid's top edge, not at the bottom
    scales = (2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 8, 8, 8, 8, 16)
    assert needed_spans(g_s, (0, 10), 10) == [(0, 10 * s) for s in scales]  # the whole window: no cut


def test_a_tile_cropped_layer_by_layer_gives_the_whole_window_s_pixels():
    torch = pytest.importorskip("torch")
    from pillow_cnnz import weights
    from pillow_cnnz.layers import TileCrops, run_cropped

    g_s = weights.load().net("cpu", "float64").g_s
    y = torch.randn(1, g_s[0].conv.in_channels, 20, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    core = ((7, 13), (0, 9))  # rows inside the window, columns at its left edge
    with torch.inference_mode():
        whole = g_s(y.clone())[:, :, 7 * 16 : 13 * 16, : 9 * 16]
        for dense in (True, False):  # copies or views
            tile = run_cropped(list(g_s), y.clone(), TileCrops(list(g_s), core, (20, 23), dense))
            assert tile.shape == whole.shape
            assert torch.allclose(tile, whole, rtol=0, atol=1e-9)
