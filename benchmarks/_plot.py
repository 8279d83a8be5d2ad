"""Draw ``docs/benchmarks.png`` from ``benchmarks/results/*.json`` (``./scripts/bench --plot``).

Theory of operation
-------------------
Two steps, in two interpreters:

1. :func:`collect` (standard library only, so the tests can run it) reads the
   result files the benchmark scripts wrote and turns each figure worth showing
   into a :class:`Panel`: one bar per server, the unit, whether higher or lower
   is better, the file it came from and the command that produced it. A result
   file of a benchmark it does not know is reported and left out.
2. :func:`render` draws the panels with matplotlib and stamps each file's date
   and machine on the chart. matplotlib is never a dependency of Tidings: run
   as a script, this module installs it into the benchmarks' peers venv
   (``benchmarks/.venv-peers``, see ``_peers.peers_python``) and re-runs itself
   there to draw.

    python benchmarks/_plot.py [--results DIR] [--out PNG]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import ROOT, peers_python  # noqa: E402

RESULTS = HERE / "results"
OUT = ROOT / "docs" / "benchmarks.png"
PLOT_PACKAGES = ["matplotlib>=3.7"]

# Display names and colours, Tidings first and in a colour of its own.
NAMES = {
    "tidings": "Tidings",
    "uvicorn": "uvicorn",
    "granian": "granian",
    "channels": "Channels",
    "channels_redis": "channels_redis",
    "channels_redis_pubsub": "channels_redis\npub/sub",  # two lines: bars are narrow
}
COLORS = {
    "tidings": "#0f766e",
    "uvicorn": "#94a3b8",
    "granian": "#cbd5e1",
    "channels": "#a8a29e",
    "channels_redis": "#a8a29e",
    "channels_redis_pubsub": "#d6d3d1",
}


@dataclass
class Source:
    """One result file: where, when and how it was measured."""

    benchmark: str
    date: str
    machine: str
    command: str


@dataclass
class Panel:
    """One chart panel: a figure for each server, from one result file."""

    title: str
    unit: str
    higher_is_better: bool
    values: dict[str, float] = field(default_factory=dict)
    decimals: int = 0
    source: str = ""

    def label(self, value: float) -> str:
        """A value as the chart (and the README) shows it: ``81,785``, ``6.6``, ``0.74``."""
        return f"{value:,.{self.decimals}f}"


def _ordered(values: dict[str, float]) -> dict[str, float]:
    """Tidings first, then the peers in the order of NAMES, then anything else."""
    order = list(NAMES)
    return dict(sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def _http_hello(data: dict[str, Any]) -> list[Panel]:
    titles = {
        "hello": "HTTP hello world",
        "64k": "HTTP 64 KiB body",
        "stream-1m": "HTTP 1 MiB streamed",
    }
    panels = []
    for load, title in titles.items():
        by_server = data["results"].get(load)
        if by_server:
            values = {server: figures["rps"] for server, figures in by_server.items()}
            panels.append(Panel(title, "requests/s", True, _ordered(values)))
    return panels


def _ws_echo(data: dict[str, Any]) -> list[Panel]:
    figures = [
        ("echo_32B_msgs_per_s", "WebSocket echo, 32 B, 100 conns", "messages/s", True),
        ("echo_1KiB_msgs_per_s", "WebSocket echo, 1 KiB, 100 conns", "messages/s", True),
        ("idle_kib_per_connection", "WebSocket idle memory", "KiB per connection", False),
    ]
    panels = []
    for key, title, unit, higher in figures:
        values = {s: f[key] for s, f in data["results"].items() if key in f}
        if values:
            panels.append(Panel(title, unit, higher, _ordered(values), decimals=0 if higher else 1))
    return panels


def _consumer_dispatch(data: dict[str, Any]) -> list[Panel]:
    results = data["results"]
    figures = [
        ("dispatch_msgs_per_s", "Consumer dispatch (communicator)", "messages/s", True),
        ("group_1000_group_send_ms", "In-memory group_send, 1,000 members", "ms per call", False),
        (
            "group_1000_all_received_ms",
            "In-memory group_send, 1,000 members",
            "ms until all received",
            False,
        ),
    ]
    panels = []
    for key, title, unit, higher in figures:
        if key in results:
            values = {k: v for k, v in results[key].items() if k != "ratio"}
            panels.append(Panel(title, unit, higher, _ordered(values), decimals=0 if higher else 2))
    return panels


def _layer_redis(data: dict[str, Any]) -> list[Panel]:
    panels = []
    kinds: dict[str, dict[str, float]] = {}
    for impl, by_kind in data.get("throughput", {}).items():
        for kind, figures in by_kind.items():
            kinds.setdefault(kind, {})[impl] = figures["per_second"]
    for kind, values in kinds.items():
        title = f"Redis layer send+receive ({kind})"
        panels.append(Panel(title, "messages/s", True, _ordered(values)))
    for size, by_impl in data.get("group_send", {}).items():
        # A peer that failed at this size has no figure ("failed": why).
        values = {impl: f["p99_ms"] for impl, f in by_impl.items() if "p99_ms" in f}
        title = f"Redis group_send, {int(size):,} members"
        unit = "ms to last member (p99)"
        panels.append(Panel(title, unit, False, _ordered(values), decimals=1))
    return panels


def _ws_broadcast(data: dict[str, Any]) -> list[Panel]:
    results = data["results"]
    clients = next(iter(results.values()), {}).get("clients", "?")
    figures = [
        ("p99_ms", f"WebSocket broadcast to {clients} clients", "ms to last client (p99)"),
        ("cpu_us_per_message", "WebSocket broadcast, server CPU", "µs per delivered message"),
    ]
    panels = []
    for key, title, unit in figures:
        values = {impl: f[key] for impl, f in results.items() if key in f}
        if values:
            panels.append(Panel(title, unit, False, _ordered(values), decimals=1))
    return panels


EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Panel]]] = {
    "http_hello": _http_hello,
    "ws_echo": _ws_echo,
    "consumer_dispatch": _consumer_dispatch,
    "layer_redis": _layer_redis,
    "ws_broadcast": _ws_broadcast,
}


def collect(results: Path = RESULTS) -> tuple[list[Panel], list[Source]]:
    """Read every result file in ``results`` into panels (in a fixed order) and sources."""
    panels: list[Panel] = []
    sources: list[Source] = []
    files = {path.stem: path for path in sorted(results.glob("*.json"))}
    for name in [*EXTRACTORS, *sorted(set(files) - set(EXTRACTORS))]:
        if name not in files:
            continue
        if name not in EXTRACTORS:
            print(f"skipping {files[name].name}: no chart for benchmark {name!r}", file=sys.stderr)
            continue
        data = json.loads(files[name].read_text())
        found = EXTRACTORS[name](data)
        for panel in found:
            panel.source = name
        panels += found
        sources.append(
            Source(
                benchmark=name,
                date=str(data.get("date", "unknown date")),
                machine=str(data.get("machine", "unknown machine")),
                command=f"python benchmarks/{name}.py",
            )
        )
    return panels, sources


def _stamp(sources: list[Source]) -> tuple[str, str]:
    """The chart's subtitle (machine, dates) and footer (each file and its command)."""
    machines = sorted({s.machine for s in sources})
    days = sorted({s.date[:10] for s in sources})
    subtitle = f"measured {', '.join(days)} on {'; '.join(machines)}"
    footer = "    ".join(f"{_when(s.date)}: {s.command}" for s in sources)
    return subtitle, footer


