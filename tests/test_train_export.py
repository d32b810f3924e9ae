"""Exporting a training checkpoint gives weights the codec loads and codes with."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pillow_cnnz import codec, container, synthesis, weights

from .conftest import _photo as photo


def test_exported_checkpoint_loads_and_round_trips_an_image(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import export
    from training.card import model_card, phases_page

    torch.manual_seed(0)
    net = CnnzNet(Config())
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 3, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu", "data": "d", "val": "v"},
                "validation": [{"step": 3, **{q: {"bpp": 0.5, "psnr": 25.0} for q in ("q1", "q4", "q8")}}]}, ckpt)
    info = export.export(ckpt, tmp_path / "w", "test", "test hardware")
    again = export.export(ckpt, tmp_path / "w2", "test", "test hardware")
    assert again["sha256"] == info["sha256"]  # same checkpoint, same bytes, same model id
    card, page = model_card(info, tmp_path), phases_page(info)
    assert info["model_id"] in card and info["sha256"] in card and "No rate-distortion results" in card
    assert "| 3 | zoo | 0.500 / 25.00 | 0.500 / 25.00 | 0.500 / 25.00 |" in page
    from training import __main__ as train_cli

    assert train_cli.main(["card", "--out", str(tmp_path / "w"), "--results", str(tmp_path)]) == 0
    assert (tmp_path / "w" / "README.md").read_text() == card  # the card from the file equals the export's
    # the page goes beside the weights folder and links to the card there
    assert (tmp_path / "docs" / "training-phases.md").read_text() == phases_page(info, "../w/README.md")

    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path / "w")
    monkeypatch.setattr(weights, "_cache", {})
    model = weights.load()
    assert model.model_id.hex() == info["model_id"]
    assert model.meta["training"]["step"] == 3 and model.meta["training"]["hardware"] == "test hardware"
    stored = {k[4:]: v.dtype for k, v in model.arrays.items() if k.startswith("net/")}
    assert {k for k, d in stored.items() if d == np.float16} == {k for k in stored if k.startswith(("g_a.", "h_a."))}
    assert {d for k, d in stored.items() if not k.startswith(("g_a.", "h_a."))} == {np.dtype(np.float32)}
    loaded = model.net("cpu").state_dict()  # encoder-only weights: float16 values, float32 tensors
    original = net.state_dict()
    assert torch.equal(loaded["g_a.0.weight"], original["g_a.0.weight"].half().float())
    assert torch.equal(loaded["g_s.0.conv.weight"], original["g_s.0.conv.weight"])
    data = codec.encode(photo(64, 80), "RGB", 4.0)
    assert codec.decode(data).shape == (64, 80, 3)


def test_slim_checkpoint_drops_the_optimizer_and_still_resumes(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from training import __main__ as train_cli

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(photo(72, 80, seed=i)).save(data / f"{i}.png")
    common = ["--data", str(data), "--val", str(data), "--batch", "1", "--crop", "64",
              "--threads", "1", "--no-bf16", "--device", "cpu"]
    assert train_cli.main(["fit", "--run", str(tmp_path / "a"), "--steps", "1", *common]) == 0
    full = tmp_path / "a" / "last.pt"
    (tmp_path / "b").mkdir()
    slim = tmp_path / "b" / "last.pt"
    assert train_cli.main(["slim", str(full), str(slim)]) == 0
    from training.loop import read_checkpoint

    state = read_checkpoint(slim)
    assert "optimizer" not in state and state["step"] == 1
    weights = torch.load(full, weights_only=False)["model"]
    assert state["model"].keys() == weights.keys()
    assert all(torch.equal(state["model"][k], v) and state["model"][k].dtype == v.dtype for k, v in weights.items())
    assert [v["step"] for v in state["validation"]] == [1]  # the last step is validated before saving
    assert slim.stat().st_size < 0.5 * full.stat().st_size

    assert train_cli.main(["fit", "--run", str(tmp_path / "b"), "--steps", "2", "--resume", *common]) == 0
    resumed = torch.load(slim, weights_only=False)
    assert resumed["step"] == 2 and "optimizer" in resumed
    assert resumed["history"][-1]["fresh_optimizer"] is True and resumed["history"][-1]["from_step"] == 1
    assert resumed["history"][-1]["from_slim"] is True
    assert [v["step"] for v in resumed["validation"]] == [1, 2]


def test_fit_builds_a_new_network_to_the_widths_given_and_widens_a_resumed_synthesis(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from training import __main__ as train_cli

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photo(72, 80)).save(data / "0.png")
    common = ["--run", str(tmp_path / "run"), "--data", str(data), "--val", str(data), "--batch", "1",
              "--crop", "64", "--threads", "1", "--no-bf16", "--device", "cpu"]
    assert train_cli.main(["fit", "--steps", "1", "--width", "16", "--dec", "16,12,8", *common]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["config"]["N"] == 16 and tuple(state["config"]["dec"]) == (16, 12, 8)
    assert train_cli.main(["fit", "--steps", "2", "--resume", "--dec", "16,12,12", *common]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert tuple(state["config"]["dec"]) == (16, 12, 12) and state["step"] == 2
    assert state["history"][-1]["widened_synthesis"] == [16, 12, 12] and state["history"][-1]["fresh_optimizer"]
    with pytest.raises(SystemExit, match="new network's encoder width"):
        train_cli.main(["fit", "--steps", "3", "--resume", "--width", "32", *common])


def test_time_budget_stops_training_early_with_the_last_step_validated_and_saved(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from training import __main__ as train_cli

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photo(72, 80)).save(data / "0.png")
    # A budget of ~0 minutes: the first step is past the deadline, so the run stops there
    # instead of going on to --steps 1000, and the step it stopped at is not lost.
    assert train_cli.main(["fit", "--run", str(tmp_path / "a"), "--steps", "1000", "--max-minutes", "1e-9",
                           "--save-every", "500", "--val-every", "500", "--data", str(data), "--val", str(data),
                           "--batch", "1", "--crop", "64", "--threads", "1", "--no-bf16", "--device", "cpu"]) == 0
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert state["step"] == 1 and [v["step"] for v in state["validation"]] == [1]


def test_validation_of_older_checkpoints_is_recovered_from_the_run_log(tmp_path):
    pytest.importorskip("torch")
    import json

    from training.loop import logged_validation

    val = {q: {"bpp": 1.0, "psnr": 30.0} for q in ("q1", "q4", "q8")}
    lines = [{"step": 2, "loss": 1.0}, {"step": 2, "val": val}, {"step": 5, "val": val}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert logged_validation(tmp_path / "log.jsonl", 4) == [{"step": 2, **val}]
    assert logged_validation(tmp_path / "missing.jsonl", 4) == []


def test_optimizer_state_of_an_older_grouping_follows_each_parameter():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training.loop import group_members, param_groups, regroup

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8)))
    for count in (1, 2):
        old = torch.optim.Adam([{"params": g} for g in group_members(net, count)], lr=1e-3)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        old.step()
        new = torch.optim.Adam(param_groups(net), lr=1e-3)
        new.load_state_dict(regroup(old.state_dict(), net))
        assert [len(g["params"]) for g in new.param_groups] == [len(g) for g in group_members(net)]
        for p in net.parameters():
            assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])


def test_the_committed_model_card_and_phase_page_are_what_the_generator_writes(monkeypatch):
    pytest.importorskip("torch")
    from training import card

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the card names the results files relative to the repository root
    info = card.default_weights(Path("weights"))
    text = card.model_card(info, Path(card.RESULTS))
    assert len(text.splitlines()) <= 100
    hint = "run `python -m training card` and commit weights/README.md and docs/training-phases.md"
    assert (root / "weights" / "README.md").read_text() == text, hint
    assert (root / "docs" / "training-phases.md").read_text() == card.phases_page(info), hint
    for heading in ("## Files", "## Architecture", "## Training", "## Metrics", "## Limitations", "## License"):
        assert f"\n{heading}\n" in text
    manifest = json.loads((root / "weights" / "manifest.json").read_text())
    entry = manifest["models"][manifest["default"]]
    for sha in (entry["sha256"], entry["int8"]["sha256"], entry["int8"]["rounded"]["sha256"]):
        assert f"`{sha}`" in text
    summary = json.loads((root / "benchmarks" / "results" / "kodak-int8" / "summary.json").read_text())
    bd = summary["codecs"]["cnnz"]["bd_rate_psnr_vs_jpeg"]
    assert f"| Kodak, 24 images | {bd:+.1f} %".replace("-", "−") in text


def test_model_card_quotes_only_results_made_with_its_weights(tmp_path):
    pytest.importorskip("torch")
    from training.card import model_card

    meta = {"config": {}, "scale": {"count": 64}, "lambdas": [0.0004, 0.25], "parameters": 10,
            "decoder_parameters": 5, "training": {"step": 10, "seconds": 3600, "hardware": "h", "args": {"val": "v"},
                                                  "history": [{"from_step": 0, "lr": 1e-4, "batch": 1, "crop": 64,
                                                               "device": "cpu"}]}}
    info = {"model_id": "ab" * 8, "sha256": "ab" * 32, "bytes": 1000, "meta": meta, "file": "m.npz"}
    folder = tmp_path / "kodak"
    folder.mkdir()
    cnnz = {"bpp_range": [0.1, 1.2], "psnr_at_bpp": {"0.25": 30.0, "0.5": 33.0, "1.0": 35.5},
            "bd_rate_psnr_vs_jpeg": -40.04, "bd_rate_msssim_vs_jpeg": -30.0, "bd_rate_psnr_vs_avif": 1.26,
            "bd_rate_msssim_vs_avif": 9.0, "mean_decoding_time": 0.25}
    avif = {"psnr_at_bpp": {"1.0": 36.0}, "mean_decoding_time": 0.004}
    summary = {"meta": {"dataset": "data/kodak", "n_images": 24, "platform": "linux, 2 cpus"},
               "codecs": {"cnnz": cnnz, "avif": avif}}
    (folder / "summary.json").write_text(json.dumps(summary))
    points = {"bpp": [0.1, 0.4, 1.2], "psnr-rgb": [25.0, 31.0, 36.2], "quality": [1, 4, 8]}
    (folder / "cnnz.json").write_text(json.dumps({"results": points, "meta": {"model": info["model_id"]}}))
    card = flat(model_card(info, tmp_path, ["kodak"]))
    assert "| Kodak, 24 images | −40.0 % / −30.0 % | +1.3 % | 30.00 / 33.00 / 35.50 dB | 0.100 … 1.200 |" in card
    assert "| Kodak bpp / PSNR | 0.100 / 25.00 dB | 0.400 / 31.00 dB | 1.200 / 36.20 dB |" in card
    assert "+9.0 % in MS-SSIM" in card and "stops at 36.2 dB" in card and "0.5 dB under AVIF at 1 bpp" in card
    assert "250 ms a Kodak image" in card and "4 ms for AVIF" in card
    (folder / "cnnz.json").write_text(json.dumps({"results": points, "meta": {"model": "cd" * 8}}))
    card = model_card(info, tmp_path, ["kodak"])  # results of other weights: not quoted
    assert "No rate-distortion results" in card and "Kodak, 24 images" not in card


def test_model_card_merges_resumes_that_changed_no_setting():
    from training.card import phases

    a = {"lr": 1e-4, "batch": 8}
    history = [{"from_step": 0, **a}, {"from_step": 5, **a}, {"from_step": 9, **a, "lr": 3e-5}, {"from_step": 12, **a}]
    assert [h["from_step"] for h in phases(history)] == [0, 9, 12]


def test_a_phase_on_another_data_folder_is_its_own_phase_and_older_ones_count_as_the_default():
    from training.card import phases
    from training.data import RECORDED_DATA
    from training.loop import DEFAULT_DATA

    a = {"lr": 1e-5, "batch": 4}
    history = [{"from_step": 0, **a}, {"from_step": 5, **a, "data": DEFAULT_DATA},
               {"from_step": 6, **a, "data": RECORDED_DATA},
               {"from_step": 7, **a, "data": "subset"}, {"from_step": 9, **a, "data": DEFAULT_DATA}]
    assert [h["from_step"] for h in phases(history)] == [0, 7, 9]


def test_subset_is_a_seeded_pick_under_the_byte_budget(tmp_path):
    from training.data import subset

    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"a{i:02}.jpg").write_bytes(bytes(100 + i))
    (src / "b.png").write_bytes(bytes(10))
    picked = subset(src, tmp_path / "one", "a*.jpg", 700)
    assert picked == subset(src, tmp_path / "two", "a*.jpg", 700)  # same seed, same pick
    assert picked != sorted(picked) or len(picked) < 2  # shuffled, not the first names
    assert sum(f.stat().st_size for f in picked) <= 700 < sum(f.stat().st_size for f in picked) + 120
    assert sorted(f.name for f in (tmp_path / "one").iterdir()) == sorted(f.name for f in picked)
    assert all(f.suffix == ".jpg" for f in picked)


def test_remapped_gains_keep_each_lambda_where_it_was():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import LAMBDA_TABLES, CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8)))
    with torch.no_grad():
        net.log2_gain.add_(torch.randn_like(net.log2_gain))
    zoo, wide = LAMBDA_TABLES["zoo"], LAMBDA_TABLES["wide"]
    # quality 8 is λ 0.18 in both tables; zoo's quality 4 (0.013) is wide's quality 5 (0.013127)
    before_top, before_mid = net.gains(torch.tensor([8.0]))[0].clone(), net.gains(torch.tensor([4.0]))[0].clone()
    surgery.remap_gains(net, zoo, wide)
    assert torch.allclose(net.gains(torch.tensor([8.0]))[0], before_top)
    assert torch.allclose(net.gains(torch.tensor([5.0]))[0], before_mid, rtol=0.05)  # λ 1 % apart
    moved = net.log2_gain.detach().clone()
    surgery.remap_gains(net, wide, wide)
    assert torch.allclose(net.log2_gain, moved)


def frozen_fit_args(tmp_path) -> list[str]:
    """``fit`` arguments for one tiny training image with every learning rate 0, run in ``tmp_path/r``:
    only what a resume itself does (remapping, growing) changes the network."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photo(72, 80)).save(data / "0.png")
    return ["--data", str(data), "--val", str(data), "--batch", "1", "--crop", "64", "--run", str(tmp_path / "r"),
            "--threads", "1", "--no-bf16", "--device", "cpu", "--lr", "0", "--density-lr", "0", "--gain-lr", "0"]


