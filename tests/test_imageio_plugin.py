"""imageio reads and writes ``.cnnz`` through its Pillow plugin (v3 and v2 APIs).

``pillow_cnnz`` only teaches imageio that ``.cnnz`` is served by Pillow; these tests pin
what users see through imageio: paths, ``<bytes>``, ``format="cnnz"``, properties,
metadata, save options and errors.
"""
from __future__ import annotations

import io
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz

imageio = pytest.importorskip("imageio")
import imageio.v2 as iio2  # noqa: E402
import imageio.v3 as iio  # noqa: E402
from imageio.config import known_extensions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAGIC = b"\x89CNNZ\r\n\x1a"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def assert_similar(decoded: np.ndarray, original: np.ndarray) -> None:
    """Loose check that a lossy decode is this image (early-checkpoint weights): clearly
    closer to the original than to the same picture turned upside down."""
    decoded, original = np.asarray(decoded), np.asarray(original)
    assert decoded.shape == original.shape
    assert decoded.dtype == np.uint8
    score = psnr(decoded, original)
    assert score > 12, f"PSNR {score:.1f} dB"
    assert score > psnr(decoded, original[::-1, ::-1]) + 3


def run_py(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def cnnz_path(tmp_path_factory, photo_array) -> Path:
    """The test photo written by ``iio.imwrite`` at quality 2.5 with an EXIF orientation of 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "CnnzCam"
    path = tmp_path_factory.mktemp("imageio") / "photo.cnnz"
    iio.imwrite(path, photo_array, quality=2.5, exif=exif)
    return path


# --- registration --------------------------------------------------------------------

def test_imageio_routes_cnnz_to_its_pillow_plugin():
    """To imageio's Pillow plugin, as the subclass that writes a file by name all or nothing."""
    from imageio.config import known_plugins
    from imageio.plugins.pillow import PillowPlugin

    pillow_cnnz.register()
    pillow_cnnz.register()
    entries = [e for e in known_extensions[".cnnz"] if e.name == "CNNZ"]
    assert len(entries) == 1
    assert entries[0].priority == ["pillow-cnnz"]
    assert known_extensions[".cnnz"][0] is entries[0]
    plugin = known_plugins["pillow-cnnz"].plugin_class
    assert issubclass(plugin, PillowPlugin) and plugin.__name__ == "CnnzPlugin"


def test_import_does_not_import_imageio_but_registers_when_it_loads():
    lines = run_py("""
        import sys
        import pillow_cnnz
        print("imageio" in sys.modules)
        from imageio.config import known_extensions, known_plugins
        print([e.name for e in known_extensions[".cnnz"]], known_plugins["pillow-cnnz"].plugin_class.__name__)
    """)
    assert lines == ["False", "['CNNZ'] CnnzPlugin"]


def test_registers_when_imageio_was_imported_first():
    lines = run_py("""
        from imageio.config import known_extensions, known_plugins
        print(".cnnz" in known_extensions)
        import pillow_cnnz
        pillow_cnnz.register()
        print([e.name for e in known_extensions[".cnnz"]], known_plugins["pillow-cnnz"].plugin_class.__name__)
    """)
    assert lines == ["False", "['CNNZ'] CnnzPlugin"]


# --- v3 ------------------------------------------------------------------------------

def test_v3_imwrite_and_imread_path(tmp_path, photo_array):
    path = tmp_path / "x.cnnz"
    iio.imwrite(path, photo_array)
    assert path.read_bytes()[:8] == MAGIC
    with Image.open(path) as im:
        assert (im.format, im.mode, im.info["quality"]) == ("CNNZ", "RGB", 4.0)
    assert_similar(iio.imread(path), photo_array)
    assert_similar(iio.imread(str(path)), photo_array)


def test_v3_imwrite_passes_quality_and_metadata(cnnz_path):
    with Image.open(cnnz_path) as im:
        assert im.info["quality"] == 2.5
        assert im.getexif()[0x0112] == 6


def test_v3_invalid_quality_raises(tmp_path, photo_array):
    with pytest.raises(ValueError, match=r"\b1\b.*\b8\b"):
        iio.imwrite(tmp_path / "x.cnnz", photo_array, quality=8.5)


def test_v3_improps(cnnz_path):
    props = iio.improps(cnnz_path)
    assert props.shape == (70, 130, 3)
    assert props.dtype == np.uint8
    assert not props.is_batch


def test_v3_immeta(cnnz_path):
    meta = iio.immeta(cnnz_path, exclude_applied=False)
    assert meta["quality"] == 2.5
    assert re.fullmatch("[0-9a-f]{16}", meta["model_id"])
    assert meta["mode"] == "RGB"
    assert meta["Orientation"] == 6
    assert meta["Make"] == "CnnzCam"


def test_v3_imread_rotate_applies_exif_orientation(cnnz_path):
    assert iio.imread(cnnz_path, rotate=True).shape == (130, 70, 3)


def test_v3_bytes_roundtrip(photo_array):
    data = iio.imwrite("<bytes>", photo_array, extension=".cnnz")
    assert isinstance(data, bytes)
    assert data[:8] == MAGIC
    assert_similar(iio.imread(data, extension=".cnnz"), photo_array)


@pytest.mark.parametrize("channels", [None, 2, 4], ids=["L", "LA", "RGBA"])
def test_v3_grey_and_alpha_arrays(make_photo, channels):
    rgb = make_photo(48, 80)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.tile(np.arange(80, dtype=np.uint8) * 3, (48, 1))
    arr = {None: grey, 2: np.dstack([grey, alpha]), 4: np.dstack([rgb, alpha])}[channels]
    back = iio.imread(iio.imwrite("<bytes>", arr, extension=".cnnz"), extension=".cnnz")
    assert back.shape == arr.shape
    if channels:
        assert np.array_equal(back[..., -1], alpha)
    assert_similar(back if channels is None else back[..., :-1], arr if channels is None else arr[..., :-1])


@pytest.mark.parametrize(("dtype", "mode"), [(np.uint16, "I;16"), (np.float32, "F")])
def test_v3_unsupported_dtype_raises_and_says_to_convert(tmp_path, dtype, mode):
    with pytest.raises(OSError, match=re.escape(f"mode {mode} ") + ".*convert"):
        iio.imwrite(tmp_path / "x.cnnz", np.zeros((10, 20), dtype))


# --- v2 ------------------------------------------------------------------------------

def test_v2_imwrite_and_imread_path(tmp_path, photo_array):
    path = tmp_path / "x.cnnz"
    iio2.imwrite(path, photo_array)
    assert path.read_bytes()[:8] == MAGIC
    assert_similar(iio2.imread(path), photo_array)


def test_v2_format_cnnz_with_another_extension(tmp_path, photo_array):
    path = tmp_path / "x.bin"
    iio2.imwrite(path, photo_array, format="cnnz", quality=3)
    assert path.read_bytes()[:8] == MAGIC
    with Image.open(path) as im:
        assert im.info["quality"] == 3.0
    assert_similar(iio2.imread(path, format="cnnz"), photo_array)


def test_v2_imwrite_bytes_with_format(photo_array):
    data = iio2.imwrite("<bytes>", photo_array, format="cnnz")
    assert data[:8] == MAGIC
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.size, im.mode) == ("CNNZ", (130, 70), "RGB")


