"""``--max-accept-rate``: the token bucket alone (a stepped clock), then over real sockets."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._serve import ROOT, server_env
from tests.server import test_http2
from tests.server._helpers import open_conn, read_response, serve
from tests.server.apps import hello
from tidings import _metrics
from tidings.server._admission import MAX_RETRY_AFTER, AcceptRate, refusal
from tidings.server.config import Config, ConfigError, Limits

tls_cert = test_http2.tls_cert  # the fixture: a self-signed certificate for 127.0.0.1

# -- the bucket -----------------------------------------------------------------------------


def test_a_full_bucket_takes_one_burst_then_refuses() -> None:
    bucket = AcceptRate(10, now=100.0)
    assert [bucket.admit(100.0) for _ in range(10)] == [0] * 10
    assert bucket.admit(100.0) > 0


def test_tokens_come_back_at_the_rate_and_never_above_the_burst() -> None:
    bucket = AcceptRate(10, now=0.0)
    for _ in range(10):
        bucket.admit(0.0)
    assert bucket.admit(0.05) > 0  # half a token
    assert bucket.admit(0.1) == 0  # 0.1 s: one token (the half and another half)
    # An hour idle fills the bucket to one burst, not to 36,000.
    admitted = [bucket.admit(3600.0) for _ in range(11)]
    assert admitted.count(0) == 10


def test_a_client_paced_under_the_rate_is_never_refused() -> None:
    bucket = AcceptRate(10, now=0.0)
    assert all(bucket.admit(i * 0.11) == 0 for i in range(1000))


def test_retry_after_spreads_the_refused_one_second_of_rate_each() -> None:
    bucket = AcceptRate(10, now=0.0)
    for _ in range(10):
        bucket.admit(0.0)
    waits = [bucket.admit(0.0) for _ in range(45)]
    # The next token comes in 0.1 s: from then on each second of the future is
    # promised to `rate` of them (9 fit in the first), never to all.
    assert waits[:9] == [1] * 9
    assert waits[9:19] == [2] * 10
    assert waits[-1] == 5
    assert waits == sorted(waits)


def test_retry_after_is_capped_and_bookings_stop_at_the_cap() -> None:
    bucket = AcceptRate(2, now=0.0)
    bucket.admit(0.0)
    bucket.admit(0.0)
    waits = [bucket.admit(0.0) for _ in range(100)]
    assert max(waits) == MAX_RETRY_AFTER
    assert waits[-50:] == [MAX_RETRY_AFTER] * 50
    # Later the bookings have passed: a refusal is told 1 s again.
    for _ in range(2):
        bucket.admit(11.0)
    assert bucket.admit(11.0) == 1


def test_the_refusal_is_a_503_with_retry_after_and_closes() -> None:
    head, _, body = refusal(3).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"retry-after: 3" in lines
    assert b"connection: close" in lines
    assert body == b"Server busy, try again later\n"


# -- configuration --------------------------------------------------------------------------


def test_the_default_limits_the_rate_and_zero_turns_it_off() -> None:
    assert Limits().max_accept_rate > 0
    assert Config(app="a:b", limits=Limits(max_accept_rate=0)).limits.max_accept_rate == 0
    with pytest.raises(ConfigError, match=r"^--max-accept-rate must be an integer from 0 "):
        Config(app="a:b", limits=Limits(max_accept_rate=-1))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5", "--max-accept-rate must be an integer from 0 to"),
        ("fast", "argument --max-accept-rate: invalid int value: 'fast'"),
    ],
)
def test_a_bad_value_stops_the_server_at_start_up_naming_the_flag(value: str, message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "a:b", "--max-accept-rate", value],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert message in run.stderr, run.stderr


# -- over real sockets ----------------------------------------------------------------------


@pytest.fixture
def metrics() -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


async def _get(port: int) -> tuple[int, str | None]:
    """One request on a new connection: its status and Retry-After."""
    reader, writer = await open_conn(port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        response = await read_response(reader)
        return response.status, response.header("retry-after")
    finally:
        writer.close()


async def test_a_burst_over_the_rate_gets_503s_with_retry_after(
    metrics: _metrics.Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tidings.error")
    async with serve(hello, limits=Limits(max_accept_rate=5)) as srv:
        answers = await asyncio.gather(*(_get(srv.port) for _ in range(30)))
        # The burst may take a little longer than an instant: a token or two may come back.
        ok = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] == 503]
        assert len(ok) + len(refused) == 30
        assert 5 <= len(ok) <= 8
        assert all(r is not None and 1 <= int(r) <= MAX_RETRY_AFTER for _, r in refused)
        assert metrics.limits["max_accept_rate"] == len(refused)
        assert srv.connections == 0
    messages = [r.getMessage() for r in caplog.records if "--max-accept-rate" in r.getMessage()]
    assert messages == ["connection refused: over 5 new connections a second (--max-accept-rate)"]


async def test_a_client_paced_under_the_rate_is_never_refused_over_sockets(
    metrics: _metrics.Metrics,
) -> None:
    # 40 connections, more than the burst of 20, at most 1 per 60 ms (under 20 a second):
    # a slow machine only spaces them further.
    async with serve(hello, limits=Limits(max_accept_rate=20)) as srv:
        statuses = []
        for _ in range(40):
            started = time.monotonic()
            statuses.append((await _get(srv.port))[0])
            await asyncio.sleep(max(0.0, 0.06 - (time.monotonic() - started)))
    assert statuses == [200] * 40
    assert metrics.limits["max_accept_rate"] == 0


async def test_keep_alive_requests_are_not_counted() -> None:
    async with serve(hello, limits=Limits(max_accept_rate=1)) as srv:
        reader, writer = await open_conn(srv.port)
        for _ in range(20):
            writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            assert (await read_response(reader)).status == 200
        assert (await _get(srv.port))[0] == 503  # a second connection is over the rate
        writer.close()


async def test_without_a_rate_a_burst_is_all_answered() -> None:
    async with serve(hello, limits=Limits(max_accept_rate=0)) as srv:
        assert srv.server.state is not None and srv.server.state.admission is None
        answers = await asyncio.gather(*(_get(srv.port) for _ in range(50)))
    assert {status for status, _ in answers} == {200}


async def test_an_http2_connection_over_tls_and_the_rate_gets_goaway(
    metrics: _metrics.Metrics, tls_cert: tuple[Path, Path]
) -> None:
    cert, key = tls_cert
    tls = ssl.create_default_context(cafile=str(cert))
    tls.set_alpn_protocols(["h2"])
    limits = Limits(max_accept_rate=1)
    async with serve(hello, ssl_certfile=str(cert), ssl_keyfile=str(key), limits=limits) as srv:
        first = await test_http2.H2Client.open(srv.port, tls=tls)
        second = await test_http2.H2Client.open(srv.port, tls=tls)
        try:
            await asyncio.wait_for(second.closed.wait(), 5)
            assert second.goaway is not None and first.goaway is None
            assert (await first.get("/")).body == b"Hello, world!"
            assert metrics.limits["max_accept_rate"] == 1
        finally:
            await first.aclose()
            await second.aclose()
