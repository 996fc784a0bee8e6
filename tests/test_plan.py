"""The planner: scheduler simulation, concurrency and totals (pure), the price table, the guide's
formula, and one real `plan` run on the tiny test base."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from catsith_sweep.errors import UserInputError
from catsith_sweep.plan.calibrate import Calibration, EvalTimings, full_evaluation, step_spread, step_spread_note
from catsith_sweep.plan.costs import estimate_training_cost, gpus_rented, hardware_costs, load_prices
from catsith_sweep.plan.predict import TRACKING_SHARE, Measured, SweepShape, predict
from catsith_sweep.plan.schedule import (
    TrialTimes,
    asha_milestones,
    concurrent_slots,
    evaluation_steps,
    expected_sweep,
    simulate_sweep,
)

UNIT = TrialTimes(setup=0.0, segments=(1.0,) * 7, export=0.0)  # 7 evaluations of 1 s each


# --- scheduler rules ---------------------------------------------------------------------------------
def test_asha_milestones_follow_rays_formula() -> None:
    assert asha_milestones(grace_period=1, reduction_factor=2, max_t=8) == [1, 2, 4, 8]
    # lora_rank: 4 evaluations (max_t one more), grace 2, rf 3: one rung, at evaluation 2
    assert asha_milestones(grace_period=2, reduction_factor=3, max_t=5) == [2]


def test_asha_improving_trials_all_run_to_the_end() -> None:
    outcome = simulate_sweep([0.1 * i for i in range(8)], UNIT, slots=1, scheduler="asha")
    assert outcome.reports == [7] * 8  # 7 evaluations each, the last one the final report
    assert outcome.wall_seconds == pytest.approx(8 * 7)  # 8 trials of 7 one-second segments


def test_asha_worsening_trials_stop_at_the_first_rung() -> None:
    """grace 1, rf 2, 8 trials, 4 rungs: each trial worse than all before it is cut at rung 1, except
    the first, which has nothing to be compared with: 7 + 7 x 1 = 14 evaluations."""
    outcome = simulate_sweep([1.0 - 0.1 * i for i in range(8)], UNIT, slots=1, scheduler="asha")
    assert outcome.reports == [7] + [1] * 7
    assert outcome.busy_seconds == pytest.approx(14)


def test_asha_expected_stops_with_one_rung_are_half_of_the_later_trials() -> None:
    """With one comparison at rf 2, trial k goes on when it beats the median of the k-1 before it:
    probability 1/2 for every k > 1 (symmetry), so (8 - 1) / 2 = 3.5 trials stop. The second rung is
    the final report, where nothing is stopped: a trial that got there trained its whole budget."""
    times = TrialTimes(setup=0.0, segments=(1.0, 1.0), export=0.0)
    exp = expected_sweep(num_trials=8, times=times, eval_steps=[10, 20], slots=1, scheduler="asha", draws=4000)
    assert exp.stopped_early == pytest.approx(3.5, abs=0.1)
    assert exp.steps == pytest.approx(8 * 10 + 4.5 * 10, abs=1.0)
    single = TrialTimes(setup=0.0, segments=(1.0,), export=0.0)
    one = expected_sweep(num_trials=8, times=single, eval_steps=[10], slots=1, scheduler="asha", draws=400)
    assert one.stopped_early == 0 and one.steps == 80  # one evaluation: it is the final report


def test_asha_expected_steps_grace1_rf2_8_trials_4_rungs() -> None:
    steps = evaluation_steps(70, 10)
    exp = expected_sweep(num_trials=8, times=UNIT, eval_steps=steps, slots=1, scheduler="asha")
    # between "all stop at rung 1 but the first" (14 evaluations) and "none stop" (56)
    assert 14 < exp.evaluations < 40
    assert exp.steps == pytest.approx(exp.evaluations * 10)
    fifo = expected_sweep(num_trials=8, times=UNIT, eval_steps=steps, slots=1, scheduler="none")
    assert fifo.evaluations == 56 and fifo.stopped_early == 0 and fifo.steps == 8 * 70


def test_median_rule_needs_two_others() -> None:
    outcome = simulate_sweep([1.0, 0.9, 0.0], UNIT, slots=1, scheduler="median", grace_period=1)
    assert outcome.reports == [7, 7, 1]  # the third is below the median of the two before, at once


def test_two_slots_halve_the_wall_time_of_equal_trials() -> None:
    one = simulate_sweep([0.0] * 4, UNIT, slots=1, scheduler="none")
    two = simulate_sweep([0.0] * 4, UNIT, slots=2, scheduler="none")
    assert one.wall_seconds == pytest.approx(28) and two.wall_seconds == pytest.approx(14)
    assert one.busy_seconds == two.busy_seconds == pytest.approx(28)


def test_evaluation_steps_end_at_the_budget() -> None:
    assert evaluation_steps(320, 80) == [80, 160, 240, 320]
    assert evaluation_steps(300, 80) == [80, 160, 240, 300]


def test_concurrency_is_limited_by_resources() -> None:
    assert concurrent_slots(max_concurrent=4, cpu_per_trial=1, gpu_per_trial=0, machine_cpus=2, machine_gpus=0) == 2
    assert concurrent_slots(max_concurrent=4, cpu_per_trial=1, gpu_per_trial=0.5, machine_cpus=16,
                            machine_gpus=1) == 2
    assert concurrent_slots(max_concurrent=2, cpu_per_trial=1, gpu_per_trial=1, machine_cpus=16, machine_gpus=0) == 0


def test_predict_totals_add_up() -> None:
    m = Measured(total_steps=40, setup_s=2.0, step_s=0.5, eval_s=3.0, save_s=0.0, export_s=1.0, imports_s=10.0)
    shape = SweepShape(num_trials=4, every_n_steps=20, scheduler="none", grace_period=1, reduction_factor=2,
                       max_concurrent=2, cpu_per_trial=1, gpu_per_trial=0, threads_per_trial=1,
                       machine_cpus=2, machine_gpus=0)
    pred = predict(m, shape)
    assert pred.slots == 2 and pred.contention == 1.0
    # two rounds of two trials; each trial is setup + 2 x (20 steps + eval) with tracking share + export
    assert pred.trial_full_s == pytest.approx(2.0 + 0.2 + 2 * (10 + 3) * (1 + TRACKING_SHARE) + 1.0)
    assert pred.wall_s == pytest.approx(pred.fixed_s + 2 * pred.trial_full_s)
    # 4 threads wanted on 2 cores: each trial twice as slow
    slow = predict(m, SweepShape(**{**shape.__dict__, "threads_per_trial": 2}))
    assert slow.contention == 2.0 and slow.trial_full_s > 1.9 * pred.trial_full_s - 2


def test_speed_drift_widens_the_range_not_the_expectation() -> None:
    """The calibration's rounds of steps moved by `step_spread`: the 80% range widens by 1.28 of it on
    the trials' part, the expected wall time stays."""
    m = Measured(total_steps=40, setup_s=2.0, step_s=0.5, eval_s=3.0, save_s=0.0, export_s=1.0, imports_s=10.0)
    shape = SweepShape(num_trials=6, every_n_steps=20, scheduler="asha", grace_period=1, reduction_factor=2,
                       max_concurrent=2, cpu_per_trial=1, gpu_per_trial=0, threads_per_trial=1,
                       machine_cpus=2, machine_gpus=0)
    steady, drifting = predict(m, shape), predict(Measured(**{**m.__dict__, "step_spread": 0.1}), shape)
    assert drifting.wall_s == pytest.approx(steady.wall_s)
    (low, high), (dlow, dhigh) = steady.wall_range_s, drifting.wall_range_s
    assert dlow == pytest.approx(steady.fixed_s + (low - steady.fixed_s) * (1 - 0.128))
    assert dhigh == pytest.approx(steady.fixed_s + (high - steady.fixed_s) * (1 + 0.128))


