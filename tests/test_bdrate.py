"""Tests for benchmarks/bdrate.py (PCHIP Bjøntegaard delta metrics)."""

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from benchmarks.bdrate import bd_psnr, bd_rate, pchip_curve  # noqa: E402

# A realistic, slightly concave RD curve (bpp, PSNR) in the Kodak range.
RATES = np.array([0.12, 0.2, 0.33, 0.5, 0.75, 1.1, 1.6])
PSNRS = np.array([26.9, 28.4, 30.1, 31.7, 33.4, 35.0, 36.6])


def test_identical_curves_give_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_half_rate_at_every_psnr_is_minus_50_percent():
    assert bd_rate(RATES, PSNRS, RATES / 2, PSNRS) == pytest.approx(-50.0, abs=0.1)
    # and the reverse direction is +100 %
    assert bd_rate(RATES / 2, PSNRS, RATES, PSNRS) == pytest.approx(100.0, abs=0.1)


def test_psnr_offset_on_linear_in_log_rate_curve():
    slope = 4.5  # dB per natural-log unit of rate
    rates = np.geomspace(0.1, 2.0, 6)
    psnr_a = 20.0 + slope * np.log(rates)
    psnr_b = psnr_a + 1.0  # +1 dB at the same rate
    # At equal PSNR, log(rate_b) = log(rate_a) - 1 / slope.
    expected = (math.exp(-1.0 / slope) - 1.0) * 100.0
    assert bd_rate(rates, psnr_a, rates, psnr_b) == pytest.approx(expected, abs=1e-6)
    assert bd_psnr(rates, psnr_a, rates, psnr_b) == pytest.approx(1.0, abs=1e-9)
    # halving the rate on this curve is worth slope * ln 2 dB
    assert bd_psnr(rates, psnr_a, rates / 2, psnr_a) == pytest.approx(slope * math.log(2), abs=1e-9)


def test_non_overlapping_curves_raise():
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([0.1, 0.2, 0.3], [25, 26, 27], [0.5, 0.6, 0.7], [30, 31, 32])
    with pytest.raises(ValueError, match="overlap"):
        bd_psnr([0.1, 0.2, 0.3], [25, 26, 27], [0.5, 0.6, 0.7], [30, 31, 32])


def test_bad_input_raises():
    with pytest.raises(ValueError):
        bd_rate([0.1], [25], [0.1, 0.2], [25, 26])  # single point
    with pytest.raises(ValueError):
        bd_rate([0.0, 0.2], [25, 26], [0.1, 0.2], [25, 26])  # zero rate
    with pytest.raises(ValueError):
        bd_rate([0.1, 0.2, 0.3], [25, 26], [0.1, 0.2], [25, 26])  # length mismatch
    with pytest.raises(ValueError):
        bd_rate([0.1, float("nan")], [25, 26], [0.1, 0.2], [25, 26])


def test_unsorted_input_is_sorted():
    perm = np.array([3, 0, 6, 2, 5, 1, 4])
    ref = bd_rate(RATES, PSNRS, RATES * 0.8, PSNRS + 0.2)
    got = bd_rate(RATES[perm], PSNRS[perm], (RATES * 0.8)[::-1], (PSNRS + 0.2)[::-1])
    assert got == pytest.approx(ref, abs=1e-12)
    ref_p = bd_psnr(RATES, PSNRS, RATES * 0.8, PSNRS + 0.2)
    got_p = bd_psnr(RATES[perm], PSNRS[perm], list(RATES * 0.8)[::-1], list(PSNRS + 0.2)[::-1])
    assert got_p == pytest.approx(ref_p, abs=1e-12)


def test_non_monotone_curve_still_works():
    # a codec whose PSNR dips at one point: still a valid, finite answer
    psnr_b = PSNRS.copy()
    psnr_b[3] -= 1.5  # now below point 2
    val = bd_rate(RATES, PSNRS, RATES, psnr_b)
    assert math.isfinite(val) and val > 0  # b is worse
    assert bd_psnr(RATES, PSNRS, RATES, psnr_b) < 0


def test_duplicate_points_are_merged():
    r = np.concatenate([RATES, RATES[:2]])
    p = np.concatenate([PSNRS, PSNRS[:2]])
    assert bd_rate(RATES, PSNRS, r, p) == pytest.approx(0.0, abs=1e-9)


def test_direction_is_consistent():
    x = bd_rate(RATES, PSNRS, RATES * 0.7, PSNRS + 0.3)
    y = bd_rate(RATES * 0.7, PSNRS + 0.3, RATES, PSNRS)
    assert x < 0 < y
    # same overlap interval both ways: the mean log-ratios are opposite
    assert (1 + x / 100) * (1 + y / 100) == pytest.approx(1.0, abs=1e-12)


def test_exact_integral_matches_dense_sampling():
    rb, pb = RATES * np.linspace(0.6, 0.9, RATES.size), PSNRS + np.linspace(0.0, 0.8, RATES.size)
    fa = pchip_curve(PSNRS, np.log(RATES))
    fb = pchip_curve(pb, np.log(rb))
    lo, hi = max(PSNRS.min(), pb.min()), min(PSNRS.max(), pb.max())
    grid = np.linspace(lo, hi, 200001)
    dense = (math.exp(np.mean(fb(grid) - fa(grid))) - 1) * 100
    assert bd_rate(RATES, PSNRS, rb, pb) == pytest.approx(dense, abs=1e-3)


# --------------------------------------------------------------------------- benchmark helpers


def _synthetic_pair():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(123)
    x = (gaussian_filter(rng.random((256, 320, 3)), (3, 3, 0)) * 1020 - 255).clip(0, 255).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-12, 13, x.shape), 0, 255).astype(np.uint8)
    return x, y


def test_ms_ssim_matches_reference_implementation():
    from benchmarks.rd import MsSsim, ms_ssim, psnr

    x, y = _synthetic_pair()
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # value given by pytorch_msssim.ms_ssim(data_range=255) on the same arrays
    assert ms_ssim(x, y) == pytest.approx(0.9751814, abs=1e-5)
    assert MsSsim(x)(y) == ms_ssim(x, y)
    assert ms_ssim(x, y) == pytest.approx(ms_ssim(y, x), abs=1e-12)
    assert psnr(x, x) == 100.0
    with pytest.raises(ValueError):
        ms_ssim(x[:100], y[:100])  # too small for 5 scales


def test_psnr_at_bpp_interpolates_without_extrapolating():
    from benchmarks.rd import psnr_at_bpp

    res = {"bpp": list(RATES), "psnr-rgb": list(PSNRS)}
    assert psnr_at_bpp(res, 0.5) == pytest.approx(31.7)
    assert PSNRS[3] < psnr_at_bpp(res, 0.6) < PSNRS[4]
    assert psnr_at_bpp(res, 0.05) is None
    assert psnr_at_bpp(res, 3.0) is None
