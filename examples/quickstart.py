"""Save and open a .cnnz, and compare it with JPEG at a similar file size.

Run: python examples/quickstart.py [IMAGE] [--quality Q] [--method M]
"""
from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_cnnz  # noqa: F401  (registers .cnnz with Pillow and imageio)

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "kodim23.png"  # Kodak PhotoCD image 23 (released for unrestricted use)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse) if mse else math.inf


def jpeg_at_size(img: Image.Image, target_bytes: int) -> tuple[int, bytes]:
    """The JPEG quality whose file is closest to ``target_bytes``."""
    best = None
    for q in range(5, 100, 2):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q, optimize=True)
        if best is None or abs(buf.tell() - target_bytes) < abs(len(best[1]) - target_bytes):
            best = (q, buf.getvalue())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", nargs="?", default=str(DEFAULT))
    parser.add_argument("--quality", type=float, default=4.0)
    parser.add_argument("--method", type=int, default=6, help="also save with this encode effort (0: skip)")
    parser.add_argument("--out", default="quickstart.cnnz")
    args = parser.parse_args()

    img = Image.open(args.image).convert("RGB")
    pixels = img.width * img.height
    t = time.perf_counter()
    img.save(args.out, quality=args.quality)
    encode_s = time.perf_counter() - t

    t = time.perf_counter()
    with Image.open(args.out) as im:
        print(f"opened {args.out}: {im.format} {im.size} {im.mode} quality={im.info['quality']:g}")
        im.load()
        decoded = im.copy()
    decode_s = time.perf_counter() - t
    size = Path(args.out).stat().st_size

    q, jpeg = jpeg_at_size(img, size)
    jpeg_img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    print(f"CNNZ  q={args.quality:<4g} {size * 8 / pixels:.3f} bpp  PSNR {psnr(img, decoded):.2f} dB"
          f"  (encode {encode_s:.2f} s, decode {decode_s:.2f} s, first call loads the model)")
    print(f"JPEG  q={q:<4d} {len(jpeg) * 8 / pixels:.3f} bpp  PSNR {psnr(img, jpeg_img):.2f} dB")

    if args.method:  # the same quality with more encode effort: same decoder, smaller file
        buf = io.BytesIO()
        t = time.perf_counter()
        img.save(buf, format="CNNZ", quality=args.quality, method=args.method)
        encode_s = time.perf_counter() - t
        refined = Image.open(buf)
        print(f"CNNZ  q={args.quality:<4g} {buf.tell() * 8 / pixels:.3f} bpp  PSNR {psnr(img, refined):.2f} dB"
              f"  (method={args.method}: encode {encode_s:.2f} s)")


if __name__ == "__main__":
    main()
