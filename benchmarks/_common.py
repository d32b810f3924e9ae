"""Shared helpers of the benchmarks (``speed.py``, ``gpu.py``, ``rd.py``) and of the studies in
``experiments/``.

Nothing here changes the package: the few hooks into it (recording what the codec
hands the entropy coder, timing its stages) wrap module attributes for the
duration of a ``with`` block and restore them afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

DATA = REPO_ROOT / "data"  # the image sets (data/README.md)
DEFAULT_KODAK = DATA / "kodak"
IMAGE_EXTENSIONS = {".png", ".ppm", ".bmp", ".tif", ".tiff"}

# constriction's AnsCoder uses 24-bit fixed-point probabilities by default.
ANS_PRECISION = 24


# --------------------------------------------------------------------------- images


def image_paths(data: Path, limit: int | None = None) -> list[Path]:
    paths = sorted(p for p in Path(data).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise SystemExit(f"no images found in {data}")
    return paths[:limit] if limit else paths


def load_rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- statistics / output


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def time_calls(fn, repeat: int) -> float:
    """Median wall seconds of ``repeat`` calls of ``fn()``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "–"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


# --------------------------------------------------------------------------- environment


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    ticks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        ticks[int(proc.name)] = (int(stat[11]) + int(stat[12]), cmd)
    return ticks


