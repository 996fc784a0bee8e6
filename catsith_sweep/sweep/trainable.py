"""The Ray side of a trial: turn sampled params into an experiment, run the plain trial loop, forward
its reports to Ray Tune (evaluations and checkpoints) and to MLflow (everything)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Flags in the results a trial sends to Ray; the driver and the searcher read them.
FINISHED = "trial_finished"
FAILED = "trial_failed"
STEP = "step"


@dataclass
class SweepContext:
    """What every trial of one sweep shares (sent once to the workers)."""

    experiment: dict[str, Any]
    """The resolved experiment, its tracking URI's credentials redacted (`summary.public_experiment`)."""
    fixed_params: dict[str, Any]
    """The search space's `fixed` keys: applied to every trial and logged with the sampled params."""
    tracking_uri: str
    """The real tracking URI (credentials included: trials log with it)."""
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    git_commit: str
    dataset_fingerprint: str
    env: dict[str, str] = field(default_factory=dict)


def trial_main(params: dict[str, Any], context: SweepContext) -> None:
    """Body of every Ray trial (a function trainable)."""
    from ray import tune

    from catsith_sweep.config import Experiment, apply_params
    from catsith_sweep.sweep.space import decode_params
    from catsith_sweep.tracking import artifacts
    from catsith_sweep.tracking.sweep_runs import reopen_trial_run
    from catsith_sweep.tracking.trial_logger import TrialLogger, trial_tags
    from catsith_sweep.trainers import make_trainer
    from catsith_sweep.trainers.base import Report, run_trial

    os.environ.update(context.env)
    # Ray logs every persisted checkpoint at INFO into the shared terminal; the progress table says enough.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sampled = {**context.fixed_params, **decode_params(params)}
    experiment = apply_params(Experiment.model_validate(context.experiment), sampled)
    ray_context = tune.get_context()
    trial_id = ray_context.get_trial_id()
    logger = TrialLogger(
        uri=context.tracking_uri, experiment_id=context.experiment_id, parent_run_id=context.parent_run_id,
        trial_id=trial_id, trial_name=ray_context.get_trial_name(),
        tags=trial_tags(context.sweep_id, context.git_commit, context.dataset_fingerprint),
        params=sampled, config=experiment.model_dump(mode="json"), node_id=_node_id(),
    )
    if logger.resumed:  # continued from its checkpoint by a resumed sweep, which ended its run as KILLED
        reopen_trial_run(context.tracking_uri, logger.run_id)
    started = time.perf_counter()

    def report(r: Report) -> None:
        if r.params:  # facts of the run (its held-out split, `split.*`), sent once
            logger.log_params(r.params)
        logger.log_metrics(r.metrics, r.step)
        for key, path in r.images.items():
            logger.log_image(path, key, r.step)
        if r.final:
            samples = {p.name: p for img in r.images.values() for p in img.parent.glob(f"{img.stem}.*")}
            logger.log_artifacts(samples, artifacts.SAMPLES_DIR)
            logger.log_artifacts(r.exports, artifacts.EXPORT_DIR)
            logger.log_artifacts({"config": workdir / "export" / artifacts.CONFIG_FILE}, artifacts.EXPORT_DIR)
            elapsed = time.perf_counter() - started
            logger.log_metrics({"tracking_seconds": logger.seconds, "trial_seconds": elapsed}, r.step)
            logger.flush()
        if r.final or r.checkpoint is not None:  # evaluations; Ray and its scheduler see only these
            from ray.tune import Checkpoint

            checkpoint = Checkpoint.from_directory(str(r.checkpoint)) if r.checkpoint is not None else None
            tune.report({**r.metrics, STEP: r.step, FINISHED: r.final, FAILED: False}, checkpoint=checkpoint)
        # plain training-loss reports go to MLflow only: Ray and its scheduler see evaluations

    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="catsith_trial_") as tmp:
        workdir = Path(tmp)
        try:
            trainer = make_trainer(experiment, workdir)
            if checkpoint is not None:
                with checkpoint.as_directory() as ckpt_dir:
                    resume = workdir / "resume"
                    import shutil

                    shutil.copytree(ckpt_dir, resume)
                run_trial(trainer, experiment, workdir, report, resume_from=resume)
            else:
                run_trial(trainer, experiment, workdir, report)
        except Exception as exc:  # the trial fails alone; the sweep goes on (see README: failures)
            logger.record_error(exc)
            logger.log_text(traceback.format_exc(), artifacts.TRACEBACK_FILE)
            tune.report({STEP: -1, FINISHED: False, FAILED: True, "error": f"{type(exc).__name__}: {exc}"})


def _node_id() -> str | None:
    """The Ray node this trial process runs on: a label on its run (`catsith.node_id`), never needed to train."""
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # outside a Ray worker (a notebook driving trial_main by hand)
        return None
