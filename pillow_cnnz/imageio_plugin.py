"""Make imageio route ``.cnnz`` to its Pillow plugin.

imageio's own pillow plugin already reads and writes any format Pillow knows, so
nothing is wrapped: imageio only has to learn that ``.cnnz`` is an extension Pillow
serves (this fixes ``imwrite("<bytes>", arr, extension=".cnnz")`` and v2
``format="cnnz"``). Importing imageio costs ~200 ms (numpy), so when it is not yet
imported an import hook adds the entry the moment imageio loads its extension table.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_MODULE = "imageio.config.extensions"


def _add_extension(extensions: ModuleType) -> None:
    entries = extensions.known_extensions.setdefault(".cnnz", [])
    if not any(e.name == "CNNZ" for e in entries):
        entries.insert(0, extensions.FileExtension(
            name="CNNZ", extension=".cnnz", priority=["pillow"],
            description="CNNZ learned image codec (pillow-cnnz)",
        ))


class _Hook(importlib.abc.MetaPathFinder):
    """Runs ``_add_extension`` right after imageio's extension table is executed."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            _add_extension(module)

        spec.loader.exec_module = exec_and_register
        return spec


def register() -> None:
    if _MODULE in sys.modules:
        _add_extension(sys.modules[_MODULE])
    elif not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
