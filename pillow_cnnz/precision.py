"""Device and precision policy: importing torch, the CPU's features, and which device and number type the transforms run in.

Every hardware probe is a module function (``cpu_flags``, ``torch_installed``, ``int8_supported``,
``cuda_possible``), so that tests can stand in for CPUs and machines other than their own.
The environment variables behind these choices are read in ``settings.py`` alone.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Any

from . import forksafe, settings

_torch_lock = forksafe.Lock()  # a child forked mid-import must not wait on it
_torch_ready = False
NEED_TORCH = ("float64", "bfloat16", "int8")  # precisions only torch runs: numpy's synthesis is float32
_NVIDIA_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


# What a reader without torch installs to write files or use a GPU (pyproject.toml's extra).
TORCH_INSTALL = 'pip install "pillow-cnnz[torch]"'


def require_torch(what: str) -> None:
    """OSError naming the install command unless torch is installed: ``what`` (e.g. "writing
    .cnnz") needs it. Asked of the import system, so it costs no torch import."""
    if not torch_installed():
        msg = f"{what} needs torch, which is not installed (reading needs only numpy); install it with {TORCH_INSTALL}"
        raise OSError(msg)


def import_torch() -> Any:
    """Import torch once, apply CNNZ_THREADS, and make forked children safe; an OSError naming
    the install command where torch is not installed."""
    global _torch_ready
    require_torch("this operation")
    import torch

    with _torch_lock:
        if not _torch_ready:
            threads = settings.threads()
            if threads:
                torch.set_num_threads(threads)
            # torch's OpenMP pool hangs in a fork()ed child once the parent used it
            # (pytorch #41197); a single thread in the child avoids it.
            os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))
            _torch_ready = True
    return torch


def cuda_possible() -> bool:
    """Whether CUDA could be available, answered without importing torch where possible.

    Importing torch is most of a cold start. With no NVIDIA driver on the machine,
    ``torch.cuda.is_available()`` is False anyway, so it need not be asked.
    """
    if not torch_installed():
        return False
    if sys.modules.get("torch") is not None:
        return sys.modules["torch"].cuda.is_available() and not _cuda_unusable_here()
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _NVIDIA_PATHS):
        return False
    return import_torch().cuda.is_available()


def _cuda_unusable_here() -> bool:
    """Whether this process should not use CUDA by default although the machine has it.

    A fork()ed child of a process that used CUDA cannot (torch raises "Cannot re-initialize
    CUDA in forked subprocess"), and a DataLoader worker should not: the workers are there to
    do CPU work beside the training process, and each would hold its own CUDA context.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    data = sys.modules.get("torch.utils.data")
    return torch.cuda._is_in_bad_fork() or (data is not None and data.get_worker_info() is not None)


def resolve_device(device: str | None = None) -> str:
    """Explicit argument, else ``CNNZ_DEVICE``, else CUDA when available, else CPU."""
    asked = device or None
    device = settings.device(asked)
    if not device:
        return "cuda" if cuda_possible() else "cpu"
    if device.startswith("cuda"):
        require_torch(f"device={device!r}" if asked else f"CNNZ_DEVICE={device}")
    if device.startswith("cuda") and not import_torch().cuda.is_available():
        msg = f"device {device!r} was asked for but CUDA is not available"
        raise ValueError(msg)
    if device.startswith("cuda") and import_torch().cuda._is_in_bad_fork():
        msg = (f"device {device!r} was asked for in a process forked from one that had used CUDA; "
               "use the 'spawn' start method, or decode on the CPU here")
        raise ValueError(msg)
    return device


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux, no torch); None where there is none.

    Cached: every decode resolves its precision, and the CPU does not change under a process."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None


def cpu_has_bf16() -> bool:
    """Whether the running CPU has AVX512-BF16 or AMX (from its flags, else asked of torch)."""
    flags = cpu_flags()
    if flags is None:
        return bool(getattr(import_torch().cpu, "_is_avx512_bf16_supported", lambda: False)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """Whether the running CPU has AMX tiles for bfloat16 (Intel Xeon since Sapphire Rapids)."""
    flags = cpu_flags()
    return flags is not None and "amx_bf16" in flags


def cpu_has_vnni() -> bool:
    """8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI): where oneDNN's int8 pays."""
    flags = cpu_flags()
    return flags is not None and ("avx512_vnni" in flags or "avx_vnni" in flags)


