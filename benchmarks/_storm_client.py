"""The load client of ``reconnect_storm.py``: thousands of tidings.js connections in one process.

Run as ``python _storm_client.py '<json settings>'``; it talks to its parent over
stdin/stdout, one line per command and one JSON object per answer:

* at start it opens ``count`` sessions to ``port`` (at most ``rate`` new ones a second,
  each client bound to a source address of its own in 127.0.0.0/8);
* ``status [PID]``: how many are open; since ``mark``, how many lost their transport
  and are not back yet, and how many sessions of process PID were not yet replaced;
* ``blip SECONDS``: every client's transport is cut (the socket aborted, as by a network
  blip) at a random moment within SECONDS; tidings.js resumes;
* ``mark``: the storm starts now (the parent is about to kill a worker): what happens
  from here on is what ``report`` tells;
* ``report``: one JSON object per the module's ``_report``;
* ``quit`` or end of input: exit.

Each client is a port of ``tidings/static/tidings/tidings.js``'s ``Connection`` as a
browser runs it, with ``transports: ["websocket", "sse"]``: the same backoff (250 ms
initial, factor 2, 10 s at most, jitter 0.5), the same reaction to each failure (a
transport that fails to open is followed at once by the next; a round where all
failed, or a 429/503 with ``Retry-After`` on an HTTP transport, waits the jittered
backoff, at least ``Retry-After`` plus up to half of it again; a transport that dies
after being open more than 5 s retries within 250 ms at random; one that opened and
died within 5 s three times is demoted), the same resume (``sid`` and ``last``), the
same open timeout (5 s), and the same ``seq`` rules (a duplicate dropped, a gap breaks
the transport). Like a browser, the WebSocket transport does not see the status of a
refused handshake: it just fails (the client still counts the status, for the
report). Not ported: long-polling (the third transport, reached only when SSE fails
too without a 429/503), SSE acknowledgements by ``POST`` (they only free the server's
resume buffer early; ``last`` on every resume does it too) and client messages (none
are sent).

Every text a session delivers is ``hello <pid>`` (first: the process owning it) or
``tick <n> <t>``, ``t`` the publisher's ``time.monotonic()``: the client checks that
the ``n`` of a session never skip or repeat across resumes, and records how late
ticks arrive at clients whose transport never broke.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import sys
import time
from typing import Any

import httptools

__all__ = ["main"]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_MASK = b"\x12\x34\x56\x78"

# tidings.js DEFAULTS (milliseconds there, seconds here).
BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_FACTOR, BACKOFF_JITTER = 0.25, 10.0, 2.0, 0.5
OPEN_TIMEOUT = 5.0
EARLY_DEATH = 5.0
MAX_EARLY_DEATHS = 3
IDLE_TIMEOUT = 45.0
ACK_DELAY = 0.2
ACK_EVERY = 50
TRANSPORTS = ("websocket", "sse")
STREAMING = frozenset(TRANSPORTS)
BUSY = frozenset({429, 503})
FINAL = frozenset({400, 403, 404, 405, 410, 413, 501})

now = time.monotonic


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, RFC 6455 section 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + _MASK + bytes(b ^ _MASK[i & 3] for i, b in enumerate(payload))


class Busy:
    def __init__(self, reason: str, retry_after: int | None) -> None:
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.reason


class Final:
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"final {self.code} {self.reason}"


class _Http(asyncio.Protocol):
    """One transport connection: an HTTP request, then a WebSocket or an event stream."""

    def __init__(self, host: Client, name: str) -> None:
        self.host = host
        self.name = name
        self.dead = False
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.upgraded = False
        self.buf = b""
        self.data: list[str] = []
        self.idle: asyncio.TimerHandle | None = None

    # -- the connection -------------------------------------------------------------------

    def start(self) -> None:
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host = self.host
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((host.source, 0))
            sock.setblocking(False)
            host.pool.attempts.append(now())
            await loop.sock_connect(sock, ("127.0.0.1", host.pool.port))
            if self.dead:
                sock.close()
                return
            await loop.create_connection(lambda: self, sock=sock)
        except OSError as exc:
            sock.close()
            host.pool.count_error(type(exc).__name__)
            self.fail(f"{self.name}: {exc}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.dead:
            transport.close()
            return
        transport.write(self.host.request(self.name))  # type: ignore[attr-defined]
        if self.name == "sse":
            self.touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.name == "websocket":
            self.fail("websocket closed (1006)")
        else:
            self.fail("sse stream ended" if self.status == 200 else "sse: network error")

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.upgraded:
            self._frames(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            self.upgraded = True
            if rest:
                self._frames(rest)
        except httptools.HttpParserError:
            self.fail(f"{self.name}: bad HTTP")

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = status = self.parser.get_status_code()
        host = self.host
        cookie = self.headers.get(b"set-cookie")
        if cookie is not None and cookie.startswith(b"tidings_bk="):
            host.cookie = cookie.split(b";", 1)[0].decode("latin-1")
        retry = self.headers.get(b"retry-after")
        retry_after = int(retry) if retry is not None and retry.isdigit() else None
        if status >= 300 or (self.name == "websocket" and status != 101):
            host.pool.count_status(status, retry_after is not None)
        if self.name == "websocket":
            if status != 101:
                # A browser's WebSocket never sees the status: just a failure.
                self.fail("websocket closed (1006)")
            return
        if status == 200:
            return
        if status in FINAL:
            self.fail(Final(status, f"sse: HTTP {status}"))
        elif status in BUSY:
            self.fail(Busy(f"sse: HTTP {status}", retry_after))
        else:
            self.fail(f"sse: HTTP {status}")

    def on_body(self, body: bytes) -> None:
        if self.dead or self.status != 200:
            return
        self.touch()
        self.buf += body
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                return
            line = self.buf[:end].rstrip(b"\r").decode("utf-8")
            self.buf = self.buf[end + 1 :]
            if line == "":
                if self.data:
                    text = "\n".join(self.data)
                    self.data = []
                    self._message(text)
                    if self.dead:
                        return
            elif line.startswith("data:"):
                self.data.append(line[6:] if line.startswith("data: ") else line[5:])

    def on_message_complete(self) -> None:
        if self.name == "sse":
            self.fail("sse stream ended")

    # -- WebSocket frames (server frames are never masked) ------------------------------------

    def _frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while len(buf) >= 2:
            size, start = buf[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                break
            opcode, payload = buf[0] & 0x0F, buf[start : start + size]
            buf = buf[start + size :]
            if opcode == 0x9 and self.transport is not None:
                self.transport.write(_masked(0xA, payload))
            elif opcode == 0x1:
                self._message(payload.decode("utf-8"))
                if self.dead:
                    return
            elif opcode == 0x8:
                self.fail("websocket closed")
                return
        self.buf = buf

    def _message(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            self.fail("not JSON")
            return
        self.host.frame(self, msg)

    # -- what the Connection calls --------------------------------------------------------

    def ack(self, seq: int) -> bool:
        if self.name != "websocket":
            return True  # not ported: SSE acknowledges by POST; `last` on a resume does too
        if self.upgraded and self.transport is not None and not self.dead:
            self.transport.write(_masked(0x1, b'{"ack":%d}' % seq))
        return True

    def touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.fail, "idle timeout")

    def fail(self, why: object) -> None:
        if self.dead:
            return
        self.stop()
        self.host.died(self, why)

    def stop(self) -> None:
        self.dead = True
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.close()

    def cut(self) -> None:
        """A network blip: the socket goes away without a close handshake."""
        if self.transport is not None and not self.dead:
            self.transport.abort()


class Client:
    """tidings.js's ``Connection``, for one session."""

    def __init__(self, pool: Pool, index: int, source: str) -> None:
        self.pool = pool
        self.index = index
        self.source = source
        self.cookie: str | None = None
        self.order = list(TRANSPORTS)
        self.state = "connecting"
        self.sid: str | None = None
        self.last = 0
        self.acked = 0
        self.t: _Http | None = None
        self.t_index = 0
        self.retry_index = 0
        self.demoted: set[str] = set()
        self.failed_this_round: list[str] = []
        self.early_deaths: dict[str, int] = {}
        self.attempt = 0
        self.opened_at = 0.0
        self.open_timer: asyncio.TimerHandle | None = None
        self.retry_timer: asyncio.TimerHandle | None = None
        self.ack_timer: asyncio.TimerHandle | None = None
        # What the report needs.
        self.owner = 0  # pid from the session's "hello"
        self.last_n = 0  # the session's last tick number
        self.n_gaps = 0
        self.gaps = 0  # transports broken by a seq gap
        self.duplicates = 0
        self.opens: list[tuple[float, str, bool]] = []
        self.losses: list[float] = []  # continuitylost events
        self.deaths: list[float] = []  # an open transport died
        self.storm_owner = 0  # the owner when the storm started

    # -- transports -----------------------------------------------------------------------

    def request(self, name: str) -> bytes:
        query = f"tidings={'ws' if name == 'websocket' else 'sse'}"
        if self.sid:
            query += f"&sid={self.sid}&last={self.last}"
        lines = [f"GET /ws/?{query} HTTP/1.1", f"Host: 127.0.0.1:{self.pool.port}"]
        if name == "websocket":
            key = base64.b64encode(os.urandom(16)).decode()
            lines += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                "Origin: http://127.0.0.1",
            ]
        else:
            lines += [
                "Accept: text/event-stream",
                "Cache-Control: no-store",
                "X-Tidings: 1",
                "Sec-Fetch-Site: same-origin",
            ]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def first_index(self) -> int:
        for i, name in enumerate(self.order):
            if name not in self.demoted:
                return i
        return len(self.order) - 1

    def next_index(self, start: int) -> int:
        for i in range(start + 1, len(self.order)):
            if self.order[i] not in self.demoted:
                return i
        return -1

    def start(self, index: int) -> None:
        self.t_index = index
        t = self.t = _Http(self, self.order[index])
        self.open_timer = asyncio.get_running_loop().call_later(OPEN_TIMEOUT, self._open_timeout, t)
        t.start()

    def _open_timeout(self, t: _Http) -> None:
        if t is self.t and self.state != "open":
            self.pool.timeouts += 1
            t.fail("open timeout")

    # -- the Connection's methods, as in tidings.js ---------------------------------------

    def opened(self, t: _Http, msg: dict[str, Any]) -> None:
        if t is not self.t or self.state == "open":
            return
        if not isinstance(msg.get("sid"), str) or not msg["sid"]:
            t.fail("open message without a session id")
            return
        if self.open_timer is not None:
            self.open_timer.cancel()
            self.open_timer = None
        for name in self.failed_this_round:
            if name != t.name:
                self.demoted.add(name)
        self.failed_this_round = []
        self.opened_at = stamp = now()
        previous = self.sid
        resumed = previous is not None and msg.get("resumed") is True
        if previous is not None and not resumed:
            self.losses.append(stamp)  # "continuitylost": a new session
            self.last = self.acked = 0
            self.last_n = 0
        self.sid = msg["sid"]
        self.state = "open"
        self.opens.append((stamp, t.name, resumed))
        self.pool.opened.append(stamp)

    def frame(self, t: _Http, msg: Any) -> None:
        if t is not self.t or not isinstance(msg, dict):
            return
        if msg.get("type") == "open":
            if self.state != "open":
                self.opened(t, msg)
            return
        if msg.get("type") == "close":
            self.pool.closed += 1
            self.drop()
            self.state = "closed"
            return
        if self.state != "open":
            t.fail("message before open")
            return
        seq = msg.get("seq")
        if not isinstance(seq, int):
            return
        if seq <= self.last:
            self.duplicates += 1
            return
        if seq != self.last + 1:
            self.gaps += 1
            t.fail(f"gap: seq {seq} after {self.last}")
            return
        self.last = seq
        self._deliver(msg.get("text", ""))
        if self.last - self.acked >= ACK_EVERY:
            self.send_ack()
        elif self.ack_timer is None:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self.send_ack)

    def _deliver(self, text: str) -> None:
        kind, _, rest = text.partition(" ")
        if kind == "hello":
            self.owner = int(rest)
        elif kind == "tick":
            n_text, _, sent = rest.partition(" ")
            n = int(n_text)
            if self.last_n and n != self.last_n + 1:
                self.n_gaps += 1
            self.last_n = n
            pool = self.pool
            if pool.sample and (not self.deaths or self.deaths[-1] < pool.sample_from):
                pool.latencies.append(now() - float(sent))

    def send_ack(self) -> None:
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        if self.state != "open" or self.last <= self.acked or self.t is None:
            return
        if self.t.ack(self.last):
            self.acked = self.last

    def died(self, t: _Http, why: object) -> None:
        if t is not self.t:
            return
        for timer in (self.open_timer, self.ack_timer):
            if timer is not None:
                timer.cancel()
        self.open_timer = self.ack_timer = None
        self.t = None
        if isinstance(why, Final):
            self.pool.finals += 1
            self.state = "closed"
            return
        was_open = self.state == "open"
        if not was_open:
            if not isinstance(why, Busy):
                self.failed_this_round.append(t.name)
                following = self.next_index(self.t_index)
                if following >= 0:
                    self.start(following)
                    return
            self.failed_this_round = []
            index = self.first_index()
            delay = self.busy_delay(why.retry_after) if isinstance(why, Busy) else self.backoff()
        else:
            self.deaths.append(now())
            early = now() - self.opened_at < EARLY_DEATH
            deaths = self.early_deaths.get(t.name, 0) + 1 if early else 0
            self.early_deaths[t.name] = deaths
            if (
                early
                and t.name in STREAMING
                and deaths >= MAX_EARLY_DEATHS
                and self.next_index(self.t_index) >= 0
            ):
                self.demoted.add(t.name)
            index = self.first_index()
            if early:
                delay = self.backoff()
            else:
                self.attempt = 0
                delay = random.random() * BACKOFF_INITIAL
        self.acked = min(self.acked, self.last)
        self.state = "reconnecting"
        self.retry_index = index
        self.retry_timer = asyncio.get_running_loop().call_later(delay, self.retry_now)

    def retry_now(self) -> None:
        self.retry_timer = None
        if self.state == "reconnecting" and self.t is None:
            self.start(self.retry_index)

    def backoff(self) -> float:
        base = min(BACKOFF_MAX, BACKOFF_INITIAL * BACKOFF_FACTOR**self.attempt)
        self.attempt += 1
        return base * (1 - BACKOFF_JITTER * random.random())

    def busy_delay(self, retry_after: int | None) -> float:
        normal = self.backoff()
        if retry_after is None:
            return normal
        if retry_after >= BACKOFF_MAX:
            spread = BACKOFF_MAX * (1 - BACKOFF_JITTER * random.random())
        else:
            spread = min(BACKOFF_MAX, retry_after * (1 + BACKOFF_JITTER * random.random()))
        return max(normal, spread)

    def drop(self) -> None:
        for timer in (self.open_timer, self.retry_timer, self.ack_timer):
            if timer is not None:
                timer.cancel()
        t, self.t = self.t, None
        if t is not None:
            t.stop()


