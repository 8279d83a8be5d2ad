# chat/tests.py
"""Tests of the chat, without a server: ``python manage.py test chat``.

``WebsocketCommunicator`` plays the browser against the whole ASGI
application (origin check, session cookie, auth, URL routing) in the test's
event loop; the in-memory channel layer joins the consumers together.
``TransactionTestCase``, because the consumers reach the database from
another thread than the test's.
"""

from io import StringIO

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, TransactionTestCase, override_settings
from tidings.testing import ApplicationCommunicator, WebsocketCommunicator

from chat.models import Message
from mysite.asgi import application


def login_cookie(user):
    """The Cookie header of a browser in which ``user`` logged in."""
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def open_socket(path, cookie=None):
    """Connect like a browser on this site (with its Origin and cookies)."""
    headers = [(b"origin", b"http://testserver")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    communicator = WebsocketCommunicator(application, path, headers)
    connected, _ = await communicator.connect()
    return communicator, connected


class ChatTests(TransactionTestCase):
    def setUp(self):
        User = get_user_model()
        self.alice = User.objects.create_user("alice")  # no password: force_login
        self.bob = User.objects.create_user("bob")
        self.alice_cookie = login_cookie(self.alice)
        self.bob_cookie = login_cookie(self.bob)

    async def test_message_is_saved_and_sent_to_the_whole_room(self):
        alice, _ = await open_socket("/ws/chat/lobby/", self.alice_cookie)
        bob, _ = await open_socket("/ws/chat/lobby/", self.bob_cookie)
        elsewhere, _ = await open_socket("/ws/chat/kitchen/", self.bob_cookie)

        await alice.send_json_to({"type": "message", "text": "  hello, room  "})
        for socket in (alice, bob):
            message = await socket.receive_json_from()
            self.assertEqual(message["type"], "message")
            self.assertEqual((message["author"], message["text"]), ("alice", "hello, room"))
        self.assertTrue(await elsewhere.receive_nothing())

        saved = await Message.objects.select_related("author").aget()
        self.assertEqual(
            (saved.room, saved.author, saved.text), ("lobby", self.alice, "hello, room")
        )
        for socket in (alice, bob, elsewhere):
            await socket.disconnect()

    async def test_anonymous_sockets_are_refused(self):
        for path in ("/ws/chat/lobby/", "/ws/notifications/"):
            _, connected = await open_socket(path)
            self.assertFalse(connected, path)

    async def test_a_mention_notifies_the_user_mentioned(self):
        bob, connected = await open_socket("/ws/notifications/", self.bob_cookie)
        self.assertTrue(connected)
        alice, _ = await open_socket("/ws/chat/lobby/", self.alice_cookie)

        await alice.send_json_to({"type": "message", "text": "lunch, @bob? (cc @alice @nobody)"})
        notification = await bob.receive_json_from()
        self.assertEqual(notification["type"], "notification")
        self.assertEqual(
            notification["text"], "alice mentioned you in lobby: lunch, @bob? (cc @alice @nobody)"
        )
        self.assertEqual(notification["url"], "/chat/lobby/")
        self.assertTrue(await bob.receive_nothing())  # one mention, one notification
        await alice.disconnect()
        await bob.disconnect()

    async def test_a_view_and_a_command_notify_a_user(self):
        bob, _ = await open_socket("/ws/notifications/", self.bob_cookie)

        client = Client()
        await sync_to_async(client.force_login)(self.alice)
        response = await sync_to_async(client.post)(f"/poke/{self.bob.pk}/")
        self.assertEqual(response.status_code, 302)
        self.assertEqual((await bob.receive_json_from())["text"], "alice poked you.")

        await sync_to_async(call_command)(
            "notify", "bob", "dinner is ready", stdout=StringIO(), stderr=StringIO()
        )
        self.assertEqual((await bob.receive_json_from())["text"], "dinner is ready")
        await bob.disconnect()

    @override_settings(CHAT_SUMMARY_DELAY=0)
    async def test_the_worker_posts_a_summary_to_the_room(self):
        await Message.objects.acreate(room="lobby", author=self.bob, text="Tidings workers work")
        # The server starts the worker at lifespan startup (in-memory layer).
        lifespan = ApplicationCommunicator(application, {"type": "lifespan"})
        await lifespan.send_input({"type": "lifespan.startup"})
        self.assertEqual(await lifespan.receive_output(), {"type": "lifespan.startup.complete"})

        alice, _ = await open_socket("/ws/chat/lobby/", self.alice_cookie)
        await alice.send_json_to({"type": "summarize"})
        self.assertEqual((await alice.receive_json_from())["type"], "status")
        summary = await alice.receive_json_from(timeout=5)
        self.assertEqual(summary["type"], "summary")
        self.assertEqual(
            summary["text"], "1 message in lobby, from bob (1); about tidings, workers, work."
        )
        await alice.disconnect()

        await lifespan.send_input({"type": "lifespan.shutdown"})
        self.assertEqual(await lifespan.receive_output(), {"type": "lifespan.shutdown.complete"})

    def test_pages_need_a_login_and_show_recent_history(self):
        Message.objects.create(room="lobby", author=self.bob, text="earlier <b>news</b>")
        self.assertEqual(Client().get("/chat/lobby/").status_code, 302)

        client = Client()
        client.force_login(self.alice)
        page = client.get("/chat/lobby/")
        self.assertContains(page, "earlier \\u003Cb\\u003Enews\\u003C/b\\u003E")  # escaped JSON
        self.assertRedirects(client.get("/?room=kitchen"), "/chat/kitchen/")
        self.assertContains(client.get("/"), "lobby")
