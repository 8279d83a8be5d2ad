#!/usr/bin/env python3
"""Soak: 30 minutes of mixed traffic on 5,000 connections; memory, files and tasks stay flat.

Usage (issue 18, part 5; not a test, not timed, so it takes no benchmark lock)::

    .venv/bin/python benchmarks/soak.py                 # 30 minutes, 5,000 connections
    .venv/bin/python benchmarks/soak.py --smoke         # 2 minutes, 500 connections
    .venv/bin/python benchmarks/soak.py --minutes 10 --connections 2000

What runs: a private ``redis-server`` on a free port, ``tidings serve --workers 2`` with
``soak_app.py`` (Redis channel layer, ``TransportRouter``), and ``ceil(N / 2500)`` client
processes (``_soak_client.py``; raw asyncio sockets, each bound to source
addresses of its own in 127.0.0.0/8 as ``_scale_client.py`` does) holding ``N`` slots:

* 40 % plain WebSockets on ``/echo/``: each sends a text every ``--echo-every`` seconds
  and expects it back within 10 s;
* 40 % plain WebSockets on ``/ws/``: members of the group ``soak``; every broadcast
  (``POST /soak/broadcast/`` every ``--broadcast-every`` seconds, one ``group_send``
  through Redis to both workers) must reach each of them, none missed while connected;
* 10 % SSE sessions, 7 % long-polling sessions, 3 % session WebSockets on ``/ws/``: each
  lives 20 to 90 s, sends a message (echoed) and an acknowledgement every
  ``--post-every`` seconds, then ends with ``POST ?tidings=close`` (or the
  ``{"type": "close"}`` frame) or is abandoned to expire after the resume window; then
  a new one opens. Sequence numbers must arrive in order, without gaps.

Churn: every ``--churn-every`` seconds ``--churn`` of the slots drop their connection
(half closing properly, half by reset) and reconnect; a session slot resumes its
session (``sid``, ``last``) and must get ``resumed: true`` and what it missed.

Every 10 s, per worker: RSS (``/proc/<pid>/status``), open files (``/proc/<pid>/fd``),
CPU time, and from ``GET /soak/stats/`` asyncio tasks, sessions, consumers, consumer
instances and allocated blocks; Redis' ``used_memory`` and key count; from the
clients, the traffic done. After ``--minutes`` the clients exit and, once the resume
window has passed (the drain), every worker must be back to its empty figures.

The verdict (after a warm-up of ``min(5 min, a third of the run)``): RSS growth under
5 % (median of the last 3 samples against the first 3 after warm-up, per worker and
summed), open files and tasks flat (the same comparison, within 5 % + 20) and bounded
by the live connections; after the drain, open files and tasks back to the empty
baseline (+20 per worker), no session and no consumer instance left in memory (after
a garbage collection) and no group member left in Redis; no worker restarted, no
traceback or ERROR line in the server log, and the traffic sound (no broadcast missed
by a connected member, echoes and session messages lost under 0.1 %, resumes that
failed under 0.1 %, no sequence gap, no 5xx). Consumers whose ``connect()`` ran but
``disconnect()`` did not are reported in ``notes``. Results (verdict, totals, and the
samples as columns) go to ``benchmarks/results/soak.json`` (``--smoke``:
``/tmp/soak_smoke.json`` unless ``--out``). Only processes started here are stopped,
by PID. The exit status is 1 when the verdict fails.

``--tracemalloc`` traces allocations in the workers (slow: not for the verdict's
figures) and stores, per worker, the 25 biggest growths by traceback between the end
of the warm-up and the drain: where to look when memory grows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _peers import RESULTS, ROOT, free_port, result_header, stop, wait_port  # noqa: E402
from _soak_client import MIX, SESSION_LIFE  # noqa: E402

PER_CLIENT = 2500
#: The client counters kept in every sample (all of them are in the result's ``traffic``).
SAMPLED = (
    "echo.ok",
    "broadcast.received",
    "broadcast.session_received",
    "session.messages",
    "open.echo",
    "open.member",
    "open.sse",
    "open.poll",
    "open.wss",
    "post.send.200",
    "post.close.204",
)
SAMPLE_EVERY = 10.0
WARMUP_MAX = 300.0
#: soak_app's TransportRouter settings that the drain waits out (the defaults).
RESUME_WINDOW = 30.0
POLL_HOLD = 25.0
FD_LIMIT = 16384
CLIENT = HERE / "_soak_client.py"


# --- the driver -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis(port: int, *args: str) -> Any:
    """One Redis command (RESP 2) on a connection of its own; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        command = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        sock.sendall(command.encode())
        stream = sock.makefile("rb")

        def reply() -> Any:
            line = stream.readline()[:-2]
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                return None if rest == b"-1" else stream.read(int(rest) + 2)[:-2].decode()
            return [reply() for _ in range(int(rest))]

        return reply()


