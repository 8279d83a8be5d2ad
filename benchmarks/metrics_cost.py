"""What ``--metrics-bind`` costs: HTTP hello world and WebSocket echo, metrics on vs off.

Both sides are this tree's ``tidings serve`` in the same run, one worker, access log
off, pinned to CPU 0 (with metrics on, its supervisor too: it answers a snapshot
request once a second); the load runs pinned to CPU 1. Rounds alternate the order of
the two sides. The loads are those of ``ab.py``:

* HTTP: ``benchmarks/apps.py:hello`` under ``wrk -t1 -c64`` (or ``h2load --h1 -c64``
  when wrk is missing), after a 1 s warm-up: requests/s;
* WebSocket: the ``ws_echo.py`` client, 100 connections echoing 32-byte text frames
  against ``ws_echo_app.py``: messages/s.

With metrics on, each round ends with a scrape that must show the load's requests or
messages counted (so the "on" side really counted). Printed: the median of each side
and on/off (the target is at least 0.97).

A shared VM swings by 15 % or more between rounds, more than the few percent measured
here, so each round also measures the CPU time the worker process spends per unit of a
sequential load (``--requests`` GETs and ``--messages`` 32-byte echoes, one
connection, after a warm-up; from ``/proc/PID/schedstat``, in nanoseconds), which
other processes on the machine disturb less than a rate. Less, but still a lot on a
busy machine: so last, the same sequential loads (``--counted`` of each) are counted in
CPU instructions with callgrind, as ``ab_instructions.py`` does, which gives the same
figure from run to run. That count runs the server in one process with the counters
switched on as in a worker (the supervisor's once-a-second snapshot, a few
microseconds a second, is left out). off/on instructions is the speed ratio when the
worker is CPU-bound. Everything goes to ``results/metrics_cost.json``::

    python benchmarks/metrics_cost.py [--rounds 4] [--duration 4] [--only http|ws]
        [--requests 20000] [--messages 20000] [--counted 2000]

``--rounds 0`` runs the instruction count alone (about 20 s): the figure to check a
change of the hot paths against the 3 % budget (off/on at least 0.97).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import ROOT, free_port, pinned, result_header, stop, wait_port, write_results
from ab_instructions import STARTUP_TIMEOUT, http_load, ws_load

HERE = ROOT / "benchmarks"


class Served:
    """``tidings serve APP`` with metrics on (a metrics port) or off."""

    def __init__(self, app: str, *, metrics: bool) -> None:
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        cmd = [sys.executable, "-m", "tidings", "serve", app, "--app-dir", str(HERE)]
        cmd += ["--port", str(self.port), "--lifespan", "off", "--no-access-log"]
        cmd += ["--log-level", "warning"]
        if self.metrics_port is not None:
            cmd += ["--metrics-bind", f"127.0.0.1:{self.metrics_port}"]
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(pinned(cmd, 0), env=env, cwd=tempfile.gettempdir())
        wait_port(self.port, self.proc)

    def counted(self, name: str) -> float:
        """The sum of the samples of ``name`` in a scrape (0 with metrics off)."""
        if self.metrics_port is None:
            return 0.0
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def stop(self) -> None:
        stop(self.proc)


def http_rps(metrics: bool, duration: int) -> float:
    served = Served("apps:hello", metrics=metrics)
    try:
        url = f"http://127.0.0.1:{served.port}/"
        if shutil.which("wrk"):
            warm = ["wrk", "-t1", "-c64", "-d1s", url]
            cmd, pattern = (
                ["wrk", "-t1", "-c64", f"-d{duration}s", url],
                r"Requests/sec:\s+([\d.]+)",
            )
        else:
            warm = ["h2load", "--h1", "-t1", "-c64", "-D1", url]
            cmd = ["h2load", "--h1", "-t1", "-c64", f"-D{duration}", url]
            pattern = r"finished in [\d.]+\w*, ([\d.]+) req/s"
        subprocess.run(pinned(warm, 1), capture_output=True, check=True)
        out = subprocess.run(pinned(cmd, 1), capture_output=True, text=True, check=True).stdout
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"no rate in the load tool's output:\n{out}")
        if metrics and served.counted("tidings_http_request_duration_seconds_count") < 1000:
            raise RuntimeError("metrics on, but the requests were not counted")
        return float(match.group(1))
    finally:
        served.stop()


def ws_rate(metrics: bool, duration: int) -> float:
    served = Served("ws_echo_app:app", metrics=metrics)
    try:
        cmd = [sys.executable, str(HERE / "ws_echo.py"), "--client", "throughput"]
        cmd += ["--port", str(served.port), "--size", "32", "--conns", "100"]
        cmd += ["--duration", str(duration)]
        out = subprocess.run(
            pinned(cmd, 1), capture_output=True, text=True, timeout=duration + 120, check=True
        )
        rate: float = json.loads(out.stdout.strip().splitlines()[-1])["messages_per_s"]
        if metrics and served.counted('tidings_websocket_messages_total{direction="in"}') < 1000:
            raise RuntimeError("metrics on, but the messages were not counted")
        return rate
    finally:
        served.stop()


def _cpu_ns(pid: int) -> int:
    """Nanoseconds ``pid`` (all its threads) has run on a CPU (``/proc/PID/schedstat``)."""
    return sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
    )


def cpu_per_unit(metrics: bool, bench: str, units: int) -> float:
    """CPU nanoseconds the worker spends per request or message of a sequential load."""
    served = Served("apps:hello" if bench == "http" else "ws_echo_app:app", metrics=metrics)
    try:
        worker = served.proc.pid
        if metrics:  # the supervisor's one child serves
            children = Path(f"/proc/{worker}/task/{worker}/children")
            deadline = time.monotonic() + 20
            while not children.read_text().split() and time.monotonic() < deadline:
                time.sleep(0.05)
            worker = int(children.read_text().split()[0])
        load = http_load if bench == "http" else ws_load
        load(served.port, 500)  # warm-up, not counted
        before = _cpu_ns(worker)
        load(served.port, units)
        return (_cpu_ns(worker) - before) / units
    finally:
        served.stop()


# The server of the instruction count: this tree's ``tidings serve`` in one process, with
# the counters on (``sys.argv[1] == "on"``) exactly as a worker of ``--metrics-bind``
# has them: the hot paths run as there; only the snapshot a supervisor asks for once a
# second is missing (a few microseconds a second).
_COUNTED_SERVER = """
import sys
from tidings import _metrics
if sys.argv[1] == "on":
    _metrics.enable()
