"""Several hosts on one machine: the deployment, and the two scenarios run against it.

:class:`Deployment` builds, for one run: three network namespaces on a bridge
(:mod:`tests.multihost._net`), each a *host* running ``tidings serve --workers
2`` of :mod:`tests.multihost.app`; a Redis Cluster of 3 masters with a replica
each in the root namespace (:mod:`tests.multihost._cluster`); clients spread
over the hosts, all members of one group (:mod:`tests.multihost._fleet`); and a
sender process that ``group_send``\\ s numbered messages at a steady rate
(:mod:`tests.multihost._sender`). :meth:`Deployment.close` stops every process
it started, by PID, and removes what it made, also after a failure.

Two scenarios, each a coroutine that returns the figures it measured as a dict
(the tests in ``test_multihost.py`` assert on them; ``benchmarks/multihost.py``
writes them to ``benchmarks/results/multihost.json``):

- :func:`host_cut`: one host's processes are SIGKILLed mid-broadcast;
- :func:`cluster_failover`: the Redis master that holds the group is SIGKILLed
  mid-broadcast and its replica takes over.

Times are wall-clock seconds (``time.time()``), shared by the sender process and
the clients in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster as ClusterClient

from tests.multihost._cluster import NODE_TIMEOUT_MS, RedisCluster
from tests.multihost._fleet import FeedClient, gather_stop, largest_gap, order_problems
from tests.multihost._net import Namespace, Network, check_environment, wait_port
from tidings.layers._redis_hosts import DEFAULT_CLUSTER_SHARDS, jump_hash
from tidings.layers._redis_scripts import Keys

__all__ = [
    "FAILOVER_RATE",
    "GROUP_EXPIRY",
    "HOSTS",
    "RATE",
    "Deployment",
    "cluster_failover",
    "deploy",
    "host_cut",
]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = 3
PORT = 8000
RATE = 40.0
"""Messages per second the sender sends to the group (host cut)."""
FAILOVER_RATE = 25.0
"""The same during a fail-over: what is sent while a receive loop waits out its
backoff reaches each member in one burst, which must fit the channel's capacity
(100): at most about 3.5 s of messages (see docs/deployment.md)."""
GROUP_EXPIRY = 8.0
"""``group_expiry`` of the test layer: a dead host's memberships are gone this long
after their last renewal (members renew every quarter of it)."""
GROUP = "feed"
START_TIMEOUT = 60.0


@dataclass
class Host:
    """One simulated host: its namespace and its ``tidings serve``."""

    name: str
    namespace: Namespace
    log: Path

    @property
    def url(self) -> str:
        return f"ws://{self.namespace.address}:{PORT}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Deployment:
    """Hosts, a Redis Cluster, clients and a sender (see the module docstring)."""

    directory: Path
    network: Network
    cluster: RedisCluster
    hosts: list[Host]
    prefix: str
    clients: list[FeedClient] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sender_log: Path | None = None

    # -- clients --------------------------------------------------------------

    async def connect_clients(self, per_host: int, sessions_per_host: int) -> None:
        """Start ``per_host`` plain and ``sessions_per_host`` session clients per host."""
        rng = random.Random(1)
        for index, home in enumerate(self.hosts):
            order = self.hosts[index:] + self.hosts[:index]
            targets = [(host.name, host.url) for host in order]
            for number in range(per_host + sessions_per_host):
                session = number >= per_host
                kind = "session" if session else "plain"
                client = FeedClient(
                    f"{home.name}-{kind}{number}",
                    targets,
                    session=session,
                    rng=random.Random(rng.random()),
                )
                self.clients.append(client)
                self.tasks.append(asyncio.create_task(client.run()))
        deadline = time.monotonic() + START_TIMEOUT
        for client in self.clients:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(client.ready.wait(), max(0.1, left))
            except TimeoutError:
                raise AssertionError(
                    f"client {client.name} never joined: failures {client.failures[-3:]}\n"
                    + self.logs()
                ) from None

    def on(self, host: Host, *, session: bool | None = None) -> list[FeedClient]:
        """The clients whose home is ``host`` (only sessions, or only plain ones, if given)."""
        return [
            c
            for c in self.clients
            if c.home == host.name and (session is None or c.session == session)
        ]

    # -- sender ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def sending(self, rate: float = RATE) -> AsyncIterator[None]:
        """Run the sender process while the block runs (stopped by SIGTERM, by PID)."""
        self.sender_log = self.directory / "sender.out"
        process = self.network.start(
            [
                sys.executable,
                "-m",
                "tests.multihost._sender",
                self.cluster.url,
                self.prefix,
                str(GROUP_EXPIRY),
                str(rate),
            ],
            log=self.sender_log,
            env=_environment(),
        )
        try:
            yield
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 10)
            await asyncio.sleep(1.0)  # messages in flight reach the clients

    def sent(self) -> dict[int, tuple[float, bool]]:
        """What the sender did: ``n -> (time, ok)``."""
        assert self.sender_log is not None
        sent = {}
        for line in self.sender_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit():
                sent[int(parts[0])] = (float(parts[1]), parts[2] == "1")
        return sent

    async def wait_sent(self, count: int, timeout: float = 20.0) -> None:
        """Return once the sender has sent ``count`` messages."""
        deadline = time.monotonic() + timeout
        while len(self.sent()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the sender sent {len(self.sent())} in {timeout} s\n" + self.logs()
                )
            await asyncio.sleep(0.05)

    # -- Redis ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def redis(self) -> AsyncIterator[ClusterClient]:
        node = self.cluster.live()[0]
        client = ClusterClient(host=node.address, port=node.port)
        try:
            yield client
        finally:
            await client.aclose()

    def group_keys(self) -> Keys:
        return Keys(self.prefix, jump_hash(GROUP, DEFAULT_CLUSTER_SHARDS))

    async def member_nodes(self, client: ClusterClient) -> set[str]:
        """The nodes Redis counts members of ``GROUP`` for (what a send fans out to)."""
        counts = await client.hkeys(self.group_keys().group(GROUP, "-")[1])
        return {node.decode() for node in counts}

    # -- end ------------------------------------------------------------------

    def logs(self) -> str:
        """The tail of every host's log, for failure messages."""
        parts = [f"--- {host.name} ---\n{host.log_text()[-3000:]}" for host in self.hosts]
        return "\n".join(parts)

    async def close(self) -> None:
        await gather_stop(self.clients, self.tasks)
        await asyncio.to_thread(self.network.close)


