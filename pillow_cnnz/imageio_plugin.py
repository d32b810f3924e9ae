"""Make imageio route ``.cnnz`` to a Pillow plugin that writes files all or nothing.

imageio's own pillow plugin already reads and writes any format Pillow knows; it only has
to learn that ``.cnnz`` is an extension Pillow serves (this fixes ``imwrite("<bytes>", arr,
extension=".cnnz")`` and v2 ``format="cnnz"``). One thing is changed, for ``.cnnz`` only:
imageio opens (and truncates) a target file before Pillow encodes, so a bad option
(``quality=95``) used to leave an existing file empty. ``.cnnz`` goes to ``pillow-cnnz``,
imageio's Pillow plugin whose writes to a file name encode in memory first and then go
through :mod:`atomic` (the file is replaced complete, or not touched); reading, bytes and
file objects are imageio's Pillow plugin unchanged.

Importing imageio is slow (it imports numpy), so when it is not yet imported an import hook
adds the entries the moment imageio loads its tables; the plugin class is built on first use.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

PLUGIN = "pillow-cnnz"  # imageio's name for it (not "cnnz": v2's format="cnnz" must keep meaning the extension)


def _add_extension(extensions: ModuleType) -> None:
    entries = extensions.known_extensions.setdefault(".cnnz", [])
    if not any(e.name == "CNNZ" for e in entries):
        entries.insert(0, extensions.FileExtension(
            name="CNNZ", extension=".cnnz", priority=[PLUGIN],
            description="CNNZ learned image codec (pillow-cnnz)",
        ))


def _add_plugin(plugins: ModuleType) -> None:
    if PLUGIN not in plugins.known_plugins:
        plugins.known_plugins[PLUGIN] = plugins.PluginConfig(
            name=PLUGIN, class_name="CnnzPlugin", module_name=__name__, install_name="pillow")


_REGISTER: dict[str, Callable[[ModuleType], None]] = {
    "imageio.config.extensions": _add_extension,
    "imageio.config.plugins": _add_plugin,
}


def _plugin_class() -> type:
    import io

    from imageio.core.request import URI_FILENAME
    from imageio.plugins.pillow import PillowPlugin

    from . import atomic

    class CnnzPlugin(PillowPlugin):
        """imageio's Pillow plugin; a write to a file name encodes in memory first and then
        replaces the file complete (``atomic``), so a failed encode leaves it as it was."""

        def _flush_writer(self) -> None:
            request = self._request
            if request._uri_type != URI_FILENAME or not self.images_to_write or request._file is not None:
                super()._flush_writer()
                return
            target = atomic.Target(request.filename)  # what open(path, "wb") would refuse, first
            buffer = io.BytesIO()
            request._file = buffer  # what request.get_file() hands the writer: nothing is opened
            try:
                super()._flush_writer()
            finally:
                request._file = None
            target.write_bytes(buffer.getvalue())

    CnnzPlugin.__module__ = __name__
    CnnzPlugin.__qualname__ = "CnnzPlugin"
    return CnnzPlugin


def __getattr__(name: str) -> Any:
    """``CnnzPlugin``, built on first use (imageio's PluginConfig imports it by name)."""
    if name == "CnnzPlugin":
        cls = globals()["CnnzPlugin"] = _plugin_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Hook(importlib.abc.MetaPathFinder):
    """Runs the registration right after imageio's extension and plugin tables are executed."""

    def find_spec(self, name, path, target=None):
        register = _REGISTER.get(name)
        if register is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            register(module)

        spec.loader.exec_module = exec_and_register
        return spec


def register() -> None:
    for name, add in _REGISTER.items():
        if name in sys.modules:
            add(sys.modules[name])
    loaded = all(name in sys.modules for name in _REGISTER)
    if not loaded and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
