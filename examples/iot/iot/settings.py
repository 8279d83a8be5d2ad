# iot/settings.py
"""Settings of the IoT dashboard example.

The broker comes from ``IOT_MQTT_URL`` (default ``mqtt://127.0.0.1:1884``, the
port the README starts Mosquitto on); the channel layer is the in-memory one,
or Redis with ``TIDINGS_REDIS_URL`` (needed with ``--workers N``).
"""

import os

SECRET_KEY = os.environ.get("IOT_SECRET_KEY", "iot-example-not-for-production")
DEBUG = os.environ.get("IOT_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["tidings"]
ROOT_URLCONF = "iot.urls"
ASGI_APPLICATION = "iot.asgi.application"
USE_TZ = True

_redis = os.environ.get("TIDINGS_REDIS_URL")
CHANNEL_LAYERS = {
    "default": (
        {"BACKEND": "tidings.layers.RedisChannelLayer", "CONFIG": {"hosts": [_redis]}}
        if _redis
        else {"BACKEND": "tidings.layers.InMemoryChannelLayer"}
    )
}

MQTT_BROKERS = {
    "default": {
        "URL": os.environ.get("IOT_MQTT_URL", "mqtt://127.0.0.1:1884"),
        # Each `tidings serve --workers N` process subscribes; the shared group
        # makes the broker hand each message to one of them.
        "SHARED_GROUP": "iot-dashboard",
    }
}

MQTT_BRIDGES = [
    # Every reading goes to the browsers as a group message of type mqtt.message.
    {"FROM_TOPIC": "sensors/+/temp", "TO_GROUP": "telemetry", "QOS": 0},
    # A browser's command (an mqtt.publish group message) goes to one device.
    {"FROM_GROUP": "commands", "TO_TOPIC": "devices/+/cmd", "QOS": 1},
]
