"""Make imageio route ``.cnnz`` to its Pillow plugin.

imageio's own pillow plugin already reads and writes any format Pillow knows, so
nothing is wrapped: imageio only has to learn that ``.cnnz`` is an extension Pillow
serves (this fixes ``imwrite("<bytes>", arr, extension=".cnnz")`` and v2
``format="cnnz"``). imageio is optional; without it this does nothing.
"""
from __future__ import annotations


def register() -> None:
    try:
        from imageio.config import known_extensions
        from imageio.config.extensions import FileExtension
    except ImportError:
        return
    entries = known_extensions.setdefault(".cnnz", [])
    if not any(getattr(e, "name", None) == "CNNZ" for e in entries):
        entries.insert(0, FileExtension(
            name="CNNZ", extension=".cnnz", priority=["pillow"],
            description="CNNZ learned image codec (pillow-cnnz)",
        ))
