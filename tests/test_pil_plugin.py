"""The Pillow plugin: ``Image.save`` / ``Image.open`` / ``load()`` for ``.cnnz``.

Laid out like Pillow's own format tests (Tests/test_file_webp.py): a ``roundtrip()``
helper, one test per behaviour, lossy pixels compared with a tolerance. The weights are
an early checkpoint, so pixel checks are loose sanity bounds (see ``assert_similar``),
never absolute quality targets.
"""
from __future__ import annotations

import io
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

import pillow_cnnz
from pillow_cnnz import codec, container, pil_plugin, precision

ROOT = Path(__file__).resolve().parents[1]
MAGIC = b"\x89CNNZ\r\n\x1a"
METADATA_TAGS = ("EXIF", "ICCP", "XMP ")
PIXEL_TAGS = ("ALPH", "LATZ", "LATY")
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
       b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta><?xpacket end="r"?>')


# --- helpers -------------------------------------------------------------------------

def save_bytes(im: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="CNNZ", **options)
    return buf.getvalue()


def roundtrip(im: Image.Image, **options) -> Image.Image:
    """Save ``im`` as CNNZ in memory, open it again and decode it."""
    reloaded = Image.open(io.BytesIO(save_bytes(im, **options)))
    reloaded.load()
    return reloaded


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def assert_similar(decoded: Image.Image | np.ndarray, original: Image.Image | np.ndarray) -> None:
    """Loose check that a lossy decode is this image: the shipped weights are an early
    checkpoint, so no absolute quality target, but the decode must be clearly closer to
    the original than to the same picture turned upside down."""
    decoded, original = np.asarray(decoded), np.asarray(original)
    assert decoded.shape == original.shape
    assert decoded.dtype == np.uint8
    score = psnr(decoded, original)
    assert score > 12, f"PSNR {score:.1f} dB"
    assert score > psnr(decoded, original[::-1, ::-1]) + 3


def sections(data: bytes) -> dict[str, container.Section]:
    _, found = container.read_directory(io.BytesIO(data))
    return {s.tag: s for s in found}


