"""``MQTT_BROKERS`` and ``MQTT_BRIDGES``: read, checked and frozen at start-up.

Every error names the exact setting key to fix, e.g.
``MQTT_BROKERS['default']['URL']``. The settings are read when the MQTT
runtime starts (lifespan startup of ``tidings serve``, or ``tidings worker``),
never at import time. ``docs/mqtt.md`` lists every key; keep the two in step.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from tidings.mqtt._errors import MqttConfigError, TopicError
from tidings.mqtt._topics import check_filter, check_topic, filter_matches

__all__ = [
    "Bridge",
    "BrokerSettings",
    "GroupToTopic",
    "TlsSettings",
    "TopicToGroup",
    "check_publish_topic",
    "parse_bridges",
    "parse_brokers",
]

_SCHEMES: Final = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}

#: MQTT's own suggestion is a keep-alive of minutes; 60 s is paho's and mosquitto_sub's.
DEFAULT_KEEPALIVE: Final = 60
#: Messages a publish may wait for a broker that is down; past it, PublishQueueFull.
DEFAULT_PUBLISH_QUEUE: Final = 1000
#: Inbound messages held (queued or in a handler) per broker before reading pauses.
DEFAULT_MAX_PENDING: Final = 1000
#: Consumer instances per broker (one per route and set of captures).
DEFAULT_MAX_INSTANCES: Final = 1000
#: First reconnect delay and its cap, seconds: doubled each failure, with jitter.
DEFAULT_RECONNECT_DELAY: Final = 0.5
DEFAULT_RECONNECT_MAX_DELAY: Final = 30.0
#: Seconds for TCP + TLS + CONNACK; paho's own socket timeout is 5 s per step.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: MQTT 5 session expiry (seconds) of a persistent session: one day.
DEFAULT_SESSION_EXPIRY: Final = 86_400


@dataclass(frozen=True)
class TlsSettings:
    """TLS files for ``mqtts://`` and ``wss://`` (``None``: the system's CA store)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerSettings:
    """One ``MQTT_BROKERS`` entry, checked."""

    alias: str
    url: str
    scheme: str
    host: str
    port: int
    ws_path: str
    tls: TlsSettings | None
    username: str | None
    password: str | None
    client_id: str
    protocol: Literal["3.1.1", "5"]
    clean_start: bool
    session_expiry: int
    keepalive: int
    shared_group: str | None
    publish_queue: int
    max_pending: int
    max_instances: int
    reconnect_delay: float
    reconnect_max_delay: float
    connect_timeout: float

    def key(self, name: str) -> str:
        """The setting key of ``name`` in this entry, for error messages."""
        return f"MQTT_BROKERS[{self.alias!r}][{name!r}]"

    @property
    def where(self) -> str:
        """The broker URL without credentials, for log lines."""
        return f"{self.scheme}://{self.host}:{self.port}" + (
            self.ws_path if self.scheme in ("ws", "wss") else ""
        )


@dataclass(frozen=True)
class TopicToGroup:
    """A bridge: every message on ``topic_filter`` becomes a group message to ``group``.

    The group message is ``{"type": "mqtt.message", "broker", "topic", "payload"
    (bytes), "text" (str or None), "qos", "retain", "mqtt_origin": True}``.
    """

    topic_filter: str
    group: str
    qos: int = 0
    broker: str = "default"

    def __post_init__(self) -> None:
        check_filter(self.topic_filter)
        _check_qos(self.qos, "TopicToGroup qos")


@dataclass(frozen=True)
class GroupToTopic:
    """A bridge: every ``{"type": "mqtt.publish"}`` message sent to ``group`` is published.

    ``topic`` is a topic name or a filter: a message's own ``"topic"`` must match
    it (a browser reaches only the topics the bridge allows); without one, the
    message goes to ``topic`` itself, which must then be a name.
    """

    group: str
    topic: str
    qos: int = 0
    retain: bool = False
    broker: str = "default"

    def __post_init__(self) -> None:
        check_filter(self.topic)
        _check_qos(self.qos, "GroupToTopic qos")


Bridge = TopicToGroup | GroupToTopic


def _check_qos(value: object, key: str) -> int:
    if type(value) is not int or value not in (0, 1, 2):
        raise MqttConfigError(f"{key} must be 0, 1 or 2 (got {value!r}).")
    return value


