"""docs/reference.md against the code: flags, defaults, settings, options, constants.

The reference promises to list every command-line flag, Django setting, channel
layer option, limit and default. These tests read the real argparse parsers,
the layer classes' signatures, the constants and the source, and fail when
something is missing from the reference or documented with another value.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings.server._options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tidings"
REFERENCE = ROOT / "docs" / "reference.md"

NONE = "\u2013"  # an en dash: the reference's "no default"
_SIZE_UNITS = {"bytes": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


# -- reading the reference ----------------------------------------------------------------


def _text() -> str:
    return REFERENCE.read_text()


def _section(heading: str, level: int = 2) -> str:
    """The text under a heading (``## heading``), up to the next heading of that level or above."""
    lines = _text().splitlines()
    marker = "#" * level + " " + heading
    try:
        start = lines.index(marker)
    except ValueError:
        raise AssertionError(f"docs/reference.md has no heading {marker!r}") from None
    end = len(lines)
    for index in range(start + 1, len(lines)):
        hashes = len(lines[index]) - len(lines[index].lstrip("#"))
        if 0 < hashes <= level and lines[index][hashes : hashes + 1] == " ":
            end = index
            break
    return "\n".join(lines[start + 1 : end])


def _is_separator(line: str) -> bool:
    return line.startswith("|") and set(line) <= {"|", "-", " ", ":"}


def _rows(text: str) -> Iterator[list[str]]:
    """The body rows of every Markdown table in ``text`` (headers and separators left out)."""
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if not line.startswith("|") or _is_separator(line):
            continue
        if index + 1 < len(lines) and _is_separator(lines[index + 1]):
            continue  # a header row
        yield [cell.strip() for cell in line.strip("|").split(" | ")]


def _flags(cell: str) -> list[str]:
    return re.findall(r"`(-{1,2}[a-z0-9][a-z0-9-]*)", cell)


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _flag_rows(text: str) -> list[tuple[list[str], str]]:
    return [(_flags(cells[0]), cells[1]) for cells in _rows(text) if _flags(cells[0])]


def _doc_number(cell: str) -> float:
    """``32 KiB`` -> 32768, ``10 s`` -> 10.0, ``10000`` -> 10000, ``500 bytes/s`` -> 500."""
    match = re.fullmatch(r"`?([\d.,]+)`?\s*(KiB|MiB|GiB|bytes|s|bytes/s)?", cell.strip())
    assert match, f"cannot read a number from {cell!r}"
    value = float(match.group(1).replace(",", ""))
    return value * _SIZE_UNITS.get(match.group(2) or "", 1)


def _same(documented: str, default: Any, where: str) -> None:
    """Assert that a documented default cell says ``default``."""
    cell = documented.strip()
    if isinstance(default, bool):
        assert cell == ("on" if default else "off"), f"{where}: documented {cell!r}, is {default}"
    elif default is None:
        assert cell in (NONE, "current directory"), f"{where}: documented {cell!r}, is None"
    elif isinstance(default, str):
        shown = "empty" if default == "" else f"`{default}`"
        assert cell == shown, f"{where}: documented {cell!r}, is {default!r}"
    elif isinstance(default, int | float):
        assert _doc_number(cell) == default, f"{where}: documented {cell!r}, is {default!r}"
    else:
        raise AssertionError(f"{where}: no rule to compare {default!r}")


# -- the parsers ----------------------------------------------------------------------------


def _subparser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)  # it changes a default
    from tidings.cli import _make_parser

    parser = _make_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise AssertionError("the tidings parser has no subcommands")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }


def _command_options(name: str) -> dict[str, argparse.Action]:
    """The options a Tidings management command adds to those every Django command has."""
    from django.core.management import load_command_class
    from django.core.management.base import BaseCommand

    common = set(_options(BaseCommand().create_parser("manage.py", "base")))
    parser = load_command_class("tidings", name).create_parser("manage.py", name)
    return {k: v for k, v in _options(parser).items() if k not in common}


