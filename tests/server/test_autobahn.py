"""Autobahn|Testsuite's fuzzing client against ``tidings serve`` (RFC 6455 and 7692).

Both tests drive ``compliance/autobahn/run.py``: it builds the Python 2.7 environment
wstest needs if it is missing (from PyPI), serves the echo app, runs the cases and exits
non-zero on any FAILED, WRONG CODE or UNCLEAN verdict. A missing environment that
cannot be built is a failure with run.py's message, never a skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "compliance" / "autobahn" / "run.py"


def _run(cases: str, reports: Path, timeout: float) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--cases", cases, "--reports", str(reports)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode == 2:
        pytest.fail(f"Autobahn|Testsuite could not run:\n{output}", pytrace=False)
    assert proc.returncode == 0, f"Autobahn cases did not pass:\n{output}"
    assert "Autobahn fuzzingclient:" in proc.stdout
    assert (reports / "index.json").exists()


def test_autobahn_representative_cases(tmp_path: Path) -> None:
    """Framing, pings, fragmentation, UTF-8, close codes and one deflate case each way."""
    # Ten minutes covers building the Python 2.7 venv on a fresh machine; a run with
    # the venv in place takes about ten seconds.
    _run("fast", tmp_path / "reports", timeout=900)


@pytest.mark.slow
def test_autobahn_all_cases(tmp_path: Path) -> None:
    """Every case, 1.* to 13.* (the permessage-deflate groups 12 and 13 take minutes)."""
    _run("all", tmp_path / "reports", timeout=3600)
