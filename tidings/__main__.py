"""``python -m tidings``: the same as the ``tidings`` command."""

from __future__ import annotations

import sys

from tidings.cli import main

__all__: list[str] = []

sys.exit(main())