class Pool:
    """The clients of this process and what they counted together."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.port: int = settings["port"]
        first, count = settings["source_offset"], settings["count"]
        self.clients = [Client(self, i, _source(first + i)) for i in range(count)]
        self.mark = 0.0
        self.attempts: list[float] = []  # connection attempts (a TCP connect each)
        self.opened: list[float] = []  # transports opened
        self.statuses: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.timeouts = 0
        self.finals = 0
        self.closed = 0
        self.sample = False  # record tick latencies of clients that did not break
        self.sample_from = 0.0
        self.latencies: list[float] = []

    def count_status(self, status: int, retry_after: bool) -> None:
        key = f"{status}{'+retry-after' if retry_after else ''}"
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def count_error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def status(self, killed: int) -> dict[str, Any]:
        """How many are open; since ``mark``, how many are away and how many sessions of
        the ``killed`` process were not yet replaced by a new one ("continuitylost")."""
        mark = self.mark
        back = sum(1 for c in self.clients if c.state == "open")
        away = sum(
            1 for c in self.clients if c.state != "open" and c.deaths and c.deaths[-1] >= mark
        )
        untold = sum(
            1
            for c in self.clients
            if killed and c.storm_owner == killed and not any(t >= mark for t in c.losses)
        )
        return {
            "count": len(self.clients),
            "open": back,
            "away": away,
            "untold": untold,
            "statuses": self.statuses,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "finals": self.finals,
        }

    def report(self) -> dict[str, Any]:
        """Per client, what the storm did to it (only clients whose transport broke), and totals."""
        mark = self.mark
        broken = []
        never_left: dict[int, int] = {}  # owner pid -> clients whose transport held
        for c in self.clients:
            storm_deaths = [d for d in c.deaths if d >= mark]
            if not storm_deaths:
                never_left[c.storm_owner] = never_left.get(c.storm_owner, 0) + 1
                checks = {"n_gaps": c.n_gaps, "gaps": c.gaps, "duplicates": c.duplicates}
                if any(checks.values()) or c.state != "open":
                    broken.append({"never_left": True, "owner": c.storm_owner, **checks})
                continue
            lost_at = storm_deaths[0]
            reopen = [o for o in c.opens if o[0] >= lost_at]
            broken.append(
                {
                    "owner": c.storm_owner,
                    "lost_at": lost_at,
                    "back_at": reopen[0][0] if reopen else None,
                    "reopens": [[round(o[0] - mark, 4), o[1], o[2]] for o in reopen],
                    "losses": sum(1 for t in c.losses if t >= mark),
                    "n_gaps": c.n_gaps,
                    "gaps": c.gaps,
                    "duplicates": c.duplicates,
                    "state": c.state,
                    "demoted": sorted(c.demoted),
                }
            )
        return {
            "count": len(self.clients),
            "never_left": never_left,
            "clients": broken,
            "statuses": self.statuses,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "finals": self.finals,
            "closed": self.closed,
            "attempts": [round(t - mark, 4) for t in self.attempts if t >= mark],
            "opened": [round(t - mark, 4) for t in self.opened if t >= mark],
            "latencies": self.latencies,
        }


def _source(n: int) -> str:
    """The ``n``-th source address 127.a.b.c (never .0 or .255)."""
    a, rest = divmod(n, 254 * 254)
    b, c = divmod(rest, 254)
    return f"127.{a + 1}.{b + 1}.{c + 1}"


async def _open_all(pool: Pool, rate: float) -> None:
    started = now()
    for i, client in enumerate(pool.clients):
        ahead = started + i / rate - now()
        if ahead > 0:
            await asyncio.sleep(ahead)
        client.start(client.first_index())


async def _blip(pool: Pool, spread: float) -> None:
    loop = asyncio.get_running_loop()
    for client in pool.clients:
        loop.call_later(random.random() * spread, lambda c=client: c.t and c.t.cut())


async def _run(settings: dict[str, Any]) -> None:
    pool = Pool(settings)
    loop = asyncio.get_running_loop()
    opening = loop.create_task(_open_all(pool, settings["rate"]))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        words = (await reader.readline()).decode().split()
        if not words or words[0] == "quit":
            break
        command = words[0]
        if command == "status":
            answer = pool.status(int(words[1]) if len(words) > 1 else 0)
        elif command == "blip":
            await _blip(pool, float(words[1]))
            answer = {"ok": True}
        elif command == "sample":  # tick latencies of unbroken clients from now
            pool.sample, pool.sample_from = True, now()
            answer = {"ok": True}
        elif command == "mark":
            pool.mark = now()
            pool.latencies = []
            for c in pool.clients:
                c.storm_owner = c.owner
                c.n_gaps = c.gaps = c.duplicates = 0
            answer = {"mark": pool.mark}
        elif command == "report":
            answer = pool.report()
        elif command == "baseline":  # the latencies sampled so far, then start afresh
            answer = {"latencies": pool.latencies}
            pool.latencies = []
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)
    opening.cancel()
    for client in pool.clients:
        client.drop()


def main() -> None:
    settings = json.loads(sys.argv[1])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    random.seed(settings.get("seed"))
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
