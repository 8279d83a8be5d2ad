"""The broker connection: auth, persistent sessions, outages, publish queue, flood, ws://."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.mqtt._broker import Mosquitto
from tests.mqtt.conftest import Device, settings_for, wait_for
from tidings.mqtt import (
    AsyncMqttConsumer,
    MqttConfigError,
    MqttConnectError,
    NotConnected,
    PublishQueueFull,
    TopicRouter,
    running,
    topic,
)

SEEN: list[bytes] = []
GATE: asyncio.Event | None = None


class Recorder(AsyncMqttConsumer):
    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        SEEN.append(payload)


class Slow(AsyncMqttConsumer):
    """Holds every message until GATE opens: the flood piles up behind it."""

    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        assert GATE is not None
        await GATE.wait()
        SEEN.append(payload)


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


ROUTER = TopicRouter([topic("t/<id>", Recorder.as_asgi(), qos=1)])


async def test_bad_password_fails_start_up_naming_the_setting(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, users={"app": "right"})
    server.start()
    try:
        with (
            settings_for(server.url, USERNAME="app", PASSWORD="wrong"),
            pytest.raises(MqttConnectError) as info,
        ):
            async with running(ROUTER):
                pass
        assert "MQTT_BROKERS['default']['USERNAME']" in str(info.value)
        assert "not authorized" in str(info.value) or "bad user name" in str(info.value)
        assert "wrong" not in str(info.value)  # never the password itself
        with settings_for(server.url, USERNAME="app", PASSWORD="right"):
            async with running(ROUTER) as runtime:
                assert runtime.brokers["default"].connection.connected
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"URL": "http://x"}, "MQTT_BROKERS['default']['URL']"),
        ({"URL": "mqtt://h:99999"}, "MQTT_BROKERS['default']['URL']"),
        ({"URL": "mqtt://h", "PROTOCOL": "4"}, "MQTT_BROKERS['default']['PROTOCOL']"),
        ({"URL": "mqtt://h", "CLEAN_START": False}, "MQTT_BROKERS['default']['CLIENT_ID']"),
        ({"URL": "mqtt://h", "KEEPALIVE": "60"}, "MQTT_BROKERS['default']['KEEPALIVE']"),
        ({"URL": "mqtt://h", "PUBLISH_QUEUE": -1}, "MQTT_BROKERS['default']['PUBLISH_QUEUE']"),
        ({"URL": "mqtt://h", "TLS": {"CA_FILE": "x"}}, "MQTT_BROKERS['default']['TLS']"),
        ({"URL": "mqtts://h", "TLS": {"CA_FILE": "/nope"}}, "['TLS']['CA_FILE']"),
        ({"URL": "mqtt://h", "PASWORD": "typo"}, "unknown key(s) 'PASWORD'"),
        ({"URL": "mqtt://h", "SHARED_GROUP": "a/b"}, "['SHARED_GROUP']"),
    ],
)
async def test_bad_settings_fail_naming_the_key(entry: dict[str, Any], key: str) -> None:
    from django.test import override_settings

    with (
        override_settings(MQTT_BROKERS={"default": entry}),
        pytest.raises(MqttConfigError) as info,
    ):
        async with running(ROUTER):
            pass
    assert key in str(info.value)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_persistent_session_keeps_qos1_messages_while_the_app_is_down(
    broker: Mosquitto, device: Device, protocol: str
) -> None:
    settings = settings_for(broker.url, CLIENT_ID="persist-1", CLEAN_START=False, PROTOCOL=protocol)
    with settings:
        async with running(ROUTER):
            await asyncio.to_thread(device.publish, "t/1", "before", 1)
            await wait_for(lambda: SEEN == [b"before"])
        for n in range(5):  # the app is down
            await asyncio.to_thread(device.publish, "t/1", f"while-down-{n}", 1)
        async with running(ROUTER):
            await wait_for(lambda: len(SEEN) == 6)
    assert SEEN[1:] == [f"while-down-{n}".encode() for n in range(5)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_clean_start_loses_what_was_sent_while_down(
    broker: Mosquitto, device: Device, protocol: str
) -> None:
    # The counterpart of the test above: CLEAN_START True (the default) keeps nothing.
    with settings_for(broker.url, CLIENT_ID="clean-1", PROTOCOL=protocol):
        async with running(ROUTER):
            pass
        await asyncio.to_thread(device.publish, "t/1", "lost", 1)
        async with running(ROUTER):
            await asyncio.to_thread(device.publish, "t/1", "after", 1)
            await wait_for(lambda: len(SEEN) >= 1)
    assert SEEN == [b"after"]


async def test_broker_sigkill_and_restart_mid_stream(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(broker.url, CLIENT_ID="kill-1", CLEAN_START=False)
    with settings, caplog.at_level(logging.DEBUG, logger="tidings.mqtt"):
        async with running(ROUTER) as runtime:
            device = await asyncio.to_thread(Device, broker.port)
            for n in range(20):
                await asyncio.to_thread(device.publish, "t/1", f"a{n}", 1)
            await wait_for(lambda: len(SEEN) == 20)
            device.close()
            broker.kill()
            await wait_for(lambda: not runtime.brokers["default"].connection.connected)
            await asyncio.sleep(0.5)  # a few failed reconnect attempts while it is down
            broker.start()
            await wait_for(lambda: runtime.brokers["default"].connection.connected)
            device = await asyncio.to_thread(Device, broker.port)
            for n in range(20):
                await asyncio.to_thread(device.publish, "t/1", f"b{n}", 1)
            await wait_for(lambda: len(SEEN) >= 40)
            device.close()
    assert set(SEEN) >= {f"b{n}".encode() for n in range(20)}
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    outages = [r for r in records if "connection lost" in r.getMessage()]
    recoveries = [r for r in records if "reconnected after" in r.getMessage()]
    assert len(outages) == 1 and outages[0].levelno == logging.WARNING
    assert len(recoveries) == 1
    failed_attempts = [r for r in caplog.records if "reconnect attempt" in r.getMessage()]
    assert failed_attempts and all(r.levelno == logging.DEBUG for r in failed_attempts)


async def test_publish_while_down_queues_up_to_the_bound_then_raises(
    broker: Mosquitto, device: Device
) -> None:
    # Retained, so that a subscriber that comes after the flush still sees each one:
    # whether Tidings or the new device reaches the restarted broker first is a race.
    def publish(name: str) -> None:
        runtime.publish(
            {"type": "mqtt.publish", "topic": name, "payload": b"q", "qos": 1, "retain": True}
        )

    device.close()
    with settings_for(broker.url, PUBLISH_QUEUE=3):
        async with running(None) as runtime:
            connection = runtime.brokers["default"].connection
            broker.kill()
            await wait_for(lambda: not connection.connected)
            for n in range(3):
                publish(f"out/{n}")
            with pytest.raises(PublishQueueFull, match="PUBLISH_QUEUE"):
                publish("out/3")
            assert connection.queued == 3
            broker.start()
            await wait_for(lambda: connection.connected and connection.queued == 0)
            later = await asyncio.to_thread(Device, broker.port)
            try:
                await asyncio.to_thread(later.subscribe, "out/#")
                await wait_for(lambda: len(later.received) == 3)
            finally:
                later.close()
    assert sorted(t for t, *_ in later.received) == ["out/0", "out/1", "out/2"]


async def test_publish_while_down_raises_when_not_queued(broker: Mosquitto) -> None:
    with settings_for(broker.url, PUBLISH_QUEUE=0):
        async with running(None) as runtime:
            broker.kill()
            await wait_for(lambda: not runtime.brokers["default"].connection.connected)
            with pytest.raises(NotConnected, match=r"\['PUBLISH_QUEUE'\] is 0"):
                runtime.publish({"type": "mqtt.publish", "topic": "x", "payload": b""})


async def test_a_flood_is_bounded_by_max_pending(broker: Mosquitto, device: Device) -> None:
    global GATE
    GATE = asyncio.Event()
    router = TopicRouter([topic("flood/<id>", Slow.as_asgi(), qos=0)])
    count = 20_000
    payload = "x" * 200
    with settings_for(broker.url, MAX_PENDING=100):
        async with running(router) as runtime:
            broker_runtime = runtime.brokers["default"]
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                # A device floods 4 MB over 50 topics while the consumers are stuck.
                await asyncio.to_thread(
                    _flood, device, [(f"flood/{n % 50}", payload) for n in range(count)]
                )
                await asyncio.sleep(0.5)  # let whatever the socket holds arrive
                held = broker_runtime.pending
                grown = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            assert held <= 100 + 60  # the bound, plus one read's overshoot
            assert grown < 1_000_000  # far below the 4 MB sent
            GATE.set()
            await wait_for(lambda: len(SEEN) >= held)


def _flood(device: Device, messages: list[tuple[str, str]]) -> None:
    for name, payload in messages:
        device.client.publish(name, payload, qos=0)
    device.publish("flood/done", "end", 1)


async def test_websocket_transport(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, websockets=True)
    server.start()
    try:
        device = await asyncio.to_thread(Device, server.port)
        url = f"ws://127.0.0.1:{server.ws_port}/mqtt"
        with settings_for(url):
            async with running(ROUTER):
                await asyncio.to_thread(device.publish, "t/ws", "over websockets", 1)
                await wait_for(lambda: SEEN == [b"over websockets"])
        device.close()
    finally:
        server.stop()


async def test_tls_transport_checks_the_certificate(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, tls=True)
    server.start()
    try:
        device = await asyncio.to_thread(Device, server.port)
        url = f"mqtts://127.0.0.1:{server.tls_port}"
        ca = {"CA_FILE": str(tmp_path / "server.pem")}
        with settings_for(url, TLS=ca):
            async with running(ROUTER):
                await asyncio.to_thread(device.publish, "t/tls", "over tls", 1)
                await wait_for(lambda: SEEN == [b"over tls"])
        device.close()
    finally:
        server.stop()


# paho-mqtt 2.2 leaves the socket of a failed TLS handshake for the garbage collector
# (Client._ssl_wrap_socket does not close it), which warns when it is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_refuses_an_unknown_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Mosquitto(tmp_path, tls=True)
    server.start()
    try:
        url = f"mqtts://127.0.0.1:{server.tls_port}"
        with settings_for(url), caplog.at_level(logging.WARNING, logger="tidings.mqtt"):
            async with running(ROUTER) as runtime:
                assert not runtime.brokers["default"].connection.connected
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    finally:
        server.stop()