def flat(text: str) -> str:
    """Generated prose with its line breaks undone (the card wraps its paragraphs)."""
    return " ".join(text.split())


def test_resuming_on_another_lambda_table_remaps_once_and_records_it(tmp_path):
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import LAMBDA_TABLES
    from training import __main__ as train_cli
    from training.card import phases_page
    from training.export import export

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "1", "--lambdas", "zoo", *common]) == 0
    first = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert tuple(first["lambdas"]) == LAMBDA_TABLES["zoo"]
    assert train_cli.main(["fit", "--steps", "2", "--resume", "--lambdas", "wide", "--rate-balance", "0.5", *common]) == 0
    second = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert tuple(second["lambdas"]) == LAMBDA_TABLES["wide"]
    assert second["history"][-1]["remapped_gains"] is True and second["history"][-1]["rate_balance"] == 0.5
    # lr 0: only the remap moved the gains, and quality 8 is λ 0.18 on both tables
    assert torch.allclose(second["model"]["log2_gain"][-1], first["model"]["log2_gain"][-1])
    assert not torch.allclose(second["model"]["log2_gain"][0], first["model"]["log2_gain"][0])
    assert train_cli.main(["fit", "--steps", "3", "--resume", "--lambdas", "wide", "--rate-balance", "0.5", *common]) == 0
    third = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert "remapped_gains" not in third["history"][-1]
    assert torch.equal(third["model"]["log2_gain"], second["model"]["log2_gain"])

    info = export(tmp_path / "r" / "last.pt", tmp_path / "w", "test", "test hardware")
    assert info["meta"]["lambdas"] == list(LAMBDA_TABLES["wide"])
    page = phases_page(info)
    assert "--lambdas zoo --rate-balance 0 " in page and "--lambdas wide --rate-balance 0.5 " in page
    assert "| 1 | zoo |" in page and "| 2 | wide |" in page  # each validation row names its λ table
    # the phases trained on this test's own folder, not the default one: the commands say so
    assert page.count(f"--data {tmp_path / 'data'}") == page.count("fit --run runs/main --steps") > 0
    assert f"| `{tmp_path / 'data'}` |" in page


