"""The counters every part of Tidings bumps, and the figures read from them.

Theory of operation
-------------------
One :class:`Metrics` object per process holds plain ``int`` counters and gauges, and
:class:`Histogram` buckets, as slotted attributes. Code on a hot path bumps them
inline, behind one check::

    m = _metrics.ACTIVE
    if m is not None:
        m.ws_accepted += 1

``ACTIVE`` is None until :func:`enable` runs (``tidings serve --metrics-bind``), so
with metrics off the whole cost is that check. With metrics on it is an attribute
increment: no lock (each process has one event loop, and a ``+=`` on an ``int`` slot
is not torn), no label lookup on the hot paths (labelled figures that are bumped
per message are separate attributes, and the per-status request histograms a list,
all made here once). ``Histogram.observe`` is a call: per layer operation and once a
second; the per-request histogram is bumped inline (``tidings.server._cycle``).
Labelled figures bumped off the hot paths (close codes, refusals, limits) are
``dict`` s whose keys are fixed here or bounded by the protocol (a close code).

Messages and bytes: WebSocket messages are counted by number and by bytes, in and out;
as ``+=`` that is four increments per echo, about 4 % of its cost (each makes a new
``int`` past 256). So the server appends each message's size to ``ws_in_sizes`` or
``ws_out_sizes`` instead (one ``list.append``, a third of the cost), and
:meth:`Metrics.fold` adds them to ``ws_messages_*`` and ``ws_bytes_*``.
:meth:`Metrics.snapshot` folds first (so every reading is exact), and so does the
server's once-a-second sweep, which bounds the lists to one second of messages (8
bytes each, 40 for a size over 256).
A message received is counted so when the read that carried it held nothing else;
any other read adds its bytes and messages to the totals at once.

:meth:`Metrics.snapshot` copies the figures into plain data (ints, floats, lists,
dicts) that ``marshal`` can carry; :func:`merge` adds snapshots together, which is
how ``tidings.server._metrics`` sums the workers' figures in the supervisor. Reading
the totals in-process (an admin page) is :func:`figures`.

This module is a leaf: it imports the standard library only, so that the server, the
channel layers and the transports can all import it (``tests/test_public_api.py``).
Do not add exporting or I/O here.
"""

from __future__ import annotations

import functools
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypedDict, TypeVar

__all__ = [
    "ACTIVE",
    "DENIAL_REASONS",
    "DURATION_BUCKETS",
    "EXCEPTION_KINDS",
    "FANOUT_BUCKETS",
    "GAUGES",
    "KINDS",
    "LAG_BUCKETS",
    "LIMITS",
    "SESSION_EVENTS",
    "Histogram",
    "Metrics",
    "Snapshot",
    "WorkerFigures",
    "app_raised",
    "channel_full",
    "disable",
    "enable",
    "failed",
    "figures",
    "hit",
    "merge",
    "set_totals",
    "timed",
    "workers",
]

#: A snapshot: attribute name -> int, float, list of bucket counts, or dict.
Snapshot = dict[str, Any]

#: Connection kinds of ``tidings_connections`` (``http2`` is reserved for the HTTP/2
#: server: bump ``open_http2`` from it).
KINDS: Final = ("http", "websocket", "sse", "longpoll", "http2")

#: Why a WebSocket handshake was answered with an HTTP response instead of a 101.
#: ``invalid``: the request broke RFC 6455 (400, 405, 426...); ``refused``: the app
#: sent ``websocket.close`` or a denial response; ``app_error``: the app raised or
#: returned before answering well (500); ``unavailable``: 503, the app did not answer
#: within ``--ws-handshake-timeout`` or the server was shutting down.
DENIAL_REASONS: Final = ("invalid", "refused", "app_error", "unavailable")

#: Where an application exception was caught.
EXCEPTION_KINDS: Final = ("http", "websocket", "session")

#: Transport session events.
SESSION_EVENTS: Final = ("opened", "resumed", "expired")

