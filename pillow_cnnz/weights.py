"""Find, verify and load the shipped weights, once per process.

The weights are an ``.npz`` read with ``allow_pickle=False`` (no code execution) and
checked against the SHA-256 in ``manifest.json`` before use, so a corrupted or
swapped file is reported instead of producing garbage. The networks are built by the
modules that define them (``model.from_arrays``, ``synthesis_np``, ``int8``), on first use:
torch is imported only when a torch network is first needed; the entropy tables and
integer hyper network are numpy.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import context, forksafe, hyper
from .entropy import Tables
from .errors import WeightsError

_PACKAGE_DIR = Path(__file__).resolve().parent


def weights_dir() -> Path:
    """``pillow_cnnz/weights`` inside a wheel, else ``weights/`` at the repository root."""
    for candidate in (_PACKAGE_DIR / "weights", _PACKAGE_DIR.parent / "weights"):
        if (candidate / "manifest.json").is_file():
            return candidate
    msg = f"no weights found next to {_PACKAGE_DIR} (looked for weights/manifest.json)"
    raise WeightsError(msg)


_manifests: dict[tuple, dict] = {}  # (path, mtime, size) -> parsed manifest


def manifest() -> dict:
    """The parsed ``manifest.json`` of ``weights_dir()`` (treat it as read-only). Read again only
    when the file changes (a ``training export`` registers a new default), so a default load
    costs a stat, not a read and a parse."""
    path = weights_dir() / "manifest.json"
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        parsed = _manifests.get(key)
        if parsed is None:
            parsed = json.loads(path.read_text())
            _manifests.clear()  # one entry: the current file
            _manifests[key] = parsed
        return parsed
    except (OSError, ValueError) as e:
        msg = f"cannot read the weights manifest {path}: {e}"
        raise WeightsError(msg) from e


def default_model_id() -> bytes:
    return bytes.fromhex(manifest()["default"])


class LazyArrays(Mapping[str, np.ndarray]):
    """The arrays of a verified ``.npz``, each inflated on first use, then kept.

    A decode reads the synthesis, the integer networks and the tables: inflating the
    encoder's transforms and the float entropy model too would slow every cold start.
    Thread-safe; the compressed bytes are dropped once every array is loaded.
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data  # to reopen it in a child forked mid-read (zipfile's lock)
        self._npz: Any = np.load(io.BytesIO(data), allow_pickle=False)
        self._names = tuple(self._npz.files)
        self._loaded: dict[str, np.ndarray] = {}
        self._lock = forksafe.Lock(reset=self._reopen)

    def _reopen(self) -> None:
        """In a child forked while another thread was inflating an array: the npz's zip reader
        may be mid-read (its own lock held by the thread that is gone); read from a fresh one."""
        if self._data is not None:
            self._npz = np.load(io.BytesIO(self._data), allow_pickle=False)

    def __getitem__(self, key: str) -> np.ndarray:
        with self._lock:
            if key not in self._loaded:
                if key not in self._names:
                    raise KeyError(key)
                self._loaded[key] = self._npz[key]
                if len(self._loaded) == len(self._names):
                    self._npz.close()
                    self._npz = self._data = None
            return self._loaded[key]

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def inflated(self) -> frozenset[str]:
        """Names of the arrays read so far."""
        with self._lock:
            return frozenset(self._loaded)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class Weights:
    """Everything one weights file holds (a model's arrays, tables and manifest entry), with its
    torch and numpy networks built on demand."""

    model_id: bytes
    meta: dict
    arrays: Mapping[str, np.ndarray]  # LazyArrays when read from a file
    z_tables: Tables
    y_tables: Tables
    hyper_layers: list[dict]
    context_layers: dict | None = None  # context.py's integer network, when the model has one
    entry: dict = field(default_factory=dict)  # the model's manifest entry (its files and their hashes)
    _nets: dict[str, Any] = field(default_factory=dict)
    _lock: forksafe.Lock = field(default_factory=forksafe.Lock)

    def log2_gains(self, quality: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel log2 (gain, inverse gain) at a fractional quality (linear in log2)."""
        gain, inv_gain = (_at_quality(self.arrays[key].astype(np.float64), quality)
                          for key in ("net/log2_gain", "net/log2_inv_gain"))
        return gain, inv_gain

    def lambda_for(self, quality: float) -> float:
        """The training loss's λ at a fractional quality (geometric between levels, as the gains)."""
        return float(2 ** _at_quality(np.log2(np.asarray(self.meta["lambdas"], np.float64)), quality))

    def numpy_synthesis(self, scale: int = 1):
        """The synthesis transform in numpy (``synthesis_np``), built once, thread-safe; for a
        ``scale`` > 1, the part of it the model's head for that scale reads, then the head."""
        head = self.heads()[scale] if scale > 1 else None
        with self._lock:
            if ("numpy", scale) not in self._nets:
                from .synthesis_np import NumpySynthesis

                self._nets["numpy", scale] = NumpySynthesis(self, head)
            return self._nets["numpy", scale]

    def heads(self) -> dict:
        """The model's reduced-resolution output heads by scale (``heads.Head``), from its verified
        heads file; {} where it ships none."""
        with self._lock:
            if "heads" not in self._nets:
                from . import heads

                spec = self.entry.get("heads")
                self._nets["heads"] = {} if spec is None else _parsed(
                    spec, lambda data: heads.parse(data, self.model_id.hex(), self.meta["config"]))
            return self._nets["heads"]

    def head_net(self, scale: int, device: str, dtype: str = "float32"):
        """The torch ``layers.output_head`` of ``heads()[scale]`` on ``device`` in ``dtype``, built once."""
        head = self.heads()[scale]
        key = ("head", scale, device, dtype)
        with self._lock:
            if key not in self._nets:
                from .model import head_from_arrays

                self._nets[key] = head_from_arrays(head.arrays, head.upscale, device, dtype)
            return self._nets[key]

    @property
    def has_int8(self) -> bool:
        """Whether the model ships the activation ranges its int8 transforms need."""
        return "int8" in self.entry

    def int8_ranges(self, net: Any) -> tuple[dict, dict]:
        """(analysis, synthesis) ranges of ``net`` (the CPU float32 network) from the model's verified
        ranges file."""
        from . import int8

        spec = self.entry.get("int8")
        if spec is None:
            msg = f"model {self.model_id.hex()} ships no int8 activation ranges; use precision float32"
            raise WeightsError(msg)
        return _parsed(spec, lambda data: int8.load_ranges(data, self.model_id.hex(), net.g_a, net.g_s))

    def int8_rounded(self, net: Any, synthesis: dict) -> dict:
        """The synthesis' int8 weights as ``train int8`` rounded them (``int8.gptq``), from the
        model's verified ``.int8.npz``, or {} where it ships none (they then round to nearest)."""
        from . import int8

        spec = self.entry["int8"].get("rounded")
        if spec is None:
            return {}
        return _parsed(spec, lambda data: int8.load_rounded(data, synthesis, net.g_s))

    def int8_analysis(self) -> Any:
        """The CPU analysis with int8 residual blocks (``int8.py``), built once, thread-safe."""
        return self._int8("analysis")

    def int8_synthesis(self) -> Any:
        """The CPU synthesis but its last layer, with the residual blocks and sub-pixel convolutions
        the ranges file names in int8 (``int8.py``), built once, thread-safe."""
        return self._int8("synthesis")

    def _int8(self, transform: str) -> Any:
        net = self.net("cpu")
        with self._lock:
            if ("int8", transform) not in self._nets:
                from . import int8

                analysis, synthesis = self.int8_ranges(net)
                rounded = self.int8_rounded(net, synthesis)
                self._nets["int8", "analysis"] = int8.Int8Layers(net.g_a, analysis)
                self._nets["int8", "synthesis"] = int8.Int8Layers(net.g_s[:-1], synthesis, saturate=True, rounded=rounded)
            return self._nets["int8", transform]

    def net(self, device: str, dtype: str = "float32", entropy: bool = False):
        """The torch network on ``device`` in ``dtype`` (built once per pair, thread-safe).

        Without ``entropy`` its float entropy model is dropped: coding uses the exact
        integer copies (hyper.py, context.py). ``entropy`` keeps it, for the encoder's
        latent refinement (``refine.py``), which needs the rate as a differentiable function.
        """
        key = (device, dtype, entropy)
        with self._lock:
            if key not in self._nets:
                from .model import from_arrays

                self._nets[key] = from_arrays(self.meta["config"], self.arrays, device, dtype, entropy,
                                              self.model_id.hex())
            return self._nets[key]

def _at_quality(table: np.ndarray, quality: float) -> np.ndarray:
    """Row ``quality`` of a per-level table (level 1 first), linear between levels, clamped."""
    t = min(max(quality - 1, 0.0), table.shape[0] - 1)
    lo = min(int(t), table.shape[0] - 2)
    return table[lo] * (1 - (t - lo)) + table[lo + 1] * (t - lo)


_cache: dict[bytes, Weights] = {}
_cache_lock = forksafe.Lock()


def _verified(path: Path, sha256: str) -> bytes:
    """The bytes of a shipped file, or WeightsError if unreadable or not the ones the manifest names."""
    try:
        data = path.read_bytes()
    except OSError as e:
        msg = f"cannot read weights file {path}: {e}"
        raise WeightsError(msg) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        msg = (f"weights file {path} is corrupted or was replaced: sha256 {digest}, "
               f"expected {sha256}; reinstall pillow-cnnz")
        raise WeightsError(msg)
    return data


def _parsed(spec: dict, parse: Any) -> Any:
    """``parse`` of the verified bytes of the shipped file ``spec`` names (``{"file", "sha256"}``); its
    ValueError becomes a WeightsError naming the file."""
    path = weights_dir() / spec["file"]
    try:
        return parse(_verified(path, spec["sha256"]))
    except ValueError as e:
        msg = f"{path}: {e}"
        raise WeightsError(msg) from e


def _read(model_id: bytes) -> Weights:
    models = manifest()["models"]
    entry = models.get(model_id.hex())
    if entry is None:
        msg = (f"this file needs CNNZ model {model_id.hex()}, which is not installed "
               f"(installed: {', '.join(models) or 'none'}); open it with a pillow-cnnz release that ships "
               f"that model (the one that wrote it, or a newer one if the file is newer)")
        raise WeightsError(msg)
    data = _verified(weights_dir() / entry["file"], entry["sha256"])
    arrays = LazyArrays(data)
    meta = json.loads(str(arrays["meta"]))
    layers = []
    for i, layer in enumerate(meta["hyper"]):
        if layer["kind"] == "conv":
            weight = arrays[f"hyper/{i}/weight"].astype(np.float64)
            layer = dict(layer, weight=weight, matrix=hyper.weight_matrix(weight),
                         bias=arrays[f"hyper/{i}/bias"].astype(np.float64))
        layers.append(layer)

    def tables(prefix: str) -> Tables:
        return Tables(arrays[f"{prefix}/pmf"], arrays[f"{prefix}/lo"].astype(np.int64),
                      arrays[f"{prefix}/length"].astype(np.int64))

    ctx = None
    if meta.get("context"):
        ctx = {name: {"shift": meta["context"]["shifts"][name],
                      "weight": arrays[f"context/{name}/weight"].astype(np.float64),
                      "bias": arrays[f"context/{name}/bias"].astype(np.float64)} for name in context.NAMES}
    return Weights(model_id, meta, arrays, tables("z"), tables("y"), layers, ctx, entry)


def _decoded_by(model_id: bytes) -> bytes:
    """The installed model that decodes files of ``model_id``: itself, or the one its manifest entry
    names as ``{"decoded_by": id}``. Why: a release may retrain only the synthesis (``train distill``,
    ``export --synthesis-only``); its latents and entropy model are the old one's bit for bit, so
    the old model's files decode with it (through the new synthesis) and its weights need not ship."""
    models = manifest()["models"]
    target = (models.get(model_id.hex()) or {}).get("decoded_by")
    if target is None:
        return model_id
    if "file" not in models.get(target, {}):
        msg = f"weights manifest says model {model_id.hex()} is decoded by {target}, which is not installed"
        raise WeightsError(msg)
    return bytes.fromhex(target)


def load(model_id: bytes | None = None) -> Weights:
    """The model with this id (default: the shipped default), loaded once per process; for the id of
    a model whose synthesis a later release retrained, that release's model."""
    if model_id is None:
        model_id = default_model_id()
    with _cache_lock:
        if model_id not in _cache:
            target = _decoded_by(model_id)
            if target not in _cache:
                _cache[target] = _read(target)
            _cache[model_id] = _cache[target]
        return _cache[model_id]
