"""``hyperfit``: the hyperprior is refitted on whole images while everything else stays put."""
from __future__ import annotations

import pytest

from .conftest import _photo as photo

torch = pytest.importorskip("torch")


def _checkpoint(tmp_path):
    from pillow_cnnz.model import CnnzNet, Config

    torch.manual_seed(0)
    net = CnnzNet(Config())
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 5, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu", "data": "d", "val": "v"},
                "history": [{"from_step": 0, "lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu"}]}, ckpt)
    return ckpt, net.state_dict()


def _images(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(photo(96, 128, seed=i)).save(data / f"{i}.png")
    return data


def test_hyperfit_changes_only_the_hyperprior_and_shortens_the_code(tmp_path):
    from training import __main__ as train_cli

    ckpt, before = _checkpoint(tmp_path)
    data = _images(tmp_path)
    out = tmp_path / "fitted.pt"
    assert train_cli.main(["hyperfit", str(ckpt), str(out), "--data", str(data), "--val", str(data),
                           "--steps", "40", "--batch", "2", "--lr", "1e-3", "--val-every", "40",
                           "--threads", "1"]) == 0
    state = torch.load(out, weights_only=False)
    after = state["model"]
    for key, value in before.items():
        same = torch.equal(value, after[key])
        assert same != key.startswith(("h_a.", "h_s.", "density_z.")), key
    fit = state["hyperfit"]
    first, last = fit["validation_bpp"][0], fit["validation_bpp"][-1]
    assert fit["steps"] == 40 and last["step"] == 40
    # the objective is the mean code length over qualities (from a random model one level may rise)
    assert sum(last[q] for q in ("q1", "q4", "q8")) < 0.95 * sum(first[q] for q in ("q1", "q4", "q8"))
    assert state["step"] == 5 and "optimizer" not in state  # the main loop's place is kept


def test_code_bits_counts_the_rounded_symbols_the_codec_codes():
    from pillow_cnnz.model import CnnzNet, Config
    from training import hyperfit

    torch.manual_seed(0)
    net = CnnzNet(Config()).eval()
    y0 = torch.randn(1, net.config.M, 8, 8) * 4
    bits = hyperfit.code_bits(net, y0, 4.0)
    net.g_a = torch.nn.Identity()  # feed y0 straight in: the model's eval pass rounds as the codec does
    with torch.no_grad():
        same = net(y0, torch.tensor([4.0]))["bits"]
    assert bits.item() == pytest.approx(same.item(), rel=1e-5)


def test_model_card_gives_the_hyperfit_command_and_its_effect(tmp_path):
    from training import export
    from training.card import model_card, phases_page

    ckpt, _ = _checkpoint(tmp_path)
    state = torch.load(ckpt, weights_only=False)
    state["hyperfit"] = {"steps": 600, "batch": 8, "lr": 1e-4, "density_lr": 1e-3, "data": "d", "val": "v",
                         "seconds": 500, "threads": 2,
                         "validation_bpp": [{"step": 0, "q1": 0.4, "q4": 0.8, "q8": 2.4},
                                            {"step": 600, "q1": 0.2, "q4": 0.5, "q8": 1.4}]}
    torch.save(state, ckpt)
    info = export.export(ckpt, tmp_path / "w", "t", "test")
    assert info["meta"]["training"]["hyperfit"]["steps"] == 600
    page = phases_page(info)
    assert "python -m training hyperfit runs/main/last.pt runs/main/hyperfit.pt --steps 600 --batch 8" in page
    assert "export runs/main/hyperfit.pt --out weights" in page
    assert "q4 0.800 → 0.500" in " ".join(page.split())
    assert "the hyperprior alone on whole images, 600 steps" in " ".join(model_card(info, tmp_path).split())


def test_symbol_bits_are_the_real_code_length_and_learn_through_the_bins_not_the_rounding():
    from pillow_cnnz.model import gaussian_likelihood
    from training import hyperfit

    y = torch.tensor([0.4, 1.3, -2.45, 0.0])
    mu = torch.zeros(4, requires_grad=True)
    scale = torch.full((4,), 0.8, requires_grad=True)
    bits = hyperfit.symbol_bits(y, mu, scale).sum()
    real = -torch.log2(gaussian_likelihood(torch.round(y), scale.detach())).sum()
    assert bits.item() == pytest.approx(real.item(), rel=1e-6)
    bits.backward()
    # Each symbol's bin is centred on its ŷ = round(y − μ) + μ: a Gaussian centred on μ already
    # gives it the most mass when ŷ = μ (symbol 0), so that μ has nothing to gain. Straight-through
    # rounding would pull it toward y (0.4) instead, the bias that made hyperfit's codes longer.
    assert mu.grad[0].item() == pytest.approx(0.0, abs=1e-6)
    assert mu.grad[3].item() == pytest.approx(0.0, abs=1e-6)
    assert mu.grad[1].item() < 0 and mu.grad[2].item() > 0  # toward the bins of symbols 1 and -2
    assert scale.grad is not None and torch.all(torch.isfinite(scale.grad))
