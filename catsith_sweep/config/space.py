"""Search-space distributions: a mapping from a dotted config key to one of these.

```yaml
lora.rank: {type: int, low: 4, high: 32, log: true}
train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
lora.target_modules: {type: categorical, values: [[to_q, to_v], [to_q, to_k, to_v, to_out.0]]}
train.batch_size: {type: fixed, value: 4}
```

The rules are Optuna's, checked here so a bad space fails at `validate` rather than in a trial.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: `int | None` -> [int, NoneType]; Annotated unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def check_bool_int(value: Any, annotation: Any) -> Any:
    """`value` unchanged, or ValueError when it is a bool where only numbers are allowed, or a
    number where only a bool is (pydantic's lax mode would silently turn one into the other)."""
    members = _members(annotation)
    scalars = {m for m in members if isinstance(m, type)}
    if isinstance(value, bool):
        if bool not in scalars and scalars & {int, float} and Any not in members:
            raise ValueError(f"expected a number, but got {str(value).lower()} (a boolean)")
    elif isinstance(value, int | float):
        if scalars and scalars <= {bool, type(None)}:
            raise ValueError(f"expected true or false, but got {value!r} (a number)")
    elif isinstance(value, list | tuple):
        for member in members:
            if get_origin(member) in (list, tuple):
                elements = [a for a in get_args(member) if a is not Ellipsis]
                for item in value:
                    for element in elements:
                        check_bool_int(item, element)
    return value


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_int_mixups(cls, data: Any) -> Any:
        # A model-level check: pydantic allows no field validator on the `type` discriminator.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if field is not None:
                    try:
                        check_bool_int(value, field.annotation)
                    except ValueError as exc:
                        raise ValueError(f"`{name}`: {exc}") from None
        return data

    def candidate_values(self) -> list[Any]:
        """Values that stand for the whole range when checking them against the config's types."""
        raise NotImplementedError


class Categorical(_Dist):
    """Pick one of `values` (any YAML values: numbers, strings, lists)."""

    type: Literal["categorical"]
    values: list[Any] = Field(min_length=1, description="The choices, at least one.")

    def candidate_values(self) -> list[Any]:
        return list(self.values)


class IntRange(_Dist):
    """An integer in [low, high], on a grid of `step` or on a log scale."""

    type: Literal["int"]
    low: int = Field(description="Smallest value, inclusive.")
    high: int = Field(description="Largest value, inclusive.")
    step: int = Field(1, ge=1, description="Grid step; must be 1 with log: true.")
    log: bool = Field(False, description="Sample on a log scale (low must be >= 1).")

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got low={self.low}, high={self.high}")
        if self.log and self.step != 1:
            raise ValueError(f"`step` must be 1 when `log` is true, but got step={self.step}")
        if self.log and self.low < 1:
            raise ValueError(f"`low >= 1` must hold when `log` is true, but got low={self.low}")
        return self

    def candidate_values(self) -> list[Any]:
        return [self.low, self.high]


class FloatRange(_Dist):
    """A float in [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["float"]
    low: float = Field(description="Smallest value, inclusive.")
    high: float = Field(description="Largest value, inclusive.")
    log: bool = Field(False, description="Sample on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Grid step; not allowed with log: true.")

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"`low > 0` must hold when `log` is true, but got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError(f"`step` and `log: true` cannot be combined, but got step={self.step}")
        return self

    def candidate_values(self) -> list[Any]:
        return [self.low, self.high]


class Fixed(_Dist):
    """Always `value`: pins a key inside a shared search-space file."""

    type: Literal["fixed"]
    value: Any = Field(description="The value every trial gets.")

    def candidate_values(self) -> list[Any]:
        return [self.value]


Distribution = Annotated[Categorical | IntRange | FloatRange | Fixed, Field(discriminator="type")]


class SearchSpaceFile(BaseModel):
    """A reusable search-space file (`search_spaces/NAME.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="What this space explores.")
    trainer: str | None = Field(None, description="The trainer these keys belong to, if only one.")
    space: dict[str, Distribution] = Field(description="Dotted config key -> distribution.")
