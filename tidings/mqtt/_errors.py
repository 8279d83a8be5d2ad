"""The MQTT error tree.

::

    MqttError                    (root of everything tidings.mqtt raises)
     +-- MqttConfigError         a bad MQTT_BROKERS / MQTT_BRIDGES entry; names the key
     |                           (also an ImproperlyConfigured, for Django's sake)
     +-- MqttConnectError        the broker refused the start-up connection (bad
     |                           credentials, client id...); names the setting to fix
     +-- TopicError              a topic name or filter breaks the MQTT rules (a ValueError)
     +-- PublishError            a publish could not be handed to the broker
          +-- NotConnected       the broker is down and PUBLISH_QUEUE is 0
          +-- PublishQueueFull   the broker is down and PUBLISH_QUEUE messages wait already
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "MqttConfigError",
    "MqttConnectError",
    "MqttError",
    "NotConnected",
    "PublishError",
    "PublishQueueFull",
    "TopicError",
]


class MqttError(Exception):
    """Root of the errors raised by :mod:`tidings.mqtt`."""


class MqttConfigError(MqttError, ImproperlyConfigured):
    """An MQTT setting is wrong; the message names the setting key."""


class MqttConnectError(MqttError):
    """The broker refused the connection made at start-up; the message names the setting."""


class TopicError(MqttError, ValueError):
    """A topic name or topic filter breaks the MQTT rules (MQTT 5.0 section 4.7)."""


class PublishError(MqttError):
    """A message could not be handed to the broker."""


class NotConnected(PublishError):
    """The broker is down and publishes are not queued (``PUBLISH_QUEUE`` is 0)."""


class PublishQueueFull(PublishError):
    """The broker is down and the publish queue already holds ``PUBLISH_QUEUE`` messages."""
