"""How fast one client may open new sessions: a token bucket per client address.

Theory of operation
-------------------
:class:`OpenLimiter` belongs to one session manager. Each client address
(``scope["client"][0]``, which is the proxy-given address when the server
runs with ``--proxy-headers``) has a bucket of ``burst`` tokens that refills
at ``rate`` per second; opening a new session takes one, and an empty bucket
refuses (429). IPv6 addresses count per /64, the block one subscriber
usually gets, so that walking through one's own addresses gains nothing.
Resumes never come here.

The table is bounded: at most ``MAX_CLIENTS`` addresses are remembered; when
it is full, the least recently seen address is forgotten (its next request
starts with a full bucket again, which only ever lets more through).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from typing import Final

__all__ = ["MAX_CLIENTS", "OpenLimiter", "client_address"]

#: Client addresses remembered at once (a few hundred bytes each).
MAX_CLIENTS: Final = 65_536


def client_address(client: object) -> str | None:
    """The limiter key of a scope's ``client`` (IPv6 per /64); ``None`` if unknown."""
    if not isinstance(client, list | tuple) or not client or not isinstance(client[0], str):
        return None
    host = client[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a unix socket path or a name: one client
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{host}/64", strict=False))
    return str(address if address.version == 4 else address.ipv4_mapped)


class OpenLimiter:
    """A token bucket per client address (see the module docstring).

    Args:
        rate: tokens added per second.
        burst: the size of a bucket.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str | None, now: float) -> bool:
        """Take a token of ``client``'s bucket at time ``now``; ``False`` if it is empty."""
        if client is None:
            return True
        buckets = self._buckets
        tokens, then = buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[client] = (tokens, now)
        if len(buckets) > MAX_CLIENTS:
            buckets.popitem(last=False)
        return allowed

    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds a token again."""
        return max(1, math.ceil(1 / self.rate))
