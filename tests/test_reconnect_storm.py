"""A reconnect storm of 1,000 tidings.js clients (issue 18, part 4), asserted.

``benchmarks/reconnect_storm.py`` runs it at 10,000 and writes the figures; this runs
the same storm at 1,000 clients, with the accept rate limited so that it refuses some
of them, and asserts what must hold whatever the machine's speed:

* every client whose connection broke is back, and every session of the killed worker
  is replaced by a new one, within the run's time limit;
* no 5xx but the ``503`` with ``Retry-After`` of ``--max-accept-rate``;
* a session owned by the surviving worker is resumed at every reconnection, and its
  messages arrive exactly once, in order (no seq gap or duplicate, no tick missing);
* a session owned by the killed worker is replaced by a new one and its client told
  (``resumed: false``), exactly once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # redis-server is needed (scripts/test checks for it)


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "reconnect_storm", ROOT / "benchmarks" / "reconnect_storm.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_thousand_clients_come_back_after_their_worker_dies() -> None:
    storm = _benchmark().storm
    # 100 new connections a second per worker: the ~500 clients of the killed worker
    # come back within 250 ms, so most are refused at first and must retry as told.
    result = storm(
        clients=1000, accept_rate=100, procs=2, connect_rate=150, tick=1.0, blip=10.0,
        timeout=90.0,
    )  # fmt: skip
    violations = result["violations"]
    assert violations == dict.fromkeys(violations, 0), result
    assert result["worker_restarted"], result
    # The storm was real: both kinds of session broke, and the limit refused some.
    assert result["killed_worker_sessions_broken"] > 100, result
    assert result["surviving_worker_sessions_broken"] > 50, result
    assert result["statuses"].get("503+retry-after", 0) > 0, result
    assert set(result["statuses"]) <= {"503+retry-after"}, result
    assert result["seconds_until_all_back"] is not None, result
