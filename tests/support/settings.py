"""The app's own bounds of a setting (``pynomaly.config.Settings``), for the chart and infra tests that mirror them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import annotated_types

from pynomaly.config import Settings


@dataclass(frozen=True)
class Bounds:
    """A numeric setting's type and limits, as pydantic's Field(ge/gt/le/lt) declares them."""

    integer: bool
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None

    def json_schema(self) -> dict[str, object]:
        """The same bounds as JSON schema keywords (what values.schema.json must say)."""
        keywords: dict[str, object] = {"type": "integer" if self.integer else "number"}
        for key, value in (
            ("minimum", self.minimum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("maximum", self.maximum),
            ("exclusiveMaximum", self.exclusive_maximum),
        ):
            if value is not None:
                keywords[key] = int(value) if self.integer else value
        return keywords

    def outside(self) -> list[float]:
        """Values just outside every bound (the first one past each edge)."""
        step = 1 if self.integer else 0.01
        values: list[float] = []
        if self.minimum is not None:
            values.append(self.minimum - step)
        if self.exclusive_minimum is not None:
            values.append(self.exclusive_minimum)
        if self.maximum is not None:
            values.append(self.maximum + step)
        if self.exclusive_maximum is not None:
            values.append(self.exclusive_maximum)
        return [int(v) if self.integer else v for v in values]

    def other_than(self, default: float) -> float:
        """An in-range value that differs from ``default`` (to see it travel, not the default)."""
        step = 1 if self.integer else 0.05
        for candidate in (default - step, default + step):
            if self.contains(candidate):
                return int(candidate) if self.integer else round(candidate, 6)
        raise AssertionError(f"no in-range value besides {default}")

    def contains(self, value: float) -> bool:
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.exclusive_minimum is None or value > self.exclusive_minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.exclusive_maximum is None or value < self.exclusive_maximum)
        )


def setting_bounds(name: str) -> Bounds:
    """``Settings.<name>``'s bounds; a constraint other than ge/gt/le/lt is an error (it would go unmirrored)."""
    field = Settings.model_fields[name]
    assert field.annotation in (int, float), f"{name} is not numeric"
    found: dict[str, float] = {}
    for bound in field.metadata:
        match bound:
            case annotated_types.Ge(ge=x):
                found["minimum"] = float(x)
            case annotated_types.Gt(gt=x):
                found["exclusive_minimum"] = float(x)
            case annotated_types.Le(le=x):
                found["maximum"] = float(x)
            case annotated_types.Lt(lt=x):
                found["exclusive_maximum"] = float(x)
            case _:
                raise AssertionError(f"Settings.{name}: unexpected constraint {bound!r}")
    return Bounds(integer=field.annotation is int, **found)


def snake(camel: str) -> str:
    """A chart or stack key (camelCase) as the Settings field it sets."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def is_numeric(name: str) -> bool:
    return Settings.model_fields[name].annotation in (int, float)
