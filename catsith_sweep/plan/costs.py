"""Prices and speeds of hardware (an editable YAML, validated here) and the guide's cost formula."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from catsith_sweep.errors import UserInputError

DEFAULT_PRICES = Path(__file__).with_name("prices.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Offer(_Strict):
    provider: str
    usd_per_hour: float = Field(gt=0)
    """Price of one GPU for one hour (the low end when `usd_per_hour_max` is given)."""
    usd_per_hour_max: float | None = Field(None, gt=0)
    """High end of a price range (marketplaces)."""
    source: str
    """Where the price comes from."""


class GpuKind(_Strict):
    description: str
    relative_speed: float = Field(gt=0)
    """Sweep throughput relative to the reference kind (1.0)."""
    speed_source: str
    """Where `relative_speed` comes from."""
    guess: bool
    """True when `relative_speed` is not a measurement."""
    offers: list[Offer] = Field(min_length=1)


class DeviceSpeed(_Strict):
    match: str = Field(min_length=1)
    """Lower-case text found in the calibration device's name (`cpu` for CPU runs)."""
    relative_speed: float = Field(gt=0)
    speed_source: str
    guess: bool


class PriceTable(_Strict):
    reference: str
    """The GPU kind whose speed is 1.0."""
    gpus: dict[str, GpuKind] = Field(min_length=1)
    devices: list[DeviceSpeed] = Field(min_length=1)

    @model_validator(mode="after")
    def _reference_known(self) -> PriceTable:
        if self.reference not in self.gpus:
            raise ValueError(f"reference must be one of the gpus ({', '.join(self.gpus)}), but got {self.reference!r}")
        return self

    def device_speed(self, device_name: str) -> DeviceSpeed | None:
        name = device_name.lower()
        return next((d for d in self.devices if d.match.lower() in name), None)


def load_prices(path: Path | None = None) -> PriceTable:
    """The price table at `path` (default: the shipped one); bad files are bad input, every problem named."""
    path = path or DEFAULT_PRICES
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserInputError(f"--prices {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML: {exc}") from None
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path} {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}, "
                    f"but got {e.get('input')!r}" for e in exc.errors()]
        raise UserInputError(problems, title=f"{path}: invalid price table") from None


@dataclass(frozen=True)
class HardwareCost:
    """The predicted sweep on `gpus` GPUs of one kind, from one provider."""

    kind: str
    provider: str
    speed_ratio: float
    wall_hours: float
    gpu_hours: float
    usd: float
    usd_max: float | None
    guess: bool
    speed_source: str


def hardware_costs(prices: PriceTable, *, device_name: str, fixed_seconds: float, scaled_wall_seconds: float,
                   scaled_busy_seconds: float, gpus: float, kinds: list[str] | None = None) -> list[HardwareCost]:
    """Scale the measured part of the prediction by each kind's speed over the calibration device's;
    the fixed part (process start-up, imports, ray.init) is taken as hardware-independent. Cost is
    what renting `gpus` GPUs for the wall time costs."""
    device = prices.device_speed(device_name)
    if device is None:
        known = ", ".join(d.match for d in prices.devices)
        raise UserInputError(f"price table: no `devices` entry matches this machine's device {device_name!r}; "
                             f"add one (known: {known})")
    unknown = [k for k in kinds or [] if k not in prices.gpus]
    if unknown:
        raise UserInputError(f"--gpu: unknown kind(s) {', '.join(unknown)}; the price table has "
                             f"{', '.join(prices.gpus)}")
    rows = []
    for kind in kinds or list(prices.gpus):
        spec = prices.gpus[kind]
        ratio = spec.relative_speed / device.relative_speed
        wall_h = (fixed_seconds + scaled_wall_seconds / ratio) / 3600
        for offer in spec.offers:
            rows.append(HardwareCost(
                kind=kind, provider=offer.provider, speed_ratio=ratio, wall_hours=wall_h,
                gpu_hours=scaled_busy_seconds / ratio / 3600, usd=wall_h * gpus * offer.usd_per_hour,
                usd_max=wall_h * gpus * offer.usd_per_hour_max if offer.usd_per_hour_max else None,
                guess=spec.guess or device.guess,
                speed_source=f"{kind}: {spec.speed_source}; this device ({device.match}): {device.speed_source}",
            ))
    return rows


# --- the guide's `estimate_training_cost` (Appendix: Cost Calculator), reproduced as written ---------
GUIDE_SPEEDS = {"lora": 2.0, "distill": 0.5, "vae": 10.0, "full": 0.3}
"""Images/second on an A100, per method, as the guide assumes them."""


def estimate_training_cost(method: str, dataset_size: int, epochs: int, batch_size: int = 4,
                           gpu_cost_per_hour: float = 1.10, *, as_coded: bool = False) -> dict:
    """The guide's formula. Its code and its printed examples disagree, so both are available:

    - default, as its examples print: seconds = images / (images per second), x 1.2 overhead. This
      gives its first example exactly (lora, 1000 images, 10 epochs: 1.7 h, $1.83). Its second
      example prints 33.3 h / $36.67 for `("distill", 10000, 50)`, which is what 1000 images give;
      10000 images give 333.3 h / $366.67 (a factor-10 slip in the guide).
    - `as_coded`: the code line for line, which also divides by `batch_size` (although the speeds are
      already images/s): 0.4 h / $0.46 and 83.3 h / $91.67 for the two examples.
    """
    if method not in GUIDE_SPEEDS:
        raise UserInputError(f"--guide-formula: method must be one of {', '.join(GUIDE_SPEEDS)}, but got {method!r}")
    for name, value in (("dataset-size", dataset_size), ("epochs", epochs), ("batch-size", batch_size)):
        if value < 1:
            raise UserInputError(f"--guide-formula: --{name} must be at least 1, but got {value}")
    total_images = dataset_size * epochs
    training_seconds = total_images / GUIDE_SPEEDS[method] / (batch_size if as_coded else 1)
    training_hours = training_seconds / 3600 * 1.2  # the guide's overhead: data loading, checkpointing
    cost = training_hours * gpu_cost_per_hour
    return {"method": method, "dataset_size": dataset_size, "epochs": epochs,
            "estimated_hours": round(training_hours, 1), "estimated_cost": round(cost, 2)}


def gpus_rented(concurrency: int, gpu_per_trial: float) -> int:
    """GPUs to rent for `concurrency` trials (a CPU-only experiment is priced at one GPU per trial)."""
    return max(1, math.ceil(concurrency * (gpu_per_trial or 1.0) - 1e-9))