def _environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def node_of(channel: str) -> str:
    return channel[: channel.index("!")].rpartition(".")[2]


async def _wait_serving(host: Host) -> None:
    """Return once both workers of ``host`` serve (the port alone may answer before)."""
    try:
        await asyncio.to_thread(wait_port, host.namespace.address, PORT, START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while host.log_text().count("Tidings serving on") < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host.name}'s workers did not start")
            await asyncio.sleep(0.05)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its log:\n{host.log_text()[-3000:]}") from None


@contextlib.asynccontextmanager
async def deploy() -> AsyncIterator[Deployment]:
    """Build the deployment (see the module docstring); tear all of it down after."""
    check_environment()
    with tempfile.TemporaryDirectory(prefix="tidings-multihost-") as name:
        directory = Path(name)
        network = await asyncio.to_thread(Network, HOSTS)
        deployment: Deployment | None = None
        try:
            cluster = await asyncio.to_thread(RedisCluster, network, directory)
            prefix = f"mh{os.getpid()}"
            hosts = []
            for index, namespace in enumerate(network.namespaces):
                host = Host(f"h{index}", namespace, directory / f"h{index}.log")
                env = _environment(
                    MULTIHOST_REDIS=cluster.url,
                    MULTIHOST_PREFIX=prefix,
                    MULTIHOST_GROUP_EXPIRY=str(GROUP_EXPIRY),
                    MULTIHOST_HOST=host.name,
                )
                argv = [sys.executable, "-m", "tidings", "serve", "tests.multihost.app:application"]
                argv += ["--host", namespace.address, "--port", str(PORT), "--workers", "2"]
                argv += ["--app-dir", str(ROOT)]
                network.start(argv, log=host.log, namespace=namespace, env=env)
                hosts.append(host)
            for host in hosts:
                await _wait_serving(host)
            deployment = Deployment(directory, network, cluster, hosts, prefix)
            yield deployment
        finally:
            if deployment is not None:
                await deployment.close()
            else:
                await asyncio.to_thread(network.close)