def with_header_bytes(data: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with header bytes at ``offset`` replaced and the header CRC32 made valid again."""
    out = bytearray(data)
    out[offset : offset + len(new)] = new
    out[36:40] = struct.pack("<I", zlib.crc32(bytes(out[:36])))
    return bytes(out)


def exif_with_orientation(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "CnnzCam"  # Make
    return exif


@pytest.fixture(scope="session")
def rgb_file(photo_array) -> bytes:
    """The test photo as a plain RGB .cnnz at the default quality (no metadata)."""
    return save_bytes(Image.fromarray(photo_array))


@pytest.fixture(scope="session")
def full_file(photo_array, alpha_plane) -> bytes:
    """An RGBA .cnnz holding all six sections: EXIF, ICCP, XMP, ALPH, LATZ, LATY."""
    im = Image.fromarray(np.dstack([photo_array, alpha_plane]))
    return save_bytes(im, exif=exif_with_orientation(), icc_profile=b"\0icc" * 50, xmp=XMP)


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decoding fail loudly, to show an operation did not decode."""
    def fail(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(codec, "decode_payloads", fail)


# --- registration --------------------------------------------------------------------

def test_extension_and_mime_are_registered():
    assert Image.registered_extensions()[".cnnz"] == "CNNZ"
    assert Image.MIME["CNNZ"] == "image/x-cnnz"
    assert "CNNZ" in Image.OPEN
    assert "CNNZ" in Image.SAVE


def test_register_can_be_called_again(rgb_file):
    pillow_cnnz.register()
    pillow_cnnz.register()
    assert Image.ID.count("CNNZ") == 1
    assert Image.registered_extensions()[".cnnz"] == "CNNZ"
    assert Image.SAVE["CNNZ"] is pil_plugin._save
    with Image.open(io.BytesIO(rgb_file)) as im:
        assert im.format == "CNNZ"


# --- save and open -------------------------------------------------------------------

def test_save_to_path_and_open(tmp_path, photo_image):
    path = tmp_path / "x.cnnz"
    photo_image.save(str(path), quality=4)  # format from the extension
    assert path.read_bytes()[:8] == MAGIC
    with Image.open(path) as im:
        assert im.format == "CNNZ"
        assert im.get_format_mimetype() == "image/x-cnnz"
        assert im.size == (130, 70)
        assert im.mode == "RGB"
        assert im.info["quality"] == 4.0
        assert re.fullmatch("[0-9a-f]{16}", im.info["model_id"])


def test_save_to_buffer_with_fractional_quality(photo_image):
    buf = io.BytesIO()
    photo_image.save(buf, format="CNNZ", quality=2.5)
    buf.seek(0)
    with Image.open(buf) as im:
        assert im.format == "CNNZ"
        assert im.info["quality"] == 2.5


def test_quality_defaults_to_4(rgb_file):
    with Image.open(io.BytesIO(rgb_file)) as im:
        assert im.info["quality"] == 4.0


def test_quality_is_stored_to_a_thousandth(make_photo):
    im = Image.fromarray(make_photo(8, 8))
    with Image.open(io.BytesIO(save_bytes(im, quality=3.14159))) as reloaded:
        assert reloaded.info["quality"] == pytest.approx(3.142, abs=1e-9)


@pytest.mark.parametrize("quality", [1, 8])
def test_quality_range_is_inclusive(make_photo, quality):
    im = Image.fromarray(make_photo(8, 8))
    with Image.open(io.BytesIO(save_bytes(im, quality=quality))) as reloaded:
        assert reloaded.info["quality"] == float(quality)


@pytest.mark.parametrize("quality", [0.5, 0, -1, 8.5, 9, math.nan, math.inf, "high", "4", True, False])
def test_invalid_quality_raises_and_writes_nothing(photo_image, quality):
    buf = io.BytesIO()
    with pytest.raises(ValueError, match=r"quality.*\b1\b.*\b8\b"):
        photo_image.save(buf, format="CNNZ", quality=quality)
    assert buf.getvalue() == b""


def test_invalid_quality_leaves_no_file(tmp_path, photo_image):
    path = tmp_path / "x.cnnz"
    with pytest.raises(ValueError):
        photo_image.save(path, quality=0.5)
    assert not path.exists()


def test_higher_quality_gives_larger_files(photo_image):
    sizes = [len(save_bytes(photo_image, quality=q)) for q in (1, 4, 8)]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1]


def test_open_reads_only_the_header(rgb_file, no_decoding):
    class CountingReader(io.BytesIO):
        bytes_read = 0

        def read(self, size=-1):
            data = super().read(size)
            self.bytes_read += len(data)
            return data

    fp = CountingReader(rgb_file)
    with Image.open(fp) as im:
        assert (im.format, im.size, im.mode) == ("CNNZ", (130, 70), "RGB")
        assert im.info["quality"] == 4.0
    # 40-byte header + two 12-byte section headers, and Pillow's 16-byte prefix.
    assert fp.bytes_read <= 16 + 40 + 2 * 12
    assert len(rgb_file) > 2 * (16 + 40 + 2 * 12)  # so the bound above is far from the whole file


def test_open_does_not_import_torch(tmp_path, full_file):
    path = tmp_path / "x.cnnz"
    path.write_bytes(full_file)
    code = f"""
        import sys
        import pillow_cnnz
        from PIL import Image
        im = Image.open({str(path)!r})
        print(im.format, im.size, im.mode, im.info["quality"], im.getexif()[0x0112])
        print([m for m in ("torch", "pillow_cnnz.codec", "pillow_cnnz.weights") if m in sys.modules])
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["CNNZ (130, 70) RGBA 4.0 6", "[]"]


@pytest.mark.skipif(precision.cuda_possible(), reason="an NVIDIA driver is present: decoding goes to torch")
def test_load_on_a_cpu_decodes_without_importing_torch_or_inflating_the_encoder(tmp_path, rgb_file):
    path = tmp_path / "x.cnnz"
    path.write_bytes(rgb_file)
    code = f"""
        import sys
        import numpy as np
        import pillow_cnnz
        from PIL import Image
        from pillow_cnnz import weights
        with Image.open({str(path)!r}) as im:
            im.load()
            print(im.size, float(np.asarray(im).std()) > 1, "torch" in sys.modules)
        read = weights.load().arrays.inflated()
        print(sorted({{k.split(".")[0] for k in read if k.startswith("net/")}}))
    """
    # float32, the precision a decode-only process sets for its cold start: its synthesis runs in
    # numpy (``auto`` runs in torch on CPUs with bfloat16 or VNNI, test_precision.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNZ_")} | {"CNNZ_PRECISION": "float32"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "(130, 70) True False"
    assert lines[1] == "['net/g_s', 'net/log2_gain', 'net/log2_inv_gain']"  # not g_a, h_a, h_s, context


def test_load_decodes_pixels_similar_to_the_original(photo_image):
    im = roundtrip(photo_image, quality=8)
    assert im.mode == "RGB"
    assert_similar(im, photo_image)


def test_load_gives_the_same_pixels_as_the_numpy_api(rgb_file):
    with Image.open(io.BytesIO(rgb_file)) as im:
        assert np.array_equal(np.asarray(im), pillow_cnnz.decode(rgb_file))


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_load_from_a_path_decodes_the_pixels_not_the_file_bytes(tmp_path, make_photo, mode):
    # A file larger than the raw pixels (here through a big XMP packet) must still be
    # decoded when opened by name: Pillow may memory-map a "raw" tile from the file.
    im = Image.fromarray(make_photo(48, 80)).convert(mode)
    data = save_bytes(im, xmp=b" " * (4 * 48 * 80))
    path = tmp_path / "x.cnnz"
    path.write_bytes(data)
    with Image.open(path) as reloaded:
        reloaded.load()
        assert np.array_equal(np.asarray(reloaded), pillow_cnnz.decode(data))


@pytest.mark.parametrize("size", [(1, 1), (17, 3), (3, 17), (80, 48)])
def test_sizes_not_multiple_of_64_roundtrip(make_photo, size):
    im = Image.fromarray(make_photo(size[1], size[0], seed=1))
    reloaded = roundtrip(im)
    assert reloaded.size == size
    assert np.asarray(reloaded).shape == (size[1], size[0], 3)


def test_load_closes_the_file_it_opened(tmp_path, rgb_file):
    path = tmp_path / "x.cnnz"
    path.write_bytes(rgb_file)
    im = Image.open(path)
    fp = im.fp
    im.load()
    assert fp.closed
    im.load()  # a second load is a no-op
    assert im.size == (130, 70)


def test_load_leaves_the_callers_file_open(tmp_path, rgb_file):
    path = tmp_path / "x.cnnz"
    path.write_bytes(rgb_file)
    with open(path, "rb") as f:
        with Image.open(f) as im:
            im.load()
        assert not f.closed


# --- paths and file objects ----------------------------------------------------------

def _save_str(im, path):
    im.save(str(path))


def _save_pathlib(im, path):
    im.save(path)


def _save_file_object(im, path):
    with open(path, "wb") as f:
        im.save(f)  # format from f.name


def _save_bytesio(im, path):
    buf = io.BytesIO()
    im.save(buf, format="CNNZ")
    path.write_bytes(buf.getvalue())


def _loaded(im: Image.Image) -> tuple:
    im.load()
    return im.format, im.size, im.mode, np.asarray(im)


def _open_str(path):
    with Image.open(str(path)) as im:
        return _loaded(im)


def _open_pathlib(path):
    with Image.open(path) as im:
        return _loaded(im)


def _open_file_object(path):
    with open(path, "rb") as f, Image.open(f) as im:
        return _loaded(im)


def _open_bytesio(path):
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        return _loaded(im)


@pytest.mark.parametrize(("save", "open_"), [
    (_save_str, _open_str),
    (_save_pathlib, _open_pathlib),
    (_save_file_object, _open_file_object),
    (_save_bytesio, _open_bytesio),
], ids=["str", "pathlib", "file-object", "BytesIO"])
def test_paths_and_file_objects(tmp_path, make_photo, save, open_):
    original = Image.fromarray(make_photo(48, 80))
    path = tmp_path / "x.cnnz"
    save(original, path)
    assert path.read_bytes()[:8] == MAGIC
    format_, size, mode, pixels = open_(path)
    assert (format_, size, mode) == ("CNNZ", (80, 48), "RGB")
    assert_similar(pixels, original)


# --- modes ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_mode_is_kept(photo_image, mode):
    original = photo_image.convert(mode)
    im = roundtrip(original, quality=8)
    assert im.mode == mode
    assert_similar(im, original)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_lossless(photo_array, alpha_plane, mode):
    original = Image.fromarray(np.dstack([photo_array, alpha_plane])).convert(mode)
    im = roundtrip(original, quality=8)
    assert im.mode == mode
    assert np.array_equal(np.asarray(im.getchannel("A")), alpha_plane)
    colour = "RGB" if mode == "RGBA" else "L"
    assert_similar(im.convert(colour), original.convert(colour))


def test_palette_is_saved_as_rgb(photo_image):
    original = photo_image.quantize(32)
    assert not original.has_transparency_data
    im = roundtrip(original, quality=8)
    assert im.mode == "RGB"
    assert_similar(im, original.convert("RGB"))


def test_palette_with_transparency_is_saved_as_rgba(photo_image):
    original = photo_image.quantize(32)
    original.info["transparency"] = 3
    expected_alpha = np.where(np.asarray(original) == 3, 0, 255)
    assert 0 < (expected_alpha == 0).sum() < expected_alpha.size
    im = roundtrip(original, quality=8)
    assert im.mode == "RGBA"
    assert np.array_equal(np.asarray(im.getchannel("A")), expected_alpha)
    assert_similar(im.convert("RGB"), original.convert("RGB"))


def test_palette_with_alpha_is_saved_as_rgba(photo_image, alpha_plane):
    original = photo_image.quantize(32).convert("PA")
    original.putalpha(Image.fromarray(alpha_plane))
    assert original.mode == "PA"
    im = roundtrip(original)
    assert im.mode == "RGBA"
    assert np.array_equal(np.asarray(im.getchannel("A")), alpha_plane)


def test_bilevel_is_saved_as_l(photo_image):
    original = photo_image.convert("1", dither=Image.Dither.NONE)
    im = roundtrip(original, quality=8)
    assert im.mode == "L"
    assert_similar(im, original.convert("L"))


@pytest.mark.parametrize(("mode", "stored"), [("RGBX", "RGB"), ("YCbCr", "RGB"), ("RGBa", "RGBA"), ("La", "LA")])
def test_pillow_variants_of_stored_modes_are_saved_as_them(photo_image, alpha_plane, mode, stored):
    original = photo_image.convert("L") if stored == "LA" else photo_image
    if stored.endswith("A"):
        original = original.copy()
        original.putalpha(Image.fromarray(alpha_plane))
    variant = original.convert(mode)
    expected = variant.convert(stored)  # what Pillow makes of it: the picture the file must hold
    im = roundtrip(variant, quality=8)
    assert im.mode == stored
    assert_similar(im, expected)
    if stored.endswith("A"):  # alpha is stored losslessly
        assert np.array_equal(np.asarray(im.getchannel("A")), np.asarray(expected.getchannel("A")))


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "LAB", "HSV"])
def test_unsupported_mode_raises_and_says_to_convert(mode):
    im = Image.new(mode, (20, 10))
    buf = io.BytesIO()
    with pytest.raises(OSError, match=re.escape(f"mode {mode} ") + ".*convert"):
        im.save(buf, format="CNNZ")
    assert buf.getvalue() == b""


# --- metadata ------------------------------------------------------------------------

@pytest.mark.parametrize("as_bytes", [False, True], ids=["Exif", "bytes"])
def test_exif_roundtrip(make_photo, as_bytes):
    exif = exif_with_orientation()
    data = save_bytes(Image.fromarray(make_photo(8, 8)), exif=exif.tobytes() if as_bytes else exif)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["exif"] == exif.tobytes()
        assert im.getexif()[0x0112] == 6
        assert im.getexif()[0x010F] == "CnnzCam"


def test_exif_orientation_is_applied_by_exif_transpose(photo_image):
    im = roundtrip(photo_image, exif=exif_with_orientation(6))
    transposed = ImageOps.exif_transpose(im)
    assert transposed.size == (70, 130)
    assert 0x0112 not in transposed.getexif()


def test_icc_profile_roundtrip(make_photo):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = save_bytes(Image.fromarray(make_photo(8, 8)), icc_profile=icc)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["icc_profile"] == icc


@pytest.mark.parametrize("xmp", [XMP, XMP.decode()], ids=["bytes", "str"])
def test_xmp_roundtrip(make_photo, xmp):
    data = save_bytes(Image.fromarray(make_photo(8, 8)), xmp=xmp)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["xmp"] == XMP


def test_metadata_is_read_on_open_without_decoding(full_file, no_decoding):
    with Image.open(io.BytesIO(full_file)) as im:
        assert im.info["exif"] == exif_with_orientation().tobytes()
        assert im.info["icc_profile"] == b"\0icc" * 50
        assert im.info["xmp"] == XMP
        assert im.getexif()[0x0112] == 6


def test_no_metadata_means_no_info_keys(rgb_file):
    with Image.open(io.BytesIO(rgb_file)) as im:
        assert not {"exif", "icc_profile", "xmp"} & set(im.info)
        assert len(im.getexif()) == 0
        assert set(sections(rgb_file)) == {"LATZ", "LATY"}


def test_resave_keeps_metadata(full_file):
    with Image.open(io.BytesIO(full_file)) as im:
        resaved = save_bytes(im)
    with Image.open(io.BytesIO(resaved)) as im:
        assert im.info["exif"] == exif_with_orientation().tobytes()
        assert im.info["icc_profile"] == b"\0icc" * 50
        assert im.info["xmp"] == XMP


# --- bad input -----------------------------------------------------------------------

def test_png_named_cnnz_opens_as_png(tmp_path, photo_image):
    path = tmp_path / "really_a_png.cnnz"
    photo_image.save(path, format="PNG")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert np.array_equal(np.asarray(im), np.asarray(photo_image))


@pytest.mark.parametrize("data", [b"", b"neither cnnz nor any other image", MAGIC[:7]],
                         ids=["empty", "text", "short-magic"])
def test_unidentified_bytes(tmp_path, data):
    path = tmp_path / "x.cnnz"
    path.write_bytes(data)
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)


@pytest.mark.parametrize("where", ["header", "section header", "LATY", "last byte"])
def test_truncated_file_raises(rgb_file, where):
    laty = sections(rgb_file)["LATY"]
    cut = {"header": 20, "section header": 40 + 6, "LATY": laty.offset + laty.length // 2,
           "last byte": len(rgb_file) - 1}[where]
    with pytest.raises(OSError, match="truncated"):
        with Image.open(io.BytesIO(rgb_file[:cut])) as im:
            im.load()


@pytest.mark.parametrize("tag", METADATA_TAGS + PIXEL_TAGS)
def test_damaged_section_is_named(full_file, tag):
    section = sections(full_file)[tag]
    damaged = bytearray(full_file)
    damaged[section.offset + section.length // 2] ^= 0x10
    match = re.escape(f"section {tag!r}")
    if tag in METADATA_TAGS:  # read by Image.open
        with pytest.raises(OSError, match=match):
            Image.open(io.BytesIO(bytes(damaged)))
    else:  # read by load()
        with Image.open(io.BytesIO(bytes(damaged))) as im:
            assert im.size == (130, 70)
            with pytest.raises(OSError, match=match):
                im.load()


def test_unsupported_version_is_named(rgb_file):
    with pytest.raises(OSError, match=r"version 3\b"):
        Image.open(io.BytesIO(with_header_bytes(rgb_file, 8, struct.pack("<H", 3))))


@pytest.mark.parametrize(("limit", "outcome"), [
    (1000, Image.DecompressionBombError),  # 9100 pixels > 2 × limit
    (5000, Image.DecompressionBombWarning),  # limit < 9100 pixels <= 2 × limit
])
def test_decompression_bomb_limit_is_honoured_before_decoding(monkeypatch, rgb_file, no_decoding,
                                                              limit, outcome):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    if issubclass(outcome, Warning):
        with pytest.warns(outcome), Image.open(io.BytesIO(rgb_file)) as im:
            assert im.size == (130, 70)
    else:
        with pytest.raises(outcome):
            Image.open(io.BytesIO(rgb_file))


def test_unknown_model_id_is_named_on_load(rgb_file):
    model_id = bytes.fromhex("0123456789abcdef")
    data = with_header_bytes(rgb_file, 24, model_id)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["model_id"] == "0123456789abcdef"
        with pytest.raises(Exception, match="0123456789abcdef"):
            im.load()
