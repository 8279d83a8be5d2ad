"""The chat example (examples/chat) against the real server, as its users run it.

- The example's own tests (``manage.py test chat``: its consumers through
  ``WebsocketCommunicator``, in one process) pass.
- With the default settings (in-memory layer; the server runs the summary
  worker itself), over real sockets: a message reaches the room and is in the
  database; anonymous and cross-origin sockets are refused; a mention and a
  plain view notify a logged-in socket; a summary comes back to the room.
- With ``TIDINGS_REDIS_URL`` set: two server processes share rooms and
  notifications; ``manage.py notify`` reaches a socket of a server; the
  summary job waits for a real ``manage.py runworker`` process.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys

import pytest
from websockets.exceptions import InvalidStatus

from ._chat import (
    EXAMPLE,
    ChatSite,
    Server,
    copy_example,
    example_env,
    login,
    receive,
    receive_type,
    websocket,
)


def new_room() -> str:
    return "room-" + secrets.token_hex(4)


def test_the_examples_own_tests_pass(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = copy_example(tmp_path_factory.mktemp("chat-own-tests") / "site")
    completed = subprocess.run(
        [sys.executable, "-W", "error", "manage.py", "test", "chat", "--noinput"],
        cwd=root,
        env=example_env(root),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    ran = re.search(r"^Ran (\d+) tests", completed.stderr, re.MULTILINE)
    assert ran is not None, completed.stderr
    assert int(ran.group(1)) == len(re.findall(r"\n    (?:async )?def test_", _tests_py()))


def _tests_py() -> str:
    return (EXAMPLE / "chat" / "tests.py").read_text()


# -- the default settings: in-memory layer ------------------------------------------------


async def test_a_message_reaches_the_room_and_is_saved(
    chat_site: ChatSite, memory_server: Server
) -> None:
    room = new_room()
    async with (
        login(memory_server, "alice") as alice,
        login(memory_server, "bob") as bob,
        websocket(memory_server, f"/ws/chat/{room}/", alice) as alice_ws,
        websocket(memory_server, f"/ws/chat/{room}/", bob) as bob_ws,
        websocket(memory_server, f"/ws/chat/{new_room()}/", bob) as elsewhere,
    ):
        await alice_ws.send('{"type": "message", "text": "hello from a real socket"}')
        for ws in (alice_ws, bob_ws):
            message = await receive(ws)
            assert (message["type"], message["author"]) == ("message", "alice")
            assert message["text"] == "hello from a real socket"
        assert chat_site.messages(room) == [("alice", "hello from a real socket")]
        # Bob's socket in the other room got nothing: the next thing it gets is its own echo.
        await elsewhere.send('{"type": "message", "text": "anyone?"}')
        assert (await receive(elsewhere))["text"] == "anyone?"

        page = await bob.get(f"/chat/{room}/")  # the history, on page load
        assert page.status_code == 200
        assert "hello from a real socket" in page.text


async def test_the_pages_load_tidings_js_which_the_server_serves(memory_server: Server) -> None:
    async with login(memory_server, "alice") as alice:
        page = await alice.get("/chat/lobby/")
        assert 'import { connect } from "/static/tidings/tidings.js";' in page.text
        script = await alice.get("/static/tidings/tidings.js")  # DEBUG: asgi.py serves it
    assert script.status_code == 200
    assert "export function connect(" in script.text


async def test_a_long_polling_client_is_in_the_room_too(memory_server: Server) -> None:
    # What tidings.js falls back to where WebSocket is blocked (docs/transports.md).
    room = new_room()
    url = f"/ws/chat/{room}/"
    origin = {"origin": memory_server.url}
    async with (
        login(memory_server, "alice") as alice,
        login(memory_server, "bob") as bob,
        websocket(memory_server, url, alice) as alice_ws,
    ):
        opened = await bob.get(url, params={"tidings": "poll"}, headers=origin)
        assert opened.status_code == 200, opened.text
        sid = opened.json()[0]["sid"]

        await alice_ws.send('{"type": "message", "text": "can you hear me?"}')
        await receive(alice_ws)
        polled = await bob.get(url, params={"tidings": "poll", "sid": sid}, headers=origin)
        messages = [json.loads(m["text"]) for m in polled.json() if "text" in m]  # not "open"
        assert [m["text"] for m in messages] == ["can you hear me?"]

        sent = await bob.post(
            url,
            params={"tidings": "send", "sid": sid},
            json=[{"cseq": 1, "text": '{"type": "message", "text": "loud and clear"}'}],
            headers=origin,
        )
        assert sent.status_code == 200, sent.text
        message = await receive(alice_ws)
        assert (message["author"], message["text"]) == ("bob", "loud and clear")


@pytest.mark.parametrize("path", ["/ws/notifications/", "/ws/chat/lobby/"])
async def test_anonymous_sockets_are_refused(memory_server: Server, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(memory_server, path):
            pass
    assert refused.value.response.status_code == 403


async def test_a_socket_from_another_site_is_refused(memory_server: Server) -> None:
    async with login(memory_server, "alice") as alice:
        with pytest.raises(InvalidStatus) as refused:
            async with websocket(memory_server, "/ws/notifications/", alice, origin="http://evil"):
                pass
    assert refused.value.response.status_code == 403


async def test_a_mention_and_a_view_notify_a_logged_in_socket(memory_server: Server) -> None:
    room = new_room()
    async with (
        login(memory_server, "alice") as alice,
        login(memory_server, "bob") as bob,
        websocket(memory_server, "/ws/notifications/", bob) as bob_notes,
        websocket(memory_server, f"/ws/chat/{room}/", alice) as alice_ws,
    ):
        await alice_ws.send('{"type": "message", "text": "@bob have a look"}')
        note = await receive(bob_notes)
        assert note == {
            "type": "notification",
            "text": f"alice mentioned you in {room}: @bob have a look",
            "url": f"/chat/{room}/",
        }

        index = await alice.get("/")
        poke_bob = re.search(r'bob\s+<form method="post" action="(/poke/\d+/)"', index.text)
        assert poke_bob is not None, index.text
        poke = await alice.post(
            poke_bob.group(1),
            data={"csrfmiddlewaretoken": alice.cookies["csrftoken"]},
        )
        assert poke.status_code == 302
        assert (await receive(bob_notes))["text"] == "alice poked you."


async def test_the_summary_job_runs_in_the_server(memory_server: Server) -> None:
    room = new_room()
    async with (
        login(memory_server, "carol") as carol,
        websocket(memory_server, f"/ws/chat/{room}/", carol) as ws,
    ):
        await ws.send('{"type": "message", "text": "summaries need workers"}')
        await receive_type(ws, "message")
        await ws.send('{"type": "summarize"}')
        assert (await receive(ws))["type"] == "status"
        summary = await receive_type(ws, "summary")
        assert summary["text"] == (
            f"1 message in {room}, from carol (1); about summaries, need, workers."
        )


def test_the_notify_command_warns_that_memory_does_not_reach_the_server(
    chat_site: ChatSite,
) -> None:
    completed = chat_site.manage("notify", "bob", "hello?")
    assert "in-memory channel layer only reaches consumers in this process" in completed.stderr
    failed = chat_site.manage("notify", "nobody", "hello?", check=False)
    assert failed.returncode == 1
    assert "No user named 'nobody'." in failed.stderr


# -- TIDINGS_REDIS_URL set: several processes ---------------------------------------------


async def test_two_servers_share_rooms_and_notifications(
    chat_site: ChatSite, redis_servers: tuple[Server, Server]
) -> None:
    one, two = redis_servers
    room = new_room()
    async with (
        login(one, "alice") as alice,
        login(two, "bob") as bob,
        websocket(one, f"/ws/chat/{room}/", alice) as alice_ws,
        websocket(two, f"/ws/chat/{room}/", bob) as bob_ws,
        websocket(two, "/ws/notifications/", bob) as bob_notes,
    ):
        await alice_ws.send('{"type": "message", "text": "across processes, @bob"}')
        message = await receive(bob_ws)
        assert (message["author"], message["text"]) == ("alice", "across processes, @bob")
        assert (await receive(bob_notes))["url"] == f"/chat/{room}/"
        assert chat_site.messages(room) == [("alice", "across processes, @bob")]


async def test_the_notify_command_reaches_a_logged_in_socket(
    chat_site: ChatSite, redis_servers: tuple[Server, Server], redis_url: str
) -> None:
    server = redis_servers[1]
    text = "from the command line " + secrets.token_hex(4)
    async with (
        login(server, "bob") as bob,
        websocket(server, "/ws/notifications/", bob) as bob_notes,
    ):
        completed = await asyncio.to_thread(
            chat_site.manage, "notify", "bob", text, redis_url=redis_url
        )
        assert completed.stdout.strip() == "Sent to bob."
        assert completed.stderr == ""
        assert await receive(bob_notes) == {"type": "notification", "text": text, "url": ""}


async def test_the_summary_job_needs_runworker(
    chat_site: ChatSite, redis_servers: tuple[Server, Server], redis_url: str
) -> None:
    server = redis_servers[0]
    room = new_room()
    async with (
        login(server, "alice") as alice,
        websocket(server, f"/ws/chat/{room}/", alice) as ws,
    ):
        await ws.send('{"type": "message", "text": "redis carries jobs"}')
        await receive_type(ws, "message")
        await ws.send('{"type": "summarize"}')
        assert (await receive(ws))["type"] == "status"
        # With Redis the server does not run the worker: the job waits in the
        # channel (the job itself takes CHAT_SUMMARY_DELAY = 1 s).
        with pytest.raises(TimeoutError):
            await receive(ws, timeout=2.0)
        with chat_site.runworker(redis_url=redis_url):
            summary = await receive_type(ws, "summary")
        assert (
            summary["text"] == f"1 message in {room}, from alice (1); about redis, carries, jobs."
        )
