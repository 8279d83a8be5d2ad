"""MQTT benchmark: device-to-browser latency at a fixed rate, and throughput.

    python benchmarks/mqtt.py [--rate 1000] [--seconds 5] [--burst 20000] [--qos 1]
                              [--variants tidings,tidings-bridge,tidings-memory,mqttasgi]

The path measured: a sensor (paho-mqtt) publishes to ``bench/<n>`` on a private
Mosquitto -> the app's MQTT side -> the channel layer group ``browsers`` -> a
WebSocket consumer -> a WebSocket client, which timestamps the arrival. The
sensor and the client live in this process, so both ends read the same clock.

Variants, in the same run and on the same broker:

* ``mqttasgi``: ``mqttasgi`` (MQTT) + Daphne (WebSocket) + channels_redis, from the
  peers' venv: the way a Channels project adds MQTT today (two processes);
* ``tidings``: ``tidings serve`` with the same consumer code (``mqtt_app.py``), one
  process, the Redis layer as the peer;
* ``tidings-bridge``: Tidings' ``MQTT_BRIDGES`` topic -> group, no MQTT consumer;
* ``tidings-memory``: as ``tidings`` with the in-memory layer (one process needs no Redis).

Phase 1 (latency): ``--rate`` messages/s for ``--seconds``; p50/p99 of
publish-to-WebSocket time. Phase 2 (throughput): ``--burst`` messages published
as fast as the sensor can; messages/s received by the WebSocket client.
Results go to ``benchmarks/results/mqtt.json``. On a shared machine, run it under
the benchmark lock (``flock``) so that no other benchmark runs at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paho.mqtt.client as paho  # noqa: E402
from _peers import (  # noqa: E402
    free_port,
    peers_python,
    result_header,
    stop,
    wait_port,
    write_results,
)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

PEER_PACKAGES = ["mqttasgi", "channels", "channels-redis", "daphne"]
TOPICS = 100  # sensors


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class Services:
    """A private mosquitto and redis-server, stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.mqtt_port = free_port()
        self.redis_port = free_port()
        config = directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\n"
            "max_inflight_messages 100\nmax_queued_messages 100000\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.mosquitto = subprocess.Popen(
            [mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.mqtt_port, self.mosquitto)
        wait_port(self.redis_port, self.redis)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def close(self) -> None:
        stop(self.mosquitto)
        stop(self.redis)


