"""No data lost on save: a failed encode leaves no partial file and no damaged old one."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_cnnz
from pillow_cnnz import atomic, cli, codec, weights

from .conftest import _photo as photo

OLD = b"precious old contents"
ROOT = Path(__file__).resolve().parents[1]


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


# --- the target is written as open(path, "wb") would write it (issue 35, items 2 and 3) -------

CNNZ_MAGIC = b"\x89CNNZ\r\n\x1a"


@pytest.fixture(scope="module")
def small_image():
    return Image.fromarray(photo(24, 40))


@pytest.fixture(scope="module")
def small_cnnz(small_image, tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.cnnz"
    pillow_cnnz.save(small_image, path)
    return path


def _write_through(how, image, source, path):
    """Write ``path`` with ``pillow_cnnz.save``, ``cnnz encode`` or ``cnnz decode``."""
    if how == "save":
        pillow_cnnz.save(image, path)
    elif how == "cli encode":
        png = Path(path).parent / "input.png"
        image.save(png)
        assert cli.main(["encode", str(png), str(path)]) == 0
        png.unlink()
    else:
        assert cli.main(["decode", str(source), str(path)]) == 0


def _is_output(data: bytes, how: str) -> bool:
    return data.startswith(b"\x89PNG" if how == "cli decode" else CNNZ_MAGIC)


def _named(stem: str, how: str) -> str:
    """``stem`` with the extension the writer writes (cnnz encode refuses to write CNNZ to x.png)."""
    return stem + (".png" if how == "cli decode" else ".cnnz")


WRITERS = ["save", "cli encode", "cli decode"]


@pytest.mark.parametrize("how", WRITERS)
def test_a_symlink_target_is_followed_the_link_stays_and_its_target_is_replaced(tmp_path, small_image,
                                                                                 small_cnnz, how):
    real = tmp_path / "real" / _named("photo", how)
    real.parent.mkdir()
    real.write_bytes(OLD)
    link = tmp_path / _named("link", how)
    link.symlink_to(os.path.join("real", real.name))  # relative, as links usually are
    _write_through(how, small_image, small_cnnz, link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", real.name)
    assert _is_output(real.read_bytes(), how)
    assert sorted(p.name for p in real.parent.iterdir()) == [real.name]


def test_a_dangling_symlink_gets_its_target_created(tmp_path, small_image):
    link = tmp_path / "link.cnnz"
    link.symlink_to(tmp_path / "made.cnnz")
    pillow_cnnz.save(small_image, link)
    assert link.is_symlink() and (tmp_path / "made.cnnz").read_bytes()[:8] == CNNZ_MAGIC


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("how", WRITERS)
def test_a_fifo_target_is_written_in_place(tmp_path, small_image, small_cnnz, how):
    fifo = tmp_path / _named("pipe", how)
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        _write_through(how, small_image, small_cnnz, fifo)
        reader.join(60)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
        assert received and _is_output(received[0], how)
    finally:
        if reader.is_alive() and stat.S_ISFIFO(os.lstat(fifo).st_mode):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go


def _null_device(tmp_path):
    """A character device like /dev/null in ``tmp_path`` (never the real one: before the fix a
    save replaced its target, and as root that would be /dev/null itself)."""
    node = tmp_path / "null.cnnz"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with open(node, "wb") as fp:
            fp.write(b"x")
    except OSError as e:  # no CAP_MKNOD, or a nodev mount
        pytest.skip(f"cannot make and write a device node here: {e}")
    return node


@pytest.mark.skipif(not hasattr(os, "mknod"), reason="needs device nodes")
def test_a_device_target_is_written_in_place(tmp_path, small_image):
    node = _null_device(tmp_path)
    pillow_cnnz.save(small_image, node)
    assert stat.S_ISCHR(os.lstat(node).st_mode), "the device node was replaced by a file"
    assert node.read_bytes() == b""  # still /dev/null's twin


@pytest.mark.parametrize("how", WRITERS)
def test_the_replaced_file_keeps_its_mode_and_where_permitted_its_owner(tmp_path, small_image, small_cnnz, how):
    path = tmp_path / _named("kept", how)
    path.write_bytes(OLD)
    path.chmod(0o604)
    owner = (12345, 23456) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(path, *owner)
    _write_through(how, small_image, small_cnnz, path)
    st = path.stat()
    assert _is_output(path.read_bytes(), how)
    assert stat.S_IMODE(st.st_mode) == 0o604 and (st.st_uid, st.st_gid) == owner


def _as_another_user(fn, *args):
    """``fn(*args)``'s result, run as another user (nobody, in a forked child) when this is root,
    so that permissions apply; else here (a non-root user is already subject to them). The
    child may be unable to read the Python installation: have the parent import what ``fn``
    needs first (an encode: the ``small_cnnz`` fixture)."""
    if os.geteuid() != 0:
        return fn(*args)
    if not hasattr(os, "fork"):
        pytest.skip("needs fork to drop root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            result = repr(fn(*args)).encode()
            os.write(write, result)
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(write, f"child failed: {e!r}".encode())
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as fp:
        out = fp.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return eval(out)  # noqa: S307  (a repr written by our own child)


def _errors_of_open_and_save(path, image):
    """(what ``open(path, "wb")`` raises, what ``pillow_cnnz.save`` raises) as (type, str), or
    None where it succeeds; and the file's contents after the save."""
    def outcome(fn):
        try:
            fn()
        except OSError as e:
            return type(e).__name__, str(e)
        return None

    def probe_open():  # opened for writing, closed untouched unless the save below would succeed
        fd = os.open(path, os.O_WRONLY)
        os.close(fd)

    return outcome(probe_open), outcome(lambda: pillow_cnnz.save(image, path)), Path(path).read_bytes()