def test_step_spread_is_the_rounds_relative_sd() -> None:
    cal = Calibration(device="cpu", total_steps=40, imports_s=0, setup_s=0, step_s=0.2, steps_timed=12,
                      round_step_s=[0.18, 0.22, 0.2, 0.2], eval_s=1, eval_method="", first_eval_s=1, save_s=0,
                      export_s=0, prepare_s=0)
    assert step_spread(cal) == pytest.approx(statistics.stdev([0.18, 0.22, 0.2, 0.2]) / 0.2)
    assert "moved by 8%" in step_spread_note(cal) and "0.180, 0.220" in step_spread_note(cal)
    assert step_spread(Calibration(**{**cal.__dict__, "round_step_s": [0.2]})) == 0.0


def test_evaluations_are_scaled_to_the_mean_speed() -> None:
    """An evaluation timed while the steps around it ran 1.5x slower than their mean counts 1/1.5 of its
    seconds; the extrapolation to the full sampler steps is then linear in those."""
    rounds = [0.2, 0.3, 0.3, 0.2]  # t1 sat between two slow rounds (0.3), t2 between 0.3 and 0.2
    step_s = statistics.fmean(rounds)  # 0.25
    t = EvalTimings(first=4.0, timed=(3.0, 5.0), sampler_steps=(1, 5), full_steps=15)
    seconds, method, warm_up = full_evaluation(t, rounds, step_s)
    t1, t2 = 3.0 * 0.25 / 0.3, 5.0 * 0.25 / 0.25
    per_step = (t2 - t1) / 4
    assert seconds == pytest.approx(t1 - per_step + 15 * per_step)
    assert warm_up == pytest.approx(1.0) and "at the mean speed 2.50 and 5.00" in method
    steady = EvalTimings(first=2.0, timed=(2.0,), sampler_steps=(), full_steps=15)
    assert full_evaluation(steady, [0.2, 0.4, 0.2, 0.2], 0.25)[0] == pytest.approx(2.0 * 0.25 / 0.3)


