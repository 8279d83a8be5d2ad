#!/usr/bin/env python3
"""Run Autobahn|Testsuite's fuzzing client against ``tidings serve`` and tally the verdicts.

Usage (from anywhere; paths are relative to this file)::

    python compliance/autobahn/run.py                  # every case (1-13, ~15 min)
    python compliance/autobahn/run.py --cases 1-11     # no permessage-deflate (fast)
    python compliance/autobahn/run.py --cases '1.*,5.*,12.1.1'
    python compliance/autobahn/run.py --setup-only     # just build the Python 2.7 venv

What it does:

1. ``wstest`` runs on Python 2.7 only. If ``.venv27`` is missing it is built from
   pyenv's 2.7.18 with ``virtualenv==20.21.1`` (the last release that creates 2.7
   environments), installed into a throw-away Python 3 venv, then
   ``autobahntestsuite==25.10.1`` is installed into it from PyPI.
2. ``tidings serve echo_app:app`` starts on a free port of 127.0.0.1, with messages up
   to 64 MiB (Autobahn's largest cases send 16 MiB) and server pings off (an unsolicited
   ping in the middle of a case would be recorded as part of the case).
3. ``wstest -m fuzzingclient`` runs the cases from ``fuzzingclient.json`` (port and case
   list filled in); reports go to ``reports/servers/``.
4. ``reports/servers/index.json`` is read; the verdicts (``behavior`` and
   ``behaviorClose`` of each case) are tallied and printed. The exit status is 1 if any
   case is FAILED, WRONG CODE or UNCLEAN, 2 if the run itself failed.

Only the processes started here are stopped, by PID. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV27 = HERE / ".venv27"
WSTEST = VENV27 / "bin" / "wstest"
REPORTS = HERE / "reports" / "servers"
SPEC_TEMPLATE = HERE / "fuzzingclient.json"

VIRTUALENV_PIN = "virtualenv==20.21.1"
AUTOBAHN_PIN = "autobahntestsuite==25.10.1"
#: Verdicts that fail the run.
BAD = ("FAILED", "WRONG CODE", "UNCLEAN")
#: Autobahn's largest cases (9.1.6, 9.2.6) send 16 MiB messages.
MAX_MESSAGE = str(64 * 1024 * 1024)
#: The representative subset the unmarked pytest runs (a few seconds).
FAST_CASES = (
    "1.*",
    "2.*",
    "3.*",
    "4.*",
    "5.*",
    "6.1.*",
    "6.2.*",
    "6.3.*",
    "6.4.*",
    "7.1.*",
    "7.3.*",
    "7.5.*",
    "7.7.*",
    "9.1.1",
    "10.*",
    "12.1.1",
    "13.1.1",
)


class SetupError(RuntimeError):
    """The Python 2.7 environment for wstest could not be built."""


def _run(cmd: list[str], *, timeout: float, what: str) -> None:
    print("+", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, check=False)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise SetupError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise SetupError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def find_python27() -> str:
    """The pyenv-installed Python 2.7.18 interpreter."""
    candidates = []
    if shutil.which("pyenv"):
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        if root:
            candidates.append(Path(root) / "versions" / "2.7.18" / "bin" / "python")
    candidates.append(Path.home() / ".pyenv" / "versions" / "2.7.18" / "bin" / "python")
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise SetupError(
        "Python 2.7.18 not found (expected under $(pyenv root)/versions/2.7.18): "
        "install it with `pyenv install 2.7.18`"
    )


def ensure_venv27() -> Path:
    """Build ``.venv27`` with wstest in it unless it is already there."""
    if WSTEST.exists():
        return WSTEST
    py27 = find_python27()
    if VENV27.exists():
        shutil.rmtree(VENV27)  # a half-built one from an interrupted run
    with tempfile.TemporaryDirectory(prefix="tidings-virtualenv-") as tmp:
        tools = Path(tmp) / "venv"
        _run([sys.executable, "-m", "venv", str(tools)], timeout=300, what="python3 -m venv")
        _run(
            [str(tools / "bin" / "pip"), "install", "-q", VIRTUALENV_PIN],
            timeout=600,
            what=f"pip install {VIRTUALENV_PIN}",
        )
        _run(
            [str(tools / "bin" / "virtualenv"), "-p", py27, str(VENV27)],
            timeout=600,
            what="virtualenv -p python2.7",
        )
    try:
        _run(
            [str(VENV27 / "bin" / "pip"), "install", "-q", AUTOBAHN_PIN],
            timeout=1200,
            what=f"pip install {AUTOBAHN_PIN}",
        )
    except SetupError:
        shutil.rmtree(VENV27, ignore_errors=True)
        raise
    if not WSTEST.exists():
        raise SetupError(f"{AUTOBAHN_PIN} installed but {WSTEST} is missing")
    return WSTEST


def case_patterns(spec: str | None) -> list[str]:
    """``None`` -> all; ``"1-11"`` -> ``["1.*", ..., "11.*"]``; else a comma list as is."""
    if spec is None or spec in ("all", "*"):
        return ["*"]
    patterns: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        low, dash, high = item.partition("-")
        if dash and low.isdigit() and high.isdigit():
            patterns += [f"{n}.*" for n in range(int(low), int(high) + 1)]
        elif item.isdigit():
            patterns.append(f"{item}.*")
        else:
            patterns.append(item)
    return patterns


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tidings serve exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tidings serve did not listen on port {port} within {timeout:.0f} s")


def start_server(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "echo_app:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
        "--ws-max-message-size",
        MAX_MESSAGE,
        "--ws-max-frame-size",
        MAX_MESSAGE,
        # Cases 9.3.x and 9.4.x send 4 MiB in fragments as small as 64 bytes.
        "--ws-max-fragments",
        str(1 << 20),
        "--ws-ping-interval",
        "0",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def tally(index_path: Path, agent: str = "tidings") -> tuple[dict[str, int], list[str]]:
    """Count verdicts in ``index.json``; return (counts, lines describing bad cases)."""
    with index_path.open() as fh:
        index = json.load(fh)
    cases = index.get(agent, {})
    counts: collections.Counter[str] = collections.Counter()
    bad: list[str] = []

    def key(case_id: str) -> tuple[int, ...]:
        return tuple(int(p) for p in case_id.split("."))

    for case_id in sorted(cases, key=key):
        result = cases[case_id]
        behavior = result.get("behavior", "?")
        close = result.get("behaviorClose", "?")
        counts[behavior] += 1
        if close in BAD and behavior not in BAD:
            counts[f"close {close}"] += 1
        if behavior in BAD or close in BAD:
            bad.append(f"  {case_id}: {behavior} (close: {close})")
    return dict(counts), bad


def run_cases(patterns: list[str], *, timeout: float, reports: Path = REPORTS) -> int:
    """Serve, run wstest on ``patterns``, print the tally; return the exit status."""
    wstest = ensure_venv27()
    port = free_port()
    if reports.exists():
        shutil.rmtree(reports)
    reports.mkdir(parents=True)
    spec = json.loads(SPEC_TEMPLATE.read_text())
    spec["outdir"] = str(reports)
    spec["servers"] = [{"agent": "tidings", "url": f"ws://127.0.0.1:{port}"}]
    spec["cases"] = patterns
    with tempfile.TemporaryDirectory(prefix="tidings-autobahn-") as tmp:
        spec_path = Path(tmp) / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        server_log = Path(tmp) / "server.log"
        server = start_server(port, server_log)
        try:
            wait_listening(port, server)
            started = time.monotonic()
            print(f"wstest: cases {' '.join(patterns)} against port {port}", flush=True)
            try:
                proc = subprocess.run(
                    [str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
                    cwd=tmp,
                    timeout=timeout,
                    capture_output=True,
                    text=True,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                print(f"wstest did not finish within {timeout:.0f} s", file=sys.stderr)
                return 2
            elapsed = time.monotonic() - started
        finally:
            stop(server)
            log_text = server_log.read_text(errors="replace")
        index_path = reports / "index.json"
        if proc.returncode != 0 or not index_path.exists():
            print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
            print(f"wstest failed (exit {proc.returncode})", file=sys.stderr)
            return 2
    counts, bad = tally(index_path)
    total = sum(v for k, v in counts.items() if not k.startswith("close "))
    print(f"Autobahn fuzzingclient: {total} cases in {elapsed:.1f} s")
    for verdict, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {verdict:<14} {n}")
    if log_text.strip():
        lines = log_text.strip().splitlines()
        print(f"server log ({len(lines)} lines, last 10):")
        for line in lines[-10:]:
            print("  " + line)
    if bad:
        print("cases not passing:")
        print("\n".join(bad))
        return 1
    print(f"report: {reports / 'index.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default=None,
        help="'all' (default), a range of top-level groups like '1-11', or a comma list of "
        "wstest case patterns like '1.*,6.4.*,12.1.1'; 'fast' for the pytest subset",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds wstest may run (default 1800)"
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=REPORTS,
        help=f"directory for wstest's reports (default {REPORTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--setup-only", action="store_true", help="build the Python 2.7 venv and exit"
    )
    ns = parser.parse_args(argv)
    try:
        if ns.setup_only:
            print(f"wstest ready: {ensure_venv27()}")
            return 0
        patterns = list(FAST_CASES) if ns.cases == "fast" else case_patterns(ns.cases)
        return run_cases(patterns, timeout=ns.timeout, reports=ns.reports.resolve())
    except SetupError as exc:
        print(f"cannot set up Autobahn|Testsuite: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"autobahn run failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
