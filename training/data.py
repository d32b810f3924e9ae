"""Image folders as training crops: loaded once into memory, cropped and flipped at random."""
from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# The image sets' default folders, relative to the repository root, where the commands run
# (git-ignored; data/README.md says what goes in each and where it comes from).
DEFAULT_DATA = "data/train"
DEFAULT_VAL = "data/val"
# The same training set as the shipped weights' phase history names it: recorded before the sets
# moved into the repository layout.
RECORDED_DATA = "../shared/data/train"


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


def subset(src: str | Path, dst: str | Path, pattern: str, max_bytes: int, seed: int = 0) -> list[Path]:
    """Copy a seeded random pick of ``src``'s files matching ``pattern`` into ``dst``, in
    shuffled order until the next file would pass ``max_bytes``: a training set that fits
    a lent GPU machine's upload limit (64 MiB with the repository), the same on every run."""
    files = sorted(Path(src).glob(pattern))
    random.Random(seed).shuffle(files)
    Path(dst).mkdir(parents=True, exist_ok=True)
    picked, total = [], 0
    for f in files:
        size = f.stat().st_size
        if total + size > max_bytes:
            break
        shutil.copy(f, Path(dst) / f.name)
        picked.append(f)
        total += size
    return picked


def add_subset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder of training images")
    p.add_argument("dst", help="folder to copy the pick into")
    p.add_argument("--pattern", default="*", help="glob of the files to pick from (default: all)")
    p.add_argument("--max-bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_subset)


def run_subset(args: argparse.Namespace) -> int:
    picked = subset(args.src, args.dst, args.pattern, args.max_bytes, args.seed)
    print(f"{args.dst}: {len(picked)} files, {sum(f.stat().st_size for f in picked):,} bytes", file=sys.stderr)
    return 0
