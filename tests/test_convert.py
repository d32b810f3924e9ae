"""``cnnz convert`` and the per-file conversion (pillow_cnnz.conversion, .sources, .convert), the CLI's ``-``,
``--version`` and output-name check, metadata kept by the batch API, and the DataLoader
pattern that works under the spawn start method.

Images are 64×48 so that a conversion costs well under a second; only two tests start
worker processes.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import pillow_cnnz
from pillow_cnnz import cli, conversion, convert, sources

H, W = 48, 64
ORIENTATION = 0x0112


def _photo_file(path: Path, make_photo, seed: int = 0, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo(H, W, seed)).save(path, **save)
    return path


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _cnnz(*argv: str) -> int:
    return cli.main(["convert", *map(str, argv)])


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- sources and outputs


def test_a_folder_is_mirrored_with_hidden_files_and_other_files_left_out(tmp_path, make_photo, capsys):
    src = tmp_path / "src"
    _photo_file(src / "a.png", make_photo)
    _photo_file(src / "sub" / "deeper" / "b.jpg", make_photo, 1)
    _photo_file(src / ".hidden" / "c.png", make_photo)
    _photo_file(src / ".d.png", make_photo)
    (src / "notes.txt").write_text("not an image")
    (src / "old.cnnz").write_bytes(pillow_cnnz.encode(make_photo(H, W)))  # already CNNZ: not encoded again

    assert _cnnz(src, "--out", tmp_path / "out", "-j", "1") == 0
    assert _files(tmp_path / "out") == ["a.cnnz", "sub/deeper/b.cnnz"]
    with Image.open(tmp_path / "out" / "sub" / "deeper" / "b.cnnz") as im:
        assert (im.format, im.size, im.mode) == ("CNNZ", (W, H), "RGB")
    summary = capsys.readouterr().out
    assert "2 files: 2 converted, 0 skipped, 0 failed" in summary
    assert ":1)" in summary and " s" in summary  # ratio and time


def test_plan_names_outputs_of_files_folders_and_globs_and_fails_clashes(tmp_path, make_photo):
    src = tmp_path / "src"
    for name in ("x/a.png", "x/a.jpg", "x/y/b.png", "c.png"):
        _photo_file(src / name, make_photo)
    out = tmp_path / "out"
    pairs, failed = sources.plan([src / "c.png", f"{src}/x/**/*.png", src / "c.png", tmp_path / "nothing",
                                  f"{tmp_path}/*.none"], out)
    assert pairs == [(str(src / "c.png"), str(out / "c.cnnz")),
                     (str(src / "x" / "a.png"), str(out / "a.cnnz")),
                     (str(src / "x" / "y" / "b.png"), str(out / "y" / "b.cnnz"))]
    assert [(r.source, r.error) for r in failed] == [(str(tmp_path / "nothing"), "no such file or folder"),
                                                     (f"{tmp_path}/*.none", "no file matches this pattern")]

    pairs, failed = sources.plan([src / "x"], out)  # a.png and a.jpg would both write a.cnnz
    assert [p[1] for p in pairs] == [str(out / "a.cnnz"), str(out / "y" / "b.cnnz")]
    assert len(failed) == 1 and failed[0].error == f"{pairs[0][0]} has the same output"

    pairs, _ = sources.plan([src], out, to="png")  # decoding takes .cnnz files only
    assert pairs == []


def test_to_names_a_format_pillow_writes():
    assert conversion.target("cnnz") == ("CNNZ", ".cnnz")
    assert conversion.target("JPG") == ("JPEG", ".jpg")
    assert conversion.target(".webp") == ("WEBP", ".webp")
    with pytest.raises(ValueError, match="Pillow writes no format"):
        conversion.target("docx")


# --------------------------------------------------------------------------- failures, modes, resuming


def test_a_failing_file_is_reported_with_its_reason_while_the_others_convert(tmp_path, make_photo, capsys):
    src = tmp_path / "src"
    _photo_file(src / "good.png", make_photo)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    Image.fromarray((make_photo(H, W)[..., 0].astype(np.uint16) * 257)).save(src / "deep.png")
    Image.new("CMYK", (W, H), (10, 200, 30, 0)).save(src / "print.jpg")

    assert _cnnz(src, "--out", tmp_path / "out", "-j", "1") == 1
    captured = capsys.readouterr()
    errors = dict(line.split(": ", 2)[1:] for line in captured.err.splitlines())
    assert set(errors) == {str(src / "broken.png"), str(src / "deep.png"), str(src / "print.jpg")}
    assert "16-bit" in errors[str(src / "deep.png")] and "--convert" in errors[str(src / "deep.png")]
    assert "colour space" in errors[str(src / "print.jpg")] and "--convert" in errors[str(src / "print.jpg")]
    assert "4 files: 1 converted, 0 skipped, 3 failed" in captured.out
    assert _files(tmp_path / "out") == ["good.cnnz"]


def test_convert_flag_scales_16_bit_and_converts_colour_spaces(tmp_path, make_photo, monkeypatch):
    grey = make_photo(H, W)[..., 1]
    deep = Image.fromarray(grey.astype(np.uint16) * 257 + 100)  # 16-bit, not a plain multiple of 257
    lab_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    lab = ImageCms.profileToProfile(Image.fromarray(make_photo(H, W, 2)), ImageCms.createProfile("sRGB"),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")
    cmyk = Image.new("CMYK", (W, H), (10, 200, 30, 0))

    used_profiles = []
    real = ImageCms.profileToProfile

    def spy(im, source, target, **kw):
        used_profiles.append(source.tobytes())
        return real(im, source, target, **kw)

    monkeypatch.setattr(ImageCms, "profileToProfile", spy)

    def converted(im: Image.Image, fmt: str, **params: object) -> np.ndarray:
        return pillow_cnnz.decode(conversion.convert_bytes(_saved(im, fmt, **params), convert_modes=True))

    def stored(pixels: np.ndarray) -> np.ndarray:
        return pillow_cnnz.decode(pillow_cnnz.encode(pixels))

    scaled = ((grey.astype(np.int64) * 257 + 100) * 255 + 32767) // 65535
    assert np.array_equal(converted(deep, "PNG"), stored(scaled.astype(np.uint8)))
    assert np.array_equal(converted(lab, "TIFF", icc_profile=lab_profile),
                          stored(np.asarray(real(lab, ImageCms.ImageCmsProfile(io.BytesIO(lab_profile)),
                                                 ImageCms.createProfile("sRGB"), outputMode="RGB"))))
    assert used_profiles == [lab_profile]  # through the embedded profile
    assert np.array_equal(converted(cmyk, "TIFF"), stored(np.asarray(cmyk.convert("RGB"))))  # no profile: Pillow's

    out = conversion.convert_bytes(_saved(lab, "TIFF", icc_profile=lab_profile), convert_modes=True)
    with Image.open(io.BytesIO(out)) as im:  # the LAB profile would be wrong now: tagged sRGB
        profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"])).profile
        assert profile.xcolor_space == "RGB " and profile.profile_description == "sRGB built-in"

    huge = Image.fromarray(np.full((H, W), 70000, np.int32))  # mode I beyond 16 bits
    with pytest.raises(OSError, match="outside 0..65535"):
        conversion.convert_bytes(_saved(huge, "TIFF"), convert_modes=True)


def _saved(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_outputs_that_exist_fail_unless_skipped_or_overwritten(tmp_path, make_photo, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        _photo_file(src / f"{i}.png", make_photo, i)
    assert _cnnz(src, "--out", out, "-j", "1") == 0
    kept = {name: (out / name).stat().st_mtime_ns for name in ("0.cnnz", "2.cnnz")}
    (out / "1.cnnz").unlink()  # as a run interrupted before it wrote this one
    capsys.readouterr()

    assert _cnnz(src, "--out", out, "-j", "1", "--skip-existing") == 0
    assert "3 files: 1 converted, 2 skipped, 0 failed" in capsys.readouterr().out
    assert _files(out) == ["0.cnnz", "1.cnnz", "2.cnnz"]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept

    assert _cnnz(src, "--out", out, "-j", "1") == 1
    captured = capsys.readouterr()
    assert captured.err.count("the output exists (--skip-existing keeps it, --overwrite replaces it)") == 3
    assert "3 failed" in captured.out
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept

    assert _cnnz(src, "--out", out, "-j", "1", "--overwrite", "--quiet") == 0
    assert capsys.readouterr().out == ""
    assert all((out / name).stat().st_mtime_ns != mtime for name, mtime in kept.items())


# --------------------------------------------------------------------------- metadata


def test_metadata_survives_encoding_and_decoding_to_other_formats(tmp_path, make_photo):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    src = _photo_file(tmp_path / "src" / "phone.jpg", make_photo, exif=_exif(6), icc_profile=icc, xmp=xmp)
    assert _cnnz(src, "--out", tmp_path / "enc", "-j", "1", "--quiet") == 0
    encoded = tmp_path / "enc" / "phone.cnnz"
    with Image.open(encoded) as im:
        assert im.getexif()[ORIENTATION] == 6 and im.info["icc_profile"] == icc and im.info["xmp"] == xmp

    for to in ("png", "jpeg", "webp"):
        assert _cnnz(encoded, "--out", tmp_path / to, "--to", to, "-j", "1", "--quiet") == 0
        with Image.open(tmp_path / to / f"phone.{to}") as im:
            assert im.format == to.upper() and im.size == (W, H)
            assert im.getexif()[ORIENTATION] == 6 and im.info["icc_profile"] == icc
            if to != "png":  # Pillow writes no XMP into PNG
                assert im.info["xmp"] == xmp


def test_decoding_to_a_format_without_alpha_needs_convert(tmp_path, make_photo):
    rgba = np.dstack([make_photo(H, W), np.full((H, W), 200, np.uint8)])
    data = pillow_cnnz.encode(rgba)
    with pytest.raises(OSError, match="RGBA"):
        conversion.convert_bytes(data, to="jpeg")
    with Image.open(io.BytesIO(conversion.convert_bytes(data, to="jpeg", convert_modes=True))) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")


def test_encode_batch_keeps_metadata_of_images_and_takes_it_for_arrays(make_photo):
    pixels = make_photo(H, W)
    phone = Image.fromarray(pixels)
    phone.info.update(exif=_exif(6), xmp=b"<xmp/>")
    plain = Image.fromarray(pixels)
    files = pillow_cnnz.encode_batch([phone, plain, pixels], metadata=[None, None, {"exif": _exif(8)}])
    with Image.open(io.BytesIO(files[0])) as im:
        assert im.getexif()[ORIENTATION] == 6 and im.info["xmp"] == b"<xmp/>"
    with Image.open(io.BytesIO(files[1])) as im:
        assert "exif" not in im.info
    with Image.open(io.BytesIO(files[2])) as im:
        assert im.getexif()[ORIENTATION] == 8
    with Image.open(io.BytesIO(pillow_cnnz.encode(phone, metadata={"exif": b""}))) as im:
        assert "exif" not in im.info and im.info["xmp"] == b"<xmp/>"  # given keys replace the image's
    with pytest.raises(ValueError, match="metadata"):
        pillow_cnnz.encode_batch([pixels, pixels], metadata=[None])


# --------------------------------------------------------------------------- worker processes


def test_worker_processes_convert_and_report_like_one_process(tmp_path, make_photo, capsys):
    src = tmp_path / "src"
    for i in range(3):
        _photo_file(src / f"{i}.png", make_photo, i)
    (src / "bad.png").write_bytes(b"not a png at all")
    assert _cnnz(src, "--out", tmp_path / "out", "-j", "2") == 1
    captured = capsys.readouterr()
    reason = "not an image Pillow can read (no installed plugin recognises it)"
    assert captured.err.strip() == f"cnnz convert: {src / 'bad.png'}: {reason}"
    assert "4 files: 3 converted, 0 skipped, 1 failed" in captured.out
    for i in range(3):
        with Image.open(tmp_path / "out" / f"{i}.cnnz") as im:
            decoded = np.asarray(im, np.float64)
        assert np.abs(decoded - make_photo(H, W, i)).mean() < 8


def _kill_readers_of(fifo: Path, stop: threading.Event, killed: list[int]) -> None:
    """Kill each process that opens ``fifo`` to read it, until ``stop``."""
    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails until a reader has it open
        except OSError:
            stop.wait(0.02)
            continue
        try:
            while not stop.is_set():
                readers = [pid for pid in _holders(fifo) if pid != os.getpid()]
                if readers:
                    for pid in readers:
                        os.kill(pid, signal.SIGKILL)
                    killed.extend(readers)
                    break
                stop.wait(0.02)
        finally:
            os.close(fd)


def _holders(path: Path) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                pids.append(int(pid))
        except OSError:  # gone, or not ours to look at
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the reading worker through /proc")
def test_a_worker_that_dies_fails_its_file_alone_and_the_others_convert(tmp_path, make_photo):
    stuck = tmp_path / "stuck.png"
    os.mkfifo(stuck)  # a worker reading it waits, and is killed there
    pairs = [(str(stuck), str(tmp_path / "out" / "stuck.cnnz"))]
    pairs += [(str(_photo_file(tmp_path / f"{i}.png", make_photo, i)), str(tmp_path / "out" / f"{i}.cnnz"))
              for i in range(3)]
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_readers_of, args=(stuck, stop, killed))
    killer.start()
    try:
        results = convert.convert_paths(pairs, jobs=2)
    finally:
        stop.set()
        killer.join()
    assert [r.error for r in results] == [convert._DIED, None, None, None]
    assert len(set(killed)) == 2  # a worker beside another file, then one alone
    assert _files(tmp_path / "out") == ["0.cnnz", "1.cnnz", "2.cnnz"]


# --------------------------------------------------------------------------- the other commands


def test_version_and_encode_refusing_another_formats_extension(tmp_path, make_photo, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"cnnz {pillow_cnnz.__version__}"

    src = _photo_file(tmp_path / "a.png", make_photo)
    assert cli.main(["encode", str(src), str(tmp_path / "b.png")]) == 1
    err = capsys.readouterr().err
    assert "b.png is named as a PNG file" in err and "--any-extension" in err
    assert not (tmp_path / "b.png").exists()
    assert cli.main(["encode", str(src), str(tmp_path / "b.png"), "--any-extension"]) == 0
    with Image.open(tmp_path / "b.png") as im:
        assert im.format == "CNNZ"


def test_encode_and_decode_read_stdin_and_write_stdout_for_a_dash(make_photo, monkeypatch, capsysbinary):
    pixels = make_photo(H, W)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_saved(Image.fromarray(pixels), "PNG"))))
    assert cli.main(["encode", "-", "-", "-q", "6"]) == 0
    encoded = capsysbinary.readouterr().out
    assert encoded == pillow_cnnz.encode(pixels, quality=6.0)
    for argv, fmt in ((["decode", "-", "-"], "PNG"), (["decode", "-", "-", "--format", "webp"], "WEBP")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(encoded)))
        assert cli.main(argv) == 0
        with Image.open(io.BytesIO(capsysbinary.readouterr().out)) as im:
            assert (im.format, im.size) == (fmt, (W, H))
            if fmt == "PNG":
                assert np.array_equal(np.asarray(im), pillow_cnnz.decode(encoded))


# --------------------------------------------------------------------------- imports and DataLoader workers


def test_importing_the_package_loads_neither_torch_nor_dask_nor_tqdm():
    code = ("import sys, pillow_cnnz, pillow_cnnz.convert, pillow_cnnz.cli\n"
            "print(sorted(m for m in ('torch', 'dask', 'distributed', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_DATASET = """
import numpy as np
import torch.utils.data
from PIL import Image
{imports}

class Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))
"""


@pytest.mark.parametrize("imports", ["import pillow_cnnz  # registers .cnnz in every worker", ""],
                         ids=["module-imports-pillow_cnnz", "module-does-not"])
def test_dataloader_workers_under_spawn_need_the_import_in_the_datasets_module(tmp_path, make_photo, monkeypatch,
                                                                              imports):
    torch_data = pytest.importorskip("torch.utils.data")
    pixels = make_photo(H, W)
    path = tmp_path / "a.cnnz"
    path.write_bytes(pillow_cnnz.encode(pixels, quality=8.0))
    module = f"cnnz_dataset_{'with' if imports else 'without'}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_DATASET.format(imports=imports)))
    monkeypatch.syspath_prepend(str(tmp_path))
    dataset = __import__(module).Files([str(path)])
    loader = torch_data.DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    if imports:
        (batch,) = list(loader)
        assert np.array_equal(batch.numpy(), pillow_cnnz.decode(path.read_bytes()))
    else:  # this process registered the plugin; a spawned worker starts without it
        with pytest.raises(Image.UnidentifiedImageError):
            list(loader)