class _Entry:
    """Reads typed values out of one settings dict, naming the key on error."""

    def __init__(self, prefix: str, raw: Mapping[str, Any], known: frozenset[str]) -> None:
        self.prefix = prefix
        self.raw = raw
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MqttConfigError(
                f"{prefix} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(known))}."
            )

    def key(self, name: str) -> str:
        return f"{self.prefix}[{name!r}]"

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.raw.get(name, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise MqttConfigError(f"{self.key(name)} must be a non-empty str (got {value!r}).")
        return value

    def number(self, name: str, default: float, *, minimum: float, integer: bool) -> Any:
        value = self.raw.get(name, default)
        kinds = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an int" if integer else "a number"
            raise MqttConfigError(f"{self.key(name)} must be {kind} >= {minimum} (got {value!r}).")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise MqttConfigError(f"{self.key(name)} must be True or False (got {value!r}).")
        return value


_BROKER_KEYS: Final = frozenset(
    {
        "URL",
        "USERNAME",
        "PASSWORD",
        "CLIENT_ID",
        "PROTOCOL",
        "CLEAN_START",
        "SESSION_EXPIRY",
        "KEEPALIVE",
        "TLS",
        "SHARED_GROUP",
        "PUBLISH_QUEUE",
        "MAX_PENDING",
        "MAX_INSTANCES",
        "RECONNECT_DELAY",
        "RECONNECT_MAX_DELAY",
        "CONNECT_TIMEOUT",
    }
)
_TLS_KEYS: Final = frozenset({"CA_FILE", "CERT_FILE", "KEY_FILE"})


def _parse_url(entry: _Entry) -> tuple[str, str, int, str]:
    url = entry.string("URL")
    if url is None:
        raise MqttConfigError(f"{entry.key('URL')} is required, e.g. 'mqtt://127.0.0.1:1883'.")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise MqttConfigError(
            f"{entry.key('URL')} is {url!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}."
        )
    if parts.username or parts.password:
        raise MqttConfigError(
            f"{entry.key('URL')}: put credentials in USERNAME and PASSWORD, not in the URL."
        )
    try:
        port = parts.port or _SCHEMES[parts.scheme]
    except ValueError:
        raise MqttConfigError(f"{entry.key('URL')} is {url!r}: the port is not valid.") from None
    if not parts.hostname:
        raise MqttConfigError(f"{entry.key('URL')} is {url!r}: it names no host.")
    if parts.scheme.startswith("mqtt") and parts.path not in ("", "/"):
        raise MqttConfigError(f"{entry.key('URL')} is {url!r}: only ws:// URLs have a path.")
    return parts.scheme, parts.hostname, port, parts.path or "/mqtt"


def _parse_tls(entry: _Entry, scheme: str) -> TlsSettings | None:
    raw = entry.raw.get("TLS")
    if scheme not in ("mqtts", "wss"):
        if raw is not None:
            raise MqttConfigError(
                f"{entry.key('TLS')} is set but the URL scheme is {scheme}://; "
                "use mqtts:// or wss:// for TLS."
            )
        return None
    if raw is None:
        return TlsSettings()
    if not isinstance(raw, Mapping):
        raise MqttConfigError(f"{entry.key('TLS')} must be a dict of {sorted(_TLS_KEYS)}.")
    tls = _Entry(entry.key("TLS"), raw, _TLS_KEYS)
    files = {name: tls.string(name) for name in sorted(_TLS_KEYS)}
    for name, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise MqttConfigError(f"{tls.key(name)} is {path!r}, which is not a file.")
    if files["KEY_FILE"] and not files["CERT_FILE"]:
        raise MqttConfigError(f"{tls.key('KEY_FILE')} needs {tls.key('CERT_FILE')} too.")
    return TlsSettings(files["CA_FILE"], files["CERT_FILE"], files["KEY_FILE"])


def _client_id(entry: _Entry, clean_start: bool) -> str:
    client_id = entry.string("CLIENT_ID")
    if client_id is None:
        if not clean_start:
            raise MqttConfigError(
                f"{entry.key('CLIENT_ID')} is required with CLEAN_START False: a persistent "
                "session is found again by its client id."
            )
        return f"tidings-{uuid.uuid4().hex[:16]}"
    client_id = client_id.replace("{hostname}", socket.gethostname())
    client_id = client_id.replace("{pid}", str(os.getpid()))
    if len(client_id.encode("utf-8")) > 65_535 or "\x00" in client_id:
        raise MqttConfigError(f"{entry.key('CLIENT_ID')} is not a valid MQTT client id.")
    return client_id


def _parse_broker(alias: str, raw: object) -> BrokerSettings:
    prefix = f"MQTT_BROKERS[{alias!r}]"
    if not isinstance(raw, Mapping):
        raise MqttConfigError(f"{prefix} must be a dict with at least a 'URL'.")
    entry = _Entry(prefix, raw, _BROKER_KEYS)
    scheme, host, port, ws_path = _parse_url(entry)
    protocol = raw.get("PROTOCOL", "5")
    if protocol not in ("3.1.1", "5"):
        raise MqttConfigError(f"{entry.key('PROTOCOL')} must be '3.1.1' or '5' (got {protocol!r}).")
    username, password = entry.string("USERNAME"), entry.string("PASSWORD")
    if password is not None and username is None:
        raise MqttConfigError(f"{entry.key('PASSWORD')} is set without {entry.key('USERNAME')}.")
    clean_start = entry.flag("CLEAN_START", True)
    shared_group = entry.string("SHARED_GROUP")
    if shared_group is not None and any(c in shared_group for c in "/+#\x00"):
        raise MqttConfigError(f"{entry.key('SHARED_GROUP')} must not contain '/', '+' or '#'.")
    delay = entry.number("RECONNECT_DELAY", DEFAULT_RECONNECT_DELAY, minimum=0.01, integer=False)
    cap = entry.number(
        "RECONNECT_MAX_DELAY", DEFAULT_RECONNECT_MAX_DELAY, minimum=delay, integer=False
    )
    return BrokerSettings(
        alias=alias,
        url=str(raw["URL"]),
        scheme=scheme,
        host=host,
        port=port,
        ws_path=ws_path,
        tls=_parse_tls(entry, scheme),
        username=username,
        password=password,
        client_id=_client_id(entry, clean_start),
        protocol=protocol,
        clean_start=clean_start,
        session_expiry=entry.number(
            "SESSION_EXPIRY", DEFAULT_SESSION_EXPIRY, minimum=0, integer=True
        ),
        keepalive=entry.number("KEEPALIVE", DEFAULT_KEEPALIVE, minimum=5, integer=True),
        shared_group=shared_group,
        publish_queue=entry.number("PUBLISH_QUEUE", DEFAULT_PUBLISH_QUEUE, minimum=0, integer=True),
        max_pending=entry.number("MAX_PENDING", DEFAULT_MAX_PENDING, minimum=1, integer=True),
        max_instances=entry.number("MAX_INSTANCES", DEFAULT_MAX_INSTANCES, minimum=1, integer=True),
        reconnect_delay=float(delay),
        reconnect_max_delay=float(cap),
        connect_timeout=float(
            entry.number("CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT, minimum=0.1, integer=False)
        ),
    )


def parse_brokers(raw: object) -> dict[str, BrokerSettings]:
    """Check ``settings.MQTT_BROKERS`` and return one :class:`BrokerSettings` per alias.

    Raises:
        MqttConfigError: the setting or one of its entries is wrong (named in the message).
    """
    if raw is None:
        raise MqttConfigError(
            "MQTT_BROKERS is not set: add MQTT_BROKERS = {'default': {'URL': "
            "'mqtt://127.0.0.1:1883'}} to your settings."
        )
    if not isinstance(raw, Mapping) or not raw:
        raise MqttConfigError("MQTT_BROKERS must be a non-empty dict of alias -> settings dict.")
    return {str(alias): _parse_broker(str(alias), entry) for alias, entry in raw.items()}


_BRIDGE_KEYS: Final = frozenset(
    {"BROKER", "FROM_TOPIC", "TO_GROUP", "FROM_GROUP", "TO_TOPIC", "QOS", "RETAIN"}
)


def _parse_bridge(index: int, raw: object) -> Bridge:
    prefix = f"MQTT_BRIDGES[{index}]"
    if not isinstance(raw, Mapping):
        raise MqttConfigError(f"{prefix} must be a dict.")
    entry = _Entry(prefix, raw, _BRIDGE_KEYS)
    broker = entry.string("BROKER", "default") or "default"
    qos = _check_qos(raw.get("QOS", 0), entry.key("QOS"))
    try:
        if "FROM_TOPIC" in raw and "TO_GROUP" in raw and not {"FROM_GROUP", "TO_TOPIC"} & set(raw):
            if "RETAIN" in raw:
                raise MqttConfigError(f"{entry.key('RETAIN')} only applies to TO_TOPIC bridges.")
            return TopicToGroup(
                str(entry.string("FROM_TOPIC")), str(entry.string("TO_GROUP")), qos, broker
            )
        if "FROM_GROUP" in raw and "TO_TOPIC" in raw and not {"FROM_TOPIC", "TO_GROUP"} & set(raw):
            return GroupToTopic(
                str(entry.string("FROM_GROUP")),
                str(entry.string("TO_TOPIC")),
                qos,
                entry.flag("RETAIN", False),
                broker,
            )
    except TopicError as exc:
        raise MqttConfigError(f"{prefix}: {exc}") from exc
    raise MqttConfigError(
        f"{prefix} must have either FROM_TOPIC and TO_GROUP (topic -> group) or "
        "FROM_GROUP and TO_TOPIC (group -> topic)."
    )


def parse_bridges(raw: object, brokers: Mapping[str, BrokerSettings]) -> list[Bridge]:
    """Check ``settings.MQTT_BRIDGES`` (a list of dicts; missing means none).

    Raises:
        MqttConfigError: an entry is wrong or names a broker that is not configured.
    """
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise MqttConfigError("MQTT_BRIDGES must be a list of dicts.")
    bridges = [_parse_bridge(i, entry) for i, entry in enumerate(raw)]
    for index, bridge in enumerate(bridges):
        if bridge.broker not in brokers:
            raise MqttConfigError(
                f"MQTT_BRIDGES[{index}]['BROKER'] is {bridge.broker!r}, which is not in "
                f"MQTT_BROKERS (configured: {', '.join(map(repr, brokers))})."
            )
    return bridges


def check_publish_topic(bridge: GroupToTopic, topic: object) -> str:
    """The topic a message sent through ``bridge`` goes to (see :class:`GroupToTopic`).

    Raises:
        TopicError: ``topic`` is not a valid name or not allowed by the bridge.
    """
    if topic is None:
        return check_topic(bridge.topic)
    name = check_topic(topic)
    if not filter_matches(bridge.topic, name):
        raise TopicError(f"Topic {name[:80]!r} is not allowed by the bridge to {bridge.topic!r}.")
    return name
