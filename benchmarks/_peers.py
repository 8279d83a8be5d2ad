"""Shared benchmark plumbing: the peers' venv, free ports, pinned processes, result files.

Every benchmark writes ``results/<name>.json`` through :func:`write_results`, starting
with :func:`result_header` (name, UTC date, machine); ``./scripts/bench --plot``
(``_plot.py``) reads those files and stamps the date and machine on the chart.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"
RESULTS = ROOT / "benchmarks" / "results"


def peers_python(packages: list[str]) -> Path:
    """The benchmark venv's python, created with ``packages`` from PyPI if needed."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    stamp = PEERS_VENV / ".installed"
    want = "\n".join(sorted(packages))
    have = stamp.read_text() if stamp.exists() else ""
    if not set(packages) <= set(have.splitlines()):
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
            check=True,
        )
        stamp.write_text("\n".join(sorted(set(have.splitlines()) | set(packages))) or want)
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def result_header(benchmark: str) -> dict[str, Any]:
    """The first fields of every result file: the benchmark's name, the UTC date, the machine."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def write_results(payload: dict[str, Any]) -> Path:
    """Write ``payload`` (which starts with ``result_header``) to ``results/<benchmark>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{payload['benchmark']}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
