#!/usr/bin/env python
"""Throughput of whole pipelines on the Kodak images: converting a folder, and reading one for training.

Why: a shell loop of ``cnnz encode`` pays for starting Python, importing torch and loading the
model on every file; ``cnnz convert`` and ``pillow_cnnz.dask.convert`` pay for them once per
worker. This measures, in one run and on the same machine, the wall time of fresh commands
(each a new process, as a user runs them) converting the 24 Kodak PNGs to ``.cnnz``:

``cli loop``       ``cnnz encode IN OUT`` once per file, one after the other
``one process``    one Python process saving the files in a loop (the model loaded once)
``convert -j 1``   ``cnnz convert DIR --out OUT -j 1``
``convert -j 2``   ``cnnz convert DIR --out OUT -j 2`` (two worker processes, one thread each)
``dask 2``         ``pillow_cnnz.dask.convert`` on a new ``local_cluster(2)`` (2 one-thread workers)

and on the first 12 files the issue's bars: ``convert -j 2`` against ``one process``, and a
``--skip-existing`` rerun of it. Then a torch DataLoader reading the 24 images as ``.cnnz``
(quality 4), PNG, JPEG, WebP and AVIF (Pillow's default settings) with 0 and 2 worker
processes (persistent, Linux's default start method), one warm-up epoch then ``--repeat``
timed epochs, each in a new process. The conversions run round-robin ``--repeat`` times so
that a change in load hits every peer; medians are reported, with ratios between peers.

Example (from the repository root; about 20 minutes on 2 busy cores)::

    python -m benchmarks.pipeline
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import DEFAULT_KODAK, bytecode_env, environment, finish_environment, image_paths
from benchmarks._common import last_json, md_table, median, run_python, write_json

FORMATS = {"cnnz": ("CNNZ", {"quality": 4.0}), "png": ("PNG", {}), "jpeg": ("JPEG", {}), "webp": ("WEBP", {}),
           "avif": ("AVIF", {})}
ENV = bytecode_env(Path(tempfile.gettempdir()) / "cnnz-pipeline-pycache")  # every run reads cached bytecode
CLI = "import sys; from pillow_cnnz.cli import main; sys.exit(main())"  # the cnnz command

ONE_PROCESS = """
import sys, pathlib
import pillow_cnnz
from PIL import Image
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.png")):
    with Image.open(path) as im:
        pillow_cnnz.save(im, out / (path.stem + ".cnnz"))
"""

DASK = """
import sys
from distributed import Client
from pillow_cnnz.dask import convert, local_cluster
if __name__ == "__main__":
    with local_cluster(2) as cluster, Client(cluster) as client:
        summary = convert(sys.argv[1], sys.argv[2], client=client)
    assert not summary.failed, summary.failed
"""

LOADER = """
import json, sys, time
import numpy as np
import torch.utils.data
from PIL import Image
import pillow_cnnz  # registers .cnnz in the workers too (they are forked from this process)


def read(path):  # without batching, the DataLoader applies collate_fn to each sample, in the worker
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")))


