"""Attacks on WebSocket message assembly, against a real ``tidings serve`` process.

H2 of the hardening issue: a message of endless empty continuation frames grew memory
without bound and stalled the worker for every other client; a 1 MiB message in 1-byte
fragments held about 40 MiB. Each test drives the attack over a real socket on
127.0.0.1 and asserts what the server answers, its resident memory (from /proc), and,
where latency is the harm, a well-behaved client's echo time during the attack.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.security._serve import ROOT, tidings_serve
from tests.server._helpers import free_port

ECHO_DIR = ROOT / "compliance" / "autobahn"  # echo_app:app echoes every message
MASK = b"\x11\x22\x33\x44"
MIB = 1024 * 1024


@contextmanager
def echo_server(*flags: str) -> Iterator[tuple[int, int]]:
    """``tidings serve echo_app:app`` in a process of its own: yields (port, pid)."""
    port = free_port()
    args = ["echo_app:app", "--app-dir", str(ECHO_DIR), "--port", str(port)]
    args += ["--lifespan", "off", "--no-access-log", *flags]
    with tempfile.TemporaryDirectory() as tmp, tidings_serve(args, Path(tmp) / "log") as proc:
        yield port, proc.pid


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def ws_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    b0, b1 = exactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exactly(8))
    return b0 & 0x0F, exactly(n)


def close_code_after_flood(sock: socket.socket, chunk: bytes, limit: int) -> int | None:
    """Send ``chunk`` until the server answers with a close frame (its code) or ``limit``.

    Sends are blocking and whole (a partial send would corrupt the framing); between
    them, ``select`` looks for the server's answer without waiting.
    """
    received = b""
    sent = 0
    while sent < limit and not received:
        try:
            sock.sendall(chunk)
        except OSError:
            break  # the server closed; its close frame may still be readable
        sent += len(chunk)
        if select.select([sock], [], [], 0)[0]:
            received = sock.recv(4096)
    try:
        while len(received) < 4:
            more = sock.recv(4096)
            if not more:
                break
            received += more
    except OSError:
        pass
    if len(received) >= 4 and received[0] & 0x0F == 0x8:
        code: int = struct.unpack("!H", received[2:4])[0]
        return code
    return None


def test_endless_empty_continuation_frames_are_closed_with_1009() -> None:
    with echo_server() as (port, pid):
        before = rss(pid)
        sock = ws_connect(port)
        sock.sendall(frame(0x2, b"", fin=False))
        # Far more empty fragments than the cap; the server must stop it long before.
        code = close_code_after_flood(sock, frame(0x0, b"", fin=False) * 2000, 64 * MIB)
        sock.close()
        assert code == 1009
        assert rss(pid) - before < 50 * MIB


def test_one_byte_fragments_hold_their_payload_not_40_mib() -> None:
    """With the fragment cap lifted, a 1 MiB message in 1-byte fragments still costs ~1 MiB."""
    with echo_server("--ws-max-fragments", str(2 * MIB)) as (port, pid):
        sock = ws_connect(port)
        sock.sendall(frame(0x2, b"x", fin=False))
        before = rss(pid)
        one = frame(0x0, b"x", fin=False)
        batch = one * 8192
        for _ in range(MIB // 8192 - 1):
            sock.sendall(batch)
        sock.sendall(one * 8190 + frame(0x0, b"x"))  # 1 MiB in all, with the first
        opcode, payload = read_frame(sock)
        grown = rss(pid) - before
        sock.close()
        assert (opcode, len(payload)) == (0x2, MIB)
        assert grown < 16 * MIB, f"the server grew by {grown / MIB:.1f} MiB"


def test_others_keep_their_latency_during_a_fragment_flood() -> None:
    with echo_server() as (port, pid):
        stop = threading.Event()
        floods = 0

        def attacker() -> None:
            nonlocal floods
            chunk = frame(0x0, b"", fin=False) * 2000
            deadline = time.monotonic() + 4
            while not stop.is_set() and time.monotonic() < deadline:
                sock = ws_connect(port)
                sock.sendall(frame(0x2, b"", fin=False))
                close_code_after_flood(sock, chunk, 64 * MIB)
                sock.close()
                floods += 1

        victim = ws_connect(port)
        threads = [threading.Thread(target=attacker) for _ in range(2)]
        for thread in threads:
            thread.start()
        times = []
        try:
            time.sleep(0.2)
            before = rss(pid)
            for _ in range(60):
                start = time.perf_counter()
                victim.sendall(frame(0x1, b"ping"))
                assert read_frame(victim) == (0x1, b"ping")
                times.append(time.perf_counter() - start)
                time.sleep(0.02)
            grown = rss(pid) - before
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            victim.close()
        assert floods >= 2
        assert statistics.median(times) < 0.05, f"echo p50 {statistics.median(times) * 1e3:.1f} ms"
        assert grown < 50 * MIB


@pytest.mark.parametrize("fragments", [1, 2, 4096])
def test_messages_within_the_cap_arrive_whole(fragments: int) -> None:
    with echo_server() as (port, _):
        sock = ws_connect(port)
        parts = [
            frame(0x1 if i == 0 else 0x0, b"ab", fin=i == fragments - 1) for i in range(fragments)
        ]
        sock.sendall(b"".join(parts))
        assert read_frame(sock) == (0x1, b"ab" * fragments)
        sock.close()
