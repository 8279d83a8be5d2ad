#!/usr/bin/env python3
"""Reconnect storm: 10,000 tidings.js clients lose their worker and come back (issue 18, part 4).

Usage::

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/reconnect_storm.py
    .venv/bin/python benchmarks/reconnect_storm.py --clients 1000 --rates 0,2000 --no-write

What runs, for each ``--max-accept-rate`` value of ``--rates`` (0: no limit):

1. a ``redis-server`` of its own, ``tidings serve reconnect_storm_app:application
   --workers 2`` (sessions on ``TransportRouter``, the Redis layer between the workers),
   and a publisher making one ``group_send`` tick every ``--tick`` seconds (5) to every
   session;
2. ``--clients`` sessions from ``--procs`` processes of ``_storm_client.py`` (a port of
   tidings.js's reconnection logic with the WebSocket and SSE transports), every client
   from a source address of its own in 127.0.0.0/8, opened at ``--connect-rate``;
3. a network blip: every transport is cut once within ``--blip`` seconds (20) and
   resumes; the kernel hands each new connection to either worker, so about half the
   sessions are now served through the other worker (relayed through the layer to the
   process that owns them);
4. calm: two ticks, whose delivery delay to every client is the baseline;
5. the storm: one worker is SIGKILLed (the supervisor starts a new one). Measured until
   every client whose transport broke is open again and every session of the killed
   worker has been replaced (``--timeout`` at most): the time
   until all are back, the peak rate of connection attempts and of transports opened,
   the statuses the clients got (503 with ``Retry-After`` expected; any other 5xx is a
   failure), the tick delay for the clients whose transport never broke, and per
   session what resume did:

   * sessions owned by the surviving worker: every reopening must be a resume
     (``resumed: true``), the session's seqs must have no gap and no duplicate and its
     ticks none missing (each tick reaches every session exactly once, in order);
   * sessions owned by the killed worker died with it: their clients must be told
     (``resumed: false``, tidings.js's "continuitylost") and get a new session.

Results go to ``benchmarks/results/reconnect_storm.json``. Every process started here is
stopped by its PID. The machine's 2 cores run the server, Redis, the publisher and the
clients together: the times are of that shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import ROOT, free_port, result_header, stop, wait_port, write_results  # noqa: E402

__all__ = ["analyse", "storm"]

#: Clients per load process: under the 20,000 open files a process may hold here.
PER_PROC_MAX = 15_000


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _ask(procs: list[subprocess.Popen[bytes]], line: str, timeout: float = 60.0) -> list[Any]:
    """Send ``line`` to every client process; their JSON answers, in order."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        answers.append(json.loads(_readline(proc.stdout, timeout)))
    return answers


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    import select

    deadline = time.monotonic() + timeout
    chunks = b""
    while not chunks.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise TimeoutError("a load client did not answer")
        chunk = os.read(stream.fileno(), 1 << 20)
        if not chunk:
            raise RuntimeError("a load client exited")
        chunks += chunk
    return chunks


