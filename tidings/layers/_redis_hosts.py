"""The ``hosts`` option of the Redis channel layer: parsing, clients and sharding.

``hosts`` is a list; each entry names one Redis deployment:

- a URL: ``"redis://127.0.0.1:6379/0"``, ``"rediss://..."`` (TLS),
  ``"unix:///path/redis.sock"``;
- a ``(host, port)`` tuple or list;
- a dict of ``redis.asyncio.Redis`` keyword arguments (``password``, ``db``,
  ``ssl``, ``socket_timeout``...), where ``address`` may give a URL or a
  ``(host, port)`` pair, plus these keys of ours:

  - ``max_connections``: per event loop, the connections for blocking
    receives on shared channels (lean client), or the pool that all commands
    share (redis-py); default ``DEFAULT_MAX_CONNECTIONS``. Callers *wait*
    when they are all in use, for up to ``pool_timeout`` seconds (default
    ``DEFAULT_POOL_TIMEOUT``), so bursts queue instead of failing;
  - ``sentinels`` (a list of ``(host, port)``) with ``master_name``, and
    optionally ``sentinel_kwargs`` (client options for the sentinels, over
    ``SENTINEL_DEFAULTS``): connect to the master that Redis Sentinel names,
    following fail-overs. Every new connection asks the sentinels, in turn,
    where the master is; the pools block as above;
  - ``cluster: True``: the address is one node of a Redis Cluster; the
    client discovers the others. A cluster must be the only entry of
    ``hosts``. The layer spreads its keys over ``shards`` hash tags
    (default ``DEFAULT_CLUSTER_SHARDS``), each a slot of the cluster, and
    keeps the keys one script touches under one tag.

Several entries shard the layer: each key belongs to one entry, chosen by
jump consistent hashing (Lamping and Veach, 2014) of the channel, group or
node name, so adding a host moves only about 1/n of the names. All
processes of one layer must list the same hosts in the same order.

**Which client.** A plain host whose options are all among
``LEAN_OPTIONS`` (``db``, ``username``, ``password``, ``client_name``,
``socket_timeout``, ``socket_connect_timeout``, ``retry``) is served by the
lean client of :mod:`tidings.layers._resp`: non-blocking commands share one
pipelined connection. TLS (``rediss://``), Sentinel, Cluster and any other
option go through redis-py's clients and pools.

Nothing here connects at import or construction: clients are built per
event loop by the layer when it first needs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from tidings.layers._resp import LEAN_OPTIONS, RespClient

__all__ = [
    "BLOCK_TIMEOUT",
    "COMMAND_RETRIES",
    "DEFAULT_CLUSTER_SHARDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POOL_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "SENTINEL_DEFAULTS",
    "HostClients",
    "HostSpec",
    "jump_hash",
    "parse_hosts",
]

DEFAULT_HOST: Final = ("localhost", 6379)
"""Where the layer connects when ``hosts`` is not given (Channels' default)."""

DEFAULT_MAX_CONNECTIONS: Final = 64
"""Pooled connections per host and event loop. A blocking receive holds one for its
whole wait, so this must exceed the process's concurrent ``receive`` calls on
shared channels; everything else holds one for a round trip."""

DEFAULT_POOL_TIMEOUT: Final = 20.0
"""Seconds a command waits for a pooled connection before failing (redis-py's default)."""

DEFAULT_SOCKET_TIMEOUT: Final = 10.0
"""Seconds a reply may take before the connection counts as dead (redis-py's 5 s
would race the layer's 5 s blocking waits)."""

BLOCK_TIMEOUT: Final = 5.0
"""Seconds one blocking wait lasts at most (less if ``socket_timeout`` is short)."""

COMMAND_RETRIES: Final = 3
"""Retries of a command that lost its connection, 50 ms apart doubling (about 0.35 s in
all), before the layer reports Redis unavailable; a host dict's ``retry`` replaces them."""

DEFAULT_CLUSTER_SHARDS: Final = 12
"""Hash tags a Redis Cluster deployment is spread over (even over 2, 3, 4 or 6 masters)."""

SENTINEL_DEFAULTS: Final[Mapping[str, Any]] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "retry": Retry(NoBackoff(), 0),
}
"""Client options of the connections to the sentinels, under ``sentinel_kwargs``. A
sentinel answers from memory, and the next one listed is the retry: redis-py's default
of ten retries per sentinel made a dead first sentinel cost 8 s per connection."""

