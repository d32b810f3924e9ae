"""Errors a user meets: bad arguments, bad bytes, bad environment variables, large images, modes
the codec does not store, and the command line's one-line errors."""
from __future__ import annotations

import ast
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import cli

from .conftest import _photo as photo

PACKAGE = Path(pillow_cnnz.__file__).resolve().parent


@pytest.fixture(scope="module")
def small_file() -> bytes:
    return pillow_cnnz.encode(photo(24, 40, seed=2), 4.0)


# --- batch sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [-1, 0, 1.5, True, "2"])
def test_batch_size_must_be_a_whole_number_from_one(small_file, batch_size):
    image = photo(24, 40)
    with pytest.raises(ValueError, match="batch_size"):
        pillow_cnnz.encode_batch([image, image], batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size"):
        pillow_cnnz.decode_batch([small_file, small_file], batch_size=batch_size)


# --- the numpy API's errors and inputs ---------------------------------------------------------


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data", [b"", _png(), b"\x89CNNZ\r\n\x1a"], ids=["empty", "png", "magic only"])
def test_decode_of_bytes_that_are_no_cnnz_file_raises_corrupt_file_error(data):
    with pytest.raises(pillow_cnnz.CorruptFileError, match="cnnz|truncated") as caught:
        pillow_cnnz.decode(data)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)


def test_the_error_types_are_exported():
    from pillow_cnnz import container, weights

    assert pillow_cnnz.CorruptFileError is container.CorruptFileError
    assert issubclass(pillow_cnnz.UnsupportedVersionError, pillow_cnnz.CorruptFileError)
    assert pillow_cnnz.WeightsError is weights.WeightsError and issubclass(pillow_cnnz.WeightsError, OSError)
    assert {"CorruptFileError", "UnsupportedVersionError", "WeightsError"} <= set(pillow_cnnz.__all__)


def test_decode_takes_a_path(tmp_path, small_file):
    path = tmp_path / "x.cnnz"
    path.write_bytes(small_file)
    expected = pillow_cnnz.decode(small_file)
    np.testing.assert_array_equal(pillow_cnnz.decode(path), expected)
    np.testing.assert_array_equal(pillow_cnnz.decode(str(path)), expected)
    np.testing.assert_array_equal(pillow_cnnz.decode_batch([path, small_file])[0], expected)
    other = tmp_path / "x.png"
    other.write_bytes(_png())
    with pytest.raises(pillow_cnnz.CorruptFileError, match=re.escape(str(other))):
        pillow_cnnz.decode(other)
    with pytest.raises(FileNotFoundError):
        pillow_cnnz.decode(tmp_path / "missing.cnnz")
    with pytest.raises(TypeError, match="bytes of a .cnnz file or a path"):
        pillow_cnnz.decode(12)


# --- lossless ------------------------------------------------------------------------------


def test_lossless_is_refused_naming_a_lossless_format(tmp_path, photo_image):
    with pytest.raises(ValueError, match="lossy.*PNG"):
        photo_image.save(io.BytesIO(), "CNNZ", lossless=True)
    path = tmp_path / "mask.cnnz"
    with pytest.raises(ValueError, match="lossy"):
        pillow_cnnz.save(photo_image, path, lossless=True)
    assert not path.exists()
    photo_image.save(io.BytesIO(), "CNNZ", lossless=False)  # what it is anyway


# --- environment variables -----------------------------------------------------------------

BAD_SETTINGS = [("CNNZ_THREADS", "abc"), ("CNNZ_THREADS", "0"), ("CNNZ_THREADS", "-2"), ("CNNZ_THREADS", "1.5"),
                ("CNNZ_DEVICE", "gpu"), ("CNNZ_PRECISION", "fp16")]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_a_bad_environment_variable_is_named_with_its_allowed_values(monkeypatch, tmp_path, small_file, name, value):
    path = tmp_path / "x.cnnz"
    path.write_bytes(small_file)
    monkeypatch.setenv(name, value)
    message = f"{name}={value!r}.*; use "
    with pytest.raises(ValueError, match=message):
        pillow_cnnz.decode(small_file)
    with pytest.raises(ValueError, match=message), Image.open(path) as im:
        im.load()
    with pytest.raises(ValueError, match=message):
        pillow_cnnz.encode(photo(16, 16))