#: Every limit a client or an app can hit, by the flag or setting that sets it.
LIMITS: Final = (
    "max_header_size",  # 431, or 414 for the request target
    "max_header_count",  # 431
    "max_body_size",  # 413
    "max_connections",  # 503
    "max_accept_rate",  # 503 with Retry-After
    "header_timeout",  # 408
    "body_timeout",  # 408
    "application_close_timeout",  # the app's task cancelled
    "ws_max_message_size",  # 1009 (also --ws-max-frame-size, --ws-max-fragments)
    "ws_max_send_buffer",  # 1008
    "ws_handshake_timeout",  # 503
    "ws_ping_timeout",  # 1011
    "max_sessions",  # transports: 503
    "max_sessions_per_user",  # transports: 429
    "client_open_rate",  # transports: 429
    "max_post_size",  # transports: 413
    "inbox",  # transports: 429, the session's inbox is full
    "buffer_messages",  # transports: 1013, the resume buffer is full
    "channel_capacity",  # channel layer: ChannelFull
)

#: Request duration buckets, seconds (Prometheus client defaults, plus 0.001 and 30).
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Event-loop lag buckets, seconds: a healthy loop stays under the first.
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Group fan-out buckets: members one group message reached in one process.
FANOUT_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

#: Figures that are levels, not totals: a worker that exits takes them with it, and
#: ``lag_last`` is the largest of the workers', not their sum.
GAUGES: Final = frozenset(
    {"open_http", "open_websocket", "open_sse", "open_longpoll", "open_http2", "lag_last"}
)


