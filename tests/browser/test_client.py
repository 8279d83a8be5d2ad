"""tidings.js in headless Chromium against ``tidings serve`` (issue 6's browser tests).

The test project (``tests/browser/project``) routes ordinary consumers through
``TransportRouter``; its pages import ``/static/tidings/tidings.js`` from the
``tidings`` app's static files. One server and two browsers serve the whole module,
except the multi-worker test, which starts its own ``tidings serve --workers 2``
with the Redis layer.

- chat round trip over each transport forced in turn (two browsers);
- WebSocket refused by the server: the client lands on SSE by itself;
- connections cut mid-stream by a proxy (:class:`~tests.browser.harness.CuttingProxy`)
  while the server sends 1,000 numbered messages and the page sends 100: every
  message arrives exactly once, in order, and the consumer never sees a reconnect;
- a session whose requests land on both workers keeps working (the access log
  names the worker of each request);
- the session ends on close(), on the consumer's close, on a refusal (403); a forged
  session id gets a new session and "continuitylost";
- the server acknowledges client messages on a long-lived WebSocket (``{"cack": n}``),
  so the outbox drains without a reconnection and "continuitylost" lists only what
  was not acknowledged.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import (
    BrowserFactory,
    CuttingProxy,
    ServerProcess,
    poll,
    serving,
    wait_js,
)

pytestmark = pytest.mark.browser

APP = "tests.browser.project.asgi:application"
SETTINGS = "tests.browser.project.settings"
SUMMARY = "return window.summary()"

# Quick retries: the proxy cuts connections every fraction of a second.
FAST = {"backoff": {"initial": 50, "max": 250}, "openTimeout": 3000}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("browser") / "server.log"
    with serving(APP, settings=SETTINGS, log=log) as running:
        yield running


@pytest.fixture(scope="module")
def browsers() -> Iterator[BrowserFactory]:
    factory = BrowserFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def pair(browsers: BrowserFactory) -> tuple[WebDriver, WebDriver]:
    """Two independent browsers (two cookie jars), shared by the module's tests."""
    return browsers(), browsers()


@pytest.fixture
def alice(pair: tuple[WebDriver, WebDriver]) -> Iterator[WebDriver]:
    yield pair[0]
    pair[0].get("about:blank")  # leaving the page closes its session


@pytest.fixture
def bob(pair: tuple[WebDriver, WebDriver]) -> Iterator[WebDriver]:
    yield pair[1]
    pair[1].get("about:blank")


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[CuttingProxy]:
    cutting = CuttingProxy(server.port)
    try:
        yield cutting
    finally:
        cutting.close()


def open_harness(driver: WebDriver, base: str, url: str, options: dict[str, Any]) -> None:
    """Load the harness page from ``base`` and connect to ``url``; wait until open."""
    driver.get(f"{base}/static/browser/harness.html")
    wait_js(driver, "return window.harnessReady === true", message="harness page loaded")
    driver.execute_script("window.start(arguments[0], arguments[1])", url, options)
    wait_js(
        driver,
        "return window.conn.state === 'open'",
        message="connection open",
        describe=SUMMARY,
    )


def report(driver: WebDriver, timeout: float = 10) -> dict[str, Any]:
    """Ask the stream consumer for its report and return it."""
    count = driver.execute_script("return window.conn.record.reports.length")
    driver.execute_script("window.conn.sendJSON({cmd: 'report'})")
    wait_js(
        driver,
        "return window.conn.record.reports.length > arguments[0]",
        count,
        timeout=timeout,
        message="report",
        describe=SUMMARY,
    )
    result: dict[str, Any] = driver.execute_script("return window.conn.record.reports.at(-1)")
    return result


def chat_page(driver: WebDriver, base: str, **query: str) -> None:
    driver.get(f"{base}/static/browser/chat.html?" + "&".join(f"{k}={v}" for k, v in query.items()))
    wait_js(
        driver,
        "return window.conn && window.conn.state === 'open' && window.hello",
        message="chat connected",
        describe="return window.chatEvents",
    )


def say(driver: WebDriver, text: str) -> None:
    driver.find_element(By.ID, "text").send_keys(text)
    driver.find_element(By.ID, "send").click()


