"""Architectures and their comparison: pure data, no I/O.

An architecture is every tensor's name, shape and dtype, plus an optional model
config (a JSON-able dict such as ``{"hidden_units": [10, 10]}``). Comparing the
architecture recorded in a checkpoint with the one a model has tells, before any
tensor is read, whether a restore is safe and exactly what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from expman._text import one_line

__all__ = [
    "Architecture",
    "ArchitectureDiff",
    "DtypeChange",
    "ShapeChange",
    "TensorSpec",
    "compare_architectures",
    "format_shape",
]


def format_shape(shape: Iterable[int]) -> str:
    """``(4, 10)`` -> ``[4, 10]``, as error messages and reports show shapes."""
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's name, shape and dtype (``"str"`` for a string value)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"{format_shape(self.shape)} {self.dtype}"


@dataclass(frozen=True)
class Architecture:
    """The tensors of a state, sorted by name, and an optional model config."""

    tensors: tuple[TensorSpec, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, specs: Iterable[TensorSpec], config: Mapping[str, Any] | None = None
    ) -> Architecture:
        return cls(tuple(sorted(specs, key=lambda s: s.name)), dict(config or {}))

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the tensor list as compact JSON with sorted keys.

        It covers every tensor's name, shape and dtype, not the model config.
        """
        canonical = json.dumps(self.to_json()["tensors"], separators=(",", ":"), sort_keys=True)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def by_name(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.tensors}

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.tensors
            ],
            "config": dict(self.config),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Architecture:
        specs = (
            TensorSpec(str(t["name"]), tuple(int(d) for d in t["shape"]), str(t["dtype"]))
            for t in data["tensors"]
        )
        return cls.of(specs, data.get("config") or {})


@dataclass(frozen=True)
class ShapeChange:
    name: str
    checkpoint: tuple[int, ...]
    model: tuple[int, ...]


@dataclass(frozen=True)
class DtypeChange:
    name: str
    checkpoint: str
    model: str


@dataclass(frozen=True)
class ArchitectureDiff:
    """What differs between a checkpoint's architecture and a model's.

    Attributes:
        missing: tensors the model has and the checkpoint lacks.
        unexpected: tensors the checkpoint has and the model lacks.
        shape_changes: tensors in both whose shapes differ.
        dtype_changes: tensors in both whose dtypes differ.
        matching: tensors identical in name, shape and dtype.
        config_changes: model-config keys (dotted) whose values differ.
    """

    checkpoint: Architecture
    model: Architecture
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_changes: tuple[ShapeChange, ...]
    dtype_changes: tuple[DtypeChange, ...]
    matching: tuple[str, ...]
    config_changes: tuple[str, ...]

    @property
    def tensors_match(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_changes or self.dtype_changes)

    @property
    def mismatched(self) -> frozenset[str]:
        """Names of tensors present in both but not restorable (shape or dtype)."""
        return frozenset(c.name for c in self.shape_changes) | frozenset(
            c.name for c in self.dtype_changes
        )

    def lines(self) -> list[str]:
        """One line per tensor difference: shapes, dtypes, missing, unexpected."""
        ours = self.model.by_name()
        theirs = self.checkpoint.by_name()
        return [
            *(
                f"{one_line(c.name)}: checkpoint {format_shape(c.checkpoint)} vs model "
                f"{format_shape(c.model)}"
                for c in self.shape_changes
            ),
            *(
                f"{one_line(c.name)}: dtype checkpoint {c.checkpoint} vs model {c.model}"
                for c in self.dtype_changes
            ),
            *(
                f"{one_line(name)}: missing from the checkpoint (model has {ours[name].describe()})"
                for name in self.missing
            ),
            *(
                f"{one_line(name)}: not in the model (checkpoint has {theirs[name].describe()})"
                for name in self.unexpected
            ),
        ]

    def config_lines(self) -> list[str]:
        before = _flatten_config(self.checkpoint.config)
        after = _flatten_config(self.model.config)
        return [
            f"{one_line(key)}: checkpoint {_show(before, key)} vs model {_show(after, key)}"
            for key in self.config_changes
        ]


def compare_architectures(checkpoint: Architecture, model: Architecture) -> ArchitectureDiff:
    """Compare what a checkpoint holds with what a model expects."""
    theirs = checkpoint.by_name()
    ours = model.by_name()
    common = sorted(theirs.keys() & ours.keys())
    before = _flatten_config(checkpoint.config)
    after = _flatten_config(model.config)
    return ArchitectureDiff(
        checkpoint=checkpoint,
        model=model,
        missing=tuple(sorted(ours.keys() - theirs.keys())),
        unexpected=tuple(sorted(theirs.keys() - ours.keys())),
        shape_changes=tuple(
            ShapeChange(n, theirs[n].shape, ours[n].shape)
            for n in common
            if theirs[n].shape != ours[n].shape
        ),
        dtype_changes=tuple(
            DtypeChange(n, theirs[n].dtype, ours[n].dtype)
            for n in common
            if theirs[n].dtype != ours[n].dtype
        ),
        matching=tuple(n for n in common if theirs[n] == ours[n]),
        config_changes=tuple(
            sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        ),
    )


_ABSENT = object()


def _flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten_config(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _show(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key, _ABSENT)
    return "(absent)" if value is _ABSENT else json.dumps(value)