@pytest.mark.parametrize(
    ("command", "heading"), [("serve", "`tidings serve`"), ("worker", "`tidings worker`")]
)
def test_every_flag_is_documented_with_its_default(
    command: str, heading: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _options(_subparser(command, monkeypatch))
    rows = _flag_rows(_section(heading))
    documented = {flag for flags, _ in rows for flag in flags}
    missing = sorted(set(options) - documented)
    assert not missing, f"tidings {command} flags missing from docs/reference.md: {missing}"
    stale = sorted(documented - set(options))
    assert not stale, (
        f"docs/reference.md documents tidings {command} flags that don't exist: {stale}"
    )
    for flags, default_cell in rows:
        for action in {id(options[f]): options[f] for f in flags}.values():
            _same(default_cell, action.default, f"tidings {command} {action.option_strings[0]}")


def test_serve_help_shows_every_documented_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tidings serve --help`` (what users read first) and the reference list the same flags."""
    from tidings.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # no flag broken across lines

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = set(re.findall(r"(--[a-z0-9-]+)", capsys.readouterr().out))
    documented = {flag for flags, _ in _flag_rows(_section("`tidings serve`")) for flag in flags}
    assert documented - {"--help"} <= shown
    assert shown - {"--help"} <= documented


@pytest.mark.parametrize(
    ("command", "heading"),
    [("runserver", "`manage.py runserver`"), ("runworker", "`manage.py runworker`")],
)
def test_management_command_flags_are_documented(command: str, heading: str) -> None:
    options = _command_options(command)
    documented = {flag for flags, _ in _flag_rows(_section(heading)) for flag in flags}
    missing = sorted(set(options) - documented)
    assert not missing, f"manage.py {command} flags missing from docs/reference.md: {missing}"
    stale = sorted(documented - set(options))
    assert not stale, f"docs/reference.md documents {command} flags that don't exist: {stale}"


def test_runworker_layer_default() -> None:
    (row,) = [d for flags, d in _flag_rows(_section("`manage.py runworker`")) if "--layer" in flags]
    _same(row, _command_options("runworker")["--layer"].default, "runworker --layer")


def test_server_default_constants_are_the_flag_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``DEFAULT_*`` of the server config is the default of the flag named after it."""
    from tidings.server import config

    options = _options(_subparser("serve", monkeypatch))
    for name in config.__all__ + [n for n in dir(config) if n.startswith("DEFAULT_WS_")]:
        if not name.startswith("DEFAULT_"):
            continue
        flag = "--" + name.removeprefix("DEFAULT_").lower().replace("_", "-")
        assert flag in options, f"config.{name} has no flag {flag}"
        assert options[flag].default == getattr(config, name), flag


def test_every_option_of_the_table_is_documented_with_its_default() -> None:
    """The option table itself (flags, defaults as the command line shows them) and the docs."""
    rows = {flag: cell for flags, cell in _flag_rows(_section("`tidings serve`")) for flag in flags}
    for option in OPTIONS:
        assert option.flag in rows, f"{option.flag} missing from docs/reference.md"
        _same(rows[option.flag], option.kind.to_cli(option.default), option.flag)


def test_the_option_table_covers_every_config_field() -> None:
    """Each field of Config and of its sections is one row of the table, with that default."""
    import dataclasses

    from tidings.server import config

    sections = {"limits": config.Limits, "timeouts": config.Timeouts}
    sections["websocket"] = config.WebSocketSettings
    fields = {
        f"{name}.{f.name}": f for name, cls in sections.items() for f in dataclasses.fields(cls)
    }
    fields.update(
        (f.name, f) for f in dataclasses.fields(config.Config) if f.name not in {"app", *sections}
    )
    table = {option.path: option for option in OPTIONS if option.field is not None}
    assert set(table) == set(fields)
    for path, option in table.items():
        assert fields[path].default == option.default, path


# -- settings, environment, checks, loggers --------------------------------------------------


def _sources() -> Iterator[tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.read_text()


def test_every_django_setting_read_is_documented() -> None:
    found: set[str] = set()
    for _, source in _sources():
        found.update(re.findall(r"\bsettings\.([A-Z][A-Z0-9_]+)\b", source))
        found.update(re.findall(r"getattr\(settings, \"([A-Z][A-Z0-9_]+)\"", source))
        found.update(re.findall(r"\b_SETTING(?::\s*Final)?\s*=\s*\"([A-Z][A-Z0-9_]+)\"", source))
    found.discard("SETTINGS_MODULE")  # the settings module's name, printed in a banner
    assert {"ASGI_APPLICATION", "CHANNEL_LAYERS", "ALLOWED_HOSTS"} <= found  # the scan works
    documented = {name for cells in _rows(_section("Django settings")) for name in _names(cells[0])}
    missing = sorted(found - documented)
    assert not missing, f"Django settings read by Tidings but not in docs/reference.md: {missing}"


def test_every_environment_variable_read_is_documented() -> None:
    found: set[str] = set()
    for _, source in _sources():
        found.update(re.findall(r"os\.environ(?:\.get)?[\[(]\s*\"([A-Z][A-Z0-9_]+)\"", source))
    found.update(option.env for option in OPTIONS if option.env is not None)
    assert "FORWARDED_ALLOW_IPS" in found
    documented = {
        name for cells in _rows(_section("Environment variables")) for name in _names(cells[0])
    }
    assert not found - documented, f"undocumented environment variables: {found - documented}"


def test_every_system_check_is_documented() -> None:
    found = {
        m for _, source in _sources() for m in re.findall(r"id=\"(tidings\.[EW]\d+)\"", source)
    }
    assert len(found) >= 4
    documented = {name for cells in _rows(_section("System checks")) for name in _names(cells[0])}
    assert found == documented


def test_every_logger_is_documented() -> None:
    found = {
        m for _, source in _sources() for m in re.findall(r"getLogger\(\"([a-z_.]+)\"\)", source)
    }
    found.discard("tidings")  # the parent of them all
    documented = {name for cells in _rows(_section("Loggers")) for name in _names(cells[0])}
    assert found == documented


def test_exit_statuses() -> None:
    from tidings.server._main import EXIT_STARTUP_FAILED

    statuses = {cells[0] for cells in _rows(_section("Exit status"))}
    assert statuses == {"0", "2", str(EXIT_STARTUP_FAILED)}


# -- channel layers -------------------------------------------------------------------------


def _option_rows(heading: str, level: int = 3) -> dict[str, str]:
    return {_names(cells[0])[0]: cells[1] for cells in _rows(_section(heading, level=level))}


def _check_layer_options(cls: type, heading: str, special: dict[str, str]) -> None:
    documented = _option_rows(heading)
    parameters = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    assert set(parameters) == set(documented), (
        f"{cls.__name__} options differ from docs/reference.md: "
        f"code {sorted(parameters)}, docs {sorted(documented)}"
    )
    for name, default in parameters.items():
        if name in special:
            assert documented[name] == special[name], name
        else:
            _same(documented[name], default, f"{cls.__name__} {name}")


def test_in_memory_layer_options() -> None:
    from tidings.layers import InMemoryChannelLayer

    _check_layer_options(InMemoryChannelLayer, "`tidings.layers.InMemoryChannelLayer`", {})


def test_redis_layer_options() -> None:
    from tidings.layers._redis_hosts import DEFAULT_HOST
    from tidings.layers.redis import RedisChannelLayer

    host, port = DEFAULT_HOST
    _check_layer_options(
        RedisChannelLayer,
        "`tidings.layers.redis.RedisChannelLayer`",
        {"hosts": f'`[("{host}", {port})]`'},
    )


def test_redis_host_entry_keys() -> None:
    from tidings.layers import _redis_hosts as hosts

    documented = _option_rows("Redis host entries")
    assert set(documented) == set(hosts._OUR_KEYS)
    _same(documented["max_connections"], hosts.DEFAULT_MAX_CONNECTIONS, "max_connections")
    _same(documented["pool_timeout"], hosts.DEFAULT_POOL_TIMEOUT, "pool_timeout")
    _same(documented["shards"], hosts.DEFAULT_CLUSTER_SHARDS, "shards")
    _same(documented["cluster"], False, "cluster")


def test_transport_router_settings() -> None:
    transports = pytest.importorskip("tidings.transports.config", reason="transports not built")
    import dataclasses

    documented = _option_rows("`TransportRouter` settings", level=2)
    fields = {f.name: f.default for f in dataclasses.fields(transports.TransportSettings)}
    assert set(fields) == set(documented)
    for name, default in fields.items():
        _same(documented[name], default, f"TransportRouter {name}")


def test_backend_aliases_are_documented() -> None:
    from tidings.layers._manager import BACKEND_ALIASES

    options = _section("Channel layer options")
    for channels_path, tidings_path in BACKEND_ALIASES.items():
        assert f"`{channels_path}`" in options and f"`{tidings_path}`" in options


# -- fixed limits ---------------------------------------------------------------------------

# Each row label of "Fixed limits and intervals" and the constant(s) it states.
_FIXED: dict[str, list[str]] = {
    "stop signal repeat window": ["tidings.server._main.SIGNAL_DEBOUNCE"],
    "new workers' start-up time after SIGHUP": ["tidings.server._supervisor.READY_TIMEOUT"],
    "unread request body": ["tidings.server._http11._BODY_HIGH_WATER"],
    "minimum request body rate": ["tidings.server._http11._MIN_BODY_RATE"],
    "timeout sweep interval": ["tidings.server._main._SWEEP_INTERVAL"],
    "WebSocket handshake buffer": ["tidings.server._websocket._HANDSHAKE_BUFFER"],
    "WebSocket close timeout": ["tidings.server._websocket.CLOSE_TIMEOUT"],
    "HTTP/2 stream resets": ["tidings.server._http2._MAX_RESETS"],
    "HTTP/2 unanswered PING and SETTINGS": ["tidings.server._http2._MAX_UNREAD_CONTROL"],
    "permessage-deflate minimum size": ["tidings.wire.deflate.DEFAULT_MIN_COMPRESS_SIZE"],
    "permessage-deflate compression level": ["tidings.wire.deflate.DEFAULT_COMPRESSION_LEVEL"],
    "permessage-deflate memory level": ["tidings.wire.deflate.DEFAULT_MEMORY_LEVEL"],
    "channel and group name length": ["tidings.layers._names.MAX_NAME_LENGTH"],
    "worker shutdown timeout": ["tidings.worker.DEFAULT_SHUTDOWN_TIMEOUT"],
    "runserver graceful timeout": [
        "tidings.management.commands.runserver.RUNSERVER_GRACEFUL_TIMEOUT"
    ],
    "Redis socket timeout": ["tidings.layers._redis_hosts.DEFAULT_SOCKET_TIMEOUT"],
    "Redis blocking wait": ["tidings.layers._redis_hosts.BLOCK_TIMEOUT"],
    "Redis command retries": ["tidings.layers._redis_hosts.COMMAND_RETRIES"],
    "Redis inbox batch": ["tidings.layers._redis_node.INBOX_BATCH"],
    "Redis marker check interval": ["tidings.layers._redis_node.MARKER_CHECK_INTERVAL"],
    "Redis reconnect backoff": [
        "tidings.layers._redis_node.BACKOFF_MIN",
        "tidings.layers._redis_node.BACKOFF_MAX",
    ],
    "live server start-up timeout": [
        "tidings.testing.live.ChannelsLiveServerTestCase.server_startup_timeout"
    ],
    "in-memory layer send sweep": ["tidings.layers.inmemory.SEND_SWEEP_CHANNELS"],
}

# Constants whose values the tests above compare with the reference in another way.
_CHECKED_ELSEWHERE = {
    "tidings.layers.base.DEFAULT_EXPIRY",  # layer option defaults (signatures)
    "tidings.layers.base.DEFAULT_CAPACITY",
    "tidings.layers.inmemory.DEFAULT_GROUP_EXPIRY",
    "tidings.layers.redis.DEFAULT_INBOX_CAPACITY",
    "tidings.layers._redis_hosts.DEFAULT_MAX_CONNECTIONS",  # host entry keys
    "tidings.layers._redis_hosts.DEFAULT_POOL_TIMEOUT",
    "tidings.layers._redis_hosts.DEFAULT_CLUSTER_SHARDS",
    "tidings.server._main.EXIT_STARTUP_FAILED",  # exit statuses
}

# Public numeric constants that the reference need not state, and why.
_NOT_USER_FACING = {
    "tidings.layers._redis_node.MARKER_TTL": "internal: how long a liveness marker lasts",
    "tidings.layers._redis_node.READER_GRACE": "internal: slack on a receive loop step's timeout",
    "tidings.wire.websocket.DEFAULT_MAX_MESSAGE_SIZE": "sans-I/O default; the server passes "
    "--ws-max-message-size",
    "tidings.wire.websocket.DEFAULT_MAX_FRAGMENTS": "sans-I/O default; the server passes "
    "--ws-max-fragments",
    "tidings.wire.frames.MAX_CONTROL_PAYLOAD": "RFC 6455 section 5.5",
    "tidings.wire.frames.MAX_CLOSE_REASON": "RFC 6455 section 5.5",
}


def _resolve(dotted: str) -> object:
    import importlib

    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            value = getattr(value, attr)
        return value
    raise AssertionError(f"cannot resolve {dotted}")


def test_fixed_limits_match_the_code() -> None:
    rows = {cells[0]: cells[1] for cells in _rows(_section("Fixed limits and intervals"))}
    assert set(rows) == set(_FIXED)
    for label, names in _FIXED.items():
        documented = tuple(_doc_number(part) for part in rows[label].split(" to "))
        assert documented == tuple(_resolve(name) for name in names), label


_SCANNED_MODULES = [
    "tidings.server.config",
    "tidings.server._websocket",
    "tidings.server._main",
    "tidings.layers.base",
    "tidings.layers.inmemory",
    "tidings.layers.redis",
    "tidings.layers._redis_node",
    "tidings.layers._redis_hosts",
    "tidings.layers._names",
    "tidings.wire.deflate",
    "tidings.wire.websocket",
    "tidings.wire.frames",
    "tidings.worker",
    "tidings.management.commands.runserver",
]


def _assigned_names(path: Path) -> list[str]:
    """Names a module assigns at its top level (not the ones it imports)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def test_every_public_limit_constant_is_accounted_for() -> None:
    """A new public numeric constant must be documented (or listed above with a reason)."""
    import importlib

    accounted = {name for names in _FIXED.values() for name in names} | _CHECKED_ELSEWHERE
    unaccounted = []
    for module_name in _SCANNED_MODULES:
        module = importlib.import_module(module_name)
        for name in _assigned_names(Path(str(module.__file__))):
            value = getattr(module, name)
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            dotted = f"{module_name}.{name}"
            if dotted in accounted or dotted in _NOT_USER_FACING:
                continue
            if module_name == "tidings.server.config" and name.startswith("DEFAULT_"):
                continue  # each is a flag's default: test_server_default_constants_...
            unaccounted.append(f"{dotted} = {value!r}")
    assert not unaccounted, (
        "public limits or defaults missing from docs/reference.md "
        f"(document them, or add them to _NOT_USER_FACING with a reason): {unaccounted}"
    )
