"""A flood of new connections against ``--max-accept-rate``.

The attacker opens connections as fast as it can, each sending a WebSocket handshake,
from several threads; the server must answer those over the rate with its ready-made
``503`` before the app sees them, stay within a bounded memory, and keep answering a
client that connected before the flood at its usual speed.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time

from tests.security.test_ws_fragments import echo_server, frame, read_frame, rss, ws_connect

MIB = 1024 * 1024
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_connection_flood_is_refused_cheaply_and_others_keep_their_latency() -> None:
    with echo_server("--max-accept-rate", "50") as (port, pid):
        victim = ws_connect(port)  # connected before the flood: never counted again
        stop = threading.Event()
        counts = {"refused": 0, "upgraded": 0, "other": 0}
        lock = threading.Lock()

        def attacker() -> None:
            deadline = time.monotonic() + 4
            while not stop.is_set() and time.monotonic() < deadline:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                try:
                    sock.sendall(HANDSHAKE)
                    answer = sock.recv(200)
                except OSError:
                    answer = b""
                finally:
                    sock.close()
                kind = (
                    "refused"
                    if answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: " in answer
                    else "upgraded"
                    if answer.startswith(b"HTTP/1.1 101 ")
                    else "other"
                )
                with lock:
                    counts[kind] += 1

        threads = [threading.Thread(target=attacker) for _ in range(3)]
        for thread in threads:
            thread.start()
        times = []
        try:
            time.sleep(0.3)
            before = rss(pid)
            for _ in range(60):
                start = time.perf_counter()
                victim.sendall(frame(0x1, b"ping"))
                assert read_frame(victim) == (0x1, b"ping")
                times.append(time.perf_counter() - start)
                time.sleep(0.03)
            grown = rss(pid) - before
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            victim.close()
    # The flood ran well past the rate (50 a second, bursts of 50): most was refused.
    assert counts["refused"] > 2 * counts["upgraded"], counts
    assert counts["upgraded"] <= 50 + 50 * 5, counts
    assert counts["other"] == 0, counts
    assert statistics.median(times) < 0.05, f"echo p50 {statistics.median(times) * 1e3:.1f} ms"
    assert grown < 20 * MIB, f"the server grew by {grown / MIB:.1f} MiB"
