"""Trusted proxy headers: ``X-Forwarded-For`` and ``X-Forwarded-Proto``.

Only a peer in ``--forwarded-allow-ips`` is believed. ``X-Forwarded-For`` lists
addresses from the original client to the last proxy; we walk it from the
right, skipping trusted proxies, and take the first untrusted address as the
client. That way a client cannot forge its address by sending the header
itself: its own value ends up left of the address our proxy appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["ProxyTrust"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyTrust:
    """Decides which peers' forwarding headers to believe."""

    def __init__(self, allowed: Iterable[str]) -> None:
        entries = list(allowed)
        self.trust_all = "*" in entries
        self.networks: list[_Network] = [
            ipaddress.ip_network(e, strict=False) for e in entries if e != "*"
        ]
        self._cache: dict[str, bool] = {}

    def is_trusted(self, host: str) -> bool:
        if self.trust_all:
            return True
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            result = False
        else:
            result = any(addr in net for net in self.networks)
        if len(self._cache) < 4096:
            self._cache[host] = result
        return result

    def client_from(self, forwarded_for: bytes) -> str | None:
        """The client address named by an ``X-Forwarded-For`` value, or None."""
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        hops = [h for h in hops if h]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else None
