"""Shared fixtures: small synthetic images, so the plugin tests need no data files.

Images are kept small (at most 130×70, sides not multiples of 64) so that encoding
and decoding on a CPU stay well under a second each.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz  # noqa: F401  (registers the format with Pillow and imageio)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Put torch's thread count back after each test: the training code under test calls
    ``torch.set_num_threads``, which would otherwise change how later tests run (bfloat16
    kernels round differently at one thread than at two). Torch is not imported for this
    (whether it is loaded changes the codec's precision under ``auto``), so a test that is the
    first to import torch has no earlier count to go back to."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like (height, width, 3) uint8 image: gradients, shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    img = np.stack(
        [40 + 180 * u, 50 + 150 * v, 150 + 60 * np.sin(6 * u) * np.cos(4 * v)], axis=-1
    )
    disc = (u - 0.3) ** 2 + (v - 0.5) ** 2 < 0.04
    img[disc] = (210, 70, 50)
    img[(u > 0.6) & (u < 0.85) & (v > 0.2) & (v < 0.7)] = (35, 90, 190)
    img += rng.normal(0, 2, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., np.ndarray]:
    """Factory: ``make_photo(height, width, seed=0)`` -> (H, W, 3) uint8 array."""
    return _photo


@pytest.fixture(scope="session")
def photo_array() -> np.ndarray:
    """The standard 130×70 test photo, as an array (read-only: copy before changing it)."""
    arr = _photo(70, 130)
    arr.flags.writeable = False
    return arr


@pytest.fixture
def photo_image(photo_array: np.ndarray) -> Image.Image:
    """The standard test photo as a fresh RGB ``Image``."""
    return Image.fromarray(photo_array)


@pytest.fixture(scope="session")
def alpha_plane() -> np.ndarray:
    """A 70×130 alpha plane using every value 0..255: a ramp plus a hard-edged hole."""
    alpha = (np.arange(70 * 130) % 256).reshape(70, 130).astype(np.uint8)
    alpha[20:40, 50:90] = 0
    alpha.flags.writeable = False
    return alpha