from tidings.server._cli import main
sys.exit(main(["serve", *sys.argv[2:]]))
"""


def instructions(metrics: bool, bench: str, units: int) -> float:
    """Instructions the server executes per request or message, counted by callgrind."""
    app = "apps:hello" if bench == "http" else "ws_echo_app:app"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-metrics-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        cmd += [f"--callgrind-out-file={out}", sys.executable, "-c", _COUNTED_SERVER]
        cmd += ["on" if metrics else "off", app, "--app-dir", str(HERE), "--port", str(port)]
        cmd += ["--lifespan", "off", "--no-access-log", "--log-level", "warning"]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc, timeout=STARTUP_TIMEOUT)
            load = http_load if bench == "http" else ws_load
            load(port, 200)  # warm-up, not counted
            control = ["callgrind_control"]
            subprocess.run([*control, "--instr=on", str(proc.pid)], check=True, capture_output=True)
            load(port, units)
            subprocess.run([*control, "--dump", str(proc.pid)], check=True, capture_output=True)
            dumps = sorted(out.parent.glob(out.name + ".*"))
            if not dumps:
                raise RuntimeError("callgrind wrote no dump")
            match = re.search(r"^totals:\s+(\d+)", dumps[-1].read_text(), re.MULTILINE)
            if match is None:
                raise RuntimeError(f"no totals in {dumps[-1]}")
            return int(match.group(1)) / units
        finally:
            stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--only", choices=("http", "ws"), help="run one of the two")
    parser.add_argument("--requests", type=int, default=20000, help="HTTP requests, CPU time")
    parser.add_argument("--messages", type=int, default=20000, help="WebSocket echoes, CPU time")
    parser.add_argument(
        "--counted", type=int, default=2000, help="requests and echoes under callgrind (0: none)"
    )
    args = parser.parse_args()
    if not (shutil.which("wrk") or shutil.which("h2load")):
        print("error: wrk or h2load is needed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {
        side: {"http": [], "ws": []} for side in ("off", "on")
    }
    for n in range(args.rounds):
        for side in ("off", "on") if n % 2 == 0 else ("on", "off"):
            for bench, measure in (("http", http_rps), ("ws", ws_rate)):
                if args.only in (None, bench):
                    figure = measure(side == "on", args.duration)
                    results[side][bench].append(figure)
                    print(f"round {n + 1} metrics {side:>3}: {bench} {figure:>9,.0f}", flush=True)
    payload = result_header("metrics_cost")
    payload.update(rounds=args.rounds, duration_s=args.duration, loads={})
    for bench, unit in (("http", "req/s"), ("ws", "msg/s")):
        if not results["off"][bench]:
            continue
        off = statistics.median(results["off"][bench])
        on = statistics.median(results["on"][bench])
        payload["loads"][bench] = {
            "unit": unit,
            "off": off,
            "on": on,
            "on_over_off": on / off,
            "rounds_off": results["off"][bench],
            "rounds_on": results["on"][bench],
        }
        print(
            f"{bench:>4}: metrics off {off:,.0f} {unit}, on {on:,.0f} {unit}, on/off {on / off:.3f}"
        )
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})  # the load: CPU 1
    cpu: dict[str, dict[str, list[float]]] = {
        side: {"http": [], "ws": []} for side in ("off", "on")
    }
    for n in range(args.rounds):
        for side in ("off", "on") if n % 2 == 0 else ("on", "off"):
            for bench, units in (("http", args.requests), ("ws", args.messages)):
                if args.only in (None, bench):
                    cpu[side][bench].append(cpu_per_unit(side == "on", bench, units))
                    print(
                        f"round {n + 1} metrics {side:>3}: {bench} CPU "
                        f"{cpu[side][bench][-1] / 1000:.1f} us per unit",
                        flush=True,
                    )
    payload["cpu_ns_per_unit"] = {}
    for bench in ("http", "ws"):
        if not cpu["off"][bench]:
            continue
        off, on = statistics.median(cpu["off"][bench]), statistics.median(cpu["on"][bench])
        payload["cpu_ns_per_unit"][bench] = {
            "off": off, "on": on, "off_over_on": off / on,
            "rounds_off": cpu["off"][bench], "rounds_on": cpu["on"][bench],
        }  # fmt: skip
        print(
            f"{bench:>4}: worker CPU per {'request' if bench == 'http' else 'message'}: "
            f"metrics off {off / 1000:.2f} us, on {on / 1000:.2f} us, off/on {off / on:.3f}",
            flush=True,
        )
    if args.counted and shutil.which("valgrind"):
        payload["instructions_per_unit"] = {}
        for bench in ("http", "ws"):
            if args.only not in (None, bench):
                continue
            off = instructions(False, bench, args.counted)
            on = instructions(True, bench, args.counted)
            payload["instructions_per_unit"][bench] = {
                "off": off, "on": on, "off_over_on": off / on, "units": args.counted,
            }  # fmt: skip
            print(
                f"{bench:>4}: instructions per {'request' if bench == 'http' else 'message'}: "
                f"metrics off {off:,.0f}, on {on:,.0f}, off/on {off / on:.4f}",
                flush=True,
            )
    print(f"wrote {write_results(payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