@pytest.fixture
def shared_dir():
    """A folder under the system's temporary folder that another user can reach (pytest's
    tmp_path is private to root)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cnnz-shared-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.mark.parametrize("folder_mode", [0o777, 0o755], ids=["writable folder", "read-only folder"])
def test_a_file_open_would_refuse_is_refused_with_opens_permission_error(shared_dir, small_image, small_cnnz,
                                                                       folder_mode):
    """A read-only file of another user (root runs the save as nobody): ``open(path, "wb")`` is
    refused, so the save is too, with the same error, and the file is untouched, even where the
    folder would allow a rename over it."""
    folder = shared_dir / "d"
    folder.mkdir()
    path = folder / "theirs.cnnz"
    path.write_bytes(OLD)
    path.chmod(0o644 if os.geteuid() == 0 else 0o444)  # as root: root's file, nobody saves
    folder.chmod(folder_mode)
    opened, saved, contents = _as_another_user(_errors_of_open_and_save, str(path), small_image)
    assert opened is not None and opened[0] == "PermissionError"
    assert saved == opened
    assert contents == OLD and sorted(p.name for p in folder.iterdir()) == ["theirs.cnnz"]


def test_a_writable_file_in_a_read_only_folder_is_written_in_place(shared_dir, small_image, small_cnnz,
                                                                   monkeypatch):
    """``open(path, "wb")`` may write it though no file can be made beside it: the save writes
    into it (after the encode succeeded), keeping its owner."""
    # The child encodes as nobody, who may not be able to read the checkout (a clone in a 0700
    # temporary folder): it takes the default model's id, as the weights, from the parent.
    default = weights.default_model_id()
    monkeypatch.setattr(weights, "default_model_id", lambda: default)
    folder = shared_dir / "d"
    folder.mkdir()
    path = folder / "shared.cnnz"
    path.write_bytes(OLD)
    path.chmod(0o666)
    folder.chmod(0o555)
    opened, saved, contents = _as_another_user(_errors_of_open_and_save, str(path), small_image)
    assert opened is None and saved is None
    assert contents[:8] == CNNZ_MAGIC and path.stat().st_uid == os.getuid()
    assert sorted(p.name for p in folder.iterdir()) == ["shared.cnnz"]


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV], ids=["EBUSY", "EXDEV"])
def test_a_rename_that_cannot_be_made_falls_back_to_writing_in_place(existing, small_image, monkeypatch, code):
    """EBUSY: the target is a bind-mounted file; EXDEV: a rename across file systems."""
    inode = existing.stat().st_ino

    def refused(src, dst):
        raise OSError(code, os.strerror(code), src, None, dst)

    monkeypatch.setattr(os, "replace", refused)
    pillow_cnnz.save(small_image, existing)
    assert existing.read_bytes()[:8] == CNNZ_MAGIC and existing.stat().st_ino == inode
    only_file_is(existing)


def test_a_rename_that_cannot_be_made_to_a_new_file_names_the_callers_path(tmp_path, small_image, monkeypatch):
    path = tmp_path / "new.cnnz"

    def refused(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError) as caught:
        pillow_cnnz.save(small_image, path)
    assert caught.value.errno == errno.EXDEV and caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", WRITERS)
def test_a_250_character_file_name_works(tmp_path, small_image, small_cnnz, how):
    path = tmp_path / _named("n" * (250 - len(_named("", how))), how)  # NAME_MAX is 255: a temporary name must not grow past it
    assert len(path.name) == 250
    _write_through(how, small_image, small_cnnz, path)
    assert _is_output(path.read_bytes(), how)
    assert [p.name for p in tmp_path.iterdir() if p.name != "input.png"] == [path.name]


def test_a_missing_folder_is_reported_with_the_callers_path_before_the_encode(tmp_path, small_image, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("encoded for a path that cannot be written")

    monkeypatch.setattr(codec, "analyse_batch", never)
    path = tmp_path / "no such folder" / "x.cnnz"
    with pytest.raises(FileNotFoundError) as caught:
        pillow_cnnz.save(small_image, path)
    assert caught.value.filename == str(path) and ".part" not in str(caught.value)
    with pytest.raises(FileNotFoundError) as by_open:
        open(path, "wb")
    assert str(caught.value) == str(by_open.value)


@pytest.mark.parametrize(("command", "output"), [
    ("encode", "missing/out.cnnz"),
    ("decode", "missing/out.png"),
    ("decode", "out"),  # no extension: the temporary file's used to be taken for the output's (".part")
])
def test_cli_errors_name_the_output_never_a_temporary_file(tmp_path, small_image, small_cnnz, capsys, command,
                                                           output):
    png = tmp_path / "in.png"
    small_image.save(png)
    output = tmp_path / output
    assert cli.main([command, str(png if command == "encode" else small_cnnz), str(output)]) == 1
    err = capsys.readouterr().err
    assert str(output) in err and ".part" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["in.png"]


def test_cli_decode_killed_while_writing_the_output_leaves_no_partial_file(tmp_path, small_cnnz):
    """SIGKILL while the output is being produced (slowed here, inside Pillow's PNG writer):
    nothing is on disk until it is complete, so nothing is left."""
    out = tmp_path / "out.png"
    script = textwrap.dedent(f"""
        import sys, time
        from PIL import PngImagePlugin
        from pillow_cnnz import cli
        real = PngImagePlugin._save
        def slow(im, fp, filename, **kw):
            print("writing", flush=True)
            time.sleep(60)
            return real(im, fp, filename, **kw)
        PngImagePlugin._save = slow
        from PIL import Image
        Image.register_save("PNG", slow)
        cli.main(["decode", {str(small_cnnz)!r}, {str(out)!r}])
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        child.kill()
        child.wait(60)
    assert list(tmp_path.iterdir()) == []


# --- the umask (issue 35, item 3) ----------------------------------------------------------

def test_writes_never_set_the_process_umask_and_new_files_get_opens_mode(tmp_path, monkeypatch):
    """``os.umask`` reads the umask only by setting it, for every thread at once (another
    thread's files got mode 0666 meanwhile). A new file must get what ``open()`` gives it."""
    calls = []
    real_umask = os.umask
    old = real_umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        atomic.write_bytes(tmp_path / "a.cnnz", b"new")
        with atomic.replacing(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"new")
        with open(tmp_path / "by_open", "wb"):
            pass
    finally:
        real_umask(old)
    assert calls == []
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.cnnz": 0o640, "b.png": 0o640, "by_open": 0o640}


@pytest.mark.parametrize("where", ["creating", "writing"])
def test_a_full_disk_leaves_the_old_file_whole_and_is_not_written_in_place(existing, small_image, monkeypatch,
                                                                            where):
    """Only a rename the file system refuses falls back to writing in place: a write that ran
    out of space there would leave the old file half overwritten."""
    def full(*args, **kwargs):
        if where == "writing":
            args[0].write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_create" if where == "creating" else "_write", full)
    with pytest.raises(OSError) as caught:
        pillow_cnnz.save(small_image, existing)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(existing)
    assert existing.read_bytes() == OLD
    only_file_is(existing)