def test_rate_balance_weighs_low_qualities_up_and_high_ones_down():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import LAMBDAS, lambda_for
    from training.loop import sample_weight

    lam = lambda_for(torch.tensor([1.0, 4.5, 8.0]))
    assert torch.allclose(lam[[0, 2]], torch.tensor([LAMBDAS[0], LAMBDAS[-1]]))
    w = sample_weight(lam, 0.5, LAMBDAS)
    ends = (LAMBDAS[-1] / LAMBDAS[0]) ** 0.25
    assert torch.allclose(w, torch.tensor([ends, 1.0, 1 / ends]), rtol=1e-4)  # the table is rounded to 6 decimals
    assert torch.equal(sample_weight(lam, 0.0, LAMBDAS), torch.ones(3))


def test_grown_network_computes_what_it_did_before_and_only_grows():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8))).eval()
    grown = surgery.grown(net, (1, 2, 0)).eval()
    assert grown.config.res == (1, 2, 0) and len(grown.g_s) == len(net.g_s) + 3
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([3.5])
    with torch.no_grad():
        a, b = net(x, q), grown(x, q)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["bits"], b["bits"])
    with pytest.raises(ValueError, match="only add"):
        surgery.grown(grown, (0, 2, 0))


def test_widened_synthesis_reconstructs_about_what_it_did_and_only_widens():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8), res=(1, 1, 1))).eval()
    wide = surgery.widened_synthesis(net, (8, 12, 16)).eval()
    assert wide.config.dec == (8, 12, 16) and wide.g_s[-1].conv.weight.shape[1] == 16
    y = torch.randn(2, 8, 4, 4) * 3
    with torch.no_grad():
        a, b = net.g_s(y), wide.g_s(y)
        # only the GDN cross terms (roots of 0.01) read the new channels
        assert (a - b).abs().max() < 1e-2 * a.abs().max()
        level = wide.g_s[3].conv.weight  # the sub-pixel convolution into the 12-wide level
        assert torch.equal(level[: 4 * 8], net.g_s[3].conv.weight)
        assert torch.count_nonzero(wide.g_s[-1].conv.weight[:, 8:]) == 0
        assert torch.count_nonzero(level[4 * 8 :]) > 0  # new filters start random: they get a gradient
    with pytest.raises(ValueError, match="only widen"):
        surgery.widened_synthesis(wide, (8, 8, 16))


