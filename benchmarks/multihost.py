"""Several hosts: what clients see when a host dies, and when a Redis Cluster master fails over.

Runs the two scenarios of ``tests/multihost`` (three network namespaces, each a host
running ``tidings serve --workers 2`` on a Redis Cluster of 3 masters with a
replica each; clients spread over the hosts; a sender ``group_send``\\ ing numbered
messages at a steady rate) ``--runs`` times each (a host killed, a host cut off
the network, a Redis master killed), prints the figures and writes them
to ``benchmarks/results/multihost.json``. Needs root (it makes network namespaces),
``ip``, ``redis-server`` and ``redis-cli``.

No peer runs beside it: channels_redis does not support Redis Cluster, and a host
cut is a property of the deployment more than of the server.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/multihost.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _peers import result_header, write_results  # noqa: E402

from tests.multihost.harness import (  # noqa: E402
    FAILOVER_RATE,
    GROUP_EXPIRY,
    RATE,
    cluster_failover,
    deploy,
    host_cut,
)

#: The figures summarised over the runs (median and worst), per scenario.
SUMMARY = {
    "host_cut": [
        "survivor_largest_gap_s",
        "survivor_missing",
        "all_back_after_s",
        "memberships_expired_after_s",
    ],
    "host_cut_link": [
        "survivor_largest_gap_s",
        "survivor_missing",
        "all_back_after_s",
        "memberships_expired_after_s",
        "rejoined_after_s",
    ],
    "cluster_failover": [
        "send_failures",
        "send_failure_window_s",
        "lost_after_ok",
        "first_ok_send_after_s",
        "recovered_after_s",
        "largest_gap_s",
    ],
}


async def run(scenario: str) -> dict[str, Any]:
    async with deploy() as deployment:
        if scenario == "host_cut":
            return await host_cut(deployment)
        if scenario == "host_cut_link":
            return await host_cut(deployment, "link")
        return await cluster_failover(deployment)


def summarise(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    summary = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = {"median": statistics.median(values), "worst": max(values)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--only", choices=sorted(SUMMARY), help="one scenario")
    args = parser.parse_args()
    payload = result_header("multihost")
    payload["setup"] = {
        "hosts": 3,
        "workers_per_host": 2,
        "redis": "Redis Cluster, 3 masters with 1 replica each, cluster-node-timeout 1000 ms",
        "rate_per_s": {"host_cut": RATE, "cluster_failover": FAILOVER_RATE},
        "group_expiry_s": GROUP_EXPIRY,
        "note": "all hosts, Redis nodes and clients share one 2-core machine",
    }
    for scenario in [args.only] if args.only else sorted(SUMMARY):
        runs = []
        for index in range(args.runs):
            figures = asyncio.run(run(scenario))
            runs.append(figures)
            shown = {key: figures.get(key) for key in SUMMARY[scenario]}
            print(f"{scenario} run {index + 1}: {json.dumps(shown)}", flush=True)
        payload[scenario] = {"summary": summarise(runs, SUMMARY[scenario]), "runs": runs}
        print(f"{scenario}: {json.dumps(payload[scenario]['summary'])}", flush=True)
    print(f"wrote {write_results(payload)}")


if __name__ == "__main__":
    main()
