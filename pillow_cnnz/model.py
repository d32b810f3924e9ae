"""The CNNZ network: analysis / synthesis transforms with a mean-scale hyperprior.

Data flow (one model for every quality; Cui et al. 2021 gain units)::

    x ─ g_a ─ y ─ ×gain(q) ─ y' ─ h_a ─ z ─ round ─ ẑ ─ h_s ─ (μ, log2 σ)
                               │                              │
                               └── round(y' − μ) ── symbols ──┘ (tables indexed by σ, measured at export)
    x̂ ─ g_s ─ ŷ = (symbols + μ) × inv_gain(q)

With a context (``Config.ctx``), the non-anchor half of the latents gets (μ, log2 σ)
refined from the rounded anchors around it (``layers.CheckerboardContext``).
``h_s`` and the context are trained in float here; at export they are turned into integer
networks (``pillow_cnnz.hyper``, ``pillow_cnnz.context``) so the decoder reproduces the
encoder's probabilities exactly on any device. ``g_s`` is small on purpose (15-39k multiply-adds per pixel as it grew,
``Config.synthesis_macs``): channels shrink toward full resolution, upsampling is
sub-pixel, and residual blocks (``Config.res``) add depth only where it pays.

References: Ballé et al. 2018 (hyperprior), Minnen et al. 2018 (mean-scale),
Minnen & Singh 2020 (straight-through rounding for the synthesis input).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .factorized import FactorizedDensity
from .layers import GDN, CheckerboardContext, ResBlock, SubPixelConv, anchor_mask, conv

# Rate-distortion trade-off of each integer quality (loss = bpp + λ·255²·MSE). "wide5", the
# default since step 325,000: geometric from 0.0004 to 0.25, because training on "wide4"
# (0.0004 to 0.24, from step 288,500) to step 325,000 left quality 8 at 1.495 bpp on Kodak;
# "wide4" came about because "wide3" (0.0004 to 0.22,
# from step 226,000) left quality 8 at 1.47 bpp on Kodak. With 224 latents "wide2"
# (0.0004 to 0.2, used from step 145,000) left quality 8 at 1.46 bpp on Kodak, short of 1.5
# ("wide", 0.0004 to 0.18, used from step 55,000, had left it at 1.49). "zoo": CompressAI's
# zoo values, used before; its quality 1 still took 0.26 bpp. :meth:`CnnzNet.remap_gains` moves a network from one table to another.
LAMBDA_TABLES = {
    "zoo": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "wide": tuple(round(0.0004 * (0.18 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide2": tuple(round(0.0004 * (0.2 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide3": tuple(round(0.0004 * (0.22 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide4": tuple(round(0.0004 * (0.24 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide5": tuple(round(0.0004 * (0.25 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide6": tuple(round(0.0004 * (0.5 / 0.0004) ** (k / 7), 6) for k in range(8)),
}
LAMBDAS = LAMBDA_TABLES["wide5"]
QUALITY_MIN, QUALITY_MAX = 1.0, float(len(LAMBDAS))
# What only the encoder runs: the decoder reads ŷ through h_s, the context, the density of ẑ,
# log2_inv_gain and g_s, never these. The two transforms are stored in float16 (train.export);
# with the gains y is scaled by, they are all ``fit --encoder-only`` trains.
ENCODER_TRANSFORMS = ("g_a.", "h_a.")
ENCODER_PARAMETERS = (*ENCODER_TRANSFORMS, "log2_gain")
SCALE_MIN = 0.11
NEW_LOG2_SCALE = -1.0  # log2 σ that new latent channels start with (CnnzNet.widened)


@dataclass(frozen=True)
class Config:
    N: int = 96  # encoder width
    M: int = 160  # latent channels
    Nz: int = 64  # hyper-latent channels
    Nh: int = 96  # hyper width
    dec: tuple[int, int, int] = (96, 64, 48)  # synthesis widths, coarse to fine
    res: tuple[int, int, int] = (0, 0, 0)  # residual blocks after each synthesis level (CnnzNet.grown)
    ctx: int = 0  # width of the checkerboard context (0: none; CnnzNet.with_context)
    ares: tuple[int, int, int] = (0, 0, 0)  # residual blocks after each analysis level, fine to coarse (CnnzNet.grown)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The config of a checkpoint or weights file (JSON lists back to tuples; fields it lacks,
        such as ``res`` before residual blocks existed, keep their defaults)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def synthesis_macs(self) -> float:
        """Multiply-adds per output pixel of ``g_s`` (convolutions and GDN; biases not counted)."""
        macs, cin, area = 0.0, self.M, 1 / 256  # latent pixels per output pixel
        for width, blocks in zip(self.dec, self.res):
            macs += cin * 9 * 4 * width * area  # sub-pixel conv, at the coarser level
            area *= 4
            macs += width * width * area * (1 + 18 * blocks)  # GDN, then 2 3x3 convs a block
            cin = width
        return macs + cin * 9 * 12 * area

    def analysis_macs(self) -> float:
        """Multiply-adds per input pixel of ``g_a`` (what the encoder pays; biases not counted)."""
        macs, cin, area = 0.0, 3, 1 / 4  # outputs of the current level per input pixel
        for blocks in self.ares:
            macs += (cin * 25 + self.N) * self.N * area + self.N * self.N * 18 * blocks * area
            cin, area = self.N, area / 4
        return macs + cin * 25 * self.M * area

    def synthesis_radius(self) -> float:
        """How far, in latents, an output pixel of ``g_s`` sees: the decoder's tiles need at
        least this much halo (``codec.HALO``) to match an untiled decode."""
        radius, scale = 0.0, 1  # output pixels of the current level per latent
        for blocks in self.res:
            radius += 1 / scale  # the sub-pixel 3x3 convolution, at the coarser level
            scale *= 2
            radius += 2 * blocks / scale  # two 3x3 convolutions a block
        return radius + 1 / scale

    def analysis_radius(self) -> float:
        """How far, in latents, a latent of ``g_a`` sees: the encoder's tiles need this much halo
        to match an untiled encode."""
        radius, pixel = 0.0, 1 / 16  # latents per pixel of the current level's input
        for blocks in self.ares:
            radius += 2 * pixel  # the 5x5 stride-2 convolution, on its input's grid
            pixel *= 2
            radius += 2 * blocks * pixel  # two 3x3 convolutions a block, on its output's grid
        return radius + 2 * pixel


def _slots(blocks: tuple[int, ...], resample: str) -> list[tuple]:
    """What each module of a transform is (its resampling conv, GDN and residual blocks per
    level, then the last conv), so grown networks can take over a smaller one's weights."""
    slots: list[tuple] = []
    for level, count in enumerate(blocks):
        slots += [(resample, level), ("gdn", level)] + [("res", level, k) for k in range(count)]
    return slots + [("last",)]


