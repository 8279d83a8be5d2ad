"""Tidings: an event-driven stack for Django.

The interface server (``tidings.server``), the channel layers
(``tidings.layers``) and Channels-compatible consumers and routing live in
subpackages; importing ``tidings`` itself imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CHANNEL_LAYER", "__version__"]

__version__ = "0.1.0"

#: The alias of ``CHANNEL_LAYERS`` used when none is named (Channels' top-level name).
DEFAULT_CHANNEL_LAYER = "default"
