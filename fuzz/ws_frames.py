"""Fuzz target for the sans-I/O WebSocket connection (tidings.wire.websocket).

Each input drives two ``WebSocketConnection`` objects with the same client bytes: one
gets them in a single ``receive_data`` call, the other in chunks whose sizes also come
from the input. Checked for every input:

* ``receive_data`` never raises, whatever the bytes;
* both connections report the same events and queue the same output (the single-frame
  fast path and the general parser agree, and chunking changes nothing);
* a terminal event (close/failure) is always last, and the state matches it;
* the output is a sequence of well-formed unmasked server frames, and any close frame
  we sent carries a code that may be sent;
* no message exceeds ``max_message_size`` (the fragment cap, ``max_fragments``, is
  small in the same inputs, so the chunking checks also cover messages it ends).

Inputs are read in two modes chosen by the first byte: raw client bytes, or a list of
frame specs that the harness masks (and optionally deflates) like a real client, which
lets a coverage-guided fuzzer reach deep message-level states quickly.

Run with atheris (``python fuzz/ws_frames.py [corpus_dir] [-atheris_runs=N]``) or,
without it, ``python fuzz/ws_frames.py --selftest [N]`` for N random structured inputs.
"""

from __future__ import annotations

import importlib
import os
import random
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tidings.wire.deflate import PerMessageDeflate
from tidings.wire.frames import apply_mask, is_valid_close_code
from tidings.wire.websocket import (
    BytesMessage,
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    ConnectionState,
    Event,
    TextMessage,
    WebSocketConnection,
)

__all__ = ["TestOneInput", "main"]

_TERMINAL = (CloseReceived, ConnectionFailed, ConnectionLost)


