"""Wire protocol version 1 of the session transports: JSON envelopes, both directions.

Theory of operation
-------------------
Server to client, every object is one *envelope*, encoded to JSON text once,
when the consumer sends, and then written as it is to whichever transport is
attached: a WebSocket text frame, the ``data`` of an SSE event, or an item of
the array a poll returns. Envelopes are ``{"seq": n, "text"|"bytes": ...}``
(a consumer message), ``{"type": "open", ...}`` (first on every transport
connection), ``{"type": "close", ...}`` (the session ended) and
``{"cack": n}`` (client messages up to ``cseq`` n were taken: on the streams
of ``CACK_TRANSPORTS`` only, never buffered for resume, no ``seq``).

Client to server, the items are ``{"cseq": n, "text"|"bytes": ...}``
(a message for the consumer), ``{"ack": n}`` and ``{"type": "close"}``; a
POST carries a JSON array of them, a WebSocket one per text frame. Anything
else is a :class:`ProtocolError`, answered with HTTP 400 or WebSocket close
1007; its text names the problem and never echoes the input.

Everything here is pure: no I/O, no clock, no Django.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from tidings._types import Message
from tidings.transports.errors import TransportError

__all__ = [
    "CACK_TRANSPORTS",
    "TRANSPORT_NAMES",
    "ClientBatch",
    "ClientMessage",
    "ProtocolError",
    "cack_envelope",
    "close_envelope",
    "encode_message",
    "envelope_seq",
    "layer_messages",
    "open_envelope",
    "parse_frame",
    "parse_post_body",
]

#: The ``tidings`` query parameter's values that open a transport, and the
#: transport name each puts in the scope and the open envelope.
TRANSPORT_NAMES: Final = {"ws": "websocket", "sse": "sse", "poll": "longpoll"}
#: Transports whose stream carries ``{"cack": n}`` envelopes. Not long-polling:
#: a held poll must not be answered just for that (each poll starts with an open
#: envelope, which has ``cack``, and its POSTs are answered with it anyway).
CACK_TRANSPORTS: Final = frozenset({"websocket", "sse"})

_MAX_SEQ: Final = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER


class ProtocolError(TransportError, ValueError):
    """A client sent something that is not protocol version 1."""


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One message for the consumer; ``text`` or ``data`` (base64 as sent) is set."""

    cseq: int
    text: str | None = None
    data: str | None = None

    def asgi(self) -> Message:
        """The ``websocket.receive`` message the consumer gets."""
        if self.text is not None:
            return {"type": "websocket.receive", "text": self.text}
        assert self.data is not None
        return {"type": "websocket.receive", "bytes": base64.b64decode(self.data)}

    @property
    def size(self) -> int:
        """Bytes of the payload (UTF-8 text, or the bytes the base64 decodes to)."""
        if self.text is not None:
            text = self.text
            return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        assert self.data is not None
        return len(self.data) * 3 // 4

    def to_layer(self) -> dict[str, Any]:
        """A form any layer serializer carries (JSON has no bytes)."""
        if self.text is not None:
            return {"cseq": self.cseq, "text": self.text}
        return {"cseq": self.cseq, "bytes": self.data}


@dataclass(slots=True)
class ClientBatch:
    """What one POST body or WebSocket frame asked for."""

    messages: list[ClientMessage] = field(default_factory=list)
    ack: int | None = None
    close: bool = False


def _seq(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _MAX_SEQ:
        raise ProtocolError(f"{what} must be an integer from {minimum} to 2**53-1")
    return value


def _item(item: object, batch: ClientBatch) -> None:
    if not isinstance(item, dict):
        raise ProtocolError("each client message must be a JSON object")
    if "cseq" in item:
        cseq = _seq(item["cseq"], "cseq", 1)
        text, data = item.get("text"), item.get("bytes")
        if (text is None) == (data is None):
            raise ProtocolError("a client message needs exactly one of 'text' and 'bytes'")
        if text is not None:
            if not isinstance(text, str):
                raise ProtocolError("'text' must be a string")
            if not text.isascii():
                # JSON can escape a lone surrogate ("\ud800"); a WebSocket text frame
                # cannot carry one (RFC 6455 section 5.6: UTF-8), and neither can
                # anything the consumer relays it to.
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ProtocolError("'text' is not valid Unicode (a lone surrogate)") from None
            batch.messages.append(ClientMessage(cseq, text=text))
            return
        if not isinstance(data, str):
            raise ProtocolError("'bytes' must be a base64 string")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'bytes' is not valid base64") from None
        batch.messages.append(ClientMessage(cseq, data=data))
    elif "ack" in item:
        ack = _seq(item["ack"], "ack", 0)
        batch.ack = ack if batch.ack is None else max(batch.ack, ack)
    elif item.get("type") == "close":
        batch.close = True
    else:
        raise ProtocolError("unknown client message: expected 'cseq', 'ack' or type 'close'")


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("not valid JSON") from None


def parse_post_body(body: bytes) -> ClientBatch:
    """Parse the body of ``POST ?tidings=send``: a JSON array of client items.

    Raises:
        ProtocolError: not UTF-8 JSON, not an array, or an item is malformed.
    """
    items = _loads(body)
    if not isinstance(items, list):
        raise ProtocolError("the body must be a JSON array")
    batch = ClientBatch()
    for item in items:
        _item(item, batch)
    return batch


def parse_frame(text: str) -> ClientBatch:
    """Parse one WebSocket text frame: a single client item (an array is accepted too).

    Raises:
        ProtocolError: not JSON, or the item is malformed.
    """
    value = _loads(text)
    batch = ClientBatch()
    for item in value if isinstance(value, list) else (value,):
        _item(item, batch)
    return batch


def layer_messages(items: Iterable[dict[str, Any]]) -> list[ClientMessage]:
    """Read back :meth:`ClientMessage.to_layer` forms (already validated by the sender)."""
    batch = ClientBatch()
    for item in items:
        _item(item, batch)
    return batch.messages


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_message(seq: int, data: str | bytes) -> str:
    """The envelope of a consumer's ``websocket.send`` (checked by ``tidings._asgi``)."""
    if isinstance(data, str):
        return f'{{"seq":{seq},"text":{_dumps(data)}}}'
    return f'{{"seq":{seq},"bytes":"{base64.b64encode(data).decode("ascii")}"}}'


def envelope_seq(envelope: str) -> str | None:
    """The ``seq`` of a message envelope as text (its SSE event id); ``None`` for the others."""
    if envelope.startswith('{"seq":'):
        return envelope[7 : envelope.index(",", 7)]
    return None


def open_envelope(sid: str, *, seq: int, resumed: bool, cack: int, transport: str) -> str:
    """The first envelope on every transport connection."""
    return _dumps(
        {
            "type": "open",
            "sid": sid,
            "seq": seq,
            "resumed": resumed,
            "cack": cack,
            "transport": transport,
        }
    )


def cack_envelope(cack: int) -> str:
    """The envelope that tells the client its messages up to ``cseq`` ``cack`` were taken."""
    return f'{{"cack":{cack}}}'


def close_envelope(code: int, reason: str) -> str:
    """The envelope that tells the client its session is over."""
    return _dumps({"type": "close", "code": code, "reason": reason})