def grown_key(key: str, old: Config, new: Config) -> str:
    """Name that ``old``'s parameter ``key`` takes in a network grown to ``new``."""
    slots = {"g_a": lambda c: _slots(c.ares, "down"), "g_s": lambda c: _slots(c.res, "up")}
    prefix, _, tail = key.partition(".")
    if prefix not in slots:
        return key
    index, rest = tail.split(".", 1)
    where = {slot: i for i, slot in enumerate(slots[prefix](new))}
    return f"{prefix}.{where[slots[prefix](old)[int(index)]]}.{rest}"


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


def round_st(v: torch.Tensor) -> torch.Tensor:
    """round(v) forward, identity backward (straight-through): what the decoder gets, with a gradient."""
    return v + (torch.round(v) - v).detach()


def interp_log2(table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of per-level rows of ``table`` at fractional ``quality`` (1..L)."""
    t = (quality.to(table.dtype) - 1).clamp(0, table.shape[0] - 1)
    lo = t.floor().long().clamp(max=table.shape[0] - 2)
    w = (t - lo).unsqueeze(-1)
    return table[lo] * (1 - w) + table[lo + 1] * w


def lambda_for(quality: torch.Tensor, lambdas: tuple[float, ...] = LAMBDAS) -> torch.Tensor:
    table = torch.tensor([math.log2(v) for v in lambdas], dtype=torch.float32, device=quality.device).unsqueeze(-1)
    return 2 ** interp_log2(table, quality).squeeze(-1)


class CnnzNet(nn.Module):
    def __init__(self, config: Config = Config()) -> None:
        super().__init__()
        N, M, Nz, Nh = config.N, config.M, config.Nz, config.Nh
        d1, d2, d3 = config.dec
        self.config = config
        analysis, cin = [], 3
        for blocks in config.ares:
            analysis += [conv(cin, N), GDN(N)] + [ResBlock(N) for _ in range(blocks)]
            cin = N
        self.g_a = nn.Sequential(*analysis, conv(N, M))
        synthesis, cin = [], M
        for width, blocks in zip((d1, d2, d3), config.res):
            synthesis += [SubPixelConv(cin, width), GDN(width, inverse=True)]
            synthesis += [ResBlock(width) for _ in range(blocks)]
            cin = width
        self.g_s = nn.Sequential(*synthesis, SubPixelConv(cin, 3))
        self.h_a = nn.Sequential(
            conv(M, Nh, 3, 1), nn.ReLU(), conv(Nh, Nh), nn.ReLU(), conv(Nh, Nz)
        )
        # Only Conv2d, ReLU and SubPixelConv: the layers hyper.py knows how to run in integers.
        self.h_s = nn.Sequential(
            conv(Nz, Nh, 3, 1), nn.ReLU(),
            SubPixelConv(Nh, Nh), nn.ReLU(),
            SubPixelConv(Nh, Nh), nn.ReLU(),
            conv(Nh, 2 * M, 1, 1),
        )
        self.density_z = FactorizedDensity(Nz)
        self.context = CheckerboardContext(M, config.ctx) if config.ctx else None
        levels = torch.tensor([0.5 * math.log2(v / LAMBDAS[3]) for v in LAMBDAS])
        self.log2_gain = nn.Parameter(levels.unsqueeze(-1).repeat(1, M))
        self.log2_inv_gain = nn.Parameter(-levels.unsqueeze(-1).repeat(1, M))

    @torch.no_grad()
    def remap_gains(self, old_lambdas: tuple[float, ...], new_lambdas: tuple[float, ...]) -> None:
        """Re-express the per-level gain rows, trained for ``old_lambdas``, at ``new_lambdas``:
        each row is interpolated linearly in log λ (extrapolated along the end segments), so
        the network starts where it was and only the labels of the levels move."""
        old = torch.tensor([math.log2(v) for v in old_lambdas], dtype=torch.float64)
        for param in (self.log2_gain, self.log2_inv_gain):
            rows = param.detach().double()
            new_rows = []
            for target in (math.log2(v) for v in new_lambdas):
                i = int(torch.searchsorted(old, torch.tensor(target, dtype=torch.float64)).clamp(1, len(old) - 1))
                w = (target - old[i - 1]) / (old[i] - old[i - 1])
                new_rows.append(rows[i - 1] * (1 - w) + rows[i] * w)
            param.copy_(torch.stack(new_rows).to(param.dtype))

    def grown(self, res: tuple[int, int, int] | None = None, ares: tuple[int, int, int] | None = None) -> CnnzNet:
        """A copy with ``res`` residual blocks after each synthesis level and ``ares`` after each
        analysis level (at least as many as now; None keeps them): the new blocks start as the
        identity, so the copy computes the same function."""
        res = self.config.res if res is None else tuple(res)
        ares = self.config.ares if ares is None else tuple(ares)
        for old, new in ((self.config.res, res), (self.config.ares, ares)):
            if len(new) != len(old) or any(n < o for n, o in zip(new, old)):
                msg = f"can only add residual blocks: {old} -> {new}"
                raise ValueError(msg)
        net = CnnzNet(replace(self.config, res=res, ares=ares))
        state = net.state_dict()
        for key, value in self.state_dict().items():
            state[grown_key(key, self.config, net.config)] = value.clone()
        net.load_state_dict(state)
        return net

    def widened(self, latents: int, scale: float = 0.1) -> CnnzNet:
        """A copy with ``latents`` latent channels (more than now), for when the latent count
        may bind at high rates (``benchmarks/ceiling.py`` measures whether it does).

        Everything that reads the new channels (synthesis, hyper analysis, context) starts at
        zero, so the copy reconstructs what it did before. Their analysis filters start random
        at ``scale`` of the old filters' spread (zero filters would get no gradient), their
        gains at the old channels' mean per quality, and the entropy model gives them μ 0 and
        σ = 2^NEW_LOG2_SCALE: a zero costs about half a bit and a ±1 about three bits, so
        training can move them either way, and it decides what they carry.
        """
        old_m = self.config.M
        if latents <= old_m:
            msg = f"can only add latent channels: {old_m} -> {latents}"
            raise ValueError(msg)
        net = CnnzNet(replace(self.config, M=latents))
        old, state = self.state_dict(), net.state_dict()
        with torch.no_grad():
            for key, value in old.items():
                target = state[key]
                if target.shape == value.shape:
                    target.copy_(value)
                    continue
                target.zero_()
                index = [_widened_index(o, n, old_m, latents) for o, n in zip(value.shape, target.shape)]
                target[torch.meshgrid(*index, indexing="ij")] = value
            new = slice(old_m, latents)
            last = f"g_a.{len(self.g_a) - 1}.weight"
            state[last][new] = torch.randn_like(state[last][new]) * old[last].std() * scale
            for name in ("log2_gain", "log2_inv_gain"):
                state[name][:, new] = state[name][:, :old_m].mean(1, keepdim=True)
            bias = f"h_s.{len(self.h_s) - 1}.bias"
            state[bias][latents + old_m :] = NEW_LOG2_SCALE
        net.load_state_dict(state)
        return net

    def with_context(self, channels: int) -> CnnzNet:
        """A copy with a checkerboard context of ``channels`` (none before): its last layer
        starts at zero, so the copy computes the same function."""
        if self.config.ctx:
            msg = f"the network already has a context ({self.config.ctx} channels)"
            raise ValueError(msg)
        net = CnnzNet(replace(self.config, ctx=channels))
        state = net.state_dict()
        state.update({k: v.clone() for k, v in self.state_dict().items()})
        net.load_state_dict(state)
        return net

    def entropy_parameters(self, hyper: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log2 σ) of every latent: the hyperprior's, refined by the context at the
        non-anchors from the rounded anchors ``round(y − μ) + μ`` (what the decoder has)."""
        if self.context is not None:
            m = self.config.M
            anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
            mu = hyper[:, :m]
            y_anchor = (round_st(y - mu) + mu) * anchors
            hyper = hyper + self.context(y_anchor, hyper) * (1 - anchors)
        mu, log2_scale = hyper.chunk(2, dim=1)
        return mu, log2_scale

    def gains(self, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (gain, inverse gain), shaped (B, M, 1, 1)."""
        g = 2 ** interp_log2(self.log2_gain, quality)
        ig = 2 ** interp_log2(self.log2_inv_gain, quality)
        return g[..., None, None], ig[..., None, None]

    def forward(self, x: torch.Tensor, quality: torch.Tensor, bf16: bool = False) -> dict[str, torch.Tensor]:
        """Training/eval pass with the noise proxy for the rate: returns x̂ and bits per sample.

        ``bf16`` runs the four transforms under bfloat16 autocast (about 3x faster training
        on CPUs with AMX); rates and likelihoods are always computed in float32.
        """

        def amp():
            return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

        gain, inv_gain = self.gains(quality)
        with amp():
            y = self.g_a(x)
        y = y.float() * gain
        with amp():
            z = self.h_a(y)
        z = z.float()
        z_tilde = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
        bits_z = -torch.log2(self.density_z.likelihood(z_tilde).clamp_min(1e-9)).sum((1, 2, 3))
        with amp():
            hyper = self.h_s(z_tilde)
        mu, log2_scale = self.entropy_parameters(hyper.float(), y)
        scale = (2**log2_scale).clamp_min(SCALE_MIN)
        if self.training:
            y_rate = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_rate = torch.round(y - mu) + mu
        bits_y = -torch.log2(gaussian_likelihood(y_rate - mu, scale)).sum((1, 2, 3))
        y_hat = round_st(y - mu) + mu
        with amp():
            x_hat = self.g_s(y_hat * inv_gain)
        x_hat = x_hat.float()
        return {"x_hat": x_hat, "bits": bits_y + bits_z, "bits_z": bits_z}


def gaussian_likelihood(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of [v-½, v+½] under N(0, scale²), computed on the stable tail side."""
    v = v.abs()
    c = -1 / (math.sqrt(2) * scale)
    p = 0.5 * torch.erfc(c * (0.5 - v)) - 0.5 * torch.erfc(c * (-0.5 - v))
    return p.clamp_min(1e-9)
