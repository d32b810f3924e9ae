"""Regenerate the golden files: small committed ``.cnnz`` files whose decoding the tests pin.

    python -m tests.golden.make_golden        # from the repository root

Each file ``<source>-q<quality>.cnnz`` is its source PNG encoded with the shipped weights at
that quality, the analysis in float32. ``golden.json`` records, for each file, the sha256 of
its bytes, of its entropy-decoded latents (ẑ, the latent symbols and their means: integer
arithmetic, the same on every machine) and of its decoded pixels in every precision path
(``PATHS``), with the configuration they were made on (``configuration()``). The float64 and
the int8 decodes are kept as ``<file>.float64.png`` and ``<file>.int8.png``: the references
that every path (``REFERENCE_OF``) must stay within ``TOLERANCE`` levels of on any CPU that
runs it (float pixels move by a rounding level between CPU kinds, as the precision policy
documents), alpha exactly. int8 has its own reference: it rounds activations to 8 bits, so
its pixels sit further from float64's than the float paths' do, while on another CPU with
VNNI its integer products are the same and only its float layers round differently.

Regenerating is legitimate only when the format or the shipped weights change on purpose: a
new model id, a container or entropy-coding change, a deliberate change of the networks'
arithmetic, and then in the same commit as that change, saying so. A code move or a clean-up
must leave every pin as it is: a golden test that fails after one found a behaviour change.
The sources (``SOURCES``) are crops of ``examples/kodim23.png``, committed beside the files so
the goldens need nothing else; they are made again only where missing.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "golden.json"
TOLERANCE = 2  # levels: what precision may move a pixel by (float64 vs bfloat16), the README's bound
# Precision paths: name -> CNNZ_PRECISION. "float32-numpy" runs in a process that never imports
# torch (the decode-only path); the others run in torch on the CPU.
PATHS = {"float32-numpy": "float32", "float32-torch": "float32", "float64": "float64",
         "bfloat16": "bfloat16", "int8": "int8"}
# path -> the path whose committed pixels it is compared with, within TOLERANCE, on any CPU
REFERENCE_OF = {"float32-numpy": "float64", "float32-torch": "float64", "float64": "float64",
                "bfloat16": "float64", "int8": "int8"}
# source name -> (mode, crop box of examples/kodim23.png (left, top, right, bottom), qualities)
SOURCES = {
    "rgb-160x96": ("RGB", (100, 170, 260, 266), (1, 8)),
    "l-64x48": ("L", (470, 140, 534, 188), (1, 8)),
    "rgba-100x70": ("RGBA", (620, 300, 720, 370), (8,)),
}
# CPU flags that choose the kernels of a float path (oneDNN, OpenBLAS, numpy's SIMD loops)
_KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
# environment variables that override those choices
_KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE",
               "NPY_DISABLE_CPU_FEATURES", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def files() -> dict[str, tuple[str, str, int]]:
    """Golden file name -> (source name, mode, quality)."""
    return {f"{name}-q{q}.cnnz": (name, mode, q) for name, (mode, _, qs) in SOURCES.items() for q in qs}


def reference_file(file: str, path: str) -> Path:
    """The committed pixels of golden ``file`` decoded in ``path`` (one of REFERENCE_OF's values)."""
    return HERE / file.replace(".cnnz", f".{path}.png")


def source_pixels(name: str) -> np.ndarray:
    """The committed source image ``name`` as a uint8 array in its mode."""
    return np.asarray(Image.open(HERE / f"{name}.png"))


def _make_source(name: str) -> None:
    mode, box, _ = SOURCES[name]
    im = Image.open(HERE.parents[1] / "examples" / "kodim23.png").convert("RGB").crop(box)
    if mode == "RGBA":  # a soft radial alpha with a hard-edged hole: every kind of edge
        w, h = im.size
        yy, xx = np.mgrid[0:h, 0:w]
        alpha = np.clip(255 - 2.5 * np.hypot(xx - w / 2, yy - h / 2), 0, 255).astype(np.uint8)
        alpha[h // 4 : h // 2, w // 5 : w // 3] = 0
        im.putalpha(Image.fromarray(alpha))
    im.convert(mode).save(HERE / f"{name}.png")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def configuration() -> dict:
    """What decides the float paths' rounding: CPU model, cache and kernel flags, the torch and
    numpy builds, and environment overrides. Pixels are pinned bit for bit only where this
    equals the configuration the goldens were made on."""
    import threadpoolctl

    blas = sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                  for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas")
    import torch

    return {
        "machine": platform.machine(),
        "cpu": _cpuinfo("model name"),
        "cache": _cpuinfo("cache size"),
        "flags": sorted(cpu_flags() & set(_KERNEL_FLAGS)),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "blas": blas,
        "env": {k: os.environ[k] for k in _KERNEL_ENV if k in os.environ},
    }


def unsupported(path: str) -> str | None:
    """Why this machine does not run ``path`` (a skip reason), or None."""
    flags = cpu_flags()
    if path == "bfloat16" and not flags & {"avx512_bf16", "amx_bf16"}:
        return "the CPU has no native bfloat16 (AVX512-BF16 or AMX): the codec never picks it here"
    if path == "int8":
        if not flags & {"avx512_vnni", "avx_vnni"}:
            return "the CPU has no 8-bit dot products (VNNI): the codec never picks int8 here"
        from pillow_cnnz import int8

        if not int8.supported():
            return "this torch has no oneDNN int8 convolutions"
    return None


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def latents_digest(data: bytes) -> str:
    """sha256 of a file's entropy-decoded latents: ẑ, the latent symbols (int64) and their
    means (float32), each with its shape."""
    from pillow_cnnz import container, latents

    header, payloads = container.parse(data)
    z, symbols, mu = latents.decode_latents(header, payloads["LATZ"], payloads["LATY"])
    h = hashlib.sha256()
    for a, dtype in ((z, np.int64), (symbols, np.int64), (mu, np.float32)):
        h.update(repr(a.shape).encode())
        h.update(np.ascontiguousarray(a, dtype).tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _precision(value: str):
    before = os.environ.get("CNNZ_PRECISION")
    os.environ["CNNZ_PRECISION"] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ["CNNZ_PRECISION"]
        else:
            os.environ["CNNZ_PRECISION"] = before


def decode(data: bytes, path: str) -> np.ndarray:
    """Pixels of ``data`` decoded on the CPU in ``path``, one of ``PATHS``."""
    if path == "float32-numpy":
        return numpy_decodes([data])[0]
    from pillow_cnnz import codec, synthesis

    # float32 runs in torch from synthesis.TORCH_FROM_PIXELS, in numpy below: torch at any size here
    with _precision(PATHS[path]), mock.patch.object(synthesis, "TORCH_FROM_PIXELS", 0):
        return codec.decode(data, device="cpu")


def numpy_decodes(datas: list[bytes]) -> list[np.ndarray]:
    """Pixels of the files decoded in float32 by a process that never imports torch (the
    numpy synthesis), which checks that it did not."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(datas):
            Path(tmp, f"{i}.cnnz").write_bytes(data)
        env = {**os.environ, "CNNZ_PRECISION": "float32", "CNNZ_DEVICE": "cpu"}
        subprocess.run([sys.executable, "-m", "tests.golden.make_golden", "--numpy-decode", tmp, str(len(datas))],
                       check=True, env=env, cwd=HERE.parents[1])
        return [np.load(Path(tmp, f"{i}.npy")) for i in range(len(datas))]


def _numpy_decode_here(folder: str, count: int) -> None:
    from pillow_cnnz import codec

    for i in range(count):
        np.save(Path(folder, f"{i}.npy"), codec.decode(Path(folder, f"{i}.cnnz").read_bytes(), device="cpu"))
    if "torch" in sys.modules:
        msg = "the float32 numpy decode imported torch"
        raise RuntimeError(msg)


def encode(name: str, mode: str, quality: int) -> bytes:
    """The source ``name`` encoded on the CPU with the float32 analysis."""
    from pillow_cnnz import codec

    with _precision("float32"):
        return codec.encode(source_pixels(name), mode, quality, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numpy-decode", nargs=2, metavar=("FOLDER", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.numpy_decode:
        _numpy_decode_here(args.numpy_decode[0], int(args.numpy_decode[1]))
        return
    for name in SOURCES:
        if not (HERE / f"{name}.png").exists():
            _make_source(name)
    entries, datas = {}, {}
    for file, (name, mode, quality) in files().items():
        datas[file] = data = encode(name, mode, quality)
        (HERE / file).write_bytes(data)
        entries[file] = {"source": f"{name}.png", "mode": mode, "quality": quality,
                         "sha256": hashlib.sha256(data).hexdigest(), "latents_sha256": latents_digest(data),
                         "pixels_sha256": {}}
    numpy_pixels = dict(zip(datas, numpy_decodes(list(datas.values()))))
    for file, data in datas.items():
        for path in PATHS:
            if unsupported(path):
                sys.exit(f"{path}: {unsupported(path)}; make the goldens on a CPU that runs every path")
            pixels = numpy_pixels[file] if path == "float32-numpy" else decode(data, path)
            entries[file]["pixels_sha256"][path] = digest(pixels)
            if path in REFERENCE_OF.values():
                Image.fromarray(pixels).save(reference_file(file, path))
    doc = {"tolerance": TOLERANCE, "reference_of": REFERENCE_OF, "configuration": configuration(), "files": entries}
    MANIFEST.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
