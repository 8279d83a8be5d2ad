"""The errors of the interface server, under one root.

::

    ServerError
     +-- ConfigError          (config) an option is out of range; names its flag; a ValueError
     +-- AppImportError       (main) APP cannot be imported or is not an ASGI application
     +-- LifespanError        (lifespan) the app failed its lifespan startup or shutdown
     +-- ClientDisconnected   (http11) the client is gone; raised by ``send``; an OSError
     +-- MalformedRequest     (_h2_request) an HTTP/2 request breaks RFC 9113 section 8;
                              the stream is reset; a ValueError

Protocol errors of the sans-I/O cores (``tidings.wire``) are not here: they carry the
status or close code to answer with, and the server answers them where they arise.
"""

from __future__ import annotations

__all__ = ["ServerError"]


class ServerError(Exception):
    """Root of the errors raised by ``tidings.server``."""
