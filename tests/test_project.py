"""The README's set-up commands, CI and the quickstart example stay in step."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from .conftest import _photo as photo

ROOT = Path(__file__).resolve().parents[1]


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    tests = readme.split("Run the tests", 1)[1]
    command = _sh_blocks(tests)[0]
    assert command.endswith("python -m pytest -q")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


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
