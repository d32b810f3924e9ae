"""The checkerboard context: exact on both sides, bounded to its band, and a no-op when added."""
from __future__ import annotations

import numpy as np
import pytest

from pillow_cnnz import codec, container, context, hyper, latents, weights

from .conftest import _photo as photo


def random_context(m: int, c: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def layer(cout: int, cin: int, k: int) -> dict:
        return {"weight": rng.integers(-300, 300, (cout, cin, k, k)).astype(np.float64),
                "bias": rng.integers(-5000, 5000, cout).astype(np.float64), "shift": 10}

    return {"ctx": layer(c, m, 3), "mix": layer(c, 2 * m, 1), "c2": layer(c, c, 1), "c3": layer(2 * m, c, 1)}


def test_context_refines_only_non_anchors_and_reads_only_anchors():
    rng = np.random.default_rng(1)
    m, rows, cols = 4, 6, 70
    layers = random_context(m, 8)
    out = rng.integers(-2000, 2000, (2 * m, rows, cols)).astype(np.float64)
    symbols = rng.integers(-5, 6, (m, rows, cols))
    refined = context.refine(layers, out, symbols)
    mask = context.anchors(rows, cols)
    assert np.array_equal(refined[:, mask], out[:, mask]) and not np.array_equal(refined[:, ~mask], out[:, ~mask])
    other = np.where(mask, symbols, symbols + 3)  # non-anchor symbols are not decoded yet: never read
    assert np.array_equal(context.refine(layers, out, other), refined)
    assert np.array_equal(context.refine(layers, out, symbols, chunk=7), refined)  # chunks change nothing
    assert np.array_equal(refined, np.round(refined))
    again = out.copy()
    assert context.refine(layers, again, symbols, inplace=True) is again and np.array_equal(again, refined)


def test_context_at_the_non_anchors_equals_plain_integer_convolutions_over_the_band():
    rng = np.random.default_rng(2)
    m, rows, cols = 4, 5, 9
    layers = random_context(m, 6, seed=3)
    out = rng.integers(-2000, 2000, (2 * m, rows, cols)).astype(np.float64)
    symbols = rng.integers(-5, 6, (m, rows, cols))
    mask = context.anchors(rows, cols)
    y_anchor = np.where(mask, symbols * 2.0**hyper.FRAC_BITS + out[:m], 0)

    def conv(name, x):
        return hyper.conv(x, layers[name]["weight"], layers[name]["bias"], layers[name]["shift"])

    h = np.maximum(conv("c2", np.maximum(conv("ctx", y_anchor) + conv("mix", out), 0)), 0)
    want = np.where(mask, out, out + conv("c3", h))
    assert np.array_equal(context.refine(layers, out, symbols), want)


def test_integer_context_follows_the_float_one_it_was_exported_from():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.layers import CheckerboardContext, anchor_mask
    from training.export import integer_conv

    torch.manual_seed(0)
    m, c = 6, 8
    net = CheckerboardContext(m, c)
    torch.nn.init.normal_(net.c3.weight, std=0.1)
    layers = {name: integer_conv(getattr(net, name)) for name in context.NAMES}
    mu = torch.randn(1, m, 8, 10)
    hyper_out = torch.cat([mu, torch.randn(1, m, 8, 10)], 1)
    symbols = torch.randint(-4, 5, (1, m, 8, 10)).float()
    mask = anchor_mask(8, 10)
    with torch.no_grad():
        want = (hyper_out + net((symbols + mu) * mask, hyper_out) * (1 - mask))[0].numpy()
    fixed = np.round(hyper_out[0].double().numpy() * 2**hyper.FRAC_BITS)
    got = context.refine(layers, fixed, symbols[0].numpy().astype(np.int64)) * 2.0**-hyper.FRAC_BITS
    # μ in the integer path is the fixed-point one, rounded: a few 1/256 steps of error at most
    assert np.abs(got - want).max() < 0.05


def test_network_given_a_context_computes_what_it_did_before():
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import surgery

    torch.manual_seed(0)
    net = CnnzNet(Config(N=8, M=8, Nz=4, Nh=8, dec=(8, 8, 8))).eval()
    ctx = surgery.with_context(net, 16).eval()
    assert ctx.config.ctx == 16 and net.context is None
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([3.5])
    with torch.no_grad():
        a, b = net(x, q), ctx(x, q)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["bits"], b["bits"])
    with pytest.raises(ValueError, match="already has a context"):
        surgery.with_context(ctx, 16)


