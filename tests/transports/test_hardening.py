"""Unit tests of the defences against hostile clients (issue 13), without a server.

The attacks themselves, over real sockets, are in ``tests/security/test_transports.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from tidings.transports import _request as request
from tidings.transports._inbox import INBOX_BYTES, INBOX_LIMIT, Inbox, InboxFull
from tidings.transports._limiter import MAX_CLIENTS, OpenLimiter, client_address
from tidings.transports._manager import make_sid, parse_sid
from tidings.transports._protocol import ClientMessage, ProtocolError, parse_frame, parse_post_body

from ._client import poll, sse
from .conftest import harness

ROOM = "/ws/echo/lobby/"
PORT = "tidings-sessions.abc!def"
TOKEN = "A" * 32

# -- signed session ids -------------------------------------------------------------------


def test_session_ids_are_signed_with_the_secret_key() -> None:
    sid = make_sid(TOKEN, PORT)
    assert parse_sid(sid) == (TOKEN, PORT)
    token, mac, port = sid.split(".", 2)
    assert len(mac) == 22
    for forged in (
        f"{TOKEN}.{PORT}",  # unsigned (the old format)
        f"{'B' * 32}.{mac}.{port}",  # another token
        f"{token}.{mac}.tidings-sessions.other!x",  # another channel
        f"{token}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}.{port}",  # one character off
        sid + "x" * 200,  # too long
    ):
        assert parse_sid(forged) is None, forged
    with override_settings(SECRET_KEY="another deployment"):
        assert parse_sid(sid) is None
        assert parse_sid(make_sid(TOKEN, PORT)) == (TOKEN, PORT)


# -- the browser key ----------------------------------------------------------------------


def test_browser_cookie_attributes() -> None:
    key = request.new_browser_key()
    name, value = request.browser_cookie({"path": "/ws/chat/a;b c/", "scheme": "https"}, key)
    assert name == b"set-cookie"
    assert value.decode() == (
        f"tidings_bk={key}; Path=/ws/chat/a%3Bb%20c/; HttpOnly; SameSite=Lax; Secure"
    )
    _, plain = request.browser_cookie({"path": "/ws/", "scheme": "ws"}, key)
    assert not plain.endswith(b"Secure")


def test_browser_key_and_owners() -> None:
    key = request.new_browser_key()
    scope = {"headers": [(b"cookie", f"a=1; tidings_bk={key}".encode())]}
    assert request.browser_key(scope) == key
    for bad in ("short", "x" * 33, "!" * 32):
        assert request.browser_key({"headers": [(b"cookie", f"tidings_bk={bad}".encode())]}) is None
    assert request.browser_key({"headers": []}) is None
    owner = request.owner_key(None, key)
    assert owner is not None and request.is_anonymous(owner) and key not in owner
    assert request.owner_key("7", key) == "7" and not request.is_anonymous("7")
    assert request.owner_key(None, None) is None


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),
        ({b"cookie": b"a=1"}, True),
        ({b"cookie": b"a=1", b"x-tidings": b"1"}, False),
        ({b"cookie": b"a=1", b"sec-fetch-site": b"same-origin"}, False),
        ({b"sec-fetch-site": b"cross-site"}, True),
        ({b"cookie": b"a=1", b"origin": b"http://x"}, False),  # the validator decides
    ],
)
def test_requests_without_origin(headers: dict[bytes, bytes], refused: bool) -> None:
    scope = {"type": "http", "headers": list(headers.items())}
    assert request.cross_site_without_origin(scope) is refused


# -- text a WebSocket cannot carry --------------------------------------------------------


@pytest.mark.parametrize("escaped", ["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])
def test_lone_surrogates_are_not_protocol_v1(escaped: str) -> None:
    item = '{"cseq": 1, "text": "' + escaped + '"}'
    with pytest.raises(ProtocolError, match="not valid Unicode"):
        parse_post_body(f"[{item}]".encode())
    with pytest.raises(ProtocolError, match="not valid Unicode"):
        parse_frame(item)
    pair = parse_frame('{"cseq": 1, "text": "\\ud83d\\ude00"}')  # a pair is one character
    assert pair.messages[0].text == "\U0001f600"


# -- the inbox's caps ---------------------------------------------------------------------


async def test_inbox_caps_pending_messages_by_count_and_bytes() -> None:
    inbox = Inbox(lambda: None)
    small = [ClientMessage(c, text="x") for c in range(1, INBOX_LIMIT + 5)]
    assert await inbox.push(small, wait=False) == INBOX_LIMIT  # the rest is not taken
    with pytest.raises(InboxFull):
        await inbox.push(small, wait=False)
    assert inbox.full()
    await inbox.get()
    assert await inbox.push(small, wait=False) == INBOX_LIMIT + 1
    # Duplicates only: nothing new to take, so not "full".
    assert await inbox.push(small[:3], wait=False) == INBOX_LIMIT + 1

    inbox = Inbox(lambda: None)
    half = "y" * (INBOX_BYTES // 2)
    big = [ClientMessage(c, text=half) for c in range(1, 5)]
    assert await inbox.push(big, wait=False) == 2
    with pytest.raises(InboxFull):
        await inbox.push(big, wait=False)
    await inbox.get()
    await inbox.get()
    # One message larger than the cap still gets in when nothing waits.
    huge = ClientMessage(3, text="z" * (INBOX_BYTES + 1))
    assert await inbox.push([huge], wait=False) == 3
    # A push that may wait does, until the consumer makes room.
    waiting = asyncio.ensure_future(inbox.push([ClientMessage(4, text=half)]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    with pytest.raises(InboxFull):  # and a POST meanwhile does not queue behind it
        await inbox.push([ClientMessage(4, text="x")], wait=False)
    await inbox.get()
    assert await asyncio.wait_for(waiting, 1) == 4


# -- opening rate per client --------------------------------------------------------------


def test_client_addresses() -> None:
    assert client_address(("203.0.113.7", 5000)) == "203.0.113.7"
    assert client_address(["2001:db8:1:2:3:4:5:6", 1]) == "2001:db8:1:2::/64"
    assert client_address(("2001:db8:1:2:ffff::1", 1)) == "2001:db8:1:2::/64"
    assert client_address(("::ffff:203.0.113.7", 1)) == "203.0.113.7"
    assert client_address(("unix-peer", 0)) == "unix-peer"
    assert client_address(None) is None


def test_open_limiter_is_a_token_bucket_per_client() -> None:
    limiter = OpenLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another client has its own bucket
    assert not limiter.allow("a", 0.2)
    assert limiter.allow("a", 0.5)  # one token back after 1/rate seconds
    assert limiter.allow(None, 0.0)  # unknown peers are not limited
    assert limiter.retry_after() == 1
    assert OpenLimiter(rate=0.1, burst=1).retry_after() == 10


def test_open_limiter_table_is_bounded() -> None:
    limiter = OpenLimiter(rate=1.0, burst=1)
    for index in range(MAX_CLIENTS + 10):
        limiter.allow(f"c{index}", 0.0)
    assert len(limiter._buckets) == MAX_CLIENTS


# -- claiming a new session ---------------------------------------------------------------


@pytest.mark.usefixtures("django_db")
async def test_unclaimed_sessions_expire_after_claim_window() -> None:
    async with harness(claim_window=0.3, resume_window=5, poll_hold=0.1) as h:
        # Opened by a poll and never polled again: gone after claim_window.
        abandoned = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
        # Polled again: claimed, the resume window applies.
        claimed = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
        assert (await poll(h.client, h.url(ROOM, tidings="poll", sid=claimed)))[0]["resumed"]
        # An opening SSE stream that lasted claim_window claims its session too.
        async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
            streamed = (await stream.next())["sid"]
            await asyncio.sleep(0.4)
        await asyncio.sleep(0.5)
        assert (await poll(h.client, h.url(ROOM, tidings="poll", sid=claimed)))[0]["resumed"]
        assert (await poll(h.client, h.url(ROOM, tidings="poll", sid=streamed)))[0]["resumed"]
        again = await poll(h.client, h.url(ROOM, tidings="poll", sid=abandoned))
        assert again[0]["resumed"] is False
