"""HTTP/2 throughput: Tidings vs hypercorn vs granian (``--http 2``) vs Daphne, same run.

Every server runs ``http2_app.py`` (the bare apps of ``apps.py``: 13-octet hello at
``/``, 64 KiB at ``/64k``; WebSocket echo) with one worker pinned to CPU 0, access logs
off, uvloop where the server takes it; the load generator is pinned to CPU 1. Over h2c
(prior knowledge) and over TLS (ALPN h2, a throwaway self-signed certificate), where
each server supports it (Daphne serves HTTP/2 over TLS only). Loads:

- ``hello``: ``h2load -c 10 -m 10`` (10 connections, 10 streams each);
- ``64k``: the same against the 64 KiB response;
- ``streams100``: ``h2load -c 1 -m 100`` (100 concurrent streams on one connection);
- ``ws``: WebSocket echo over HTTP/2 (RFC 8441): one connection, 10 WebSockets as
  extended-CONNECT streams, each ping-ponging a 32-octet text message; echo round trips
  a second. h2load cannot do this: the client is raw frames (``compliance/h2``'s
  helpers). Against Tidings and hypercorn; a server that does not advertise
  SETTINGS_ENABLE_CONNECT_PROTOCOL is reported as unsupported.

The median of the rounds (servers alternating order) is printed with Tidings' ratio
to each peer, and written to ``benchmarks/results/http2.json``.

    python benchmarks/http2.py [--rounds 3] [--duration 5] [--servers tidings,hypercorn]
                               [--transports h2c,tls] [--loads hello,64k,streams100,ws]
    python benchmarks/http2.py --floor   # the protocol cores' cost per request, in process

The results also hold ``h2_floor``: the CPU time per hello request that the protocol
core alone takes, the ``h2`` library's and Tidings' own (``tidings.wire.http2``).

Needs ``h2load`` (Debian: apt-get install nghttp2-client) and ``openssl``. The peers are
installed from PyPI into ``benchmarks/.venv-peers`` on first use.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import (  # noqa: E402
    ROOT,
    free_port,
    peers_python,
    pinned,
    result_header,
    stop,
    wait_port,
    write_results,
)

PEER_PACKAGES = ["hypercorn", "granian", "uvloop", "daphne", "twisted[http2,tls]"]
SERVERS = ("tidings", "hypercorn", "granian", "daphne")
H2LOAD = {
    "hello": ("/", 10, 10),
    "64k": ("/64k", 10, 10),
    "streams100": ("/", 1, 100),
}
WS_SERVERS = ("tidings", "hypercorn")
WS_STREAMS = 10
WS_MESSAGE = b"x" * 32
UNSUPPORTED = {("daphne", "h2c"): "Daphne serves HTTP/2 over TLS only"}


def server_cmd(name: str, port: int, tmp: Path, tls: bool) -> list[str]:
    """The command line that serves ``http2_app:app`` on ``port``, over TLS when ``tls``.

    ``tmp`` holds what ``prepare`` wrote: the certificate, its key, ``hypercorn.toml``.
    """
    cert = (tmp / "cert.pem", tmp / "key.pem") if tls else None
    bench = str(HERE)
    peers_bin = peers_python(PEER_PACKAGES).parent
    if name == "tidings":
        cmd = [str(Path(sys.executable).parent / "tidings"), "serve", "http2_app:app"]
        cmd += ["--app-dir", bench, "--port", str(port), "--no-access-log"]
        cmd += ["--log-level", "warning"]
        if cert:
            cmd += ["--ssl-certfile", str(cert[0]), "--ssl-keyfile", str(cert[1])]
        return cmd
    if name == "hypercorn":
        cmd = [str(peers_bin / "hypercorn"), "--bind", f"127.0.0.1:{port}", "-k", "uvloop"]
        cmd += ["--workers", "1", "--log-level", "warning"]
        cmd += ["--config", str(tmp / "hypercorn.toml")]
        if cert:
            cmd += ["--certfile", str(cert[0]), "--keyfile", str(cert[1])]
        return [*cmd, "http2_app:app"]
    if name == "granian":
        cmd = [str(peers_bin / "granian"), "--interface", "asgi", "--http", "2"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        cmd += ["--loop", "uvloop", "--log-level", "warning", "--working-dir", bench]
        if cert:
            cmd += ["--ssl-certificate", str(cert[0]), "--ssl-keyfile", str(cert[1])]
        return [*cmd, "http2_app:app"]
    if name == "daphne":
        assert cert is not None
        endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={cert[1]}:certKey={cert[0]}"
        return [str(peers_bin / "daphne"), "-e", endpoint, "-v", "0", "http2_app:app"]
    raise ValueError(name)


def prepare(tmp: Path) -> None:
    """Write hypercorn's config file and a self-signed P-256 certificate for 127.0.0.1.

    The key is PKCS#8, the only form granian reads.
    """
    # hypercorn closes a connection after 1,000 requests (keep_alive_max_requests, not a
    # flag); h2load -D does not reconnect, so the cap would zero its figures mid-run.
    (tmp / "hypercorn.toml").write_text("keep_alive_max_requests = 100000000\n")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)),
            *("-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )


_FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed")
_MEAN = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b")


def run_h2load(url: str, clients: int, streams: int, duration: int) -> dict[str, float]:
    """One h2load run: req/s, failed requests and the mean time per request (ms)."""
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1"]
    cmd += ["-D", str(duration), "--warm-up-time", "1", url]
    proc = subprocess.run(
        pinned(cmd, 1), capture_output=True, text=True, timeout=duration + 60, check=False
    )
    out = proc.stdout
    finished, requests, mean = _FINISHED.search(out), _REQUESTS.search(out), _MEAN.search(out)
    if finished is None or requests is None:
        raise RuntimeError(f"h2load gave no figures:\n{out}\n{proc.stderr}")
    mean_ms = float("nan")
    if mean:
        value, unit = float(mean.group(1)), mean.group(2)
        mean_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {
        "rps": float(finished.group(1)),
        "succeeded": float(requests.group(1)),
        "failed": float(requests.group(2)),
        "mean_ms": mean_ms,
    }


def run_ws(port: int, tls: bool, duration: int) -> dict[str, float] | str:
    """The WebSocket-over-HTTP/2 echo client, in its own process on CPU 1."""
    cmd = [sys.executable, __file__, "--ws-client", str(port), "--duration", str(duration)]
    if tls:
        cmd.append("--tls")
    proc = subprocess.run(
        pinned(cmd, 1), capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if proc.returncode == 3:
        return f"unsupported: {proc.stdout.strip()}"
    if proc.returncode != 0:
        return f"error: {(proc.stdout + proc.stderr).strip()[-300:]}"
    fields = dict(line.split("=", 1) for line in proc.stdout.split())
    return {"rps": float(fields["rps"]), "round_trips": float(fields["round_trips"])}


def ws_client(port: int, tls: bool, duration: float) -> int:
    """Echo round trips a second over RFC 8441 WebSockets; prints ``rps=... round_trips=...``.

    Exit status 3 when the server does not offer extended CONNECT.
    """
    sys.path.insert(0, str(ROOT / "compliance" / "h2"))
    from _cases_rfc8441 import (
        ENABLE_CONNECT_PROTOCOL,
        wait_accepted,
        websocket_connect,
        ws_frame,
    )
    from _client import Probe, Target, raw_frame

    probe = Probe(Target(port=port, tls=tls, timeout=5.0))
    max_window = 2**31 - 1
    probe.handshake({0x4: max_window})
    if probe.server_settings.get(ENABLE_CONNECT_PROTOCOL) != 1:
        print("the server does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL")
        return 3
    probe.send(raw_frame(0x8, 0, 0, (max_window - 65535).to_bytes(4, "big")))
    streams = [1 + 2 * i for i in range(WS_STREAMS)]
    for sid in streams:
        probe.send(websocket_connect(probe, sid))
        status = wait_accepted(probe, sid)
        if not status.startswith("2"):
            print(f"extended CONNECT answered {status}")
            return 1
    # Pre-built DATA frames, one per stream: each message goes out the moment its echo is in.
    message = {sid: raw_frame(0x0, 0, sid, ws_frame(WS_MESSAGE)) for sid in streams}
    echo_size = 2 + len(WS_MESSAGE)  # an unmasked server frame of under 126 octets
    pending = {sid: 0 for sid in streams}  # octets of WebSocket data not yet a whole echo
    sock = probe.sock
    buffer = bytearray(probe.take_buffered())
    sock.sendall(b"".join(message.values()))
    sock.settimeout(5.0)
    count = 0
    start = time.monotonic()
    deadline = start + duration
    while time.monotonic() < deadline:
        chunk = sock.recv(262144)
        if not chunk:
            print("the server closed the connection")
            return 1
        buffer += chunk
        out = []
        offset = 0
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if len(buffer) - offset < 9 + length:
                break
            kind = buffer[offset + 3]
            sid = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            if kind == 0x0 and sid in pending:
                pending[sid] += length
                while pending[sid] >= echo_size:
                    pending[sid] -= echo_size
                    count += 1
                    out.append(message[sid])
            elif kind in (0x3, 0x7):  # RST_STREAM, GOAWAY
                print(f"the server sent frame type {kind}")
                return 1
            offset += 9 + length
        del buffer[:offset]
        if out:
            sock.sendall(b"".join(out))
    elapsed = time.monotonic() - start
    probe.close()
    print(f"rps={count / elapsed:.1f} round_trips={count}")
    return 0


def h2_floor(requests: int = 30_000) -> dict[str, float]:
    """CPU microseconds per hello request spent in the HTTP/2 protocol core alone, no I/O.

    An in-process ``h2`` client sends what ``h2load -m 10`` sends (10 GET streams a
    batch, window updates as it reads); the server side answers each stream with the
    hello response's fields and body. Only the server side is timed, for two cores:
    the ``h2`` library configured as Tidings configured it before it had its own core
    (``floor_us_h2``), and Tidings' ``tidings.wire.http2`` with its static-table
    encoder (``floor_us_tidings``): the floor of a server built on each.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, RequestReceived

    from tidings.server._h2_hpack import StaticEncoder
    from tidings.wire.http2 import HTTP2Connection
    from tidings.wire.http2 import RequestReceived as CoreRequest

    request = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1:8000"),
        (b":path", b"/"),
        (b"user-agent", b"h2load nghttp2/1.52.0"),
    ]
    response = [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"13"),
        (b"date", b"Mon, 07 Dec 2026 22:00:00 GMT"),
    ]
    figures = {}
    for core in ("h2", "tidings"):
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        server: Any
        if core == "h2":
            server = H2Connection(
                H2Configuration(
                    client_side=False,
                    header_encoding=None,
                    validate_outbound_headers=False,
                    normalize_outbound_headers=False,
                    split_outbound_cookies=False,
                    validate_inbound_headers=False,  # Tidings checks request fields itself
                )
            )
            server.initiate_connection()
            requested: Any = RequestReceived
        else:
            server = HTTP2Connection(StaticEncoder())
            requested = CoreRequest
            server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        spent = 0.0
        sid = 1
        for _ in range(requests // 10):
            for _ in range(10):
                client.send_headers(sid, request, end_stream=True)
                sid += 2
            data = client.data_to_send()
            start = time.process_time()
            for event in server.receive_data(data):
                if isinstance(event, requested):
                    server.send_headers(event.stream_id, response)
                    server.send_data(event.stream_id, b"Hello, world!", end_stream=True)
            out = server.data_to_send()
            spent += time.process_time() - start
            for event in client.receive_data(out):
                if isinstance(event, DataReceived):
                    client.increment_flow_control_window(event.flow_controlled_length)
        figures[f"floor_us_{core}"] = round(spent / requests * 1e6, 1)
    return figures


def measure(
    name: str, transport: str, tmp: Path, loads: list[str], duration: int
) -> dict[str, Any]:
    """Start ``name`` once for ``transport`` and run every load against it."""
    port = free_port()
    tls = transport == "tls"
    cmd = server_cmd(name, port, tmp, tls)
    # The server's output goes to a file: a pipe nobody reads would fill and stall it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(pinned(cmd, 0), cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
        figures: dict[str, Any] = {}
        try:
            wait_port(port, proc)
            base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            for load in loads:
                if load == "ws":
                    if name in WS_SERVERS:
                        figures[load] = run_ws(port, tls, duration)
                    continue
                path, clients, streams = H2LOAD[load]
                figures[load] = run_h2load(base + path, clients, streams, duration)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            figures["error"] = str(exc)[-500:]
        finally:
            stop(proc)
        log.seek(0)
        errors = log.read().decode(errors="replace")
        if "error" in figures:
            figures["error"] += " | server: " + errors[-500:]
        elif "Traceback" in errors:
            figures["server_tracebacks"] = errors.count("Traceback")
    return figures


def _summary(raw: dict[str, Any], servers: list[str], loads: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for transport, by_server in raw.items():
        summary[transport] = {}
        for load in loads:
            row: dict[str, Any] = {}
            for name in servers:
                runs = by_server.get(name, [])
                if load == "ws" and name not in WS_SERVERS:
                    continue
                if (name, transport) in UNSUPPORTED:
                    row[name] = {"unsupported": UNSUPPORTED[name, transport]}
                    continue
                got = [r[load] for r in runs if load in r]
                numbers = [g for g in got if isinstance(g, dict)]
                if numbers:
                    row[name] = {
                        key: statistics.median(g[key] for g in numbers) for key in numbers[0]
                    }
                elif got:
                    row[name] = {"unsupported": str(got[0])}
                elif runs and "error" in runs[0]:
                    row[name] = {"error": runs[0]["error"]}
            summary[transport][load] = row
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"{'transport':10}{'load':12}{'server':11}{'req/s':>12}{'failed':>8}{'tidings/x':>11}")
    for transport, by_load in summary.items():
        for load, row in by_load.items():
            base = row.get("tidings", {}).get("rps")
            for name, fig in row.items():
                if "rps" not in fig:
                    reason = fig.get("unsupported") or fig.get("error", "")
                    print(f"{transport:10}{load:12}{name:11}  {reason[:70]}")
                    continue
                ratio = ""
                if base and fig["rps"] and name != "tidings":
                    ratio = f"{base / fig['rps']:.2f}x"
                failed = f"{fig['failed']:.0f}" if "failed" in fig else ""
                print(f"{transport:10}{load:12}{name:11}{fig['rps']:12.0f}{failed:>8}{ratio:>11}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--transports", default="h2c,tls")
    parser.add_argument("--loads", default="hello,64k,streams100,ws")
    parser.add_argument("--ws-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--floor", action="store_true", help="only print h2's own CPU cost per request"
    )
    args = parser.parse_args()
    if args.ws_client:
        return ws_client(args.ws_client, args.tls, args.duration)
    if args.floor:
        print(h2_floor())
        return 0
    for tool, package in (("h2load", "nghttp2-client"), ("openssl", "openssl")):
        if not shutil.which(tool):
            print(f"error: {tool} is missing (Debian: apt-get install {package})", file=sys.stderr)
            return 2
    servers, loads = args.servers.split(","), args.loads.split(",")
    transports = args.transports.split(",")
    for value, known in (
        (servers, SERVERS),
        (loads, (*H2LOAD, "ws")),
        (transports, ("h2c", "tls")),
    ):
        unknown = set(value) - set(known)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    peers_python(PEER_PACKAGES)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {s: [] for s in servers} for t in transports
    }
    with tempfile.TemporaryDirectory(prefix="tidings-h2-bench-") as tmp:
        prepare(Path(tmp))
        for round_no in range(args.rounds):
            for transport in transports:
                order = servers if round_no % 2 == 0 else list(reversed(servers))
                for name in order:
                    if (name, transport) in UNSUPPORTED:
                        continue
                    figures = measure(name, transport, Path(tmp), loads, args.duration)
                    raw[transport][name].append(figures)
                    shown = {
                        k: (f"{v['rps']:.0f}/s" if isinstance(v, dict) and "rps" in v else v)
                        for k, v in figures.items()
                    }
                    print(f"round {round_no + 1} {transport:4} {name:10} {shown}", flush=True)
    summary = _summary(raw, servers, loads)
    _print_summary(summary)
    for transport, by_server in raw.items():
        for name, runs in by_server.items():
            logged = sum(r.get("server_tracebacks", 0) for r in runs)
            if logged:
                print(f"note: {name} over {transport} logged {logged} tracebacks", file=sys.stderr)
    floor = h2_floor()
    print(f"protocol core alone, per hello request (CPU microseconds): {floor}")
    write_results(
        {
            **result_header("http2"),
            "h2_floor": floor,
            "method": f"h2load -t1 -D{args.duration} --warm-up-time 1 (hello and 64k: -c10 -m10; "
            f"streams100: -c1 -m100); ws: 1 connection, {WS_STREAMS} RFC 8441 WebSockets, "
            f"{len(WS_MESSAGE)}-octet echo; server on CPU 0, client on CPU 1, "
            f"median of {args.rounds} alternating rounds, access logs off",
            "results": summary,
            "rounds": raw,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
