"""A reader without torch (``pip install pillow-cnnz``, no ``[torch]`` extra): a process that cannot
import torch decodes files of 0.4, 3 and 12 megapixels in numpy, tiled, within 2 levels of torch's
float32 decode, and every way of writing raises an OSError naming the install command.

The files are made here, with torch, cheaply: one analysis of a 0.4 MP photo, whose latents (and
hyper-latents) are repeated to fill the larger grids and entropy-coded as they are. A decoder does
not care where valid latents come from, and a 12 MP analysis would cost most of the time budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pillow_cnnz
from pillow_cnnz import container, precision, synthesis, tiling

from .conftest import _photo as photo

pytest.importorskip("torch")  # the files and the reference decode need it

ROOT = Path(__file__).resolve().parents[1]
QUALITY = 1.0
BASE = (512, 768)  # 0.39 MP; the larger images repeat its latents
SIZES = [BASE, (1536, 2048), (3008, 4032)]  # 0.4, 3.1 and 12.1 MP, all multiples of 64
# Torch's side of the comparison: every window of the two smaller images, and of the 12 MP image
# the first, an inner and the last (partial) window, which cover its edges and its inside.
CHECKED_WINDOWS = {BASE: None, (1536, 2048): None, (3008, 4032): (0, 5, -1)}

# Run before anything else in the child: torch cannot be imported, as where it is not installed
# (``import torch`` raises ModuleNotFoundError, ``importlib.util.find_spec("torch")`` is None).
NO_TORCH = 'import sys; sys.modules["torch"] = None\n'


def _no_torch(code: str, timeout: float = 400) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNZ_")}
    result = subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """``.cnnz`` files of the sizes in SIZES, from one analysis of a BASE photo."""
    from pillow_cnnz.analysis import analyse_batch
    from pillow_cnnz.latents import code_latents
    from pillow_cnnz.weights import load

    folder = tmp_path_factory.mktemp("no-torch")
    model = load()
    ((z, y),) = analyse_batch([photo(*BASE, seed=3)], [QUALITY], "cpu")
    out = {}
    for h, w in SIZES:
        zh, zw = tiling.hyper_grid(h, w)
        yh, yw = tiling.latent_grid(h, w)
        reps = (1, -(-yh // y.shape[1]), -(-yw // y.shape[2]))
        big_z, big_y = np.tile(z, reps)[:, :zh, :zw], np.tile(y, reps)[:, :yh, :yw]
        latz, laty = code_latents(model, np.ascontiguousarray(big_z), np.ascontiguousarray(big_y))
        data = container.serialize(w, h, "RGB", QUALITY, model.model_id, {"LATZ": latz, "LATY": laty})
        out[h, w] = folder / f"{h}x{w}.cnnz"
        out[h, w].write_bytes(data)
    return out


def _torch_float32(path: Path, windows: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, mask of those computed) of torch's float32 synthesis of a file: of every tile
    window, or of those at the indexes ``windows`` (the others are left zero and unmasked)."""
    import torch

    from pillow_cnnz import latents, synthesis
    from pillow_cnnz.weights import load

    header, payloads = container.parse(path.read_bytes())
    y = latents.y_hat_of((header, payloads))[None]
    run = synthesis.torch_synthesis(load(header.model_id).net("cpu"), "cpu", "float32")
    count = len(tiling.synthesis_windows(header.height, header.width, y.shape[2:]))
    keep = set(range(count)) if windows is None else {i % count for i in windows}
    calls, mask = iter(range(count)), np.zeros((header.height, header.width), bool)

    def sampled(window: np.ndarray, core: tuple) -> np.ndarray:
        (r0, r1), (c0, c1) = core
        if next(calls) in keep:
            return run(window, core)
        return np.zeros((window.shape[0], r1 - r0, c1 - c0, 3), np.uint8)

    with torch.inference_mode():
        pixels = tiling.synthesize_tiles(sampled, y, header.height, header.width)[0]
    s = tiling.LATENT_STRIDE
    for i, ((r0, r1, c0, c1), _) in enumerate(tiling.synthesis_windows(header.height, header.width, y.shape[2:])):
        if i in keep:
            mask[r0 * s : r1 * s, c0 * s : c1 * s] = True
    return pixels, mask


