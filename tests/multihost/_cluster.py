"""A Redis Cluster of this run: 3 masters, each with one replica, on the bridge's address.

Six ``redis-server`` processes in cluster mode (no persistence, data and node
files in the run's temporary directory) listen on the bridge address of the
:class:`~tests.multihost._net.Network`, so the hosts in their namespaces and the
root namespace's clients reach them alike; ``redis-cli --cluster create
--cluster-replicas 1`` makes three masters and gives each a replica.
``cluster-node-timeout`` is short (``NODE_TIMEOUT_MS``): a master that stops
answering for that long is marked failing, and its replica is elected in its
place about a second later (Redis Cluster specification, "Replica election and
promotion": a delay of 500 ms, plus up to 500 ms at random, plus one second per
rank of the replica; one replica here, so rank 0).
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.multihost._net import Network, wait_port

__all__ = ["NODE_TIMEOUT_MS", "ClusterNode", "RedisCluster"]

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout`` of the test cluster (Redis' default, 15 s, would make a
fail-over take 15 s or more)."""


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    address: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}"


def _free_cluster_port(address: str, taken: set[int]) -> int:
    """A port free on ``address`` whose cluster bus port (10000 higher) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 45000)
        if port in taken:
            continue
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind((address, port))
                second.bind((address, port + 10000))
        except OSError:
            continue
        return port


class RedisCluster:
    """Six redis-servers made into a cluster of 3 masters with a replica each."""

    def __init__(self, network: Network, directory: Path) -> None:
        self.network = network
        self.nodes: list[ClusterNode] = []
        address = network.gateway
        taken: set[int] = set()
        for index in range(6):
            port = _free_cluster_port(address, taken)
            taken.add(port)
            data = directory / f"redis-{index}"
            data.mkdir(parents=True)
            process = network.start(
                [
                    "redis-server",
                    "--bind",
                    address,
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data),
                    # Bound to the bridge address of this run only; no password.
                    "--protected-mode",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(data / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                ],
                log=directory / f"redis-{index}.log",
            )
            self.nodes.append(ClusterNode(address, port, process))
        for node in self.nodes:
            wait_port(node.address, node.port, 10)
        done = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{node.address}:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok(30)

    @property
    def url(self) -> str:
        """The address the layer is given (one node; the client discovers the rest)."""
        return self.nodes[0].url

    def cli(self, node: ClusterNode, *command: str) -> str:
        """Run one redis-cli command against ``node``."""
        done = subprocess.run(
            ["redis-cli", "-h", node.address, "-p", str(node.port), *command],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return done.stdout

    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process.poll() is None]

    def wait_ok(self, timeout: float) -> None:
        """Return once every live node reports ``cluster_state:ok`` and agrees on 3 masters."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli(node, "cluster", "info") for node in self.live()]
            if all("cluster_state:ok" in state for state in states) and self._masters_ok():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster is not ok after {timeout} s: {states}")
            time.sleep(0.1)

    def _masters_ok(self) -> bool:
        lines = self.cli(self.live()[0], "cluster", "nodes").splitlines()
        masters = [line for line in lines if "master" in line.split()[2] and "fail" not in line]
        return len(masters) == 3

    def master_of(self, key: str) -> ClusterNode:
        """The node that serves ``key`` now (its slot's master)."""
        node = self.live()[0]
        slot = int(self.cli(node, "cluster", "keyslot", key).strip())
        for line in self.cli(node, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                first, _, last = part.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    port = int(fields[1].split("@")[0].rpartition(":")[2])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a Redis host that dies)."""
        node.process.kill()
        node.process.wait(timeout=5)
