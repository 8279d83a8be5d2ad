"""Run code that imports ``channels`` on Tidings: an opt-in import alias.

A project moves to Tidings by changing its own imports from ``channels.`` to
``tidings.``. Third-party libraries (REST-over-WebSocket frameworks, GraphQL
subscription servers, model observers) import ``channels`` themselves and cannot
be edited. For them, one call at the top of ``settings.py``::

    import tidings.alias

    tidings.alias.install()

makes ``import channels`` and ``import channels.X`` give ``tidings`` and
``tidings.X``: the very same module objects, so ``channels.layers.get_channel_layer``
*is* ``tidings.layers.get_channel_layer`` and both see one set of layers.

Rules, each one tested:

- Nothing falls back to a real Channels. A ``channels.X`` that Tidings does not
  have raises ``ModuleNotFoundError`` naming both ``channels.X`` and ``tidings.X``.
- :func:`install` refuses (:class:`AliasConflict`) when a real ``channels``
  package is importable or already imported: two implementations of one API in
  one process would split the channel layers and the consumers between them.
  Uninstall Channels (``pip uninstall channels``) to use the alias.
- Installing twice is harmless; :func:`uninstall` removes the finder and the
  aliased entries of ``sys.modules`` (for tests).

The alias is a :class:`importlib.abc.MetaPathFinder` placed first on
``sys.meta_path``; it imports nothing until ``channels`` is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["AliasConflict", "install", "installed", "uninstall"]

#: The package name that is aliased, and what it is aliased to.
SOURCE = "channels"
TARGET = "tidings"


class AliasConflict(ImportError):
    """The ``channels`` alias cannot be installed: a real Channels is present."""


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already imported ``tidings.X`` module for ``channels.X``."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # importlib sets only missing attributes on a module it did not make, so
        # ``__name__`` and ``__spec__`` stay Tidings' own.
        return self._module

    def exec_module(self, module: ModuleType) -> None:
        # Already executed when ``tidings.X`` was imported.
        return None


class _ChannelsAlias(importlib.abc.MetaPathFinder):
    """Resolves ``channels`` and ``channels.X`` to ``tidings`` and ``tidings.X``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SOURCE and not fullname.startswith(SOURCE + "."):
            return None
        target_name = TARGET + fullname[len(SOURCE) :]
        try:
            module = importlib.import_module(target_name)
        except ModuleNotFoundError as exc:
            if exc.name != target_name:
                raise  # something tidings.X itself imports is missing
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: the Channels import alias maps it to "
                f"{target_name!r}, which Tidings does not have",
                name=fullname,
            ) from None
        is_package = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=is_package)


def _finder() -> _ChannelsAlias | None:
    for finder in sys.meta_path:
        if isinstance(finder, _ChannelsAlias):
            return finder
    return None


def installed() -> bool:
    """Return whether the ``channels`` alias is on ``sys.meta_path``."""
    return _finder() is not None


def install() -> None:
    """Make ``import channels...`` import Tidings, for libraries that import Channels.

    Raises:
        AliasConflict: a real ``channels`` package is installed or imported.
    """
    if installed():
        return
    loaded = sys.modules.get(SOURCE)
    if loaded is not None and loaded is not sys.modules.get(TARGET):
        raise AliasConflict(
            f"'channels' is already imported from {getattr(loaded, '__file__', loaded)!r}; "
            "the Tidings alias cannot replace a real Channels (uninstall the 'channels' "
            "package, or call tidings.alias.install() before anything imports it)"
        )
    spec = importlib.util.find_spec(SOURCE) if loaded is None else None
    if spec is not None:
        raise AliasConflict(
            f"a real Channels is installed at {spec.origin!r}; the Tidings alias refuses "
            "to shadow it (uninstall it: pip uninstall channels)"
        )
    sys.meta_path.insert(0, _ChannelsAlias())


def uninstall() -> None:
    """Remove the alias and forget the ``channels`` modules it handed out."""
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == SOURCE or n.startswith(SOURCE + ".")]:
        del sys.modules[name]
