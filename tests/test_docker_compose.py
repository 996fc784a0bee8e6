"""The deployment files, checked without a Docker engine: the compose file parses and keeps its promises
(ports on 127.0.0.1 only, token auth on every Ray node, a volume shared by every node for checkpoints,
GPU workers through the device reservation), and the image pins the versions this suite runs with."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER / "docker-compose.yml").read_text()))


def test_services_and_published_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "ray-gpu-worker", "driver"} <= set(services)
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "postgresql+psycopg2://" in services["mlflow"]["command"]
    assert "--artifacts-destination" in services["mlflow"]["command"]  # artifacts go over HTTP


def test_ray_nodes_share_runs_and_keep_token_auth(compose: dict[str, Any]) -> None:
    ray_services = ["ray-head", "ray-worker", "ray-gpu-worker", "driver"]
    for name in ray_services:
        service = compose["services"][name]
        assert service["environment"]["RAY_AUTH_MODE"] == "token", name
        assert "RAY_AUTH_TOKEN" in service["environment"], name
        assert "runs:/work/runs" in service["volumes"] and "cache:/cache" in service["volumes"], name
    head = compose["services"]["ray-head"]["command"]
    assert "--num-cpus=0" in head and "--dashboard-host=127.0.0.1" in head


def test_gpu_workers_use_the_device_reservation(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["ray-gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["profiles"] == ["gpu"] and "--num-gpus" in gpu["command"]


def test_image_pins_what_the_tests_run_with() -> None:
    pins = dict(line.split("==", 1) for line in (DOCKER / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package in ("ray", "mlflow", "optuna", "diffusers", "peft", "transformers", "torchmetrics"):
        assert pins[package] == version(package), package
    assert "torch" not in pins  # from the local wheel, see docker/Dockerfile
    assert "torch==2.13.0" in (DOCKER / "Dockerfile").read_text()


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) or Debian's `docker-compose` (1.29), whichever is installed."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_tool_accepts_it_and_demands_the_secrets() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [*command, "-p", "catsith", "-f", str(DOCKER / "docker-compose.yml"), "--profile", "gpu",
            "--profile", "driver", "config", "--quiet"]
    env = {"RAY_AUTH_TOKEN": "x" * 64, "POSTGRES_PASSWORD": "y" * 32, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    checked = subprocess.run(args, capture_output=True, text=True, env=env)
    assert checked.returncode == 0, checked.stderr
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    unset = subprocess.run(args, capture_output=True, text=True, env=no_token)
    assert unset.returncode != 0 and "RAY_AUTH_TOKEN" in unset.stderr
