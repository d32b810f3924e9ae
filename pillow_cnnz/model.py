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
encoder's probabilities exactly on any device. ``g_s`` is small on purpose
(``Config.synthesis_macs``): channels shrink toward full resolution, upsampling is
sub-pixel, and residual blocks (``Config.res``) add depth only where it pays. The training
code (``training/``, not installed) grows and widens these networks between phases
(``training/surgery.py``).

References: Ballé et al. 2018 (hyperprior), Minnen et al. 2018 (mean-scale),
Minnen & Singh 2020 (straight-through rounding for the synthesis input).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .errors import WeightsError
from .factorized import FactorizedDensity
from .layers import GDN, CheckerboardContext, ResBlock, SubPixelConv, anchor_mask, conv, output_head

# Rate-distortion trade-off of each integer quality (loss = bpp + λ·255²·MSE), by name: a training
# phase names its table (``fit --lambdas``), and the weights record the one they trained on. Each
# "wide" table is geometric from 0.0004, reaching further at quality 8 to move the top quality
# toward a target rate; "zoo" is CompressAI's zoo values. Why each was made: docs/training.md.
LAMBDA_TABLES = {
    "zoo": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "wide": tuple(round(0.0004 * (0.18 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide2": tuple(round(0.0004 * (0.2 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide3": tuple(round(0.0004 * (0.22 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide4": tuple(round(0.0004 * (0.24 / 0.0004) ** (k / 7), 6) for k in range(8)),
    "wide5": tuple(round(0.0004 * (0.25 / 0.0004) ** (k / 7), 6) for k in range(8)),
}
LAMBDAS = LAMBDA_TABLES["wide5"]
QUALITY_MIN, QUALITY_MAX = 1.0, float(len(LAMBDAS))
# What only the encoder runs: the decoder reads ŷ through h_s, the context, the density of ẑ,
# log2_inv_gain and g_s, never these. The two transforms are stored in float16 (training/export.py);
# with the gains y is scaled by, they are all ``fit --encoder-only`` trains.
ENCODER_TRANSFORMS = ("g_a.", "h_a.")
ENCODER_PARAMETERS = (*ENCODER_TRANSFORMS, "log2_gain")
SCALE_MIN = 0.11


@dataclass(frozen=True)
class Config:
    N: int = 96  # encoder width
    M: int = 160  # latent channels
    Nz: int = 64  # hyper-latent channels
    Nh: int = 96  # hyper width
    dec: tuple[int, int, int] = (96, 64, 48)  # synthesis widths, coarse to fine
    res: tuple[int, int, int] = (0, 0, 0)  # residual blocks after each synthesis level
    ctx: int = 0  # width of the checkerboard context (0: none)
    ares: tuple[int, int, int] = (0, 0, 0)  # residual blocks after each analysis level, fine to coarse

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
        least this much halo (``tiling.HALO``) to match an untiled decode."""
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


def from_arrays(config: dict, arrays: Mapping[str, np.ndarray], device: str, dtype: str = "float32",
                entropy: bool = False, name: str = "") -> CnnzNet:
    """The inference network of a weights file's ``config`` and ``net/`` arrays, on ``device`` in
    ``dtype``, channels-last, without gradients (``weights.Weights.net`` builds it once per pair).

    Without ``entropy`` its float entropy model is dropped: coding uses the exact integer copies
    (hyper.py, context.py). ``entropy`` keeps it, for the encoder's latent refinement
    (``refine.py``), which needs the rate as a differentiable function; ``name`` names the
    weights in the error raised where they lack it.
    """
    net = CnnzNet(Config.from_dict(config))
    state = {k[4:]: torch.from_numpy(v.astype(np.float32, copy=False)) for k, v in arrays.items()
             if k.startswith("net/")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("h_s.", "density_z.", "context.")) for k in missing):
        msg = f"weights file does not match the network: missing {missing}, unexpected {unexpected}"
        raise WeightsError(msg)
    if entropy and missing:
        msg = (f"weights file {name} has no float entropy model, which method > 0 "
               "needs; save with method=0 or install newer weights")
        raise WeightsError(msg)
    if not entropy:
        net.h_s = net.density_z = net.context = None  # integer copies replace them
    net = net.eval().to(device, getattr(torch, dtype))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)  # channels-last CPU convolutions are faster


def head_from_arrays(arrays: Mapping[str, np.ndarray], upscale: int, device: str, dtype: str = "float32") -> torch.nn.Sequential:
    """The inference head (``layers.output_head``) of a heads file's arrays (``heads.Head``), as ``from_arrays`` builds the network."""
    weight = arrays["0.weight"]
    head = output_head(weight.shape[1], weight.shape[0], upscale)
    head.load_state_dict({k: torch.from_numpy(v.astype(np.float32, copy=False)) for k, v in arrays.items()})
    head = head.eval().to(device, getattr(torch, dtype))
    for p in head.parameters():
        p.requires_grad_(False)
    return head.to(memory_format=torch.channels_last)
