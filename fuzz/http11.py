"""Fuzz target: arbitrary bytes, split at arbitrary points, into the HTTP/1.1 protocol.

Input layout: the first byte chooses how many split points follow (0-7), each one
byte; the rest is the byte stream a client sends. For every input the harness
checks that:

- ``data_received`` never raises, whatever the bytes and however they are split;
- the event loop's exception handler is never called (no task died unhandled);
- nothing was logged as an internal error;
- whatever the server wrote starts with an HTTP/1.1 status line, and never
  contains a Python traceback.

Run it coverage-guided with atheris (see fuzz/README.md), or without atheris::

    python fuzz/http11.py --selftest 2000
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tidings.server._http11 import HttpProtocol
from tidings.server._state import ServerState
from tidings.server.config import Config, Limits


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-n", b"1")]})
    await send({"type": "http.response.body", "body": body[:64], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, items: Any) -> None:
        for item in items:
            self.out += item

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Fail(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and "internal error" in record.getMessage():
            raise AssertionError(f"internal error logged: {record.getMessage()}")


_loop = asyncio.new_event_loop()
_errors: list[dict[str, Any]] = []
_loop.set_exception_handler(lambda loop, ctx: _errors.append(ctx))
_config = Config(
    app=_app, access_log=False, limits=Limits(max_header_size=4096, max_body_size=4096)
)
_log = logging.getLogger("tidings.error")
_log.addHandler(_Fail())
_log.propagate = False
_log.setLevel(logging.ERROR)


def _split(data: bytes) -> list[bytes]:
    if not data:
        return [b""]
    n = data[0] % 8
    points = sorted({p for p in data[1 : 1 + n]})
    stream = data[1 + n :]
    chunks, last = [], 0
    for p in points:
        cut = min(p, len(stream))
        chunks.append(stream[last:cut])
        last = cut
    chunks.append(stream[last:])
    return [c for c in chunks if c]


def _settle() -> None:
    for _ in range(4):
        _loop.run_until_complete(asyncio.sleep(0))


def test_one_input(data: bytes) -> None:
    state = ServerState(_config, _app, _loop)
    protocol = HttpProtocol(state)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for chunk in _split(data):
        protocol.data_received(chunk)
        _settle()
    protocol.connection_lost(None)
    _settle()
    pending = [t for t in state.tasks if not t.done()]
    if pending:
        _loop.run_until_complete(asyncio.wait(pending, timeout=1))
    out = bytes(transport.out)
    if out and not out.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"output does not start with a status line: {out[:80]!r}")
    if b"Traceback" in out:
        raise AssertionError("traceback sent to the client")
    if _errors:
        raise AssertionError(f"unhandled error in the loop: {_errors[0]}")


SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]


def _selftest(count: int) -> None:
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "1")))
    seeds = SEEDS
    for _ in range(count):
        base = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.randint(0, 6)):
            op = rng.randint(0, 3)
            pos = rng.randint(0, max(0, len(base) - 1))
            if op == 0 and base:
                base[pos] = rng.randint(0, 255)
            elif op == 1:
                base[pos:pos] = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 8)))
            elif op == 2 and base:
                del base[pos : pos + rng.randint(1, 8)]
            else:
                base[pos:pos] = rng.choice([b"\r\n", b":", b" ", b"\r", b"0\r\n\r\n", b"%"])
        head = bytes([rng.randint(0, 7)]) + bytes(rng.randint(0, 255) for _ in range(7))
        test_one_input(head + bytes(base))
    print(f"selftest: {count} inputs, no failure")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--selftest":
        _selftest(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    else:
        import atheris

        # The parser is C (llhttp), which atheris can't see into: start from
        # valid requests so mutations explore past the request line.
        corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
        if corpus is not None and corpus.is_dir() and not any(corpus.iterdir()):
            for i, seed in enumerate(SEEDS):
                (corpus / f"seed-{i}").write_bytes(b"\0" + seed)
        atheris.instrument_all()
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
