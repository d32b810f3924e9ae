"""Bjøntegaard delta metrics with piecewise cubic (PCHIP) interpolation.

This is the "piecewise cubic" variant of the Bjøntegaard metric used by the
JVET common test conditions and by CompressAI's benchmark tooling: instead of
fitting a single cubic polynomial through all rate/distortion points, each
curve is interpolated with a shape-preserving piecewise cubic Hermite
interpolant (Fritsch-Carlson, ``scipy.interpolate.PchipInterpolator``).  The
interpolants are integrated exactly (they are piecewise polynomials) over the
interval where the two curves overlap.

* :func:`bd_rate`: log-rate as a function of quality, averaged over the common
  quality interval -> average percent rate change of curve ``b`` relative to
  curve ``a`` at equal quality (negative: ``b`` needs fewer bits).
* :func:`bd_psnr`: quality as a function of log-rate, averaged over the common
  log-rate interval -> average quality gain of ``b`` over ``a`` at equal rate
  (positive: ``b`` is better), in the unit of the quality metric (dB for PSNR).

Any quality metric works in place of PSNR (e.g. MS-SSIM in dB,
``-10 * log10(1 - ms_ssim)``); the argument names only follow the usual use.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["bd_rate", "bd_psnr", "pchip_curve"]


def _prepare(x: Sequence[float], y: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate, sort by ``x`` and merge duplicate ``x`` values (mean of ``y``)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{what}: rate and quality must have the same length ({x.size} != {y.size})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what}: rate and quality must be finite")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inverse = np.unique(x, return_inverse=True)
    if ux.size != x.size:  # equal abscissae: keep their mean ordinate
        y = np.bincount(inverse, weights=y) / np.bincount(inverse)
        x = ux
    if x.size < 2:
        raise ValueError(f"{what}: need at least two distinct points, got {x.size}")
    return x, y


def _log_rates(rate: Sequence[float], what: str) -> np.ndarray:
    r = np.asarray(rate, dtype=np.float64).ravel()
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{what}: rates must be positive and finite")
    return np.log(r)


def pchip_curve(x: Sequence[float], y: Sequence[float]) -> PchipInterpolator:
    """PCHIP interpolant of ``y(x)`` after sorting and merging duplicate ``x``."""
    xs, ys = _prepare(x, y, "curve")
    return PchipInterpolator(xs, ys, extrapolate=False)


def _mean_difference(xa, ya, xb, yb, what: str) -> float:
    """Mean of ``fb - fa`` over the common ``x`` interval of the two PCHIP curves."""
    xa, ya = _prepare(xa, ya, f"{what} (curve a)")
    xb, yb = _prepare(xb, yb, f"{what} (curve b)")
    lo = max(xa[0], xb[0])
    hi = min(xa[-1], xb[-1])
    if not hi > lo:
        raise ValueError(
            f"{what}: the curves do not overlap "
            f"(a spans [{xa[0]:.6g}, {xa[-1]:.6g}], b spans [{xb[0]:.6g}, {xb[-1]:.6g}])"
        )
    fa = PchipInterpolator(xa, ya)
    fb = PchipInterpolator(xb, yb)
    # Exact integration of the piecewise cubics.
    return (float(fb.integrate(lo, hi)) - float(fa.integrate(lo, hi))) / (hi - lo)


def bd_rate(
    rate_a: Sequence[float],
    psnr_a: Sequence[float],
    rate_b: Sequence[float],
    psnr_b: Sequence[float],
) -> float:
    """Average rate change of ``b`` relative to ``a`` at equal quality, in percent.

    ``rate_*`` are rates (bits per pixel, kbit/s, bytes ... anything positive and
    proportional), ``psnr_*`` the matching quality values.  Points may be given
    in any order.  ``-50.0`` means ``b`` needs half the bits of ``a``.

    Raises ``ValueError`` when a curve has fewer than two distinct quality
    values, a rate is not positive, or the quality ranges do not overlap.
    """
    la = _log_rates(rate_a, "bd_rate (curve a)")
    lb = _log_rates(rate_b, "bd_rate (curve b)")
    # log-rate as a function of quality
    mean_log_ratio = _mean_difference(psnr_a, la, psnr_b, lb, "bd_rate")
    return (math.exp(mean_log_ratio) - 1.0) * 100.0


def bd_psnr(
    rate_a: Sequence[float],
    psnr_a: Sequence[float],
    rate_b: Sequence[float],
    psnr_b: Sequence[float],
) -> float:
    """Average quality difference ``b - a`` at equal rate (dB for PSNR).

    Positive means ``b`` gives higher quality at the same rate.  Raises
    ``ValueError`` when the log-rate ranges do not overlap.
    """
    la = _log_rates(rate_a, "bd_psnr (curve a)")
    lb = _log_rates(rate_b, "bd_psnr (curve b)")
    # quality as a function of log-rate
    return _mean_difference(la, psnr_a, lb, psnr_b, "bd_psnr")