def test_grown_analysis_encodes_what_it_did_before_and_keeps_the_old_weights_in_place():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8), res=(0, 1, 0))).eval()
    grown = surgery.grown(net, ares=(0, 2, 1)).eval()
    assert grown.config.ares == (0, 2, 1) and grown.config.res == (0, 1, 0)
    assert len(grown.g_a) == len(net.g_a) + 3 and len(grown.g_s) == len(net.g_s)
    assert surgery.grown_key("g_a.4.weight", net.config, grown.config) == "g_a.6.weight"
    assert surgery.grown_key("g_a.6.weight", net.config, grown.config) == "g_a.9.weight"
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([5.25])
    with torch.no_grad():
        a, b = net(x, q), grown(x, q)
        assert torch.equal(net.g_a(x), grown.g_a(x))
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["bits"], b["bits"])
    with pytest.raises(ValueError, match="only add"):
        surgery.grown(grown, ares=(0, 1, 1))


def test_analysis_macs_and_radius_count_what_the_layers_compute():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config

    config = Config(N=8, M=16, Nz=4, Nh=8, dec=(8, 8, 8), ares=(1, 0, 2))
    net = CnnzNet(config).eval()
    macs, hooks = [], []
    for m in net.g_a.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda m, i, o: macs.append(o[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        y = net.g_a(x)
    gdn = sum(8 * 8 * 128 * 128 / 4**k for k in (1, 2, 3))  # each GDN is a 1x1 convolution of its width
    assert (sum(macs) + gdn) / (128 * 128) == pytest.approx(config.analysis_macs())
    assert Config().analysis_macs() == pytest.approx(24_324)
    # the radius: a changed pixel moves latents up to this far away, and no farther
    x2 = x.clone()
    x2[:, :, 64, 64] += 1.0
    with torch.no_grad():
        changed = (net.g_a(x2) - y).abs().amax((0, 1)) > 0
    rows = changed.any(1).nonzero().flatten()
    reach = max(64 / 16 - rows.min().item(), rows.max().item() + 1 - 64 / 16)
    assert reach <= config.analysis_radius() + 1
    assert Config().analysis_radius() == 2 / 16 + 2 / 8 + 2 / 4 + 1


def test_growing_keeps_adam_moments_of_every_old_parameter_and_none_for_new_blocks():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery
    from training.loop import grown_adam, param_groups

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8), res=(0, 1, 0)))
    opt = torch.optim.Adam(param_groups(net), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    grown = surgery.grown(net, (1, 2, 0))
    new = torch.optim.Adam(param_groups(grown), lr=1e-3)
    new.load_state_dict(grown_adam(opt.state_dict(), net, grown))
    before = dict(net.named_parameters())
    shared = {"g_s.0.conv.weight": "g_s.0.conv.weight", "g_s.4.conv1.weight": "g_s.5.conv1.weight",
              "g_s.6.gamma_sqrt": "g_s.8.gamma_sqrt", "g_s.7.conv.weight": "g_s.9.conv.weight", "log2_gain": "log2_gain"}
    after = dict(grown.named_parameters())
    assert len(new.state) == len(opt.state) == len(before)
    for old_name, new_name in shared.items():
        assert torch.equal(new.state[after[new_name]]["exp_avg_sq"], opt.state[before[old_name]]["exp_avg_sq"])
    fresh = [n for n, p in grown.named_parameters() if p not in new.state]
    assert sorted(fresh) == sorted(f"g_s.{i}.{w}" for i in (2, 6) for w in
                                   ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"))
    for p in grown.parameters():
        p.grad = torch.randn_like(p)
    new.step()  # the new blocks' state is created on the first step


def test_widened_network_reconstructs_as_before_and_gives_old_latents_their_probabilities():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8), ctx=8)).eval()
    for p in net.context.c3.parameters():  # a trained context: not the zero it starts as
        torch.nn.init.normal_(p, std=0.1)
    wide = surgery.widened(net, 12).eval()
    assert wide.config.M == 12 and wide.g_a[-1].out_channels == 12
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([3.5])
    with torch.no_grad():
        a, b = net(x, q), wide(x, q)
        assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-6)
        assert torch.equal(a["bits_z"], b["bits_z"])  # the hyper analysis does not read the new channels yet
        y = net.g_a(x) * net.gains(q)[0]
        y_wide = wide.g_a(x) * wide.gains(q)[0]
        assert torch.allclose(y, y_wide[:, :8], atol=1e-6) and y_wide[:, 8:].abs().max() > 0
        z = torch.round(net.h_a(y))
        mu, log2_scale = net.entropy_parameters(net.h_s(z), y)
        mu_w, log2_scale_w = wide.entropy_parameters(wide.h_s(z), y_wide)
    assert torch.allclose(mu, mu_w[:, :8], atol=1e-6) and torch.allclose(log2_scale, log2_scale_w[:, :8], atol=1e-6)
    assert torch.all(mu_w[:, 8:] == 0) and torch.all(log2_scale_w[:, 8:] == -1)
    assert 0 < b["bits"].item() - a["bits"].item() < 0.6 * 4 * 16 * 1.1  # the new zeros cost about half a bit each
    with pytest.raises(ValueError, match="only add"):
        surgery.widened(wide, 12)


