"""Tests for tidings.worker and ``manage.py runworker``.

The Worker runs in-process against the in-memory layer. The management
command runs as a real subprocess for its exit codes and its signal handling
(the in-memory layer is process-local, so messages cannot reach it there).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

import tidings.worker
from tidings.consumer import AsyncConsumer
from tidings.exceptions import InvalidChannelLayerError, StopConsumer
from tidings.layers import InMemoryChannelLayer, get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.routing import ChannelNameRouter, ProtocolTypeRouter
from tidings.worker import Worker, run_worker

Message = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent

# Per-test rendezvous for "hold" jobs: name -> (started, release).
HOLDS: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}


_INSTANCES = itertools.count()


class Jobs(AsyncConsumer):
    """Answers each ``job`` on the ``results`` channel."""

    def __init__(self, **initkwargs: Any) -> None:
        super().__init__(**initkwargs)
        # Not id(self): a stopped instance's id can be reused by its replacement.
        self.serial = next(_INSTANCES)

    async def job(self, message: Message) -> None:
        if message.get("fail"):
            raise RuntimeError(f"job {message['n']} failed")
        hold = message.get("hold")
        if hold:
            started, release = HOLDS[hold]
            started.set()
            await release.wait()
        assert self.channel_layer is not None
        await self.channel_layer.send(
            "results",
            {"type": "result", "n": message["n"], "instance": self.serial, "channel": self.scope},
        )

    async def job_stop(self, message: Message) -> None:
        raise StopConsumer()

    async def job_send(self, message: Message) -> None:
        await self.send({"type": "websocket.send", "text": "nobody listens"})


application = ProtocolTypeRouter(
    {"channel": ChannelNameRouter({"jobs": Jobs.as_asgi(), "other-jobs": Jobs.as_asgi()})}
)


class LogWatcher(logging.Handler):
    """Collects tidings.worker records and lets a test await one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, predicate: Callable[[list[str]], bool], seconds: float = 2) -> None:
        async with asyncio.timeout(seconds):
            while not predicate(self.messages()):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def log() -> Iterator[LogWatcher]:
    watcher = LogWatcher()
    logger = logging.getLogger("tidings.worker")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watcher)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(old_level)


@pytest.fixture
async def layer() -> AsyncIterator[BaseChannelLayer]:
    channel_layer = get_channel_layer()
    assert channel_layer is not None
    await channel_layer.flush()
    HOLDS.clear()
    yield channel_layer
    await channel_layer.flush()


async def result(layer: BaseChannelLayer, seconds: float = 2) -> Message:
    async with asyncio.timeout(seconds):
        return await layer.receive("results")


async def assert_empty(layer: BaseChannelLayer, channel: str) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive(channel)


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.arun())

    async def stop(self) -> None:
        self.worker.stop()
        async with asyncio.timeout(5):
            await self.task


@pytest.fixture
async def start(layer: BaseChannelLayer) -> AsyncIterator[Callable[..., RunningWorker]]:
    running: list[RunningWorker] = []

    def starter(channels: list[str] | None = None, **kwargs: Any) -> RunningWorker:
        worker = Worker(application, channels or ["jobs"], layer, **kwargs)
        running.append(RunningWorker(worker))
        return running[-1]

    yield starter
    for item in running:
        if not item.task.done():
            await item.stop()


def test_public_names() -> None:
    assert sorted(tidings.worker.__all__) == [
        "DEFAULT_SHUTDOWN_TIMEOUT",
        "Worker",
        "run_command",
        "run_worker",
    ]


async def test_one_instance_per_channel_handles_messages_in_order(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker]
) -> None:
    running = start(["jobs", "other-jobs"])
    for n in range(3):
        await layer.send("jobs", {"type": "job", "n": n})
    results = [await result(layer) for _ in range(3)]
    assert [r["n"] for r in results] == [0, 1, 2]
    assert len({r["instance"] for r in results}) == 1
    assert results[0]["channel"] == {"type": "channel", "channel": "jobs"}
    await layer.send("other-jobs", {"type": "job", "n": 9})
    other = await result(layer)
    assert other["channel"]["channel"] == "other-jobs"
    assert other["instance"] != results[0]["instance"]
    await running.stop()


