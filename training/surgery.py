"""Network surgery between training phases: residual blocks grown, latent channels or a checkerboard
context added, the per-quality gains moved to another λ table. Each returns (or leaves) a network that
computes what the one before did, so training goes on from there (``fit --grow``, ``--grow-analysis``,
``--widen``, ``--context``, ``--lambdas``).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from pillow_cnnz.model import CnnzNet, Config

NEW_LOG2_SCALE = -1.0  # log2 σ that new latent channels start with (``widened``)


def slots(blocks: tuple[int, ...], resample: str) -> list[tuple]:
    """What each module of a transform is (its resampling conv, GDN and residual blocks per
    level, then the last conv), so grown networks can take over a smaller one's weights."""
    found: list[tuple] = []
    for level, count in enumerate(blocks):
        found += [(resample, level), ("gdn", level)] + [("res", level, k) for k in range(count)]
    return found + [("last",)]


def grown_key(key: str, old: Config, new: Config) -> str:
    """Name that ``old``'s parameter ``key`` takes in a network grown to ``new``."""
    layouts = {"g_a": lambda c: slots(c.ares, "down"), "g_s": lambda c: slots(c.res, "up")}
    prefix, _, tail = key.partition(".")
    if prefix not in layouts:
        return key
    index, rest = tail.split(".", 1)
    where = {slot: i for i, slot in enumerate(layouts[prefix](new))}
    return f"{prefix}.{where[layouts[prefix](old)[int(index)]]}.{rest}"


def grown(net: CnnzNet, res: tuple[int, int, int] | None = None,
          ares: tuple[int, int, int] | None = None) -> CnnzNet:
    """A copy of ``net`` with ``res`` residual blocks after each synthesis level and ``ares`` after
    each analysis level (at least as many as now; None keeps them): the new blocks start as the
    identity, so the copy computes the same function."""
    res = net.config.res if res is None else tuple(res)
    ares = net.config.ares if ares is None else tuple(ares)
    for old, new in ((net.config.res, res), (net.config.ares, ares)):
        if len(new) != len(old) or any(n < o for n, o in zip(new, old)):
            msg = f"can only add residual blocks: {old} -> {new}"
            raise ValueError(msg)
    out = CnnzNet(replace(net.config, res=res, ares=ares))
    state = out.state_dict()
    for key, value in net.state_dict().items():
        state[grown_key(key, net.config, out.config)] = value.clone()
    out.load_state_dict(state)
    return out


@torch.no_grad()
def _carried(net: CnnzNet, config: Config, fill) -> dict[str, torch.Tensor]:
    """The state of a network of ``config`` that takes over ``net``'s parameters: those of the same
    shape as they are, the others as ``fill(key, old value, new-shaped tensor)`` returns them."""
    old, state = net.state_dict(), CnnzNet(config).state_dict()
    for key, target in state.items():
        value = old[key]
        target.copy_(value if target.shape == value.shape else fill(key, value, target))
    return state


def _widened_index(old: int, new: int, old_m: int, new_m: int) -> torch.Tensor:
    """Where an axis of ``old`` entries lands in a network widened from ``old_m`` to ``new_m``
    latents: unchanged axes map to themselves, latent axes keep their first entries, and
    (μ, log2 σ) axes of 2·M keep each half at the start of its new half."""
    if old == new:
        return torch.arange(old)
    if (old, new) == (old_m, new_m):
        return torch.arange(old_m)
    if (old, new) == (2 * old_m, 2 * new_m):
        return torch.cat([torch.arange(old_m), torch.arange(old_m) + new_m])
    msg = f"an axis of {old} entries cannot widen to {new} ({old_m} -> {new_m} latents)"
    raise ValueError(msg)