# --- writes are all or nothing (issue 35, item 4) ----------------------------------------------

OLD = b"precious old contents"


def _imwrite(api: str, path: Path, array: np.ndarray, **options) -> None:
    if api == "v3":
        iio.imwrite(path, array, **options)
    elif api == "v2":
        iio2.imwrite(path, array, **options)
    else:  # v2, naming the format for another extension
        iio2.imwrite(path, array, format="cnnz", **options)


APIS = ["v3", "v2", "v2 format=cnnz"]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("bad", [{"quality": 95}, {"quality": "high"}, {"method": 9}, {"dtype": np.uint16}],
                         ids=["quality=95", "quality=high", "method=9", "uint16"])
def test_a_failed_imwrite_leaves_the_existing_file_untouched(tmp_path, photo_array, api, bad):
    """imageio opened (and emptied) the file before Pillow encoded: a bad option left 0 bytes."""
    path = tmp_path / ("old.bin" if "format" in api else "old.cnnz")
    path.write_bytes(OLD)
    options = dict(bad)
    dtype = options.pop("dtype", None)
    array = photo_array if dtype is None else photo_array[..., 0].astype(dtype)  # mode I;16
    with pytest.raises((OSError, ValueError)):
        _imwrite(api, path, array, **options)
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("api", APIS)
def test_imwrite_replaces_a_file_as_save_does(tmp_path, photo_array, api):
    """Through the same path as ``pillow_cnnz.save``: a symlink is followed, the mode kept."""
    real = tmp_path / ("real.bin" if "format" in api else "real.cnnz")
    real.write_bytes(OLD)
    real.chmod(0o604)
    link = tmp_path / ("link.bin" if "format" in api else "link.cnnz")
    link.symlink_to(real.name)
    _imwrite(api, link, photo_array, quality=3)
    assert link.is_symlink() and real.read_bytes()[:8] == MAGIC
    assert real.stat().st_mode & 0o777 == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([real.name, link.name])
