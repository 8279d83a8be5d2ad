"""The application of the multi-process tests: the test router, and ``x-pid`` on responses.

``x-pid`` tells a test which process answered an HTTP request, so it can check
that requests for one session really landed on different processes. Settings
come from the environment: ``TIDINGS_TEST_POLL_HOLD`` and
``TIDINGS_TEST_RESUME_WINDOW`` (seconds).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

get_asgi_application()  # sets Django up before the imports below

from tests.transports.apps import make_router  # noqa: E402
from tidings._types import ASGIReceive, ASGISend, Message, Scope  # noqa: E402

router = make_router(
    poll_hold=float(os.environ.get("TIDINGS_TEST_POLL_HOLD", "25")),
    resume_window=float(os.environ.get("TIDINGS_TEST_RESUME_WINDOW", "30")),
    remote_timeout=2.0,
)


async def application(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """The router, with this process's id in every HTTP response."""
    if scope["type"] != "http":
        await router(scope, receive, send)
        return

    async def send_with_pid(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), (b"x-pid", str(os.getpid()).encode())]
            message = {**message, "headers": headers}
        await send(message)

    await router(scope, receive, send_with_pid)