@functools.cache
def torch_installed() -> bool:
    """Whether torch can be imported here (asked of the import system, without importing it)."""
    return importlib.util.find_spec("torch") is not None


def int8_supported() -> bool:
    """Whether this torch build runs the int8 transforms (``int8.py``)."""
    from . import int8

    return int8.supported()


def resolve_precision(precision: str | None = None, device: str = "cpu", analysis: bool = False,
                      int8: bool = False) -> str:
    """Number type of the transforms: argument, else ``CNNZ_PRECISION``, else ``auto``.

    ``auto`` follows the hardware and the installed packages alone, never what the process
    happens to have imported or done before: the same file decodes to the same pixels at any
    point of any process on one machine (``synthesis.synthesize_batch`` picks numpy or torch
    the same way). It is bfloat16 where the hardware runs it natively (CUDA, CPUs with
    AVX512-BF16 or AMX: a faster synthesis, within 2 levels of float32), int8 blocks on a CPU
    with 8-bit dot products (below), and float32 elsewhere. On a CPU, bfloat16 and int8 run in
    torch, so ``auto`` takes them only where torch is installed; a decode on such a CPU
    therefore imports torch once, the price of one answer per file. A process that wants the
    cold start of a decode without torch sets ``CNNZ_PRECISION=float32``, whose synthesis runs
    in numpy (below ``synthesis.TORCH_FROM_PIXELS``). Where torch is not installed (``pip install
    pillow-cnnz`` without the ``torch`` extra), ``auto`` is float32 in numpy at every size, and
    float64, bfloat16 and int8, which only torch runs, raise an OSError naming the argument or
    variable that asked for them and the install command. The synthesis' precision changes pixels
    by rounding only: the decoded latents never depend on it.

    The encoder's ``analysis`` takes bfloat16 on a CPU only with AMX: there it is much faster
    than float32 and was checked to give the same latents from call to call, alone or in a
    batch, at 1 or 2 threads (a test pins the bytes). On AVX512-BF16 without AMX a bfloat16
    analysis was seen to round a latent differently from one call to the next. There, and on
    any other CPU with 8-bit dot products (VNNI), the analysis takes ``int8`` when the model
    ships its ranges (``int8``, ``pillow_cnnz/int8.py``): residual blocks in integers, faster
    than float32, latents closer to float32's than bfloat16's, the same bytes at any thread
    count. A synthesis on such a CPU without bfloat16 takes ``int8`` too: the blocks its
    ranges name in integers. ``int8`` is the CPU's only: asked for on CUDA it means ``auto``.
    The weights train under bfloat16 autocast, and the bfloat16 analysis codes Kodak as small
    as the float32 one or smaller (``experiments/analysis_precision``, docs/performance.md).
    ``analysis.analyse_batch`` still runs the hyper-analysis in float32: bfloat16 oneDNN got
    a one-column ẑ wrong.
    """
    asked = precision or None
    precision = settings.precision(asked)
    if precision in NEED_TORCH:
        require_torch(f"precision={precision!r}" if asked else f"CNNZ_PRECISION={precision}")
    if precision == "int8" and device != "cpu":
        precision = "auto"
    if precision == "auto":
        if device.startswith("cuda"):
            precision = "bfloat16" if import_torch().cuda.is_bf16_supported() else "float32"
        elif not torch_installed():
            precision = "float32"
        elif cpu_has_amx() or (not analysis and cpu_has_bf16()):
            precision = "bfloat16"
        else:
            precision = "int8" if int8 and cpu_has_vnni() and int8_supported() else "float32"
    return precision


def check_installed(device: str | None = None) -> None:
    """Where torch is not installed, the OSError a decode on ``device`` would meet for asking
    for CUDA or a precision that needs torch (``CNNZ_DEVICE``, ``CNNZ_PRECISION``), raised before
    any work; nothing where it is (so nothing is imported)."""
    if not torch_installed():
        resolve_precision(None, resolve_device(device))


def run_in(torch: Any, layers: Any, x: Any, precision: str) -> Any:
    """``layers(x)`` in ``precision``: bfloat16 via autocast, so weights stay float32; int8
    layers (``int8.Int8Layers``) take float32 and quantize inside."""
    if precision == "int8":
        return layers(x)
    if precision == "bfloat16":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return layers(x)
    return layers(x.to(getattr(torch, precision)))
