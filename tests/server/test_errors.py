"""Every exception class of tidings.server descends from ServerError, and keeps its base."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tidings.server
from tidings.server._http11 import ClientDisconnected
from tidings.server.config import ConfigError
from tidings.server.errors import ServerError


def test_every_server_exception_has_the_one_root() -> None:
    found = []
    for info in pkgutil.iter_modules(tidings.server.__path__):
        module = importlib.import_module(f"tidings.server.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found.append(cls.__name__)
                assert issubclass(cls, ServerError), cls
    assert {"AppImportError", "ConfigError", "LifespanError", "ClientDisconnected"} <= set(found)
    # What code already catches keeps catching them.
    assert issubclass(ClientDisconnected, OSError)
    assert issubclass(ConfigError, ValueError)
