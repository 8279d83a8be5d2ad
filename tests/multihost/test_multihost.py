"""Several hosts, one goes; a Redis Cluster master dies (issue 18, part 3).

Each test builds three hosts in network namespaces, each running ``tidings serve
--workers 2`` on the Redis Cluster layer, with clients spread over them (see
``harness.py``), and asserts on the figures its scenario measures. The bounds,
and why they are what they are, are in docs/deployment.md ("Several hosts").
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.multihost._cluster import NODE_TIMEOUT_MS
from tests.multihost._fleet import CLOSE_TIMEOUT, INITIAL_DELAY, PING_INTERVAL, PING_TIMEOUT
from tests.multihost.harness import (
    FAILOVER_RATE,
    GROUP_EXPIRY,
    RATE,
    Deployment,
    cluster_failover,
    host_cut,
)
from tidings.layers._redis_hosts import BLOCK_TIMEOUT
from tidings.layers._redis_node import BACKOFF_MAX, READER_GRACE

pytestmark = pytest.mark.slow

REMOTE_TIMEOUT = 2.0  # the app's TransportRouter(remote_timeout=...)
SCHEDULING_SLACK = 1.0  # a shared 2-core machine running 6 workers, 6 redis-servers and us


async def test_host_cut(deployment: Deployment) -> None:
    figures = await host_cut(deployment)
    assert figures["killed_processes"] == 3, figures  # the supervisor and its 2 workers
    # Its kernel resets the connections: its clients notice at once.
    check_host_cut(figures, noticed=0.0)


async def test_host_cut_off_the_network(deployment: Deployment) -> None:
    figures = await host_cut(deployment, "link")
    assert figures["killed_processes"] == 0, figures
    # Nothing resets the connections: its clients notice by a ping without answer
    # (and a closing handshake without answer).
    check_host_cut(figures, noticed=PING_INTERVAL + PING_TIMEOUT + CLOSE_TIMEOUT)
    # Joined again, its processes reach Redis again: each receive loop's step gives up
    # after its wait plus READER_GRACE, then retries within one backoff step.
    rejoined = figures["rejoined_after_s"]
    assert rejoined is not None, figures
    assert rejoined <= BLOCK_TIMEOUT + READER_GRACE + 1.5 * BACKOFF_MAX + SCHEDULING_SLACK, figures


def check_host_cut(figures: dict[str, Any], *, noticed: float) -> None:
    """What holds however a host goes, if its clients notice within ``noticed`` seconds."""
    why = f"figures: {figures}"
    assert figures["send_failures"] == 0, why

    # The other hosts deliver on: nothing on their path waits for the dead host.
    assert figures["survivors"] == 12, why
    assert figures["survivor_missing"] == 0, why
    assert figures["survivor_order_problems"] == 0, why
    assert figures["survivor_largest_gap_s"] <= 1 / RATE + SCHEDULING_SLACK, why

    # The dead host's clients are back on the others: a plain client within its first
    # reconnection delay, a session client after the resume gave up on the dead owner.
    back = noticed + REMOTE_TIMEOUT + INITIAL_DELAY + 2 * SCHEDULING_SLACK
    assert figures["all_back_after_s"] <= back, why
    assert figures["dead_host_plain_order_problems"] == 0, why
    away = noticed + INITIAL_DELAY + SCHEDULING_SLACK
    assert all(missed < RATE * away for missed in figures["dead_host_plain_missed"]), why

    # Resume across hosts while the owner lives: exactly once, in order.
    moved = figures["sessions"]["moved"]
    assert len(moved) == 2, why
    for session in moved:
        assert [r["resumed"] for r in session["resumes"]] == [True], why
        assert session["duplicates"] == session["out_of_order"] == session["missing"] == 0, why

    # The owner died: the resume says so (a new session, continuity lost); what was
    # sent meanwhile is lost, and nothing is duplicated or reordered.
    died = figures["sessions"]["owner_died"]
    assert len(died) == 2, why
    for session in died:
        assert session["continuity_lost"], why
        assert [r["resumed"] for r in session["resumes"]] == [False], why
        assert session["duplicates"] == session["out_of_order"] == 0, why
        assert session["missing"] > 0 and session["missing_contiguous"], why
        assert session["missing_from_s"] >= -1 / RATE - SCHEDULING_SLACK, why

    # Its memberships expire: between 3/4 of group_expiry (renewed every quarter) and
    # group_expiry after the cut; from then on sends queue nothing for its nodes.
    # (Its 2 workers' nodes, or 1 if the kernel gave all its clients to one worker.)
    dead = figures["dead_nodes"]
    assert dead in (1, 2) and figures["dead_nodes_listed_before"] == dead, why
    assert figures["dead_nodes_listed_after"] == 0, why
    assert figures["member_nodes_are_live_nodes"], why  # those of the clients' consumers
    expired = figures["memberships_expired_after_s"]
    assert expired is not None, why
    assert GROUP_EXPIRY * 3 / 4 - SCHEDULING_SLACK <= expired <= GROUP_EXPIRY + SCHEDULING_SLACK
    lengths = figures["dead_inbox_lengths_after_expiry"]
    assert len(lengths) >= 4 and len(set(lengths)) == 1, why


async def test_cluster_failover(deployment: Deployment) -> None:
    figures = await cluster_failover(deployment)
    why = f"figures: {figures}"
    # No process crashed or was restarted; each host logged the outage and the recovery.
    assert figures["processes_unchanged"], why
    assert figures["hosts_logged_outage"] == figures["hosts_logged_recovery"] == 3, why
    assert figures["tracebacks"] == 0, why
    assert figures["client_failures"] == figures["client_reconnections"] == 0, why

    # While no master serves the group's slot, group_send raises RedisUnavailable:
    # the sender knows which messages did not go.
    assert figures["send_failures"] > 0, why
    # The master is suspected after cluster-node-timeout, marked failing once a majority
    # of masters agree (their gossip, within about another timeout), and its replica
    # is elected after a delay of 0.5 to 1 s; the sender's client then finds it.
    failover = 3 * NODE_TIMEOUT_MS / 1000 + 1.0
    assert figures["first_ok_send_after_s"] <= failover + SCHEDULING_SLACK, why

    # Delivery resumes once every receive loop's backoff has run out: within the
    # fail-over plus the longest backoff step (BACKOFF_MAX, jittered up to 1.5x).
    bound = failover + 1.5 * BACKOFF_MAX + SCHEDULING_SLACK
    assert figures["delivery_resumed_after_s"]["max"] <= bound, why
    # What was sent successfully arrives (loss only in the writes Redis had not yet
    # replicated when the master died), in order, once.
    assert figures["lost_after_ok"] <= FAILOVER_RATE * 0.5, why
    assert figures["order_problems"] == 0, why