async def test_failed_message_is_logged_and_instance_restarted(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher
) -> None:
    running = start()
    await layer.send("jobs", {"type": "job", "n": 1})
    await layer.send("jobs", {"type": "job", "n": 2, "fail": True})
    await layer.send("jobs", {"type": "job", "n": 3})
    first, third = await result(layer), await result(layer)
    assert (first["n"], third["n"]) == (1, 3)
    assert first["instance"] != third["instance"]
    errors = [r for r in log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "channel 'jobs'" in errors[0].getMessage()
    assert "type 'job'" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "job 2 failed"
    assert not running.task.done()
    await running.stop()


async def test_application_failing_before_reading_costs_one_message_each(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher
) -> None:
    running = start(["jobs", "unrouted"])
    await layer.send("unrouted", {"type": "job", "n": 1})
    await layer.send("unrouted", {"type": "job", "n": 2})
    await log.wait_for(lambda m: sum("dropped a message of type 'job'" in x for x in m) == 2)
    failures = [r for r in log.records if r.levelno >= logging.ERROR]
    assert len(failures) == 2
    assert "ended before reading it" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "No application configured for channel name 'unrouted'" in str(failures[0].exc_info[1])
    await layer.send("jobs", {"type": "job", "n": 3})
    assert (await result(layer))["n"] == 3
    await running.stop()


@pytest.mark.parametrize("bad", [{"no": "type"}, {"type": 5}])
async def test_message_without_str_type_is_dropped(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher, bad: Message
) -> None:
    running = start()
    await layer.send("jobs", bad)
    await layer.send("jobs", {"type": "job", "n": 1})
    assert (await result(layer))["n"] == 1
    assert any("without a str 'type'" in m for m in log.messages(logging.ERROR))
    await running.stop()


async def test_instance_that_stops_is_replaced(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher
) -> None:
    running = start()
    await layer.send("jobs", {"type": "job", "n": 1})
    first = await result(layer)
    await layer.send("jobs", {"type": "job.stop"})
    await layer.send("jobs", {"type": "job", "n": 2})
    second = await result(layer)
    assert first["instance"] != second["instance"]
    assert log.messages(logging.ERROR) == []
    await running.stop()


async def test_instance_cannot_send_asgi_messages(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher
) -> None:
    running = start()
    await layer.send("jobs", {"type": "job.send"})
    await log.wait_for(lambda m: any("a message of type 'job.send'" in x for x in m))
    record = next(r for r in log.records if r.levelno == logging.ERROR)
    assert record.exc_info is not None
    assert "use the channel layer" in str(record.exc_info[1])
    await running.stop()


async def test_graceful_shutdown_finishes_current_message_and_leaves_the_rest(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker]
) -> None:
    started, release = HOLDS["a"] = (asyncio.Event(), asyncio.Event())
    running = start()
    await layer.send("jobs", {"type": "job", "n": 1, "hold": "a"})
    await started.wait()
    await layer.send("jobs", {"type": "job", "n": 2})
    running.worker.stop()
    # The worker waits for the held message...
    done, _ = await asyncio.wait({running.task}, timeout=0.05)
    assert not done
    release.set()
    await running.stop()
    assert (await result(layer))["n"] == 1
    # ...and never took the next one from the layer.
    async with asyncio.timeout(1):
        assert (await layer.receive("jobs"))["n"] == 2
    await assert_empty(layer, "results")


async def test_shutdown_timeout_cancels_a_stuck_instance(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker], log: LogWatcher
) -> None:
    started, _ = HOLDS["stuck"] = (asyncio.Event(), asyncio.Event())
    running = start(shutdown_timeout=0.05)
    await layer.send("jobs", {"type": "job", "n": 1, "hold": "stuck"})
    await started.wait()
    await running.stop()
    assert any("still busy" in m for m in log.messages(logging.WARNING))
    await assert_empty(layer, "results")


