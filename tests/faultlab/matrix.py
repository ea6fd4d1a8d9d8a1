"""Run scenarios x targets, sum the runs, and write them as JSON, a table and a plot."""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis_harness as harness
from faultlab.catalog import SCENARIOS, Params
from faultlab.lab import TARGETS, provision
from faultlab.ledger import Tally, combine

NOT_APPLICABLE = "n/a"


@dataclass
class Cell:
    scenario: str
    target: str
    runs: int
    tally: Tally | None  # None: the scenario does not apply to the target
    reason: str = ""


def run_cell(scenario: str, target: str, engine: harness.Engine, params: Params, runs: int) -> Cell:
    spec = SCENARIOS[scenario]
    if not spec.applies(target):
        return Cell(scenario, target, 0, None, spec.not_applicable)
    total = Tally()
    for n in range(runs):
        run_params = Params(**{**params.__dict__, "seed": params.seed + n})
        with (
            tempfile.TemporaryDirectory(prefix="onceonly-faults-") as tmp,
            provision(target, Path(tmp), engine, lease_ms=spec.lease_ms) as lab,
        ):
            total = combine(total, spec.run(lab, run_params))
    return Cell(scenario, target, runs, total)


def run_matrix(
    scenarios: Iterable[str],
    targets: Iterable[str],
    engine: harness.Engine,
    params: Params,
    runs: int,
    progress: Callable[[Cell], None] = lambda cell: None,
) -> list[Cell]:
    cells = []
    for scenario in scenarios:
        for target in targets:
            cell = run_cell(scenario, target, engine, params, runs)
            progress(cell)
            cells.append(cell)
    return cells


def to_json(cells: list[Cell], engine: harness.Engine, params: Params) -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "engine": f"{engine.name} {engine.version}",
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "params": params.__dict__,
        "cells": [
            {
                "scenario": c.scenario,
                "target": c.target,
                "runs": c.runs,
                "tally": None if c.tally is None else c.tally.as_dict(),
                "reason": c.reason,
            }
            for c in cells
        ],
    }