def test_resuming_with_widen_starts_adam_afresh_and_the_card_reproduces_it(tmp_path):
    torch = pytest.importorskip("torch")
    from training import __main__ as train_cli
    from training.card import model_card, phases_page
    from training.export import export

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "1", *common]) == 0
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=False)["config"]["M"]
    assert train_cli.main(["fit", "--steps", "2", "--resume", "--widen", str(before + 4), *common]) == 0
    wide = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert wide["config"]["M"] == before + 4 and wide["model"]["log2_gain"].shape[1] == before + 4
    assert wide["history"][-1]["widened"] == before + 4 and wide["history"][-1]["fresh_optimizer"]
    info = export(tmp_path / "r" / "last.pt", tmp_path / "w", "test", "test hardware")
    page = phases_page(info)
    assert f"--resume --widen {before + 4}" in page and "python -m training slim" not in page
    assert f"latents widened to {before + 4}" in flat(model_card(info, tmp_path))


def test_synthesis_macs_counts_what_the_layers_compute():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.layers import GDN
    from pillow_cnnz.model import CnnzNet, Config

    config = Config(res=(1, 1, 0))
    net = CnnzNet(config).eval()
    macs = []

    def count(module, inputs, output):
        c_in = inputs[0].shape[1]
        if isinstance(module, torch.nn.Conv2d):
            macs.append(output.numel() * c_in * module.kernel_size[0] * module.kernel_size[1])
        else:  # GDN: a 1x1 convolution of |x|
            macs.append(output.numel() * c_in)

    for m in net.g_s.modules():
        if isinstance(m, (torch.nn.Conv2d, GDN)):
            m.register_forward_hook(count)
    with torch.no_grad():
        out = net.g_s(torch.zeros(1, config.M, 2, 3))
    assert sum(macs) / (out.shape[2] * out.shape[3]) == pytest.approx(config.synthesis_macs())
    assert Config().synthesis_macs() == pytest.approx(14_800)


