"""Tidings: an event-driven stack for Django.

The interface server (``tidings.server``), the channel layers
(``tidings.layers``) and Channels-compatible consumers and routing live in
subpackages; importing ``tidings`` itself imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
