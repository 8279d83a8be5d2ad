"""Socket addresses of connections, held once per process.

A connection's scope carries its client's and its server's address for as long as it
lives (a WebSocket, for hours); every connection to a listener has the same server
address, and behind a proxy or NAT many share one client host. ``socket_addresses``
gives the ASGI ``client`` and ``server`` of a transport, each value the equal one this
process already holds when there is one. HTTP/1.1 and HTTP/2 connections both use it.

What must not go here: anything per request, proxy headers (``_proxy``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, TypeVar

__all__ = ["socket_addresses"]

_A = TypeVar("_A", str, tuple[str, int], tuple[str, None])

#: The addresses held. Bounded: past ``_ADDRESSES_MAX`` distinct values a new
#: one stays the connection's own, so a spread of clients costs the table nothing more.
_ADDRESSES_MAX: Final = 4096
_addresses: dict[Any, Any] = {}


def _shared_address(value: _A) -> _A:
    """``value`` (a host string or an address tuple), or the equal one already held."""
    same: _A | None = _addresses.get(value)
    if same is not None:
        return same
    if len(_addresses) < _ADDRESSES_MAX:
        _addresses[value] = value
    return value


def socket_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[tuple[str, int] | None, tuple[str, int | None] | None]:
    """The ASGI ``client`` and ``server`` of a connection (shared: see ``_addresses``).

    ``client`` is None for a Unix socket's peer; ``server`` is ``(path, None)`` there.
    """
    client: tuple[str, int] | None = None
    server: tuple[str, int | None] | None = None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        client = (_shared_address(str(peer[0])), int(peer[1]))
    sock = transport.get_extra_info("sockname")
    if isinstance(sock, tuple) and len(sock) >= 2:
        server = _shared_address((str(sock[0]), int(sock[1])))
    elif isinstance(sock, str) and sock:
        server = _shared_address((sock, None))
    return client, server