def servers(
    variant: str, services: Services, qos: int
) -> tuple[int, list[list[str]], dict[str, str]]:
    """The WebSocket port, the commands to start and their environment."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_MQTT_PORT": str(services.mqtt_port),
           "BENCH_QOS": str(qos), "BENCH_REDIS_URL": services.redis_url}  # fmt: skip
    if variant == "mqttasgi":
        env["BENCH_PREFIX"] = "channels"
        bin_dir = peers_python(PEER_PACKAGES).parent
        return port, [
            [str(bin_dir / "daphne"), "-b", "127.0.0.1", "-p", str(port), "mqtt_app:application"],
            [str(bin_dir / "mqttasgi"), "-H", "127.0.0.1", "-p", str(services.mqtt_port),
             "mqtt_app:application"],
        ], env  # fmt: skip
    env["BENCH_PREFIX"] = "tidings"
    if variant == "tidings-bridge":
        env["BENCH_BRIDGE"] = "1"
    if variant == "tidings-memory":
        env["BENCH_REDIS_URL"] = ""
    return port, [
        [sys.executable, "-m", "tidings", "serve", "mqtt_app:application", "--app-dir", str(HERE),
         "--port", str(port), "--lifespan", "on", "--no-access-log", "--log-level", "warning"],
    ], env  # fmt: skip


class Sensor:
    """The publishing side: one paho connection, its own network thread."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-{os.getpid()}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        # Nagle off, as the apps under test have it (Tidings sets it; so do devices that
        # publish a stream): the sensor's delays would otherwise blur what is measured.
        self.client.on_socket_open = lambda client, userdata, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, seq: int, qos: int) -> None:
        payload = f"{seq} {time.perf_counter()}"
        self.client.publish(f"bench/{seq % TOPICS}", payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _warm_up(ws: Any, sensor: Sensor, qos: int) -> None:
    """Publish until messages come through (the app has subscribed), then drain."""
    async with asyncio.timeout(30):
        while True:
            sensor.send(-1, qos)
            try:
                async with asyncio.timeout(0.2):
                    await ws.recv()
                    break
            except TimeoutError:
                continue
    try:
        while True:
            async with asyncio.timeout(0.5):
                await ws.recv()
    except TimeoutError:
        pass


async def _drain(ws: Any, *, limit: float) -> int:
    """Read until the stream is quiet for a second (at most ``limit`` s); return the count."""
    count = 0
    try:
        async with asyncio.timeout(limit):
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        await ws.recv()
                        count += 1
                except TimeoutError:
                    return count
    except TimeoutError:
        return count


async def run_load(port: int, mqtt_port: int, options: argparse.Namespace) -> dict[str, Any]:
    sensor = Sensor(mqtt_port)
    try:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            await _warm_up(ws, sensor, options.qos)
            # Phase 1: a steady rate, paced in a thread so the receiver is not delayed.
            total = int(options.rate * options.seconds)
            stop_pacing = threading.Event()

            def pace() -> None:
                start = time.perf_counter()
                for seq in range(total):
                    delay = start + seq / options.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    if stop_pacing.is_set():
                        return
                    sensor.send(seq, options.qos)

            pacer = threading.Thread(target=pace)
            pacer.start()
            latencies: list[float] = []
            try:
                async with asyncio.timeout(options.seconds + 15):
                    while len(latencies) < total:
                        seq, sent = (await ws.recv()).split()
                        if int(seq) >= 0:
                            latencies.append(time.perf_counter() - float(sent))
            except TimeoutError:
                pass
            stop_pacing.set()
            pacer.join()
            # What is still on its way from phase 1 must not count in phase 2.
            late = await _drain(ws, limit=60.0)
            # Phase 2: a burst, as fast as the sensor publishes.
            received = 0
            first_sent = time.perf_counter()
            burst = threading.Thread(
                target=lambda: [sensor.send(10**9 + n, options.qos) for n in range(options.burst)]
            )
            burst.start()
            last = first_sent
            try:
                async with asyncio.timeout(60):
                    while received < options.burst:
                        seq, _ = (await ws.recv()).split()
                        if int(seq) >= 10**9:
                            received += 1
                            last = time.perf_counter()
            except TimeoutError:
                pass
            burst.join()
    finally:
        sensor.close()
    return {
        "latency_messages": total,
        "latency_received": len(latencies),
        "latency_late": late,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "burst_messages": options.burst,
        "burst_received": received,
        "throughput_msg_s": received / (last - first_sent) if last > first_sent else 0.0,
    }


def measure(variant: str, services: Services, options: argparse.Namespace) -> dict[str, Any]:
    port, commands, env = servers(variant, services, options.qos)
    with tempfile.TemporaryFile() as log:
        processes = [subprocess.Popen(cmd, env=env, stdout=log, stderr=log) for cmd in commands]
        try:
            wait_port(port, processes[0], timeout=30)
            return asyncio.run(run_load(port, services.mqtt_port, options))
        except Exception:
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            for process in processes:
                stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--variants", default="mqttasgi,tidings,tidings-bridge,tidings-memory")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        services = Services(Path(directory))
        try:
            for variant in options.variants.split(","):
                results[variant] = measure(variant, services, options)
                r = results[variant]
                print(f"{variant:15} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                      f"({r['latency_received']}/{r['latency_messages']})  "
                      f"throughput {r['throughput_msg_s']:8.0f} msg/s "
                      f"({r['burst_received']}/{r['burst_messages']})", flush=True)  # fmt: skip
        finally:
            services.close()
    ratios: dict[str, float] = {}
    theirs = results.get("mqttasgi")
    for name, ours in results.items():
        if theirs and name != "mqttasgi" and theirs["throughput_msg_s"] and ours["p99_ms"]:
            ratios[f"throughput {name}/mqttasgi"] = (
                ours["throughput_msg_s"] / theirs["throughput_msg_s"]
            )
            ratios[f"p99 mqttasgi/{name}"] = theirs["p99_ms"] / ours["p99_ms"]
    for label, value in ratios.items():
        print(f"{label}: {value:.2f}x")
    payload = {
        **result_header("mqtt"),
        "options": vars(options),
        "results": results,
        "ratios": ratios,
    }
    print(f"wrote {write_results(payload)}")


if __name__ == "__main__":
    main()
