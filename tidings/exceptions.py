"""Exceptions raised by Tidings, with Channels' public names.

Two families live here and they must not be confused.

Control-flow signals (raised on purpose by application code to steer a
consumer; they are not errors and are never logged as such)::

    ConsumerSignal
     +-- StopConsumer        stop this consumer instance cleanly
     +-- DenyConnection      refuse an incoming connection (WebSocket: 403)
     +-- AcceptConnection    accept an incoming connection

Errors::

    TidingsError
     +-- ChannelFull              a channel is at capacity (``send``)
     +-- MessageTooLarge          a message exceeds a size limit
     +-- InvalidChannelLayerError (also a ValueError) bad CHANNEL_LAYERS config
     +-- ChannelLayerUnavailable  the layer's backing service can't be reached
     |    +-- RedisUnavailable    (tidings.layers.redis) Redis down or pool exhausted
     +-- RequestAborted           the client went away mid-request
          +-- RequestTimeout      the client was too slow sending the body
     +-- TransportError           (tidings.transports.errors) inside the fallback transports

Every class here subclasses ``Exception`` exactly as in Channels, so code
written against Channels keeps catching what it caught before.
"""

from __future__ import annotations

__all__ = [
    "AcceptConnection",
    "ChannelFull",
    "ChannelLayerUnavailable",
    "ConsumerSignal",
    "DenyConnection",
    "InvalidChannelLayerError",
    "MessageTooLarge",
    "RequestAborted",
    "RequestTimeout",
    "StopConsumer",
    "TidingsError",
]


class ConsumerSignal(Exception):
    """Base of the control-flow signals; raising one is not an error."""


class StopConsumer(ConsumerSignal):
    """Raised by a consumer to end its instance; the server then cleans up."""


class DenyConnection(ConsumerSignal):
    """Raised during ``connect`` to refuse the connection."""


class AcceptConnection(ConsumerSignal):
    """Raised during ``connect`` to accept the connection."""


class TidingsError(Exception):
    """Root of the errors Tidings raises."""


class ChannelFull(TidingsError):
    """The channel already holds ``capacity`` messages; the send was refused."""


class MessageTooLarge(TidingsError):
    """The message is larger than the limit that applies to it."""


class InvalidChannelLayerError(TidingsError, ValueError):
    """``CHANNEL_LAYERS`` names a backend or option that cannot be used."""


class ChannelLayerUnavailable(TidingsError):
    """The channel layer cannot reach the service it runs on (e.g. Redis); try again later.

    Raised by a layer call that could not be carried out; whether the message
    went anywhere is said by each backend's call (see ``RedisUnavailable``).
    Catch this rather than a backend's subclass to stay backend-neutral.
    """


class RequestAborted(TidingsError):
    """The client closed the connection before the request was complete."""


class RequestTimeout(RequestAborted):
    """The client did not send the request body in time."""