def test_baseline_counts_each_noise_seed_and_nothing_once_cached() -> None:
    m = Measured(total_steps=40, setup_s=2.0, step_s=0.5, eval_s=3.0, save_s=0.0, export_s=1.0, imports_s=10.0)
    shape = SweepShape(num_trials=4, every_n_steps=20, scheduler="none", grace_period=1, reduction_factor=2,
                       max_concurrent=2, cpu_per_trial=1, gpu_per_trial=0, threads_per_trial=1,
                       machine_cpus=2, machine_gpus=0, baseline_evaluations=3)
    pred = predict(m, shape)
    # setup + 3 evaluations (eval.noise_seeds 3), beside the first trials: its share of 2 slots
    assert pred.fixed_before_s["baseline evaluation"] == pytest.approx((2.0 + 3 * 3.0) / 2)
    assert any("3 evaluations (eval.noise_seeds 3)" in a for a in pred.assumptions), pred.assumptions
    cached = predict(m, SweepShape(**{**shape.__dict__, "baseline_cached": True}))
    assert cached.fixed_before_s["baseline evaluation"] == 0.0
    assert cached.wall_s == pytest.approx(pred.wall_s - (2.0 + 3 * 3.0) / 2)
    assert any("cached for this setup, so no evaluation is paid" in a for a in cached.assumptions)


def test_plan_sees_the_baseline_the_sweep_caches(tmp_path: Path) -> None:
    """`plan` says a baseline is cached exactly when the sweep would find it (same key, same folder)."""
    from PIL import Image

    from catsith_sweep.config import Experiment
    from catsith_sweep.data.fingerprint import fingerprint
    from catsith_sweep.plan.command import baseline_is_cached, sweep_shape
    from catsith_sweep.sweep.baseline import Baseline, cache_folder, cache_key, store
    from catsith_sweep.trainers.baseline_key import git_commit

    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGBA", (8, 8)).save(tmp_path / "data" / "images" / "a.png")
    exp = Experiment.model_validate({"name": "b", "trainer": "vae", "data": {"path": str(tmp_path / "data")},
                                     "model": {"cache_dir": str(tmp_path / "cache")}, "eval": {"noise_seeds": 2}})
    assert not baseline_is_cached(exp) and sweep_shape(exp).baseline_evaluations == 2
    key = cache_key(exp, dataset_fingerprint=fingerprint(tmp_path / "data"), code_version=git_commit())
    grid = tmp_path / "data" / "images" / "a.png"
    store(cache_folder(exp, key), Baseline(metrics={"recon_mse": 0.1}, images={"grid": grid}))
    assert baseline_is_cached(exp) and sweep_shape(exp, baseline_cached=True).baseline_cached
    (tmp_path / "data" / "images" / "b.png").write_bytes(b"another image")  # another dataset: another key
    assert not baseline_is_cached(exp)


# --- prices and the guide --------------------------------------------------------------------------
def test_shipped_price_table_has_the_guides_rates() -> None:
    prices = load_prices()
    rates = {o.provider: o.usd_per_hour for o in prices.gpus["a100-40gb"].offers}
    assert rates == {"Lambda Labs": 1.10, "RunPod": 1.44, "AWS p4d": 3.50, "Google Cloud": 3.67}
    speed = prices.device_speed("cpu (1 thread(s))")
    assert speed is not None and speed.guess


