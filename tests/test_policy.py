"""The policy is pure: when to save, and which checkpoints retention keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from expman import CheckpointPolicy
from expman.checkpoints._policy import select_kept


@dataclass(frozen=True)
class Ckpt:
    step: int
    wall_time: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)


def test_defaults_are_the_estimators() -> None:
    policy = CheckpointPolicy()
    assert policy.save_every_secs == 600
    assert policy.keep_max == 5
    assert policy.save_first_step
    assert policy.save_every_steps is None


def test_should_save_first_step_timer_and_every_n_steps() -> None:
    policy = CheckpointPolicy(save_every_steps=50)
    first = policy.should_save(1, now=0.0, last_save_time=0.0, first_in_directory=True)
    assert first
    assert not policy.should_save(2, now=10.0, last_save_time=0.0, first_in_directory=False)
    assert policy.should_save(50, now=10.0, last_save_time=0.0, first_in_directory=False)
    assert policy.should_save(51, now=600.0, last_save_time=0.0, first_in_directory=False)
    assert not policy.should_save(52, now=599.9, last_save_time=0.0, first_in_directory=False)


def test_nothing_but_force_when_everything_is_off() -> None:
    policy = CheckpointPolicy(save_every_secs=None, save_first_step=False)
    assert not policy.should_save(1, now=1e9, last_save_time=0.0, first_in_directory=True)


def test_keep_max_newest() -> None:
    ckpts = [Ckpt(s) for s in range(1, 11)]
    assert select_kept(CheckpointPolicy(keep_max=3), ckpts) == {8, 9, 10}
    assert select_kept(CheckpointPolicy(keep_max=None), ckpts) == set(range(1, 11))


def test_protected_and_newest_are_always_kept() -> None:
    ckpts = [Ckpt(s) for s in range(1, 11)]
    assert select_kept(CheckpointPolicy(keep_max=1), ckpts, protected={2, 4}) == {2, 4, 10}


def test_keep_one_every_n_hours_is_stable_over_deletions() -> None:
    hour = 3600.0
    # A checkpoint every 20 minutes for 5 hours.
    ckpts = [Ckpt(i + 1, wall_time=i * hour / 3) for i in range(16)]
    policy = CheckpointPolicy(keep_max=2, keep_every_hours=2)
    kept = select_kept(policy, ckpts)
    assert kept == {1, 7, 13, 15, 16}  # t=0h, 2h, 4h, and the 2 newest
    survivors = [c for c in ckpts if c.step in kept]
    assert select_kept(policy, survivors) == kept


def test_keep_best_by_metric_min_and_max() -> None:
    losses = [0.5, 0.1, 0.4, 0.2, 0.9, float("nan"), 0.8]
    ckpts = [Ckpt(i + 1, metrics={"loss": v}) for i, v in enumerate(losses)]
    ckpts.append(Ckpt(8))  # no metric: never "best"
    lowest = CheckpointPolicy(keep_max=1, keep_best=2, best_metric="loss")
    assert select_kept(lowest, ckpts) == {2, 4, 8}
    highest = CheckpointPolicy(keep_max=1, keep_best=1, best_metric="loss", best_mode="max")
    assert select_kept(highest, ckpts) == {5, 8}


def test_ties_keep_the_newest() -> None:
    ckpts = [Ckpt(i, metrics={"acc": 1.0}) for i in (1, 2, 3)]
    policy = CheckpointPolicy(keep_max=1, keep_best=1, best_metric="acc", best_mode="max")
    assert select_kept(policy, ckpts) == {3}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_max": 0}, "keep_max must be positive or None, got 0"),
        ({"save_every_secs": -1}, "save_every_secs must be positive or None, got -1"),
        ({"save_every_steps": 2.5}, "save_every_steps must be an integer, got 2.5 (a float)"),
        ({"keep_best": 2}, "keep_best needs best_metric: the metric to rank checkpoints by"),
        ({"keep_best": -1}, "keep_best must be an integer >= 0, got -1"),
        (
            {"keep_best": 1, "best_metric": "loss", "best_mode": "lowest"},
            "best_mode must be 'min' or 'max', got 'lowest'",
        ),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        CheckpointPolicy(**settings)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_from_mapping_names_unknown_settings() -> None:
    policy = CheckpointPolicy.from_mapping({"save_every_secs": 1200, "keep_max": 10})
    assert (policy.save_every_secs, policy.keep_max) == (1200, 10)
    with pytest.raises(ValueError, match=r"^unknown checkpoint policy setting 'keep'; known"):
        CheckpointPolicy.from_mapping({"keep": 3})