async def test_stop_before_run_returns_at_once(layer: BaseChannelLayer) -> None:
    worker = Worker(application, ["jobs"], layer)
    worker.stop()
    worker.stop()
    async with asyncio.timeout(1):
        await worker.arun()


async def test_cancelling_arun_shuts_down(
    layer: BaseChannelLayer, start: Callable[..., RunningWorker]
) -> None:
    running = start()
    await layer.send("jobs", {"type": "job", "n": 1})
    await result(layer)
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.task
    assert running.worker.stopping


class BrokenLayer(InMemoryChannelLayer):
    """An in-memory layer whose ``broken`` channel fails (a lost Redis connection, say)."""

    async def receive(self, channel: str) -> Message:
        if channel == "broken":
            raise OSError("layer connection lost")
        return await super().receive(channel)


async def test_layer_error_stops_the_worker_and_is_raised() -> None:
    layer = BrokenLayer()
    worker = Worker(application, ["jobs", "broken"], layer)
    with pytest.raises(OSError, match="layer connection lost"):
        async with asyncio.timeout(2):
            await worker.arun()
    assert worker.stopping


@pytest.mark.parametrize(
    ("channels", "error", "match"),
    [
        ([], ValueError, "at least one"),
        (["a", "a"], ValueError, "Duplicate"),
        (["bad name"], TypeError, "bad name"),
    ],
)
def test_worker_validates_channels(channels: list[str], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Worker(application, channels, InMemoryChannelLayer())


def test_run_worker_needs_a_layer() -> None:
    with pytest.raises(InvalidChannelLayerError, match="nope"):
        run_worker(application, ["jobs"], layer_alias="nope")
    with (
        override_settings(CHANNEL_LAYERS={}),
        pytest.raises(InvalidChannelLayerError, match="CHANNEL_LAYERS is empty"),
    ):
        run_worker(application, ["jobs"])


# -- manage.py runworker ------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "args", "match"),
    [
        ({}, ["jobs"], "ASGI_APPLICATION"),
        ({"ASGI_APPLICATION": "tests.test_worker.nope"}, ["jobs"], "has no attribute 'nope'"),
        ({"ASGI_APPLICATION": "tests.test_worker.application"}, ["jobs", "--layer", "x"], "'x'"),
        ({"ASGI_APPLICATION": "tests.test_worker.application"}, ["bad name"], "bad name"),
        (
            {"ASGI_APPLICATION": "tests.test_worker.application", "CHANNEL_LAYERS": {}},
            ["jobs"],
            "CHANNEL_LAYERS is empty",
        ),
    ],
)
def test_runworker_command_errors(settings: dict[str, Any], args: list[str], match: str) -> None:
    with override_settings(**settings), pytest.raises(CommandError, match=match):
        call_command("runworker", *args, verbosity=0)


def _manage(settings_module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "django", "runworker", *args, "--settings", settings_module]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


@pytest.mark.parametrize(
    ("settings_module", "args", "code", "expected"),
    [
        ("tests.worker_project.settings_no_app", ["jobs"], 1, "ASGI_APPLICATION"),
        ("tests.worker_project.settings_broken_app", ["jobs"], 1, "no_such_application"),
        ("tests.worker_project.settings", ["jobs", "--layer", "missing"], 1, "'missing'"),
        ("tests.worker_project.settings", [], 2, "channels"),
    ],
)
def test_runworker_subprocess_startup_errors(
    settings_module: str, args: list[str], code: int, expected: str
) -> None:
    completed = subprocess.run(
        _manage(settings_module, *args),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == code, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr


async def test_runworker_subprocess_runs_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        *_manage("tests.worker_project.settings", "jobs", "other"),
        cwd=REPO,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
        assert line.decode().strip() == (
            "Running worker for channels jobs, other on channel layer 'default'"
        )
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == "Worker stopped."
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
