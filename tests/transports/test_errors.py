"""Every exception class of tidings.transports descends from TransportError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tidings.transports
from tidings.exceptions import TidingsError
from tidings.transports.errors import TransportError


def test_every_transport_exception_has_the_one_root() -> None:
    found = []
    for info in pkgutil.iter_modules(tidings.transports.__path__):
        module = importlib.import_module(f"tidings.transports.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found.append(cls)
                assert issubclass(cls, TransportError), cls
    assert len(found) >= 5  # BadRequest, ProtocolError, ClientGone, InboxFull, RemoteTimeout
    assert issubclass(TransportError, TidingsError)
