"""Client messages are acknowledged on the stream: ``{"cack": n}`` envelopes.

A message counts as acknowledged once the session's inbox has taken it: from then
on the consumer gets it exactly once, whatever happens to the connection. A
session WebSocket (and an SSE stream, while a POST is held) tells the client so
without waiting for the next connection's open envelope, batched: one envelope per
``CACK_EVERY`` messages or per ``CACK_DELAY``, no ``seq``, not kept for resume.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tidings.transports._inbox import CACK_DELAY, CACK_EVERY, INBOX_LIMIT

from . import apps
from ._client import is_cack, last_seq, messages, msg, send_items, session_ws, sse, texts, ws_next
from .conftest import Harness
from .test_remote import two
from .test_resume import until

ROOM = "/ws/echo/lobby/"
N = 120


def received() -> list[Any]:
    """What the consumers received, in order."""
    return [detail for event, _, detail in apps.EVENTS if event == "receive"]


async def test_websocket_client_gets_cacks_up_to_n_without_reconnecting(h: Harness) -> None:
    got: list[dict[str, Any]] = []
    cacks: list[int] = []
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        sid = (await ws_next(ws))["sid"]
        started = time.monotonic()
        for cseq in range(1, N + 1):
            await ws.send(json.dumps(msg(cseq, f"m{cseq}")))
        while not cacks or cacks[-1] < N:
            frame = await ws_next(ws, cacks=True)
            if is_cack(frame):
                cacks.append(frame["cack"])
            else:
                got.append(frame)
        elapsed = time.monotonic() - started
        while last_seq(got) < N:
            frame = await ws_next(ws, cacks=True)
            assert not is_cack(frame), (frame, cacks)  # nothing more to acknowledge
            got.append(frame)
        ws.transport.abort()
    assert cacks == sorted(set(cacks)) and cacks[-1] == N
    # Batched: one per CACK_EVERY messages or per CACK_DELAY, not one per message.
    assert len(cacks) <= N // CACK_EVERY + elapsed / CACK_DELAY + 1, (cacks, elapsed)
    # They take no seq: the consumer's messages are numbered 1..N without a hole.
    assert [m["seq"] for m in messages(got)] == list(range(1, N + 1))
    assert texts(got) == [f"m{i}" for i in range(1, N + 1)]
    assert received() == [f"m{i}" for i in range(1, N + 1)]
    # Not kept for resume: coming back from last=0 replays the N messages alone.
    async with session_ws(h.ws_url(ROOM, tidings="ws", sid=sid, last=0), h.origin) as ws:
        opened = await ws_next(ws, cacks=True)
        assert opened["resumed"] is True and opened["cack"] == N
        replay = [await ws_next(ws, cacks=True) for _ in range(N)]
    assert replay == messages(got)


async def test_drop_right_after_a_cack_then_resume_resends_nothing_acknowledged(
    h: Harness,
) -> None:
    total = 80
    outbox = {cseq: f"m{cseq}" for cseq in range(1, total + 1)}  # what a client keeps
    got: list[dict[str, Any]] = []
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        sid = (await ws_next(ws))["sid"]
        for cseq, text in outbox.items():
            await ws.send(json.dumps(msg(cseq, text)))
        while True:
            frame = await ws_next(ws, cacks=True)
            if is_cack(frame):
                break
            got.append(frame)
        ws.transport.abort()  # the network dies right after the acknowledgement
    acknowledged = frame["cack"]
    assert 1 <= acknowledged <= total
    outbox = {c: t for c, t in outbox.items() if c > acknowledged}
    url = h.ws_url(ROOM, tidings="ws", sid=sid, last=last_seq(got))
    async with session_ws(url, h.origin) as ws:
        opened = await ws_next(ws)
        assert opened["resumed"] is True and opened["cack"] >= acknowledged
        # The client resends only what neither acknowledgement covers.
        outbox = {c: t for c, t in outbox.items() if c > opened["cack"]}
        for cseq, text in [*outbox.items(), (total + 1, "end")]:
            await ws.send(json.dumps(msg(cseq, text)))
        while not got or got[-1].get("text") != "end":
            got.append(await ws_next(ws))
    expected = [f"m{i}" for i in range(1, total + 1)] + ["end"]
    assert texts(got) == expected
    assert received() == expected  # exactly once each, in order


@pytest.mark.usefixtures("django_db")
async def test_cacks_cross_processes_to_a_relayed_websocket() -> None:
    async with two() as (a, b):
        async with session_ws(a.ws_url(ROOM, tidings="ws"), a.origin) as ws:
            sid = (await ws_next(ws))["sid"]
            ws.transport.abort()
        # Resumed through B: A owns the session, B relays its stream.
        async with session_ws(b.ws_url(ROOM, tidings="ws", sid=sid), b.origin) as ws:
            assert (await ws_next(ws))["resumed"] is True
            for cseq in range(1, N + 1):
                await ws.send(json.dumps(msg(cseq, f"r{cseq}")))
            cacks: list[int] = []
            while not cacks or cacks[-1] < N:
                frame = await ws_next(ws, cacks=True)
                if is_cack(frame):
                    cacks.append(frame["cack"])
        assert b.sessions == 0 and a.sessions == 1
        assert cacks == sorted(set(cacks)) and len(cacks) < N // 4
        await until(lambda: len(received()) == N)
        assert received() == [f"r{i}" for i in range(1, N + 1)]


async def test_a_post_never_waits_for_a_busy_consumer(h: Harness) -> None:
    """A POST takes what fits in the inbox and answers at once; a full inbox is 429."""
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        sid = (await stream.next())["sid"]
        send = h.url(ROOM, tidings="send", sid=sid)
        response = await send_items(h.client, send, [msg(1, "a")], h.origin)
        assert response.json() == {"cack": 1}
        assert (await stream.next(cacks=True))["text"] == "a"
        # "count 1 1" keeps the consumer busy for a second: the inbox fills up and
        # the POST is answered at once with what was taken; the client resends the
        # rest from cack + 1.
        total = INBOX_LIMIT + 8
        items = [msg(2, "count 1 1")] + [msg(c, f"x{c}") for c in range(3, total + 1)]
        started = time.monotonic()
        response = await send_items(h.client, send, items, h.origin)
        taken = response.json()["cack"]
        assert 2 <= taken < total
        for _ in range(3):  # the consumer took "count 1 1": there may be room for one
            refused = await send_items(h.client, send, items[taken - 1 :], h.origin)
            if refused.status_code != 200:
                break
            assert refused.json()["cack"] <= taken + 1
            taken = refused.json()["cack"]
        assert time.monotonic() - started < 0.5  # none waited for the consumer
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        got = [await stream.next(cacks=True)]
        while got[-1].get("text") != f"x{taken}":
            got.append(await stream.next(cacks=True))
        response = await send_items(h.client, send, items[taken - 1 :], h.origin)
        assert response.json() == {"cack": total}
        while got[-1].get("text") != f"x{total}":
            got.append(await stream.next(cacks=True))
    assert texts(got) == ["0"] + [f"x{c}" for c in range(3, total + 1)]
    assert not [e for e in got if is_cack(e)]  # every POST told its cack itself
    assert received() == ["a", "count 1 1"] + [f"x{c}" for c in range(3, total + 1)]


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_no_cack_envelopes_without_a_reason(h: Harness, transport: str) -> None:
    # Long-polling never gets them (a held poll is not answered for that), and the
    # open envelope of a new connection tells cack: nothing is due after it.
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        sid = (await ws_next(ws))["sid"]
        await ws.send(json.dumps(msg(1, "a")))
        assert (await ws_next(ws))["text"] == "a"
        ws.transport.abort()  # (most likely) before the cack of 1 is due
    await until(lambda: received() == ["a"])
    if transport == "sse":
        async with sse(h.client, h.url(ROOM, tidings="sse", sid=sid)) as stream:
            opened = await stream.next(cacks=True)
            assert opened["cack"] == 1
            assert await stream.next(cacks=True) == {"seq": 1, "text": "a"}
            await asyncio.sleep(2 * CACK_DELAY)
            send = h.url(ROOM, tidings="send", sid=sid)
            await send_items(h.client, send, [msg(2, "b")], h.origin)
            assert await stream.next(cacks=True) == {"seq": 2, "text": "b"}
    else:
        response = await h.client.get(h.url(ROOM, tidings="poll", sid=sid))
        batch = response.json()
        assert batch[0]["cack"] == 1 and batch[1:] == [{"seq": 1, "text": "a"}]
