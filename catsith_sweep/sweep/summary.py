"""The sweep's parent MLflow run: its inputs at the start; at the end the leaderboard, the best trial,
Optuna's plots, and a visual comparison of the top trials against the ground truth and the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from catsith_sweep.config import Experiment, LoadedExperiment, dump_resolved
from catsith_sweep.io import atomic_write_text
from catsith_sweep.tracking import (
    Outcome,
    SweepRun,
    SweepStatus,
    TrialRow,
    count_outcomes,
    queries,
    rank,
    redact_uri,
    sweep_runs,
)
from catsith_sweep.tracking.artifacts import LEADERBOARD_MD, RESOLVED_CONFIG

TOP_K = 3


def public_experiment(experiment: Experiment) -> Experiment:
    """`experiment` with the credentials of its tracking URI redacted: what is logged, saved and sent to
    trials (they log with the real URI, which travels apart in `SweepContext.tracking_uri`)."""
    if experiment.tracking.uri is None or redact_uri(experiment.tracking.uri) == experiment.tracking.uri:
        return experiment
    tracking = experiment.tracking.model_copy(update={"uri": redact_uri(experiment.tracking.uri)})
    return experiment.model_copy(update={"tracking": tracking})


def _redacted_text(path: Path, uris: list[str]) -> str:
    text = path.read_text(encoding="utf-8")
    for uri in uris:
        text = text.replace(uri, redact_uri(uri))
    return text


def start_parent_run(uri: str, experiment_id: str, loaded: LoadedExperiment, sweep_id: str) -> str:
    """Open the sweep's parent run with its inputs (credentials in tracking URIs redacted)."""
    exp = loaded.experiment
    secrets = [u for u in {uri, exp.tracking.uri} if u]
    inputs = {loaded.path.name: _redacted_text(loaded.path, secrets),
              RESOLVED_CONFIG: dump_resolved(public_experiment(exp))}
    if loaded.space_file is not None:
        inputs[loaded.space_file.name] = _redacted_text(loaded.space_file, secrets)
    search = exp.search
    params = {"sampler": search.sampler, "scheduler": search.scheduler, "num_samples": search.num_samples,
              "max_concurrent_trials": search.max_concurrent_trials, "space": json.dumps(
                  {k: v.model_dump(exclude_none=True) for k, v in loaded.space.items()})}
    return sweep_runs.start_sweep_run(uri, experiment_id, sweep_id=sweep_id, trainer=exp.trainer,
                                      metrics=search.metrics(), modes=search.modes(), inputs=inputs, params=params)


def ray_only_failures(results: Any, known: set[str]) -> list[TrialRow]:
    """Trials that errored before they could open an MLflow run (they still count as failed)."""
    rows = []
    for result in results:
        folder = Path(str(result.path)).name  # `trial_<id>`, see callbacks.trial_dirname
        trial_id = (result.metrics or {}).get("trial_id") or folder.removeprefix("trial_")
        if result.error is not None and trial_id not in known:
            rows.append(TrialRow(trial=trial_id, run_id="", outcome=Outcome.FAILED,
                                 params={k: json.dumps(v) for k, v in (result.config or {}).items()},
                                 error=str(result.error).strip().splitlines()[-1][:300]))
    return rows


def ordered(rows: list[TrialRow], metric: str, mode: str) -> list[tuple[int | None, TrialRow]]:
    """(rank, row) for the ranked trials best first, then (None, row) for every other trial: those with a
    value (stopped early, still running) best first, then those without, in their given order."""
    ranked = rank(rows, metric, mode)
    sign = -1.0 if mode == "max" else 1.0
    others = sorted((r for r in rows if r not in ranked),  # stable: valueless rows keep their order
                    key=lambda r: (r.value(metric) is None, sign * (r.value(metric) or 0.0)))
    return [*enumerate(ranked, start=1), *[(None, r) for r in others]]


def leaderboard_markdown(rows: list[TrialRow], metric: str, mode: str, *, noise_floor: float | None = None) -> str:
    """The leaderboard as a markdown table; its `tie` column marks the best trial and those within the
    noise floor of it (`sweep.baseline.tie_marks`)."""
    from catsith_sweep.sweep.baseline import tie_marks, ties_note

    marks = tie_marks(rows, metric, mode, noise_floor)
    lines = [f"| rank | tie | trial | name | outcome | {metric} ({mode}) | params |", "|---|---|---|---|---|---|---|"]
    for position, row in ordered(rows, metric, mode):
        value = row.value(metric)
        shown = f"{value:.5g}" if value is not None else ""
        lines.append(f"| {position or '-'} | {marks.get(row.trial, '')} | {row.trial} | {row.name} | {row.outcome} "
                     f"| {shown} | {row.params_text()} |")
    return "\n".join(lines) + "\n\n" + ties_note(metric, noise_floor) + "\n"


def finish_parent_run(uri: str, sweep: SweepRun, loaded: LoadedExperiment, results: Any, sweep_dir: Path, *,
                      noise_floor: float | None = None,
                      plots: bool = True) -> tuple[list[TrialRow], dict[Outcome, int]]:
    """Log the sweep's leaderboard (ties within `noise_floor` of the best marked), best trial, counts and
    (with `plots`; else `log_plots` adds them later) plots; end the parent run as finished. Returns every
    trial's row and the count per outcome."""
    from catsith_sweep.sweep.baseline import tie_marks

    rows = queries.trial_rows(uri, sweep)
    rows += ray_only_failures(results, {r.trial for r in rows})
    ranked = rank(rows, sweep.metric, sweep.mode)
    counts = count_outcomes(rows)
    atomic_write_text(sweep_dir / LEADERBOARD_MD,
                      leaderboard_markdown(rows, sweep.metric, sweep.mode, noise_floor=noise_floor))
    pictures = draw_plots(uri, sweep, loaded, rows, sweep_dir) if plots else []
    multi = len(sweep.metrics) > 1  # a front, not a single best (sweep/multi.py)
    sweep_runs.log_summary(uri, sweep.run_id, rows=rows, metric=sweep.metric, leaderboard=sweep_dir / LEADERBOARD_MD,
                           best=ranked[0] if ranked and not multi else None, counts=counts, plots=pictures,
                           ties=tie_marks(rows, sweep.metric, sweep.mode, noise_floor))
    if multi:
        from catsith_sweep.sweep.multi import log_front

        log_front(uri, sweep, rows, sweep_dir)
    sweep_runs.end_sweep_run(uri, sweep, SweepStatus.FINISHED)
    return rows, counts


def draw_plots(uri: str, sweep: SweepRun, loaded: LoadedExperiment, rows: list[TrialRow],
               sweep_dir: Path) -> list[Path]:
    """Optuna's plots, the `search.plots` trade-offs and the top trials' comparison grid, in `sweep_dir/plots`."""
    from catsith_sweep.sweep.plots import comparison_grid, optuna_plots, tradeoff_plots

    plot_dir = sweep_dir / "plots"
    ranked = rank(rows, sweep.metric, sweep.mode)
    return (optuna_plots(loaded, rows, plot_dir, uri) + tradeoff_plots(loaded, rows, plot_dir)
            + comparison_grid(uri, ranked[:TOP_K], plot_dir))


def log_plots(uri: str, sweep: SweepRun, loaded: LoadedExperiment, rows: list[TrialRow], sweep_dir: Path) -> list[Path]:
    """`draw_plots`, logged on the parent run (which may have ended: they come after the summary)."""
    pictures = draw_plots(uri, sweep, loaded, rows, sweep_dir)
    sweep_runs.log_plots(uri, sweep.run_id, pictures)
    return pictures
