"""Server-Sent Events: encode events (server side), parse an event stream (client side).

Theory of operation
-------------------
The format is the ``text/event-stream`` of the WHATWG HTML Living Standard,
section 9.2.5 ("Parsing an event stream") and 9.2.6 ("Interpreting an event
stream"). A stream is UTF-8 text made of lines ended by CRLF, LF or CR; a
blank line ends an event. A line is a comment (starts with ``:``, ignored by
clients, useful as a heartbeat) or a field ``name: value`` (one space after
the colon is part of the syntax, not of the value). The fields are ``data``
(lines accumulate, joined by LF), ``event`` (the type, default
``"message"``), ``id`` (the last event id, kept across events and sent back
by a reconnecting ``EventSource`` as ``Last-Event-ID``) and ``retry`` (the
reconnection delay in ms).

:func:`encode_event` and :func:`encode_comment` build bytes to write;
:class:`EventStreamParser` is the reverse (used by tests and benchmarks, and
by any Python client): ``feed(bytes)`` returns the events completed by those
bytes. Nothing here does I/O or keeps time; a heartbeat's timing belongs to
the transport.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Final

__all__ = ["EventStreamParser", "ServerSentEvent", "encode_comment", "encode_event"]

_BOM: Final = "\ufeff"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event, as an ``EventSource`` would see it.

    Attributes:
        data: the ``data`` lines joined by LF.
        event: the event type (``"message"`` unless an ``event`` field said otherwise).
        last_event_id: the last ``id`` seen on the stream so far (``""`` if none).
    """

    data: str
    event: str = "message"
    last_event_id: str = ""


def _check_field(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"an SSE {name} must not contain CR, LF or NUL: {value!r}")


def encode_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """Encode one event: optional ``event`` and ``id`` fields, the ``data`` lines, a blank line.

    ``data`` may hold line breaks (CRLF, LF or CR); each line becomes a
    ``data:`` field, so the client gets them back joined by LF.

    Raises:
        ValueError: ``event_id`` or ``event`` holds CR, LF or NUL (they would
            end the field early; the standard ignores an id holding NUL).
    """
    parts: list[str] = []
    if event is not None:
        _check_field("event type", event)
        parts.append(f"event: {event}\n")
    if event_id is not None:
        _check_field("event id", event_id)
        parts.append(f"id: {event_id}\n")
    if "\r" in data or "\n" in data:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    else:
        lines = [data]
    parts.extend(f"data: {line}\n" for line in lines)
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (a heartbeat: clients ignore it, proxies see traffic).

    Raises:
        ValueError: ``text`` holds CR, LF or NUL.
    """
    _check_field("comment", text)
    return f":{text}\n\n".encode()


class EventStreamParser:
    """Parse a ``text/event-stream`` incrementally (WHATWG HTML section 9.2.6).

    Bytes may be split anywhere, including inside a UTF-8 sequence or between
    the CR and LF of a CRLF. Invalid UTF-8 decodes to U+FFFD, as browsers do.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._last_event_id = ""
        self.retry: int | None = None
        """The last valid ``retry`` field, in milliseconds (``None`` if none yet)."""

    @property
    def last_event_id(self) -> str:
        """The last event id seen (what a reconnecting client sends as ``Last-Event-ID``)."""
        return self._last_event_id

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse more of the stream; return the events it completed, in order."""
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix(_BOM)
        return self._lines(text)

    def _lines(self, text: str) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        if self._skip_lf and text:
            # The previous chunk ended with CR: an LF right after it belongs to it.
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        buffer = self._pending + text
        start = 0
        length = len(buffer)
        while True:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            if buffer[end] == "\r":
                if end + 1 < length:
                    start = end + 2 if buffer[end + 1] == "\n" else end + 1
                else:
                    self._skip_lf = True
                    start = end + 1
            else:
                start = end + 1
        self._pending = buffer[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data = []
        self._event = ""
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message", self._last_event_id)
