"""Pictures for the parent run: Optuna's own optimization-history and parameter-importance plots
(from a study rebuilt out of the tracked trials, so resumed sweeps plot whole), and the top trials'
samples side by side with the ground truth."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catsith_sweep.config import LoadedExperiment
from catsith_sweep.tracking import Outcome, TrialRow, artifacts, queries


def rebuild_study(loaded: LoadedExperiment, rows: list[TrialRow], uri: str | None = None) -> Any:
    import optuna
    from optuna.trial import TrialState, create_trial

    from catsith_sweep.sweep.space import encode_choice, optuna_space

    exp = loaded.experiment
    metric, mode = exp.search.metrics()[0], exp.search.modes()[0]
    dists, _ = optuna_space(loaded.space)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize",
                                study_name=exp.name)
    history = queries.metric_history(uri, metric) if uri else (lambda run_id: {})
    states = {Outcome.FINISHED: TrialState.COMPLETE, Outcome.STOPPED_EARLY: TrialState.PRUNED}
    for row in sorted(rows, key=lambda r: r.start_time or 0):
        try:
            params = {k: encode_choice(row.param(k)) for k in dists}
        except KeyError:
            continue
        value = row.value(metric)
        state = states.get(row.outcome, TrialState.FAIL)
        if state is TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study.add_trial(create_trial(params=params, distributions=dists,
                                     value=value if state is TrialState.COMPLETE else None,
                                     state=state, intermediate_values=history(row.run_id)))
    return study


def optuna_plots(loaded: LoadedExperiment, rows: list[TrialRow], out_dir: Path,
                 uri: str | None = None) -> list[Path]:
    """optimization_history.png, intermediate_values.png (every trial's metric by step: shows what the
    scheduler stopped) and param_importances.png (needs 2+ finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    if not loaded.space:
        return []
    study = rebuild_study(loaded, rows, uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots: list[tuple[str, Any]] = [("optimization_history.png", ovm.plot_optimization_history),
                                     ("intermediate_values.png", ovm.plot_intermediate_values)]
    if len(complete) >= 2 and len(loaded.space) >= 1:
        plots.append(("param_importances.png", ovm.plot_param_importances))
    for name, plot in plots:
        try:
            with warnings.catch_warnings():  # these plots are "experimental" in Optuna; the user can't act on it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes: Any = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importances when every finished trial got the same params
        figure: Any = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=110)
        plt.close(figure)
        made.append(out_dir / name)
    return made


def tradeoff_plots(loaded: LoadedExperiment, rows: list[TrialRow], out_dir: Path) -> list[Path]:
    """`search.plots`: each trial's final metrics against a searched key (finished trials in colour,
    early-stopped ones hollow: their values are from a shorter budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for spec in loaded.experiment.search.plots:
        figure, axes = plt.subplots(1, len(spec.y), figsize=(5 * len(spec.y), 4), squeeze=False)
        for axis, metric in zip(axes[0], spec.y, strict=True):
            for outcome, style in ((Outcome.FINISHED, {"c": "tab:blue"}),
                                   (Outcome.STOPPED_EARLY, {"facecolors": "none", "edgecolors": "tab:gray"})):
                points = [(float(r.param(spec.x)), r.metrics[metric]) for r in rows
                          if r.outcome is outcome and spec.x in r.params and metric in r.metrics]
                if points:
                    axis.scatter(*zip(*points, strict=True), label=outcome.value, **style)
            axis.set_xlabel(spec.x)
            axis.set_ylabel(metric)
            if spec.log_x:
                from matplotlib.ticker import NullFormatter

                axis.set_xscale("log")
                axis.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(f"{loaded.experiment.name}: trade-off over {spec.x}")
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"tradeoff_{spec.x.replace('.', '_')}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        made.append(path)
    return made


def comparison_grid(uri: str, ranked: list[TrialRow], out_dir: Path) -> list[Path]:
    """Rows: the grid prompts; columns: ground truth, then the top trials (first seed each)."""
    if not ranked:
        return []
    from safetensors import safe_open
    from safetensors.torch import load_file

    from catsith_sweep.metrics.images import make_grid_png, save_png_atomic

    columns, prompts, reference = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for row in ranked:
            # One folder per run: load_file maps the file, so a shared path would alias every column.
            local = artifacts.download(uri, row.run_id, artifacts.SAMPLES_TENSORS, Path(tmp) / row.run_id)
            if local is None:  # a trial without samples (e.g. a non-image trainer)
                continue
            tensors = load_file(local)
            with safe_open(local, "pt") as handle:
                meta = handle.metadata() or {}
            prompts = json.loads(meta.get("prompts", "[]"))
            seeds = int(meta.get("seeds", "1"))
            columns.append(tensors["images"][::seeds])
            reference = tensors.get("reference", reference)
    if not columns or not prompts:
        return []
    import torch

    stacked = torch.stack(columns, dim=1).flatten(0, 1)  # prompt-major, one column per trial
    labels = [f"{i + 1}. {r.label}" for i, r in enumerate(ranked[:len(columns)])]
    grid = make_grid_png(stacked, rows=prompts, columns=len(columns), reference=reference, column_labels=labels)
    path = out_dir / "top_trials_comparison.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_png_atomic(grid, path)
    return [path]


def pareto_plot(path: Path, *, metrics: list[str], modes: list[str], points: Sequence[Sequence[float]],
                on_front: list[bool], labels: list[str], reference: tuple[str, tuple[float, ...]] | None) -> Path:
    """`plots/pareto_front.png`: the finished trials' objectives (grey), the non-dominated ones labelled
    and joined (in colour), the reference point (a star). One panel per pair of objectives."""
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catsith_sweep.io import atomic_path

    pairs = list(itertools.combinations(range(len(metrics)), 2))
    figure, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 5), squeeze=False)
    for axis, (i, j) in zip(axes[0], pairs, strict=True):
        rest = [(p[i], p[j]) for p, f in zip(points, on_front, strict=True) if not f]
        if rest:
            axis.scatter(*zip(*rest, strict=True), c="tab:gray", alpha=0.6, label="finished, dominated")
        front = sorted(((p[i], p[j], name) for p, f, name in zip(points, on_front, labels, strict=True) if f))
        if front:
            xs, ys = [p[0] for p in front], [p[1] for p in front]
            axis.scatter(xs, ys, c="tab:blue", zorder=3, label="Pareto front")
            if len(metrics) == 2:  # the front's staircase (in 3+ objectives a projection has no staircase)
                axis.step(xs, ys, where="post" if modes[0] == "min" else "pre", c="tab:blue", alpha=0.4)
            for x, y, name in front:
                axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if reference is not None:
            label, values = reference
            axis.scatter([values[i]], [values[j]], marker="*", s=220, c="tab:red", zorder=4, label=label)
        axis.set_xlabel(f"{metrics[i]} ({'lower' if modes[i] == 'min' else 'higher'} is better)")
        axis.set_ylabel(f"{metrics[j]} ({'lower' if modes[j] == 'min' else 'higher'} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Pareto front: {sum(on_front)} non-dominated of {len(points)} finished trials")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path
