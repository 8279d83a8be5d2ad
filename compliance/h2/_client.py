"""The probe's side of an HTTP/2 connection: raw frames out, parsed frames in, verdicts.

A ``Probe`` is one TCP (or TLS, ALPN ``h2``) connection to the server under test. It
sends whatever bytes a case builds, valid or not, and reads the server's frames with
``hyperframe``; HPACK goes through ``hpack`` (its encoder for well-formed blocks, its
decoder for the server's responses). Invalid frames that hyperframe refuses to build
are written by hand with ``raw_frame``.

Verdicts are exceptions: a case returns a short note when the server did what the RFC
requires, and raises ``Fail`` (or ``Skip``) otherwise. Every wait has a deadline, so
a server that stays silent fails one case, never the run.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

__all__ = [
    "ERRORS",
    "PREFACE",
    "Fail",
    "Probe",
    "Skip",
    "Target",
    "hpack_int",
    "literal",
    "raw_frame",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4

# RFC 9113 §7, by code.
ERRORS = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}
_CODES = {name: code for code, name in ERRORS.items()}

# Frame types (RFC 9113 §6) and flags, for frames built by hand.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


class Fail(Exception):
    """The server broke the rule the case checks; the message says what it did."""


class Skip(Exception):
    """The case cannot be judged against this server (for example, a setting it lacks)."""


@dataclass(frozen=True)
class Target:
    """Where the server under test listens, and how long one wait may last."""

    host: str = "127.0.0.1"
    port: int = 8000
    tls: bool = False
    timeout: float = 1.0
    path: str = "/"


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame built byte by byte (RFC 9113 §4.1), whatever its length or content."""
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


