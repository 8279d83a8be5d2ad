"""``--metrics-bind``: Prometheus metrics of every worker, served by the supervisor.

Theory of operation
-------------------
Workers count in plain integers (``tidings._metrics``); nothing in a worker exports.
With ``--metrics-bind`` the server always runs a supervisor (also for one worker),
which binds the metrics listener before forking and gives each worker one end of a
``socketpair``. Over it the supervisor asks for a snapshot (``Q`` with a sequence
number) and the worker answers from its event loop (``S``: the sequence number and
its figures, ``marshal``-ed): once a second, and on every scrape, which waits up to
``SCRAPE_WAIT`` for every worker's answer to the scrape's own question, so that a
scrape counts everything the workers did before it. After each round the supervisor
sends every worker the totals and each worker's own few figures (``T``: when it
started, its open connections), which ``tidings._metrics.figures()`` and
``workers()`` return there (the admin page reads them). Totals go out only once some
worker has answered, and always with every figure (zeros included), so a reader never
sees an empty or partial snapshot.

A worker that exits sends its last figures first (a SIGKILLed one cannot: what it
counted since the last round is lost); its counters are kept in ``retired`` so that
totals never go down, its gauges (open connections) are dropped.

Why not ``prometheus_client``'s multiprocess mode: it writes every bump to an mmap
file under a lock, which costs far more than an attribute increment on the hot
path, and it needs a directory cleaned on every start and after every dead worker.
A snapshot per second per worker costs next to nothing.

The metrics listener is a small non-blocking HTTP/1.0 responder in the supervisor's
loop (``GET /metrics``; at most ``MAX_CLIENTS`` at once, the oldest dropped for a new
one, each with a deadline), so it never shares a port, a process or an event loop with
the application. A scrape blocks that loop for at most ``SCRAPE_WAIT`` (a worker that
does not answer); reaping and restarting workers wait that long at worst.
"""

from __future__ import annotations

import asyncio
import marshal
import select
import socket
import struct
import time
from typing import TYPE_CHECKING, Final

from tidings import _metrics
from tidings.server._http11 import HttpProtocol
from tidings.server._metrics_export import CONTENT_TYPE, render
from tidings.server._options import split_host_port
from tidings.server._websocket import WebSocketProtocol
from tidings.server.config import Config, ConfigError

if TYPE_CHECKING:
    from tidings.server._state import ServerState

__all__ = [
    "MAX_CLIENTS",
    "ROUND_INTERVAL",
    "SCRAPE_WAIT",
    "MetricsHub",
    "bind_metrics",
    "worker_started",
    "worker_stopping",
]

#: Seconds between two snapshot rounds (and totals sent to the workers).
ROUND_INTERVAL: Final = 1.0
#: Seconds a scrape waits for the workers' answers before using their last figures.
SCRAPE_WAIT: Final = 1.0
#: Scrape connections held at once; a new one beyond it closes the oldest.
MAX_CLIENTS: Final = 16
#: Seconds a scrape connection may take to send its request and read the answer.
_CLIENT_DEADLINE: Final = 5.0
#: Largest scrape request head, bytes.
_MAX_REQUEST: Final = 8192
_LEN: Final = struct.Struct(">I")
_SEQ: Final = struct.Struct(">I")


def bind_metrics(config: Config) -> socket.socket | None:
    """Bind and listen on ``--metrics-bind`` (None when off), before any worker starts.

    Raises:
        ConfigError: the address cannot be bound (in use, not local...), naming the flag.
    """
    if config.metrics_bind is None:
        return None
    host, port = split_host_port(config.metrics_bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--metrics-bind: cannot listen on {config.metrics_bind}: {exc.strerror or exc}"
        ) from exc
    sock.setblocking(False)
    return sock


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _LEN.pack(len(payload) + 1) + kind + payload


def _frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """Take the complete frames off the front of ``buffer``."""
    out = []
    while len(buffer) >= 4:
        size = _LEN.unpack_from(buffer)[0]
        if len(buffer) < 4 + size:
            break
        out.append((bytes(buffer[4:5]), bytes(buffer[5 : 4 + size])))
        del buffer[: 4 + size]
    return out


# -- the worker's end -----------------------------------------------------------------------