def wait_for_line(driver: WebDriver, line: str) -> None:
    wait_js(
        driver,
        "return [...document.querySelectorAll('#messages li')]"
        ".some((li) => li.textContent === arguments[0])",
        line,
        message=f"chat line {line!r}",
        describe="return document.getElementById('messages').textContent",
    )


# --- (a) chat over each transport -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_chat_round_trip_over_each_transport(
    server: ServerProcess, alice: WebDriver, bob: WebDriver, transport: str
) -> None:
    room = f"r{uuid.uuid4().hex[:8]}"
    chat_page(alice, server.url, room=room, name="alice", transport=transport)
    chat_page(bob, server.url, room=room, name="bob", transport=transport)
    for driver in (alice, bob):
        assert driver.execute_script("return window.conn.transport") == transport
        # The consumer's scope names the transport the session came in on.
        assert driver.execute_script("return window.hello.transport") == transport

    say(alice, "hello from alice")
    wait_for_line(bob, "alice: hello from alice")
    say(bob, "hi alice, bob here")
    wait_for_line(alice, "bob: hi alice, bob here")
    wait_for_line(bob, "bob: hi alice, bob here")  # the sender is in the room too
    for driver in (alice, bob):
        events = driver.execute_script("return window.chatEvents.map((e) => e.type)")
        assert events == ["transport", "open"], events


# --- (b) WebSocket refused ------------------------------------------------------------------------


def test_websocket_refused_lands_on_sse(server: ServerProcess, alice: WebDriver) -> None:
    room = f"r{uuid.uuid4().hex[:8]}"
    chat_page(alice, server.url, room=room, name="alice", prefix="/ws/nows/chat/")
    assert alice.execute_script("return window.conn.transport") == "sse"
    assert alice.execute_script("return window.hello.transport") == "sse"
    # WebSocket was tried first and failed; SSE was the first transport to open.
    assert alice.execute_script("return window.conn.stats.openFailures") >= 1
    events = alice.execute_script("return window.chatEvents")
    assert [e["type"] for e in events] == ["transport", "open"]
    assert events[0]["detail"] == {"transport": "sse", "previous": None}
    say(alice, "over sse")
    wait_for_line(alice, "alice: over sse")


def test_websocket_killed_after_opening_is_demoted(proxy: CuttingProxy, alice: WebDriver) -> None:
    # A proxy lets each session WebSocket open, then kills it: after maxEarlyDeaths
    # (3) early deaths in a row the client moves to SSE and stays there.
    proxy.kill_matching(b"tidings=ws", 0.3)
    tag = uuid.uuid4().hex
    open_harness(alice, proxy.url, f"/ws/stream/?tag={tag}", {"backoff": FAST["backoff"]})
    assert alice.execute_script("return window.conn.transport") == "websocket"
    wait_js(
        alice,
        "return window.conn.transport === 'sse'",
        message="demoted to SSE",
        describe=SUMMARY,
    )
    events = alice.execute_script("return window.conn.record.events")
    opens = [e["detail"]["transport"] for e in events if e["type"] == "open"]
    assert opens == ["websocket"] * 3 + ["sse"]
    resumed = [e["detail"]["resumed"] for e in events if e["type"] == "open"]
    assert resumed == [False, True, True, True]
    alice.execute_script("window.conn.sendJSON({cmd: 'note', i: 7})")
    got = report(alice)
    assert got["notes"] == [7]
    assert (got["connects"], got["disconnects"]) == (1, 0)  # one session throughout


def test_a_demoted_websocket_is_tried_again_after_demote_for(
    proxy: CuttingProxy, alice: WebDriver
) -> None:
    # Demoted to SSE (as above), the WebSocket gets another chance at the first
    # reconnection after demoteFor: by then the trouble (a restart storm's refusals,
    # say) may be over.
    proxy.kill_matching(b"tidings=ws", 0.3)
    tag = uuid.uuid4().hex
    options = {"backoff": FAST["backoff"], "demoteFor": 1500}
    open_harness(alice, proxy.url, f"/ws/stream/?tag={tag}", options)
    wait_js(
        alice,
        "return window.conn.transport === 'sse'",
        message="demoted to SSE",
        describe=SUMMARY,
    )
    proxy.kill_rule = None  # WebSockets get through again
    time.sleep(1.6)  # past demoteFor
    proxy.cut_all()  # the SSE stream drops after a healthy life: reconnect
    wait_js(
        alice,
        "return window.conn.transport === 'websocket' && window.conn.state === 'open'",
        message="back on WebSocket",
        describe=SUMMARY,
    )
    events = alice.execute_script("return window.conn.record.events")
    opens = [e["detail"]["transport"] for e in events if e["type"] == "open"]
    assert opens == ["websocket"] * 3 + ["sse", "websocket"]
    resumed = [e["detail"]["resumed"] for e in events if e["type"] == "open"]
    assert resumed == [False, True, True, True, True]  # one session throughout