# -- scenario 1: a host dies -----------------------------------------------------------


async def host_cut(deployment: Deployment, how: str = "kill") -> dict[str, Any]:
    """Cut one host off mid-broadcast; return what the clients saw.

    ``how``: ``"kill"`` SIGKILLs every process of the host (its kernel resets
    their connections); ``"link"`` downs its link (its processes live on, cut
    off: clients notice by their pings), and joins it again at the end.

    Before the cut, the session clients of the second host move to the third
    (a transport connection lost, resumed on another host). Then the first
    host goes: its clients reconnect to the others; its memberships expire.
    """
    dead, moving_home = deployment.hosts[0], deployment.hosts[1]
    await deployment.connect_clients(per_host=6, sessions_per_host=2)
    dead_nodes = {node_of(c.channel) for c in deployment.on(dead)}
    async with deployment.redis() as redis:
        nodes_before = await deployment.member_nodes(redis)
        async with deployment.sending():
            await deployment.wait_sent(round(RATE * 2))
            for client in deployment.on(moving_home, session=True):
                await client.move()
            await deployment.wait_sent(round(RATE * 4))
            cut = time.time()
            if how == "kill":
                killed = await asyncio.to_thread(dead.namespace.kill)
            else:
                killed = []
                await asyncio.to_thread(dead.namespace.set_link, up=False)
            # The dead host's clients come back on the others.
            await _wait_for(
                lambda: all(c.first_after(cut, not_from=dead.name) for c in deployment.on(dead)),
                20.0,
                "the dead host's clients did not receive again",
                deployment,
            )
            back = time.time()
            # Its memberships expire; Redis stops fanning out to its nodes.
            expired_at = None
            inbox = deployment.group_keys().inbox
            lengths: list[int] = []
            deadline = time.monotonic() + GROUP_EXPIRY + 10
            while time.monotonic() < deadline:
                nodes = await deployment.member_nodes(redis)
                if expired_at is None and not nodes & dead_nodes:
                    expired_at = time.time()
                if expired_at is not None:
                    lengths.append(sum([await redis.llen(inbox(node)) for node in dead_nodes]))
                    if time.time() - expired_at > 1.5:
                        break
                await asyncio.sleep(0.25)
            nodes_after = await deployment.member_nodes(redis)
            live_nodes = {node_of(c.channel) for c in deployment.clients}
            end = time.time()
    sent = deployment.sent()
    figures = _host_cut_figures(
        deployment, sent, cut=cut, back=back, end=end, killed=len(killed),
        nodes_before=nodes_before, nodes_after=nodes_after, dead_nodes=dead_nodes,
        live_nodes=live_nodes, expired_at=expired_at, inbox_lengths=lengths,
    )  # fmt: skip
    figures["how"] = how
    if how == "link":
        figures["rejoined_after_s"] = await _rejoin(dead)
    return figures