def hpack_int(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 §5.1: an integer on an N-bit prefix, the pattern bits in ``first_byte``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """RFC 7541 §6.2.2: a literal field without indexing, new name, no Huffman.

    Used to put exactly the bytes a case wants on the wire (uppercase names, NUL, ...).
    """
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


class Probe:
    """One HTTP/2 connection to the server under test, driven frame by frame."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.server_settings: dict[int, int] = {}
        self._buffer = bytearray()
        self._block = bytearray()
        self.statuses: dict[int, str] = {}
        self._closed = False
        raw = socket.create_connection((target.host, target.port), timeout=target.timeout * 3)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.tls:
            context = ssl.create_default_context()
            context.check_hostname = False  # the probe judges HTTP/2, not certificates
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            tls = context.wrap_socket(raw, server_hostname=target.host)
            if tls.selected_alpn_protocol() != "h2":
                tls.close()
                raise Fail(f"ALPN chose {tls.selected_alpn_protocol()!r}, not 'h2'")
            self.sock: socket.socket = tls
        else:
            self.sock = raw

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending --------------------------------------------------------------

    def send(self, *chunks: bytes | Frame) -> None:
        """Write frames (hyperframe objects or raw bytes) in one write."""
        data = b"".join(c.serialize() if isinstance(c, Frame) else c for c in chunks)
        try:
            self.sock.sendall(data)
        except OSError:
            self._closed = True  # the verdict comes from what the server sent before

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        """Send the client preface and SETTINGS, read the server's SETTINGS, ACK them."""
        self.send(PREFACE, SettingsFrame(0, settings or {}))
        frame = self.read_frame()
        if frame is None:
            raise Fail("the server closed the connection after the client preface")
        if not isinstance(frame, SettingsFrame) or "ACK" in frame.flags:
            raise Fail(f"the server's first frame was {frame_name(frame)}, not SETTINGS")
        self.server_settings.update(frame.settings)
        self.send(SettingsFrame(0, flags=["ACK"]))

    def headers(
        self,
        stream_id: int,
        extra: Sequence[tuple[str, str]] = (),
        *,
        method: str = "GET",
        end_stream: bool = True,
    ) -> bytes:
        """A HEADERS frame with a well-formed request (plus ``extra`` fields)."""
        return self.headers_frame(
            stream_id, self.block(extra, method=method), end_stream=end_stream
        )

    def block(self, extra: Sequence[tuple[str, str]] = (), *, method: str = "GET") -> bytes:
        """An HPACK block for a well-formed request, encoded with the connection's encoder."""
        fields = [
            (":method", method),
            (":scheme", "https" if self.target.tls else "http"),
            (":authority", f"{self.target.host}:{self.target.port}"),
            (":path", self.target.path),
            *extra,
        ]
        return self.encoder.encode(fields)

    def base_fields(self) -> bytes:
        """:method GET, :scheme, :path / by static index, :authority as a plain literal."""
        scheme = b"\x87" if self.target.tls else b"\x86"
        authority = f"{self.target.host}:{self.target.port}".encode()
        return b"\x82" + scheme + b"\x84" + b"\x01" + hpack_int(len(authority), 7) + authority

    @staticmethod
    def headers_frame(
        stream_id: int, block: bytes, *, end_stream: bool = True, end_headers: bool = True
    ) -> bytes:
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return raw_frame(HEADERS, flags, stream_id, block)

    # -- receiving ------------------------------------------------------------

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The server's next frame; None once it closed the connection; Fail on timeout."""
        deadline = time.monotonic() + (self.target.timeout if timeout is None else timeout)
        while True:
            if len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) >= 9 + length:
                    head = memoryview(bytes(self._buffer[:9]))
                    body = memoryview(bytes(self._buffer[9 : 9 + length]))
                    del self._buffer[: 9 + length]
                    frame, _ = Frame.parse_frame_header(head)
                    frame.parse_body(body)
                    if isinstance(frame, HeadersFrame | ContinuationFrame):
                        self._header_block(frame)
                    return frame
            if self._closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Fail(f"no frame from the server within {self._timeout_text(timeout)}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                self._closed = True
            self._buffer += chunk

    def take_buffered(self) -> bytes:
        """The bytes read but not yet parsed into frames, handed over to a faster loop."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _timeout_text(self, timeout: float | None) -> str:
        return f"{self.target.timeout if timeout is None else timeout:g} s"

    def frames(self, timeout: float | None = None) -> Iterable[Frame | None]:
        """Frames until the deadline (Fail after it); a final None when the server closes."""
        deadline = time.monotonic() + (self.target.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Fail(f"nothing decisive from the server within {self._timeout_text(timeout)}")
            frame = self.read_frame(remaining)
            yield frame
            if frame is None:
                return

    # -- verdicts -------------------------------------------------------------

    def expect_connection_error(self, *codes: str) -> str:
        """GOAWAY with one of ``codes``, or the connection closed (RFC 9113 §5.4.1)."""
        want = {_CODES[c] for c in codes}
        for frame in self.frames():
            if frame is None:
                return "connection closed"
            if isinstance(frame, GoAwayFrame):
                if frame.error_code in want:
                    return f"GOAWAY {ERRORS[frame.error_code]}"
                raise Fail(f"GOAWAY {error_name(frame.error_code)}, expected {' or '.join(codes)}")
        raise AssertionError("unreachable")

    def expect_stream_error(self, stream_id: int, *codes: str, malformed: bool = False) -> str:
        """RST_STREAM on ``stream_id`` with one of ``codes`` (§5.4.2), or a connection error.

        With ``malformed`` (RFC 9113 §8.1.1), a 4xx response is accepted too: the server
        MAY answer a malformed request before it resets or closes the stream.
        """
        want = {_CODES[c] for c in codes}
        for frame in self.frames():
            if frame is None:
                return "connection closed"
            if isinstance(frame, GoAwayFrame):
                if frame.error_code in want:
                    return f"GOAWAY {ERRORS[frame.error_code]}"
                raise Fail(f"GOAWAY {error_name(frame.error_code)}, expected {' or '.join(codes)}")
            if isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id:
                if frame.error_code in want:
                    return f"RST_STREAM {ERRORS[frame.error_code]}"
                raise Fail(
                    f"RST_STREAM {error_name(frame.error_code)}, expected {' or '.join(codes)}"
                )
            if isinstance(frame, HeadersFrame | ContinuationFrame) and frame.stream_id == stream_id:
                status = self.status_of(frame)
                if malformed and status.startswith("4"):
                    return f"answered {status}"
                if status and not status.startswith("1"):
                    raise Fail(f"the server answered the request with {status}")
        raise AssertionError("unreachable")

    def expect_alive(self) -> str:
        """The connection still works: a PING gets its ACK, with no GOAWAY before it."""
        payload = os.urandom(8)
        self.send(PingFrame(0, payload))
        for frame in self.frames():
            if frame is None:
                raise Fail("the server closed the connection")
            if isinstance(frame, GoAwayFrame):
                raise Fail(f"the server sent GOAWAY {error_name(frame.error_code)}")
            if isinstance(frame, PingFrame) and frame.opaque_data == payload:
                if "ACK" not in frame.flags:
                    raise Fail("the server echoed the PING without the ACK flag")
                return "connection still open"
        raise AssertionError("unreachable")

    def expect_response(self, stream_id: int) -> tuple[str, bytes]:
        """The whole response on ``stream_id``: its status and body (WINDOW_UPDATEs sent)."""
        status, body = "", bytearray()
        for frame in self.frames():
            if frame is None:
                raise Fail("the server closed the connection before the response ended")
            if isinstance(frame, GoAwayFrame):
                raise Fail(f"the server sent GOAWAY {error_name(frame.error_code)}")
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, RstStreamFrame):
                raise Fail(f"the server reset the stream: {error_name(frame.error_code)}")
            if isinstance(frame, HeadersFrame | ContinuationFrame):
                status = self.status_of(frame) or status
            if isinstance(frame, DataFrame):
                body += frame.data
                if frame.flow_controlled_length:
                    n = frame.flow_controlled_length
                    self.send(WindowUpdateFrame(0, n), WindowUpdateFrame(stream_id, n))
            if "END_STREAM" in frame.flags:
                return status, bytes(body)
        raise AssertionError("unreachable")

    def _header_block(self, frame: HeadersFrame | ContinuationFrame) -> None:
        """Decode every response header block (keeping HPACK in step); note its :status."""
        self._block += frame.data
        if "END_HEADERS" not in frame.flags:
            return
        try:
            fields = self.decoder.decode(bytes(self._block), raw=True)
        except Exception as exc:  # hpack's errors have no common base worth naming
            raise Fail(f"the server sent a header block HPACK cannot decode: {exc}") from exc
        finally:
            self._block.clear()
        for name, value in fields:
            if name == b":status":
                self.statuses[frame.stream_id] = bytes(value).decode("latin-1")

    def status_of(self, frame: Frame) -> str:
        """The :status of the response that ``frame`` completed ("" if none yet)."""
        if "END_HEADERS" not in frame.flags:
            return ""
        return self.statuses.get(frame.stream_id, "")


def error_name(code: int) -> str:
    return ERRORS.get(code, f"unknown error 0x{code:x}")


def frame_name(frame: Frame) -> str:
    return type(frame).__name__.removesuffix("Frame").upper()
