"""A frame meter for the bytes an HTTP/2 client sends, read before ``h2`` buffers them.

Theory of operation
-------------------
``h2`` parses frames and keeps an unfinished header block (a HEADERS frame and its
CONTINUATION frames, RFC 9113 section 6.10) until the block ends, and answers every
PING and SETTINGS frame with an ACK it queues for us to write. Neither is bounded in
a way we choose: a block may span 64 frames of up to ``--h2-max-frame-size`` each, and
a client that sends pings without reading what we write grows our write buffer.

``FrameMeter.feed`` walks the 9-byte frame headers of the same bytes (RFC 9113
section 4.1) without copying payloads, keeping the byte count of the header block in
progress and counting the frames the protocol limits: RST_STREAM (rapid reset, CVE-2023-44487)
and PING and SETTINGS that call for an ACK (floods). The protocol reads and clears
the counts after each ``feed``. It knows nothing of streams, HPACK or asyncio; ``h2``
still validates every frame.

Invariant: ``feed`` sees exactly the bytes ``h2`` sees, in order, starting with the
24-byte connection preface.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PREFACE", "FrameMeter"]

#: The client connection preface (RFC 9113 section 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x9
_END_HEADERS, _ACK = 0x4, 0x1


class FrameMeter:
    """Follows frame boundaries; measures header blocks and counts control frames."""

    __slots__ = (
        "_block",
        "_partial",
        "_skip",
        "block_limit",
        "control",
        "frame_size_error",
        "resets",
    )

    def __init__(self, block_limit: int) -> None:
        #: Largest header block (HEADERS plus CONTINUATION payloads) accepted, in bytes.
        self.block_limit = block_limit
        #: PING and SETTINGS frames that ask for an ACK, since the protocol last cleared it.
        self.control = 0
        #: RST_STREAM frames, since the protocol last cleared it.
        self.resets = 0
        #: ``feed`` returned False for a SETTINGS ACK with a payload, not a header block.
        self.frame_size_error = False
        self._skip = len(PREFACE)  # bytes of the current payload (or preface) still to pass
        self._partial = b""  # the start of a frame header split across reads
        self._block = 0  # bytes of the header block in progress

    def feed(self, data: bytes) -> bool:
        """Account for ``data``; False when a header block grew past ``block_limit``.

        Also False for a SETTINGS ACK that has a payload, a connection error of type
        FRAME_SIZE_ERROR (RFC 9113 section 6.5) that ``h2`` reports as PROTOCOL_ERROR;
        ``frame_size_error`` is then set.
        """
        n = len(data)
        pos = self._skip
        if self._partial:  # then _skip is 0: a frame header continues here
            need = 9 - len(self._partial)
            head = self._partial + data[:need]
            if len(head) < 9:
                self._partial = head
                return True
            self._partial = b""
            length = self._frame(head, 0)
            if length < 0:
                return False
            pos = need + length
        while pos + 9 <= n:
            length = self._frame(data, pos)
            if length < 0:
                return False
            pos += 9 + length
        if pos >= n:
            self._skip = pos - n
        else:
            self._skip = 0
            self._partial = data[pos:]
        return True

    def _frame(self, buf: bytes, at: int) -> int:
        """Account for the frame whose header starts at ``buf[at]``; its length, or -1."""
        length = buf[at] << 16 | buf[at + 1] << 8 | buf[at + 2]
        ftype = buf[at + 3]
        if ftype in (_HEADERS, _CONTINUATION):
            # A new HEADERS frame starts a block (h2 refuses one inside another).
            block = length if ftype == _HEADERS else self._block + length
            if block > self.block_limit:
                return -1
            self._block = 0 if buf[at + 4] & _END_HEADERS else block
        elif ftype == _RST_STREAM:
            self.resets += 1
        elif ftype in (_PING, _SETTINGS):
            if not buf[at + 4] & _ACK:
                self.control += 1
            elif ftype == _SETTINGS and length:
                self.frame_size_error = True
                return -1
        return length
