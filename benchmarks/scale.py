#!/usr/bin/env python3
"""Scale: N idle WebSockets on one box, all answering a ping at the end (issue 18, part 1).

Usage::

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/scale.py
    .venv/bin/python benchmarks/scale.py --sizes 10000 --runs echo/tidings
    .venv/bin/python benchmarks/scale.py --smoke          # 300 connections, seconds

Runs (``--runs``, default all three):

* ``echo/tidings``: the bare ASGI echo app (``ws_echo_app.py``) on ``tidings serve``;
* ``chat/tidings``: the example chat consumer behind ``AllowedHostsOriginValidator`` and
  ``AuthMiddlewareStack``, every client logged in with a session cookie made beforehand
  (``scale_chat_app.py``; database sessions in SQLite, the in-memory channel layer);
* ``chat/channels``: the same consumer code on Channels 4 + uvicorn (websockets-sansio
  backend), installed in the peers' venv (``_peers.py``).

For each size N (``--sizes``, default 10,000, 50,000 and 100,000) the server gets
``ceil(N / --per-worker)`` worker processes (``--workers`` for Tidings and uvicorn: both
fork workers that share one listening socket, and the kernel hands each accepted
connection to whichever worker accepts first), because one process may hold at most
20,000 open files here. The load is ``ceil(N / --per-client)`` processes of
``_scale_client.py`` (a minimal asyncio WebSocket client), each binding its sockets to
source addresses of its own in 127.0.0.0/8 so ephemeral ports never run out, together
opening at most ``--rate`` connections a second.

Measured, in this order:

1. baseline: after a warm-up (a few connections per worker opened, pinged and closed,
   so that lazy imports and caches are paid for), the RSS of the server's whole process
   tree (from ``/proc/<pid>/status``) and ``/proc/net/sockstat``;
2. the N connections are opened; connect rate = connections / seconds until the last
   handshake completed;
3. 3 s later, idle: RSS again (per connection = growth / N), the open files of each
   worker (how evenly the kernel spread the connections), the kernel's TCP buffer
   memory (``TCP: mem`` in ``/proc/net/sockstat``, pages of 4 KiB) and its
   unreclaimable slab (``SUnreclaim`` in ``/proc/meminfo``: socket structures, files),
   both for the two ends of every loopback connection, per pair;
4. every connection gets one text message and must answer it (the echo app echoes it;
   the chat consumer answers ``pong``): round trip p50/p99 and how many answered.

Each size gives up after ``N / rate * 3 + 300`` seconds of connecting (recorded as
``gave_up``); every process started here is stopped by its PID. Results go to
``benchmarks/results/scale.json``, keeping the runs and sizes of the previous file that
this invocation did not measure (so sizes can be measured one at a time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import (  # noqa: E402
    RESULTS,
    ROOT,
    free_port,
    peers_python,
    result_header,
    stop,
    wait_port,
    write_results,
)

PEER_PACKAGES = ["uvicorn[standard]", "websockets", "channels"]
RUNS = ("echo/tidings", "chat/tidings", "chat/channels")
SIZES = (10_000, 50_000, 100_000)
#: Connections per server worker and per client process: under the 20,000 open files
#: a process may hold here, with room for an uneven spread over the workers (at 2,000
#: new connections a second the kernel hands some workers half as many again as the
#: average: with 15,000 a worker, two of seven reached --max-connections at 100,000).
PER_WORKER = 12_000
PER_CLIENT = 15_000
PAGE_KIB = 4


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, ppid in parent.items() if ppid == pid)
    return found


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _tcp_mem_pages() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def _slab_kib() -> int:
    """The kernel's unreclaimable slab memory (sockets, files, inodes live there)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SUnreclaim:"):
            return int(line.split()[1])
    return 0


def _sample(server: int) -> dict[str, Any]:
    pids = _tree(server)
    return {
        "rss_kib": sum(_status_kib(pid, "VmRSS:") for pid in pids),
        "open_files": {pid: _open_files(pid) for pid in pids},
        "tcp_mem_pages": _tcp_mem_pages(),
        "slab_kib": _slab_kib(),
    }


def _server_command(run: str, port: int, workers: int) -> list[str]:
    app, framework = run.split("/")
    target = "ws_echo_app:app" if app == "echo" else "scale_chat_app:application"
    common = ["--app-dir", str(HERE), "--port", str(port), "--workers", str(workers),
              "--lifespan", "off", "--no-access-log", "--log-level", "warning",
              "--backlog", "4096"]  # fmt: skip
    if framework == "tidings":
        return [sys.executable, "-m", "tidings", "serve", target, *common,
                "--max-connections", "19500"]  # fmt: skip
    uvicorn = peers_python(PEER_PACKAGES).parent / "uvicorn"
    return [str(uvicorn), target, *common, "--loop", "uvloop", "--http", "httptools",
            "--ws", "websockets-sansio"]  # fmt: skip