class _WorkerLink:
    """A worker's end of its socketpair: answers snapshot requests, takes the totals."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(SCRAPE_WAIT)  # the supervisor always reads; never hang on it
        self.buffer = bytearray()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.state: ServerState | None = None

    def start(self, state: ServerState) -> None:
        self.loop, self.state = state.loop, state
        state.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            return
        self.buffer += data
        for kind, payload in _frames(self.buffer):
            if kind == b"Q":
                self.send(payload)
            elif kind == b"T":
                message = marshal.loads(payload)
                _metrics.set_totals(message["totals"], message["workers"])

    def send(self, seq: bytes) -> None:
        metrics = _metrics.ACTIVE
        if metrics is None:
            return
        if self.state is not None:
            _count_open(self.state, metrics)
        try:
            self.sock.sendall(_frame(b"S", seq + marshal.dumps(metrics.snapshot())))
        except OSError:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.loop = None


def _count_open(state: ServerState, metrics: _metrics.Metrics) -> None:
    """Set the open-connection gauges of the server from its registry (not per event)."""
    http = websocket = other = 0
    for conn in state.connections:
        if isinstance(conn, WebSocketProtocol):
            websocket += 1
        elif isinstance(conn, HttpProtocol):
            http += 1
        else:
            other += 1  # the HTTP/2 server's connections
    metrics.open_http, metrics.open_websocket, metrics.open_http2 = http, websocket, other


_link: _WorkerLink | None = None


def worker_started(state: ServerState) -> None:
    """In a worker that reports to a supervisor, start answering it (else nothing)."""
    if _link is not None:
        _link.start(state)


def worker_stopping() -> None:
    """Send the supervisor this worker's last figures (it is about to exit)."""
    if _link is not None:
        _link.send(_SEQ.pack(0))
        _link._stop_reading()


# -- the supervisor's end --------------------------------------------------------------------


class _Worker:
    __slots__ = ("answered", "asked", "buffer", "latest", "sock", "started")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.started = time.time()  # forked just now
        self.buffer = bytearray()
        self.latest: _metrics.Snapshot = {}  # {} until its first answer
        self.asked = 0  # the sequence number of the latest question
        self.answered = 0  # the sequence number of the latest answer

    def tell(self, message: bytes) -> None:
        """Send ``message`` unless the worker is behind (its loop is blocked, say).

        A worker that has not answered the last question is sent nothing more, so that
        its socket buffer never fills and a frame is never cut by a short send (one
        would be the end of this link: the worker's figures stay at their last value).
        """
        if self.answered < self.asked:
            return
        try:
            sent = self.sock.send(message)
        except OSError:
            return  # gone: it will be retired
        if sent < len(message):
            self.sock.shutdown(socket.SHUT_WR)
            self.asked = self.answered + 1  # never again


class _Client:
    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = b""
        self.deadline = time.monotonic() + _CLIENT_DEADLINE


