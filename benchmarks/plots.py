"""The benchmarks' plots (PNG, matplotlib): latency beside Powertools, throughput by concurrency.

``redis_vs_powertools.py --plot PATH`` and ``async_throughput.py --plot PATH``
call these with the figures they have just printed; ``bash scripts/bench
--plots`` runs both (and re-plots the saved reliability figures) into
``docs/``. The reliability plot is ``faultlab.matrix.plot``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "the plot needs matplotlib: pip install matplotlib (bash scripts/bench installs it)"
        ) from exc
    return plt


def latency(
    path: Path,
    rows: Mapping[str, Mapping[str, tuple[float, float]]],
    raw_p50_us: float,
    title: str,
) -> None:
    """Per-call latency, a pair of bars (median, whisker to p99) per kind of call.

    Args:
        path: Where the PNG goes.
        rows: ``{kind of call: {library: (p50 µs, p99 µs)}}``, libraries in the same order.
        raw_p50_us: The median of a plain GET's round trip (drawn as a line).
        title: The plot's title (server, versions, calls).
    """
    plt = pyplot()
    kinds = list(rows)
    libraries = list(rows[kinds[0]])
    width = 0.8 / len(libraries)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, library in enumerate(libraries):
        xs = [k + (index - (len(libraries) - 1) / 2) * width for k in range(len(kinds))]
        p50 = [rows[kind][library][0] for kind in kinds]
        p99 = [rows[kind][library][1] for kind in kinds]
        ax.bar(xs, p50, width, label=f"{library} (median; whisker: p99)")
        above = [high - low for low, high in zip(p50, p99, strict=True)]
        ax.errorbar(xs, p50, yerr=[[0] * len(p50), above], fmt="none", ecolor="black", capsize=4)
        for x, value in zip(xs, p50, strict=True):
            ax.annotate(
                f"{value:.0f}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.axhline(raw_p50_us, color="grey", linestyle="--", label="one raw GET round trip (median)")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("µs per call")
    _save(plt, fig, ax, title, path)


def throughput(
    path: Path,
    series: Mapping[str, Mapping[int, float]],
    lines: Mapping[str, float],
    title: str,
) -> None:
    """Executions per second by concurrent tasks, one curve per series, references as lines.

    Args:
        path: Where the PNG goes.
        series: ``{label: {tasks: executions per second}}``.
        lines: ``{label: executions per second}`` drawn across (one-at-a-time runs).
        title: The plot's title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        tasks = sorted(points)
        ax.plot(tasks, [points[t] for t in tasks], marker="o", label=label)
    # Up to three reference lines, each its own dash.
    for style, (label, value) in zip(("--", ":", "-."), lines.items(), strict=False):
        ax.axhline(value, color="grey", linestyle=style, label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({t for points in series.values() for t in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("concurrent asyncio tasks")
    ax.set_ylabel("executions per second")
    _save(plt, fig, ax, title, path)


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, legend, and the PNG written (120 dpi)."""
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
