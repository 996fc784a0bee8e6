"""Multi-objective sweeps (`search.metric: [a, b, ...]`): the Pareto front instead of a single best.

What the parent run holds at the end of such a sweep (`log_front`):

* `pareto_front.md` / `pareto_front.json`: the non-dominated finished trials with every objective's value,
  the reference point, and the hypervolume history;
* `plots/pareto_front.png`: every finished trial's objectives, the front, the reference point;
* the metric history `hypervolume`: the front's hypervolume after each finished trial (step = finished
  trials so far, in the order they ended), all measured against one reference point, so it never
  decreases (sweep/pareto.py: the worst finished value per objective, pushed 10% of the range out).

The reference point drawn and tabled is the teacher's, when the parent run has its figures
(`teacher_<metric>`, or `baseline_teacher_<metric>` from the distill trainer's baseline evaluation; a
ratio to the teacher such as `latency_ratio` is 1 for the teacher), else the untrained starting point's
`baseline_<metric>` (tracking.queries.reference_from_metrics).

Early stopping: Optuna cannot prune multi-objective trials; Ray's scheduler judges trials by one
objective (`search.scheduler_metric`, default the first) and what it stops is told to Optuna as PRUNED
(sweep/search.py). Only finished trials, with a finite value for every objective, are on the front here:
a stopped trial's values come from a shorter budget and would pose as trade-offs they are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from catsith_sweep.io import atomic_write_json, atomic_write_text
from catsith_sweep.sweep.pareto import hypervolume_history, non_dominated, reference_point
from catsith_sweep.tracking import Outcome, SweepRun, TrialRow, artifacts, queries, sweep_runs
from catsith_sweep.tracking.queries import Reference


@dataclass(frozen=True)
class Front:
    """The Pareto front of a multi-objective sweep."""

    metrics: list[str]
    modes: list[str]
    finished: list[TrialRow]
    """Finished trials with a finite value for every objective, in the order they ended."""
    front: list[TrialRow]
    """The non-dominated ones among `finished`, ordered by the first objective, best first."""
    reference: Reference | None
    """The teacher's (or baseline's) objectives, drawn and tabled beside the trials."""
    hypervolume: list[float]
    """The front's hypervolume after each of `finished` (against `hv_reference`)."""
    hv_reference: tuple[float, ...] | None

    def values(self, row: TrialRow) -> tuple[float, ...]:
        return tuple(row.value(m) or 0.0 for m in self.metrics)


def is_multi_objective(sweep: SweepRun) -> bool:
    return len(sweep.metrics) > 1


def build_front(rows: list[TrialRow], metrics: list[str], modes: list[str], reference: Reference | None) -> Front:
    """The front of `rows` (every trial of a sweep, any outcome) over `metrics`/`modes`."""
    finished = [r for r in rows if r.outcome is Outcome.FINISHED and all(r.value(m) is not None for m in metrics)]
    finished.sort(key=lambda r: (r.end_time or r.start_time or 0, r.trial))
    points = [tuple(r.value(m) or 0.0 for m in metrics) for r in finished]
    front = [finished[i] for i in non_dominated(points, modes)]
    sign = -1.0 if modes[0] == "max" else 1.0
    front.sort(key=lambda r: sign * (r.value(metrics[0]) or 0.0))
    hv_ref = reference_point(points, modes) if points else None
    history = hypervolume_history(points, modes, hv_ref) if points else []
    return Front(list(metrics), list(modes), finished, front, reference, history, hv_ref)


def sweep_front(uri: str, sweep: SweepRun, rows: list[TrialRow] | None = None) -> Front:
    """The front of a tracked sweep (its trial rows unless given) with its parent run's reference."""
    rows = queries.trial_rows(uri, sweep) if rows is None else rows
    return build_front(rows, sweep.metrics, sweep.modes, queries.sweep_reference(uri, sweep))


def _fmt(value: float | None) -> str:
    return f"{value:.5g}" if value is not None else ""


