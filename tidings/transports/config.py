"""The settings of the session transports: one frozen value object, checked once.

Every limit has a named default with the reason for its value; the table in
``docs/transports.md`` lists the same names. ``TransportRouter`` takes them as
keyword arguments and builds a :class:`TransportSettings`, so a bad value
fails when ``asgi.py`` is imported, naming the argument.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BUFFER_MESSAGES",
    "DEFAULT_CLAIM_WINDOW",
    "DEFAULT_CLIENT_OPEN_BURST",
    "DEFAULT_CLIENT_OPEN_RATE",
    "DEFAULT_MAX_POST_SIZE",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_MAX_SESSIONS_PER_USER",
    "DEFAULT_POLL_HOLD",
    "DEFAULT_REMOTE_TIMEOUT",
    "DEFAULT_RESUME_WINDOW",
    "DEFAULT_SSE_HEARTBEAT",
    "TransportSettings",
]

#: Seconds a session waits for its client: long enough for a mobile network
#: hand-over or a page's reconnect backoff (Centrifugo's history TTL is of
#: this order), short enough that abandoned consumers go away soon.
DEFAULT_RESUME_WINDOW: Final = 30.0
#: Unacknowledged messages kept per session (the browser test of issue 6 sends
#: 1,000 across a cut connection; clients acknowledge at least every 100).
DEFAULT_BUFFER_MESSAGES: Final = 1000
#: Unacknowledged bytes (encoded envelopes) kept per session.
DEFAULT_BUFFER_BYTES: Final = 1024 * 1024
#: Body of one POST from the client; the WebSocket server's default message
#: limit is also 1 MiB.
DEFAULT_MAX_POST_SIZE: Final = 1024 * 1024
#: Seconds a long-poll GET waits for a message: under the 30 s that many
#: proxies and load balancers allow an idle response (SockJS uses 25 s too).
DEFAULT_POLL_HOLD: Final = 25.0
#: Seconds between comment lines on an idle SSE stream: below the 30-60 s idle
#: timeouts of common proxies (nginx proxy_read_timeout is 60 s).
DEFAULT_SSE_HEARTBEAT: Final = 15.0
#: Open sessions per authenticated user in one process: a generous number of
#: tabs, small enough that one account cannot exhaust the process.
DEFAULT_MAX_SESSIONS_PER_USER: Final = 100
#: Sessions in one process, anonymous ones included, live or waiting for their
#: client: as many as the server's default --max-connections (10,000), since a
#: live SSE or WebSocket session holds one connection. Each session holds a
#: consumer instance and a resume buffer: a few KiB typically, but up to
#: buffer_bytes, so the worst case with the defaults is still about 10 GiB
#: (docs/transports.md says how to size the two together).
DEFAULT_MAX_SESSIONS: Final = 10_000
#: Seconds a worker waits for the worker that owns a session to answer through
#: the channel layer (a Redis round trip takes about a millisecond). Under
#: tidings.js's 5 s open timeout, which counts from the connect: when the owner
#: died, the new session is offered while the client still waits for it.
DEFAULT_REMOTE_TIMEOUT: Final = 3.0

#: New sessions one client address (an IPv6 /64) may open per second, on
#: average, in one process. A page opens one per load and resumes it
#: afterwards (a resume is never counted); an office behind one NAT address
#: reloading after a restart gets there within seconds. One client looping
#: on new sessions could otherwise fill ``max_sessions`` alone (issue 13).
DEFAULT_CLIENT_OPEN_RATE: Final = 10.0
#: New sessions one client address may open at once before the rate applies
#: (many tabs restored together).
DEFAULT_CLIENT_OPEN_BURST: Final = 100
#: Seconds a new session waits for its client to come back when the client
#: never did (no second request after the one that opened it): tidings.js
#: polls again at once, so a session nobody claims within this is abandoned
#: (or was opened only to take a place); ``resume_window`` applies from the
#: first return on.
DEFAULT_CLAIM_WINDOW: Final = 10.0

# Upper bounds that catch unit mistakes (milliseconds given as seconds).
_MAX_SECONDS: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Limits and timings of the session transports (see ``docs/transports.md``).

    Raises:
        TypeError: a value has the wrong type (the message names the argument).
        ValueError: a value is out of range (the message names the argument).
    """

    resume_window: float = DEFAULT_RESUME_WINDOW
    buffer_messages: int = DEFAULT_BUFFER_MESSAGES
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    max_post_size: int = DEFAULT_MAX_POST_SIZE
    poll_hold: float = DEFAULT_POLL_HOLD
    sse_heartbeat: float = DEFAULT_SSE_HEARTBEAT
    max_sessions_per_user: int = DEFAULT_MAX_SESSIONS_PER_USER
    max_sessions: int = DEFAULT_MAX_SESSIONS
    remote_timeout: float = DEFAULT_REMOTE_TIMEOUT
    client_open_rate: float = DEFAULT_CLIENT_OPEN_RATE
    client_open_burst: int = DEFAULT_CLIENT_OPEN_BURST
    claim_window: float = DEFAULT_CLAIM_WINDOW
    channel_layer_alias: str = "default"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "channel_layer_alias":
                if not isinstance(value, str) or not value:
                    raise TypeError(
                        f"TransportRouter(channel_layer_alias=...) must be a non-empty str, "
                        f"not {value!r}"
                    )
            elif field.type == "int":
                _check_int(field.name, value)
            elif field.name == "client_open_rate":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(
                        f"TransportRouter(client_open_rate=...) must be a number of sessions "
                        f"per second, not {value!r}"
                    )
                if not 0 < value <= 1e6:
                    raise ValueError(
                        f"TransportRouter(client_open_rate=...) must be more than 0 and at "
                        f"most 1e6 per second, not {value!r}"
                    )
            else:
                _check_seconds(field.name, value)


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"TransportRouter({name}=...) must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"TransportRouter({name}=...) must be at least 1, not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"TransportRouter({name}=...) must be a number of seconds, not {value!r}")
    if not 0 < value <= _MAX_SECONDS:
        raise ValueError(
            f"TransportRouter({name}=...) must be more than 0 and at most "
            f"{_MAX_SECONDS:g} seconds, not {value!r}"
        )