if __name__ == "__main__":
    paths, workers, repeat = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    loader = torch.utils.data.DataLoader(paths, batch_size=None, collate_fn=read, num_workers=workers,
                                         persistent_workers=workers > 0)
    seconds = []
    for epoch in range(repeat + 1):  # the first epoch starts the workers and loads the model: not timed
        t0 = time.perf_counter()
        pixels = sum(int(x.numel()) for x in loader)
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds[1:], "pixels": pixels // 3}))
"""


def _wall(code: str, *args: object) -> float:
    """Wall seconds of ``python -c code args`` in a new process (bytecode cached, as installed)."""
    return run_python(code, env=ENV, args=[str(a) for a in args])[0]


def conversions(sources: list[Path], work: Path) -> dict[str, Callable[[], float]]:
    """Name -> a function that runs that conversion once from scratch and returns its wall time."""
    all_dir, twelve_dir = work / "src24", work / "src12"
    for folder, files in ((all_dir, sources), (twelve_dir, sources[:12])):
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)

    def fresh(name: str) -> Path:
        out = work / "out" / name
        shutil.rmtree(out, ignore_errors=True)
        return out

    def cli_loop() -> float:
        out = fresh("cli")
        out.mkdir(parents=True)
        return sum(_wall(CLI, "encode", f, out / f"{f.stem}.cnnz") for f in sorted(all_dir.iterdir()))

    def one_process(src: Path, name: str) -> float:
        return _wall(ONE_PROCESS, src, fresh(name))

    def convert(src: Path, jobs: int, name: str) -> float:
        return _wall(CLI, "convert", src, "--out", fresh(name), "-j", jobs, "--quiet")

    def rerun() -> float:
        out = work / "out" / "j2-12"
        return _wall(CLI, "convert", twelve_dir, "--out", out, "-j", 2, "--quiet", "--skip-existing")

    return {
        "cli loop": cli_loop,
        "one process": lambda: one_process(all_dir, "one"),
        "convert -j 1": lambda: convert(all_dir, 1, "j1"),
        "convert -j 2": lambda: convert(all_dir, 2, "j2"),
        "dask 2": lambda: _wall(DASK, all_dir, fresh("dask")),
        "one process, 12": lambda: one_process(twelve_dir, "one-12"),
        "convert -j 2, 12": lambda: convert(twelve_dir, 2, "j2-12"),
        "--skip-existing rerun, 12": rerun,  # right after the run above: every output exists
    }


def loaders(sources: list[Path], work: Path, repeat: int) -> list[dict]:
    from PIL import Image

    import pillow_cnnz  # noqa: F401  (the CNNZ format)

    rows = []
    for name, (fmt, options) in FORMATS.items():
        folder = work / "formats" / name
        folder.mkdir(parents=True)
        paths = []
        for f in sources:
            with Image.open(f) as im:
                im.convert("RGB").save(folder / f"{f.stem}.{name}", format=fmt, **options)
            paths.append(str(folder / f"{f.stem}.{name}"))
        size = sum(Path(p).stat().st_size for p in paths)
        for workers in (0, 2):
            _, res = run_python(LOADER, env=ENV, args=[json.dumps(paths), str(workers), str(repeat)])
            out = last_json(res.stdout)
            epoch = median(out["seconds"])
            rows.append({"format": name, "workers": workers, "bytes": size, "epoch_s": out["seconds"],
                         "median_epoch_s": epoch, "images_per_s": len(paths) / epoch,
                         "bpp": size * 8 / out["pixels"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--repeat", type=int, default=3, help="runs of each conversion, and timed epochs of each loader")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    args = p.parse_args()
    sources = image_paths(args.data)
    info = environment()
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnz-pipeline-") as tmp:
        work = Path(tmp)
        jobs = conversions(sources, work)
        jobs["one process, 12"]()  # fills the bytecode cache: no timed run compiles the package
        for r in range(args.repeat):
            for name, run in jobs.items():
                runs.setdefault(name, []).append(run())
                print(f"round {r + 1}: {name}: {runs[name][-1]:.1f} s", flush=True)
        loader_rows = loaders(sources, work, args.repeat)
    finish_environment(info)

    files = {name: len(sources[:12]) if name.endswith(", 12") else len(sources) for name in runs}
    conversion = {name: {"seconds": times, "median_s": median(times), "files": files[name],
                         "images_per_s": files[name] / median(times)} for name, times in runs.items()}
    med = {name: row["median_s"] for name, row in conversion.items()}
    ratios = {
        "convert -j 2 / one process": med["convert -j 2"] / med["one process"],
        "convert -j 1 / one process": med["convert -j 1"] / med["one process"],
        "cli loop / convert -j 2": med["cli loop"] / med["convert -j 2"],
        "dask 2 / convert -j 2": med["dask 2"] / med["convert -j 2"],
        "bar: convert -j 2 / one process, 12 (at most 0.8)": med["convert -j 2, 12"] / med["one process, 12"],
        "bar: rerun / convert -j 2, 12 (at most 0.25)": med["--skip-existing rerun, 12"] / med["convert -j 2, 12"],
        "rerun / one process, 12": med["--skip-existing rerun, 12"] / med["one process, 12"],
    }
    png = {row["workers"]: row["images_per_s"] for row in loader_rows if row["format"] == "png"}
    for row in loader_rows:
        row["speed_vs_png"] = row["images_per_s"] / png[row["workers"]]
    result = {"environment": info, "images": len(sources), "conversion": conversion, "ratios": ratios,
              "dataloader": loader_rows}
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Pipeline throughput, {result['images']} Kodak images",
             "",
             f"CPU: {env.get('cpu_model')} ({env.get('cpu_count')} cores), Python {env['python']}, {env['time']}; "
             f"medians of {len(next(iter(result['conversion'].values()))['seconds'])} runs, each a new process.",
             *[f"Note: {n}" for n in env.get("notes", [])],
             "",
             "## Converting PNG to .cnnz (quality 4)",
             "",
             md_table(["run", "files", "median s", "images/s"],
                      [[name, row["files"], row["median_s"], row["images_per_s"]]
                       for name, row in result["conversion"].items()]),
             "",
             md_table(["ratio", "value"], [[k, v] for k, v in result["ratios"].items()]),
             "",
             "## A DataLoader reading the images (batch_size=None, RGB arrays)",
             "",
             md_table(["format", "workers", "bpp", "median epoch s", "images/s", "vs PNG"],
                      [[r["format"], r["workers"], r["bpp"], r["median_epoch_s"], r["images_per_s"], r["speed_vs_png"]]
                       for r in result["dataloader"]]),
             ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
