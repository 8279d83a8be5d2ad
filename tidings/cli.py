"""The ``tidings`` command: ``serve`` (the ASGI server), ``worker`` (background consumers)
and ``migrate-imports`` (a Channels project's imports and settings rewritten for Tidings)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tidings import DEFAULT_CHANNEL_LAYER
from tidings._version import __version__
from tidings.server._cli import add_app_dir, add_serve_parser, serve_main

__all__ = ["main"]


def _make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="tidings",
        description="Tidings: an ASGI server and realtime stack for Django.",
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(sub)
    w = sub.add_parser(
        "worker",
        allow_abbrev=False,
        help="run background consumers for named channels",
        description="Run the consumers of a ChannelNameRouter application for the given channels.",
    )
    w.add_argument("app", help="the application as module:attribute")
    w.add_argument("channels", nargs="+", help="channel names to listen on")
    w.add_argument(
        "--layer", default=DEFAULT_CHANNEL_LAYER, help="channel layer alias from CHANNEL_LAYERS"
    )
    w.add_argument("--app-dir", default=".", help="directory added to sys.path to import APP")
    w.add_argument(
        "--settings",
        default=None,
        help="Django settings module (default: the DJANGO_SETTINGS_MODULE environment variable)",
    )
    w.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    m = sub.add_parser(
        "migrate-imports",
        allow_abbrev=False,
        help="rewrite a Channels project's imports and settings for Tidings",
        description=(
            "Rewrite the channels and channels_redis imports, dotted-path settings and "
            "INSTALLED_APPS entries of a project's own Python files for Tidings. Without "
            "--write, print the unified diff and change nothing."
        ),
    )
    m.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="project directories or files (default: the current directory)",
    )
    m.add_argument("--write", action="store_true", help="rewrite the files in place")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tidings`` console script; returns the exit status."""
    parser = _make_parser()
    ns = parser.parse_args(argv)
    if ns.command == "migrate-imports":
        from tidings._migrate import migrate_main

        return migrate_main(ns.paths, write=ns.write)
    add_app_dir(ns.app_dir)
    if ns.command == "serve":
        return serve_main(ns, parser)
    return _worker_main(ns, parser)


def _fail(message: str) -> int:
    print(f"tidings: error: {message}", file=sys.stderr)
    return 2


def _worker_main(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``tidings worker``: Django settings and the app, then the worker's front door.

    The channel layer comes from Django's ``CHANNEL_LAYERS`` setting, so Django
    is set up first when ``--settings`` or ``DJANGO_SETTINGS_MODULE`` names a
    module (an application module may also configure settings itself).
    Configuration mistakes end with one ``tidings: error:`` line and status 2.
    """
    logging.basicConfig(
        level=ns.log_level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if ns.settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = ns.settings
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if settings_module:
        import django
        from django.core.exceptions import ImproperlyConfigured

        try:
            django.setup()
        except ModuleNotFoundError as exc:
            if exc.name is None or not (settings_module + ".").startswith(exc.name + "."):
                raise  # an import inside the settings module: its traceback helps
            return _fail(f"cannot import the Django settings module {settings_module!r}")
        except ImproperlyConfigured as exc:
            return _fail(f"Django settings {settings_module!r}: {exc}")

    from django.conf import settings

    from tidings.server._main import AppImportError, import_app
    from tidings.worker import run_command

    try:
        application = import_app(ns.app)
    except AppImportError as exc:
        parser.error(str(exc))
    if not settings.configured:
        return _fail(
            "the worker reads its channel layer from Django's CHANNEL_LAYERS setting, "
            "but Django settings are not configured: pass --settings or set "
            "DJANGO_SETTINGS_MODULE to your settings module"
        )
    return run_command(
        application,
        ns.channels,
        layer_alias=ns.layer,
        announce=logging.getLogger("tidings.worker").info,
        fail=_fail,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