def test_a_websocket_to_a_host_that_vanished_is_given_up_after_idle_timeout(
    tmp_path: Path, alice: WebDriver
) -> None:
    # A session WebSocket gets a {} heartbeat frame after sse_heartbeat of silence, so
    # a quiet session outlives idleTimeout; when the host vanishes without closing (the
    # proxy swallows everything), the frames stop and the client reconnects.
    env = {"TIDINGS_BROWSER_TRANSPORT_SETTINGS": '{"sse_heartbeat": 0.3}'}
    with serving(APP, settings=SETTINGS, log=tmp_path / "server.log", env=env) as server:
        proxy = CuttingProxy(server.port)
        try:
            tag = uuid.uuid4().hex
            options = {"transports": ["websocket"], "idleTimeout": 1200, "backoff": {"initial": 50}}
            open_harness(alice, proxy.url, f"/ws/stream/?tag={tag}", options)
            time.sleep(2.5)  # quiet for twice idleTimeout: the heartbeats keep it up
            events = alice.execute_script("return window.conn.record.events")
            assert [e["type"] for e in events if e["type"] != "transport"] == ["open"]
            proxy.frozen = True
            wait_js(
                alice,
                "return window.conn.record.events.some((e) => e.type === 'reconnecting')",
                timeout=5,
                message="the silent WebSocket given up",
                describe=SUMMARY,
            )
            events = alice.execute_script("return window.conn.record.events")
            (gone,) = [e["detail"] for e in events if e["type"] == "reconnecting"][:1]
            assert gone["reason"] == "idle timeout", gone
            proxy.frozen = False
            wait_js(
                alice,
                "return window.conn.state === 'open' && "
                "window.conn.record.events.filter((e) => e.type === 'open').length === 2",
                message="back through the thawed proxy",
                describe=SUMMARY,
            )
            opens = [
                e["detail"]
                for e in alice.execute_script("return window.conn.record.events")
                if e["type"] == "open"
            ]
            assert [o["resumed"] for o in opens] == [False, True]
        finally:
            proxy.close()


# --- (c) connections cut mid-stream ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_cut_connections_lose_and_repeat_nothing(
    proxy: CuttingProxy, alice: WebDriver, transport: str
) -> None:
    tag = uuid.uuid4().hex
    options = {**FAST, "transports": [transport]}
    open_harness(alice, proxy.url, f"/ws/stream/?tag={tag}", options)

    # Bytes both ways (base64 in the envelopes), before the trouble starts.
    alice.execute_script("window.conn.send(new Uint8Array([1, 2, 3, 250]))")
    wait_js(alice, "return window.conn.record.bytes.length === 1", message="bytes echo")
    assert alice.execute_script("return window.conn.record.bytes[0]") == [250, 3, 2, 1]

    proxy.start_cutting()
    alice.execute_script(
        "window.conn.sendJSON({cmd: 'stream', n: 1000, every: 10, pause: 0.01});"
        "window.sendNotes(100, 15);"
    )
    wait_js(
        alice,
        "return window.conn.record.numbers.length >= 1000",
        timeout=40,
        message="1,000 numbered messages",
        describe=SUMMARY,
    )
    proxy.stop_cutting()
    numbers = alice.execute_script("return window.conn.record.numbers")
    assert numbers == list(range(1, 1001))

    got = report(alice)
    # Every note once, in order, to one consumer instance that never saw a reconnect.
    assert got["notes"] == list(range(1, 101))
    assert (got["connects"], got["disconnects"]) == (1, 0)
    summary = alice.execute_script(SUMMARY)
    assert summary["state"] == "open"
    assert summary["transport"] == transport
    assert not [e for e in summary["events"] if e["type"] == "continuitylost"]
    # The test did cut: connections were aborted and the client came back each time.
    assert proxy.cuts >= 3, proxy.cuts
    assert summary["stats"]["reconnects"] >= 3, summary


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_acknowledgements_free_the_resume_buffer(
    server: ServerProcess, alice: WebDriver, transport: str
) -> None:
    # 1,500 messages on one connection: past the 1,000 the server buffers until acked.
    open_harness(alice, server.url, "/ws/stream/", {"transports": [transport]})
    alice.execute_script("window.conn.sendJSON({cmd: 'stream', n: 1500, every: 20, pause: 0.01})")
    wait_js(
        alice,
        "return window.conn.record.numbers.length >= 1500 || window.conn.state !== 'open'",
        timeout=20,
        describe=SUMMARY,
    )
    summary = alice.execute_script(SUMMARY)
    got = (summary["state"], summary["numbers"], summary["lastNumber"])
    assert got == ("open", 1500, 1500), summary["events"]
    assert summary["stats"]["reconnects"] == 0


