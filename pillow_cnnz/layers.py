"""Building blocks of the transforms (torch).

Kept apart from the model so the network definition reads as a data-flow diagram.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import spans


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    """A 'same'-padded convolution; stride 2 halves the resolution."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class SubPixelConv(nn.Module):
    """3x3 convolution to ``cout * r**2`` channels followed by a pixel shuffle.

    Upsamples by ``r`` without the checkerboard and cost of a full-resolution
    transposed convolution (Shi et al. 2016).
    """

    def __init__(self, cin: int, cout: int, r: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * r * r, 3, padding=1)
        self.shuffle = nn.PixelShuffle(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def output_head(cin: int, hidden: int, r: int) -> nn.Sequential:
    """A reduced-resolution output of the synthesis: 3x3 convolution to ``hidden`` channels, ReLU,
    then a ``SubPixelConv`` to RGB upsampling by ``r`` (1: none). Read from an intermediate level
    of ``g_s``, it gives the image at that level's resolution times ``r`` (``pillow_cnnz.heads``)."""
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), SubPixelConv(hidden, 3, r))


class GDN(nn.Module):
    """Simplified generalized divisive normalization (Johnston et al. 2019).

    ``y = x / (beta + gamma @ |x|)``, or ``x * (...)`` when ``inverse``. The L1
    form needs no square root, which keeps it cheap on the decoder side.
    ``beta`` and ``gamma`` are stored as square roots so they stay non-negative; the
    off-diagonal roots start small but non-zero, since a root at exactly 0 gets no gradient.
    """

    OFF_DIAGONAL_ROOT = 0.01

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        off = torch.full((channels, channels), self.OFF_DIAGONAL_ROOT)
        self.gamma_sqrt = nn.Parameter(torch.where(torch.eye(channels, dtype=torch.bool), 0.1**0.5, off))

    # Elements of x normalized at a time in inference mode: a band (4 MB in float32, 2 MB a core)
    # stays in the cores' L2 caches between the abs, the convolution and the product, which
    # larger bands do not (for the int8 blocks' bands smaller was no faster).
    INFERENCE_CHUNK = 1 << 20
    # Smallest normal float32. Training drives many off-diagonal roots below 1e-19, whose squares
    # are subnormal: they add nothing to a norm, but a CPU multiplies subnormals many times slower.
    TINY = torch.finfo(torch.float32).tiny
    # Where the codec runs (inference) entries below 2**-60 go too: their products with an
    # activation are subnormal as well, and next to beta (>= 0.03 in the shipped weights) a sum
    # of them is below half a float32 step for |x| < 2**20, so the norms do not change.
    NEGLIGIBLE = 2.0**-60

    def gamma(self, floor: float = TINY) -> torch.Tensor:
        """``gamma_sqrt²`` with entries below ``floor`` (default: the subnormal ones) set to 0."""
        gamma = self.gamma_sqrt**2
        return gamma.masked_fill(gamma < floor, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        inference = torch.is_inference_mode_enabled()
        gamma = self.gamma(self.NEGLIGIBLE if inference else self.TINY).reshape(c, c, 1, 1).to(x.dtype)
        beta = (self.beta_sqrt**2 + 1e-6).to(x.dtype)
        if inference:
            return self._normalize_in_place(x, gamma, beta)
        norm = F.conv2d(x.abs(), gamma, beta)
        return x * norm if self.inverse else x / norm

    def _normalize_in_place(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The codec's path: ``x`` (a layer's own output) is overwritten a band of rows at a
        time. The normalization is per pixel, so bands change nothing, and the peak is ``x``
        plus two bands instead of ``x`` plus three copies of it: at the analysis' first level
        of a 1216x1216 encode tile each copy is 142 MB."""
        rows = max(1, self.INFERENCE_CHUNK // max(1, x.shape[0] * x.shape[1] * x.shape[3]))
        for r0 in range(0, x.shape[2], rows):
            band = x[:, :, r0 : r0 + rows]
            norm = F.conv2d(band.abs(), gamma, beta)
            band.mul_(norm) if self.inverse else band.div_(norm)
        return x


class ResBlock(nn.Module):
    """``x + conv3x3(relu(conv3x3(x)))`` at the same width and resolution.

    Capacity for a trained synthesis where its quality stops (docs/training.md, "Where the quality
    stops"). The second convolution starts at zero, so a network grown with these blocks
    computes exactly what it computed before and training goes on from there.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fusable(x):
            return self._fused(x)
        return x + self.conv2(F.relu(self.conv1(x)))

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """The codec's CPU path: oneDNN applies the ReLU and the residual sum as post-ops of
        the convolutions, so neither reads and writes the activations again (the finest
        level's are the decoder's largest): 20 % off the shipped synthesis. The sum is taken
        before the conv's output is rounded to ``x.dtype``: within a rounding of the plain path.

        The sum overwrites ``x`` (a layer's own output, as in GDN's inference path): one
        tensor fewer at the peak, 150 MB at the analysis' first level of a float32 encode tile."""
        w1, b1, w2, b2 = self._parameters_in(x.dtype)
        one = [1, 1]
        h = _POINTWISE_CONV(x, w1, b1, one, one, one, 1, "relu", [], None)
        if x.is_contiguous(memory_format=torch.channels_last) and _POINTWISE_CONV_INPLACE is not None:
            return _POINTWISE_CONV_INPLACE.binary(x, h, w2, b2, one, one, one, 1, "add", None, None, [], None)
        return _POINTWISE_CONV.binary(h, x, w2, b2, one, one, one, 1, "add", None, None, [], None)

    def _parameters_in(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The convolutions' weights and biases in ``dtype``, cast once and kept until they
        change (a decode would otherwise cast every block's weights again)."""
        params = (self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias)
        if all(p.dtype == dtype for p in params):
            return params
        key = (dtype, *((p.data_ptr(), p._version) for p in params))  # in-place updates bump _version
        cached = getattr(self, "_cast", None)
        if cached is None or cached[0] != key:
            cached = self._cast = (key, tuple(p.detach().to(dtype) for p in params))
        return cached[1]


def _pointwise_conv(name: str = "_convolution_pointwise"):
    """oneDNN's fused convolution (the op PyTorch's compiler emits for conv + pointwise on
    CPU; with a trailing ``_``, the one that sums into its first argument), or None where this
    torch build has none."""
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


_POINTWISE_CONV = _pointwise_conv() if torch.backends.mkldnn.is_available() else None
_POINTWISE_CONV_INPLACE = _pointwise_conv("_convolution_pointwise_") if _POINTWISE_CONV is not None else None


def _fusable(x: torch.Tensor) -> bool:
    """Inference on a CPU (training needs autograd, which the fused op lacks), with ``x`` in
    the type the convolutions run in (under autocast, its type), one that oneDNN convolves."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return (_POINTWISE_CONV is not None and x.device.type == "cpu" and torch.is_inference_mode_enabled()
            and x.dtype == dtype and dtype in (torch.float32, torch.bfloat16))


def _reach(module: nn.Module) -> tuple[int, int]:
    """(radius in its input's pixels, upsampling factor) of a synthesis module."""
    if isinstance(module, SubPixelConv):
        return module.conv.kernel_size[0] // 2, module.shuffle.upscale_factor
    if isinstance(module, ResBlock):
        return module.conv1.kernel_size[0] // 2 + module.conv2.kernel_size[0] // 2, 1
    if isinstance(module, nn.Conv2d) and module.stride == (1, 1):
        return module.kernel_size[0] // 2, 1
    if isinstance(module, (GDN, nn.ReLU)):
        return 0, 1
    msg = f"no receptive field known for {type(module).__name__}"
    raise TypeError(msg)


def needed_spans(modules: list[nn.Module], core: tuple[int, int], size: int,
                 in_output: bool = False) -> list[tuple[int, int]]:
    """Along one axis of an input ``size`` pixels long whose output is wanted for input pixels
    ``[core)`` only: the span of each module's output that this part depends on, in that output's
    pixels, within the 'same'-padded outputs of the whole input (clipped to its edges, where the
    padding is the whole input's own).

    Why: a decoder tile reads a halo of latents around it for the first layer's sake, but each
    later layer needs less of it; computing only these spans keeps a tile's pixels those of the
    whole window while its finest, dearest levels do ~1.1x the tile's own work instead of ~1.5x.
    With ``in_output``, ``core`` is in the last module's output pixels instead (``spans.needed``)."""
    reach = [_reach(m) for m in modules]
    scale = 1 if in_output else math.prod(f for _, f in reach)
    return spans.needed(reach, (core[0] * scale, core[1] * scale), size)


class TileCrops:
    """Cuts each module's output in a tile's synthesis to its ``needed_spans``: as views, or with
    ``dense`` as channels-last copies. The float residual blocks need the copies (oneDNN's fused
    sum runs in place only on dense tensors; on views it copied twice), the int8 ones read views
    band by band, which is faster for them than copying."""

    def __init__(self, modules: list[nn.Module], core: tuple[tuple[int, int], tuple[int, int]],
                 size: tuple[int, int], dense: bool = True, in_output: bool = False) -> None:
        self.dense = dense
        self.factors = [_reach(m)[1] for m in modules]
        self.spans = [needed_spans(modules, c, n, in_output) for c, n in zip(core, size)]  # rows, then columns

    def slices(self, i: int) -> tuple[slice, slice]:
        """(rows, columns) of module ``i``'s output to keep, as positions in that output, which
        covers ``f ×`` what module ``i - 1``'s output kept (or the whole input for the first)."""
        cut = []
        for axis in self.spans:
            start = axis[i - 1][0] * self.factors[i] if i else 0
            cut.append(slice(axis[i][0] - start, axis[i][1] - start))
        return cut[0], cut[1]

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.slices(i)
        kept = x[:, :, rows, cols]
        if kept.shape == x.shape:
            return x
        return kept.contiguous(memory_format=torch.channels_last) if self.dense else kept


def run_cropped(steps: list, x: torch.Tensor, crops: TileCrops | None = None) -> torch.Tensor:
    """``x`` through ``steps`` (callables, one per module), each output cut by ``crops``."""
    for i, step in enumerate(steps):
        x = step(x)
        if crops is not None:
            x = crops(i, x)
    return x


def anchor_mask(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, H, W) float mask of the checkerboard anchors: latents whose row + column is even."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0).float()[None, None]


class CheckerboardContext(nn.Module):
    """Refines the hyperprior's (μ, log2 σ) of the non-anchor latents from the decoded anchors
    around them (He et al. 2021): a two-pass decode, so it costs no serial loop.

    ``delta = c3(relu(c2(relu(ctx(ŷ·anchors) + mix(hyper)))))``. Only convolutions, ReLU and
    a sum: ``context.py`` runs the same thing in integers. ``c3`` starts at zero, so a network
    given a context computes what it did before and training goes on from there.
    """

    def __init__(self, latents: int, channels: int) -> None:
        super().__init__()
        self.ctx = nn.Conv2d(latents, channels, 3, padding=1)
        self.mix = nn.Conv2d(2 * latents, channels, 1, bias=False)
        self.c2 = nn.Conv2d(channels, channels, 1)
        self.c3 = nn.Conv2d(channels, 2 * latents, 1)
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, anchors: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.ctx(anchors) + self.mix(hyper))
        return self.c3(F.relu(self.c2(h)))
