"""Tidings: an event-driven stack for Django.

The interface server (``tidings.server``), the channel layers
(``tidings.layers``) and Channels-compatible consumers and routing live in
subpackages; importing ``tidings`` itself imports nothing heavy.
"""

from __future__ import annotations

from tidings._version import __version__

__all__ = ["DEFAULT_CHANNEL_LAYER", "__version__"]

#: The alias of ``CHANNEL_LAYERS`` used when none is named (Channels' top-level name).
DEFAULT_CHANNEL_LAYER = "default"