def test_a_process_without_torch_decodes_large_files_in_numpy_within_2_levels_of_torch(files, tmp_path):
    paths = {f"{h}x{w}": str(p) for (h, w), p in files.items()}
    report = _no_torch(f"""
        import json, resource
        import numpy as np
        import pillow_cnnz
        from pillow_cnnz import precision

        paths, out = {paths!r}, {str(tmp_path)!r}
        report = {{"torch_installed": precision.torch_installed()}}
        for name, path in paths.items():
            before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20
            pixels = pillow_cnnz.decode(path)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
            np.save(f"{{out}}/{{name}}.npy", pixels)
            report[name] = {{"shape": pixels.shape, "mib_over_before": peak - before}}
        report["torch"] = repr(sys.modules["torch"])
        print(json.dumps(report))
    """)
    assert report["torch_installed"] is False
    assert report["torch"] == "None"  # nothing imported torch behind the check
    for (h, w), path in files.items():
        got = report[f"{h}x{w}"]
        assert got["shape"] == [h, w, 3]
        reference, mask = _torch_float32(path, CHECKED_WINDOWS[h, w])
        pixels = np.load(tmp_path / f"{h}x{w}.npy")
        diff = np.abs(pixels.astype(np.int16) - reference)[mask]
        assert mask.sum() >= min(h * w, 2 * 2**20) and diff.max() <= 2, (h, w, diff.max())
    # Tiled: a 12 MP synthesis in one piece would hold activations of several GiB (the last
    # hidden layer alone is 1504 x 2016 x 48 float32, 0.5 GiB, and a 3x3 convolution's
    # columns 9x that). Tiles keep the peak where a Kodak-sized decode puts it, whatever the
    # BLAS's own buffers add on a given machine.
    small, large = report["512x768"]["mib_over_before"], report["3008x4032"]["mib_over_before"]
    assert large < 2048 and large < small + 256, report


def test_a_process_without_torch_decodes_at_reduced_sizes_and_thumbnails(files, tmp_path, monkeypatch):
    path = str(files[BASE])
    report = _no_torch(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        import pillow_cnnz

        out = {{}}
        for scale in (2, 4, 8):
            pixels = pillow_cnnz.decode({path!r}, scale=scale)
            np.save(f"{str(tmp_path)}/{{scale}}.npy", pixels)
            out[scale] = pixels.shape
        with Image.open({path!r}) as im:
            im.thumbnail((96, 96))
            out["thumbnail"] = im.size
        out["torch"] = repr(sys.modules["torch"])
        print(json.dumps(out))
    """)
    assert report["torch"] == "None"
    h, w = BASE
    assert report["thumbnail"] == [96, 64]
    monkeypatch.setenv("CNNZ_PRECISION", "float32")
    monkeypatch.setattr(synthesis, "TORCH_FROM_PIXELS", 0)  # the reference: torch's float32
    for scale in (2, 4, 8):
        assert report[str(scale)] == [h // scale, w // scale, 3]
        with_torch = pillow_cnnz.decode(files[BASE], scale=scale)
        assert np.abs(np.load(tmp_path / f"{scale}.npy").astype(int) - with_torch).max() <= 2


def test_writing_without_torch_raises_an_oserror_naming_the_install_command(files, tmp_path):
    existing, png = tmp_path / "existing.cnnz", tmp_path / "in.png"
    existing.write_bytes(b"old contents")
    from PIL import Image

    Image.fromarray(photo(40, 60)).save(png)
    report = _no_torch(f"""
        import contextlib, io, json
        import numpy as np
        from PIL import Image
        import pillow_cnnz
        from pillow_cnnz import cli

        existing, png, out = {str(existing)!r}, {str(png)!r}, {str(tmp_path)!r}
        image = Image.open(png)
        array = np.asarray(image)
        attempts = {{
            "encode": lambda: pillow_cnnz.encode(array),
            "encode_batch": lambda: pillow_cnnz.encode_batch([array]),
            "save": lambda: pillow_cnnz.save(image, existing),
            "Image.save": lambda: image.save(out + "/new.cnnz"),
            "imageio": lambda: __import__("imageio.v3").v3.imwrite(out + "/new-io.cnnz", array),
        }}
        report = {{}}
        for name, attempt in attempts.items():
            try:
                attempt()
                report[name] = "no error"
            except OSError as e:
                report[name] = str(e)
        for name, argv in {{"cnnz encode": ["encode", png, existing],
                           "cnnz convert": ["convert", png, "-o", out + "/converted"]}}.items():
            with contextlib.redirect_stderr(io.StringIO()) as err:
                report[name] = [cli.main(argv), err.getvalue()]
        print(json.dumps(report))
    """)
    command = 'pip install "pillow-cnnz[torch]"'
    for name in ("encode", "encode_batch", "save", "Image.save", "imageio"):
        assert command in report[name], (name, report[name])
    for name in ("cnnz encode", "cnnz convert"):
        assert report[name][0] == 1 and command in report[name][1], (name, report[name])
    assert existing.read_bytes() == b"old contents"
    assert not any((tmp_path / name).exists() for name in ("new.cnnz", "new-io.cnnz", "converted"))


@pytest.mark.parametrize("variable, value", [("CNNZ_PRECISION", "bfloat16"), ("CNNZ_PRECISION", "int8"),
                                             ("CNNZ_PRECISION", "float64"), ("CNNZ_DEVICE", "cuda")])
def test_a_setting_only_torch_runs_names_itself_where_torch_is_missing(monkeypatch, files, variable, value):
    monkeypatch.setattr(precision, "torch_installed", lambda: False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(OSError, match=rf'{variable}={value} needs torch.*pip install "pillow-cnnz\[torch\]"'):
        pillow_cnnz.decode(files[BASE])
