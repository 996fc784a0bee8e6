"""The sweep's Ray instance started in a thread (sweep/ray_session.py): it outlives the start (Ray's
processes die with the thread that started them), its workers get the trials' environment without a job
runtime_env, the driver's own environment is left as it was, and `stop` shuts it down."""

from __future__ import annotations

import os
import time

import pytest

from catsith_sweep.sweep.ray_session import RaySession, trial_env

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]


def test_ray_started_in_a_thread_serves_trials_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process")
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    session = RaySession.start(None, trial_env())
    session.wait()
    assert session.owned and ray.is_initialized()
    assert "PYTHONWARNINGS" not in os.environ  # set for Ray's processes only

    @ray.remote(num_cpus=0)
    def worker_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS")}

    time.sleep(3)  # the thread that started Ray is parked, not gone: its processes are still up
    assert ray.get(worker_env.remote(), timeout=120) == {
        "PYTHONWARNINGS": trial_env()["PYTHONWARNINGS"], "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    session.stop(background=True)
    session.join()
    assert not ray.is_initialized() and not session.owned
