"""Checkpoint policy: when to save and which checkpoints to keep. Pure functions.

The defaults are the TensorFlow Estimator's: save at the first step and the
last, every 600 seconds, and keep the 5 newest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

__all__ = ["CheckpointPolicy", "RetentionCandidate", "select_kept"]


@dataclass(frozen=True)
class CheckpointPolicy:
    """When checkpoints are written and which are kept.

    Attributes:
        save_every_secs: save when this many seconds passed since the last save
            (None: never by time).
        save_every_steps: save at every step divisible by this (None: never by step).
        save_first_step: save at the first ``save()`` in a directory without checkpoints.
        keep_max: keep this many newest checkpoints (None: keep all).
        keep_every_hours: also keep one checkpoint every this many hours, forever.
        keep_best: also keep this many best checkpoints by ``best_metric``.
        best_metric: the metric that ranks checkpoints for ``keep_best``.
        best_mode: ``"min"`` if lower is better, ``"max"`` if higher is.

    Example:
        >>> CheckpointPolicy(save_every_secs=1200, keep_max=10)  # doctest: +ELLIPSIS
        CheckpointPolicy(save_every_secs=1200, ..., keep_max=10, ...)
    """

    save_every_secs: float | None = 600.0
    save_every_steps: int | None = None
    save_first_step: bool = True
    keep_max: int | None = 5
    keep_every_hours: float | None = None
    keep_best: int = 0
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        _positive("save_every_secs", self.save_every_secs)
        _positive("save_every_steps", self.save_every_steps, integer=True)
        _positive("keep_max", self.keep_max, integer=True)
        _positive("keep_every_hours", self.keep_every_hours)
        if not isinstance(self.save_first_step, bool):
            raise ValueError(
                f"save_first_step must be true or false, got {self.save_first_step!r} "
                f"({_kind(self.save_first_step)})"
            )
        if not isinstance(self.best_metric, str | None):
            raise ValueError(
                f"best_metric must be a metric's name, got {self.best_metric!r} "
                f"({_kind(self.best_metric)})"
            )
        if (
            isinstance(self.keep_best, bool)
            or not isinstance(self.keep_best, int)
            or self.keep_best < 0
        ):
            raise ValueError(f"keep_best must be an integer >= 0, got {self.keep_best!r}")
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric: the metric to rank checkpoints by")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CheckpointPolicy:
        """Build a policy from a mapping such as a ``[checkpoints]`` TOML table."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown checkpoint policy setting {unknown[0]!r}; known settings: "
                + ", ".join(sorted(known))
            )
        return cls(**dict(values))

    def should_save(
        self,
        step: int,
        *,
        now: float,
        last_save_time: float,
        first_in_directory: bool,
    ) -> bool:
        """Whether ``save(step)`` writes, ``now`` and ``last_save_time`` on one clock."""
        if first_in_directory and self.save_first_step:
            return True
        if self.save_every_steps and step % self.save_every_steps == 0:
            return True
        return self.save_every_secs is not None and now - last_save_time >= self.save_every_secs


def _positive(name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r} ({_kind(value)})")
    if not value > 0:
        raise ValueError(f"{name} must be positive or None, got {value!r}")


def _kind(value: object) -> str:
    """A value's type as TOML names it (the policy usually comes from expman.toml)."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__}")


class RetentionCandidate(Protocol):
    @property
    def step(self) -> int: ...
    @property
    def wall_time(self) -> float: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...


def select_kept(
    policy: CheckpointPolicy,
    checkpoints: Sequence[RetentionCandidate],
    *,
    protected: Iterable[int] = (),
) -> set[int]:
    """The steps retention keeps; every other checkpoint may be deleted.

    Kept: the ``keep_max`` newest, one every ``keep_every_hours`` (the first
    checkpoint, then each one at least that long after the last kept), the
    ``keep_best`` best by ``best_metric``, and every ``protected`` step (pinned,
    restored, the newest valid). The result depends only on what is on disk, so
    it is the same after a restart.
    """
    by_step = sorted(checkpoints, key=lambda c: c.step)
    kept = set(protected)
    if by_step:
        kept.add(by_step[-1].step)
    if policy.keep_max is None:
        kept.update(c.step for c in by_step)
    else:
        kept.update(c.step for c in by_step[-policy.keep_max :])
    if policy.keep_every_hours is not None and by_step:
        interval = policy.keep_every_hours * 3600
        anchor = by_step[0]
        kept.add(anchor.step)
        for candidate in by_step[1:]:
            if candidate.wall_time >= anchor.wall_time + interval:
                kept.add(candidate.step)
                anchor = candidate
    if policy.keep_best and policy.best_metric:
        kept.update(_best_steps(policy, policy.best_metric, by_step))
    return kept


def _best_steps(
    policy: CheckpointPolicy, metric: str, by_step: Sequence[RetentionCandidate]
) -> list[int]:
    scored = [
        (float(c.metrics[metric]), c.step)
        for c in by_step
        if metric in c.metrics and _finite(c.metrics[metric])
    ]
    sign = 1.0 if policy.best_mode == "min" else -1.0
    # Best first; among equal values the newest wins.
    scored.sort(key=lambda pair: (sign * pair[0], -pair[1]))
    return [step for _, step in scored[: policy.keep_best]]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
