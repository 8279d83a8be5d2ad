"""pytest plugin for Channels' suite on Tidings, loaded with ``-p`` before its conftest.

It installs :mod:`tidings.alias`, so ``channels`` and ``channels.X`` *are* ``tidings``
and ``tidings.X`` (a missing ``tidings.X`` raises; the alias refuses to shadow a real
Channels), skips the tests named in :data:`SKIPS`, and fails the run (exit status 3) if
any ``channels`` module the suite imported did not come from Tidings.
"""

from __future__ import annotations

import sys

import pytest

import tidings.alias

tidings.alias.install()

#: Tests not run: node id -> reason. Each is an intended difference named in
#: docs/migration.md; at most three.
SKIPS: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = SKIPS.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"Tidings differs on purpose: {reason}"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    aliased = {
        name: module
        for name, module in sys.modules.items()
        if name == "channels" or name.startswith("channels.")
    }
    strays = sorted(
        name
        for name, module in aliased.items()
        if not (module.__name__ == "tidings" or module.__name__.startswith("tidings."))
    )
    if "channels" not in aliased or strays:
        sys.stderr.write(
            f"channels-suite: alias check failed (imported: {sorted(aliased)}, "
            f"not from Tidings: {strays})\n"
        )
        session.exitstatus = 3
