"""The errors of the fallback transports, under one root.

::

    TidingsError                     (tidings.exceptions)
     +-- TransportError              anything a session request can fail with
          +-- BadRequest             (request) malformed request; carries the status
          +-- ProtocolError          (protocol) not protocol v1; also a ValueError
          +-- ClientGone             (_http) the client left before the request ended
          +-- InboxFull              (inbox) no room for a client message that must not wait
          +-- RemoteTimeout          (remote) the owning process did not answer in time

Each is raised and caught inside ``tidings.transports`` and answered with an HTTP
status or a close code; none reaches the application, and none carries text from the
request to the client.
"""

from __future__ import annotations

from tidings.exceptions import TidingsError

__all__ = ["TransportError"]


class TransportError(TidingsError):
    """Root of the errors raised inside ``tidings.transports``."""
