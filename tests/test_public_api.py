"""The public surface: Channels 4 names at Channels' paths, __all__ everywhere, layering."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest

import tidings

PACKAGE = Path(tidings.__file__).resolve().parent

# Channels 4's documented public names, at the same paths under ``tidings.``.
CHANNELS_NAMES = {
    "tidings.routing": [
        "ProtocolTypeRouter",
        "URLRouter",
        "ChannelNameRouter",
        "get_default_application",
    ],
    "tidings.consumer": ["AsyncConsumer", "SyncConsumer"],
    "tidings.generic.websocket": [
        "WebsocketConsumer",
        "AsyncWebsocketConsumer",
        "JsonWebsocketConsumer",
        "AsyncJsonWebsocketConsumer",
    ],
    "tidings.generic.http": ["AsyncHttpConsumer"],
    "tidings.layers": [
        "get_channel_layer",
        "channel_layers",
        "BaseChannelLayer",
        "InMemoryChannelLayer",
    ],
    "tidings.auth": ["AuthMiddleware", "AuthMiddlewareStack", "login", "logout", "get_user"],
    "tidings.sessions": ["CookieMiddleware", "SessionMiddleware", "SessionMiddlewareStack"],
    "tidings.middleware": ["BaseMiddleware"],
    "tidings.security.websocket": ["OriginValidator", "AllowedHostsOriginValidator"],
    "tidings.db": ["database_sync_to_async", "aclose_old_connections"],
    "tidings.exceptions": [
        "StopConsumer",
        "DenyConnection",
        "AcceptConnection",
        "ChannelFull",
        "MessageTooLarge",
        "InvalidChannelLayerError",
        "RequestAborted",
        "RequestTimeout",
    ],
    "tidings.testing": ["ApplicationCommunicator", "WebsocketCommunicator", "HttpCommunicator"],
}


@pytest.mark.parametrize("module_name", sorted(CHANNELS_NAMES))
def test_channels_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in CHANNELS_NAMES[module_name]:
        assert hasattr(module, name), f"{module_name}.{name} is missing"
        assert name in module.__all__, f"{module_name}.__all__ lacks {name}"


def _modules() -> list[str]:
    """Every Python-source module of the package (C extensions have a .pyi stub instead)."""
    names = []
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="tidings."):
        path = PACKAGE.joinpath(*info.name.split(".")[1:])
        if path.is_dir() or path.with_suffix(".py").exists():
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_every_module_declares_all(module_name: str) -> None:
    path = PACKAGE.joinpath(*module_name.split(".")[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(source.read_text())
    declared = [
        node
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    assert declared, f"{module_name} has no __all__"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_wire_is_sans_io_and_stdlib_only() -> None:
    stdlib = sys.stdlib_module_names
    for path in _files("wire"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in {"asyncio", "socket", "selectors", "ssl"}, (path, name)
            assert top in stdlib or name.startswith("tidings.wire") or top == "__future__", (
                path,
                name,
            )


def test_server_never_imports_django_or_layers() -> None:
    # The server is a general ASGI server: below it only the wire cores, the ASGI types
    # and state machine, and the version.
    allowed_tidings = ("tidings.server", "tidings.wire")
    allowed_modules = {
        "tidings",
        "tidings._types",
        "tidings._asgi",
        "tidings._version",
        "tidings._metrics",  # the counters' leaf module (stdlib only, below)
    }
    for path in _files("server"):
        for name in _imports(path):
            assert not name.startswith("django"), (path, name)
            if name == "tidings" or name.startswith("tidings."):
                assert name in allowed_modules or name.startswith(allowed_tidings), (path, name)


def test_the_asgi_state_machine_is_stdlib_only() -> None:
    stdlib = sys.stdlib_module_names
    for name in _imports(PACKAGE / "_asgi.py"):
        top = name.split(".")[0]
        assert top in stdlib or top == "__future__" or name == "tidings._types", name


def test_the_metrics_core_is_a_stdlib_leaf() -> None:
    # Every layer bumps its counters: the server, the channel layers, the transports.
    stdlib = sys.stdlib_module_names
    for name in _imports(PACKAGE / "_metrics.py"):
        assert name.split(".")[0] in stdlib or name == "__future__", name


def test_layers_never_import_the_server_or_consumers() -> None:
    forbidden = ("tidings.server", "tidings.consumer", "tidings.generic", "tidings.routing")
    for path in _files("layers"):
        for name in _imports(path):
            assert not name.startswith(forbidden), (path, name)


def test_transports_sit_above_the_application_layer() -> None:
    # tidings.transports may use routing, consumers, layers and wire; nothing below
    # it (the server, the layers, the wire cores, the consumers) may import it.
    for sub in ("server", "layers", "wire", "generic"):
        for path in _files(sub):
            for name in _imports(path):
                assert not name.startswith("tidings.transports"), (path, name)
    stdlib = sys.stdlib_module_names
    for path in _files("transports"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in stdlib or top in {"__future__", "django", "asgiref", "tidings"}, (
                path,
                name,
            )
            assert not name.startswith(("tidings.server", "tidings.testing")), (path, name)


def test_no_private_name_is_imported_across_modules() -> None:
    """``from tidings.x import _name`` outside ``x`` itself: make it public or move it.

    Private *modules* (``from tidings.transports import _http``) are fine: they are
    internal to their package and imported by name.
    """
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if not node.module.startswith("tidings"):
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if importlib.util.find_spec(f"{node.module}.{name}") is None:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}: {node.module}.{name}")
    assert not offenders, offenders