class _Reader:
    """Consumes an input byte by byte; yields zeros once exhausted."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def left(self) -> int:
        return len(self.data) - self.pos


def _structured_wire(reader: _Reader, use_deflate: bool) -> bytes:
    """Build client bytes from frame specs: header byte, length, flags, payload."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = b""
    for _ in range(reader.byte() % 12):
        b0 = reader.byte()
        flags = reader.byte()
        payload = reader.take(reader.byte() % 200)
        if flags & 0x01 and use_deflate and b0 & 0x40:
            data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            payload = data[:-4]
        if flags & 0x02:
            payload *= 1 + reader.byte()  # up to ~50 KB: crosses the 16-bit length
        n = len(payload)
        masked = not flags & 0x04 or not flags & 0x08  # unmasked 1 time in 4
        mask_bit = 0x80 if masked else 0
        width = (flags >> 4) & 0x03  # 0: minimal, 1: 16-bit, 2: 64-bit, 3: garbage length
        if width == 3:
            header = struct.pack("!BBQ", b0, mask_bit | 127, reader.byte() << 56 | n)
        elif width == 2 or n >= 0x10000:
            header = struct.pack("!BBQ", b0, mask_bit | 127, n)
        elif width == 1 or n >= 126:
            header = struct.pack("!BBH", b0, mask_bit | 126, n)
        else:
            header = bytes((b0, mask_bit | n))
        if masked:
            mask = reader.take(4).ljust(4, b"\x00")
            wire += header + mask + apply_mask(payload, mask)
        else:
            wire += header + payload
    return wire


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse our own output as a client would; assert it is well formed."""
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, "truncated server frame header"
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frame is masked"
        assert not b0 & 0x30, "server frame has RSV2/RSV3"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        assert pos + n <= len(data), "truncated server frame payload"
        frames.append((b0 & 0x0F, data[pos : pos + n]))
        pos += n
    return frames


def _check(events: list[Event], conn: WebSocketConnection, output: bytes, limit: int) -> None:
    for index, event in enumerate(events):
        if isinstance(event, _TERMINAL):
            assert index == len(events) - 1, "events after a terminal event"
            assert conn.state is ConnectionState.CLOSED
        elif isinstance(event, TextMessage):
            assert len(event.data.encode()) <= limit
        elif isinstance(event, BytesMessage):
            assert len(event.data) <= limit
    if not events or not isinstance(events[-1], _TERMINAL):
        assert conn.state is ConnectionState.OPEN
    for opcode, payload in _server_frames(output):
        assert opcode in (0x8, 0x9, 0xA), "unexpected server frame"
        assert len(payload) <= 125
        if opcode == 0x8 and payload:
            assert is_valid_close_code(int.from_bytes(payload[:2], "big"))
            payload[2:].decode("utf-8")


def TestOneInput(data: bytes) -> None:
    """Run one input through two connections (whole vs chunked) and check invariants."""
    reader = _Reader(data)
    mode = reader.byte()
    use_deflate = bool(mode & 0x01)
    limit_byte = reader.byte()
    limit = (1 << 20) if mode & 0x02 else 64 + limit_byte * 8
    # A small fragment cap too, so that messages of a few frames reach it (1009).
    fragments = 4096 if mode & 0x02 else 2 + limit_byte % 6
    raw = bool(mode & 0x04)
    wire = reader.take(reader.left()) if raw else _structured_wire(reader, use_deflate)
    eof = bool(mode & 0x08)
    seed = reader.byte()

    def connection() -> WebSocketConnection:
        deflate = PerMessageDeflate() if use_deflate else None
        return WebSocketConnection(max_message_size=limit, max_fragments=fragments, deflate=deflate)

    whole = connection()
    if wire:
        whole.receive_data(wire)
    if eof:
        whole.receive_data(b"")
    whole_events = whole.events()
    whole_output = whole.data_to_send()

    chunked = connection()
    chunk_sizes = random.Random(seed)
    chunked_events: list[Event] = []
    output = b""
    pos = 0
    while pos < len(wire):
        size = chunk_sizes.choice((1, 2, 3, 6, 7, 50, 1000, 1 << 20))
        chunked.receive_data(wire[pos : pos + size])
        chunked_events += chunked.events()
        output += chunked.data_to_send()
        pos += size
    if eof:
        chunked.receive_data(b"")
        chunked_events += chunked.events()
    output += chunked.data_to_send()

    assert chunked_events == whole_events, (chunked_events, whole_events)
    assert output == whole_output
    assert chunked.state is whole.state
    assert chunked.close_code == whole.close_code
    _check(whole_events, whole, whole_output, limit)


def _random_input(rng: random.Random) -> bytes:
    """A structured input (valid-ish frames) with a few random mutations.

    Mirrors the layout ``_structured_wire`` reads: mode, limit, frame count, then per
    frame: first byte, flags, length, payload, [repeat], [length garbage], [mask].
    """
    mode = rng.choice((0x00, 0x01, 0x02, 0x03, 0x08, 0x09))
    if rng.random() < 0.05:
        mode |= 0x04  # raw mode: the rest is fed as is
    body = bytearray([mode, rng.randrange(256), rng.randrange(1, 12)])
    bad = rng.choice((0.0, 0.0, 0.02, 0.1))  # how often each spec is made invalid
    fragmenting = False
    for _ in range(body[2]):
        if rng.random() < bad:
            opcode = rng.choice((0x3, 0x7, 0xB, 0xF, 0x0, 0x1))
        elif fragmenting and rng.random() < 0.7:
            opcode = rng.choice((0x0, 0x0, 0x9, 0xA))
        else:
            opcode = rng.choice((0x1, 0x1, 0x2, 0x8, 0x9, 0xA))
        fin = 0x80 if opcode >= 0x8 or rng.random() < 0.7 else 0
        if rng.random() < bad:
            fin ^= 0x80
        if opcode in (0x1, 0x2):
            fragmenting = not fin
        elif opcode == 0x0 and fin:
            fragmenting = False
        rsv = 0x40 if (mode & 0x01 and opcode in (0x1, 0x2) and rng.random() < 0.5) else 0
        if rng.random() < bad:
            rsv |= rng.choice((0x10, 0x20, 0x40))
        flags = rng.randrange(256)
        if rng.random() >= bad:
            flags &= ~0x0C  # masked
        if rng.random() < 0.9:
            flags &= ~0x02  # not repeated: keep most payloads small
        if rng.random() < 0.9:
            flags &= ~0x30  # minimal length encoding
        if rsv & 0x40 and rng.random() >= bad:
            flags |= 0x01  # really compress it
        n = rng.randrange(30 if opcode >= 0x8 else 49)  # <= 4 bytes each: fits in 199
        text = "".join(rng.choice("aé€😀\ud7ff") for _ in range(n))
        payload = text.encode("utf-8")
        if rng.random() < bad:
            payload = payload[: rng.randrange(len(payload) + 1)]  # may cut a character
        if rng.random() < bad * 3:
            payload = bytes(rng.randrange(256) for _ in range(len(payload)))
        if opcode == 0x8 and rng.random() < 0.7:
            code = rng.choice((1000, 1001, 3000, 4999) if rng.random() >= bad else (999, 1005))
            payload = code.to_bytes(2, "big") + payload
        body += bytes((fin | rsv | opcode, flags, len(payload))) + payload
        if flags & 0x02:
            body.append(rng.randrange(4))
        if (flags >> 4) & 0x03 == 3:
            body.append(rng.choice((0, 0, 1, 0x80)))
        if not (flags & 0x04 and flags & 0x08):
            body += bytes(rng.randrange(256) for _ in range(4))
    body.append(rng.randrange(256))  # chunking seed
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        body[rng.randrange(len(body))] = rng.randrange(256)
    return bytes(body)


def main(argv: list[str]) -> int:
    """Entry point: ``--selftest [N]`` without atheris, else hand over to atheris."""
    if len(argv) > 1 and argv[1] == "--selftest":
        count = int(argv[2]) if len(argv) > 2 else 2000
        rng = random.Random(int(os.environ.get("FUZZ_SEED", "1234")))
        for i in range(count):
            data = _random_input(rng)
            try:
                TestOneInput(data)
            except Exception:
                print(f"input {i} failed: {data.hex()}", file=sys.stderr)
                raise
        print(f"selftest: {count} inputs passed")
        return 0
    atheris = importlib.import_module("atheris")  # only in the fuzzing venv

    atheris.instrument_all()
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
