"""The browser test project with the Redis layer, for ``tidings serve --workers N``.

``TIDINGS_TEST_REDIS_URL`` names the redis-server (./scripts/test starts one);
``TIDINGS_BROWSER_LAYER_PREFIX`` keeps each test's keys apart.
"""

from __future__ import annotations

import os

from tests.browser.project.settings import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ["TIDINGS_TEST_REDIS_URL"]],
            "prefix": os.environ.get("TIDINGS_BROWSER_LAYER_PREFIX", "tidings-browser"),
        },
    }
}
