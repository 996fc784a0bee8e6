"""Which trial of a multi-objective sweep to promote: a stated rule, since a Pareto front has no single best.

`--pick fastest-within 10%`: among the finished trials, the one best on the speed objective whose quality
objective is within 10% of the reference's quality. Quality is the sweep's first objective and speed its
last (`metric: [sprite_kid, latency_ratio]`), unless `--quality` / `--speed` name others. The reference
is the teacher's quality when the sweep's parent run has it (`teacher_<quality>`, or
`baseline_teacher_<quality>`), else the untrained starting point's (`baseline_<quality>`); "within 10%"
is `value <= ref + 10% of |ref|` for a minimised quality, `value >= ref - 10% of |ref|` for a maximised
one. Ties on speed go to the better quality. Early-stopped, failed and unfinished trials never qualify
(their values come from a shorter budget); those that would have are listed, never promoted.

`--run-id` promotes a named finished trial instead; the rule line then says so. With neither, a
multi-objective sweep is promoted by `fastest-within 10%`, and the command says that this default chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from catsith_sweep.errors import UserInputError
from catsith_sweep.promote.select import Choice, named_trial
from catsith_sweep.tracking import Outcome, SweepRun, TrialRow, count_outcomes, queries
from catsith_sweep.tracking.queries import Reference, reference_from_metrics

RULES = ("fastest-within",)
DEFAULT_PICK = ("fastest-within", "10%")
TOP_SHOWN = 5


@dataclass(frozen=True)
class PickRule:
    """`fastest-within <tolerance>`: the fastest trial whose quality is within `tolerance` of the reference."""

    tolerance: float
    """A fraction: 0.10 for `10%`."""

    def describe(self) -> str:
        return f"fastest-within {self.tolerance * 100:g}%"


def parse_pick(words: list[str]) -> PickRule:
    """`["fastest-within", "10%"]` -> PickRule(0.10) (UserInputError naming the expected form)."""
    if len(words) != 2 or words[0] not in RULES:
        raise UserInputError(f"--pick {' '.join(words)}: expected `--pick fastest-within N%` (e.g. 10%), the "
                             "fastest trial whose quality is within N% of the teacher's (else the baseline's)")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%?", words[1])
    if match is None or not 0 <= float(match.group(1)) <= 1000:
        raise UserInputError(f"--pick fastest-within {words[1]}: the tolerance must be a percentage from 0 to "
                             "1000, such as 10%")
    return PickRule(float(match.group(1)) / 100)


@dataclass(frozen=True)
class Objectives:
    """The two objectives the rule reads, each with its mode."""

    quality: str
    quality_mode: str
    speed: str
    speed_mode: str


def objectives(sweep: SweepRun, quality: str | None = None, speed: str | None = None) -> Objectives:
    """Quality: `quality`, else the sweep's first objective; speed: `speed`, else its last."""
    metrics, modes = sweep.metrics, sweep.modes
    quality, speed = quality or metrics[0], speed or metrics[-1]
    for flag, name in (("--quality", quality), ("--speed", speed)):
        if name not in metrics:
            raise UserInputError(f"{flag} {name}: not an objective of sweep {sweep.sweep_id} (its objectives: "
                                 f"{', '.join(metrics)})")
    if quality == speed:
        raise UserInputError(f"the quality and speed objectives are both {quality}: name two different ones "
                             f"with --quality and --speed (objectives: {', '.join(metrics)})")
    return Objectives(quality, modes[metrics.index(quality)], speed, modes[metrics.index(speed)])


def threshold(reference: float, tolerance: float, mode: str) -> float:
    """The worst quality still within `tolerance` of `reference`."""
    pad = tolerance * abs(reference)
    return reference + pad if mode == "min" else reference - pad


def _within(value: float, limit: float, mode: str) -> bool:
    return value <= limit if mode == "min" else value >= limit


def _speed_key(row: TrialRow, obj: Objectives) -> tuple[float, float]:
    speed, quality = row.value(obj.speed) or 0.0, row.value(obj.quality) or 0.0
    return (speed if obj.speed_mode == "min" else -speed, quality if obj.quality_mode == "min" else -quality)


@dataclass(frozen=True)
class Pick:
    """What the rule saw and chose."""

    chosen: TrialRow | None
    eligible: list[TrialRow]
    """Finished trials within the tolerance, fastest first."""
    limit: float
    """The worst quality within the tolerance."""
    unfinished: list[TrialRow]
    """Trials that did not finish, within the tolerance and faster than the chosen one (never promoted)."""


