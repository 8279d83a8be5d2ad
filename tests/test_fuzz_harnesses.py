"""The fuzz harnesses of ``fuzz/`` in their self-test mode, bounded in count and time.

The default run gives each a few thousand inputs from a fixed seed (about a second);
``./scripts/test --all`` gives each 200,000 from a seed that changes every run, printed
on failure so that it can be replayed with ``FUZZ_SEED``. Coverage-guided runs with
atheris are described in fuzz/README.md.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
HARNESSES = ["ws_frames.py", "http11.py"]


def _selftest(harness: str, inputs: int, seed: int, timeout: float) -> None:
    env = dict(os.environ, FUZZ_SEED=str(seed))
    proc = subprocess.run(
        [sys.executable, str(FUZZ / harness), "--selftest", str(inputs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"FUZZ_SEED={seed}:\n{proc.stdout}{proc.stderr}"
    assert f"{inputs} inputs" in proc.stdout


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_harness_quick(harness: str) -> None:
    _selftest(harness, 3000, seed=1, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_harness_long(harness: str) -> None:
    _selftest(harness, 200_000, seed=random.randrange(1 << 30), timeout=900)