def test_hardware_cost_scales_by_speed_and_marks_guesses() -> None:
    rows = hardware_costs(load_prices(), device_name="cpu (1 thread(s))", fixed_seconds=0, scaled_wall_seconds=3600,
                          scaled_busy_seconds=7200, gpus=2, kinds=["a100-40gb"])
    lambda_row = next(r for r in rows if r.provider == "Lambda Labs")
    assert lambda_row.speed_ratio == pytest.approx(10) and lambda_row.guess
    assert lambda_row.usd == pytest.approx(0.1 * 2 * 1.10)
    with pytest.raises(UserInputError, match="unknown kind"):
        hardware_costs(load_prices(), device_name="cpu", fixed_seconds=0, scaled_wall_seconds=1,
                       scaled_busy_seconds=1, gpus=1, kinds=["tpu-v9"])
    assert gpus_rented(2, 0) == 2 and gpus_rented(4, 0.5) == 2


def test_bad_price_table_names_file_and_key(tmp_path: Path) -> None:
    data = yaml.safe_load(load_prices.__globals__["DEFAULT_PRICES"].read_text())
    data["gpus"]["a100-40gb"]["offers"][0]["usd_per_hour"] = -1
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserInputError, match=r"gpus\.a100-40gb\.offers\.0\.usd_per_hour"):
        load_prices(path)


def test_guide_formula_reproduces_its_examples() -> None:
    assert estimate_training_cost("lora", 1000, 10) == {
        "method": "lora", "dataset_size": 1000, "epochs": 10, "estimated_hours": 1.7, "estimated_cost": 1.83}
    # the guide prints this for 10000 images; it is the figure for 1000 (see estimate_training_cost)
    example2 = estimate_training_cost("distill", 1000, 50)
    assert (example2["estimated_hours"], example2["estimated_cost"]) == (33.3, 36.67)
    as_coded = estimate_training_cost("lora", 1000, 10, as_coded=True)
    assert (as_coded["estimated_hours"], as_coded["estimated_cost"]) == (0.4, 0.46)


def test_guide_formula_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from catsith_sweep.cli import main

    assert main(["plan", "--guide-formula", "--method", "lora", "--dataset-size", "1000", "--epochs", "10"]) == 0
    assert "'estimated_hours': 1.7, 'estimated_cost': 1.83" in capsys.readouterr().out
    assert main(["plan", "--guide-formula", "--method", "sdxl"]) == 2


def test_plan_refuses_to_build_a_missing_builtin_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from catsith_sweep.cli import main

    monkeypatch.setenv("CATSITH_CACHE", str(tmp_path / "empty-cache"))
    assert main(["plan", "experiments/lora_rank.yaml"]) == 2
    assert "not built yet" in capsys.readouterr().err
    assert not (tmp_path / "empty-cache" / "catsith-tiny").exists()


