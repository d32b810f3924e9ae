"""benchmarks/rd.py --reuse merges earlier results only where they still describe the same thing."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from benchmarks import rd  # noqa: E402


def test_reuse_merges_cnnz_results_only_of_the_installed_weights(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (176, 192, 3), dtype=np.uint8)).save(data / "a.png")
    out = tmp_path / "out"
    out.mkdir()

    def earlier(name: str, model: str) -> None:
        doc = {"name": name, "description": "earlier run",
               "results": {"bpp": [0.5, 1.0], "psnr-rgb": [30.0, 33.0], "ms-ssim-rgb": [0.9, 0.95],
                           "encoding_time": [0.1, 0.1], "decoding_time": [0.1, 0.1], "quality": [1.0, 8.0]},
               "meta": {"dataset": str(data), "n_images": 1, "images": ["a.png"], "model": model}}
        (out / f"{name}.json").write_text(json.dumps(doc))

    earlier("cnnz", rd.cnnz_model_id())
    earlier("cnnz-m6", "0123456789abcdef")
    assert rd.main(["--data", str(data), "--out", str(out), "--codecs", "jpeg", "--jpeg-qualities", "30,60,90",
                    "--reuse"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["codecs"]) == {"jpeg", "cnnz"}
    assert f"not reusing {out / 'cnnz-m6.json'}: made with other weights" in capsys.readouterr().err
