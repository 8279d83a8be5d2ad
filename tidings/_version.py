"""The Tidings version: one string, read by the package, the CLI and the build.

``pyproject.toml`` reads it with ``[tool.setuptools.dynamic]``; it lives in a module
of its own so reading it imports nothing else.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