class Histogram:
    """Cumulative-on-export bucket counts: ``counts[i]`` holds values in ``(b[i-1], b[i]]``.

    The last count is the ``+Inf`` bucket.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value (Prometheus' ``le``: a value equal to a bound is in its bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def since(self, started: float) -> None:
        """Count the seconds from ``started`` (a ``time.perf_counter()``) to now."""
        self.observe(time.perf_counter() - started)


class Metrics:
    """Every figure of one process. Bump attributes inline; read with :meth:`snapshot`."""

    __slots__ = (
        "app_exceptions",
        "channel_full",
        "closes",
        "direct_deliveries",
        "group_fanout",
        "http_duration",
        "lag",
        "lag_last",
        "layer_group_send",
        "layer_receive",
        "layer_send",
        "limits",
        "open_http",
        "open_http2",
        "open_longpoll",
        "open_sse",
        "open_websocket",
        "redis_outages",
        "redis_reconnects",
        "sessions",
        "ws_accepted",
        "ws_bytes_in",
        "ws_bytes_out",
        "ws_denied",
        "ws_in_sizes",
        "ws_messages_in",
        "ws_messages_out",
        "ws_out_sizes",
    )

    def __init__(self) -> None:
        # Open connections by kind (gauges).
        self.open_http = 0
        self.open_websocket = 0
        self.open_sse = 0
        self.open_longpoll = 0
        self.open_http2 = 0
        # HTTP: request durations by status class (index status // 100; 0: no response,
        # the client left first). A histogram's count is the number of responses.
        self.http_duration = [Histogram(DURATION_BUCKETS) for _ in range(6)]
        # WebSocket.
        self.ws_accepted = 0
        self.ws_denied = dict.fromkeys(DENIAL_REASONS, 0)
        self.ws_messages_in = 0
        self.ws_messages_out = 0
        self.ws_bytes_in = 0
        self.ws_bytes_out = 0
        # Messages not in the four figures above yet: the size of each, appended per
        # message (see "Messages and bytes" above); fold() adds them in.
        self.ws_in_sizes: list[int] = []
        self.ws_out_sizes: list[int] = []
        self.closes: dict[int, int] = {}
        self.app_exceptions = dict.fromkeys(EXCEPTION_KINDS, 0)
        # The event loop.
        self.lag = Histogram(LAG_BUCKETS)
        self.lag_last = 0.0
        # Channel layers.
        self.layer_send = Histogram(DURATION_BUCKETS)
        self.layer_receive = Histogram(DURATION_BUCKETS)
        self.layer_group_send = Histogram(DURATION_BUCKETS)
        self.group_fanout = Histogram(FANOUT_BUCKETS)
        self.channel_full = 0
        self.direct_deliveries = 0
        self.redis_outages = 0
        self.redis_reconnects = 0
        # Transport sessions, and limits.
        self.sessions = dict.fromkeys(SESSION_EVENTS, 0)
        self.limits = dict.fromkeys(LIMITS, 0)

    def hit(self, limit: str) -> None:
        """Count one hit of ``limit`` (one of :data:`LIMITS`)."""
        self.limits[limit] += 1

    def closed(self, code: int) -> None:
        """Count one WebSocket connection that ended with ``code``."""
        closes = self.closes
        closes[code] = closes.get(code, 0) + 1

    def fold(self) -> None:
        """Add the messages of ``ws_in_sizes`` and ``ws_out_sizes`` to the totals; empty them."""
        sizes = self.ws_in_sizes
        if sizes:
            self.ws_messages_in += len(sizes)
            self.ws_bytes_in += sum(sizes)
            sizes.clear()
        sizes = self.ws_out_sizes
        if sizes:
            self.ws_messages_out += len(sizes)
            self.ws_bytes_out += sum(sizes)
            sizes.clear()

    def snapshot(self) -> Snapshot:
        """The figures as plain data (histograms as ``{"counts": [...], "sum": s}``)."""
        self.fold()
        out: Snapshot = {}
        for name in self.__slots__:
            if name in _PENDING:
                continue
            value = getattr(self, name)
            if isinstance(value, Histogram):
                out[name] = _plain(value)
            elif isinstance(value, list):
                out[name] = [_plain(histogram) for histogram in value]
            elif isinstance(value, dict):
                out[name] = value.copy()
            else:
                out[name] = value
        return out


#: Per-message lists that :meth:`Metrics.fold` empties: not figures themselves.
_PENDING: Final = frozenset({"ws_in_sizes", "ws_out_sizes"})


def _plain(histogram: Histogram) -> dict[str, Any]:
    return {"counts": list(histogram.counts), "sum": histogram.total}


#: This process's figures while metrics are on, else None.
ACTIVE: Metrics | None = None

_T = TypeVar("_T", bound=type)
# Methods ``timed`` wraps while metrics are on: (class, method name, Metrics attribute).
_timed: list[tuple[type, str, str]] = []

# Figures summed over every worker, and each worker's own, as the supervisor last sent
# them (None: this process serves alone, or none came yet).
_totals: Snapshot | None = None
_workers: dict[int, WorkerFigures] | None = None


def enable() -> Metrics:
    """Turn metrics on in this process (idempotent); return its figures."""
    global ACTIVE
    if ACTIVE is None:
        ACTIVE = Metrics()
        for cls, name, attr in _timed:
            _wrap(cls, name, attr)
    return ACTIVE


def disable() -> None:
    """Turn metrics off in this process and forget its figures."""
    global ACTIVE, _totals, _workers
    ACTIVE = None
    _totals = _workers = None
    for cls, name, _ in _timed:
        method = cls.__dict__[name]
        setattr(cls, name, getattr(method, "__wrapped__", method))


def timed(**methods: str) -> Callable[[_T], _T]:
    """Class decorator: time the coroutine methods named, into the histograms named.

    ``@timed(send="layer_send")`` observes every ``send`` call's seconds into
    ``Metrics.layer_send``. The methods are wrapped only while metrics are on (by
    :func:`enable`), so with metrics off a call costs exactly what it did.
    """

    def decorate(cls: _T) -> _T:
        for name, attr in methods.items():
            _timed.append((cls, name, attr))
            if ACTIVE is not None:
                _wrap(cls, name, attr)
        return cls

    return decorate


def _wrap(cls: type, name: str, attr: str) -> None:
    method: Callable[..., Awaitable[Any]] = cls.__dict__[name]
    if hasattr(method, "__wrapped__"):
        return

    @functools.wraps(method)
    async def timed_method(self: Any, *args: Any, **kwargs: Any) -> Any:
        metrics = ACTIVE
        if metrics is None:
            return await method(self, *args, **kwargs)
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            getattr(metrics, attr).since(started)

    setattr(cls, name, timed_method)


def channel_full() -> None:
    """Count one ``ChannelFull`` (also a hit of the ``channel_capacity`` limit)."""
    if ACTIVE is not None:
        ACTIVE.channel_full += 1
        ACTIVE.limits["channel_capacity"] += 1


def hit(limit: str) -> None:
    """Count one hit of ``limit`` when metrics are on (off the hot paths: a call)."""
    if ACTIVE is not None:
        ACTIVE.limits[limit] += 1


def failed(code: int) -> None:
    """Count a WebSocket connection the server failed with ``code`` (1009: a size limit)."""
    if ACTIVE is not None and code == 1009:
        ACTIVE.limits["ws_max_message_size"] += 1


def app_raised(kind: str) -> None:
    """Count one application exception caught by ``kind`` (``EXCEPTION_KINDS``)."""
    if ACTIVE is not None:
        ACTIVE.app_exceptions[kind] += 1


def set_totals(totals: Snapshot, workers: dict[int, WorkerFigures] | None = None) -> None:
    """Record the figures of every worker, summed, and each worker's (from the supervisor).

    An empty ``totals`` (no worker has answered yet) is ignored: :func:`figures` keeps
    returning this process's own figures until real totals come.
    """
    global _totals, _workers
    if totals:
        _totals, _workers = totals, workers


def figures() -> Snapshot | None:
    """The current figures, summed over every worker of this server; None when off.

    In a worker of ``tidings serve --workers N`` these are the totals the supervisor
    last sent (it sends them once a second); in a single process, and in a worker
    before the supervisor's first totals, this process's own. Either way every key is
    there: the attribute names of :class:`Metrics` (but the ``*_sizes`` lists);
    histograms are ``{"counts": [...], "sum": s}`` with the bounds of the ``*_BUCKETS``
    constants.
    """
    if ACTIVE is None:
        return None
    return _totals if _totals is not None else ACTIVE.snapshot()


class WorkerFigures(TypedDict):
    """One worker of the server, as the supervisor last saw it (see :func:`workers`)."""

    #: When it was forked, Unix time.
    started: float
    #: Its open connections by kind (:data:`KINDS`); None until its first figures.
    connections: dict[str, int] | None


def workers() -> dict[int, WorkerFigures] | None:
    """Every running worker of this server by pid, once a second from the supervisor.

    None when metrics are off, in a process that serves alone, and in a worker before
    the supervisor's first totals. At most one entry per worker process alive (during a
    ``SIGHUP`` restart, the old and the new ones).
    """
    return _workers if ACTIVE is not None else None


def merge(into: Snapshot, other: Snapshot, *, gauges: bool = True) -> Snapshot:
    """Add ``other`` into ``into`` (numbers add, lists and dicts add per item); return it.

    With ``gauges=False`` the figures of :data:`GAUGES` are left out (the counters of a
    worker that has exited still count; its open connections do not). ``lag_last`` is
    the largest of the two, not their sum.
    """
    for name, value in other.items():
        if name in GAUGES and not gauges:
            continue
        if name == "lag_last":
            into[name] = max(into.get(name, 0.0), value)
        elif name not in into:
            into[name] = _copy(value)
        else:
            into[name] = _add(into[name], value)
    return into


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        for key, value in b.items():
            a[key] = _add(a[key], value) if key in a else _copy(value)
        return a
    if isinstance(a, list):
        return [_add(x, y) for x, y in zip(a, b, strict=True)]
    return a + b
