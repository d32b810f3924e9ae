"""Write a file completely or not at all.

``Image.save(path)`` opens (and truncates) ``path`` before any plugin runs, for every
format, so a failed encode there can cost an existing file its contents. Writing to a
temporary file next to the target and renaming it over the target only once it is
complete means a failure, an interrupt or a full disk leaves the old file as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``.

    On any exception, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``path`` is left untouched.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{target.suffix}", dir=target.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fp:
            os.fsync(fp.fileno())
        if target.exists():
            os.chmod(tmp_path, target.stat().st_mode & 0o7777)
        else:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``Path(path).write_bytes(data)``, all or nothing."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
