"""``manage.py runserver``: Django's development server, serving ASGI with Tidings.

Theory of operation
-------------------
With ``"tidings"`` in ``INSTALLED_APPS`` (before ``django.contrib.staticfiles``,
see check ``tidings.W001``) this command replaces Django's. It *is* Django's
command (a subclass), so everything Django does around the server stays:
``addrport`` and ``--ipv6`` parsing, the ``ALLOWED_HOSTS`` check, system
checks and the unapplied-migrations notice on every (re)start, the banner,
and the autoreloader (``django.utils.autoreload.run_with_reloader``), which
runs :meth:`Command.inner_run` in a thread of a child process and restarts
that process when a Python file changes.

Only the serving part of ``inner_run`` differs: instead of Django's WSGI
server it binds the socket with the Tidings server (``bind_sockets``) and
serves ``settings.ASGI_APPLICATION`` in this process
(``serve_in_process``): HTTP/1.1 and WebSocket, with an access log on
stderr. In ``DEBUG`` (or with ``--insecure``) and with
``django.contrib.staticfiles`` installed, the application is wrapped in
:class:`~tidings.staticfiles.StaticFilesWrapper` so ``STATIC_URL`` is
served as Django's own ``runserver`` serves it; ``--nostatic`` turns that off.

Stopping: with ``--noreload`` the server runs on the main thread and
handles SIGINT/SIGTERM itself: WebSockets are closed with 1001, in-flight
requests get :data:`RUNSERVER_GRACEFUL_TIMEOUT` seconds, exit status 0. Under the
autoreloader the server runs on Django's ``django-main-thread``, where
Python cannot install signal handlers; Ctrl-C then ends the process through
Django's reloader (exit status 0), as with Django's WSGI server.

``--noasgi`` runs Django's WSGI development server instead (with static
files as ``django.contrib.staticfiles`` serves them), like Daphne's flag.
``--nothreading`` is accepted and ignored: the ASGI server is one event loop.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.runserver import Command as RunserverCommand
from django.db import connections
from django.utils import autoreload

from tidings._types import ASGIApp
from tidings._version import __version__
from tidings.routing import get_default_application
from tidings.server._logconfig import configure_logging
from tidings.server._main import bind_sockets, serve_in_process
from tidings.server.config import Config, ConfigError, Timeouts
from tidings.staticfiles import StaticFilesWrapper

__all__ = ["RUNSERVER_GRACEFUL_TIMEOUT", "Command"]

# Ctrl-C lets in-flight requests finish for this long, not the server's 30 s: in
# development a held-open stream (SSE, long-poll) should not delay a restart
# by half a minute; Django's WSGI runserver does not wait at all.
RUNSERVER_GRACEFUL_TIMEOUT = 5.0

# Django's own wording for the errors a bind can hit (runserver prints these).
_BIND_ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}


class Command(RunserverCommand):
    """Django's ``runserver``, serving ``ASGI_APPLICATION`` with the Tidings server."""

    help = (
        "Starts a development server that serves ASGI_APPLICATION (HTTP and WebSocket) "
        "with Tidings, and static files in DEBUG."
    )
    # Set by Django's handle() from ``addrport`` (not in django-stubs).
    addr: str
    port: str

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--noasgi",
            action="store_false",
            dest="use_asgi",
            help="Run Django's WSGI development server instead of Tidings.",
        )
        parser.add_argument(
            "--nostatic",
            action="store_false",
            dest="use_static_handler",
            help="Do not serve static files at STATIC_URL.",
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            dest="insecure_serving",
            help="Serve static files even if DEBUG is False.",
        )

    @staticmethod
    def serves_static(options: dict[str, Any]) -> bool:
        """Whether static files are served, by the same rule as Django's staticfiles runserver."""
        return (
            bool(options.get("use_static_handler", True))
            and apps.is_installed("django.contrib.staticfiles")
            and bool(settings.DEBUG or options.get("insecure_serving", False))
        )

    def get_handler(self, *args: Any, **options: Any) -> WSGIHandler:
        """The WSGI handler for ``--noasgi``, wrapped for static files when they are served."""
        handler = super().get_handler(*args, **options)
        if self.serves_static(options):
            from django.contrib.staticfiles.handlers import StaticFilesHandler

            return StaticFilesHandler(handler)
        return handler

    def get_application(self, options: dict[str, Any]) -> ASGIApp:
        """The ASGI application to serve: ``ASGI_APPLICATION``, wrapped for static files.

        Raises:
            CommandError: ``ASGI_APPLICATION`` is missing or does not resolve.
        """
        try:
            application = get_default_application()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if self.serves_static(options):
            return StaticFilesWrapper(application)
        return application

    def get_config(self, application: ASGIApp, options: dict[str, Any]) -> Config:
        """The server configuration for ``application`` on the address and port given."""
        return Config(
            app=application,
            host=self.addr,
            port=int(self.port),
            access_log=True,
            log_level="info",
            timeouts=Timeouts(graceful=RUNSERVER_GRACEFUL_TIMEOUT),
        )

    def inner_run(self, *args: Any, **options: Any) -> None:
        """Check, then serve until stopped; runs on the reloader's thread or the main one."""
        if not options.get("use_asgi", True):
            super().inner_run(*args, **options)
            return
        # An error from the first import in the reloader's child is raised here.
        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        # Checked here rather than with requires_migrations_check, as Django does,
        # so the notice repeats after every reload.
        self.check_migrations()
        connections.close_all()

        application = self.get_application(options)
        config = self.get_config(application, options)
        configure_logging(config)
        try:
            sockets = bind_sockets(config)
        except ConfigError as exc:
            cause = exc.__cause__
            code = cause.errno if isinstance(cause, OSError) else None
            self.stderr.write(f"Error: {_BIND_ERRORS.get(code or 0, str(exc))}")
            # sys.exit() would only end the reloader's thread.
            os._exit(1)
        on_main_thread = threading.current_thread() is threading.main_thread()
        try:
            self.print_banner(sockets[0].getsockname()[1], options)
            status = serve_in_process(config, sockets, install_signal_handlers=on_main_thread)
        finally:
            for sock in sockets:
                sock.close()
        if status != 0:
            self.stderr.write(f"Error: the server stopped with exit status {status}.")
            if not on_main_thread:
                os._exit(1)  # not 3: Django's reloader would take that for "restart me"
            sys.exit(status)
        shutdown_message = options.get("shutdown_message", "")
        if shutdown_message:
            self.stdout.write(shutdown_message)

    def print_banner(self, server_port: int, options: dict[str, Any]) -> None:
        """Print Django's banner, then the line saying Tidings serves ASGI."""
        if hasattr(RunserverCommand, "on_bind"):
            self.on_bind(server_port)
        else:  # Django < 5.1 printed its banner before binding; print the gist of it.
            self.stdout.write(
                f"Django version {self.get_version()}, using settings "
                f"{settings.SETTINGS_MODULE!r}\n"
                f"Starting development server at {self.protocol}://{self.addr}:{server_port}/\n"
                "Quit the server with CONTROL-C."
            )
        static = f"; static files at {settings.STATIC_URL}" if self.serves_static(options) else ""
        self.stdout.write(
            f"Tidings {__version__} serves the ASGI application "
            f"{settings.ASGI_APPLICATION!r} (HTTP/1.1 and WebSocket{static})."
        )
        self.stdout.flush()
