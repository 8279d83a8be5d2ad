"""The consumers the browser tests talk to; ordinary Channels-style consumers.

- :class:`ChatConsumer` (``/ws/chat/<room>/``): every text message (JSON
  ``{"text": ..., "sender": ...}``) goes to everyone in the room, the sender included.
- :class:`StreamConsumer` (``/ws/stream/``): commands as JSON text: ``stream`` sends
  ``n`` numbered messages ``{"type": "n", "n": i}``, paced (``every`` messages, then
  ``pause`` seconds); ``note`` records ``i``; ``sleep`` keeps it busy ``s`` seconds;
  ``report`` answers with the notes in the order received and how often this
  session's consumer saw connect and disconnect; ``close`` closes with ``code``;
  bytes come back reversed.

:class:`RefusingConsumer` (``/ws/refuse/``) refuses every session. The others greet
with ``{"type": "hello", "pid": ..., "transport": ...}``: the process that
runs the session's consumer and the transport named in the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from tidings.generic.websocket import AsyncWebsocketConsumer
from tidings.layers import BaseChannelLayer

__all__ = ["ChatConsumer", "RefusingConsumer", "StreamConsumer"]

# Per ``tag`` query parameter (the page picks a random one): connects and disconnects
# seen in this process, to show that a resumed session is one consumer throughout.
CONNECTS: Counter[str] = Counter()
DISCONNECTS: Counter[str] = Counter()


class _Greeting(AsyncWebsocketConsumer):
    async def send_json(self, value: Any) -> None:
        await self.send(text_data=json.dumps(value))

    async def greet(self) -> None:
        transport = self.scope.get("transport")
        await self.send_json({"type": "hello", "pid": os.getpid(), "transport": transport})


class RefusingConsumer(AsyncWebsocketConsumer):
    """Refuses every connection (closes in ``connect``)."""

    async def connect(self) -> None:
        await self.close()


class ChatConsumer(_Greeting):
    """A chat room: each message goes to every member."""

    @property
    def layer(self) -> BaseChannelLayer:
        assert self.channel_layer is not None, "the chat needs a channel layer"
        return self.channel_layer

    async def connect(self) -> None:
        self.group = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        await self.layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.greet()

    async def disconnect(self, code: int) -> None:
        await self.layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return
        data = json.loads(text_data)
        event = {"type": "chat.message", "text": data["text"], "sender": data.get("sender")}
        await self.layer.group_send(self.group, event)

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "chat", "text": event["text"], "sender": event["sender"]})


class StreamConsumer(_Greeting):
    """Streams numbered messages and records numbered notes; see the module docstring."""

    async def connect(self) -> None:
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        self.tag = query.get("tag", [""])[0]
        self.notes: list[int] = []
        self.task: asyncio.Task[None] | None = None
        CONNECTS[self.tag] += 1
        await self.accept()
        await self.greet()

    async def disconnect(self, code: int) -> None:
        DISCONNECTS[self.tag] += 1
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self.send(bytes_data=bytes_data[::-1])
            return
        assert text_data is not None
        data = json.loads(text_data)
        cmd = data["cmd"]
        if cmd == "stream":
            self.task = asyncio.create_task(
                self.stream(int(data["n"]), int(data.get("every", 10)), data.get("pause", 0.01))
            )
        elif cmd == "close":
            await self.close(code=int(data["code"]))
        elif cmd == "note":
            self.notes.append(int(data["i"]))
        elif cmd == "sleep":  # a busy consumer: takes no message meanwhile
            await asyncio.sleep(float(data["s"]))
        elif cmd == "report":
            await self.send_json(
                {
                    "type": "report",
                    "notes": self.notes,
                    "connects": CONNECTS[self.tag],
                    "disconnects": DISCONNECTS[self.tag],
                    "pid": os.getpid(),
                    "query": self.scope["query_string"].decode("latin-1"),
                }
            )

    async def stream(self, n: int, every: int, pause: float) -> None:
        for i in range(1, n + 1):
            await self.send_json({"type": "n", "n": i})
            if i % every == 0:
                await asyncio.sleep(pause)
