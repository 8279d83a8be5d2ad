"""The bounded accept rate of one worker (``--max-accept-rate``).

Theory of operation
-------------------
When a worker dies, its clients all come back at once: every one of them costs a
TCP accept, a handshake, a consumer's ``connect`` and, for a session, a resume or a
relay to the owning process. Taken as they come, a few thousand of these fill the
event loop for seconds, the clients that never left wait behind them, and clients
whose handshake takes longer than their own open timeout give up and come back
again, which only adds work. ``AcceptRate`` is a token bucket per worker: up to
``rate`` new connections a second, in bursts of up to ``rate`` (one second's worth).
A connection over the rate is answered at once with a ready-made ``503`` carrying
``Retry-After`` and closed, before anything is parsed and before the application
sees it: refusing costs an accept, one write and a close.

``Retry-After`` spreads the refused over time instead of telling them all to come
back together: each refusal books the next free ``1 / rate`` seconds after those
already booked, and is told the whole seconds until its booking (1 at least,
:data:`MAX_RETRY_AFTER` at most). The first ``rate`` refused within a second are
told 1, the next ``rate`` 2, and so on. ``tidings.js`` waits at least that long and
adds up to half of it at random (its backoff jitter), so the returning clients
arrive at about the rate they can be taken.

The bucket is per process: with ``--workers N`` the server as a whole accepts up to
N times the rate. The clock is ``time.monotonic``, passed in, so a test steps it.
What must not be added here: anything per client address (a proxy hides them, and
the fallback transports' ``client_open_rate`` limits sessions per address already).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Final

from tidings import _metrics
from tidings.wire.http11 import simple_response

__all__ = ["MAX_RETRY_AFTER", "AcceptRate", "refusal", "refuse"]

error_log = logging.getLogger("tidings.error")

#: The longest ``Retry-After`` the server tells a refused client, in seconds: the
#: longest wait of tidings.js's backoff (10 s), beyond which it would not wait anyway.
MAX_RETRY_AFTER: Final = 10

# The whole refusal, status line to body, for each Retry-After value: built once.
_REFUSALS: Final = tuple(
    simple_response(503, "Server busy, try again later").replace(
        b"\r\n", b"\r\nretry-after: %d\r\n" % seconds, 1
    )
    for seconds in range(MAX_RETRY_AFTER + 1)
)


def refusal(retry_after: int) -> bytes:
    """The ``503`` response telling a client to come back in ``retry_after`` seconds."""
    return _REFUSALS[retry_after]


class AcceptRate:
    """A token bucket of new connections: ``rate`` a second, bursts of ``rate``."""

    __slots__ = ("_booked", "_interval", "_stamp", "_tokens", "logged_at", "rate")

    def __init__(self, rate: int, now: float) -> None:
        """Start full: a worker that has just started takes a burst at once.

        Args:
            rate: new connections a second (positive).
            now: the ``time.monotonic()`` moment to start from.
        """
        self.rate = rate
        self._interval = 1.0 / rate
        self._tokens = float(rate)
        self._stamp = now
        self._booked = now  # the end of the last booking handed to a refused client
        self.logged_at = -1.0  # the last "over the accept rate" log line

    def admit(self, now: float) -> int:
        """Take a token for a new connection at ``now``.

        Returns:
            0 when admitted; otherwise the ``Retry-After`` seconds (1 to
            :data:`MAX_RETRY_AFTER`) to answer the refused connection with.
        """
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = min(tokens, float(self.rate)) - 1.0
            return 0
        self._tokens = tokens
        # Book the next free slot after the ones already handed out (not before the
        # moment the bucket itself has a token again).
        start = max(self._booked, now + (1.0 - tokens) * self._interval)
        wait = start + self._interval - now
        if wait > MAX_RETRY_AFTER:
            return MAX_RETRY_AFTER  # booked full: the latest slot, not booked further
        self._booked = start + self._interval
        return max(1, math.ceil(wait - 1e-9))  # 2.0000000000000004 s is 2 s


def refuse(transport: asyncio.Transport, bucket: AcceptRate, retry_after: int, now: float) -> None:
    """Answer a connection over the rate with its ``503`` and close it; count and log it.

    The warning is logged at most once a second, so that a flood does not flood the log.
    """
    _metrics.hit("max_accept_rate")
    if now - bucket.logged_at >= 1.0:
        bucket.logged_at = now
        error_log.warning(
            "connection refused: over %d new connections a second (--max-accept-rate)",
            bucket.rate,
        )
    transport.write(_REFUSALS[retry_after])
    transport.close()
