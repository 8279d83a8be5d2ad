"""MQTT in real ``tidings serve`` processes: crash redelivery, and ``--workers 2``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.mqtt._broker import Mosquitto, free_port
from tests.mqtt.conftest import Device

REPO = Path(__file__).resolve().parent.parent.parent


@contextmanager
def serve(
    broker: Mosquitto, log: Path, *args: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``tidings serve`` of the test project, stopped (by PID) on exit."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.mqtt.project.settings",
        "MQTT_TEST_URL": broker.url,
        "MQTT_TEST_LOG": str(log),
        **env,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "tests.mqtt.project.asgi:application",
            "--port",
            str(free_port()),
            "--lifespan",
            "on",
            *args,
        ],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def lines(log: Path) -> list[list[str]]:
    return [line.split(" ", 2) for line in log.read_text().splitlines()] if log.exists() else []


def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_process_killed_mid_handler_gets_the_message_again(
    broker: Mosquitto, device: Device, tmp_path: Path
) -> None:
    log = tmp_path / "handled.log"
    hung = tmp_path / "handled.log.hung"
    session = {"MQTT_TEST_CLIENT_ID": "crash-test"}
    with serve(broker, log, **session) as first:
        # Ready once it handles a message (the subscription exists from then on).
        n = 0
        while not any(payload == "ready" for *_, payload in lines(log)):
            device.publish(f"work/ready{n}", "ready", 1)
            n += 1
            time.sleep(0.1)
            assert n < 200 and first.poll() is None
        device.publish("work/7", "hang", 1)
        wait_until(hung.exists)
        os.killpg(first.pid, signal.SIGKILL)  # mid-handler: no PUBACK was sent
        first.wait()
    assert not any(payload == "hang" for *_, payload in lines(log))
    with serve(broker, log, **session) as second:
        wait_until(lambda: any(payload == "hang" for *_, payload in lines(log)))
        handled_by = {pid for pid, _, payload in lines(log) if payload == "hang"}
        assert handled_by == {str(second.pid)}


def test_two_workers_share_the_subscription(
    broker: Mosquitto, device: Device, tmp_path: Path
) -> None:
    log = tmp_path / "handled.log"
    with serve(broker, log, "--workers", "2", MQTT_TEST_SHARED_GROUP="tidings") as server:
        # Wait until both workers take part (the broker round-robins a shared group).
        n = 0
        while len({pid for pid, *_ in lines(log)}) < 2:
            device.publish(f"work/warm{n}", f"warm{n}", 1)
            n += 1
            time.sleep(0.05)
            assert n < 400 and server.poll() is None
        for i in range(200):
            device.client.publish(f"work/{i % 10}", f"m{i}", qos=1)
        wait_until(lambda: sum(p.startswith("m") for *_, p in lines(log)) >= 200)
        time.sleep(0.3)  # a duplicate would arrive within this
    handled = [(pid, payload) for pid, _, payload in lines(log) if payload.startswith("m")]
    counts = Counter(payload for _, payload in handled)
    assert set(counts) == {f"m{i}" for i in range(200)}
    assert set(counts.values()) == {1}  # each message exactly once across the workers
    assert len({pid for pid, _ in handled}) == 2  # and both workers did some
