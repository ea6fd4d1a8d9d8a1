"""Run scenarios x targets, sum the runs, and write them as JSON, a table and a plot."""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import redis_harness as harness
from faultlab.catalog import SCENARIOS, Params
from faultlab.lab import TARGETS, provision
from faultlab.ledger import Tally

NOT_APPLICABLE = "n/a"


@dataclass
class Cell:
    scenario: str
    target: str
    runs: int
    tally: Tally | None  # None: the scenario does not apply to the target
    reason: str = ""


def add(total: Tally, one: Tally) -> Tally:
    """Sum two runs' figures (counts add up; times keep the worst; lists of notes join)."""
    for f in fields(Tally):
        a, b = getattr(total, f.name), getattr(one, f.name)
        if f.name in ("stuck_s", "time_to_error_ms"):
            values = [v for v in (a, b) if v is not None]
            setattr(total, f.name, max(values) if values else None)
        elif f.name == "notes":
            for k, v in b.items():
                if isinstance(v, (int, float)) and isinstance(a.get(k, 0), (int, float)):
                    a[k] = a.get(k, 0) + v
                elif isinstance(v, list) and isinstance(a.get(k, []), list):
                    a[k] = a.get(k, []) + v  # one entry per run (e.g. a duration)
                else:
                    a[k] = v
        else:
            setattr(total, f.name, a + b)
    return total


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
            total = add(total, spec.run(lab, run_params))
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
    """One table cell: duplicates / lost / stale, then stuck and failed-closed figures."""
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


def markdown(results: dict[str, Any]) -> str:
    """The table: a row per scenario, a column per target."""
    cells = results["cells"]
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    by = {(c["scenario"], c["target"]): c for c in cells}
    lines = [
        "| scenario | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for s in scenarios:
        row = []
        for t in targets:
            c = by.get((s, t))
            if c is None:
                row.append("")
                continue
            text = cell_text(c["tally"])
            if c["tally"] is not None:
                text += f" ({c['tally']['keys']} keys)"
            row.append(text)
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Duplicates per 10 000 keys per scenario, one bar per target (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib") from exc
    cells = [c for c in results["cells"] if c["tally"] is not None]
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    by = {(c["scenario"], c["target"]): c["tally"] for c in cells}
    width = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(scenarios)), 5))
    for i, t in enumerate(targets):
        xs, ys = [], []
        for j, s in enumerate(scenarios):
            tally = by.get((s, t))
            if tally is None or not tally["keys"]:
                continue
            xs.append(j + i * width - 0.4 + width / 2)
            ys.append(10_000 * tally["duplicates"] / tally["keys"])
        hatch = "//" if t.startswith("powertools") else None
        ax.bar(xs, ys, width, label=t, hatch=hatch)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(scenarios, rotation=30, ha="right")
    ax.set_ylabel("duplicate executions per 10 000 keys")
    ax.set_title(f"What survives what ({results['date']}, {results['engine']})")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
