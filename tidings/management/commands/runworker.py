"""``manage.py runworker CHANNEL [CHANNEL ...]``: run a background worker.

Serves the named channel-layer channels with ``settings.ASGI_APPLICATION``
(whose ``"channel"`` scopes a ``ChannelNameRouter`` routes) until SIGINT or
SIGTERM; see :mod:`tidings.worker`. Configuration problems (no or a wrong
``ASGI_APPLICATION``, an unknown ``--layer`` alias, a bad channel name) end
the command with a message naming the problem and exit status 1.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import DEFAULT_CHANNEL_LAYER, get_channel_layer
from tidings.routing import get_default_application
from tidings.worker import Worker

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
        alias: str = options["layer"]
        try:
            application = get_default_application()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        try:
            layer = get_channel_layer(alias)
        except InvalidChannelLayerError as exc:
            raise CommandError(f"Channel layer {alias!r}: {exc}") from exc
        if layer is None:
            raise CommandError("No channel layer is configured (CHANNEL_LAYERS is empty).")
        try:
            worker = Worker(application, options["channels"], layer)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

        def announce() -> None:
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"Running worker for channels {', '.join(worker.channels)} "
                    f"on channel layer {alias!r}"
                )
                self.stdout.flush()

        worker.run(on_started=announce)
        if options["verbosity"] >= 1:
            self.stdout.write("Worker stopped.")
