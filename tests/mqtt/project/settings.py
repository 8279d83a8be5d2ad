"""Settings of the MQTT test project, run by ``tidings serve`` in a subprocess.

Everything that varies per test comes from the environment (set by the test).
"""

from __future__ import annotations

import os

SECRET_KEY = "mqtt-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["tidings"]
USE_TZ = True
ASGI_APPLICATION = "tests.mqtt.project.asgi.application"

_redis = os.environ.get("MQTT_TEST_REDIS_URL")
CHANNEL_LAYERS = {
    "default": (
        {"BACKEND": "tidings.layers.RedisChannelLayer", "CONFIG": {"hosts": [_redis]}}
        if _redis
        else {"BACKEND": "tidings.layers.InMemoryChannelLayer"}
    )
}

_broker: dict[str, object] = {
    "URL": os.environ.get("MQTT_TEST_URL", "mqtt://127.0.0.1:1"),
    "RECONNECT_DELAY": 0.05,
}
if os.environ.get("MQTT_TEST_CLIENT_ID"):
    _broker["CLIENT_ID"] = os.environ["MQTT_TEST_CLIENT_ID"]
    _broker["CLEAN_START"] = False
if os.environ.get("MQTT_TEST_SHARED_GROUP"):
    _broker["SHARED_GROUP"] = os.environ["MQTT_TEST_SHARED_GROUP"]
MQTT_BROKERS = {"default": _broker}