def _read_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any] | None:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return None
            parsed: dict[str, Any] = json.loads(line)
            return parsed
        if proc.poll() is not None:
            return None
    return None


class _Clients:
    """The load processes of one measurement, talking JSON lines over pipes."""

    def __init__(self, settings: dict[str, Any], total: int, rate: float, log: IO[bytes]):
        count = max(1, math.ceil(total / PER_CLIENT))
        self.procs: list[subprocess.Popen[str]] = []
        for k in range(count):
            share = total // count + (1 if k < total % count else 0)
            mine = {**settings, "count": share, "rate": rate / count,
                    "inflight": max(20, 200 // count),
                    "source_offset": k * 2000, "sources": 250,
                    "timeout": total / rate * 3 + 300}  # fmt: skip
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "_scale_client.py"), json.dumps(mine)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )

    def collect(self, deadline: float) -> list[dict[str, Any] | None]:
        return [_read_line(proc, deadline) for proc in self.procs]

    def command(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write(word + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass

    def stop(self) -> None:
        self.command("close")
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _merge_pings(parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    got = [p for p in parts if p]
    answered = sum(p["answered"] for p in got)
    # Percentiles of the clients' own percentiles, weighted by count: close enough
    # for a figure about liveness (each client holds an equal share).
    return {
        "answered": answered,
        "lost": sum(p["lost"] for p in got),
        "p50_ms": max((p["p50_ms"] for p in got), default=-1.0),
        "p99_ms": max((p["p99_ms"] for p in got), default=-1.0),
        "max_ms": max((p["max_ms"] for p in got), default=-1.0),
        "clients_failed": len(parts) - len(got),
    }


def measure(
    run: str, size: int, options: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    workers = max(1, math.ceil(size / options.per_worker))
    port = free_port()
    settings = {"port": port, "path": "/", "ping": "ping", "cookie": None}
    if run.startswith("chat/"):
        settings.update(path="/ws/chat/lobby/", ping='{"type": "ping"}', cookie=env["BENCH_COOKIE"])
    result: dict[str, Any] = {"size": size, "workers": workers}
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            _server_command(run, port, workers), env=env, stdout=log, stderr=log
        )
        try:
            wait_port(port, server, timeout=60)
            time.sleep(2.0)  # every worker imported the app and listens
            warm = _Clients(settings, 50 * workers, 200, log)
            warm.collect(time.monotonic() + 60)
            warm.command("ping")
            warm.collect(time.monotonic() + 60)
            warm.stop()
            time.sleep(2.0)
            base = _sample(server.pid)
            clients = _Clients(settings, size, options.rate, log)
            try:
                result.update(_load(clients, server.pid, base, size, options))
            finally:
                clients.stop()
        finally:
            stop(server)
            log.seek(0)
            tail = log.read().decode(errors="replace")[-1500:]
            if tail.strip():
                result["log_tail"] = tail
    return result


def _load(
    clients: _Clients, server: int, base: dict[str, Any], size: int, options: argparse.Namespace
) -> dict[str, Any]:
    limit = size / options.rate * 3 + 300
    opened = clients.collect(time.monotonic() + limit)
    connected = sum(p["connected"] for p in opened if p)
    seconds = max((p["seconds"] for p in opened if p), default=0.0)
    out: dict[str, Any] = {
        "connected": connected,
        "failed": sum(p["failed"] for p in opened if p),
        "connect_seconds": round(seconds, 2),
        "connect_rate_per_s": round(connected / seconds, 1) if seconds else 0.0,
        "gave_up": any(p is None for p in opened) or connected < size,
    }
    time.sleep(3.0)
    idle = _sample(server)
    grown = idle["rss_kib"] - base["rss_kib"]
    out["rss_baseline_kib"] = base["rss_kib"]
    out["rss_idle_kib"] = idle["rss_kib"]
    out["kib_per_connection"] = round(grown / max(1, connected), 2)
    tcp_pages = idle["tcp_mem_pages"] - base["tcp_mem_pages"]
    out["tcp_mem_kib"] = tcp_pages * PAGE_KIB
    out["tcp_mem_kib_per_connection_pair"] = round(tcp_pages * PAGE_KIB / max(1, connected), 3)
    # Both ends are on this host: the client's sockets count as much as the server's.
    slab = idle["slab_kib"] - base["slab_kib"]
    out["kernel_slab_kib_per_connection_pair"] = round(slab / max(1, connected), 2)
    spread = sorted(
        (idle["open_files"].get(pid, 0) - files for pid, files in base["open_files"].items()),
        reverse=True,
    )
    out["connections_per_process"] = [n for n in spread if n > 0]
    clients.command("ping")
    out["ping"] = _merge_pings(clients.collect(time.monotonic() + 120))
    out["all_answered"] = out["ping"]["answered"] == size
    return out


def _prepare_chat(framework: str, env: dict[str, str], workdir: Path) -> None:
    """Make the SQLite database, the user and its session; put the cookie in ``env``."""
    python = sys.executable if framework == "tidings" else str(peers_python(PEER_PACKAGES))
    env["BENCH_DB"] = str(workdir / f"{framework}.sqlite3")
    done = subprocess.run(
        [python, str(HERE / "scale_chat_app.py"), "setup"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    env["BENCH_COOKIE"] = done.stdout.strip().splitlines()[-1]


def _summary(run: str, got: dict[str, Any]) -> str:
    ping = got.get("ping", {})
    return (
        f"{run:14} {got['size']:>7} conns, {got['workers']} workers: "
        f"connected {got.get('connected', 0)} at {got.get('connect_rate_per_s', 0):.0f}/s, "
        f"{got.get('kib_per_connection', float('nan')):.2f} KiB RSS/conn, "
        f"TCP mem {got.get('tcp_mem_kib_per_connection_pair', float('nan')):.2f} KiB/pair, "
        f"slab {got.get('kernel_slab_kib_per_connection_pair', float('nan')):.2f} KiB/pair, "
        f"ping answered {ping.get('answered', 0)} p50 {ping.get('p50_ms', -1):.1f} ms "
        f"p99 {ping.get('p99_ms', -1):.1f} ms, spread {got.get('connections_per_process')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--rate", type=float, default=2000.0, help="new connections a second")
    parser.add_argument("--per-worker", type=int, default=PER_WORKER)
    parser.add_argument("--smoke", action="store_true", help="300 connections; no result file")
    parser.add_argument("--output", default="scale", help="result file name (results/NAME.json)")
    options = parser.parse_args()
    sizes = [300] if options.smoke else [int(n) for n in options.sizes.split(",") if n]
    runs = [run for run in options.runs.split(",") if run]
    if unknown := set(runs) - set(RUNS):
        parser.error(f"unknown runs {sorted(unknown)}; choose from {list(RUNS)}")
    if any(n > 19_000 * 50 for n in sizes) or min(sizes) < 1:
        parser.error("--sizes: between 1 and 950,000 connections")
    payload = result_header(options.output)
    payload["settings"] = {"rate": options.rate, "per_worker": options.per_worker,
                           "per_client": PER_CLIENT, "layer": "in-memory (chat runs)",
                           "sessions": "django.contrib.sessions.backends.db on SQLite"}  # fmt: skip
    payload["results"] = {}
    workdir = Path(tempfile.mkdtemp(prefix="tidings-scale."))
    try:
        for run in runs:
            env = {**os.environ, "PYTHONPATH": str(HERE)}
            app, framework = run.split("/")
            env["BENCH_PREFIX"] = framework
            if app == "chat":
                _prepare_chat(framework, env, workdir)
            for size in sizes:
                got = measure(run, size, options, env)
                payload["results"].setdefault(run, []).append(got)
                print(_summary(run, got), flush=True)
                if got.get("gave_up"):
                    print(f"{run}: gave up at {size}; larger sizes skipped", flush=True)
                    break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    payload["ratios"] = _ratios(payload["results"])
    for name, value in payload["ratios"].items():
        print(f"ratio {name}: {value:.3f}")
    if not options.smoke:
        _keep_other_results(payload)
        path = write_results(payload)
        print(f"wrote {path.relative_to(ROOT)}")


def _keep_other_results(payload: dict[str, Any]) -> None:
    """Carry over the runs and sizes of the last result file that this run did not measure."""
    try:
        old = json.loads((RESULTS / f"{payload['benchmark']}.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        return
    for run, entries in old.items():
        have = {entry["size"] for entry in payload["results"].get(run, [])}
        kept = [entry for entry in entries if entry["size"] not in have]
        merged = sorted(payload["results"].get(run, []) + kept, key=lambda e: e["size"])
        payload["results"][run] = merged
    payload["ratios"] = _ratios(payload["results"])


def _ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Tidings' chat memory per connection over Channels', at each size both reached."""
    ours = {r["size"]: r for r in results.get("chat/tidings", []) if not r.get("gave_up")}
    theirs = {r["size"]: r for r in results.get("chat/channels", []) if not r.get("gave_up")}
    return {
        f"chat kib_per_connection tidings/channels at {size}": ours[size]["kib_per_connection"]
        / theirs[size]["kib_per_connection"]
        for size in sorted(ours.keys() & theirs.keys())
        if theirs[size]["kib_per_connection"] > 0
    }


if __name__ == "__main__":
    main()
