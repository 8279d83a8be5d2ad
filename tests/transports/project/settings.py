"""Test settings with the Redis channel layer: sessions shared by several processes.

The test sets ``TIDINGS_TEST_REDIS_URL`` (the run's private redis-server) and
``TIDINGS_TEST_LAYER_PREFIX`` (a key prefix of its own, so runs never mix).
"""

from __future__ import annotations

import os

from tests.django_settings import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ["TIDINGS_TEST_REDIS_URL"]],
            "prefix": os.environ.get("TIDINGS_TEST_LAYER_PREFIX", "transports"),
        },
    }
}