def test_resuming_with_grow_adds_blocks_once_and_the_card_reproduces_it(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from training import __main__ as train_cli
    from training.card import model_card, phases_page
    from training.export import export

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "1", *common]) == 0
    assert train_cli.main(["fit", "--steps", "2", "--resume", "--grow", "0,1,0", *common]) == 0
    grown = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert tuple(grown["config"]["res"]) == (0, 1, 0) and "g_s.4.conv1.weight" in grown["model"]
    assert grown["history"][-1]["grown"] == [0, 1, 0] and "fresh_optimizer" not in grown["history"][-1]
    assert train_cli.main(["fit", "--steps", "3", "--resume", "--grow", "0,1,0", *common]) == 0
    again = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert "grown" not in again["history"][-1] and "fresh_optimizer" not in again["history"][-1]

    info = export(tmp_path / "r" / "last.pt", tmp_path / "w", "test", "test hardware")
    page, card = phases_page(info), flat(model_card(info, tmp_path))
    assert "--resume --grow 0,1,0" in page and "residual blocks 0 / 1 / 0 after the" in card
    assert "python -m training slim" not in page  # no slim checkpoint in this history, and the grow kept Adam
    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path / "w")
    monkeypatch.setattr(weights, "_cache", {})
    rgb = photo(64, 80)
    data_bytes = codec.encode(rgb, "RGB", 6.0)
    numpy_pixels = codec.decode(data_bytes)  # float32 on a CPU: the numpy synthesis
    hdr, payloads = container.parse(data_bytes)
    torch_pixels = synthesis.decode_rgb(hdr, payloads["LATZ"], payloads["LATY"], precision="float64")
    assert numpy_pixels.shape == (64, 80, 3) and abs(numpy_pixels.astype(int) - torch_pixels).max() <= 1


