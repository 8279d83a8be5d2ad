"""The permessage-deflate extension, server side (RFC 7692).

Theory of operation
-------------------
Negotiation (§5, §7.1): ``negotiate_deflate`` walks the client's extension offers in
order and accepts the first ``permessage-deflate`` offer whose parameters are valid and
acceptable; an offer with an unknown, duplicated or malformed parameter is declined
(§5.1) and the next one is tried. It returns the ``Sec-WebSocket-Extensions`` response
value and a ``PerMessageDeflate`` that holds the negotiated state for one connection.

Per-message work (§7.2):

* ``compress`` runs the message through a raw DEFLATE stream, ends it with a sync flush
  and strips the trailing ``00 00 ff ff`` (§7.2.1). Without context takeover the flush is
  a *full* flush, which resets the LZ77 window so the next message references nothing
  before it (§7.1.1.1) while keeping one compressor object per connection.
* ``decompress`` appends ``00 00 ff ff`` and inflates (§7.2.2) with an output cap: zlib
  never produces more than ``max_size + 1`` bytes, so a deflate bomb costs at most
  ``max_size`` of memory before it fails with close code 1009.

Window sizes: zlib cannot *compress* with an 8-bit window (it silently uses 9), so a
``server_max_window_bits=8`` offer is declined. Decompression always uses at least 9 bits,
which reads any stream produced with a smaller window.

Nothing here does I/O or knows about frames beyond the RSV1 bit's meaning.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tidings.wire.frames import CloseCode, ProtocolError
from tidings.wire.handshake import ExtensionOffer

__all__ = [
    "DEFAULT_COMPRESSION_LEVEL",
    "DEFAULT_MEMORY_LEVEL",
    "DEFAULT_MIN_COMPRESS_SIZE",
    "EXTENSION_NAME",
    "DeflateConfig",
    "PerMessageDeflate",
    "negotiate_deflate",
]

EXTENSION_NAME = "permessage-deflate"
#: zlib's own default: a good ratio for chat-like JSON at moderate CPU cost.
DEFAULT_COMPRESSION_LEVEL = 6
#: zlib's own default (256 KiB of compressor state with 15 window bits); lower it to
#: save memory per connection at some cost in ratio.
DEFAULT_MEMORY_LEVEL = 8
#: Messages shorter than this are sent uncompressed (RFC 7692 §6 lets every message
#: choose): below ~128 bytes the block overhead eats the gain and the CPU cost dominates.
DEFAULT_MIN_COMPRESS_SIZE = 128

# RFC 7692 §7.2.1/§7.2.2: the tail of a sync flush, stripped by the sender, re-added by us.
_FLUSH_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class DeflateConfig:
    """Server-side permessage-deflate settings.

    Attributes:
        enabled: whether to accept permessage-deflate at all.
        server_max_window_bits: the largest LZ77 window we compress with (9-15); a
            smaller client request lowers it further.
        client_max_window_bits: the largest window we ask the client to compress with
            (8-15), when the client offers ``client_max_window_bits`` (§7.1.2.2).
        server_no_context_takeover: reset our compression context after every message
            (less memory traffic, worse ratio), even if the client did not ask.
        client_no_context_takeover: ask the client to reset its context every message.
        compression_level: zlib level 0-9.
        memory_level: zlib memLevel 1-9.
        min_size: messages shorter than this many bytes are sent uncompressed.
    """

    enabled: bool = True
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    memory_level: int = DEFAULT_MEMORY_LEVEL
    min_size: int = DEFAULT_MIN_COMPRESS_SIZE

    def __post_init__(self) -> None:
        if not 9 <= self.server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be 9-15 (zlib cannot compress with 8)")
        if not 8 <= self.client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be 8-15")
        if not 0 <= self.compression_level <= 9:
            raise ValueError("compression_level must be 0-9")
        if not 1 <= self.memory_level <= 9:
            raise ValueError("memory_level must be 1-9")
        if self.min_size < 0:
            raise ValueError("min_size must be >= 0")


class PerMessageDeflate:
    """Negotiated permessage-deflate state for one connection (RFC 7692 §7).

    Built by ``negotiate_deflate``; the constructor takes the *agreed* parameters.

    Args:
        server_max_window_bits: window for our compressor (9-15).
        client_max_window_bits: the largest window the client may use (8-15).
        server_no_context_takeover: reset our compression context after each message.
        client_no_context_takeover: the client resets its context after each message
            (informational: our decompressor reads such messages either way).
        compression_level: zlib level 0-9.
        memory_level: zlib memLevel 1-9.
        min_size: messages shorter than this are better sent uncompressed.
    """

    __slots__ = (
        "_compressor",
        "_compressor_args",
        "_decompressor",
        "_flush_mode",
        "_window_bits_in",
        "client_no_context_takeover",
        "min_size",
        "server_no_context_takeover",
    )

    def __init__(
        self,
        *,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 15,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        memory_level: int = DEFAULT_MEMORY_LEVEL,
        min_size: int = DEFAULT_MIN_COMPRESS_SIZE,
    ) -> None:
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.min_size = min_size
        # Negative wbits: a raw DEFLATE stream, no zlib header or checksum (§7.2.1).
        self._compressor_args = (
            compression_level,
            zlib.DEFLATED,
            -server_max_window_bits,
            memory_level,
        )
        self._flush_mode = zlib.Z_FULL_FLUSH if server_no_context_takeover else zlib.Z_SYNC_FLUSH
        self._window_bits_in = -max(9, client_max_window_bits)
        # Both zlib objects are made on first use: a compressor holds ~80 KiB of tables
        # from the start, and most connections (idle ones, short messages) never need it.
        self._compressor: Any = None
        self._decompressor: Any = None

    @property
    def allocated(self) -> bool:
        """Whether a zlib compressor or decompressor exists yet (they are made lazily)."""
        return self._compressor is not None or self._decompressor is not None

    def compress(self, payload: bytes) -> bytes:
        """Compress one message payload (RFC 7692 §7.2.1); set RSV1 on its first frame."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(*self._compressor_args)
        data: bytes = compressor.compress(payload) + compressor.flush(self._flush_mode)
        # Both flush modes end with an empty stored block, 00 00 ff ff: strip it.
        return data[:-4]

    def decompress(self, payload: bytes, *, max_size: int) -> bytes:
        """Decompress one message payload (RFC 7692 §7.2.2), producing at most ``max_size`` bytes.

        Raises:
            ProtocolError: 1009 if the output would exceed ``max_size`` (checked while
                inflating, so a deflate bomb never allocates more than that); 1007 if
                the data is not a valid DEFLATE stream. The object is unusable after
                either: the connection must be failed.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(self._window_bits_in)
        try:
            # max_length caps the output; anything beyond it stays in unconsumed_tail.
            data: bytes = decompressor.decompress(payload + _FLUSH_TAIL, max_size + 1)
        except zlib.error:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "invalid compressed data")
        if len(data) > max_size or decompressor.unconsumed_tail:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "decompressed message too big")
        if decompressor.eof:
            # A final block (BFINAL=1) ends the DEFLATE stream: the next message starts a
            # new one. (Without client context takeover we need not reset: a message
            # that references nothing before it inflates fine in a warm decompressor.)
            self._decompressor = None
        return data


def _window_bits(value: str | None) -> int | None:
    """A window-bits parameter value (RFC 7692 §7.1.2): "8".."15", no leading zero."""
    if value is None or len(value) > 2 or not value.isdigit() or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def _accept(offer: ExtensionOffer, config: DeflateConfig) -> tuple[bytes, PerMessageDeflate] | None:
    """Accept one permessage-deflate offer, or None to decline it (RFC 7692 §7.1)."""
    server_no_context = config.server_no_context_takeover
    server_bits = config.server_max_window_bits
    server_bits_offered = False
    client_bits_offered = False
    client_bits_limit = 15
    seen: set[str] = set()
    for name, value in offer.params:
        if name in seen:
            # §7.1: an offer with a duplicated parameter is declined.
            return None
        seen.add(name)
        if name == "server_no_context_takeover":
            # §7.1.1.1: no value; if offered we must honour it (and say so).
            if value is not None:
                return None
            server_no_context = True
        elif name == "client_no_context_takeover":
            # §7.1.1.2: no value; a hint only, we may ignore it.
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            # §7.1.2.1: a value 8-15 is required; we answer with the same or a smaller one.
            bits = _window_bits(value)
            if bits is None or bits < 9:
                # zlib cannot compress with an 8-bit window: decline.
                return None
            server_bits = min(server_bits, bits)
            server_bits_offered = True
        elif name == "client_max_window_bits":
            # §7.1.2.2: no value (the client supports the parameter) or a value 8-15.
            client_bits_offered = True
            if value is not None:
                bits = _window_bits(value)
                if bits is None:
                    return None
                client_bits_limit = bits
        else:
            # §7.1: unknown parameter => decline this offer.
            return None

    parts = [EXTENSION_NAME]
    if server_no_context:
        parts.append("server_no_context_takeover")
    if config.client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_bits_offered:
        parts.append(f"server_max_window_bits={server_bits}")
    client_bits = 15
    if client_bits_offered:
        # §7.1.2.2: only answered when offered; lower than the client's own cap or useless.
        client_bits = min(config.client_max_window_bits, client_bits_limit)
        if client_bits < client_bits_limit:
            parts.append(f"client_max_window_bits={client_bits}")
    deflate = PerMessageDeflate(
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
        server_no_context_takeover=server_no_context,
        client_no_context_takeover=config.client_no_context_takeover,
        compression_level=config.compression_level,
        memory_level=config.memory_level,
        min_size=config.min_size,
    )
    return "; ".join(parts).encode("ascii"), deflate


def negotiate_deflate(
    offers: Sequence[ExtensionOffer], config: DeflateConfig | None = None
) -> tuple[bytes, PerMessageDeflate] | None:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 §5, §7.1).

    Args:
        offers: the client's extension offers, in order (``HandshakeRequest.extensions``).
        config: server settings; defaults to ``DeflateConfig()``.

    Returns:
        ``(Sec-WebSocket-Extensions response value, PerMessageDeflate)``, or None when
        deflate is disabled or every offer was declined (the connection then proceeds
        without compression).
    """
    if config is None:
        config = DeflateConfig()
    if not config.enabled:
        return None
    for offer in offers:
        if offer.name == EXTENSION_NAME:
            accepted = _accept(offer, config)
            if accepted is not None:
                return accepted
    return None
