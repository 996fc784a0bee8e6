"""Exact-resume checkpoints as plain functions: module weights as safetensors, optimizer, schedule and
RNG state as tensors and numbers loaded with `torch.load(weights_only=True)` (never pickle)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.pt"
META_FILE = "trainer_state.json"


def save_checkpoint(directory: Path, *, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                    generator: torch.Generator, step: int, extra: dict[str, Any] | None = None,
                    trainable_only: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
    """Write everything needed to continue bit-for-bit into `directory` (which the caller then
    moves into place atomically). A float16 run's loss scale is part of that state."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        state = module.state_dict()
        if trainable_only:
            trainable = {n for n, p in module.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in trainable}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                  str(directory / f"{name}.safetensors"))
    state_blob = {
        "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_state_tensor(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
    }
    torch.save(state_blob, directory / STATE_FILE)
    meta = {"step": step, **(extra or {})}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def load_checkpoint(directory: Path, *, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                    generator: torch.Generator, strict: bool = True,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote; returns its metadata (with `step`)."""
    for name, module in modules.items():
        state = load_file(str(directory / f"{name}.safetensors"))
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or (strict and missing):
            raise RuntimeError(f"checkpoint {directory}/{name}.safetensors does not fit the model: "
                               f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    blob = torch.load(directory / STATE_FILE, weights_only=True)
    for key, opt in optimizers.items():
        opt.load_state_dict(blob["optimizers"][key])
    for key, sched in schedulers.items():
        sched.load_state_dict(blob["schedulers"][key])
    if scaler is not None and scaler.is_enabled() and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    generator.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    np.random.set_state(_numpy_state_from_json(json.loads(bytes(blob["numpy_rng"].numpy()).decode())))
    return json.loads((directory / META_FILE).read_text())


def _numpy_state_tensor() -> torch.Tensor:
    """numpy's RNG state as bytes of JSON in a tensor, so `weights_only` loading can read it."""
    state: Any = np.random.get_state(legacy=True)
    text = json.dumps(_numpy_state_to_json(state))
    return torch.from_numpy(np.frombuffer(text.encode(), dtype=np.uint8).copy())


def _numpy_state_to_json(state: tuple) -> list:
    return [state[0], state[1].tolist(), int(state[2]), int(state[3]), float(state[4])]


def _numpy_state_from_json(data: list) -> tuple:
    return (data[0], np.array(data[1], dtype=np.uint32), data[2], data[3], data[4])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and random; return the generator that data order and noise draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
