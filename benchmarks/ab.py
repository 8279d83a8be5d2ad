"""Same-run A/B of two revisions of Tidings: HTTP hello world and WebSocket echo.

For a change that must not cost speed (a refactor), compare the revision before it
with the one after, on the same machine in the same run::

    python benchmarks/ab.py BEFORE [AFTER] [--rounds 6] [--duration 4]

``AFTER`` defaults to the working tree. Each revision other than the working tree is
checked out with ``git worktree`` into a temporary folder (the compiled speedups are
copied from this tree, so both run the same C code) and served by this venv's Python
with ``PYTHONPATH`` pointing at it. The server runs pinned to CPU 0 and the load to
CPU 1, one worker, access log off. Rounds alternate the order of the two revisions.

* HTTP: ``wrk -t1 -c64`` against ``benchmarks/apps.py:hello`` (req/s), after a 1 s
  warm-up;
* WebSocket: the ``ws_echo.py`` client, 100 connections echoing 32-byte text frames
  (messages/s).

Printed: the median of each side, and after/before (above 1: after is faster). The
VM this project is measured on swings by about 15 % between rounds, so read the
median of several rounds, and a ratio within a few percent of 1 as "no change".
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import ROOT, free_port, pinned, stop, wait_port

HERE = ROOT / "benchmarks"


def checkout(rev: str, into: Path) -> Path:
    """A worktree of ``rev`` at ``into``, with this tree's compiled speedups."""
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(into), rev], cwd=ROOT, check=True
    )
    for built in (ROOT / "tidings" / "wire").glob("_speedups*.so"):
        shutil.copy(built, into / "tidings" / "wire" / built.name)
    return into


def serve(tree: Path, app: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tidings", "serve", app, "--app-dir", str(HERE)]
    cmd += ["--port", str(port), "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(pinned(cmd, 0), env=env, cwd=tempfile.gettempdir())
    wait_port(port, proc)
    return proc


def http_rps(tree: Path, duration: int) -> float:
    port = free_port()
    proc = serve(tree, "apps:hello", port)
    try:
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(pinned(["wrk", "-t1", "-c64", "-d1s", url], 1), capture_output=True)
        out = subprocess.run(
            pinned(["wrk", "-t1", "-c64", f"-d{duration}s", url], 1),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if match is None:
            raise RuntimeError(f"wrk printed no rate:\n{out}")
        return float(match.group(1))
    finally:
        stop(proc)


def ws_rate(tree: Path, duration: int) -> float:
    port = free_port()
    proc = serve(tree, "ws_echo_app:app", port)
    try:
        cmd = [sys.executable, str(HERE / "ws_echo.py"), "--client", "throughput"]
        cmd += ["--port", str(port), "--size", "32", "--conns", "100", "--duration", str(duration)]
        out = subprocess.run(
            pinned(cmd, 1), capture_output=True, text=True, timeout=duration + 120, check=True
        )
        rate: float = json.loads(out.stdout.strip().splitlines()[-1])["messages_per_s"]
        return rate
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="the revision before the change (a commit, a tag)")
    parser.add_argument("after", nargs="?", help="the revision after it (default: this tree)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--only", choices=("http", "ws"), help="run one of the two")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is needed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tidings-ab-") as tmp:
        trees = {"before": checkout(args.before, Path(tmp) / "before")}
        trees["after"] = checkout(args.after, Path(tmp) / "after") if args.after else ROOT
        try:
            results: dict[str, dict[str, list[float]]] = {
                side: {"http": [], "ws": []} for side in trees
            }
            for n in range(args.rounds):
                order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
                for side in order:
                    for bench, measure in (("http", http_rps), ("ws", ws_rate)):
                        if args.only in (None, bench):
                            results[side][bench].append(measure(trees[side], args.duration))
                            print(
                                f"round {n + 1} {side:>6}: {bench} "
                                f"{results[side][bench][-1]:>9,.0f}",
                                flush=True,
                            )
            for bench, unit in (("http", "req/s"), ("ws", "msg/s")):
                if not results["before"][bench]:
                    continue
                before = statistics.median(results["before"][bench])
                after = statistics.median(results["after"][bench])
                print(
                    f"{bench:>4}: before {before:,.0f} {unit}, after {after:,.0f} {unit}, "
                    f"after/before {after / before:.3f}"
                )
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
