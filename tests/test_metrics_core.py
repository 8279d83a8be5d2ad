"""``tidings._metrics``: histograms, snapshots, merging workers, timing, and off means off.

Also the supervisor's end of the metrics link (``MetricsHub``) against a worker played
by this test over a real socketpair: what it sends, and when.
"""

from __future__ import annotations

import asyncio
import marshal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidings import _metrics
from tidings.layers.inmemory import InMemoryChannelLayer
from tidings.server._metrics import MetricsHub
from tidings.server._metrics_export import render


@pytest.fixture
def metrics() -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


def test_a_value_on_a_bound_is_in_that_bound_bucket() -> None:
    histogram = _metrics.Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.total == pytest.approx(8.65)


def test_merging_adds_counters_and_keeps_the_gauges_of_live_workers_only() -> None:
    one, two = _metrics.Metrics(), _metrics.Metrics()
    one.ws_messages_in, two.ws_messages_in = 3, 4
    one.open_websocket, two.open_websocket = 5, 6
    one.closed(1000)
    two.closed(1000)
    two.closed(4001)
    one.lag_last, two.lag_last = 0.25, 0.5
    one.http_duration[2].observe(0.002)
    two.http_duration[2].observe(20.0)
    # Snapshots travel through marshal, from the workers to the supervisor.
    first, second = (marshal.loads(marshal.dumps(m.snapshot())) for m in (one, two))
    live = _metrics.merge(_metrics.merge({}, first), second)
    assert live["ws_messages_in"] == 7
    assert live["open_websocket"] == 11
    assert live["closes"] == {1000: 2, 4001: 1}
    assert live["lag_last"] == 0.5  # the worst worker, not a sum
    assert sum(live["http_duration"][2]["counts"]) == 2
    assert live["http_duration"][2]["sum"] == pytest.approx(20.002)
    assert live["http_duration"][5]["counts"] == [0] * (len(_metrics.DURATION_BUCKETS) + 1)
    retired = _metrics.merge({}, second, gauges=False)
    assert retired["ws_messages_in"] == 4
    assert "open_websocket" not in retired and "lag_last" not in retired
    assert first["closes"] == {1000: 1}  # merging copied, never aliased


