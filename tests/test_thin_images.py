"""A decode costs what its pixels cost, also for images thinner than the 64-pixel blocks the
format codes: the synthesis makes only the image's pixels, each layer only what they depend on,
and an image a few pixels thin is coded folded into a near-square raster (``folding``).

Cost is counted (multiply-adds handed to the convolutions), never timed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pillow_cnnz import blas, container, folding, synthesis, synthesis_np, tiling, weights

# Images as thin as this, and thicker, cost at most 4x a square image per pixel. Thinner ones cost
# more: a pixel row depends on ~7 latent rows of context at the coarsest level whatever the image's
# height (the synthesis' receptive field), and the format codes latents for whole 64-pixel blocks.
THIN = [(12, 1366), (1366, 12)]
# Sides of strips that the synthesis alone cannot make cheap: coded folded, they cost at most 4x
# a square image of the same pixel count, per pixel, in either orientation.
STRIPS = [(h, 1366) for h in (1, 2, 8, 12, 16)] + [(1366, w) for w in (1, 2, 8, 12, 16)]
LONG_STRIPS = [(1, 65535), (65535, 1), (8, 4096), (4096, 8)]


def _y_hat(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random latents (1, M, h, w) on the padded grid a file of that size codes."""
    rows, cols = tiling.hyper_grid(height, width)
    grid = (rows * tiling.PAD_MULTIPLE // tiling.LATENT_STRIDE, cols * tiling.PAD_MULTIPLE // tiling.LATENT_STRIDE)
    m = weights.load().meta["config"]["M"]
    return 2 * np.random.default_rng(seed).standard_normal((1, m, *grid), dtype=np.float32)


def _numpy_work(monkeypatch, height: int, width: int) -> int:
    """Multiply-adds of the numpy synthesis of an image of that size (its convolutions and GDNs)."""
    work = [0]

    def counted(cls, per_pixel):
        real = cls.__call__

        def call(self, xp, *args):
            work[0] += (xp.shape[0] - 2) * (xp.shape[1] - 2) * per_pixel(self, xp.shape[2])
            return real(self, xp, *args)

        monkeypatch.setattr(cls, "__call__", call)

    counted(synthesis_np._Upsample, lambda layer, c: 9 * c * layer.weight.shape[1] + 4 * layer.gamma_t.size)
    counted(synthesis_np._Residual, lambda layer, c: 2 * 9 * c * c)
    counted(synthesis_np._Last, lambda layer, c: 9 * c * layer.cout4)
    tiling.synthesize_tiles(synthesis.numpy_synthesis(weights.load()), _y_hat(height, width), height, width)
    monkeypatch.undo()
    return work[0]


def _torch_work(height: int, width: int) -> int:
    """Multiply-adds of the torch synthesis (float32) of an image of that size, from the outputs
    of its modules (hooks on the modules: oneDNN's fused residual blocks call no Conv2d)."""
    torch = pytest.importorskip("torch")
    from pillow_cnnz.layers import GDN, ResBlock, SubPixelConv

    net = weights.load().net("cpu", "float32")
    work = [0]

    def per_output(module) -> int:
        if isinstance(module, SubPixelConv):
            return 9 * module.conv.in_channels
        if isinstance(module, ResBlock):
            return 2 * 9 * module.conv1.in_channels
        if isinstance(module, GDN):
            return module.beta_sqrt.numel()
        return 9 * module.in_channels  # the last convolution, which synthesis.torch_synthesis calls itself

    def hook(module, inputs, output):
        work[0] += output[0].numel() * per_output(module)

    modules = [*net.g_s[:-1], net.g_s[-1].conv]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.inference_mode():
            tiling.synthesize_tiles(synthesis.torch_synthesis(net, "cpu", "float32"), _y_hat(height, width), height, width)
    finally:
        for h in handles:
            h.remove()
    return work[0]


@pytest.mark.parametrize(("height", "width"), [(1, 700), (17, 1500), (1100, 40), (200, 264), (64, 64)])
def test_the_synthesis_is_asked_for_the_image_pixels_only(height, width):
    asked = []

    def run(window, core):
        (r0, r1), (c0, c1) = core
        assert 0 <= r0 < r1 <= tiling.LATENT_STRIDE * window.shape[2]
        assert 0 <= c0 < c1 <= tiling.LATENT_STRIDE * window.shape[3]
        asked.append((r1 - r0) * (c1 - c0))
        return np.zeros((window.shape[0], r1 - r0, c1 - c0, 3), np.uint8)

    tiling.synthesize_tiles(run, _y_hat(height, width), height, width)
    assert sum(asked) == height * width  # not the 16-pixel latents around them


@pytest.mark.parametrize(("height", "width"), THIN)
def test_a_thin_image_costs_at_most_four_times_a_square_one_in_numpy(monkeypatch, height, width):
    square = _numpy_work(monkeypatch, 128, 128) / (128 * 128)
    assert _numpy_work(monkeypatch, height, width) / (height * width) <= 4 * square


def _coded(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the raster a file of an image of that size codes: its fold's, if folded."""
    width, height = container.coded_size(width, height, *folding.plan(height, width))
    return height, width


def _square(height: int, width: int) -> int:
    """Side of the square image with (about) the pixels of an image of that size."""
    return max(1, round(math.sqrt(height * width)))


@pytest.mark.parametrize(("height", "width"), STRIPS + LONG_STRIPS)
def test_a_strip_decodes_at_most_four_times_a_square_images_work_in_numpy(monkeypatch, height, width):
    side = _square(height, width)
    square = _numpy_work(monkeypatch, side, side) / side**2
    assert _numpy_work(monkeypatch, *_coded(height, width)) / (height * width) <= 4 * square


@pytest.mark.parametrize(("height", "width"), [(1, 1366), (1366, 2), (8, 1366), (1366, 16)])
def test_a_strip_decodes_at_most_four_times_a_square_images_work_in_torch(height, width):
    side = _square(height, width)
    assert _torch_work(*_coded(height, width)) / (height * width) <= 4 * _torch_work(side, side) / side**2


@pytest.mark.parametrize(("height", "width"), [(1, 1366), (2, 1366), (8, 1366), (1366, 1), (8, 4096)])
def test_folding_is_what_brings_a_strip_under_the_bar(monkeypatch, height, width):
    """Unfolded, these strips cost over 3x a square image per pixel (the thinnest far more): they are folded."""
    side = _square(height, width)
    square = _numpy_work(monkeypatch, side, side) / side**2
    assert _coded(height, width) != (height, width)
    assert _numpy_work(monkeypatch, height, width) / (height * width) > 3 * square


@pytest.mark.parametrize(("height", "width"), THIN)
def test_a_thin_image_costs_at_most_four_times_a_square_one_in_torch(height, width):
    assert _torch_work(height, width) / (height * width) <= 4 * _torch_work(128, 128) / (128 * 128)


def test_a_thinner_strip_costs_less_in_torch():
    """Not the 16-pixel latent rows around its pixels: a 1-pixel strip costs less than an 8-pixel one."""
    assert _torch_work(1, 700) < _torch_work(8, 700) < _torch_work(16, 700)


@pytest.mark.parametrize(("height", "width"), [(1, 300), (5, 700), (70, 9)])
def test_a_thin_image_gets_the_pixels_of_the_whole_synthesis(monkeypatch, height, width):
    """Tiles and per-layer cuts change which pixels are computed, never their values (numpy)."""
    monkeypatch.setattr(tiling, "TILE", 8)  # several tiles along the long side, with halos
    y = _y_hat(height, width, seed=1)
    tiled = tiling.synthesize_tiles(synthesis.numpy_synthesis(weights.load()), y, height, width)
    with blas.threads(1):  # as the codec runs it: sgemm rounds differently at other thread counts
        whole = weights.load().numpy_synthesis()(y)[:, :, :height, :width]
    expected = np.rint(np.clip(whole, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(tiled, expected)


def test_a_cut_torch_synthesis_gets_the_pixels_of_the_whole_one():
    torch = pytest.importorskip("torch")
    net = weights.load().net("cpu", "float32")
    y = _y_hat(5, 300, seed=2)
    run = synthesis.torch_synthesis(net, "cpu", "float32")
    with torch.inference_mode():
        whole = run(y)
        for core in [((0, 5), (0, 300)), ((3, 9), (17, 250)), ((0, 64), (100, 101))]:
            (r0, r1), (c0, c1) = core
            np.testing.assert_array_equal(run(y, core), whole[:, r0:r1, c0:c1])