# --- a real calibration on the tiny base -----------------------------------------------------------
@pytest.mark.integration
def test_plan_on_the_tiny_base(tiny_base: Path, use_catsith_cache: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from catsith_sweep.config import load_experiment
    from catsith_sweep.plan.calibrate import CAP_SECONDS
    from catsith_sweep.plan.command import print_plan_block

    loaded = load_experiment(Path("experiments/lora_rank.yaml"), [
        f"model.base={tiny_base}", f"model.cache_dir={use_catsith_cache}", "data.synth_variants=1",
        "train.max_steps=200", "eval.every_n_steps=100", "eval.num_metric_samples=8", "eval.num_inference_steps=4",
        "eval.seeds=[0]", "train.batch_size=4", "search.num_samples=20", "train.device=cpu"])
    cal, pred = print_plan_block(loaded, gpus=["a100-40gb"])
    text = capsys.readouterr().out
    # The hard cap always holds; the 2% share may not on a loaded machine, and the plan then says so.
    assert cal.calibration_s <= CAP_SECONDS, cal.notes
    assert cal.calibration_s <= cal.cap_s or any("over its cap" in note for note in cal.notes), cal.notes
    assert cal.step_s > 0 and cal.eval_s > 0 and cal.total_steps == 200
    assert pred.expectation.trials == 20 and 0 <= pred.expectation.stopped_early <= 19
    assert pred.wall_s > pred.fixed_s
    for needle in ("s/step", "s/eval", "wall time", "Lambda Labs", "(guess)", "assumptions"):
        assert needle in text


@pytest.mark.integration
def test_plan_times_the_searched_values_that_change_a_steps_cost(use_catsith_cache: Path) -> None:
    """vae_beta searches the perceptual weight (0, 10, 50; the sprite net runs on every batch unless it is
    0): each is timed on its own trainer, the config's own value counts exactly 1, and s/step is the
    config's times the mean ratio."""
    from catsith_sweep.config import load_experiment
    from catsith_sweep.plan.command import plan_experiment

    loaded = load_experiment(Path("experiments/vae_beta.yaml"), [
        f"model.cache_dir={use_catsith_cache}", "data.synth_variants=1", "train.max_steps=40",
        "eval.every_n_steps=20", "eval.num_metric_samples=8", "search.num_samples=4", "train.device=cpu",
        "vae.hidden_dims=[8, 16, 32, 64]"])
    cal, _ = plan_experiment(loaded, log=lambda m: None)
    assert [params for params, _ in cal.variants] == [{"vae.perceptual_weight": w} for w in (0.0, 10.0, 50.0)]
    ratios = [ratio for _, ratio in cal.variants]
    assert ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert cal.step_s == pytest.approx(cal.config_step_s * statistics.fmean(ratios))
    assert any("vae.perceptual_weight 10.0: x" in note for note in cal.notes), cal.notes


def test_cost_variants_are_the_searched_cost_keys_only() -> None:
    from catsith_sweep.config import load_experiment
    from catsith_sweep.trainers.surface import cost_variants

    vae = load_experiment(Path("experiments/vae_beta.yaml"))
    assert cost_variants(vae.experiment, vae.space) == [{"vae.perceptual_weight": w} for w in (0.0, 10.0, 50.0)]
    distill = load_experiment(Path("experiments/distill_weights.yaml"))
    levels = [{"distill.level": v} for v in ("small", "tiny", "micro")]
    assert cost_variants(distill.experiment, distill.space) == levels
    lora = load_experiment(Path("experiments/lora_rank.yaml"))
    assert cost_variants(lora.experiment, lora.space) == []


@pytest.mark.integration
def test_plan_saves_the_prediction_its_sweep_reads(tiny_base: Path, use_catsith_cache: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`plan` alone keeps its prediction where `run` of the same config finds it (driver: `load_plan` of
    the config fingerprint), so the sweep's parent run compares `predicted_wall_seconds` with it."""
    from catsith_sweep.cli import main
    from catsith_sweep.config import load_experiment
    from catsith_sweep.config.fingerprint import config_fingerprint
    from catsith_sweep.plan.saved import load_plan
    from catsith_sweep.sweep.forecast import SweepForecast, compare

    overrides = [f"model.base={tiny_base}", f"model.cache_dir={use_catsith_cache}", "data.synth_variants=1",
                 "train.max_steps=40", "eval.every_n_steps=20", "eval.num_metric_samples=8",
                 "eval.num_inference_steps=4", "eval.seeds=[0]", "train.batch_size=4", "search.num_samples=4",
                 "train.device=cpu"]
    assert main(["plan", "experiments/lora_rank.yaml", *overrides, "--runs-dir", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    loaded = load_experiment(Path("experiments/lora_rank.yaml"), overrides)
    fingerprint = config_fingerprint(loaded)
    saved = load_plan(tmp_path / "runs" / loaded.experiment.name, fingerprint)
    assert saved is not None and saved.source == "plan" and f"plan-{fingerprint}.json" in text
    assert f"({saved.wall_seconds:.0f} s)" in text  # the wall time the prediction table printed
    forecast = SweepForecast(started=0.0, planned=4, slots=2, units_per_trial=1.0, total_steps=40, every_n_steps=20,
                             scheduler="asha", grace_period=1, reduction_factor=2, plan=saved)
    figures = compare(forecast.predicted, {"wall_seconds": 100.0, "steps": 100.0, "trials": 4.0})
    assert figures["predicted_wall_seconds"] == saved.wall_seconds
    assert saved.wall_low is not None and saved.wall_high is not None
    assert saved.wall_low - 1e-6 <= saved.wall_seconds <= saved.wall_high + 1e-6
    assert figures["predicted_wall_seconds_p90"] == saved.wall_high


def test_expected_sweep_gives_the_spread_of_a_small_asha_sweep() -> None:
    """lora_rank's shape (8 trials, one rung): the number stopped is a draw, so the wall time spreads;
    without a scheduler nothing is drawn and the range is one point."""
    steps = evaluation_steps(320, 80)
    times = TrialTimes(setup=0.0, segments=(1.0,) * 4, export=0.0)
    asha = expected_sweep(num_trials=8, times=times, eval_steps=steps, slots=2, scheduler="asha",
                          grace_period=2, reduction_factor=3)
    low, high = asha.wall_range
    assert low < asha.wall_seconds < high
    assert asha.steps_range[0] <= 1600 < asha.steps_range[1]  # the 6-of-8 stop lora_rank saw is inside
    fifo = expected_sweep(num_trials=8, times=times, eval_steps=steps, slots=2, scheduler="none")
    assert fifo.wall_range == (fifo.wall_seconds, fifo.wall_seconds) == (16.0, 16.0)