def test_render_is_parsed_back_by_the_prometheus_parser() -> None:
    metrics = _metrics.Metrics()
    metrics.http_duration[2].observe(0.003)
    metrics.http_duration[2].observe(0.003)
    metrics.hit("max_body_size")
    metrics.closed(1009)
    text = render(metrics.snapshot(), workers=1).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {
        s.labels["le"]: s.value
        for s in families["tidings_http_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["status"] == "2xx"
    }
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 2 and buckets["+Inf"] == 2
    limits = {s.labels["limit"]: s.value for s in families["tidings_limit_hits"].samples}
    assert set(limits) == set(_metrics.LIMITS)
    assert limits["max_body_size"] == 1 and sum(limits.values()) == 1
    assert families["tidings_websocket_closes"].samples[0].labels == {"code": "1009"}
    kinds = {s.labels["kind"] for s in families["tidings_connections"].samples}
    assert kinds == set(_metrics.KINDS)


def test_off_means_nothing_counts_and_layer_methods_are_not_wrapped() -> None:
    assert _metrics.ACTIVE is None
    original = InMemoryChannelLayer.__dict__["group_send"]
    assert not hasattr(original, "__wrapped__")
    _metrics.hit("max_sessions")  # a no-op
    _metrics.channel_full()
    assert _metrics.figures() is None


def test_layer_calls_are_timed_only_while_metrics_are_on(metrics: _metrics.Metrics) -> None:
    assert hasattr(InMemoryChannelLayer.__dict__["send"], "__wrapped__")

    async def scenario() -> None:
        layer = InMemoryChannelLayer(capacity=1)
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        await layer.group_send("g", {"type": "a.b"})
        assert await layer.receive(channel) == {"type": "a.b"}
        await layer.send(channel, {"type": "c.d"})
        with pytest.raises(Exception, match="full"):
            await layer.send(channel, {"type": "e.f"})

    asyncio.run(scenario())
    assert sum(metrics.layer_send.counts) == 2  # the refused one too
    assert sum(metrics.layer_group_send.counts) == 1
    assert sum(metrics.layer_receive.counts) == 1
    assert metrics.group_fanout.counts[0] == 1  # one member
    assert metrics.channel_full == 1 and metrics.limits["channel_capacity"] == 1
    figures = _metrics.figures()
    assert figures is not None and figures["channel_full"] == 1
    totals = _metrics.Metrics().snapshot() | {"channel_full": 9}
    _metrics.set_totals(totals)  # what a supervisor sends
    assert _metrics.figures() is totals


def test_disable_restores_the_layer_methods() -> None:
    _metrics.enable()
    _metrics.disable()
    assert not hasattr(InMemoryChannelLayer.__dict__["send"], "__wrapped__")


def test_message_sizes_are_folded_into_the_totals_by_a_snapshot() -> None:
    metrics = _metrics.Metrics()
    metrics.ws_in_sizes += [7, 300]  # two messages counted by size
    metrics.ws_bytes_in, metrics.ws_messages_in = 40, 3  # and reads counted at once
    metrics.ws_out_sizes.append(3)
    snapshot = metrics.snapshot()
    assert (snapshot["ws_messages_in"], snapshot["ws_bytes_in"]) == (5, 347)
    assert (snapshot["ws_messages_out"], snapshot["ws_bytes_out"]) == (1, 3)
    assert metrics.ws_in_sizes == [] and metrics.ws_out_sizes == []
    assert not any(name.endswith("_sizes") for name in snapshot)  # not figures
    assert metrics.snapshot() == snapshot  # folding twice adds nothing


def test_figures_are_complete_before_the_supervisors_first_totals(
    metrics: _metrics.Metrics,
) -> None:
    metrics.open_websocket = 2
    complete = set(_metrics.Metrics().snapshot())
    _metrics.set_totals({})  # no worker had answered: ignored
    figures = _metrics.figures()
    assert figures is not None and set(figures) == complete
    assert figures["open_websocket"] == 2  # this process's own, until totals come
    assert _metrics.workers() is None
    totals = _metrics.Metrics().snapshot() | {"open_websocket": 5}
    workers: dict[int, _metrics.WorkerFigures] = {
        11: {"started": 1.0, "connections": None},
        12: {"started": 2.0, "connections": dict.fromkeys(_metrics.KINDS, 0)},
    }
    _metrics.set_totals(totals, workers)
    assert _metrics.figures() is totals and _metrics.workers() is workers
    _metrics.set_totals({})  # never replaces real totals with nothing
    assert _metrics.figures() is totals
    _metrics.disable()
    assert _metrics.figures() is None and _metrics.workers() is None


# -- the supervisor's end, a worker played by hand --------------------------------------


def _read_frames(sock: socket.socket, kinds: int) -> list[tuple[bytes, bytes]]:
    """``kinds`` frames of the link: a 4-byte length, a kind byte, the payload."""
    frames = []
    for _ in range(kinds):
        size = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
        body = sock.recv(size, socket.MSG_WAITALL)
        frames.append((body[:1], body[1:]))
    return frames


def _answer(sock: socket.socket, seq: bytes, metrics: _metrics.Metrics) -> None:
    payload = b"S" + seq + marshal.dumps(metrics.snapshot())
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def test_the_supervisor_sends_complete_totals_and_each_workers_figures() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    hub = MetricsHub(listener)
    ours, theirs = hub.pair()
    worker = theirs.dup()  # the worker's copy (add_worker closes the supervisor's)
    worker.settimeout(10)
    forked = time.time()
    hub.add_worker(4242, ours, theirs)
    try:
        # The first round: a question, and no totals, since nobody has answered.
        hub.poll(0.0, {4242})
        [(kind, seq)] = _read_frames(worker, 1)
        assert kind == b"Q"
        worker.setblocking(False)
        with pytest.raises(BlockingIOError):
            worker.recv(1)
        worker.setblocking(True)
        worker.settimeout(10)
        # The worker answers; a scrape asks again (answered from a thread: it waits).
        own = _metrics.Metrics()
        own.open_websocket, own.open_http = 3, 1
        own.ws_in_sizes.append(9)
        _answer(worker, seq, own)
        hub.poll(1.0, {4242})  # reads it (the next round is a second away)

        def play() -> None:
            [(kind, seq)] = _read_frames(worker, 1)
            assert kind == b"Q"
            _answer(worker, seq, own)

        thread = threading.Thread(target=play)
        thread.start()
        text = hub.scrape()
        thread.join(10)
        assert b'tidings_websocket_messages_total{direction="in"} 1.0' in text
        [(kind, payload)] = _read_frames(worker, 1)
        assert kind == b"T"
        message = marshal.loads(payload)
        totals, workers = message["totals"], message["workers"]
        assert set(totals) == set(_metrics.Metrics().snapshot())
        assert totals["open_websocket"] == 3 and totals["ws_bytes_in"] == 9
        assert list(workers) == [4242]
        assert forked <= workers[4242]["started"] <= time.time()
        assert workers[4242]["connections"] == {
            "http": 1,
            "websocket": 3,
            "sse": 0,
            "longpoll": 0,
            "http2": 0,
        }
        # The worker exits: its counters stay in the totals, it leaves the workers.
        worker.close()
        hub.poll(0.0, set())
        assert hub.worker_figures() == {}
        assert hub.totals()["ws_messages_in"] == 1 and hub.totals()["open_websocket"] == 0
    finally:
        hub.close()
        worker.close()
