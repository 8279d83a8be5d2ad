"""One broker connection: paho-mqtt's protocol engine driven by the asyncio loop.

Theory of operation
-------------------
paho-mqtt (2.x) does the MQTT protocol; this module owns the I/O around it with
paho's documented external-loop API: paho tells us when its socket opens and
closes and when it has bytes to write (``on_socket_*`` callbacks), and we call
``loop_read``/``loop_write`` when the socket is ready and ``loop_misc`` once a
second (keep-alive). Only the blocking part of a connect (name lookup, TCP,
TLS and WebSocket handshakes) runs in a thread, while nothing else touches the
client.

Invariants:

* ``manual_ack=True``: a QoS 1 message is acknowledged (PUBACK) and a QoS 2
  message completed (PUBCOMP) only by :meth:`BrokerConnection.ack`, which the
  runtime calls once every handler of the message has returned. paho sends the
  QoS 2 PUBREC on receipt and hands the message over on PUBREL (MQTT 5.0
  section 4.3.3, method B).
* An acknowledgement is only sent on the connection the message came in on
  (``Inbound.generation``): after a reconnect the broker redelivers what was
  not acknowledged, and the late ack is dropped.
* Reading stops while the runtime holds ``MAX_PENDING`` messages
  (:meth:`pause_reading`): TCP backpressure then reaches the broker, which
  stops at its in-flight window for QoS 1/2 and applies its own queue limit.
* Reconnect: jittered exponential backoff between ``RECONNECT_DELAY`` and
  ``RECONNECT_MAX_DELAY``; one WARNING line when an outage starts, one INFO
  line when it ends; subscriptions are made again unless the broker kept the
  session.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tidings.mqtt._errors import MqttConnectError, NotConnected, PublishError, PublishQueueFull
from tidings.mqtt._settings import BrokerSettings
from tidings.mqtt._topics import check_topic

__all__ = ["BrokerConnection", "Inbound"]

logger = logging.getLogger("tidings.mqtt")

#: QoS 1/2 messages we may have sent and not yet had acknowledged (paho's default is 20).
MAX_OUTBOUND_INFLIGHT: Final = 100
#: Packets read per wake-up of the socket at most (fairness with the other connections).
READ_BATCH: Final = 64
#: Messages paho may hold beyond the in-flight window while connected.
MAX_OUTBOUND_QUEUED: Final = 10_000

# CONNACK reason codes that mean "fix your settings" (MQTT 5.0 section 3.2.2.2; paho maps
# the 3.1.1 return codes 2, 4 and 5 onto these) with the key that is wrong.
_REFUSALS: Final = {
    133: ("CLIENT_ID", "the broker rejected the client identifier"),
    134: ("USERNAME", "bad user name or password"),
    135: ("USERNAME", "not authorized"),
    140: ("USERNAME", "bad authentication method"),
}


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: dict[str, Any] | None
    mid: int
    generation: int


def _properties(props: Properties | None) -> dict[str, Any] | None:
    if props is None:
        return None
    found: dict[str, Any] = props.json()  # type: ignore[no-untyped-call]
    return found or None


def _publish_properties(properties: dict[str, Any] | None) -> Properties | None:
    if not properties:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in properties.items():
        try:
            setattr(props, name, value)
        except Exception as exc:
            raise PublishError(f"MQTT 5 publish property {name!r}: {exc}") from exc
    return props


def _no_delay(sock: Any) -> None:
    """Turn Nagle's algorithm off: paho leaves it on.

    With it, a PUBACK waits for the TCP acknowledgement of the previous one, which
    the broker delays (up to 40 ms on Linux): acknowledgements trickle, the broker's
    in-flight window fills, and QoS 1 latency goes from a millisecond to tens.
    """
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return  # paho's WebSocket wrapper: its frames are written whole anyway
    try:
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not a TCP socket


class BrokerConnection:
    """The connection to one configured broker, kept up until :meth:`stop`.

    Args:
        settings: the checked ``MQTT_BROKERS`` entry.
        on_message: called on the event loop with each received message.
        on_connected: called after each (re)connect, once subscriptions are made.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        on_message: Callable[[Inbound], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_connected = on_connected
        self.subscriptions: list[tuple[str, int]] = []
        self.generation = 0
        self.received = 0
        self.connected = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = self._make_client()
        self._sock: Any = None
        self._reading = True
        self._connack: asyncio.Future[tuple[ReasonCode, bool]] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._lost = asyncio.Event()
        self._queue: deque[tuple[str, bytes, int, bool, dict[str, Any] | None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # When the current outage began (None: connected, or never was).
        self._outage_started: float | None = None

    # -- paho set-up ---------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else s.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            transport="websockets" if s.scheme in ("ws", "wss") else "tcp",
            reconnect_on_failure=False,
            manual_ack=True,
        )
        if s.scheme in ("ws", "wss"):
            client.ws_set_options(path=s.ws_path)
        if s.tls is not None:
            context = ssl.create_default_context(cafile=s.tls.ca_file)
            if s.tls.cert_file:
                context.load_cert_chain(s.tls.cert_file, s.tls.key_file)
            client.tls_set_context(context)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        client.max_inflight_messages_set(MAX_OUTBOUND_INFLIGHT)
        client.max_queued_messages_set(MAX_OUTBOUND_QUEUED)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_subscribe = self._paho_subscribe
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        return client

    def _in_loop(self, func: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            func()
        else:
            self._loop.call_soon_threadsafe(func)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        _no_delay(sock)

        def opened() -> None:
            self._sock = sock
            if self._reading:
                self._loop.add_reader(sock, self._read)

        self._in_loop(opened)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def closed() -> None:
            if self._sock is sock:
                self._sock = None
            try:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            except (ValueError, OSError):
                pass  # closed already (by _close_socket): nothing is registered

        self._in_loop(closed)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def register() -> None:
            if sock is self._sock:  # not a socket that closed meanwhile
                self._loop.add_writer(sock, self._write)

        self._in_loop(register)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            self._loop.remove_writer(sock)

        self._in_loop(unregister)

    def _read(self) -> None:
        # paho reads one packet per call when nothing of ours is in flight; keep
        # calling while calls yield messages (a burst then costs one wake-up per
        # READ_BATCH packets, not one each), and stop at once when reading pauses.
        sock = self._sock
        for _ in range(READ_BATCH):
            before = self.received
            self._client.loop_read()
            if self.received == before or not self._reading or sock is not self._sock:
                break
        # TLS (and paho's WebSocket wrapper) may hold bytes the selector cannot see.
        pending = getattr(sock, "pending", None)
        while pending is not None and self._reading and sock is self._sock and pending():
            self._client.loop_read()

    def _write(self) -> None:
        self._client.loop_write()

    # -- paho callbacks (on the loop thread) ---------------------------------------------

    def _paho_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_result((reason, bool(flags.session_present)))

    def _paho_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.connected = False
        self._lost.set()
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"disconnected before CONNACK ({reason})"))
        subacks, self._subacks = self._subacks, {}
        for pending in subacks.values():
            if not pending.done():
                pending.set_exception(ConnectionError(f"disconnected before SUBACK ({reason})"))

    def _paho_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        waiter = self._subacks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            # MQTT 5.0 section 4.7.3: a topic must be UTF-8; paho raises on a bad one.
            logger.warning(
                "MQTT broker %r sent a topic that is not UTF-8; acknowledged and dropped",
                self.settings.alias,
            )
            client.ack(msg.mid, msg.qos)
            return
        inbound = Inbound(
            topic,
            bytes(msg.payload),
            msg.qos,
            bool(msg.retain),
            bool(msg.dup),
            _properties(getattr(msg, "properties", None)),
            msg.mid,
            self.generation,
        )
        self.received += 1
        self._on_message(inbound)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe, then keep the connection up in the background.

        A broker that refuses the connection (credentials, client id) fails the
        start; one that cannot be reached is retried in the background.

        Raises:
            MqttConnectError: the broker refused the connection; names the setting.
        """
        try:
            await self._connect_once()
        except MqttConnectError:
            raise
        except (OSError, ConnectionError, TimeoutError, ssl.SSLError, ValueError) as exc:
            self._outage_started = time.monotonic()
            logger.warning(
                "MQTT broker %r (%s) unreachable at start-up: %s; reconnecting in the background",
                self.settings.alias,
                self.settings.where,
                str(exc) or type(exc).__name__,  # not exc: its frames would live on
            )
            self._lost.set()
        self._tasks = [
            asyncio.create_task(self._keep_up(), name=f"tidings-mqtt-{self.settings.alias}"),
            asyncio.create_task(self._misc(), name=f"tidings-mqtt-misc-{self.settings.alias}"),
        ]

    async def stop(self) -> None:
        """Disconnect cleanly and stop reconnecting."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected:
            self._client.disconnect()
            self._client.loop_write()
        self.connected = False
        sock = self._sock
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            try:
                sock.close()
            except OSError:
                pass
            self._sock = None

    async def _connect_once(self) -> None:
        s = self.settings
        self.connected = False
        self._lost.clear()
        self._connack = self._loop.create_future()
        properties = None
        clean_start: Any = s.clean_start
        if s.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if s.clean_start else s.session_expiry
        else:
            clean_start = paho.MQTT_CLEAN_START_FIRST_ONLY  # 3.1.1: clean_session is in the client

        def connect() -> None:
            self._client.connect(
                s.host, s.port, s.keepalive, clean_start=clean_start, properties=properties
            )

        async with asyncio.timeout(s.connect_timeout):
            await asyncio.to_thread(connect)
            reason, session_present = await self._connack
        if reason.is_failure:
            self._close_socket()
            key, why = _REFUSALS.get(reason.value, ("URL", str(reason)))
            if key == "USERNAME" and s.username is None:
                why += " (no USERNAME is set)"
            raise MqttConnectError(
                f"MQTT broker {s.alias!r} ({s.where}) refused the connection: {why}; "
                f"check {s.key(key)}" + (" and PASSWORD" if key == "USERNAME" else "") + "."
            )
        self.generation += 1
        self.connected = True
        if not (session_present and s.protocol == "3.1.1"):
            async with asyncio.timeout(s.connect_timeout):
                await self._subscribe_all()
        self._flush_queue()
        if self._on_connected is not None:
            self._on_connected()

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            try:
                sock.close()
            except OSError:
                pass
            self._sock = None

    async def _subscribe_all(self) -> None:
        s = self.settings
        for topic_filter, qos in self.subscriptions:
            full = f"$share/{s.shared_group}/{topic_filter}" if s.shared_group else topic_filter
            if s.protocol == "5":
                # Retain handling 1: retained messages only for a new subscription,
                # so a resubscribe on a kept session does not replay them.
                options: Any = SubscribeOptions(qos=qos, retainHandling=1)
                rc, mid = self._client.subscribe(full, options=options)
            else:
                rc, mid = self._client.subscribe(full, qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise ConnectionError(f"subscribe to {full!r} failed: {rc}")
            waiter = self._subacks[mid] = self._loop.create_future()
            codes = await waiter
            if any(code.is_failure for code in codes):
                raise MqttConnectError(
                    f"MQTT broker {s.alias!r} refused the subscription to {full!r}: "
                    f"{', '.join(map(str, codes))} (check the broker's ACL for "
                    f"{s.key('USERNAME')})."
                )

    async def _keep_up(self) -> None:
        s = self.settings
        failures = 0
        while not self._stopping:
            await self._lost.wait()
            if self.connected:
                self.connected = False
            if self._outage_started is None:
                self._outage_started = time.monotonic()
                logger.warning(
                    "MQTT broker %r (%s) connection lost; reconnecting", s.alias, s.where
                )
            delay = min(s.reconnect_max_delay, s.reconnect_delay * 2 ** min(failures, 30))
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            try:
                await self._connect_once()
            except MqttConnectError as exc:
                failures += 1
                logger.debug("MQTT broker %r: %s", s.alias, str(exc))
                self.connected = False
                self._close_socket()
                self._lost.set()
                continue
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError, ValueError) as exc:
                failures += 1
                logger.debug("MQTT broker %r reconnect attempt %d: %s", s.alias, failures, str(exc))
                self.connected = False
                self._close_socket()
                self._lost.set()
                continue
            started, self._outage_started = self._outage_started, None
            logger.info(
                "MQTT broker %r (%s) reconnected after %.1f s (%d failed attempt(s))",
                s.alias,
                s.where,
                time.monotonic() - started,
                failures,
            )
            failures = 0

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._client.loop_misc()

    # -- flow control and acknowledgement ------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the socket (the runtime holds MAX_PENDING messages)."""
        if self._reading:
            self._reading = False
            if self._sock is not None:
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        """Read the socket again."""
        if not self._reading:
            self._reading = True
            if self._sock is not None:
                self._loop.add_reader(self._sock, self._read)
                self._loop.call_soon(self._read)

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge a QoS 1/2 message, if its connection is still the current one."""
        if inbound.qos and inbound.generation == self.generation and self.connected:
            self._client.ack(inbound.mid, inbound.qos)

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Hand a message to the broker connection (or to the outage queue).

        Raises:
            TopicError: ``topic`` breaks the MQTT rules.
            NotConnected: the broker is down and ``PUBLISH_QUEUE`` is 0.
            PublishQueueFull: the broker is down and ``PUBLISH_QUEUE`` messages wait.
            PublishError: bad QoS, payload or MQTT 5 properties, or paho's own queue is full.
        """
        check_topic(topic)
        if qos not in (0, 1, 2):
            raise PublishError(f"QoS must be 0, 1 or 2 (got {qos!r}).")
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        if not isinstance(data, bytes | bytearray):
            raise PublishError(f"An MQTT payload is bytes or str, not {type(payload).__name__}.")
        if properties and self.settings.protocol != "5":
            raise PublishError("Publish properties need PROTOCOL '5'.")
        if not self.connected:
            limit = self.settings.publish_queue
            if limit == 0:
                raise NotConnected(
                    f"MQTT broker {self.settings.alias!r} is down and publishes are not queued "
                    f"({self.settings.key('PUBLISH_QUEUE')} is 0)."
                )
            if len(self._queue) >= limit:
                raise PublishQueueFull(
                    f"MQTT broker {self.settings.alias!r} is down and {limit} publishes wait "
                    f"already ({self.settings.key('PUBLISH_QUEUE')})."
                )
            self._queue.append((topic, bytes(data), qos, retain, properties))
            return
        self._publish_now(topic, bytes(data), qos, retain, properties)

    def _publish_now(
        self, topic: str, data: bytes, qos: int, retain: bool, properties: dict[str, Any] | None
    ) -> None:
        info = self._client.publish(
            topic, data, qos=qos, retain=retain, properties=_publish_properties(properties)
        )
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(
                f"MQTT broker {self.settings.alias!r}: {MAX_OUTBOUND_QUEUED} publishes wait "
                "for acknowledgement already."
            )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PublishError(f"MQTT publish to {topic[:80]!r} failed: {info.rc}")

    def _flush_queue(self) -> None:
        while self._queue and self.connected:
            self._publish_now(*self._queue.popleft())

    @property
    def queued(self) -> int:
        """Publishes waiting for the broker to come back."""
        return len(self._queue)