def cell_text(tally: dict[str, Any] | None) -> str:
    """One progress line's figures: duplicates / lost / stale, then the rest that is not zero."""
    if tally is None:
        return NOT_APPLICABLE
    figures = (tally["duplicates"], tally["lost_outcomes"], tally["stale_replays"])
    parts = ["{} dup / {} lost / {} stale".format(*figures)]
    if tally["stuck_s"] >= 0.5:
        parts.append(f"stuck {tally['stuck_s']:.1f} s")
    if tally["failed_closed"]:
        parts.append(f"{tally['failed_closed']} failed closed")
    if tally.get("time_to_error_ms") is not None:
        parts.append(f"error in ≤{tally['time_to_error_ms'] / 1000:.1f} s")
    if tally["unresolved"]:
        parts.append(f"{tally['unresolved']} unresolved")
    return ", ".join(parts)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several saved runs as one (a later file's cell replaces an earlier one's)."""
    merged = dict(results[0])
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        for cell in result["cells"]:
            cells[(cell["scenario"], cell["target"])] = cell
    merged["date"] = max(r["date"] for r in results)
    merged["params"] = [r["params"] for r in results]  # one entry per saved run
    merged["cells"] = list(cells.values())
    return merged


def _grid(results: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], Any]]:
    cells = results["cells"]
    order = {name: n for n, name in enumerate(SCENARIOS)}
    scenarios = sorted({c["scenario"] for c in cells}, key=lambda s: order.get(s, len(order)))
    known = list(TARGETS)
    targets = sorted({c["target"] for c in cells}, key=known.index)
    return scenarios, targets, {(c["scenario"], c["target"]): c for c in cells}


def short(target: str) -> str:
    """A column heading: ``onceonly/redis-aof-always`` -> ``ours redis-aof-always``."""
    library, store = target.split("/", 1)
    return f"{'ours' if library == 'onceonly' else 'PT'} {store}"


def markdown(results: dict[str, Any]) -> str:
    """Two tables, a row per scenario and a column per target.

    The first: duplicate executions / lost outcomes / stale replays, over the
    keys of the row. The second: stuck seconds, and calls that failed closed
    with the longest time one took to fail.
    """
    scenarios, targets, by = _grid(results)
    head = "| scenario (keys) | " + " | ".join(short(t) for t in targets) + " |"
    rule = "|---|" + "---|" * len(targets)

    def keys_of(scenario: str) -> str:
        counts = {c["tally"]["keys"] for (s, _), c in by.items() if s == scenario and c["tally"]}
        return "/".join(str(n) for n in sorted(counts))

    first, second = [head, rule], [head, rule]
    for s in scenarios:
        row1, row2 = [], []
        for t in targets:
            c = by.get((s, t))
            tally = None if c is None else c["tally"]
            if tally is None:
                row1.append("-" if c is None else NOT_APPLICABLE)
                row2.append("-" if c is None else NOT_APPLICABLE)
                continue
            figures = (tally["duplicates"], tally["lost_outcomes"], tally["stale_replays"])
            row1.append("{} / {} / {}".format(*figures))
            stuck = f"{tally['stuck_s']:.1f} s"
            if tally["unresolved"]:
                stuck += f", {tally['unresolved']} unresolved"
            if tally["failed_closed"]:
                ttl = tally.get("time_to_error_ms")
                within = "" if ttl is None else f" ≤{ttl / 1000:.1f} s"
                stuck += f"; {tally['failed_closed']} closed{within}"
            row2.append(stuck)
        first.append(f"| {s} ({keys_of(s)}) | " + " | ".join(row1) + " |")
        second.append(f"| {s} | " + " | ".join(row2) + " |")
    return "\n".join(first) + "\n\n" + "\n".join(second)


def plot(results: dict[str, Any], path: Path) -> None:
    """Duplicates and stale replays per 10 000 keys per scenario, a bar per target (matplotlib).

    The scale is logarithmic above 1 (symlog) so that a handful per 10 000
    shows beside scenarios where every key is hit.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib") from exc
    scenarios, targets, cells = _grid(results)
    by = {key: c["tally"] for key, c in cells.items() if c["tally"] is not None}
    scenarios = [s for s in scenarios if any((s, t) in by for t in targets)]
    targets = [t for t in targets if any((s, t) in by for s in scenarios)]
    width = 0.84 / max(1, len(targets))
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.9 * len(scenarios) + 4), 9), sharex=True)
    colours = plt.get_cmap("tab20")
    for ax, figure, label in (
        (axes[0], "duplicates", "duplicate executions per 10 000 keys"),
        (axes[1], "stale_replays", "stale replays per 10 000 keys"),
    ):
        for i, t in enumerate(targets):
            xs, ys = [], []
            for j, s in enumerate(scenarios):
                tally = by.get((s, t))
                if tally is None or not tally["keys"]:
                    continue
                xs.append(j - 0.42 + width * (i + 0.5))
                ys.append(10_000 * tally[figure] / tally["keys"])
            powertools = t.startswith("powertools")
            ax.bar(
                xs, ys, width, label=short(t), color=colours(i % 20),
                hatch="//" if powertools else None, edgecolor="black", linewidth=0.3,
            )  # fmt: skip
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(0, 20_000)
        ax.set_ylabel(label)
        ax.grid(axis="y", linewidth=0.3)
    axes[1].set_xticks(range(len(scenarios)))
    axes[1].set_xticklabels(scenarios, rotation=35, ha="right")
    axes[0].set_title(
        f"What survives what: onceonly (ours) beside Powertools (PT, hatched); "
        f"{results['date']}, {results['engine']}"
    )
    axes[0].legend(fontsize="small", ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def targets_named(names: list[str] | None) -> list[str]:
    if not names:
        return list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    return names


def scenarios_named(names: list[str] | None) -> list[str]:
    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    return names


def save(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")