_OUR_KEYS: Final = frozenset(
    {
        "address",
        "cluster",
        "shards",
        "sentinels",
        "master_name",
        "sentinel_kwargs",
        "max_connections",
        "pool_timeout",
    }
)
_URL_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})


@dataclass(frozen=True)
class HostSpec:
    """One checked entry of ``hosts``."""

    kind: Literal["plain", "cluster", "sentinel"]
    url: str | None = None
    host: str | None = None
    port: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    shards: int = 1
    master_name: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_kwargs: Mapping[str, Any] | None = None

    @property
    def block_timeout(self) -> float:
        """Seconds a blocking command may wait: well inside the socket timeout."""
        socket_timeout = self.options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        if socket_timeout is None:
            return BLOCK_TIMEOUT
        return max(0.1, min(BLOCK_TIMEOUT, float(socket_timeout) / 2))

    def describe(self) -> str:
        """Say where this host is, for log lines and errors (never with a password)."""
        if self.kind == "sentinel":
            where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel master {self.master_name!r} via {where}"
        if self.url is not None:
            parts = urlsplit(self.url)
            shown = f"{parts.scheme}://{parts.hostname or ''}"
            if parts.port:
                shown += f":{parts.port}"
            shown += parts.path
        else:
            shown = f"{self.host}:{self.port}"
        return f"cluster {shown}" if self.kind == "cluster" else shown

    def connect(self) -> HostClients:
        """Build the clients of one event loop for this host (no I/O happens yet)."""
        if self.kind == "cluster":
            return HostClients(main=self._cluster(reader=False), reader=self._cluster(reader=True))
        if self.kind == "sentinel":
            return self._sentinel()
        lean = self._lean_kwargs()
        if lean is not None:
            return HostClients(
                main=RespClient(**lean, max_blocking=self.max_connections),
                # The receive loop handles every error itself (backoff, resync) and
                # bounds each step with its own timeout.
                reader=RespClient(**{**lean, "retries": 0, "socket_timeout": None}),
            )
        return HostClients(main=self._plain(reader=False), reader=self._plain(reader=True))

    def _lean_kwargs(self) -> dict[str, Any] | None:
        """Arguments of :class:`RespClient` for this host, or ``None`` if it needs redis-py.

        TLS, and options beyond ``LEAN_OPTIONS`` (in the dict or the URL's
        query), go through redis-py.
        """
        if self.kind != "plain":
            return None
        options: dict[str, Any] = dict(self.options)
        if self.url is not None:
            if self.url.startswith("rediss:"):
                return None
            parsed = dict(parse_url(self.url))
            if parsed.pop("connection_class", None) not in (None, UnixDomainSocketConnection):
                return None
            options = {**parsed, **options}
        else:
            options.update(host=self.host, port=self.port)
        retry = options.pop("retry", None)
        if not set(options) <= LEAN_OPTIONS | {"host", "port", "path"}:
            return None
        if options.pop("decode_responses", False):
            return None  # the layer reads bytes; redis-py would say so
        retries = COMMAND_RETRIES
        if retry is not None:
            retries = int(getattr(retry, "_retries", COMMAND_RETRIES))
        timeout = options.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        connect_timeout = options.pop("socket_connect_timeout", None)
        return {
            **options,
            "socket_timeout": None if timeout is None else float(timeout),
            "connect_timeout": connect_timeout,
            "retries": max(0, retries),
            "pool_timeout": self.pool_timeout,
        }

    def _kwargs(self, *, reader: bool) -> dict[str, Any]:
        kwargs = dict(self.options)
        kwargs["decode_responses"] = False
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        if reader:
            # The receive loop handles every error itself (backoff, resync),
            # so a silent reconnect inside redis-py must not hide one. It
            # bounds each step with asyncio.timeout instead of socket_timeout:
            # redis-py applies that through asyncio.wait_for, which on Python
            # 3.11 can swallow a cancellation (CPython gh-86296) and so keep
            # a stopping loop blocked for a whole wait.
            kwargs["retry"] = Retry(NoBackoff(), 0)
            kwargs["socket_timeout"] = None
        else:
            kwargs.setdefault(
                "retry", Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.05), COMMAND_RETRIES)
            )
        return kwargs

    def _plain(self, *, reader: bool) -> Redis:
        kwargs = self._kwargs(reader=reader)
        size = 2 if reader else self.max_connections
        pool: BlockingConnectionPool
        if self.url is not None:
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=size, timeout=self.pool_timeout, **kwargs
            )
        else:
            pool = BlockingConnectionPool(
                host=self.host,
                port=self.port,
                max_connections=size,
                timeout=self.pool_timeout,
                **kwargs,
            )
        return Redis.from_pool(pool)

    def _cluster(self, *, reader: bool) -> RedisCluster:
        kwargs = self._kwargs(reader=reader)
        kwargs.setdefault("max_connections", max(self.max_connections * 4, 256))
        if self.url is not None:
            return RedisCluster.from_url(self.url, **kwargs)
        return RedisCluster(host=self.host, port=self.port or 6379, **kwargs)

    def _sentinel(self) -> HostClients:
        sentinel_kwargs = {**SENTINEL_DEFAULTS, **(self.sentinel_kwargs or {})}
        # Through Any: redis-py's Sentinel gained annotations in 8.x (the
        # lower bound we support has none).
        sentinel_class: Any = Sentinel
        manager = sentinel_class(list(self.sentinels), sentinel_kwargs=sentinel_kwargs)
        name = self.master_name or ""
        clients = [
            manager.master_for(
                name,
                redis_class=Redis,
                connection_pool_class=_BlockingSentinelPool,
                max_connections=2 if reader else self.max_connections,
                timeout=self.pool_timeout,
                **self._kwargs(reader=reader),
            )
            for reader in (False, True)
        ]
        return HostClients(main=clients[0], reader=clients[1], sentinels=list(manager.sentinels))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A pool of connections to the master Sentinel names that waits when all are busy.

    redis-py's ``SentinelConnectionPool`` is a plain ``ConnectionPool``, which
    raises "Too many connections" past 100; bursts must queue instead (see
    ``max_connections``). Sentinel's half finds the master, the blocking half
    hands out connections.
    """


@dataclass
class HostClients:
    """The clients one event loop uses for one host.

    ``main`` serves commands; ``reader`` serves the layer's receive loops
    (without redis-py's silent retries, so the loop sees every disconnect).
    """

    main: Any
    reader: Any
    sentinels: list[Any] = field(default_factory=list)

    async def aclose(self) -> None:
        """Close every connection these clients hold."""
        for client in (self.main, self.reader, *self.sentinels):
            await client.aclose()


def _address(value: object, where: str) -> tuple[str | None, str | None, int | None]:
    """Split an address (URL or ``(host, port)``) into ``(url, host, port)``."""
    if isinstance(value, str):
        scheme = urlsplit(value).scheme
        if scheme not in _URL_SCHEMES:
            raise ValueError(f"{where} {value!r} is not a redis://, rediss:// or unix:// URL")
        return value, None, None
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return None, value[0], value[1]
    raise ValueError(f"{where} must be a URL or a (host, port) pair, not {value!r}")


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, not {value!r}")
    return value


def _parse_dict(entry: Mapping[str, Any], where: str) -> HostSpec:
    options = {key: value for key, value in entry.items() if key not in _OUR_KEYS}
    max_connections = _positive_int(
        entry.get("max_connections", DEFAULT_MAX_CONNECTIONS), f"{where}['max_connections']"
    )
    pool_timeout = entry.get("pool_timeout", DEFAULT_POOL_TIMEOUT)
    if isinstance(pool_timeout, bool) or not isinstance(pool_timeout, int | float):
        raise ValueError(f"{where}['pool_timeout'] must be a number of seconds")
    common: dict[str, Any] = {
        "options": options,
        "max_connections": max_connections,
        "pool_timeout": float(pool_timeout),
    }
    if "sentinels" in entry:
        master_name = entry.get("master_name")
        if not isinstance(master_name, str) or not master_name:
            raise ValueError(f"{where} has 'sentinels' but no 'master_name'")
        sentinels = entry["sentinels"]
        if not isinstance(sentinels, Sequence) or isinstance(sentinels, str) or not sentinels:
            raise ValueError(f"{where}['sentinels'] must be a non-empty list of (host, port)")
        pairs = []
        for sentinel in sentinels:
            _, host, port = _address(sentinel, f"{where}['sentinels'] entry")
            if host is None or port is None:
                raise ValueError(f"{where}['sentinels'] entries must be (host, port) pairs")
            pairs.append((host, port))
        sentinel_kwargs = entry.get("sentinel_kwargs")
        if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, Mapping):
            raise ValueError(f"{where}['sentinel_kwargs'] must be a dict")
        return HostSpec(
            kind="sentinel",
            master_name=master_name,
            sentinels=tuple(pairs),
            sentinel_kwargs=sentinel_kwargs,
            **common,
        )
    if "address" in entry:
        url, host, port = _address(entry["address"], f"{where}['address']")
    elif "host" in options:
        url, host = None, str(options.pop("host"))
        port = _positive_int(options.pop("port", 6379), f"{where}['port']")
    else:
        raise ValueError(f"{where} needs an 'address' (or 'host'), or 'sentinels'")
    if entry.get("cluster", False):
        shards = _positive_int(entry.get("shards", DEFAULT_CLUSTER_SHARDS), f"{where}['shards']")
        return HostSpec(kind="cluster", url=url, host=host, port=port, shards=shards, **common)
    if "shards" in entry:
        raise ValueError(f"{where}['shards'] only applies with 'cluster': True")
    return HostSpec(kind="plain", url=url, host=host, port=port, **common)


def parse_hosts(hosts: object) -> list[HostSpec]:
    """Check the ``hosts`` option and return one ``HostSpec`` per entry.

    Raises:
        ValueError: an entry is malformed, or a cluster is mixed with other hosts.
    """
    if hosts is None:
        hosts = [DEFAULT_HOST]
    if isinstance(hosts, str | Mapping) or (
        isinstance(hosts, tuple) and len(hosts) == 2 and isinstance(hosts[1], int)
    ):
        hosts = [hosts]
    if not isinstance(hosts, Sequence) or not hosts:
        raise ValueError(f"hosts must be a non-empty list, not {hosts!r}")
    specs: list[HostSpec] = []
    for index, entry in enumerate(hosts):
        where = f"hosts[{index}]"
        if isinstance(entry, Mapping):
            specs.append(_parse_dict(entry, where))
        else:
            url, host, port = _address(entry, where)
            specs.append(HostSpec(kind="plain", url=url, host=host, port=port))
    if len(specs) > 1 and any(spec.kind == "cluster" for spec in specs):
        raise ValueError("a Redis Cluster must be the only entry of hosts")
    return specs


_MASK64: Final = (1 << 64) - 1


def jump_hash(name: str, buckets: int) -> int:
    """Return the bucket in ``range(buckets)`` of ``name`` (jump consistent hash)."""
    if buckets == 1:
        return 0
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) & _MASK64
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket
