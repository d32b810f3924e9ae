"""``train distill``: a smaller synthesis trained for a frozen analysis and entropy model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from pillow_cnnz.model import CnnzNet, Config  # noqa: E402
from training import distill, export  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.card import model_card, phases_page  # noqa: E402
from training.loop import read_checkpoint  # noqa: E402

TEACHER = Config(res=(1, 2, 1))


def _teacher(tmp_path):
    torch.manual_seed(0)
    net = CnnzNet(TEACHER)
    with torch.no_grad():
        for p in net.g_s.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # the grown blocks' second convs start at zero: make them differ
    path = tmp_path / "teacher.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 7, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu", "data": "d", "val": "v"}}, path)
    return net, path


def _images(folder, count=2):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_student_starts_from_the_teachers_layers_in_the_same_place(tmp_path):
    teacher, _ = _teacher(tmp_path)
    student = CnnzNet(distill.student_config(TEACHER, TEACHER.dec, (1, 1, 0)))
    assert distill.adopt_teacher(student, teacher) == []
    t, s = teacher.state_dict(), student.state_dict()
    # teacher g_s: up0 gdn0 res0.0 | up1 gdn1 res1.0 res1.1 | up2 gdn2 res2.0 | last; student drops res1.1 and res2.0
    for s_index, t_index in {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 7, 7: 8, 8: 10}.items():
        for name, value in student.g_s[s_index].state_dict().items():
            assert torch.equal(value, teacher.g_s[t_index].state_dict()[name])
    assert all(torch.equal(s[k], t[k]) for k in s if not k.startswith("g_s."))
    narrow = CnnzNet(distill.student_config(TEACHER, (96, 64, 32), (1, 1, 0)))
    fresh = distill.adopt_teacher(narrow, teacher)
    assert fresh and all(k.startswith(("g_s.6.", "g_s.7.", "g_s.8.")) for k in fresh)  # the finest level, narrowed


def test_distill_trains_only_the_synthesis_resumes_and_exports(tmp_path, monkeypatch):
    teacher, path = _teacher(tmp_path)
    data = _images(tmp_path / "data")
    run = tmp_path / "run"
    args = ["distill", "--teacher", str(path), "--run", str(run), "--res", "1,1,0", "--data", str(data), "--val", str(data),
            "--batch", "2", "--crop", "64", "--val-every", "2", "--lr", "1e-3"]
    assert main([*args, "--steps", "2"]) == 0
    first = read_checkpoint(run / "last.pt")
    assert first["distill"]["step"] == 2 and list(first["config"]["res"]) == [1, 1, 0]
    assert main([*args, "--steps", "4", "--resume", "--lr", "5e-4"]) == 0
    state = read_checkpoint(run / "last.pt")
    assert state["distill"]["step"] == 4 and state["distill"]["teacher_step"] == 7
    assert state["distill"]["optimizer"]["param_groups"][0]["lr"] == 5e-4  # a resumed run takes its own rate
    assert state["history"][-1]["rate_balance"] == 0.5  # the loss weighs qualities as the shipped weights trained
    t = teacher.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in state["model"].items() if not k.startswith("g_s."))  # frozen
    assert not torch.equal(state["model"]["g_s.0.conv.weight"], t["g_s.0.conv.weight"])  # trained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "teacher_val" in log[0] and [e["step"] for e in log if "val" in e] == [0, 2, 4]
    with pytest.raises(SystemExit, match="not"):  # another student shape cannot resume this run
        main([*args, "--res", "1,2,0", "--steps", "6", "--resume"])
    info = export.export(run / "last.pt", tmp_path / "w", "student", "test hardware")
    assert info["model_id"] and list(info["meta"]["config"]["res"]) == [1, 1, 0]


@pytest.mark.parametrize("res", ["1,1", "a,b,c", "-1,0,0"])
def test_distill_refuses_a_student_it_cannot_build(tmp_path, res):
    _, path = _teacher(tmp_path)
    with pytest.raises(SystemExit, match="three integers"):
        main(["distill", "--teacher", str(path), "--run", str(tmp_path / "run"), f"--res={res}"])


def test_synthesis_only_export_changes_only_the_synthesis_and_the_old_model_s_files_decode_with_it(tmp_path, monkeypatch):
    from pillow_cnnz import codec, container, weights

    _, path = _teacher(tmp_path)
    out = tmp_path / "w"
    base = export.export(path, out, "m", "test hardware")  # the teacher as the installed default
    with np.load(out / "m.npz") as npz:
        before = {k: npz[k] for k in npz.files}
    monkeypatch.setattr(weights, "weights_dir", lambda: out)
    monkeypatch.setattr(weights, "_cache", {})
    img = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    old_file = codec.encode(img, "RGB", 4.0)
    assert container.parse(old_file)[0].model_id.hex() == base["model_id"]
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(path), "--run", str(run), "--res", ",".join(map(str, TEACHER.res)),
                 "--data", str(_images(tmp_path / "data")), "--val", str(tmp_path / "data"), "--batch", "2",
                 "--crop", "64", "--val-every", "2", "--lr", "1e-3", "--steps", "2"]) == 0
    info = export.export_synthesis(run / "last.pt", out, "m")
    with np.load(out / "m.npz") as npz:
        after = {k: npz[k] for k in npz.files}
    changed = {k for k in after if k != "meta" and not np.array_equal(after[k], before[k])}
    assert changed and all(k.startswith("net/g_s.") for k in changed) and set(after) == set(before)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["default"] == info["model_id"] != base["model_id"]
    assert manifest["models"][base["model_id"]] == {"decoded_by": info["model_id"]}
    assert info["meta"]["decodes"] == [base["model_id"]] and info["meta"]["training"]["synthesis"]["steps"] == 2
    card, page = (" ".join(text.split()) for text in (model_card(info, tmp_path), phases_page(info)))
    assert f"Files written with model `{base['model_id']}`" in card and "decode with these weights" in card
    assert f"files of model `{base['model_id']}` (the same latents and entropy model) decode with this one" in page
    assert "python -m training distill --teacher runs/main/last.pt --run runs/distill --steps 2 " in page
    assert "export runs/distill/last.pt --out weights --synthesis-only" in page
    monkeypatch.setattr(weights, "_cache", {})
    assert weights.load(bytes.fromhex(base["model_id"])) is weights.load()  # the old id loads the new model
    assert codec.decode(old_file).shape == img.shape
    assert container.parse(codec.encode(img, "RGB", 4.0))[0].model_id.hex() == info["model_id"]
    # another analysis is not a synthesis update
    net, state = export.load_checkpoint(run / "last.pt")
    with torch.no_grad():
        net.g_a[0].weight.mul_(1.5)
    torch.save({**state, "model": net.state_dict()}, tmp_path / "changed.pt")
    with pytest.raises(SystemExit, match="only the synthesis may change"):
        export.export_synthesis(tmp_path / "changed.pt", out, "m2")


def test_a_model_decoded_by_one_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    from pillow_cnnz import weights

    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"models": {"00" * 8: {"decoded_by": "11" * 8}}, "default": "00" * 8}))
    monkeypatch.setattr(weights, "weights_dir", lambda: out)
    monkeypatch.setattr(weights, "_cache", {})
    with pytest.raises(weights.WeightsError, match="not installed"):
        weights.load()