# --- (d) resume across workers --------------------------------------------------------------------

_ACCESS = re.compile(r"\[(\d+)\] INFO tidings\.access: .*\"(?:GET|POST) (\S+) HTTP/1\.1\"")


def pids_serving(log: str, sid: str) -> set[int]:
    """PIDs of the workers that answered a request of session ``sid``.

    The access log shows a session id shortened to its first 6 characters.
    """
    assert sid not in log, "a whole session id reached the access log"
    pids = set()
    for match in _ACCESS.finditer(log):
        query = parse_qs(urlsplit(match.group(2)).query)
        if query.get("sid") == [sid[:6] + "..."]:
            pids.add(int(match.group(1)))
    return pids


@pytest.mark.parametrize("transport", ["longpoll", "sse"])
def test_session_spans_two_workers(
    tmp_path: Path, browsers: BrowserFactory, redis_url: str, transport: str
) -> None:
    env = {
        "TIDINGS_TEST_REDIS_URL": redis_url,
        "TIDINGS_BROWSER_LAYER_PREFIX": f"tb{uuid.uuid4().hex[:10]}",
    }
    args = ["--workers", "2", "--access-log"]
    log = tmp_path / "server.log"
    settings = "tests.browser.project.settings_redis"
    with serving(APP, settings=settings, log=log, args=args, env=env) as server:
        proxy = CuttingProxy(server.port, cut_bytes=(4000, 20000), cut_after=(0.15, 0.5))
        try:
            driver = browsers()
            tag = uuid.uuid4().hex
            options = {**FAST, "transports": [transport]}
            open_harness(driver, proxy.url, f"/ws/stream/?tag={tag}", options)
            owner = driver.execute_script("return window.conn.record.hello[0].pid")
            sid = driver.execute_script("return window.conn.sessionId")
            # New connections (the proxy keeps cutting them) land on either worker;
            # stream until a request of the session was served by the other one.
            proxy.start_cutting()
            total = 0
            deadline = time.monotonic() + 20
            while True:
                total += 200
                driver.execute_script(
                    "window.conn.sendJSON({cmd: 'stream', n: 200, every: 10, pause: 0.02});"
                    "window.sendNotes(20, 20);"
                )
                wait_js(
                    driver,
                    "return window.conn.record.numbers.length >= arguments[0]",
                    total,
                    timeout=30,
                    message=f"{total} numbered messages",
                    describe=SUMMARY,
                )
                served = pids_serving(server.output, sid)
                if served - {owner} or time.monotonic() > deadline:
                    break
            proxy.stop_cutting()
            assert served - {owner}, f"owner {owner}, requests served by {served}"
            numbers = driver.execute_script("return window.conn.record.numbers")
            rounds = total // 200
            assert numbers == [i for _ in range(rounds) for i in range(1, 201)]
            got = report(driver)
            assert got["pid"] == owner
            assert got["notes"] == [i for _ in range(rounds) for i in range(1, 21)]
            assert (got["connects"], got["disconnects"]) == (1, 0)
            assert driver.execute_script("return window.conn.sessionId") == sid
        finally:
            proxy.close()


