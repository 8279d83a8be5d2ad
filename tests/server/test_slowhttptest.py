"""Slow-client attacks (Debian's slowhttptest) don't keep normal requests from being served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_slowloris_and_slow_body_are_shed_while_normal_requests_are_served() -> None:
    result = subprocess.run(
        [sys.executable, "compliance/slowhttptest/run.py", "--length", "8", "--connections", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
