"""The README's set-up commands, CI and the quickstart example stay in step."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from .conftest import _photo as photo

ROOT = Path(__file__).resolve().parents[1]


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_every_committed_file_stays_under_20_mb():
    """The repository's hosting limit: weights and the resumable checkpoint included."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    sizes = {name: (ROOT / name).stat().st_size for name in listed.stdout.split("\0") if (ROOT / name).is_file()}
    assert sizes and max(sizes.values()) < 20_000_000, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    tests = readme.split("Run the tests", 1)[1]
    command = _sh_blocks(tests)[0]
    assert command.endswith("python -m pytest -q")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


def test_readme_stays_short_and_every_relative_link_resolves():
    """The README is read in minutes; docs/ holds the rest. Links between the pages stay valid."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250 and readme.stat().st_size <= 20_000
    pages = [readme, ROOT / "CHANGELOG.md", ROOT / "weights" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 7 and (ROOT / "LICENSE").is_file()
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_readme_example_command_runs_the_quickstart():
    readme = (ROOT / "README.md").read_text()
    command = _sh_blocks(readme.split("Run the example", 1)[1])[0]
    assert command.endswith("python examples/quickstart.py")
    assert (ROOT / "examples" / "kodim23.png").is_file()  # its default image ships with it


def test_quickstart_saves_opens_and_compares_with_jpeg(tmp_path):
    src = tmp_path / "small.png"
    Image.fromarray(photo(96, 128)).save(src)
    out = tmp_path / "small.cnnz"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(src), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"opened {out}: CNNZ (128, 96) RGB quality=4")
    assert re.match(r"CNNZ .* bpp +PSNR \d+\.\d+ dB", lines[1])
    assert re.match(r"JPEG .* bpp +PSNR \d+\.\d+ dB", lines[2])
    assert out.stat().st_size > 0


def test_wheel_ships_the_weights_inside_the_package_and_the_cli(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "--no-deps", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("pillow_cnnz-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "pillow_cnnz/weights/manifest.json" in names
    # the runtime only: training/, benchmarks/ (the fuzzing helper included) and experiments/ run from a checkout
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"pillow_cnnz"}
    assert not any(n.startswith(("pillow_cnnz/train/", "pillow_cnnz/fuzzing")) for n in names)
    models = json.loads((ROOT / "weights" / "manifest.json").read_text())["models"]
    for entry in models.values():
        if "decoded_by" in entry:  # an older model whose files decode with a shipped one
            assert "file" in models[entry["decoded_by"]]
            continue
        shipped = [entry["file"]]  # + the int8 ranges and rounded weights
        specs = [spec for spec in entry.values() if isinstance(spec, dict)]
        while specs:
            spec = specs.pop()
            shipped.append(spec["file"])
            specs += [inner for inner in spec.values() if isinstance(inner, dict)]
        assert all(f"pillow_cnnz/weights/{name}" in names for name in shipped), shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cnnz = pillow_cnnz.cli:main" in (site / entry_points).read_text()
    # From the unpacked wheel alone (not the checkout), the weights are found and hash-checked.
    code = "from pillow_cnnz import weights; m = weights.load(); print(weights.weights_dir(), m.model_id.hex())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    found, model_id = run.stdout.split()
    assert Path(found) == site / "pillow_cnnz" / "weights"
    assert model_id == json.loads((ROOT / "weights" / "manifest.json").read_text())["default"]


def test_tests_import_benchmarks_and_training_as_packages_without_path_edits():
    folders = ("benchmarks", "experiments", "training")
    edits = [f"{path.name}:{n}" for path in sorted((ROOT / "tests").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if any(f in line for f in ("sys.path.insert(", "sys.path.append(", "syspath_prepend("))
             and ("parents[1]" in line or any(name in line for name in folders))]
    assert edits == []
    for package in folders:
        assert (ROOT / package / "__init__.py").is_file()


def _package_imports() -> dict[str, set[str]]:
    """Each module of pillow_cnnz and the package's modules it imports, at module level or
    inside functions alike ("pillow_cnnz" for the package's ``__init__``)."""
    import ast

    package = ROOT / "pillow_cnnz"
    modules = {p.stem for p in package.glob("*.py")}

    def target(name: str) -> str:
        return name if name in modules and name != "__init__" else "pillow_cnnz"

    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        me = "pillow_cnnz" if path.stem == "__init__" else path.stem
        edges = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or (node.level == 0 and base.split(".")[0] == "pillow_cnnz"):
                    parts = base.split(".")[1:] if node.level == 0 else [p for p in base.split(".") if p]
                    if parts:
                        edges.add(target(parts[0]))
                    else:  # from . import a, b: modules, or names of __init__
                        edges.update(target(alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "pillow_cnnz":
                        edges.add(target(parts[1]) if len(parts) > 1 else "pillow_cnnz")
        edges.discard(me)
    return graph


def test_no_import_cycle_in_the_package():
    """Modules form layers: none imports, directly or through others, a module that imports it."""
    graph = _package_imports()
    assert len(graph) > 10 and "codec" in graph["pillow_cnnz"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                cycles.append([*path[path.index(other):], other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)