class MetricsHub:
    """The supervisor's side: workers' figures, their totals, and the metrics listener."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.workers: dict[int, _Worker] = {}
        self.retired: _metrics.Snapshot = {}
        self.clients: dict[int, _Client] = {}
        self.seq = 0
        self._next_round = 0.0

    # -- workers ---------------------------------------------------------------------------

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A new socketpair for a worker about to be forked: (supervisor's end, worker's)."""
        return socket.socketpair()

    def in_worker(self, ours: socket.socket, theirs: socket.socket) -> None:
        """In the forked worker: drop the supervisor's sockets, keep ``theirs``, count."""
        global _link
        ours.close()
        self.listener.close()
        for worker in self.workers.values():
            worker.sock.close()
        for client in self.clients.values():
            client.sock.close()
        self.workers.clear()
        self.clients.clear()
        _metrics.enable()
        _link = _WorkerLink(theirs)

    def add_worker(self, pid: int, ours: socket.socket, theirs: socket.socket) -> None:
        """In the supervisor, after forking ``pid``."""
        theirs.close()
        ours.setblocking(False)
        self.workers[pid] = _Worker(ours)

    def _retire(self, pid: int) -> None:
        """``pid`` has exited: read its last figures, keep its counters."""
        worker = self.workers.pop(pid)
        self._read_worker(worker)
        _metrics.merge(self.retired, worker.latest, gauges=False)
        worker.sock.close()

    def _read_worker(self, worker: _Worker) -> bool:
        """Read what ``worker`` sent; False once its end is closed."""
        while True:
            try:
                data = worker.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                return False
            if not data:
                return False
            worker.buffer += data
        for kind, payload in _frames(worker.buffer):
            if kind == b"S":
                worker.answered = max(worker.answered, _SEQ.unpack_from(payload)[0])
                worker.latest = marshal.loads(payload[_SEQ.size :])
        return True

    def _ask(self) -> int:
        """Ask every worker for its figures; return the question's sequence number."""
        self.seq += 1
        question = _frame(b"Q", _SEQ.pack(self.seq))
        for worker in self.workers.values():
            worker.tell(question)
            if worker.answered >= worker.asked:  # asked now: its answer is awaited
                worker.asked = self.seq
        return self.seq

    def totals(self) -> _metrics.Snapshot:
        """The figures of every worker, summed, with those of workers that exited.

        Every figure is there, zero when no worker has counted it yet.
        """
        totals = _metrics.merge(_metrics.Metrics().snapshot(), self.retired)
        for worker in self.workers.values():
            _metrics.merge(totals, worker.latest)
        return totals

    def worker_figures(self) -> dict[int, _metrics.WorkerFigures]:
        """Each running worker's start and open connections, by pid."""
        figures: dict[int, _metrics.WorkerFigures] = {}
        for pid, worker in self.workers.items():
            latest = worker.latest
            open_ = {kind: latest[f"open_{kind}"] for kind in _metrics.KINDS} if latest else None
            figures[pid] = {"started": worker.started, "connections": open_}
        return figures

    def _send_totals(self) -> None:
        if not self.retired and not any(worker.latest for worker in self.workers.values()):
            return  # no figures yet: the workers keep reading their own
        totals = {"totals": self.totals(), "workers": self.worker_figures()}
        message = _frame(b"T", marshal.dumps(totals))
        for worker in self.workers.values():
            worker.tell(message)

    def _collect(self, seq: int, wait: float) -> None:
        """Read answers until every worker answered ``seq`` or ``wait`` seconds passed."""
        deadline = time.monotonic() + wait
        while True:
            waiting = [w for w in self.workers.values() if w.asked == seq > w.answered]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            readable, _, _ = select.select([w.sock for w in waiting], [], [], left)
            for worker in waiting:
                if worker.sock in readable and not self._read_worker(worker):
                    worker.answered = seq  # closed: it will be retired

    # -- the loop --------------------------------------------------------------------------

    def poll(self, timeout: float, live: set[int]) -> None:
        """The supervisor's wait of ``timeout`` seconds: serve scrapes, run rounds.

        ``live`` holds the pids of the workers still running; the others are retired.
        """
        for pid in [pid for pid in self.workers if pid not in live]:
            self._retire(pid)
        now = time.monotonic()
        if now >= self._next_round:
            self._next_round = now + ROUND_INTERVAL
            if self.workers:
                self._ask()
            self._send_totals()
        by_fd = {w.sock.fileno(): w for w in self.workers.values()}
        write = [fd for fd, client in self.clients.items() if client.outbox]
        read = [self.listener.fileno(), *by_fd, *(fd for fd in self.clients if fd not in write)]
        readable, writable, _ = select.select(read, write, [], timeout)
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept()
            elif fd in by_fd:
                self._read_worker(by_fd[fd])
            elif fd in self.clients:
                self._client_readable(self.clients[fd])
        for fd in writable:
            if fd in self.clients:
                self._client_writable(self.clients[fd])
        now = time.monotonic()
        for client in [c for c in self.clients.values() if now > c.deadline]:
            self._drop(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        for worker in self.workers.values():
            worker.sock.close()
        self.workers.clear()
        self.listener.close()

    # -- scrapes ---------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        if len(self.clients) >= MAX_CLIENTS:
            # Full: the oldest goes, so idle connections cannot lock scrapes out.
            self._drop(min(self.clients.values(), key=lambda client: client.deadline))
        sock.setblocking(False)
        self.clients[sock.fileno()] = _Client(sock)

    def _client_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbox += data
        end = client.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(client.inbox) > _MAX_REQUEST:
                client.outbox = _response(431, b"request header too large\n")
            return
        line = bytes(client.inbox[: client.inbox.find(b"\r\n")]).split(b" ")
        if len(line) != 3 or line[0] not in (b"GET", b"HEAD"):
            client.outbox = _response(405, b"GET /metrics\n")
        elif line[1].split(b"?")[0] not in (b"/metrics", b"/"):
            client.outbox = _response(404, b"metrics are at /metrics\n")
        else:
            body = self.scrape()
            client.outbox = _response(200, body, head_only=line[0] == b"HEAD")

    def scrape(self) -> bytes:
        """Fresh figures from every worker (waiting up to ``SCRAPE_WAIT``), rendered."""
        seq = self._ask()
        self._collect(seq, SCRAPE_WAIT)
        totals = self.totals()
        self._send_totals()
        return render(totals, len(self.workers))

    def _client_writable(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()


_REASONS: Final = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 431: b"Too Large"}


def _response(status: int, body: bytes, *, head_only: bool = False) -> bytes:
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    head = (
        b"HTTP/1.0 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, _REASONS[status], content_type.encode(), len(body))
    )
    return head if head_only else head + body
