"""The IoT example end to end: mosquitto, the simulated fleet, the site, a WebSocket client.

Everything is real and runs as a user runs it (``examples/iot/README.md``):
a private mosquitto on a free port, ``fleet.py`` with 100 devices, ``tidings
serve iot.asgi:application``. The client is a bare WebSocket (what the
dashboard's script does): it sees readings, sends a command to one device and
gets that device's acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.mqtt._broker import Mosquitto, free_port

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "iot"


@contextmanager
def _process(command: list[str], **env: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command,
        cwd=EXAMPLE,
        env={**os.environ, **env},
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


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail("the server did not listen within 30 s")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[int]:
    broker = Mosquitto(tmp_path)
    broker.start()
    port = free_port()
    env = {"IOT_MQTT_URL": broker.url, "DJANGO_SETTINGS_MODULE": "iot.settings"}
    fleet = [
        sys.executable,
        "fleet.py",
        "--port",
        str(broker.port),
        "--interval",
        "0.2",
        "--duration",
        "120",
    ]
    serve = [
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "iot.asgi:application",
        "--port",
        str(port),
        "--lifespan",
        "on",
    ]
    try:
        with _process(fleet), _process(serve, **env) as server:
            _wait_listening(port, server)
            yield port
    finally:
        broker.stop()


async def test_dashboard_gets_readings_and_a_command_is_acknowledged(site: int) -> None:
    async with httpx.AsyncClient() as client:
        page = await client.get(f"http://127.0.0.1:{site}/")
    assert page.status_code == 200 and "new WebSocket" in page.text
    url = f"ws://127.0.0.1:{site}/ws/dashboard/"
    async with connect(url, origin=f"http://127.0.0.1:{site}") as ws:  # type: ignore[arg-type]
        readings: set[str] = set()
        async with asyncio.timeout(20):
            while len(readings) < 100:  # every one of the 100 devices is on the page
                message = json.loads(await ws.recv())
                if message["kind"] == "reading":
                    float(message["value"])
                    readings.add(message["device"])
        await ws.send(json.dumps({"device": "s42", "command": "blink"}))
        async with asyncio.timeout(20):
            while True:
                message = json.loads(await ws.recv())
                if message["kind"] == "ack":
                    break
        assert message["device"] == "s42"
        assert message["ack"]["command"] == "blink" and message["ack"]["ok"] is True
        # Bad input from the page is refused, not published.
        await ws.send(json.dumps({"device": "s1/../#", "command": "blink"}))
        async with asyncio.timeout(20):
            while message["kind"] != "error":
                message = json.loads(await ws.recv())
        assert message == {"kind": "error", "error": "unknown device"}