def widened(net: CnnzNet, latents: int, scale: float = 0.1) -> CnnzNet:
    """A copy of ``net`` with ``latents`` latent channels (more than now), for when the latent
    count may bind at high rates (``experiments/ceiling`` measures whether it does).

    Everything that reads the new channels (synthesis, hyper analysis, context) starts at
    zero, so the copy reconstructs what it did before. Their analysis filters start random
    at ``scale`` of the old filters' spread (zero filters would get no gradient), their
    gains at the old channels' mean per quality, and the entropy model gives them μ 0 and
    σ = 2^NEW_LOG2_SCALE: a zero costs about half a bit and a ±1 about three bits, so
    training can move them either way, and it decides what they carry.
    """
    old_m = net.config.M
    if latents <= old_m:
        msg = f"can only add latent channels: {old_m} -> {latents}"
        raise ValueError(msg)

    def fill(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(target)
        index = [_widened_index(o, n, old_m, latents) for o, n in zip(value.shape, target.shape)]
        out[torch.meshgrid(*index, indexing="ij")] = value
        return out

    config = replace(net.config, M=latents)
    old, state = net.state_dict(), _carried(net, config, fill)
    with torch.no_grad():
        new = slice(old_m, latents)
        last = f"g_a.{len(net.g_a) - 1}.weight"
        state[last][new] = torch.randn_like(state[last][new]) * old[last].std() * scale
        for name in ("log2_gain", "log2_inv_gain"):
            state[name][:, new] = state[name][:, :old_m].mean(1, keepdim=True)
        bias = f"h_s.{len(net.h_s) - 1}.bias"
        state[bias][latents + old_m :] = NEW_LOG2_SCALE
    out = CnnzNet(config)
    out.load_state_dict(state)
    return out


def with_context(net: CnnzNet, channels: int) -> CnnzNet:
    """A copy of ``net`` with a checkerboard context of ``channels`` (none before): its last layer
    starts at zero, so the copy computes the same function."""
    if net.config.ctx:
        msg = f"the network already has a context ({net.config.ctx} channels)"
        raise ValueError(msg)
    out = CnnzNet(replace(net.config, ctx=channels))
    state = out.state_dict()
    state.update({k: v.clone() for k, v in net.state_dict().items()})
    out.load_state_dict(state)
    return out


@torch.no_grad()
def remap_gains(net: CnnzNet, old_lambdas: tuple[float, ...], new_lambdas: tuple[float, ...]) -> None:
    """Re-express ``net``'s per-level gain rows, trained for ``old_lambdas``, at ``new_lambdas`` (in
    place): each row is interpolated linearly in log λ (extrapolated along the end segments), so
    the network starts where it was and only the labels of the levels move."""
    old = torch.tensor([math.log2(v) for v in old_lambdas], dtype=torch.float64)
    for param in (net.log2_gain, net.log2_inv_gain):
        rows = param.detach().double()
        new_rows = []
        for target in (math.log2(v) for v in new_lambdas):
            i = int(torch.searchsorted(old, torch.tensor(target, dtype=torch.float64)).clamp(1, len(old) - 1))
            w = (target - old[i - 1]) / (old[i] - old[i - 1])
            new_rows.append(rows[i - 1] * (1 - w) + rows[i] * w)
        param.copy_(torch.stack(new_rows).to(param.dtype))


def widened_synthesis(net: CnnzNet, dec: tuple[int, int, int], scale: float = 0.1) -> CnnzNet:
    """A copy of ``net`` whose synthesis levels are ``dec`` channels wide (at least as wide as now).

    The old channels keep their weights and read nothing from the new ones (those weights start
    at zero; GDN's cross terms at ``GDN.OFF_DIAGONAL_ROOT`` squared, so they can still learn), so
    the copy reconstructs what it did before up to those cross terms. The new channels' own
    filters start random at ``scale`` of the old filters' spread: zero filters would get no
    gradient. Sub-pixel convolutions keep their old output rows first, as the pixel shuffle
    groups a channel's rows together.
    """
    dec = tuple(dec)
    old_dec = net.config.dec
    if len(dec) != len(old_dec) or any(n < o for n, o in zip(dec, old_dec)):
        msg = f"can only widen the synthesis: {old_dec} -> {dec}"
        raise ValueError(msg)

    def fill(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if key.endswith("gamma_sqrt"):
            out = torch.full_like(target, GDN_CROSS_ROOT)
            out.diagonal().copy_(value.diagonal().mean())
        elif key.endswith("beta_sqrt"):
            out = torch.full_like(target, value.mean())
        else:
            out = torch.randn_like(target) * value.std() * scale
            if target.ndim == 4 and target.shape[1] > value.shape[1]:
                out[: value.shape[0], value.shape[1] :] = 0  # old outputs never read new inputs
        out[tuple(slice(0, n) for n in value.shape)] = value
        return out

    config = replace(net.config, dec=dec)
    out = CnnzNet(config)
    out.load_state_dict(_carried(net, config, fill))
    return out


GDN_CROSS_ROOT = 0.01  # as GDN.OFF_DIAGONAL_ROOT: a root at exactly 0 would never get a gradient
