"""The sender of the multi-host runs: ``group_send`` of numbered messages at a steady rate.

Run as ``python -m tests.multihost._sender REDIS_URL PREFIX GROUP_EXPIRY RATE``
in the root namespace. Message ``n + 1`` is due ``1 / RATE`` after message ``n``
was due, or at once if that time has passed: a send that takes long (Redis failing
over) delays the ones after it, which then go on at the same rate, with no burst
to catch up (an application sends as its events come). A send that fails is
logged as failed. Each attempt is one line on
standard output, flushed: ``n time ok`` (``time`` the wall clock when the send
returned, which the clients' arrival times share; ``ok`` 1 or 0). It stops at
SIGTERM, after the send in flight.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from tidings.exceptions import ChannelLayerUnavailable
from tidings.layers.redis import RedisChannelLayer

__all__ = ["main"]

GROUP = "feed"


async def main(url: str, prefix: str, group_expiry: float, rate: float) -> None:
    layer = RedisChannelLayer(
        hosts=[{"address": url, "cluster": True}], prefix=prefix, group_expiry=group_expiry
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    due = time.monotonic()
    n = 0
    while not stop.is_set():
        n += 1
        due = max(due + 1 / rate, time.monotonic()) if n > 1 else due
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        try:
            await layer.group_send(GROUP, {"type": "feed.message", "n": n})
            ok = 1
        except ChannelLayerUnavailable:
            ok = 0
        sys.stdout.write(f"{n} {time.time():.6f} {ok}\n")
        sys.stdout.flush()
    await layer.close_pools()


if __name__ == "__main__":
    url, prefix, expiry, rate = sys.argv[1:5]
    asyncio.run(main(url, prefix, float(expiry), float(rate)))