# --- how sessions end -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_close_ends_the_session(server: ServerProcess, alice: WebDriver, transport: str) -> None:
    tag = uuid.uuid4().hex
    url = f"/ws/stream/?tag={tag}"
    open_harness(alice, server.url, url, {"transports": [transport]})
    alice.execute_script("window.conn.close()")
    assert alice.execute_script("return window.conn.state") == "closed"
    close = alice.execute_script("return window.conn.record.events.at(-1)")
    assert (close["type"], close["code"]) == ("close", 1000)
    # A new session with the same tag reports on the consumer of the first one.
    alice.execute_script("window.start(arguments[0], arguments[1])", url, {})
    wait_js(alice, "return window.conn.state === 'open'", describe=SUMMARY)

    def disconnected() -> bool:
        return bool(report(alice)["disconnects"] == 1)

    poll(disconnected, message="the first consumer got disconnect")


def test_consumer_close_ends_the_session(server: ServerProcess, alice: WebDriver) -> None:
    open_harness(alice, server.url, "/ws/stream/", {})
    alice.execute_script("window.conn.sendJSON({cmd: 'close', code: 4321})")
    wait_js(alice, "return window.conn.state === 'closed'", describe=SUMMARY)
    close = alice.execute_script("return window.conn.record.events.at(-1)")
    assert (close["type"], close["code"]) == ("close", 4321)
    assert alice.execute_script("return window.conn.sessionId") is None


def test_refusal_closes_with_403(server: ServerProcess, alice: WebDriver) -> None:
    alice.get(f"{server.url}/static/browser/harness.html")
    wait_js(alice, "return window.harnessReady === true")
    alice.execute_script("window.start('/ws/refuse/', {})")
    wait_js(alice, "return window.conn.state === 'closed'", describe=SUMMARY)
    events = alice.execute_script("return window.conn.record.events")
    assert [e["type"] for e in events] == ["close"]
    assert events[0]["code"] == 403


def test_forged_session_id_loses_continuity(proxy: CuttingProxy, alice: WebDriver) -> None:
    open_harness(alice, proxy.url, "/ws/stream/", {**FAST, "transports": ["websocket"]})
    first = alice.execute_script("return window.conn.sessionId")
    alice.execute_script("window.conn.sendJSON({cmd: 'note', i: 1})")
    assert report(alice)["notes"] == [1]
    # The client resumes with a session id that the server never issued.
    alice.execute_script("window.conn._sid = 'x' + window.conn._sid.slice(1)")
    proxy.cut_all()
    wait_js(
        alice,
        "return window.conn.record.events.some((e) => e.type === 'continuitylost')",
        message="continuitylost",
        describe=SUMMARY,
    )
    wait_js(alice, "return window.conn.state === 'open'", describe=SUMMARY)
    lost = next(
        e
        for e in alice.execute_script("return window.conn.record.events")
        if e["type"] == "continuitylost"
    )
    assert lost["detail"]["sessionId"] not in (first, lost["detail"]["previousSessionId"])
    assert alice.execute_script("return window.conn.sessionId") == lost["detail"]["sessionId"]
    assert alice.execute_script("return window.conn.lastSeq") >= 1  # the new hello
    assert report(alice)["notes"] == []  # a new consumer


# --- acknowledgements of client messages ----------------------------------------------------------


def test_a_busy_consumer_makes_posts_wait_not_fail(server: ServerProcess, alice: WebDriver) -> None:
    # The consumer sleeps while the page posts 4 MiB: its inbox (1 MiB) fills, POSTs
    # get 429 with Retry-After, and the client sends them again later, in order.
    open_harness(alice, server.url, f"/ws/stream/?tag={uuid.uuid4().hex}", {"transports": ["sse"]})
    alice.execute_script(
        "window.conn.sendJSON({cmd: 'sleep', s: 1.5});"
        "const pad = 'x'.repeat(100000);"
        "for (let i = 1; i <= 40; i++) window.conn.sendJSON({cmd: 'note', i, pad});"
    )
    wait_js(alice, "return window.conn.pending === 0", timeout=20, describe=SUMMARY)
    summary = alice.execute_script(SUMMARY)
    assert (summary["transport"], summary["stats"]["reconnects"]) == ("sse", 0)
    assert report(alice)["notes"] == list(range(1, 41))


def test_outbox_drains_on_a_long_lived_websocket(server: ServerProcess, alice: WebDriver) -> None:
    tag = uuid.uuid4().hex
    open_harness(alice, server.url, f"/ws/stream/?tag={tag}", {"transports": ["websocket"]})
    queued = alice.execute_script(
        "for (let i = 1; i <= 200; i++) window.conn.sendJSON({cmd: 'note', i});"
        "return window.conn.pending"
    )
    assert queued == 200
    # {"cack": n} frames empty the outbox while the WebSocket stays up.
    wait_js(alice, "return window.conn.pending === 0", message="outbox drained", describe=SUMMARY)
    summary = alice.execute_script(SUMMARY)
    assert (summary["transport"], summary["stats"]["reconnects"]) == ("websocket", 0)
    assert [e["type"] for e in summary["events"]] == ["transport", "open"]
    assert report(alice)["notes"] == list(range(1, 201))


