"""The studies in ``experiments/`` still import against today's package, and the cheap ones
still run end to end on a tiny image."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from .conftest import _photo

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDIES = sorted(p.name for p in EXPERIMENTS.iterdir() if (p / f"{p.name}.py").is_file())


def _study(name: str):
    return importlib.import_module(f"experiments.{name}.{name}")


def test_every_study_folder_has_its_script_and_notes_saying_question_command_result_and_decision():
    assert len(STUDIES) >= 9
    for name in STUDIES:
        notes = (EXPERIMENTS / name / "NOTES.md").read_text()
        assert all(f"**{part}" in notes for part in ("Question", "Command", "Result", "Decision")), name


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_imports_against_todays_package(name):
    pytest.importorskip("torch")
    pytest.importorskip("scipy")
    assert callable(_study(name).main)


def test_synthesis_budget_times_each_candidate_against_the_exact_stage(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    synthesis_budget = _study("synthesis_budget")
    image = tmp_path / "a.png"
    Image.fromarray(_photo(64, 96, seed=3)).save(image)
    out = tmp_path / "budget.json"
    monkeypatch.setattr(sys, "argv", ["synthesis_budget.py", "--image", str(image), "--candidates",
                                      "96.64.48/2.4.2,64.32.16/1.1.0", "--repeat", "1", "--out", str(out)])
    assert synthesis_budget.main() == 0
    result = json.loads(out.read_text())
    shipped, small = result["candidates"]
    assert shipped["synthesis_macs"] == pytest.approx(60016) and small["res"] == [1, 1, 0]
    assert small["synthesis_macs"] < shipped["synthesis_macs"] / 5
    for row in (shipped, small):
        assert row["decode_estimate_ms_float32"] == pytest.approx(row["g_s_ms_float32"] + result["exact_stage_ms"])


def test_exact_stage_times_each_part_within_the_whole(tmp_path, monkeypatch):
    exact_stage = _study("exact_stage")
    Image.fromarray(_photo(64, 96, seed=4)).save(tmp_path / "a.png")
    out = tmp_path / "exact.json"
    monkeypatch.setattr(sys, "argv", ["exact_stage.py", "--data", str(tmp_path), "--repeat", "1", "--out", str(out)])
    assert exact_stage.main() == 0
    ms = json.loads(out.read_text())["ms_median"]
    assert set(ms) == {"exact stage", *exact_stage.PARTS}
    assert all(0 < ms[part] <= ms["exact stage"] for part in exact_stage.PARTS)  # each part ran, inside the whole
    assert ms["hyper products"] <= ms["hyper network"] and ms["context products"] <= ms["context"]
    assert ms["ans pulls"] + ms["hyper network"] + ms["context"] <= ms["exact stage"]


def test_int8_synthesis_reports_every_variant(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from pillow_cnnz import int8

    if not int8.supported():
        pytest.skip("no oneDNN int8 convolutions in this torch")
    int8_synthesis = _study("int8_synthesis")
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(96, 128, seed=21)).save(data / "a.png")
    out = tmp_path / "int8_synthesis.json"
    monkeypatch.setattr(sys, "argv", ["int8_synthesis.py", "--data", str(data), "--train", str(data), "--calibration", "1",
                                      "--qualities", "4", "--repeat", "1", "--out", str(out)])
    assert int8_synthesis.main() == 0
    result = json.loads(out.read_text())
    upsamplings = [f"upsampling {k}, {how}" for k in result["shipped_upsamplings"] for how in ("nearest", "gptq")]
    assert set(result["delta_db"]) == {"level 0", "level 1", "level 2", "level 0 two-pass", "level 1 two-pass",
                                       "level 2 two-pass", "all levels", "outer levels", "blocks, nearest",
                                       "blocks, gptq", *upsamplings, "shipped", "every conv one pass x4",
                                       "every conv one pass x1"}
    assert set(result["g_s_ms_median"]) == {"float32", "shipped", "blocks, gptq", "outer levels", "all levels",
                                            "every conv one pass"}
    assert result["shipped_blocks"] == result["levels"][0] + result["levels"][1] + result["levels"][2]
    assert result["shipped_two_pass"] == sorted(result["levels"][1] + result["shipped_upsamplings"])