def busy_processes(interval: float = 1.0, min_cpu: float = 0.2) -> list[dict]:
    """Other processes using at least ``min_cpu`` cores over ``interval`` seconds (e.g. a training job)."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _cpu_ticks()
    time.sleep(interval)
    after = _cpu_ticks()
    me = os.getpid()
    found = []
    for pid, (t1, cmd) in after.items():
        if pid == me or pid not in before or not cmd:
            continue
        cpu = (t1 - before[pid][0]) / hz / interval
        if cpu >= min_cpu:
            found.append({"pid": pid, "cpu_cores": round(cpu, 2), "cmd": cmd[:160]})
    return sorted(found, key=lambda p: -p["cpu_cores"])


def _is_training(cmd: str) -> bool:
    """Whether a command line runs the training code (``python -m training``, or its former
    module path ``pillow_cnnz.train``)."""
    return "-m training" in cmd or "pillow_cnnz.train" in cmd


def load_note(others: list[dict]) -> list[str]:
    notes = []
    train = [p for p in others if _is_training(p["cmd"])]
    if train:
        notes.append(f"a training job (pid {train[0]['pid']}, using ~{train[0]['cpu_cores']:.1f} cores when sampled) "
                     f"ran in parallel on this {os.cpu_count()}-core machine: about half of the CPU was available, "
                     f"so absolute times are pessimistic and noisier than on an idle machine")
    rest = [p for p in others if p not in train]
    if rest:
        notes.append(f"{len(rest)} other CPU-busy process(es) also ran when sampled: "
                     + "; ".join(f"{p['cmd'][:70]} (~{p['cpu_cores']:.1f} cores)" for p in rest[:3]))
    return notes


def environment() -> dict:
    """Versions, CPU, load and concurrently running jobs: the conditions of a run."""
    import numpy as np
    import PIL

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": os.getloadavg(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "CNNZ_THREADS": os.environ.get("CNNZ_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "CNNZ_PRECISION": os.environ.get("CNNZ_PRECISION"),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    try:  # what CNNZ_PRECISION=auto picks for a CPU decode here (bfloat16 needs torch)
        from pillow_cnnz import precision, weights

        info["cpu_decode_precision"] = precision.resolve_precision(None, "cpu", int8=weights.load().has_int8)
    except ValueError as e:
        info["cpu_decode_precision"] = str(e)
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "pillow_cnnz"],
                               capture_output=True, text=True, check=False)
        info["git"] = out.stdout.strip() + (" (pillow_cnnz/ modified)" if dirty.stdout.strip() else "")
    except OSError:
        pass
    others = busy_processes()
    info["concurrent_cpu_jobs"] = others
    info["notes"] = load_note(others)
    return info


def finish_environment(info: dict) -> None:
    """Add the end-of-run load, and note jobs that were busy at the end but not at the start."""
    info["loadavg_1_5_15_end"] = os.getloadavg()
    others = busy_processes()
    info["concurrent_cpu_jobs_end"] = others
    seen = {p["pid"] for p in info["concurrent_cpu_jobs"]}
    new = [p for p in others if p["pid"] not in seen]
    was_training = any(_is_training(p["cmd"]) for p in info["concurrent_cpu_jobs"])
    for p in new:
        if _is_training(p["cmd"]):
            info["notes"].append(f"the training job was {'restarted' if was_training else 'started'} during the run "
                                 f"(pid {p['pid']} at the end, ~{p['cpu_cores']:.1f} cores)")
        else:
            info["notes"].append(f"also busy at the end of the run: {p['cmd'][:70]} (~{p['cpu_cores']:.1f} cores)")


def model_info() -> dict:
    from pillow_cnnz import weights

    model = weights.load()
    return {"model_id": model.model_id.hex(), "weights": str(weights.weights_dir()),
            "training": model.meta.get("training")}


# --------------------------------------------------------------------------- hooks into the package


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class StageTimer:
    """Accumulates the wall time spent in some functions of the package.

    ``StageTimer({"ans": (entropy, "decode"), ...})`` wraps each module attribute
    for the duration of the ``with`` block. Times are inclusive: a stage called
    from inside another counts in both.
    """

    def __init__(self, stages: dict[str, tuple[Any, str]]) -> None:
        self.stages = {k: v for k, v in stages.items() if hasattr(v[0], v[1])}
        self.seconds = dict.fromkeys(self.stages, 0.0)
        self.calls = dict.fromkeys(self.stages, 0)
        self._stack = contextlib.ExitStack()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.stages, 0.0)
        self.calls = dict.fromkeys(self.stages, 0)

    def _wrap(self, key: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1

        return wrapper

    def __enter__(self) -> "StageTimer":
        for key, (obj, name) in self.stages.items():
            self._stack.enter_context(patched(obj, name, self._wrap(key, getattr(obj, name))))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


@contextlib.contextmanager
def capture_entropy_calls() -> Iterator[list[dict]]:
    """Record every ANS stream the codec writes (``pillow_cnnz.entropy.Encoder``).

    Each record holds the exact ``values``, ``index`` and ``tables`` the codec
    pushed (bands joined along the row axis, top to bottom; with a context, each push
    flattened, in decoding order), the pushes themselves in decoding order, their number,
    the payload it got back and the wall time of pushing and finishing, so the
    benchmark sees the codec's real symbols without re-implementing the codec.
    """
    from pillow_cnnz import entropy

    calls: list[dict] = []
    real = entropy.Encoder

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, tables):  # noqa: ANN001
            t0 = time.perf_counter()
            super().__init__(tables)
            self._bands: list = []
            self._seconds = time.perf_counter() - t0

        def push(self, values, index):  # noqa: ANN001
            t0 = time.perf_counter()
            super().push(values, index)
            self._seconds += time.perf_counter() - t0
            self._bands.insert(0, (values, index))  # pushed last band first

        def finish(self):
            t0 = time.perf_counter()
            payload = super().finish()
            if all(v.ndim == 3 for v, _ in self._bands):  # whole bands: join them along the rows
                values = np.concatenate([v for v, _ in self._bands], axis=1)
                index = np.concatenate([i for _, i in self._bands], axis=1)
            else:  # a context codes each band in two halves (anchors, then the rest), already flat per channel
                values = np.concatenate([v.reshape(-1) for v, _ in self._bands])
                index = np.concatenate([i.reshape(-1) for _, i in self._bands])
            calls.append({"values": values, "index": index, "pushes": list(self._bands),
                          "bands": len(self._bands), "tables": self.tables, "payload": payload,
                          "seconds": self._seconds + time.perf_counter() - t0})
            return payload

    with patched(entropy, "Encoder", Recording):
        yield calls


def quantized_weights(pmf) -> "Any":
    """The integer weights (summing to 2**24) constriction gives a float table.

    Mirrors ``Categorical(p, perfect=False)`` ("fast" quantization of constriction
    0.4/0.5): left cumulative ``i`` is ``floor(cumsum_before_i * (2**24 - n) / sum) + i``
    (sequential float64 sums), the last right cumulative is ``2**24``. Every symbol
    keeps a weight of at least 1.
    """
    import numpy as np

    p = np.asarray(pmf, dtype=np.float64)
    n = p.size
    cum = np.cumsum(p)  # sequential, as constriction's running sum
    scale = float(2**ANS_PRECISION - n) / cum[-1]
    before = np.concatenate([[0.0], cum[:-1]])
    left = np.floor(before * scale).astype(np.int64) + np.arange(n)
    right = np.append(left[1:], 2**ANS_PRECISION)
    return right - left


def bytecode_env(cache_dir: Path) -> dict:
    """Environment that lets Python cache bytecode (in ``cache_dir``, not in the repository).

    This sandbox sets PYTHONDONTWRITEBYTECODE=1, so without this the package's own
    modules would be compiled from source on every import, which an installed wheel
    does not do; run once to fill the cache before timing.
    """
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(cache_dir)}


def run_python(code: str, env: dict | None = None, args: list[str] | None = None,
               flags: list[str] | None = None, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``python [flags] -c code [args]`` from the repository root; (wall seconds, result)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    for key, value in (env or {}).items():
        if value == "":
            full_env.pop(key, None)  # "" removes a variable (PYTHONDONTWRITEBYTECODE is set by any value)
        else:
            full_env[key] = value
    cmd = [sys.executable, *(flags or []), "-c", code, *(args or [])]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"subprocess failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, res


def last_json(stdout: str) -> dict:
    """The JSON object a worker printed on its last non-empty line."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def weights_note() -> str:
    """One line naming the weights measured: model id and how long they were trained."""
    from pillow_cnnz import weights

    model = weights.load()
    t = model.meta.get("training", {})
    return (f"weights: model {model.model_id.hex()}, {t.get('step', '?'):,} training steps "
            f"({t.get('seconds', 0) / 3600:.1f} h on {t.get('hardware', '?')}); see weights/README.md")