def _info(port: int) -> dict[str, str]:
    text: str = _redis(port, "INFO", "memory")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _redis_left(port: int) -> dict[str, Any]:
    """What the layer left in Redis after the drain: keys by kind, and group members."""
    kinds: dict[str, int] = {}
    members = 0
    for key in _redis(port, "KEYS", "*"):
        kind = key.split(":")[2] if key.count(":") >= 3 else key
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "group":
            members += _redis(port, "ZCARD", key)
    return {"keys_by_kind": kinds, "group_members": members}


def _http(port: int, method: str, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a connection of its own (``Connection: close``): status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        sock.sendall((head + "Content-Length: 0\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), body


def _worker_stats(port: int, workers: list[int], query: str = "") -> dict[int, dict[str, Any]]:
    """``/soak/stats/`` of each worker: asked on new connections until each has answered.

    The workers share the listening socket and the kernel gives each connection to
    whichever accepts first, so a few tries reach every one.
    """
    found: dict[int, dict[str, Any]] = {}
    for attempt in range(300):
        if attempt >= 20:
            time.sleep(0.01)  # the other worker is busy: give it time to accept
        try:
            status, body = _http(port, "GET", f"/soak/stats/{query}", 30)
        except OSError:
            continue
        if status == 200:
            figures = json.loads(body)
            found.setdefault(figures["pid"], figures)
        if set(workers) <= set(found):
            break
    return found


def _tracemalloc(port: int, workers: list[int]) -> dict[int, Any]:
    """``/soak/tracemalloc/`` of each worker (the first call keeps a snapshot, later diff)."""
    found: dict[int, Any] = {}
    for _ in range(60):
        status, body = _http(port, "GET", "/soak/tracemalloc/", 120)
        if status == 200:
            answer = json.loads(body)
            found.setdefault(answer["pid"], answer)
        if set(workers) <= set(found):
            break
    return found


def _sample(port: int, master: int, started: float, redis: int, gc: bool = False) -> dict[str, Any]:
    """The figures of every worker, and of Redis; ``gc``: workers collect garbage first."""
    workers = _children(master)
    stats = _worker_stats(port, workers, "?gc=1" if gc else "")
    per_worker = {}
    for pid in workers:
        figures = stats.get(pid, {})
        per_worker[str(pid)] = {
            "rss_kib": _rss_kib(pid),
            "fds": _open_files(pid),
            "cpu_s": round(_cpu_s(pid), 2),
            "tasks": figures.get("tasks"),
            "sessions": figures.get("sessions"),
            "open": figures.get("open"),
            "instances": figures.get("instances"),
            "blocks": figures.get("blocks"),
        }
    return {
        "t": round(time.monotonic() - started, 1),
        "complete": len(workers) >= 2 and set(workers) <= set(stats),
        "workers": per_worker,
        "rss_kib": sum(w["rss_kib"] for w in per_worker.values()),
        "fds": sum(w["fds"] for w in per_worker.values()),
        "tasks": sum(w["tasks"] or 0 for w in per_worker.values()),
        "sessions": sum(w["sessions"] or 0 for w in per_worker.values()),
        "supervisor_rss_kib": _rss_kib(master),
        "redis": {
            "used_memory_kib": int(_info(redis)["used_memory"]) // 1024,
            "keys": _redis(redis, "DBSIZE"),
        },
    }


class Clients:
    """The client processes, talked to over stdin/stdout, one JSON line per ``stats``."""

    def __init__(self, args: argparse.Namespace, port: int, env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        count = args.connections
        processes = math.ceil(count / PER_CLIENT)
        for i in range(processes):
            settings = {
                "port": port,
                "count": count // processes + (1 if i < count % processes else 0),
                "source_offset": i * 200,
                "sources": 200,
                "seed": i,
                "echo_every": args.echo_every,
                "post_every": args.post_every,
                "churn_every": args.churn_every,
                "churn": args.churn,
            }
            cmd = [sys.executable, str(CLIENT), json.dumps(settings)]
            self.procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            )

    def ask(self, word: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        answers = []
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            if proc.poll() is not None:
                raise RuntimeError(f"client {proc.pid} exited with status {proc.returncode}")
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if not ready:
                raise RuntimeError(f"client {proc.pid} did not answer {word!r}")
            answers.append(json.loads(proc.stdout.readline()))
        return answers

    def stop(self) -> list[dict[str, Any]]:
        answers = self.ask("stop")
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                stop(proc)  # type: ignore[arg-type]
        return answers

    def kill(self) -> None:
        for proc in self.procs:
            stop(proc)  # type: ignore[arg-type]


def _merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    counters: dict[str, int] = {}
    for answer in answers:
        for key, value in answer["counters"].items():
            counters[key] = counters.get(key, 0) + value
    p99s = [a["echo_p99_ms"] for a in answers if a["echo_p99_ms"] is not None]
    maxes = [a["echo_max_ms"] for a in answers if a["echo_max_ms"] is not None]
    return {
        "counters": dict(sorted(counters.items())),
        "sockets": sum(a["sockets"] for a in answers),
        "live": sum(a["live"] for a in answers),
        "echo_p99_ms": max(p99s) if p99s else None,
        "echo_max_ms": max(maxes) if maxes else None,
    }


def _log_problems(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    errors = [line for line in lines if re.search(r"\b(ERROR|CRITICAL)\b", line)]
    warnings = [line for line in lines if re.search(r"\bWARNING\b", line)]
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "error_lines": len(errors),
        "warning_lines": len(warnings),
        "first_errors": errors[:5],
        "first_warnings": warnings[:5],
    }


def _median3(values: list[float]) -> float:
    return statistics.median(values[:3])


def _verdict(
    samples: list[dict[str, Any]],
    warmup: float,
    empty: dict[str, Any],
    drained: dict[str, Any],
    workers: list[int],
    log: dict[str, Any],
    traffic: dict[str, int],
    connections: int,
) -> dict[str, Any]:
    # Samples where a worker did not answer /soak/stats/ in time are left out.
    after = [s for s in samples if s["t"] >= warmup and s["complete"]]
    if len(after) < 6:
        return {"pass": False, "why": ["too few samples after the warm-up"]}
    first, last = after[:3], after[-3:]
    why: list[str] = []
    notes: list[str] = []

    def growth(key: str, pid: str | None = None) -> float:
        def value(s: dict[str, Any]) -> float:
            return float(s[key] if pid is None else s["workers"].get(pid, {}).get(key) or 0)

        start = statistics.median(value(s) for s in first)
        end = statistics.median(value(s) for s in last)
        return end / start - 1 if start else math.inf

    rss = {"all": growth("rss_kib")}
    for pid in map(str, workers):
        rss[pid] = growth("rss_kib", pid)
    if max(rss.values()) >= 0.05:
        why.append(f"RSS grew {max(rss.values()):.1%} after the warm-up (limit 5 %)")

    flat = {}
    for key in ("fds", "tasks"):
        start = statistics.median(s[key] for s in first)
        end = statistics.median(s[key] for s in last)
        flat[key] = {"after_warmup": start, "end": end, "max": max(s[key] for s in after)}
        if end > start * 1.05 + 20:
            why.append(f"{key} grew from {start} to {end} after the warm-up")
    # Bounded by the live connections: a few files and tasks per connection, plus a base.
    if flat["fds"]["max"] > 1.2 * connections + 200:
        why.append(f"open files reached {flat['fds']['max']} for {connections} connections")
    if flat["tasks"]["max"] > 4 * connections + 200:
        why.append(f"tasks reached {flat['tasks']['max']} for {connections} connections")

    back = {}
    for pid in map(str, workers):
        before, now = empty["workers"].get(pid, {}), drained["workers"].get(pid, {})
        back[pid] = {
            key: {"empty": before.get(key), "drained": now.get(key)}
            for key in ("fds", "tasks", "sessions", "open", "instances", "rss_kib", "blocks")
        }
        for key in ("fds", "tasks"):
            if (now.get(key) or 0) > (before.get(key) or 0) + 20:
                why.append(f"worker {pid}: {key} {before.get(key)} before, {now.get(key)} after")
        if now.get("sessions") or now.get("instances"):
            why.append(f"worker {pid}: sessions or consumer instances left after the drain")
        if any((now.get("open") or {}).values()):
            # Not a leak by itself (the instance is gone): a connect() without disconnect().
            notes.append(f"worker {pid}: consumers whose disconnect() never ran: {now['open']}")
    if drained["redis"]["left"]["group_members"]:
        why.append(f"{drained['redis']['left']['group_members']} group members left in Redis")
    if sorted(map(int, drained["workers"])) != sorted(workers):
        why.append("a worker was restarted")
    if log["tracebacks"] or log["error_lines"]:
        why.append(f"server log: {log['tracebacks']} tracebacks, {log['error_lines']} errors")

    def ratio(bad: str, total: str) -> float:
        return traffic.get(bad, 0) / max(1, traffic.get(total, 0))

    if traffic.get("broadcast.missed", 0) or traffic.get("broadcast.duplicated", 0):
        why.append("broadcasts missed or duplicated by connected members")
    if ratio("echo.lost", "echo.sent") > 0.001:
        why.append(f"{traffic.get('echo.lost')} echoes lost")
    if ratio("session_echo.lost", "session_echo.sent") > 0.001:
        why.append(f"{traffic.get('session_echo.lost')} session messages lost")
    not_resumed = sum(v for k, v in traffic.items() if k.startswith("session.not_resumed"))
    if not_resumed > 0.001 * traffic.get("session.resumed", 0):
        why.append(f"{not_resumed} sessions not resumed")
    if traffic.get("session.gap", 0) or traffic.get("errors.5xx", 0):
        why.append("session sequence gaps or 5xx answers")
    return {
        "pass": not why,
        "why": why,
        "notes": notes,
        "warmup_s": warmup,
        "rss_growth": {k: round(v, 4) for k, v in rss.items()},
        "flat": flat,
        "drain": back,
    }


def _slope_kib_per_hour(samples: list[dict[str, Any]], warmup: float) -> float | None:
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 3:
        return None
    ts = [s["t"] for s in after]
    ys = [s["rss_kib"] for s in after]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    slope: float = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den
    return round(slope * 3600, 1)


def _cpu_cores(samples: list[dict[str, Any]]) -> dict[str, float] | None:
    """Average CPU use (in cores) of the workers and of the clients, first to last sample."""
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    seconds = last["t"] - first["t"]

    def workers(s: dict[str, Any]) -> float:
        return float(sum(w["cpu_s"] for w in s["workers"].values()))

    return {
        "workers": round((workers(last) - workers(first)) / seconds, 3),
        "clients": round((last["client"]["cpu_s"] - first["client"]["cpu_s"]) / seconds, 3),
    }


def dumps(payload: dict[str, Any]) -> str:
    """``payload`` as indented JSON, with each list of numbers on one line (the series)."""
    text = json.dumps(payload, indent=2)

    def one_line(match: re.Match[str]) -> str:
        return re.sub(r"\s*\n\s*", " ", match.group(0)).replace("[ ", "[").replace(" ]", "]")

    return re.sub(r"\[[^\[\]{}\"]*\]", one_line, text) + "\n"


def series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The samples as columns (one list per figure, in sample order), to keep the file small."""
    if not samples:
        return {}
    pids = sorted({pid for s in samples for pid in s["workers"]})

    def column(get: Any) -> list[Any]:
        return [get(s) for s in samples]

    out: dict[str, Any] = {
        "t": column(lambda s: s["t"]),
        "complete": column(lambda s: s["complete"]),
    }
    for key in ("rss_kib", "fds", "tasks", "sessions"):
        out[key] = column(lambda s, key=key: s[key])
    out["redis_used_memory_kib"] = column(lambda s: s["redis"]["used_memory_kib"])
    out["redis_keys"] = column(lambda s: s["redis"]["keys"])
    out["workers"] = {
        pid: {
            key: column(lambda s, pid=pid, key=key: s["workers"].get(pid, {}).get(key))
            for key in ("rss_kib", "fds", "tasks", "sessions", "blocks", "cpu_s")
        }
        for pid in pids
    }
    out["client"] = {
        key: column(lambda s, key=key: s["client"][key])
        for key in ("sockets", "live", "echo_p99_ms", "echo_max_ms", "cpu_s")
    }
    out["client"]["done"] = {
        key: column(lambda s, key=key: s["client"]["done"][key]) for key in SAMPLED
    }
    return out


def _line(sample: dict[str, Any], traffic: dict[str, Any]) -> str:
    c = traffic["counters"]
    return (
        f"t={sample['t']:>6.0f}s rss={sample['rss_kib'] / 1024:7.1f} MiB "
        f"fds={sample['fds']:>5} tasks={sample['tasks']:>5} sessions={sample['sessions']:>4} "
        f"redis={sample['redis']['used_memory_kib'] / 1024:.1f} MiB/{sample['redis']['keys']} keys "
        f"client sockets={traffic['sockets']:>5} live={traffic['live']:>5} "
        f"echo={c.get('echo.ok', 0)} bcast={c.get('broadcast.received', 0)}"
        f"+{c.get('broadcast.session_received', 0)} sess={c.get('open.sse', 0)}/"
        f"{c.get('open.poll', 0)}/{c.get('open.wss', 0)} p99={traffic['echo_p99_ms']} ms"
    )


def driver(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    duration = args.minutes * 60
    warmup = min(WARMUP_MAX, duration / 3)
    work = Path(tempfile.mkdtemp(prefix="tidings-soak-"))
    redis_port, port = free_port(), free_port()
    redis_cmd = [
        "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
    ]  # fmt: skip
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        SOAK_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
    )
    if args.tracemalloc:
        env["SOAK_TRACEMALLOC"] = "1"
    server_cmd = [
        sys.executable, "-m", "tidings", "serve", "soak_app:application", "--app-dir", str(HERE),
        "--port", str(port), "--workers", "2", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log_path = work / "server.log"
    log: IO[bytes] = log_path.open("wb")

    def more_files() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))

    server = subprocess.Popen(
        server_cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=more_files
    )
    clients: Clients | None = None
    samples: list[dict[str, Any]] = []
    traffic: dict[str, Any] = {}
    try:
        wait_port(redis_port, redis)
        wait_port(port, server)
        while len(_children(server.pid)) < 2:
            time.sleep(0.1)
        workers = _children(server.pid)
        started = time.monotonic()
        empty = _sample(port, server.pid, started, redis_port)
        while not empty["complete"]:  # until both workers have loaded the app
            time.sleep(0.5)
            empty = _sample(port, server.pid, started, redis_port)
        print(f"empty: {json.dumps(empty['workers'])}", flush=True)
        clients = Clients(args, port, env)
        broadcasts, next_broadcast, next_sample = 0, started, started + SAMPLE_EVERY
        failed_broadcasts, traced = 0, False
        while time.monotonic() < started + duration:
            now = time.monotonic()
            if now >= next_broadcast:
                next_broadcast += args.broadcast_every
                try:
                    status, _ = _http(port, "POST", f"/soak/broadcast/?n={broadcasts}")
                    failed_broadcasts += status != 200
                except OSError:
                    failed_broadcasts += 1
                broadcasts += 1
            if args.tracemalloc and not traced and now >= started + warmup:
                traced = True
                _tracemalloc(port, workers)  # each worker's baseline snapshot
            if now >= next_sample:
                next_sample += SAMPLE_EVERY
                sample = _sample(port, server.pid, started, redis_port)
                traffic = _merge(clients.ask("stats"))
                sample["client"] = {
                    "cpu_s": round(sum(_cpu_s(p.pid) for p in clients.procs), 2),
                    "sockets": traffic["sockets"],
                    "live": traffic["live"],
                    "echo_p99_ms": traffic["echo_p99_ms"],
                    "echo_max_ms": traffic["echo_max_ms"],
                    "done": {k: traffic["counters"].get(k, 0) for k in SAMPLED},
                }
                samples.append(sample)
                print(_line(sample, traffic), flush=True)
            time.sleep(max(0.0, min(next_broadcast, next_sample) - time.monotonic()))
        traffic = _merge(clients.stop())
        clients = None
        # The drain: abandoned sessions expire after the resume window, held polls end.
        drain_until = time.monotonic() + RESUME_WINDOW + POLL_HOLD + 30
        while True:
            time.sleep(5)
            drained = _sample(port, server.pid, started, redis_port)
            idle = drained["sessions"] == 0 and all(
                not any((w["open"] or {}).values()) for w in drained["workers"].values()
            )
            if idle or time.monotonic() > drain_until:
                break
        time.sleep(3)  # closing connections settle
        drained = _sample(port, server.pid, started, redis_port, gc=True)
        drained["redis"]["left"] = _redis_left(redis_port)
        print(f"drained: {json.dumps(drained['workers'])}", flush=True)
        tracemalloc_report = None
        if args.tracemalloc:
            tracemalloc_report = _tracemalloc(port, workers)
    finally:
        if clients is not None:
            clients.kill()
        stop(server)
        stop(redis)
        log.close()
    problems = _log_problems(log_path)
    counters = traffic["counters"]
    counters["broadcast.sent"] = broadcasts
    counters["broadcast.failed"] = failed_broadcasts
    verdict = _verdict(
        samples, warmup, empty, drained, workers, problems, counters, args.connections
    )
    verdict["rss_slope_kib_per_hour"] = _slope_kib_per_hour(samples, warmup)
    verdict["cpu_cores"] = _cpu_cores(samples)
    payload = {
        **result_header("soak"),
        "note": "2-core machine shared with other work during the run",
        "settings": {
            "minutes": args.minutes,
            "connections": args.connections,
            "mix": dict(MIX),
            "workers": 2,
            "echo_every_s": args.echo_every,
            "broadcast_every_s": args.broadcast_every,
            "post_every_s": args.post_every,
            "churn": args.churn,
            "churn_every_s": args.churn_every,
            "session_life_s": list(SESSION_LIFE),
        },
        "verdict": verdict,
        "traffic": counters,
        "server_log": problems,
        "empty": empty,
        "drained": drained,
        # At most about 60 points a figure in the file (the verdict used every sample).
        "series": series(samples[:: max(1, len(samples) // 60)]),
    }
    if tracemalloc_report is not None:
        payload["tracemalloc"] = tracemalloc_report
    if args.out:
        out = Path(args.out)
    elif args.smoke:
        out = Path("/tmp/soak_smoke.json")
    else:
        out = RESULTS / "soak.json"
    out.write_text(dumps(payload))
    if args.keep_log:
        shutil.copy(log_path, out.with_suffix(".log"))
    print(json.dumps({k: v for k, v in verdict.items() if k != "drain"}, indent=2))
    print(f"server log: {log_path}")
    print(f"verdict: {'PASS' if verdict['pass'] else 'FAIL'}; wrote {out}")
    return 0 if verdict["pass"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--minutes", type=float, help="default 30 (--smoke: 2)")
    parser.add_argument("--connections", type=int, help="default 5,000 (--smoke: 500)")
    parser.add_argument("--smoke", action="store_true", help="2 minutes, 500 connections")
    parser.add_argument("--echo-every", type=float, default=20.0)
    parser.add_argument("--broadcast-every", type=float, default=5.0)
    parser.add_argument("--post-every", type=float, default=10.0)
    parser.add_argument("--churn", type=float, default=0.01, help="share of slots dropped")
    parser.add_argument("--churn-every", type=float, default=5.0)
    parser.add_argument("--tracemalloc", action="store_true", help="diff of traced memory")
    parser.add_argument("--out", help="result file (default: results/soak.json)")
    parser.add_argument("--keep-log", action="store_true", help="copy the server log by it")
    args = parser.parse_args()
    if args.minutes is None:
        args.minutes = 2.0 if args.smoke else 30.0
    if args.connections is None:
        args.connections = 500 if args.smoke else 5000
    sys.exit(driver(args))


if __name__ == "__main__":
    main()
