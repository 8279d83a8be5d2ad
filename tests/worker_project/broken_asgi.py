"""A module whose import fails inside it (get_default_application must not hide that)."""

from __future__ import annotations

import tidings_no_such_module_for_tests  # type: ignore[import-not-found]  # noqa: F401

application = None