def front_markdown(front: Front) -> str:
    objectives = " | ".join(f"{m} ({d})" for m, d in zip(front.metrics, front.modes, strict=True))
    lines = [f"Pareto front: {len(front.front)} non-dominated of {len(front.finished)} finished trials",
             "", f"| trial | name | {objectives} | params | run id |",
             "|---|---|" + "---|" * len(front.metrics) + "---|---|"]
    if front.reference is not None:
        ref = " | ".join(_fmt(front.reference.values.get(m)) for m in front.metrics)
        lines.append(f"| ({front.reference.label}) | reference point | {ref} | | |")
    for row in front.front:
        values = " | ".join(_fmt(row.value(m)) for m in front.metrics)
        lines.append(f"| {row.trial} | {row.name} | {values} | {row.params_text()} | {row.run_id} |")
    if front.hypervolume:
        lines += ["", f"hypervolume {front.hypervolume[-1]:.5g} against reference point "
                      f"{tuple(round(v, 6) for v in front.hv_reference or ())} (worst finished values, 10% further)"]
    return "\n".join(lines) + "\n"


def front_json(front: Front) -> dict[str, Any]:
    return {
        "metrics": front.metrics, "modes": front.modes,
        "reference": ({"label": front.reference.label, "values": front.reference.values}
                      if front.reference is not None else None),
        "hypervolume_reference": list(front.hv_reference) if front.hv_reference else None,
        "hypervolume": front.hypervolume,
        "finished_trials": len(front.finished),
        "front": [{"trial": r.trial, "name": r.name, "run_id": r.run_id,
                   "values": {m: r.value(m) for m in front.metrics}, "params": dict(r.params)} for r in front.front],
    }


def front_table(front: Front, *, title: str) -> Table:
    """The front as the terminal shows it (leaderboard, end of `run`): one row per non-dominated trial."""
    table = Table(title=title)
    table.add_column("trial", no_wrap=True)
    table.add_column("name", overflow="fold")
    for metric, mode in zip(front.metrics, front.modes, strict=True):
        table.add_column(f"{metric} ({mode})", no_wrap=True)
    for column in ("params", "run id"):
        table.add_column(column, overflow="fold")
    if front.reference is not None:
        table.add_row(f"({front.reference.label})", "reference point",
                      *[_fmt(front.reference.values.get(m)) for m in front.metrics], "", "")
    for row in front.front:
        table.add_row(row.trial, escape(row.name), *[_fmt(row.value(m)) for m in front.metrics],
                      escape(row.params_text("\n")), row.run_id)
    return table


def front_summary(front: Front) -> str:
    """One line under the table: how many trials, the hypervolume, what the reference is."""
    line = f"Pareto front: {len(front.front)} non-dominated of {len(front.finished)} finished trials"
    if front.hypervolume:
        line += f"; hypervolume {front.hypervolume[-1]:.4g}"
    if front.reference is not None:
        line += f"; reference point: the {front.reference.label}"
    return line


def log_front(uri: str, sweep: SweepRun, rows: list[TrialRow], sweep_dir: Path) -> Front:
    """Write the front's tables and plot into `sweep_dir` and log them, with the hypervolume history,
    on the sweep's parent run (see the module docstring)."""
    from catsith_sweep.sweep.plots import pareto_plot

    front = sweep_front(uri, sweep, rows)
    md, js = sweep_dir / artifacts.PARETO_FRONT_MD, sweep_dir / artifacts.PARETO_FRONT_JSON
    atomic_write_text(md, front_markdown(front))
    atomic_write_json(js, json.loads(json.dumps(front_json(front), default=float)))
    plots = []
    if len(front.metrics) >= 2 and front.finished:
        plot = sweep_dir / artifacts.PLOTS_DIR / artifacts.PARETO_FRONT_PNG
        pareto_plot(plot, metrics=front.metrics, modes=front.modes,
                    points=[front.values(r) for r in front.finished],
                    on_front=[r in front.front for r in front.finished],
                    labels=[r.label for r in front.finished],
                    reference=(front.reference.label, tuple(front.reference.values[m] for m in front.metrics))
                    if front.reference is not None else None)
        plots.append(plot)
    sweep_runs.log_front(uri, sweep.run_id, hypervolume=front.hypervolume, files=[md, js], plots=plots)
    return front


def print_front(print_table: Any, print_line: Any, uri: str, parent_run_id: str, rows: list[TrialRow]) -> Front:
    """Show the front of the sweep whose parent run is `parent_run_id` (`leaderboard`, the end of `run`)."""
    from catsith_sweep import tracking

    uri = tracking.normalize_uri(uri)
    sweep = queries.sweep_by_run_id(uri, parent_run_id)
    front = sweep_front(uri, sweep, rows)
    objectives = ", ".join(f"{m} ({d})" for m, d in zip(front.metrics, front.modes, strict=True))
    print_table(front_table(front, title=f"Pareto front of sweep {sweep.sweep_id}: {objectives}"))
    print_line(escape(front_summary(front)))
    return front
