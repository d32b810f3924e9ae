"""One file, one answer: ``auto`` precision and the synthesis' backend follow the hardware, the
settings and the image, never what the process happens to have imported or done before."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pillow_cnnz import codec, precision, synthesis, weights

from .conftest import _photo as photo

ROOT = Path(__file__).resolve().parents[1]
AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
BF16 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})  # AMD Zen 4: bfloat16, no AMX
VNNI = frozenset({"avx512f", "avx512_vnni"})
PLAIN = frozenset({"avx2", "fma"})


def _run(code: str, env: dict[str, str]) -> list[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CNNZ_")}, **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("imported", [True, False])
def test_auto_precision_follows_the_hardware_not_what_is_imported(monkeypatch, imported):
    if imported:
        monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    else:
        monkeypatch.delitem(sys.modules, "torch", raising=False)  # a process that has only decoded so far
    monkeypatch.setattr(precision, "int8_supported", lambda: True)
    monkeypatch.setattr(precision, "torch_installed", lambda: True)
    expected = {AMX: ("bfloat16", "bfloat16"), BF16: ("bfloat16", "int8"), VNNI: ("int8", "int8"),
                PLAIN: ("float32", "float32")}
    for flags, (synthesis, analysis) in expected.items():
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert precision.resolve_precision("auto", "cpu", int8=True) == synthesis
        assert precision.resolve_precision("auto", "cpu", analysis=True, int8=True) == analysis
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(precision, "torch_installed", lambda: False)  # bfloat16 and int8 need torch
    assert precision.resolve_precision("auto", "cpu", int8=True) == "float32"
    with pytest.raises(OSError, match=r"precision='bfloat16' needs torch.*pillow-cnnz\[torch\]"):
        precision.resolve_precision("bfloat16", "cpu")  # asked for without torch: the install command


def test_a_float32_synthesis_picks_numpy_or_torch_by_the_image_size_even_with_torch_imported(monkeypatch):
    pytest.importorskip("torch")
    used = []
    monkeypatch.setattr(synthesis, "numpy_synthesis", lambda *args: used.append("numpy") or _fake_run)
    monkeypatch.setattr(synthesis, "torch_synthesis", lambda *args: used.append("torch") or _fake_run)
    monkeypatch.setattr(synthesis, "TORCH_FROM_PIXELS", 64 * 96)
    for height, width in [(64, 95), (64, 96)]:
        header = codec.container.Header.unpack(codec.container.serialize(
            width, height, "RGB", 4.0, weights.load().model_id, {"LATZ": b"z", "LATY": b"y"}))
        synthesis.synthesize_batch([header], [np.zeros((weights.load().meta["config"]["M"], 4, 8), np.float32)],
                               "cpu", "float32")
    assert used == ["numpy", "torch"]


def _fake_run(window: np.ndarray, core: tuple) -> np.ndarray:
    (r0, r1), (c0, c1) = core
    return np.zeros((window.shape[0], r1 - r0, c1 - c0, 3), np.uint8)


def test_a_file_decodes_to_the_same_pixels_before_and_after_the_first_encode(tmp_path):
    """In a process that decodes, then encodes (importing torch), then decodes again, on this
    machine's own hardware and the default settings."""
    path = tmp_path / "x.cnnz"
    path.write_bytes(codec.encode(photo(64, 96, seed=8), "RGB", 5.0))
    out = _run(f"""
        import numpy as np, sys
        import pillow_cnnz
        first = pillow_cnnz.decode({str(path)!r})
        pillow_cnnz.encode(np.zeros((16, 16, 3), np.uint8))
        assert "torch" in sys.modules
        print(np.array_equal(first, pillow_cnnz.decode({str(path)!r})))
    """, {"CNNZ_DEVICE": "cpu"})
    assert out == ["True"]


def test_a_decode_only_process_imports_torch_only_where_its_answer_needs_it(tmp_path):
    """On a CPU whose ``auto`` is float32, a small image decodes in numpy and a large one
    (``TORCH_FROM_PIXELS``) in torch; on one whose ``auto`` runs in torch, every image does.
    ``CNNZ_PRECISION=float32`` keeps a small image in numpy on any CPU."""
    from PIL import Image

    path = tmp_path / "small.cnnz"
    Image.fromarray(photo(64, 96, seed=5)).save(path, quality=4)

    def torch_imported(threshold: int, flags: frozenset[str], env: dict[str, str]) -> str:
        (line,) = _run(f"""
            import sys
            from PIL import Image
            import pillow_cnnz
            from pillow_cnnz import precision, synthesis
            synthesis.TORCH_FROM_PIXELS = {threshold}
            precision.cpu_flags = lambda: frozenset({sorted(flags)!r})
            Image.open({str(path)!r}).load()
            print("torch" in sys.modules)
        """, {"CNNZ_DEVICE": "cpu", **env})
        return line

    assert torch_imported(64 * 96 + 1, PLAIN, {}) == "False"
    assert torch_imported(64 * 96, PLAIN, {}) == "True"
    assert torch_imported(64 * 96 + 1, AMX, {}) == "True"  # bfloat16, in torch
    assert torch_imported(64 * 96 + 1, AMX, {"CNNZ_PRECISION": "float32"}) == "False"