def test_file_coded_with_a_context_decodes_to_the_same_latents_and_bands_stay_apart(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from pillow_cnnz.model import CnnzNet, Config
    from training import export

    torch.manual_seed(0)
    net = CnnzNet(Config(ctx=32))
    torch.nn.init.normal_(net.context.c3.weight, std=0.05)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "config": net.config.to_dict(), "step": 1, "seconds": 1.0,
                "args": {"lr": 1e-4, "batch": 1, "crop": 64, "device": "cpu", "data": "d", "val": "v"}}, ckpt)
    info = export.export(ckpt, tmp_path / "w", "test", "test hardware")
    assert info["meta"]["context"]["channels"] == 32 and info["file"] == "test.npz"
    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path / "w")
    monkeypatch.setattr(weights, "_cache", {})
    model = weights.load()
    assert model.context_layers is not None
    rgb = photo(1100, 96)  # two bands of latent rows
    _, z, sym, idx, data = codec.encode_latents(rgb, 5.0)
    hdr, payloads = container.parse(data)
    z_dec, sym_dec, _ = latents.decode_latents(hdr, payloads["LATZ"], payloads["LATY"])
    assert np.array_equal(z, z_dec) and np.array_equal(sym, sym_dec)
    plain = np.concatenate([hyper.means_and_indexes(hyper.hyper_band(model.hyper_layers, z, a, b),
                                                    model.meta["scale"])[1] for a, b in hyper.bands(z.shape[1])], 1)
    mask = np.concatenate([context.anchors((b - a) * 4, z.shape[2] * 4) for a, b in hyper.bands(z.shape[1])])
    assert np.array_equal(idx[:, mask], plain[:, mask]) and not np.array_equal(idx[:, ~mask], plain[:, ~mask])
    assert codec.decode(data).shape == (1100, 96, 3)


def test_resuming_with_context_adds_it_once_keeps_adam_and_the_card_reproduces_it(tmp_path):
    torch = pytest.importorskip("torch")
    from training import __main__ as train_cli
    from training.card import model_card, phases_page
    from training.export import export

    from .test_train_export import flat, frozen_fit_args

    common = frozen_fit_args(tmp_path)
    assert train_cli.main(["fit", "--steps", "1", *common]) == 0
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert train_cli.main(["fit", "--steps", "2", "--resume", "--context", "8", *common]) == 0
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert after["config"]["ctx"] == 8 and "context.ctx.weight" in after["model"]
    assert after["history"][-1]["context"] == 8 and "fresh_optimizer" not in after["history"][-1]
    old_moments = sum(len(s) > 0 for s in before["optimizer"]["state"].values())
    assert sum(len(s) > 0 for s in after["optimizer"]["state"].values()) > old_moments  # old kept, new added
    assert train_cli.main(["fit", "--steps", "3", "--resume", "--context", "8", *common]) == 0
    again = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert "context" not in again["history"][-1]
    info = export(tmp_path / "r" / "last.pt", tmp_path / "w", "test", "test hardware")
    assert "--resume --context 8" in phases_page(info)
    card = flat(model_card(info, tmp_path))
    assert "checkerboard context (He et al. 2021, 8 channels)" in card and "the context added as no change" in card


@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 8, 4), (3, 5, 6), (2, 4, 7), (1, 1, 1)])
def test_split_and_merge_give_the_checkerboard_halves_in_the_coders_order(shape):
    x = np.arange(np.prod(shape)).reshape(shape)
    mask = context.anchors(*shape[1:])
    for part in (True, False):
        half = context.split(x, part)
        assert np.array_equal(half, x[:, mask if part else ~mask])
        y = np.zeros_like(x)
        context.merge(y, part, half)
        assert np.array_equal(y[:, mask if part else ~mask], half)
        assert not y[:, ~mask if part else mask].any()
