"""Progress a person can read: the ETA arithmetic (phases, warm-up, priors, pauses) and the plain
one-line-a-minute form when stdout is not a terminal."""

from __future__ import annotations

import io

import pytest

from catsith_sweep.config.schema import Experiment
from catsith_sweep.progress import Phase, PhasedEta, ProgressLine, eta_from_rate, fmt_seconds, track


def test_fmt_seconds() -> None:
    assert fmt_seconds(None) == "?" and fmt_seconds(float("inf")) == "?"
    assert fmt_seconds(42) == "42 s" and fmt_seconds(300) == "5.0 min" and fmt_seconds(7200) == "2.0 h"


def test_eta_from_rate() -> None:
    assert eta_from_rate(0, 10, 5.0) is None
    assert eta_from_rate(4, 10, 8.0) == pytest.approx(12.0)  # 2 s/unit, 6 left


def test_warmup_unit_is_not_measured_and_next_phase_uses_the_prior() -> None:
    eta = PhasedEta([Phase("vae", 10), Phase("unet", 20, prior_ratio=1.5)])
    assert eta.remaining_s() is None  # nothing measured yet
    eta.advance(1, 9.0)  # the warm-up step: slow, not counted
    assert eta.remaining_s() is None
    eta.advance(1, 1.0)
    eta.advance(2, 2.0)  # 1 s/step measured over 3 steps
    assert eta.phases[0].rate == pytest.approx(1.0)
    # 6 VAE steps at 1 s + 20 UNet steps at the prior 1.5 s
    assert eta.remaining_s() == pytest.approx(6 + 30)
    assert "vae 1.000" in eta.describe()


def test_crossing_into_the_next_phase_measures_it() -> None:
    eta = PhasedEta([Phase("vae", 4), Phase("unet", 10, prior_ratio=3.0)])
    for _ in range(4):
        eta.advance(1, 1.0)
    eta.advance(1, 5.0)  # UNet warm-up
    eta.advance(1, 2.0)
    assert eta.phases[1].rate == pytest.approx(2.0) and eta.done == 6
    assert eta.remaining_s() == pytest.approx(8 * 2.0)
    eta.advance(3, 6.0)  # several units in one report: split evenly
    assert eta.phases[1].done == 5 and eta.phases[1].rate == pytest.approx(2.0)


def test_pauses_prior_then_measured() -> None:
    eta = PhasedEta([Phase("unet", 10, warmup=0)], pauses_left=2, pause_prior_units=5)
    eta.advance(2, 4.0)  # 2 s/step
    assert eta.remaining_s() == pytest.approx(8 * 2 + 2 * 5 * 2)
    eta.pause(3.0)
    assert eta.remaining_s() == pytest.approx(8 * 2 + 1 * 3.0)


def test_base_build_eta_has_both_phases_and_unet_evaluations() -> None:
    from catsith_sweep.config.schema import FullSection
    from catsith_sweep.trainers.base_build import BUILTIN_BASE_CONFIG, build_eta

    recipe = Experiment.model_validate(BUILTIN_BASE_CONFIG)
    total, every = recipe.train.max_steps or 0, recipe.eval.every_n_steps
    vae_steps = recipe.trainer_config(FullSection).vae_steps
    assert (total, vae_steps, every) == (3200, 1200, 800)  # the recipe this test was written for
    eta = build_eta(recipe, total)
    assert [(p.name, p.units) for p in eta.phases] == [("vae", 1200), ("unet", 2000)]
    assert eta.pauses_left == 3  # UNet evaluations at steps 1600, 2400, 3200 (the one at 800 is in the VAE phase)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_prints_a_line_a_minute_with_the_figures() -> None:
    stream, clock = io.StringIO(), _Clock()
    line = ProgressLine("base build", 100, stream=stream, clock=clock, terminal=False, eta_s=310.0, note="timed")
    for step in range(1, 101):
        clock.now = step * 3.0  # 3 s a step: 300 s in all
        line.update(step, eta_s=(100 - step) * 3.0, note="unet 3.000 s/unit")
    line.close()
    lines = stream.getvalue().splitlines()
    # the start, one a minute (at 60, 120, 180, 240 and 300 s), and the end
    assert len(lines) == 7, lines
    assert lines[0] == "base build: steps 0/100 (0%), elapsed 0 s, ETA 5.2 min (timed)"  # the start's estimate
    assert lines[1] == "base build: steps 20/100 (20%), elapsed 60 s, ETA 4.0 min (unet 3.000 s/unit)"
    assert lines[-1].startswith("base build: steps 100/100 (100%), elapsed 5.0 min, ETA 0 s")


def test_terminal_gets_a_rich_bar() -> None:
    stream = io.StringIO()
    with ProgressLine("sweep", 8, unit="trials", stream=stream, terminal=True) as line:
        line.update(3, eta_s=90.0)
    text = stream.getvalue()
    assert "sweep" in text and "3/8" in text and "ETA 1.5 min" in text


def test_track_degrades_to_lines() -> None:
    stream = io.StringIO()
    assert list(track(range(5), title="synth", total=5, stream=stream)) == [0, 1, 2, 3, 4]
    assert stream.getvalue().splitlines()[-1].startswith("synth: items 5/5 (100%)")