async def _rejoin(host: Host) -> float | None:
    """Join ``host`` to the network again; return how long until its layer reconnects.

    ``None`` if its processes did not log that Redis is reachable again within 30 s.
    """
    recovered = host.log_text().count("reachable again")
    joined = time.time()
    await asyncio.to_thread(host.namespace.set_link, up=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if host.log_text().count("reachable again") > recovered:
            return round(time.time() - joined, 3)
        await asyncio.sleep(0.1)
    return None


def _host_cut_figures(
    deployment: Deployment,
    sent: dict[int, tuple[float, bool]],
    *,
    cut: float,
    back: float,
    end: float,
    killed: int,
    nodes_before: set[str],
    nodes_after: set[str],
    dead_nodes: set[str],
    live_nodes: set[str],
    expired_at: float | None,
    inbox_lengths: list[int],
) -> dict[str, Any]:
    dead, moving_home = deployment.hosts[0], deployment.hosts[1]
    sent_ok = sorted(n for n, (_, ok) in sent.items() if ok)
    first_t = min(t for t, _ in sent.values())
    survivors = [c for c in deployment.clients if c.home != dead.name and not c.session]
    survivor_gaps = [largest_gap(c, first_t + 0.5, end - 0.5) for c in survivors]
    survivor_missing = [
        len(set(n for n in sent_ok if sent[n][0] < end - 1) - set(c.ns())) for c in survivors
    ]
    reconnects = [
        (c.first_after(cut, not_from=dead.name) or end) - cut for c in deployment.on(dead)
    ]
    sessions: dict[str, list[dict[str, Any]]] = {"moved": [], "owner_died": []}
    for client in deployment.clients:
        if not client.session:
            continue
        if client.home == moving_home.name:
            kind = "moved"
        elif client.home == dead.name:
            kind = "owner_died"
        else:
            continue
        ns = client.ns()
        duplicates, backwards = order_problems(client)
        expected = [n for n in sent_ok if ns and ns[0] <= n <= ns[-1]]
        missing = sorted(set(expected) - set(ns))
        between = [n for n in expected if missing and missing[0] <= n <= missing[-1]]
        sessions[kind].append(
            {
                "client": client.name,
                "resumes": [
                    {"host": o.host, "resumed": o.resumed, "after_s": round(o.time - cut, 3)}
                    for o in client.opens
                    if o.asked
                ],
                "continuity_lost": any(o.asked and not o.resumed for o in client.opens),
                "duplicates": duplicates + client.duplicates,
                "out_of_order": backwards,
                "missing": len(missing),
                # One run of messages, from about the cut on (one in flight may go too).
                "missing_contiguous": missing == between,
                "missing_from_s": round(sent[missing[0]][0] - cut, 3) if missing else None,
            }
        )
    plain_dead = [c for c in deployment.on(dead, session=False)]
    return {
        "rate_per_s": RATE,
        "clients": len(deployment.clients),
        "killed_processes": killed,
        "sent": len(sent),
        "send_failures": len(sent) - len(sent_ok),
        "survivors": len(survivors),
        "survivor_largest_gap_s": round(max(survivor_gaps), 3),
        "survivor_missing": sum(survivor_missing),
        "survivor_order_problems": sum(sum(order_problems(c)) for c in survivors),
        "dead_host_clients": len(deployment.on(dead)),
        "reconnect_s": {"max": round(max(reconnects), 3), "min": round(min(reconnects), 3)},
        "all_back_after_s": round(back - cut, 3),
        "dead_host_plain_order_problems": sum(sum(order_problems(c)) for c in plain_dead),
        "dead_host_plain_missed": [
            len([n for n in sent_ok if cut <= sent[n][0] < end - 1 and n not in set(c.ns())])
            for c in plain_dead
        ],
        "sessions": sessions,
        "member_nodes_before": len(nodes_before),
        "dead_nodes": len(dead_nodes),
        "dead_nodes_listed_before": len(nodes_before & dead_nodes),
        "member_nodes_after": len(nodes_after),
        "member_nodes_are_live_nodes": nodes_after == live_nodes,
        "dead_nodes_listed_after": len(nodes_after & dead_nodes),
        "memberships_expired_after_s": None if expired_at is None else round(expired_at - cut, 3),
        "dead_inbox_lengths_after_expiry": inbox_lengths,
        "group_expiry_s": GROUP_EXPIRY,
    }


# -- scenario 2: a Redis master dies ---------------------------------------------------


async def cluster_failover(deployment: Deployment) -> dict[str, Any]:
    """SIGKILL the Redis master holding the group mid-broadcast; return the loss and recovery."""
    await deployment.connect_clients(per_host=6, sessions_per_host=0)
    rate = FAILOVER_RATE
    pids_before = {host.name: sorted(host.namespace.pids()) for host in deployment.hosts}
    group_key = deployment.group_keys().group(GROUP, "-")[0]
    async with deployment.sending(rate):
        await deployment.wait_sent(round(rate * 3))
        master = deployment.cluster.master_of(group_key)
        kill = time.time()
        await asyncio.to_thread(deployment.cluster.kill, master)
        await _wait_for(
            lambda: _all_received_after(deployment, kill),
            30.0,
            "delivery did not resume after the fail-over",
            deployment,
        )
        recovered = time.time()
        await asyncio.to_thread(deployment.cluster.wait_ok, 20)
        await asyncio.sleep(2.0)
        end = time.time()
    sent = deployment.sent()
    pids_after = {host.name: sorted(host.namespace.pids()) for host in deployment.hosts}
    return _failover_figures(
        deployment, sent, rate=rate, kill=kill, recovered=recovered, end=end,
        pids_before=pids_before, pids_after=pids_after,
    )  # fmt: skip


def _all_received_after(deployment: Deployment, moment: float) -> bool:
    """Whether every client got a message that was sent successfully after ``moment``."""
    first = _first_ok_after(deployment.sent(), moment)
    return first is not None and all(
        any(n >= first for n in c.ns()[-5:]) for c in deployment.clients
    )


def _first_ok_after(sent: dict[int, tuple[float, bool]], moment: float) -> int | None:
    """The first message sent successfully after ``moment``."""
    return min((n for n, (t, ok) in sent.items() if ok and t > moment), default=None)


def _failover_figures(
    deployment: Deployment,
    sent: dict[int, tuple[float, bool]],
    *,
    rate: float,
    kill: float,
    recovered: float,
    end: float,
    pids_before: dict[str, list[int]],
    pids_after: dict[str, list[int]],
) -> dict[str, Any]:
    clients = deployment.clients
    received = [set(c.ns()) for c in clients]
    settled = [n for n, (t, ok) in sent.items() if ok and t < end - 1]
    lost = sorted({n for n in settled for got in received if n not in got})
    lost_everywhere = [n for n in lost if all(n not in got for got in received)]
    failed = sorted(n for n, (_, ok) in sent.items() if not ok)
    first_ok = _first_ok_after(sent, kill)
    resumed = []
    for client in clients:
        t = next((t for n, t, _ in client.arrivals if first_ok is not None and n >= first_ok), None)
        resumed.append((t or end) - kill)
    failed_times = [sent[n][0] for n in failed]
    lost_times = [sent[n][0] for n in lost]
    logs = {host.name: host.log_text() for host in deployment.hosts}
    return {
        "rate_per_s": rate,
        "clients": len(clients),
        "node_timeout_ms": NODE_TIMEOUT_MS,
        "sent": len(sent),
        "send_failures": len(failed),
        "send_failure_window_s": round(max(failed_times) - kill, 3) if failed else 0.0,
        "lost_after_ok": len(lost),
        "lost_after_ok_everywhere": len(lost_everywhere),
        "lost_window_s": (
            [round(min(lost_times) - kill, 3), round(max(lost_times) - kill, 3)] if lost else []
        ),
        "first_ok_send_after_s": None if first_ok is None else round(sent[first_ok][0] - kill, 3),
        "delivery_resumed_after_s": {"max": round(max(resumed), 3), "min": round(min(resumed), 3)},
        "recovered_after_s": round(recovered - kill, 3),
        "largest_gap_s": round(max(largest_gap(c, kill - 1, end - 1) for c in clients), 3),
        "order_problems": sum(sum(order_problems(c)) for c in clients),
        "client_failures": sum(1 for c in clients for t, _, _ in c.failures if t > kill),
        "client_reconnections": sum(len(c.readies) - 1 for c in clients),
        "processes_unchanged": pids_before == pids_after,
        "hosts_logged_outage": sum("is unreachable" in text for text in logs.values()),
        "hosts_logged_recovery": sum("reachable again" in text for text in logs.values()),
        "tracebacks": sum(text.count("Traceback") for text in logs.values()),
    }


async def _wait_for(condition: Any, timeout: float, what: str, deployment: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s\n" + deployment.logs())
        await asyncio.sleep(0.05)