def test_the_environment_is_read_in_one_place():
    """Every read of a ``CNNZ_`` variable (a call given its name, or ``os.environ[...]``) is in
    ``settings.py``, where it is checked; setting one (``os.environ[...] = ...``) is anyone's."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):  # os.environ.get("CNNZ_..."), os.getenv(...), settings' own reader
                args = node.args
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                args = [node.slice]
            else:
                continue
            if any(isinstance(a, ast.Constant) and str(a.value).startswith("CNNZ_") for a in args):
                readers.add(path.relative_to(PACKAGE).as_posix())
    assert readers == {"settings.py"}


# --- large images ------------------------------------------------------------------------


def test_numpy_decode_warns_above_the_pixel_limit_and_refuses_above_twice_it(monkeypatch, small_file):
    pixels = 24 * 40
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pillow_cnnz.decode(small_file)  # at the limit: nothing
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels - 1)
    with pytest.warns(Image.DecompressionBombWarning, match=f"{pixels} pixels"):
        pillow_cnnz.decode(small_file)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels // 2 - 1)
    with pytest.raises(Image.DecompressionBombError):
        pillow_cnnz.decode(small_file)


def test_image_open_warns_once_above_the_pixel_limit(monkeypatch, small_file):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 40 - 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(small_file)) as im:
            im.load()
    assert [w.category for w in caught] == [Image.DecompressionBombWarning]  # Pillow's, not a second one


# --- modes the codec does not store ---------------------------------------------------------


def _advised(message: str, im: Image.Image) -> Image.Image:
    """The image the error message's advice (the longest ``im....`` expression in it) makes."""
    start = message.index("im.")
    ends = [m.end() for m in re.finditer(r"\)", message) if m.end() > start]
    for end in reversed(ends):
        try:
            code = compile(message[start:end], "<advice>", "eval")
        except SyntaxError:
            continue
        return eval(code, {}, {"im": im})
    raise AssertionError(f"no advice to run in {message!r}")


@pytest.mark.parametrize(("mode", "samples", "scale"), [
    ("I;16", np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16), 1 / 256),
    ("I", np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.int32), 1 / 256),
    ("F", np.linspace(0, 1, 48 * 64).reshape(48, 64).astype(np.float32), 255),
])
def test_the_advice_for_a_mode_with_more_than_8_bits_keeps_the_picture(mode, samples, scale):
    im = Image.fromarray(samples, mode) if mode != "I;16" else Image.fromarray(samples)
    assert im.mode == mode
    with pytest.raises(OSError, match=f"mode {re.escape(mode)}") as caught:
        im.save(io.BytesIO(), "CNNZ")
    fixed = _advised(str(caught.value), im)
    assert np.abs(np.asarray(fixed, np.float64) - samples * scale).max() <= 1  # not clipped to white
    fixed.save(io.BytesIO(), "CNNZ")


# --- the command line ----------------------------------------------------------------------


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cnnz {argv[0]}: error: "), err
    return err


def test_the_cli_reports_a_decompression_bomb_in_one_line(monkeypatch, capsys, tmp_path, small_file):
    src = tmp_path / "x.cnnz"
    src.write_bytes(small_file)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert "decompression bomb" in _one_line_error(capsys, ["decode", str(src), str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS[::2])
def test_the_cli_reports_a_bad_environment_variable_in_one_line(monkeypatch, capsys, tmp_path, small_file,
                                                               name, value):
    src = tmp_path / "x.cnnz"
    src.write_bytes(small_file)
    monkeypatch.setenv(name, value)
    assert name in _one_line_error(capsys, ["decode", str(src), str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()
