"""Prometheus text from a snapshot of ``tidings._metrics``: the names, types and labels.

``render(totals, workers)`` builds the metric families with ``prometheus_client`` (a
collector over the snapshot, in a registry of its own, so nothing global of the
library is touched) and returns the text exposition format. Every name exported is
here, once; docs/operations.md lists them with their meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tidings import _metrics

__all__ = ["CONTENT_TYPE", "render"]

#: The Content-Type of the text exposition format, version 0.0.4.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_OPEN: Final = tuple((kind, f"open_{kind}") for kind in _metrics.KINDS)
_SIMPLE_COUNTERS: Final = (
    (
        "tidings_websocket_handshakes_accepted",
        "WebSocket handshakes answered with 101",
        "ws_accepted",
    ),
    (
        "tidings_channel_full",
        "sends refused with ChannelFull (a channel at capacity)",
        "channel_full",
    ),
    (
        "tidings_direct_deliveries",
        "group messages written straight to a member's socket",
        "direct_deliveries",
    ),
    (
        "tidings_redis_outages",
        "times a node's receive loop found Redis unreachable",
        "redis_outages",
    ),
    (
        "tidings_redis_reconnects",
        "times a node's receive loop reached Redis again",
        "redis_reconnects",
    ),
)
_LABELLED_COUNTERS: Final = (
    (
        "tidings_websocket_handshakes_denied",
        "WebSocket handshakes answered with an HTTP response",
        "reason",
        "ws_denied",
    ),
    (
        "tidings_application_exceptions",
        "exceptions the application raised",
        "kind",
        "app_exceptions",
    ),
    (
        "tidings_transport_sessions",
        "transport sessions opened, resumed and expired",
        "event",
        "sessions",
    ),
    ("tidings_limit_hits", "times a limit was hit, by the flag or setting", "limit", "limits"),
)
_HISTOGRAMS: Final = (
    (
        "tidings_event_loop_lag_seconds",
        "how late the once-a-second sweep ran",
        "lag",
        _metrics.LAG_BUCKETS,
    ),
    (
        "tidings_group_fanout",
        "members one group message reached in one process",
        "group_fanout",
        _metrics.FANOUT_BUCKETS,
    ),
)
_LAYER_OPS: Final = (
    ("send", "layer_send"),
    ("receive", "layer_receive"),
    ("group_send", "layer_group_send"),
)


def _buckets(data: dict[str, Any], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), data["counts"], strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


class _SnapshotCollector(Collector):
    def __init__(self, totals: _metrics.Snapshot, workers: int) -> None:
        self.totals = totals
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        t = self.totals
        workers = GaugeMetricFamily("tidings_workers", "worker processes reporting figures")
        workers.add_metric([], self.workers)
        yield workers
        open_ = GaugeMetricFamily("tidings_connections", "open connections", labels=["kind"])
        for kind, name in _OPEN:
            open_.add_metric([kind], t[name])
        yield open_
        durations = HistogramMetricFamily(
            "tidings_http_request_duration_seconds",
            "application responses by status class, from the request head to the end",
            labels=["status"],
        )
        for klass, data in enumerate(t["http_duration"]):
            label = f"{klass}xx" if klass else "none"  # none: the client left first
            durations.add_metric([label], _buckets(data, _metrics.DURATION_BUCKETS), data["sum"])
        yield durations
        for name, doc, labels, pairs in (
            ("tidings_websocket_messages", "WebSocket messages", "direction",
             (("in", t["ws_messages_in"]), ("out", t["ws_messages_out"]))),
            ("tidings_websocket_bytes", "WebSocket bytes: all received, message frames sent",
             "direction", (("in", t["ws_bytes_in"]), ("out", t["ws_bytes_out"]))),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=[labels])
            for label, value in pairs:
                family.add_metric([label], value)
            yield family
        for name, doc, key in _SIMPLE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=t[key])
        for name, doc, label, key in _LABELLED_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=[label])
            for value_label, value in sorted(t[key].items()):
                family.add_metric([value_label], value)
            yield family
        closes = CounterMetricFamily(
            "tidings_websocket_closes",
            "WebSocket connections ended, by close code",
            labels=["code"],
        )
        for code, count in sorted(t["closes"].items()):
            closes.add_metric([str(code)], count)
        yield closes
        lag = GaugeMetricFamily(
            "tidings_event_loop_lag_last_seconds", "the last lag measured, largest over workers"
        )
        lag.add_metric([], t["lag_last"])
        yield lag
        for name, doc, key, bounds in _HISTOGRAMS:
            histogram = HistogramMetricFamily(name, doc)
            histogram.add_metric([], _buckets(t[key], bounds), t[key]["sum"])
            yield histogram
        layer = HistogramMetricFamily(
            "tidings_channel_layer_seconds",
            "channel layer send and group_send calls; receive: time a message was queued",
            labels=["op"],
        )
        for op, key in _LAYER_OPS:
            layer.add_metric([op], _buckets(t[key], _metrics.DURATION_BUCKETS), t[key]["sum"])
        yield layer


def render(totals: _metrics.Snapshot, workers: int) -> bytes:
    """The text exposition of ``totals`` (a snapshot, or several merged)."""
    complete = _metrics.Metrics().snapshot()
    _metrics.merge(complete, totals)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(complete, workers))
    return generate_latest(registry)
