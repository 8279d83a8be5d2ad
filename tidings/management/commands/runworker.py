"""``manage.py runworker CHANNEL [CHANNEL ...]``: run a background worker.

Serves the named channel-layer channels with ``settings.ASGI_APPLICATION``
(whose ``"channel"`` scopes a ``ChannelNameRouter`` routes) until SIGINT or
SIGTERM; see :mod:`tidings.worker`. Configuration problems (no or a wrong
``ASGI_APPLICATION``, an unknown ``--layer`` alias, a bad channel name) end
the command with a message naming the problem and exit status 1.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from tidings.layers import DEFAULT_CHANNEL_LAYER
from tidings.routing import get_default_application
from tidings.worker import run_command

__all__ = ["Command"]


class Command(BaseCommand):
    """Run a worker for one or more channel-layer channels."""

    help = "Runs a background worker that serves the given channel-layer channels."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--layer",
            default=DEFAULT_CHANNEL_LAYER,
            help="Channel layer alias (a key of CHANNEL_LAYERS); default: %(default)s.",
        )
        parser.add_argument("channels", nargs="+", help="Channel names to serve.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            application = get_default_application()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        verbose = options["verbosity"] >= 1

        def announce(line: str) -> None:
            if verbose:
                self.stdout.write(line)
                self.stdout.flush()

        def fail(message: str) -> NoReturn:
            # Django's commands start their messages with a capital letter.
            raise CommandError(message[:1].upper() + message[1:])

        run_command(
            application,
            options["channels"],
            layer_alias=options["layer"],
            announce=announce,
            fail=fail,
        )
        if verbose:
            self.stdout.write("Worker stopped.")
