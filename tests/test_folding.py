"""Thin images coded folded (``pillow_cnnz.folding``): which ones fold, the fold and unfold of
pixels, and files that round-trip through the codec and Pillow at their own size and mode, alpha
exact, at every decode scale."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pillow_cnnz import codec, container, folding, heads


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


@pytest.mark.parametrize(("height", "width"), [(1, 7), (3, 10), (2, 9), (5, 5), (10, 3), (9, 1), (4, 20)])
@pytest.mark.parametrize("channels", [(), (1,), (4,)])
@pytest.mark.parametrize("columns", [False, True])
def test_unfold_inverts_fold(height, width, channels, columns):
    along = height if columns else width
    pixels = np.arange(height * width * int(np.prod(channels)), dtype=np.int32).reshape(height, width, *channels)
    for segment in range(1, along):
        raster = folding.fold(pixels, segment, columns)
        assert raster.shape[1::-1] == container.coded_size(width, height, segment, columns)
        np.testing.assert_array_equal(folding.unfold(raster, height, width, segment, columns), pixels)


def test_a_fold_stacks_segments_and_pads_the_last_one_with_the_last_column():
    strip = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    np.testing.assert_array_equal(folding.fold(strip, 2, False),
                                  [[1, 2], [6, 7], [3, 4], [8, 9], [5, 5], [10, 10]])
    np.testing.assert_array_equal(folding.fold(strip.T, 2, True), [[1, 6, 3, 8, 5, 10], [2, 7, 4, 9, 5, 10]])


@pytest.mark.parametrize(("height", "width"), [(1, 65535), (2, 1366), (8, 4096), (12, 1366), (3, 200), (1, 100)])
def test_a_strip_folds_into_a_near_square_raster_in_either_orientation(height, width):
    segment, columns = folding.plan(height, width)
    assert segment and not columns and folding.plan(width, height) == (segment, True)
    w, h = container.coded_size(width, height, segment, columns)
    assert container.fold_error(width, height, segment, columns) is None
    assert max(w, h) <= 5 * min(w, h) and w * h < 1.1 * width * height


@pytest.mark.parametrize(("height", "width"), [(13, 5000), (64, 64), (1, 1), (1, 20), (3, 40), (100, 100), (12, 20)])
def test_a_thicker_or_short_image_is_coded_as_it_is(height, width):
    assert folding.plan(height, width) == (0, False) == folding.plan(width, height)


def test_a_large_strip_folds_onto_the_64_pixel_grid():
    for height, width in [(1, 65535), (8, 4096), (4, 16384)]:
        w, h = container.coded_size(width, height, *folding.plan(height, width))
        assert w % 64 == 0 and (h % 64 == 0 or h * w >= height * width)


@pytest.fixture(scope="module")
def strips(make_photo) -> dict[str, np.ndarray]:
    """Thin images of every mode, rows and columns (strips of larger photos), alpha using many values."""
    rgb_rows, rgb_cols = make_photo(100, 300, seed=3)[40:45], make_photo(280, 100, seed=4)[:, 50:52]
    alpha = (np.arange(300 * 5) * 7 % 256).astype(np.uint8).reshape(5, 300)
    return {
        "L": make_photo(100, 400, seed=5)[50:51, :, 0],
        "LA": np.dstack([rgb_cols[..., 1], alpha.reshape(-1)[: 280 * 2].reshape(280, 2)]),
        "RGB": rgb_rows,
        "RGBA": np.dstack([rgb_rows, alpha]),
    }


@pytest.fixture(scope="module")
def files(strips) -> dict[str, bytes]:
    modes = list(strips)
    return dict(zip(modes, codec.encode_batch([strips[m] for m in modes], modes, 6.0)))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_a_folded_file_round_trips_at_its_size_and_mode_alpha_exact(strips, files, mode):
    pixels, data = strips[mode], files[mode]
    header, _ = container.parse(data)
    assert header.version == 2 and header.fold and (header.width, header.height) == pixels.shape[1::-1]
    assert header.fold_columns == (pixels.shape[0] > pixels.shape[1])
    out = codec.decode(data)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    if mode in ("LA", "RGBA"):
        np.testing.assert_array_equal(out[..., -1], pixels[..., -1])
    colour = slice(0, 3) if mode == "RGBA" else (0 if mode == "LA" else slice(None))
    assert _psnr(pixels[..., colour] if pixels.ndim == 3 else pixels, out[..., colour] if out.ndim == 3 else out) > 20
    with Image.open(io.BytesIO(data)) as im:
        assert (im.size, im.mode) == (pixels.shape[1::-1], mode)
        np.testing.assert_array_equal(np.asarray(im), out)


@pytest.mark.parametrize("scale", heads.SCALES[1:])
@pytest.mark.parametrize("mode", ["LA", "RGB"])
def test_a_folded_file_decodes_at_a_scale_to_the_reduced_full_decode(strips, files, mode, scale):
    """A fold decodes whole, unfolds, then reduces by area: ceil(W/scale) x ceil(H/scale)."""
    h, w = strips[mode].shape[:2]
    out = codec.decode(files[mode], scale=scale)
    assert out.shape[:2] == (-(-h // scale), -(-w // scale))
    whole = Image.fromarray(codec.decode(files[mode])).reduce(scale)
    if mode == "RGB":
        np.testing.assert_array_equal(out, np.asarray(whole))
    else:  # grey and alpha reduced each on its own (Pillow's LA reduce weighs grey by alpha)
        full = codec.decode(files[mode])
        np.testing.assert_array_equal(out[..., 1], np.asarray(Image.fromarray(full[..., 1]).reduce(scale)))
        grey = np.asarray(Image.fromarray(full[..., 0]).reduce(scale))
        assert np.abs(out[..., 0].astype(int) - grey).max() <= 1  # luma of the reduced colour


def test_a_batch_mixing_folded_and_unfolded_files_decodes_each_as_alone(strips, files, make_photo):
    plain = codec.encode(make_photo(30, 40), "RGB", 4.0)
    # an unfolded image of the folded RGB strip's raster size shares no synthesis with it
    w, h = container.parse(files["RGB"])[0].coded_size
    same_size = codec.encode(make_photo(h, w, seed=9), "RGB", 4.0)
    batch = [files["RGB"], plain, same_size, files["RGBA"]]
    for got, data in zip(codec.decode_batch(batch), batch):
        np.testing.assert_array_equal(got, codec.decode(data))


def test_a_thin_photo_folded_is_still_clearly_the_image(make_photo, monkeypatch):
    """The seams between segments cost quality at a given setting (the codec blurs the edges
    they make) and the fold codes fewer bits; the decode stays clearly the image."""
    strip = make_photo(200, 1000, seed=6)[100:108]
    folded = codec.encode(strip, "RGB", 6.0)
    monkeypatch.setattr(folding, "plan", lambda height, width: (0, False))
    plain = codec.encode(strip, "RGB", 6.0)
    assert container.parse(folded)[0].fold and not container.parse(plain)[0].fold
    assert len(folded) < len(plain) and _psnr(strip, codec.decode(folded)) > 24


def test_cnnz_info_shows_the_fold_and_decode_latents_reads_a_folded_file(tmp_path, capsys):
    from pillow_cnnz import cli, latents

    rng = np.random.default_rng(3)
    path = tmp_path / "strip.cnnz"
    path.write_bytes(codec.encode(rng.integers(0, 256, (2, 700, 3), dtype=np.uint8), "RGB", 3.0))
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    header, payloads = container.parse(path.read_bytes())
    assert header.fold and f"segments of {header.fold} pixels" in out and "version 2" in out
    _, symbols, _ = latents.decode_latents(header, payloads["LATZ"], payloads["LATY"])  # the raster's latents
    width, height = header.coded_size
    assert symbols.shape[1:] == tuple(-(-side // 64) * 4 for side in (height, width))