def test_encoder_only_phase_moves_the_encoder_and_leaves_every_decoder_parameter_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    from training import __main__ as train_cli
    from training.card import phases_page
    from training.export import export
    from pillow_cnnz.model import ENCODER_PARAMETERS

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "1", *common]) == 0
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert train_cli.main(["fit", "--steps", "3", "--resume", "--encoder-only", *common,
                           "--lr", "1e-3", "--density-lr", "1e-3", "--gain-lr", "1e-3"]) == 0
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    moved = {k for k, v in before["model"].items() if not torch.equal(v, after["model"][k])}
    assert moved and all(k.startswith(ENCODER_PARAMETERS) for k in moved)
    assert any(k.startswith("g_a.") for k in moved) and "log2_inv_gain" not in moved
    assert after["history"][-1]["encoder_only"] is True
    page = phases_page(export(tmp_path / "r" / "last.pt", tmp_path / "w", "test", "test hardware"))
    assert "--resume --encoder-only" in page and "(encoder only)" in page


def test_resuming_on_another_lambda_table_keeps_the_transforms_adam_moments_and_drops_the_gains(tmp_path):
    torch = pytest.importorskip("torch")
    from training import __main__ as train_cli

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "2", "--lambdas", "wide3", *common]) == 0
    assert train_cli.main(["fit", "--steps", "3", "--resume", "--lambdas", "wide4", *common]) == 0
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert state["history"][-1]["remapped_gains"] is True and not state["history"][-1].get("fresh_optimizer")
    opt = state["optimizer"]
    steps = {i: int(s["step"]) for i, s in opt["state"].items()}
    gains = set(opt["param_groups"][-1]["params"])
    assert gains and all(steps[i] == 1 for i in gains)  # started afresh at the remap
    assert all(n == 3 for i, n in steps.items() if i not in gains)  # carried through it


class _Payload:
    """Unpickling this runs code: what a hostile checkpoint would carry."""

    def __reduce__(self):
        return (print, ("a hostile checkpoint ran code",))


def test_read_checkpoint_refuses_a_checkpoint_that_would_run_code(tmp_path):
    import pickle

    import torch

    from training.loop import read_checkpoint

    path = tmp_path / "hostile.pt"
    torch.save({"config": {}, "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(path)
    torch.save({"config": {}, "step": 3, "rng": torch.get_rng_state()}, path)
    assert read_checkpoint(path)["step"] == 3
