"""Fixtures of the multi-host tests: a whole deployment per test (see ``harness.py``).

These tests are marked ``slow``: ``./scripts/test --all`` runs them, the default
run leaves them out. Run where they cannot (not root, no ``ip``, no Redis), they
fail and say why; they never skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.multihost._net import NotPossible, check_environment
from tests.multihost.harness import Deployment, deploy


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    """Three hosts, a Redis Cluster with replicas; removed after the test, also on failure."""
    try:
        check_environment()
    except NotPossible as exc:
        pytest.fail(str(exc))
    async with deploy() as built:
        yield built
