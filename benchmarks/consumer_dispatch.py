"""Consumer dispatch and in-memory group_send: Tidings vs Channels 4, same run.

(a) messages per second through an ``AsyncWebsocketConsumer`` echo driven by
    ``WebsocketCommunicator`` (send_to + receive_from round trips);
(b) in-memory ``group_send`` to groups of 100, 1,000 and 10,000 members: time for the
    ``group_send`` call, and until every member has received the message.

The same measuring code runs twice, once importing ``tidings.*`` in the project venv
and once importing ``channels.*`` in ``benchmarks/.venv-peers`` (Channels installed
from PyPI), each in its own process pinned to CPU 0.

    python benchmarks/consumer_dispatch.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import ROOT, peers_python, pinned, result_header, write_results

# Runs inside each venv; PREFIX is "tidings" or "channels".
MEASURE = r"""
import asyncio, json, sys, time
import django
from django.conf import settings

PREFIX, MESSAGES = sys.argv[1], int(sys.argv[2])
GROUP_SIZES = [int(x) for x in sys.argv[3].split(",")]
settings.configure(
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={"default": {"BACKEND": f"{PREFIX}.layers.InMemoryChannelLayer",
                                "CONFIG": {"capacity": 100000}}},
)
django.setup()
import importlib
generic = importlib.import_module(f"{PREFIX}.generic.websocket")
testing = importlib.import_module(f"{PREFIX}.testing")
layers = importlib.import_module(f"{PREFIX}.layers")


class Echo(generic.AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


async def dispatch():
    comm = testing.WebsocketCommunicator(Echo.as_asgi(), "/ws/")
    connected, _ = await comm.connect()
    assert connected
    for _ in range(200):  # warm-up
        await comm.send_to(text_data="x" * 32)
        await comm.receive_from()
    start = time.perf_counter()
    for _ in range(MESSAGES):
        await comm.send_to(text_data="x" * 32)
        await comm.receive_from()
    elapsed = time.perf_counter() - start
    await comm.disconnect()
    return MESSAGES / elapsed


async def group(size):
    layer = layers.InMemoryChannelLayer(capacity=100000)
    channels = [await layer.new_channel() for _ in range(size)]
    for name in channels:
        await layer.group_add("room", name)
    times, totals = [], []
    for _ in range(5):
        start = time.perf_counter()
        await layer.group_send("room", {"type": "chat.message", "text": "hello"})
        sent = time.perf_counter()
        for name in channels:
            await layer.receive(name)
        done = time.perf_counter()
        times.append((sent - start) * 1000)
        totals.append((done - start) * 1000)
    await layer.flush()
    return {"group_send_ms": sorted(times)[2], "all_received_ms": sorted(totals)[2]}


async def main():
    result = {"dispatch_msgs_per_s": await dispatch()}
    for size in GROUP_SIZES:
        result[f"group_{size}"] = await group(size)
    print(json.dumps(result))

asyncio.run(main())
"""

# channels.testing imports daphne, so the peer side needs it too.
PEERS = ["channels>=4,<5", "daphne", "Django>=4.2"]


def run(python: Path, prefix: str, messages: int, sizes: str) -> dict[str, object]:
    proc = subprocess.run(
        pinned([str(python), "-c", MEASURE, prefix, str(messages), sizes], 0),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    if proc.returncode:
        raise RuntimeError(f"{prefix} measurement failed:\n{proc.stderr}")
    out = proc.stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    ours = ROOT / ".venv" / "bin" / "python"
    theirs = peers_python(PEERS)
    runs: dict[str, list[dict[str, object]]] = {"tidings": [], "channels": []}
    for i in range(args.rounds):
        order = [("tidings", ours), ("channels", theirs)]
        if i % 2:
            order.reverse()
        for name, py in order:
            runs[name].append(run(py, name, args.messages, args.sizes))
            print(f"round {i + 1} {name}: {runs[name][-1]}")

    def med(name: str, key: str, sub: str | None = None) -> float:
        values = [r[key] if sub is None else r[key][sub] for r in runs[name]]  # type: ignore[index]
        return float(statistics.median(values))  # type: ignore[arg-type]

    summary: dict[str, dict[str, float]] = {}
    print()
    t, c = med("tidings", "dispatch_msgs_per_s"), med("channels", "dispatch_msgs_per_s")
    summary["dispatch_msgs_per_s"] = {"tidings": t, "channels": c, "ratio": t / c}
    print(
        f"dispatch via WebsocketCommunicator: tidings {t:,.0f} msg/s, channels {c:,.0f} msg/s, "
        f"{t / c:.1f}x"
    )
    for size in args.sizes.split(","):
        for sub in ("group_send_ms", "all_received_ms"):
            t = med("tidings", f"group_{size}", sub)
            c = med("channels", f"group_{size}", sub)
            summary[f"group_{size}_{sub}"] = {"tidings": t, "channels": c, "ratio": c / t}
            print(
                f"group_send to {size:>6} members, {sub:16}: tidings {t:8.2f} ms, "
                f"channels {c:8.2f} ms, {c / t:6.1f}x faster"
            )
    out = {
        **result_header("consumer_dispatch"),
        "method": f"{args.messages} echo round trips; group_send median of 5 per size; "
        f"median of {args.rounds} alternating rounds; each side pinned to CPU 0",
        "results": summary,
        "rounds": runs,
    }
    write_results(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
