"""``python -m training heads``: trains candidate heads with the model frozen, resumes, and exports
the chosen ones (from one run or several) as a heads file the decoder then uses."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import weights

from .conftest import _photo as photo

torch = pytest.importorskip("torch")


@pytest.fixture
def folders(tmp_path):
    for name, seeds in (("train", (1, 2, 3)), ("val", (4,))):
        (tmp_path / name).mkdir()
        for seed in seeds:
            Image.fromarray(photo(96, 128, seed=seed)).save(tmp_path / name / f"{seed}.png")
    return tmp_path


def _train(folders, run, candidates: str, hidden: int, steps: int) -> None:
    from training import __main__ as train_cli

    assert train_cli.main(["heads", "--run", str(run), "--candidates", candidates, "--hidden", str(hidden),
                           "--data", str(folders / "train"), "--val", str(folders / "val"), "--crops", "4",
                           "--crop", "64", "--batch", "2", "--steps", str(steps), "--val-every", "2"]) == 0


def test_heads_train_resume_and_export_into_a_file_the_decoder_uses(folders, tmp_path, monkeypatch):
    from training import __main__ as train_cli

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    _train(folders, run_a, "2:11,8:3", 8, 2)
    _train(folders, run_a, "2:11,8:3", 8, 4)  # resumes at step 2
    saved = torch.load(run_a / "heads.pt", weights_only=True)
    assert saved["step"] == 4
    log = [json.loads(line) for line in (run_a / "log.jsonl").read_text().splitlines()]
    vals = [entry for entry in log if "val" in entry]
    assert [e["step"] for e in vals] == [2, 4] and set(vals[-1]["val"]) == {"2:11", "8:3"}
    assert set(vals[-1]["val"]["2:11"]) == {"q1", "q4", "q8"}
    _train(folders, run_b, "4:7", 4, 2)
    with pytest.raises(SystemExit, match="holds heads"):
        _train(folders, run_a, "4:7", 8, 2)  # another candidate set in the same folder

    out = tmp_path / "weights"
    shutil.copytree(weights.weights_dir(), out)
    monkeypatch.setattr(weights, "weights_dir", lambda: out)
    monkeypatch.setattr(weights, "_cache", {})
    assert train_cli.main(["heads", "--run", str(run_a), "--weights", str(out),
                           "--export", f"2:11,4:7@{run_b},8:3"]) == 0
    with pytest.raises(SystemExit, match="has no head 2:9"):
        train_cli.main(["heads", "--run", str(run_a), "--weights", str(out), "--export", "2:9"])
    model = weights.load()
    shipped = model.heads()
    assert {s: (h.tap, h.arrays["0.weight"].shape[0]) for s, h in shipped.items()} == {2: (11, 8), 4: (7, 4), 8: (3, 8)}
    data = pillow_cnnz.encode(photo(64, 96, seed=9), 4)
    assert pillow_cnnz.decode(data, scale=4).shape == (16, 24, 3)
    expected = saved["heads"]["2:11.0.weight"].numpy()
    assert np.array_equal(shipped[2].arrays["0.weight"], expected)


def test_a_new_run_starts_from_another_runs_heads(folders, tmp_path):
    from training import __main__ as train_cli

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    _train(folders, run_a, "2:11,8:3", 8, 2)
    base = ["heads", "--run", str(run_b), "--hidden", "8", "--data", str(folders / "train"), "--val",
            str(folders / "val"), "--crops", "4", "--crop", "64", "--batch", "2", "--val-every", "1"]
    assert train_cli.main([*base, "--candidates", "8:3", "--init", str(run_a), "--steps", "1", "--lr", "0"]) == 0
    before = torch.load(run_a / "heads.pt", weights_only=True)["heads"]
    after = torch.load(run_b / "heads.pt", weights_only=True)
    assert after["step"] == 1 and after["candidates"] == "8:3"
    assert all(torch.equal(v, before[f"8:3.{k.split('.', 1)[1]}"]) for k, v in after["heads"].items())
    shutil.rmtree(run_b)
    with pytest.raises(SystemExit, match="has no head 4:7"):
        train_cli.main([*base, "--candidates", "4:7", "--init", str(run_a), "--steps", "1"])
    with pytest.raises(SystemExit, match="8 wide"):
        train_cli.main([*base[:4], "4", *base[5:], "--candidates", "8:3", "--init", str(run_a), "--steps", "1"])
