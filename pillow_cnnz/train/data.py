"""Image folders as training crops: loaded once into memory, cropped and flipped at random."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_paths(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXTENSIONS)
    if not paths:
        msg = f"no images in {folder}"
        raise FileNotFoundError(msg)
    return paths


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class CropSampler:
    """Random ``crop``×``crop`` patches with random flips, as float32 NCHW in [0, 1]."""

    def __init__(self, folder: str | Path, crop: int, seed: int = 0) -> None:
        self.images = [im for im in map(load_rgb, image_paths(folder)) if min(im.shape[:2]) >= crop]
        if not self.images:
            msg = f"no image in {folder} is at least {crop} pixels on each side"
            raise ValueError(msg)
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        out = np.empty((size, self.crop, self.crop, 3), np.uint8)
        for i in range(size):
            im = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(im.shape[0] - self.crop + 1)
            left = self.rng.integers(im.shape[1] - self.crop + 1)
            patch = im[top : top + self.crop, left : left + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch.transpose(1, 0, 2)
            out[i] = patch
        return out.transpose(0, 3, 1, 2).astype(np.float32) / 255