def test_continuitylost_lists_only_unacknowledged_messages(
    proxy: CuttingProxy, alice: WebDriver
) -> None:
    open_harness(alice, proxy.url, "/ws/stream/", {**FAST, "transports": ["websocket"]})
    alice.execute_script("for (let i = 1; i <= 60; i++) window.conn.sendJSON({cmd: 'note', i})")
    wait_js(alice, "return window.conn.pending === 0", message="outbox drained", describe=SUMMARY)
    # The next resume carries a session id the server never issued; one more message is
    # written while reconnecting, so the outbox holds it when continuity turns out lost.
    alice.execute_script(
        "const conn = window.conn;"
        "conn._sid = (conn._sid[0] === 'x' ? 'y' : 'x') + conn._sid.slice(1);"
        "conn.addEventListener('reconnecting',"
        " () => conn.sendJSON({cmd: 'note', i: 99}), {once: true});"
    )
    proxy.cut_all()
    wait_js(
        alice,
        "return window.conn.record.events.some((e) => e.type === 'continuitylost')",
        message="continuitylost",
        describe=SUMMARY,
    )
    lost = next(
        e
        for e in alice.execute_script("return window.conn.record.events")
        if e["type"] == "continuitylost"
    )
    assert lost["detail"]["unsent"] == ['{"cmd":"note","i":99}']
    wait_js(alice, "return window.conn.state === 'open'", describe=SUMMARY)
    assert alice.execute_script("return window.conn.pending") == 0
    assert report(alice)["notes"] == []  # a new consumer; note 99 was not resent


# --- a full server --------------------------------------------------------------------------------


def test_full_server_is_waited_for_not_fallen_back_from(
    tmp_path: Path, alice: WebDriver, bob: WebDriver
) -> None:
    """A 503 with Retry-After ends the round: no long-poll after it, a wait of Retry-After.

    The server holds one session at most (``max_sessions=1``) and answers a new one with
    503 and ``Retry-After: 2`` (the resume window, rounded up). Bob, on SSE then
    long-polling with a short backoff, is refused: each refusal is one ``reconnecting``
    event for an SSE 503, the server never sees a poll, and each wait is at least 2 s.
    Once Alice closes her session, Bob's next round opens.
    """
    env = {"TIDINGS_BROWSER_TRANSPORT_SETTINGS": '{"max_sessions": 1, "resume_window": 2}'}
    log = tmp_path / "server.log"
    with serving(APP, settings=SETTINGS, log=log, args=["--access-log"], env=env) as server:
        open_harness(alice, server.url, "/ws/stream/", {"transports": ["websocket"]})
        bob.get(f"{server.url}/static/browser/harness.html")
        wait_js(bob, "return window.harnessReady === true", message="harness page loaded")
        options = {"transports": ["sse", "longpoll"], "backoff": {"initial": 50}}
        bob.execute_script("window.start(arguments[0], arguments[1])", "/ws/stream/", options)
        wait_js(
            bob,
            "return window.conn.record.events.filter((e) => e.type === 'reconnecting').length >= 2",
            message="two refusals",
            describe=SUMMARY,
        )
        alice.execute_script("window.conn.close()")
        wait_js(bob, "return window.conn.state === 'open'", message="bob open", describe=SUMMARY)
        events = bob.execute_script("return window.conn.record.events")
        refusals = [e["detail"] for e in events if e["type"] == "reconnecting"]
        assert len(refusals) >= 2
        for detail in refusals:
            assert detail["reason"] == "sse: HTTP 503", refusals
            assert detail["transport"] == "sse", refusals
            assert 2000 <= detail["delay"] <= 10000, refusals
        assert bob.execute_script("return window.conn.transport") == "sse"
        assert "tidings=poll" not in server.output
        # One SSE request refused per round (the access log names a request once answered).
        assert server.output.count('tidings=sse HTTP/1.1" 503') == len(refusals)
