"""Simulated hosts: network namespaces on one bridge, and the processes started in them.

A :class:`Network` makes, for one run, a bridge in the root namespace holding
the address ``10.211.<B>.1/24`` and one network namespace per host, joined to
the bridge by a veth pair and holding ``10.211.<B>.<11 + i>``. The /24 is one of
``10.211.0.0/16`` that no interface of the machine uses yet; names carry the
test process's id (in hex) and a count of the networks it made
(``tdg<pid>x<count>h0``, ``tdb<pid>x<count>``...), so concurrent runs never
collide, nor does a network with one that is still going away. Processes of the
root namespace (the Redis Cluster, the clients, the sender) reach the hosts
through the bridge, and the hosts reach Redis at the bridge's address.

Everything this module makes it removes in :meth:`Network.close`, also after a
failure: the processes it started (by PID, and every process left in its
namespaces), the veth pairs, the namespaces and the bridge. It never touches an
interface or process it did not make. (The kernel frees a namespace once nothing
refers to it, which its closing sockets may delay for a while; its veth pair is
deleted from the root side first, so nothing of it stays on the machine's links.)
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Namespace", "Network", "NotPossible", "check_environment", "wait_port"]

_COUNT = itertools.count()

SUBNETS = ipaddress.IPv4Network("10.211.0.0/16")
"""Where a run's /24 is picked from (nothing else on the test machines uses 10.211/16)."""


class NotPossible(RuntimeError):
    """The machine cannot run the multi-host tests (not root, no ``ip``, no Redis)."""


def check_environment() -> None:
    """Raise :class:`NotPossible`, saying what is missing, unless hosts can be simulated."""
    missing = [tool for tool in ("ip", "redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        raise NotPossible(
            f"the multi-host tests need {', '.join(missing)} on PATH "
            "(packages iproute2 and redis-server)"
        )
    if os.geteuid() != 0:
        raise NotPossible(
            "the multi-host tests make network namespaces and veth links: run them as root"
        )


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of ``SUBNETS`` that no interface address of the machine falls in."""
    used = []
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    start = os.getpid() % 256
    subnets = list(SUBNETS.subnets(new_prefix=24))
    for offset in range(len(subnets)):
        candidate = subnets[(start + offset) % len(subnets)]
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NotPossible("every /24 of 10.211.0.0/16 is in use")


def wait_port(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts TCP connections (``TimeoutError`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


@dataclass
class Namespace:
    """One simulated host: a network namespace and its address on the bridge."""

    name: str
    address: str
    link: str  # the root side of its veth pair, on the bridge
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        """Every process inside the namespace (``ip netns pids``)."""
        return [int(pid) for pid in _ip("netns", "pids", self.name).split()]

    def set_link(self, *, up: bool) -> None:
        """Cut the host off the network, or join it again (its processes live on)."""
        _ip("link", "set", self.link, "up" if up else "down")

    def kill(self) -> list[int]:
        """SIGKILL every process in the namespace (a host that dies); return their PIDs."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return pids


class Network:
    """A bridge and ``hosts`` namespaces of this run (see the module docstring)."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"{os.getpid():x}x{next(_COUNT)}"
        self.bridge = f"tdb{self.tag}"
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.closed = False
        subnet = _free_subnet()
        self.gateway = str(subnet.network_address + 1)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index in range(hosts):
                self._add_namespace(index, str(subnet.network_address + 11 + index))
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, index: int, address: str) -> None:
        name = f"tdg{self.tag}h{index}"
        outer, inner = f"tdv{self.tag}h{index}", f"tdp{self.tag}h{index}"
        _ip("netns", "add", name)
        self.namespaces.append(Namespace(name, address, outer))
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "route", "add", "default", "via", self.gateway)

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        namespace: Namespace | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``namespace`` (or the root one), its output into ``log``."""
        if namespace is not None:
            argv = ["ip", "netns", "exec", namespace.name, *argv]
        with log.open("ab") as output:
            process = subprocess.Popen(
                list(argv), stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append(process)
        if namespace is not None:
            namespace.processes.append(process)
        return process

    def close(self) -> None:
        """Stop every process started here, remove the namespaces and the bridge."""
        if self.closed:
            return
        self.closed = True
        for namespace in self.namespaces:
            try:
                namespace.kill()
            except RuntimeError:
                pass
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for namespace in self.namespaces:
            subprocess.run(["ip", "link", "del", namespace.link], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
