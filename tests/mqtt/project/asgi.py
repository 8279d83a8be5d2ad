"""The MQTT test project's application: one route that records what it handles.

``MQTT_TEST_LOG`` gets one line per handled message: ``<pid> <topic> <payload>``.
A payload ``hang`` makes the handler wait for ever the first time (marked by
the file ``MQTT_TEST_LOG + ".hung"``), so that a test can kill the process
mid-handler.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import django

django.setup()

from tidings.mqtt import MqttConsumer, TopicRouter, topic  # noqa: E402
from tidings.routing import ProtocolTypeRouter  # noqa: E402

LOG = Path(os.environ.get("MQTT_TEST_LOG", os.devnull))


class Recorder(MqttConsumer):
    def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        hung = LOG.with_name(LOG.name + ".hung")
        if payload == b"hang" and not hung.exists():
            hung.write_text(str(os.getpid()))
            threading.Event().wait()  # until the test kills the process
        with LOG.open("a") as log:
            log.write(f"{os.getpid()} {topic} {payload.decode()}\n")


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    raise RuntimeError("not served")


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "mqtt": TopicRouter([topic("work/<id>", Recorder.as_asgi(), qos=1)]),
    }
)
