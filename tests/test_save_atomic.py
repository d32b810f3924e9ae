"""No data lost on save: a failed encode leaves no partial file and no damaged old one."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import atomic, cli, codec

from .conftest import _photo as photo

OLD = b"precious old contents"


@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "x.cnnz"
    path.write_bytes(OLD)
    return path


def only_file_is(path):
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("bad", [
    {"image": Image.new("I;16", (8, 8))},
    {"quality": 9},
    {"quality": "high"},
])
def test_failed_save_leaves_the_existing_file_untouched(existing, bad):
    image = bad.pop("image", Image.fromarray(photo(32, 32)))
    with pytest.raises((OSError, ValueError)):
        pillow_cnnz.save(image, existing, **bad)
    assert existing.read_bytes() == OLD
    only_file_is(existing)


def test_interrupted_save_leaves_the_existing_file_untouched(existing, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec, "analyse_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pillow_cnnz.save(Image.fromarray(photo(32, 32)), existing)
    assert existing.read_bytes() == OLD
    only_file_is(existing)


def test_successful_save_replaces_the_file_with_a_complete_one(existing):
    pillow_cnnz.save(Image.fromarray(photo(32, 48)), existing, quality=2)
    with Image.open(existing) as im:
        assert im.size == (48, 32) and im.info["quality"] == 2
        im.load()
    only_file_is(existing)


def test_failed_image_save_to_a_new_path_leaves_no_file(tmp_path):
    path = tmp_path / "new.cnnz"
    with pytest.raises(OSError, match="mode I;16"):
        Image.new("I;16", (8, 8)).save(path)
    assert not path.exists()


def test_atomic_write_keeps_permissions_of_the_file_it_replaces(existing):
    existing.chmod(0o640)
    atomic.write_bytes(existing, b"new")
    assert existing.read_bytes() == b"new" and existing.stat().st_mode & 0o777 == 0o640


def test_cli_encode_failure_keeps_the_old_output(tmp_path, existing):
    src = tmp_path / "in.png"
    Image.new("I;16", (8, 8)).save(src)
    assert cli.main(["encode", str(src), str(existing)]) == 1
    assert existing.read_bytes() == OLD


def test_cli_decode_writes_the_output_completely(tmp_path, existing):
    pillow_cnnz.save(Image.fromarray(photo(32, 48)), existing)
    out = tmp_path / "out.png"
    out.write_bytes(OLD)
    assert cli.main(["decode", str(existing), str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (48, 32) and np.asarray(im).dtype == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "x.cnnz"]