def _wait_all_open(procs: list[subprocess.Popen[bytes]], total: int, timeout: float) -> float:
    started = time.monotonic()
    said = started
    while time.monotonic() - started < timeout:
        status = _ask(procs, "status")
        if sum(a["open"] for a in status) == total:
            return time.monotonic() - started
        if time.monotonic() - said > 10:
            said = time.monotonic()
            print(f"  {_summary(status)}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    raise RuntimeError(f"not all {total} clients open within {timeout} s: {_summary(status)}")


def _summary(status: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for answer in status:
        for key, value in answer.items():
            if isinstance(value, dict):
                into = out.setdefault(key, {})
                for k, n in value.items():
                    into[k] = into.get(k, 0) + n
            else:
                out[key] = out.get(key, 0) + value
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _peak(times: list[float], window: float = 0.1) -> float:
    """The highest rate in any ``window`` of ``times`` (seconds), per second."""
    if not times:
        return 0.0
    bins: dict[int, int] = {}
    for t in times:
        key = math.floor(t / window)
        bins[key] = bins.get(key, 0) + 1
    return max(bins.values()) / window


def analyse(reports: list[dict[str, Any]], killed: int) -> dict[str, Any]:
    """What the storm did, from the load processes' reports (times in seconds after the kill)."""
    clients = [c for r in reports for c in r["clients"]]
    broke = [c for c in clients if not c.get("never_left")]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in reports:
        for key, n in r["statuses"].items():
            statuses[key] = statuses.get(key, 0) + n
        for key, n in r["errors"].items():
            errors[key] = errors.get(key, 0) + n
    never_left = {}
    for r in reports:
        for owner, n in r["never_left"].items():
            never_left[owner] = never_left.get(owner, 0) + n
    resumable = [c for c in broke if c["owner"] != killed]
    lost = [c for c in broke if c["owner"] == killed]
    back = [c["back_at"] - c["lost_at"] for c in broke if c["back_at"] is not None]
    at_kill = [c for c in broke if c["lost_at"] < 1.0]
    last_back = max((c["back_at"] for c in broke if c["back_at"] is not None), default=None)
    attempts = [t for r in reports for t in r["attempts"]]
    opened = [t for r in reports for t in r["opened"]]
    latencies = [t for r in reports for t in r["latencies"]]
    other_5xx = {k: n for k, n in statuses.items() if k.startswith("5") and k != "503+retry-after"}
    violations = {
        # A resumable session reopened without resuming, or lost continuity.
        "resumable_not_resumed": sum(
            1 for c in resumable if c["losses"] or not all(o[2] for o in c["reopens"])
        ),
        "seq_gaps": sum(c["gaps"] for c in clients),
        "seq_duplicates": sum(c["duplicates"] for c in clients),
        "tick_gaps_resumable": sum(c["n_gaps"] for c in clients if c["owner"] != killed),
        # A session of the killed worker whose client was not told (or told twice).
        "lost_not_signalled": sum(1 for c in lost if c["losses"] != 1),
        "not_back": sum(1 for c in broke if c["back_at"] is None or c["state"] != "open"),
        # Clients whose transport held but whose session broke (or that are not open).
        "never_left_with_problems": sum(1 for c in clients if c.get("never_left")),
        # Sessions of the killed worker whose client stayed connected to the other one
        # (relayed): nothing ever tells them their session is gone.
        "stranded": never_left.get(str(killed), 0),
        "other_5xx": sum(other_5xx.values()),
    }
    return {
        "killed_worker_sessions_broken": len(lost),
        "surviving_worker_sessions_broken": len(resumable),
        "never_left_by_owner": {
            "killed": never_left.get(str(killed), 0),
            "survivor": sum(n for o, n in never_left.items() if o != str(killed)),
        },
        "seconds_until_all_back": None if last_back is None else round(last_back, 3),
        # Clients whose own connection broke at the kill, and those relayed to the killed
        # worker, whose connection survived until the relay gave up on the silent owner.
        "broke_at_kill": len(at_kill),
        "broke_at_kill_all_back_seconds": max(
            (c["back_at"] for c in at_kill if c["back_at"] is not None), default=None
        ),
        "relayed_to_killed_worker": len(broke) - len(at_kill),
        "back_seconds_p50": _pct(back, 0.5),
        "back_seconds_p99": _pct(back, 0.99),
        "resumed_back_seconds_max": max(
            (c["back_at"] - c["lost_at"] for c in resumable if c["back_at"] is not None),
            default=None,
        ),
        "lost_back_seconds_max": max(
            (c["back_at"] - c["lost_at"] for c in lost if c["back_at"] is not None),
            default=None,
        ),
        "peak_attempts_per_s": _peak(attempts),
        "peak_opened_per_s": _peak(opened),
        "attempts": len(attempts),
        "statuses": statuses,
        "errors": errors,
        "open_timeouts": sum(r["timeouts"] for r in reports),
        "demoted_to_sse": sum(1 for c in broke if "websocket" in c.get("demoted", [])),
        "ended_on_sse": sum(1 for c in broke if c.get("reopens") and c["reopens"][-1][1] == "sse"),
        "never_left_tick_delay_ms": {
            "p50": _ms(_pct(latencies, 0.5)),
            "p99": _ms(_pct(latencies, 0.99)),
            "max": _ms(max(latencies, default=None)),
            "samples": len(latencies),
        },
        "violations": violations,
    }


def storm(
    *,
    clients: int,
    accept_rate: int,
    workers: int = 2,
    procs: int = 4,
    connect_rate: float = 400.0,
    tick: float = 5.0,
    blip: float = 20.0,
    timeout: float = 120.0,
    log: Path | None = None,
    raw: Path | None = None,
) -> dict[str, Any]:
    """One run: connect, blip, calm, kill a worker, measure; the analysed result."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is needed")
    started: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="tidings-storm-"))
    server_log = (log or tmp / "server.log").open("wb")
    try:
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                redis_bin,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        started.append(redis)
        wait_port(redis_port, redis)
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        env["STORM_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        env.pop("DJANGO_SETTINGS_MODULE", None)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings",
                "serve",
                "reconnect_storm_app:application",
                "--app-dir",
                str(HERE),
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--max-accept-rate",
                str(accept_rate),
                "--no-access-log",
                "--log-level",
                "warning",
                "--lifespan",
                "off",
            ],
            cwd=ROOT,
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        started.append(server)
        wait_port(port, server)
        deadline = time.monotonic() + 30
        while len(_children(server.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        worker_pids = _children(server.pid)
        publisher = subprocess.Popen(
            [sys.executable, str(HERE / "reconnect_storm_app.py"), "publish", str(tick)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        started.append(publisher)
        load: list[subprocess.Popen[bytes]] = []
        per = math.ceil(clients / procs)
        for i in range(procs):
            count = min(per, clients - i * per)
            if count <= 0:
                break
            settings = {
                "port": port,
                "count": count,
                "source_offset": i * per,
                "rate": connect_rate / procs,
                "seed": i,
            }
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "_storm_client.py"), json.dumps(settings)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            started.append(proc)
            load.append(proc)
        connect_seconds = _wait_all_open(load, clients, clients / connect_rate * 3 + 60)
        # The blip: every transport cut once; about half come back through the other worker.
        _ask(load, f"blip {blip}")
        time.sleep(blip + 1)
        blip_seconds = _wait_all_open(load, clients, timeout)
        time.sleep(2)
        _ask(load, "sample")
        time.sleep(2 * tick + 1)
        calm = [t for a in _ask(load, "baseline") for t in a["latencies"]]
        # The storm.
        victim = worker_pids[0]
        marks = _ask(load, "mark")
        kill_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        seen_away = False
        all_back = None
        while time.monotonic() - kill_at < timeout:
            status = _ask(load, f"status {victim}")
            away = sum(a["away"] + a["untold"] for a in status)
            seen_away = seen_away or away > 0
            if seen_away and away == 0:
                all_back = time.monotonic() - kill_at
                break
            time.sleep(0.1)
        time.sleep(2 * tick + 1)  # ticks after the last one came back
        reports = _ask(load, "report", timeout=120)
        if raw is not None:
            raw.write_text(json.dumps({"killed": victim, "reports": reports}))
        restarted = [pid for pid in _children(server.pid) if pid not in worker_pids]
        result = analyse(_relative(reports, marks, kill_at), victim)
        result.update(
            {
                "clients": clients,
                "max_accept_rate": accept_rate,
                "workers": workers,
                "load_processes": len(load),
                "connect_seconds": round(connect_seconds, 2),
                "blip_all_back_seconds": round(blip_seconds, 2),
                "polled_all_back_seconds": None if all_back is None else round(all_back, 2),
                "worker_restarted": len(restarted) == 1,
                "calm_tick_delay_ms": {
                    "p50": _ms(_pct(calm, 0.5)),
                    "p99": _ms(_pct(calm, 0.99)),
                    "max": _ms(max(calm, default=None)),
                },
            }
        )
        for proc in load:
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
        assert publisher.stdin is not None
        publisher.stdin.close()
        return result
    finally:
        for proc in reversed(started):
            stop(proc)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        server_log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _relative(
    reports: list[dict[str, Any]], marks: list[dict[str, Any]], kill_at: float
) -> list[dict[str, Any]]:
    """The reports with every time in seconds after the kill (the processes' marks differ)."""
    out = []
    for report, mark in zip(reports, marks, strict=True):
        shift = mark["mark"] - kill_at  # report times are relative to this process's mark
        for c in report["clients"]:
            for key in ("lost_at", "back_at"):
                if c.get(key) is not None:
                    c[key] = c[key] - kill_at
            for o in c.get("reopens", []):
                o[0] += shift
        report["attempts"] = [t + shift for t in report["attempts"]]
        report["opened"] = [t + shift for t in report["opened"]]
        out.append(report)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rates", default="0,2000,500", help="--max-accept-rate values (0: off)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--procs", type=int, default=4, help="load client processes")
    parser.add_argument("--connect-rate", type=float, default=400.0)
    parser.add_argument("--tick", type=float, default=5.0, help="seconds between ticks")
    parser.add_argument("--blip", type=float, default=20.0, help="seconds the blip spreads over")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-write", action="store_true", help="print, don't write results")
    parser.add_argument("--raw", type=Path, help="also write the clients' reports here")
    args = parser.parse_args()
    procs = max(args.procs, math.ceil(args.clients / PER_PROC_MAX))
    runs = []
    for rate in (int(r) for r in args.rates.split(",")):
        print(f"max-accept-rate {rate}: {args.clients} clients ...", flush=True)
        result = storm(
            clients=args.clients,
            accept_rate=rate,
            workers=args.workers,
            procs=procs,
            connect_rate=args.connect_rate,
            tick=args.tick,
            blip=args.blip,
            timeout=args.timeout,
            raw=None if args.raw is None else args.raw.with_suffix(f".{rate}.json"),
            log=None if args.raw is None else args.raw.with_suffix(f".{rate}.log"),
        )
        print(json.dumps(result, indent=2), flush=True)
        runs.append(result)
        payload = {
            **result_header("reconnect_storm"),
            "note": "2 shared cores run the server, Redis, the publisher and the load clients",
            "command": " ".join(["python", "benchmarks/reconnect_storm.py", *sys.argv[1:]]),
            "runs": runs,
        }
        if not args.no_write:  # after each run: a long series can be stopped and keep some
            print(f"written to {write_results(payload)}", flush=True)


if __name__ == "__main__":
    main()
