"""HTTP/1.1 throughput: Tidings vs uvicorn (httptools + uvloop) vs granian, same run.

Each server runs one worker pinned to CPU 0 with access logs off; ``wrk -t1 -c64``
runs pinned to CPU 1. Three loads (hello world, a 64 KiB body, a 1 MiB streamed
body), several rounds alternating the servers; the median req/s and p99 latency
are printed with the ratios and written to ``benchmarks/results/http_hello.json``.

    python benchmarks/http_hello.py [--rounds 5] [--duration 8] [--servers tidings,uvicorn]

The peers are installed from PyPI into ``benchmarks/.venv-peers`` on first use.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import (
    ROOT,
    free_port,
    peers_python,
    pinned,
    result_header,
    stop,
    wait_port,
    write_results,
)

LOADS = {"hello": "/", "64k": "/", "stream-1m": "/"}
APPS = {"hello": "hello", "64k": "big", "stream-1m": "stream"}
PEER_PACKAGES = ["uvicorn[standard]", "granian"]


def server_cmd(name: str, app: str, port: int) -> list[str]:
    bench = str(ROOT / "benchmarks")
    peers_bin = peers_python(PEER_PACKAGES).parent
    if name == "tidings":
        return [
            str(ROOT / ".venv" / "bin" / "tidings"),
            "serve",
            f"apps:{app}",
            "--app-dir",
            bench,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    if name == "uvicorn":
        return [
            str(peers_bin / "uvicorn"),
            f"apps:{app}",
            "--app-dir",
            bench,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--lifespan",
            "off",
        ]
    if name == "granian":
        return [
            str(peers_bin / "granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-ws",
            "--log-level",
            "warning",
            "--working-dir",
            bench,
            f"apps:{app}",
        ]
    raise ValueError(name)


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def run_wrk(port: int, duration: int) -> tuple[float, float]:
    out = subprocess.run(
        pinned(
            [
                "wrk",
                "-t1",
                "-c64",
                f"-d{duration}s",
                "--latency",
                f"http://127.0.0.1:{port}/",
            ],
            1,
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(_RPS.search(out).group(1))  # type: ignore[union-attr]
    m = _P99.search(out)
    p99_ms = float("nan")
    if m:
        value, unit = float(m.group(1)), m.group(2)
        p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"    wrk reported: {errors.group(0)}", file=sys.stderr)
    return rps, p99_ms


def measure(name: str, load: str, duration: int) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen(pinned(server_cmd(name, APPS[load], port), 0), cwd=ROOT)
    try:
        wait_port(port, proc)
        run_wrk(port, 1)  # warm-up
        return run_wrk(port, duration)
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--servers", default="tidings,uvicorn,granian")
    parser.add_argument("--loads", default="hello,64k,stream-1m")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("error: wrk is missing (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    servers = args.servers.split(",")
    loads = args.loads.split(",")
    peers_python(PEER_PACKAGES)
    raw: dict[str, dict[str, list[tuple[float, float]]]] = {
        load: {s: [] for s in servers} for load in loads
    }
    for round_no in range(args.rounds):
        for load in loads:
            order = servers if round_no % 2 == 0 else list(reversed(servers))
            for name in order:
                rps, p99 = measure(name, load, args.duration)
                raw[load][name].append((rps, p99))
                print(f"round {round_no + 1} {load:9} {name:8} {rps:10.0f} req/s  p99 {p99:.2f} ms")
    summary: dict[str, dict[str, dict[str, float]]] = {}
    print()
    print(f"{'load':10}{'server':10}{'req/s':>12}{'p99 ms':>10}{'vs tidings':>12}")
    for load in loads:
        summary[load] = {}
        for name in servers:
            rps = statistics.median(r for r, _ in raw[load][name])
            p99 = statistics.median(p for _, p in raw[load][name])
            summary[load][name] = {"rps": rps, "p99_ms": p99}
        base = summary[load].get("tidings", {}).get("rps")
        for name in servers:
            rps = summary[load][name]["rps"]
            ratio = f"{base / rps:.2f}x" if base and name != "tidings" else ""
            print(f"{load:10}{name:10}{rps:12.0f}{summary[load][name]['p99_ms']:10.2f}{ratio:>12}")
    out = {
        **result_header("http_hello"),
        "method": f"wrk -t1 -c64 -d{args.duration}s, server on CPU 0, wrk on CPU 1, "
        f"median of {args.rounds} alternating rounds, access logs off",
        "results": summary,
        "rounds": raw,
    }
    write_results(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
