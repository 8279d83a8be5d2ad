"""The ``tidings serve`` command line: options, and turning them into a ``Config``.

``tidings serve module:app [options]`` serves an ASGI 3 application. The
top-level ``tidings`` command (``tidings.cli``) adds the other subcommands.
The options themselves are rows of the table in :mod:`tidings.server._options`:
the parser and :func:`build_config` are read from it. Every option's help text
states its default; docs/reference.md lists them all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from tidings._version import __version__
from tidings.server._options import OPTIONS, SIZE, Option, human_size, parse_size
from tidings.server.config import Config, ConfigError, Limits, Timeouts, WebSocketSettings

__all__ = ["add_serve_parser", "build_config", "main", "parse_size", "serve_main"]


def _add_option(parser: argparse._ActionsContainer, option: Option) -> None:
    """Add one row of the option table to ``parser``."""
    kind = option.kind
    default = kind.to_cli(option.default)
    if option.env is not None:
        default = os.environ.get(option.env, default)
    help_text = option.help
    if kind is SIZE:
        help_text += f" ({human_size(option.default)})"
    extra: dict[str, Any] = {}
    if kind.parse is not None:
        extra["type"] = kind.parse
    if option.choices is not None:
        extra["choices"] = list(option.choices)
    parser.add_argument(option.flag, action=kind.action, default=default, help=help_text, **extra)


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand and its options (the option table's rows) to ``sub``."""
    s = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve an ASGI application",
        description="Serve an ASGI 3 application over HTTP/1.1 and WebSocket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("app", help="the application as module:attribute, e.g. mysite.asgi:application")
    groups: dict[str | None, argparse._ActionsContainer] = {None: s}
    for option in OPTIONS:
        if option.group not in groups:
            groups[option.group] = s.add_argument_group(option.group)
        _add_option(groups[option.group], option)


def build_config(ns: argparse.Namespace) -> Config:
    """Turn parsed ``serve`` arguments into a validated Config.

    Raises:
        ConfigError: a value is out of bounds; the message names the flag.
    """
    values: dict[str, dict[str, Any]] = {"": {}, "limits": {}, "timeouts": {}, "websocket": {}}
    for option in OPTIONS:
        if option.field is not None:
            values[option.section][option.field] = option.kind.to_config(getattr(ns, option.dest))
    return Config(
        app=ns.app,
        limits=Limits(**values["limits"]),
        timeouts=Timeouts(**values["timeouts"]),
        websocket=WebSocketSettings(**values["websocket"]),
        **values[""],
    )


def serve_main(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``tidings serve`` with parsed arguments; return the exit status."""
    try:
        config = build_config(ns)
    except ConfigError as exc:
        parser.error(str(exc))
    from tidings.server._main import run

    try:
        return run(config)
    except ConfigError as exc:
        print(f"tidings: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tidings.server._cli serve ...``: the server alone, without Django parts."""
    parser = argparse.ArgumentParser(prog="tidings", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(sub)
    ns = parser.parse_args(argv)
    add_app_dir(ns.app_dir)
    return serve_main(ns, parser)


def add_app_dir(app_dir: str) -> None:
    """Make ``module:app`` importable from ``--app-dir`` (the current directory by default)."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
