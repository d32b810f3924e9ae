"""Write a file completely or not at all, otherwise as ``open(path, "wb")`` would write it.

``Image.save(path)`` opens (and truncates) ``path`` before any plugin runs, for every
format, so a failed encode there can cost an existing file its contents. Here the new
contents are complete before the target is touched: they go to a temporary file beside
it that is renamed over it at the end, so a failure, an interrupt or a full disk leaves
the old file as it was. Otherwise the outcome is the one ``open(path, "wb")`` gives:

* a symlink is followed: the link stays, the file it points to is replaced (a dangling
  link's target is created);
* a target that is not a regular file (a FIFO, ``/dev/null``, a device) is written in place;
* a file keeps its mode and, where the user may set them, its owner and group; a new file
  gets the mode ``open()`` gives: the temporary file is created with mode 0666 and the
  kernel applies the umask (or the directory's default ACL). The umask is never read:
  ``os.umask`` can only read it by setting it, for every thread of the process meanwhile;
* what ``open(path, "wb")`` refuses is refused with its error, before any work
  (:class:`Target` checks it: a file by opening it for writing without truncating it);
* where the rename cannot be made (the file is a bind mount: EBUSY, another file system:
  EXDEV, a directory the user may not write: EACCES), the complete contents are written
  into the file in place; never for other errors (a full disk): the old file stays whole.

A file with other hard links is replaced by a new one, as by any atomic save: the other
names keep the old contents.

Errors name the caller's path, never the temporary file, whose name
(``.<at most 32 characters of the name>.<8 random>.part``) stays within NAME_MAX.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

_NAME_CHARS = 32  # of the target's name in a temporary name: at most 128 bytes in UTF-8
# Why no file can be made beside the target, or renamed over it, where the target itself may still be
# written in place: a folder the user may not write (EACCES; EPERM: sticky), a bind-mounted file
# (EBUSY), another file system (EXDEV). Anything else (a full disk...) is raised: written in place,
# the old contents could be lost half way.
_IN_PLACE = frozenset({errno.EACCES, errno.EPERM, errno.EBUSY, errno.EXDEV})


def _named(e: OSError, path: str) -> OSError:
    """``e`` (same type, errno and message) naming ``path`` instead of the file it named."""
    if e.errno is None:
        return e
    try:
        return type(e)(e.errno, e.strerror, path)
    except TypeError:  # BlockingIOError's third argument is a count
        return e


def _create(directory: str, name: str, mode: int) -> tuple[int, str]:
    """A new file (fd, path) in ``directory``, created with ``mode`` (umask applied)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(directory, f".{name[:_NAME_CHARS]}.{secrets.token_hex(4)}.part")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def _keep_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """Give the new file ``fd`` the owner, group (where permitted) and mode of the file it replaces."""
    if hasattr(os, "fchown"):
        new = os.fstat(fd)
        if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:  # not root: the group, where the user is in it
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, old.st_gid)
    if hasattr(os, "fchmod"):  # after fchown, which clears the set-id bits
        os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _write(fp: BinaryIO, source: bytes | bytearray | memoryview | str) -> None:
    """Write ``source``: bytes (any buffer), or the contents of the file it names."""
    if isinstance(source, str):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fp)
    else:
        fp.write(source)


class Target:
    """Where a write to ``path`` goes, checked as ``open(path, "wb")`` would check it.

    Make one before the work that produces the contents, so that a path that cannot be
    written fails at once; then :meth:`write_bytes` (or :func:`replacing`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)  # the caller's, for errors
        self.real = os.path.realpath(self.path)  # symlinks followed; a dangling link: where it points
        self.directory, self.name = os.path.split(self.real)
        try:
            self.stat: os.stat_result | None = os.stat(self.real)
        except FileNotFoundError:
            self.stat = None
        except OSError as e:  # a symlink loop, a file as a folder...
            raise _named(e, self.path) from None
        if self.stat is None:
            self._check_creatable()
        elif stat.S_ISDIR(self.stat.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
        elif self.regular:  # the kernel's own check, without truncating
            try:
                os.close(os.open(self.real, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError as e:
                raise _named(e, self.path) from None
        # Anything else (FIFO, device) is opened when written: opening a FIFO waits for a reader.

    @property
    def regular(self) -> bool:
        """A regular file is there (else nothing is, or a FIFO, a device...)."""
        return self.stat is not None and stat.S_ISREG(self.stat.st_mode)

    def _check_creatable(self) -> None:
        try:
            folder = os.stat(self.directory)
        except OSError as e:
            raise _named(e, self.path) from None
        if not stat.S_ISDIR(folder.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.path)
        effective = os.access in os.supports_effective_ids
        if not os.access(self.directory, os.W_OK | os.X_OK, effective_ids=effective):
            # Let the kernel say why (EACCES, EROFS...), with a file created and removed at once.
            try:
                fd, probe = _create(self.directory, self.name, 0o600)
            except OSError as e:
                raise _named(e, self.path) from None
            os.close(fd)
            os.unlink(probe)

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to the target: renamed into place from a complete temporary file
        where the target is a regular file or new, in place otherwise."""
        if self.stat is not None and not self.regular:
            self._write_in_place(data)
            return
        try:
            fd, tmp = _create(self.directory, self.name, 0o600 if self.stat else 0o666)
        except OSError as e:
            if self.stat is None or e.errno not in _IN_PLACE:
                raise _named(e, self.path) from None
            self._write_in_place(data)  # a writable file in a folder the user may not write
            return
        try:
            with open(fd, "wb") as fp:
                _write(fp, data)
        except BaseException as e:
            os.unlink(tmp)
            if isinstance(e, OSError):  # a full disk...
                raise _named(e, self.path) from None
            raise
        self._commit(tmp)

    def _commit(self, tmp: str) -> None:
        """Put the complete file ``tmp`` (beside the target) in the target's place; removes ``tmp``."""
        try:
            fd = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            try:
                if self.stat is not None:
                    _keep_owner_and_mode(fd, self.stat)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, self.real)
            except OSError as e:
                if self.stat is None or e.errno not in _IN_PLACE:
                    raise
                self._write_in_place(tmp)  # EBUSY (a bind-mounted file), EXDEV, EPERM (sticky folder)...
        except OSError as e:
            raise _named(e, self.path) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _write_in_place(self, source: bytes | bytearray | memoryview | str) -> None:
        """Write ``source`` (bytes, or a file to copy) into the target itself."""
        try:
            if self.regular:  # overwritten, then cut to length: never empty meanwhile
                with open(os.open(self.real, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666), "wb") as fp:
                    _write(fp, source)
                    fp.truncate()
                    fp.flush()
                    os.fsync(fp.fileno())
            else:
                with open(self.real, "wb") as fp:
                    _write(fp, source)
        except OSError as e:
            raise _named(e, self.path) from None


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``Path(path).write_bytes(data)``, all or nothing (see the module's notes)."""
    Target(path).write_bytes(data)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path for the body to write; once the body returns, that file
    replaces ``path`` as :func:`write_bytes` would write it.

    On any exception, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``path`` is left untouched."""
    target = Target(path)
    tmp = None
    if target.stat is None or target.regular:
        try:
            fd, tmp = _create(target.directory, target.name, 0o600 if target.stat else 0o666)
        except OSError as e:
            if target.stat is None or e.errno not in _IN_PLACE:
                raise _named(e, target.path) from None
    beside = tmp is not None
    if not beside:  # written in place at the end: the temporary file may go anywhere
        fd, tmp = tempfile.mkstemp(suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        if beside:
            target._commit(tmp)
        else:
            target._write_in_place(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