def fastest_within(rows: list[TrialRow], obj: Objectives, reference: float, rule: PickRule) -> Pick:
    """Apply the rule to a sweep's rows (see the module docstring)."""
    limit = threshold(reference, rule.tolerance, obj.quality_mode)

    def qualifies(row: TrialRow) -> bool:
        quality = row.value(obj.quality)
        return quality is not None and row.value(obj.speed) is not None and _within(quality, limit, obj.quality_mode)

    eligible = sorted((r for r in rows if r.outcome is Outcome.FINISHED and qualifies(r)),
                      key=lambda r: _speed_key(r, obj))
    chosen = eligible[0] if eligible else None
    unfinished = [r for r in rows if r.outcome is not Outcome.FINISHED and qualifies(r)
                  and (chosen is None or _speed_key(r, obj) < _speed_key(chosen, obj))]
    return Pick(chosen, eligible, limit, sorted(unfinished, key=lambda r: _speed_key(r, obj)))


@dataclass(frozen=True)
class MultiChoice:
    """A multi-objective sweep's trial chosen for promotion, and the rule that chose it."""

    choice: Choice
    rule: str
    """The stated rule: `fastest-within 10% (...)`, or `--run-id ...`."""
    objectives: Objectives
    reference: Reference | None
    pick: Pick | None = None


def _quality_reference(uri: str, sweep: SweepRun, obj: Objectives) -> Reference | None:
    return reference_from_metrics(queries.run_metrics(uri, sweep.run_id), [obj.quality])


def choose_multi(uri: str, experiment_name: str, *, run_id: str | None = None, sweep_id: str | None = None,
                 pick: list[str] | None = None, quality: str | None = None, speed: str | None = None) -> MultiChoice:
    """The trial of a multi-objective sweep that `--run-id` names or the `--pick` rule chooses."""
    if run_id and pick:
        raise UserInputError("--run-id and --pick: give one (a run id already names the trial)")
    if run_id:
        choice = named_trial(uri, experiment_name, run_id)
        obj = objectives(choice.sweep, quality, speed)
        return MultiChoice(replace(choice, rule=f"--run-id {run_id}, as asked"), f"--run-id {run_id}, as asked",
                           obj, _quality_reference(uri, choice.sweep, obj))
    chosen_sweep = queries.choose_sweep(uri, experiment_name, sweep_id)
    sweep = chosen_sweep.sweep
    rule = parse_pick(pick or list(DEFAULT_PICK))
    obj = objectives(sweep, quality, speed)
    reference = _quality_reference(uri, sweep, obj)
    if reference is None:
        raise UserInputError(
            f"--pick {rule.describe()} needs a reference {obj.quality}: sweep {sweep.sweep_id}'s parent run has no "
            f"teacher_{obj.quality} nor baseline_{obj.quality}; promote a trial of its front by --run-id (see "
            f"`python -m catsith_sweep leaderboard {experiment_name}`)")
    rows = queries.trial_rows(uri, sweep)
    result = fastest_within(rows, obj, reference.values[obj.quality], rule)
    stated = (f"{rule.describe()}{'' if pick else ' (the default for multi-objective sweeps; --pick to change)'}: "
              f"the best {obj.speed} ({obj.speed_mode}) among finished trials whose {obj.quality} "
              f"({obj.quality_mode}) is within {rule.tolerance * 100:g}% of the {reference.label}'s "
              f"{reference.values[obj.quality]:.5g} ({'<=' if obj.quality_mode == 'min' else '>='} {result.limit:.5g})")
    if result.chosen is None:
        finished = sorted((r for r in rows if r.outcome is Outcome.FINISHED and r.value(obj.quality) is not None),
                          key=lambda r: r.value(obj.quality) or 0.0, reverse=obj.quality_mode == "max")
        closest = ", ".join(f"trial {r.trial} {obj.quality}={r.value(obj.quality):.5g}" for r in finished[:3])
        raise UserInputError(f"{stated}: no finished trial qualifies (best {obj.quality}: {closest or 'none'}); "
                             "loosen the tolerance or promote by --run-id")
    counts = count_outcomes(rows)
    choice = Choice(result.chosen, sweep, result.eligible[:TOP_SHOWN], result.unfinished, counts, 1,
                    chosen_sweep.describe(), rule=stated)
    return MultiChoice(choice, stated, obj, reference, result)


def is_multi_objective(uri: str, experiment_name: str, run_id: str | None, sweep_id: str | None) -> bool:
    """Whether the sweep `promote` would use (the run's, `--sweep-id`'s or the default) has several objectives."""
    if run_id:
        sweep, _ = queries.trial_by_run_id(uri, experiment_name, run_id)
    else:
        sweep = queries.choose_sweep(uri, experiment_name, sweep_id).sweep
    return len(sweep.metrics) > 1
