"""The ``tidings`` command: ``serve`` (the ASGI server) and ``worker`` (background consumers)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tidings import __version__
from tidings.server.cli import add_app_dir, add_serve_parser, serve_main

__all__ = ["main"]


def _make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings", description="Tidings: an ASGI server and realtime stack for Django."
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(sub)
    w = sub.add_parser(
        "worker",
        help="run background consumers for named channels",
        description="Run the consumers of a ChannelNameRouter application for the given channels.",
    )
    w.add_argument("app", help="the application as module:attribute")
    w.add_argument("channels", nargs="+", help="channel names to listen on")
    w.add_argument("--layer", default="default", help="channel layer alias from CHANNEL_LAYERS")
    w.add_argument("--app-dir", default=".", help="directory added to sys.path to import APP")
    w.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tidings`` console script; returns the exit status."""
    parser = _make_parser()
    ns = parser.parse_args(argv)
    add_app_dir(ns.app_dir)
    if ns.command == "serve":
        return serve_main(ns, parser)
    logging.basicConfig(
        level=ns.log_level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from tidings.server.main import AppImportError, import_app
    from tidings.worker import run_worker

    try:
        application = import_app(ns.app)
    except AppImportError as exc:
        parser.error(str(exc))
    run_worker(application, ns.channels, layer_alias=ns.layer)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
