# chat/worker.py
"""Run the background worker inside the server when there is no Redis.

``manage.py runworker chat-summaries`` is a process of its own: it only gets
the jobs that the server sends through a layer both processes share, Redis.
The in-memory layer lives inside one process, so with it the server runs the
same worker itself: ``WorkerInServer`` is the ASGI ``lifespan`` application,
which starts a ``tidings.worker.Worker`` when the server starts and stops it
(letting a job in progress finish) when the server stops.
"""

import asyncio

from tidings.layers import get_channel_layer
from tidings.worker import Worker


class WorkerInServer:
    """Serve ``channels`` with ``application`` for as long as the server runs.

    With ``enabled=False`` it only answers the lifespan events.
    """

    def __init__(self, application, channels, *, enabled=True):
        self.application = application
        self.channels = list(channels)
        self.enabled = enabled

    async def __call__(self, scope, receive, send):
        worker = task = None
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                if self.enabled:
                    worker = Worker(self.application, self.channels, get_channel_layer())
                    task = asyncio.create_task(worker.arun())
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if worker is not None:
                    worker.stop()
                    await task
                await send({"type": "lifespan.shutdown.complete"})
                return
