"""Slow-client attacks against ``tidings serve`` with Debian's slowhttptest.

Runs slowloris (slow headers, -H) and R-U-Dead-Yet (slow body, -B) against an
echo server (it reads request bodies) with 3 s timeouts, while a probe makes
normal requests every 0.2 s. Passes when every normal request is answered and
the server sheds the attack's connections before the attack ends.

    python compliance/slowhttptest/run.py [--length 12] [--connections 400]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _probe(url: str, stop: threading.Event, results: list[bool]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                results.append(r.status == 200)
        except OSError:
            results.append(False)
        stop.wait(0.2)


def attack(mode: str, port: int, length: int, connections: int) -> tuple[str, bool]:
    """Run one slowhttptest mode; say how it ended and whether the server shed it."""
    cmd = [
        "slowhttptest",
        mode,
        "-c",
        str(connections),
        "-r",
        "200",
        "-i",
        "1",
        "-l",
        str(length),
        "-x",
        "16",
        "-p",
        "3",
        "-u",
        f"http://127.0.0.1:{port}/",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=length + 60).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # slowhttptest colours its report
    closed = max((int(m) for m in re.findall(r"closed:\s+(\d+)", out)), default=0)
    ended = re.search(r"Test ended on (\d+)\w* second\s+Exit status: ([^\n]*)", out)
    if ended is None:
        return "no report from slowhttptest", False
    second, status = int(ended.group(1)), ended.group(2).strip()
    # Shed: every attack connection was closed by the server before the test's end.
    shed = closed > 0 or (status == "No open connections left" and second < length)
    return f"ended on second {second} of {length}: {status}; {closed} closed", shed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=12)
    parser.add_argument("--connections", type=int, default=400)
    args = parser.parse_args()
    if not shutil.which("slowhttptest"):
        print("error: slowhttptest is missing (apt-get install slowhttptest)", file=sys.stderr)
        return 2
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "tests.server.apps:echo",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--header-timeout",
            "3",
            "--body-timeout",
            "3",
        ],
        cwd=ROOT,
    )
    failures = 0
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        for mode, name in (("-H", "slowloris (slow headers)"), ("-B", "slow body")):
            stop = threading.Event()
            results: list[bool] = []
            probe = threading.Thread(
                target=_probe, args=(f"http://127.0.0.1:{port}/", stop, results)
            )
            probe.start()
            how, shed = attack(mode, port, args.length, args.connections)
            stop.set()
            probe.join()
            ok = sum(results)
            print(
                f"{name}: {args.connections} attack connections, {how}; "
                f"normal requests answered {ok}/{len(results)}"
            )
            if ok != len(results) or not results or not shed:
                failures += 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
