"""``benchmarks/speed.py``'s decode-only part runs and reports what it measured."""
from __future__ import annotations

import json

from PIL import Image

from .conftest import _photo


def test_decode_only_part_times_auto_against_numpy_in_fresh_processes(tmp_path):
    from benchmarks import speed

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(96, 128, seed=8)).save(data / "a.png")
    out = tmp_path / "speed.json"
    assert speed.main(["--data", str(data), "--parts", "decodeonly", "--decode-only-sizes", "0.02",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    result = report["decodeonly"]
    (row,) = result["rows"]
    assert abs(row["mp"] - 0.02) < 0.002 and result["torch_from_pixels"] > row["mp"] * 1e6
    for label in ("auto", "float32"):
        assert row[label]["seconds"] > 0 and row[label]["peak_rss_mib"] > 0
    assert row["float32"]["torch_imported"] is False  # below the threshold float32 stays in numpy
    # auto takes bfloat16 or int8 where the CPU runs them (in torch), float32 (numpy) elsewhere
    assert row["auto"]["torch_imported"] is (report["environment"]["cpu_decode_precision"] != "float32")
    assert "A decode-only process" in out.with_suffix(".md").read_text()