def _when(date: str) -> str:
    """``2026-11-24T11:46:48+00:00`` -> ``2026-11-24 11:46 UTC``."""
    try:
        moment = datetime.datetime.fromisoformat(date).astimezone(datetime.UTC)
    except ValueError:
        return date
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def render(panels: list[Panel], sources: list[Source], out: Path) -> None:
    """Draw ``panels`` into ``out`` (PNG) with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Three or four panels a row, whichever leaves fewer empty places (four on a tie).
    columns = min((4, 3), key=lambda n: -len(panels) % n)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.3 * rows + 1.3), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        names = list(panel.values)
        values = [panel.values[n] for n in names]
        bars = ax.bar(
            [NAMES.get(n, n) for n in names],
            values,
            color=[COLORS.get(n, "#e2e8f0") for n in names],
            edgecolor="#334155",
            linewidth=0.6,
        )
        for bar, name, value in zip(bars, names, values, strict=True):
            ax.annotate(
                panel.label(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
                fontweight="bold" if name == "tidings" else "normal",
            )
        better = "higher is better" if panel.higher_is_better else "lower is better"
        ax.set_title(f"{panel.title}\n{panel.unit}, {better}", fontsize=10)
        ax.set_ylim(0, max(values) * 1.18)
        ax.tick_params(axis="x", labelsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 10 else f"{v:g}")
        )
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="y", color="#e2e8f0", linewidth=0.6)
        ax.set_axisbelow(True)
    subtitle, footer = _stamp(sources)
    fig.suptitle(
        "Tidings benchmarks: one worker per server, peers from PyPI, same run\n" + subtitle,
        fontsize=12,
    )
    fig.text(0.5, 0.01, footer, ha="center", fontsize=7.5, color="#475569", wrap=True)
    fig.tight_layout(rect=(0, 0.035, 1, 0.955))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of *.json")
    parser.add_argument("--out", type=Path, default=OUT, help="PNG to write")
    parser.add_argument("--render", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    panels, sources = collect(ns.results)
    if not panels:
        print(f"no benchmark results in {ns.results}", file=sys.stderr)
        return 1
    if not ns.render:
        # Draw in the peers venv, where matplotlib lives (installed on first use).
        python = peers_python(PLOT_PACKAGES)
        cmd = [
            str(python),
            __file__,
            "--render",
            "--results",
            str(ns.results),
            "--out",
            str(ns.out),
        ]
        return subprocess.run(cmd, check=False).returncode
    render(panels, sources, ns.out)
    print(f"wrote {ns.out} ({len(panels)} panels from {', '.join(s.benchmark for s in sources)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
