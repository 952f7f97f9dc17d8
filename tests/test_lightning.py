"""expman.lightning: Lightning's Trainer checkpoints through expman, resumed exactly and guarded."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):
    import lightning.pytorch as pl  # CI installs the extra: these tests never skip there
else:
    pl = pytest.importorskip("lightning.pytorch")

import h5py
import torch

from expman import (
    ArchitectureMismatchError,
    CheckpointManager,
    PartialRestoreWarning,
    read_metadata,
)
from expman.checkpoints._context import ManagerDefaults
from expman.lightning import ExpmanCheckpoint, retention_policy

# Lightning's own warnings about this tiny setup (few workers and batches), and
# Lightning 2.6's use of a torch.utils._pytree name that torch 2.13 deprecates.
pytestmark = [
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
]


class Regressor(pl.LightningModule):
    """Dropout, shuffled data, Adam with a step schedule: everything resume must restore."""

    def __init__(self, hidden: int = 16, optimizer: str = "adam") -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(hidden, 1),
        )
        self.optimizer = optimizer
        self.saved: list[dict[str, Any]] = []
        self.loaded: list[dict[str, Any]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        if self.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=0.05, betas=(0.8, 0.99))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 6], gamma=0.5)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["custom"] = {1: (2, "x", None), "scale": 0.5, "ids": torch.arange(3)}
        self.saved.append(copy.deepcopy(checkpoint))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded.append(copy.deepcopy(checkpoint))


def data(shuffle: bool) -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(32, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(32, 1, generator=generator)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=shuffle
    )


def fit(
    model: Regressor,
    epochs: int,
    callback: ExpmanCheckpoint,
    root: Path,
    ckpt_path: str | None = None,
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root,
    )
    trainer.fit(model, data(shuffle=True), data(shuffle=False), ckpt_path=ckpt_path)
    return trainer


def model(seed: int, **options: Any) -> Regressor:
    pl.seed_everything(seed, verbose=False)
    return Regressor(**options)


def test_resumed_training_is_bit_identical(tmp_path: Path) -> None:
    straight = model(0)
    fit(straight, 4, ExpmanCheckpoint(dirpath=tmp_path / "a"), tmp_path)

    first = model(0)
    fit(first, 2, ExpmanCheckpoint(dirpath=tmp_path / "b"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "b").glob("ckpt-*")) == ["ckpt-000008.h5"]
    resumed = model(7)  # other initial weights and generators: all of it comes from the file
    trainer = fit(resumed, 4, ExpmanCheckpoint(dirpath=tmp_path / "b"), tmp_path, "last")

    assert trainer.global_step == 16
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.loaded[0]["global_step"] == 8
    assert not list(tmp_path.rglob("*.ckpt"))


def test_lightning_checkpoint_round_trips_with_exact_types(tmp_path: Path) -> None:
    first = model(0)
    fit(first, 1, ExpmanCheckpoint(dirpath=tmp_path / "c"), tmp_path)
    resumed = model(0)
    fit(resumed, 2, ExpmanCheckpoint(dirpath=tmp_path / "c"), tmp_path, "last")

    saved, loaded = first.saved[-1], resumed.loaded[0]
    assert loaded.keys() == saved.keys()
    assert {"loops", "callbacks", "optimizer_states", "lr_schedulers", "epoch"} <= saved.keys()
    assert loaded["custom"][1] == (2, "x", None)
    assert loaded["lr_schedulers"][0]["milestones"] == saved["lr_schedulers"][0]["milestones"]
    assert_same(loaded, saved, "checkpoint")


def assert_same(a: Any, b: Any, where: str) -> None:
    """Equal values of exactly the same types, tensors by value, dtype and shape."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert type(key) is type(next(k for k in b if k == key)), f"{where}: key {key!r}"
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{index}")
    else:
        assert a == b or (a != a and b != b), where


def test_no_pickle_in_the_file(tmp_path: Path) -> None:
    fit(model(0), 1, ExpmanCheckpoint(dirpath=tmp_path / "d"), tmp_path)
    datasets: list[h5py.Dataset] = []
    with h5py.File(tmp_path / "d" / "ckpt-000004.h5") as f:
        f.visititems(lambda _, item: datasets.append(item) if hasattr(item, "dtype") else None)
        for dataset in datasets:  # numbers and text only: nothing a loader would execute
            kind = dataset.dtype.kind
            assert kind in "biuf" or h5py.check_string_dtype(dataset.dtype), dataset.name
    names = {t.name for t in read_metadata(tmp_path / "d" / "ckpt-000004.h5").tensors}
    assert any("optimizer_states/0/state/0/exp_avg" in name for name in names)


def test_a_changed_model_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    fit(model(0), 1, ExpmanCheckpoint(dirpath=tmp_path / "e"), tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "e").iterdir())
    wide = model(1, hidden=32)
    weights = copy.deepcopy(wide.state_dict())

    with pytest.raises(ArchitectureMismatchError) as caught:
        fit(wide, 2, ExpmanCheckpoint(dirpath=tmp_path / "e"), tmp_path, "last")

    assert str(caught.value).splitlines() == [
        f"checkpoint {tmp_path / 'e' / 'ckpt-000004.h5'} does not match the model: "
        "3 tensor differences",
        "  net.0.bias: checkpoint [16] vs model [32]",
        "  net.0.weight: checkpoint [16, 4] vs model [32, 4]",
        "  net.3.weight: checkpoint [1, 16] vs model [1, 32]",
        "to proceed: restore only the matching tensors with a partial restore (partial=True, "
        "or expman run --partial), or start a new experiment for the changed model "
        "(expman new NAME)",
    ]
    for name, value in wide.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "e").iterdir()) == before


def test_another_optimizer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    fit(model(0), 1, ExpmanCheckpoint(dirpath=tmp_path / "f"), tmp_path)
    other = model(1, optimizer="sgd")
    weights = copy.deepcopy(other.state_dict())

    with pytest.raises(ArchitectureMismatchError) as caught:
        fit(other, 2, ExpmanCheckpoint(dirpath=tmp_path / "f"), tmp_path, "last")

    assert str(caught.value).splitlines()[:2] == [
        f"checkpoint {tmp_path / 'f' / 'ckpt-000004.h5'} does not match the model: "
        "1 other difference",
        "  optimizer 0: class checkpoint torch.optim.adam.Adam vs optimizer torch.optim.sgd.SGD",
    ]
    for name, value in other.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_top_k_by_a_metric_is_expman_retention_and_metrics_are_logged(tmp_path: Path) -> None:
    directory = tmp_path / "g"
    callback = ExpmanCheckpoint(dirpath=directory, monitor="val_loss", save_top_k=2)
    fit(model(0), 6, callback, tmp_path)

    events = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    assert {"train_loss", "val_loss", "epoch"} <= {k for e in events for k in e["metrics"]}
    manager = CheckpointManager(directory)
    kept = {info.step: info.metrics["val_loss"] for info in manager.checkpoints()}
    val = {e["step"]: e["metrics"]["val_loss"] for e in events if "val_loss" in e["metrics"]}
    best_two = sorted(val, key=val.__getitem__)[:2]
    assert set(kept) == {*best_two, 24}
    for step, value in kept.items():
        assert value == pytest.approx(val[step])
    assert callback.best_model_path == str(directory / f"ckpt-{best_two[0]:06d}.h5")


def test_retention_policy_maps_model_checkpoint_arguments() -> None:
    best = retention_policy(monitor="val_acc", mode="max", save_top_k=3)
    assert (best.keep_best, best.best_metric, best.best_mode, best.keep_max) == (
        3,
        "val_acc",
        "max",
        1,
    )
    assert retention_policy(monitor=None, mode="min", save_top_k=2).keep_max == 2
    assert retention_policy(monitor=None, mode="min", save_top_k=-1).keep_max is None
    assert retention_policy(monitor="loss", mode="min", save_top_k=-1).keep_best == 0
    assert not retention_policy(monitor=None, mode="min", save_top_k=1).save_first_step


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # Lightning's, true
def test_partial_resume_under_expman_run_starts_the_optimizers_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = model(0)
    fit(narrow, 1, ExpmanCheckpoint(dirpath=tmp_path / "base"), tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "base").iterdir())
    # What `expman run wide --from-checkpoint base --partial` tells the training process.
    run = ManagerDefaults(
        directory=tmp_path / "wide",
        policy={},
        experiment="wide",
        code_commit="0" * 40,
        params={},
        warm_start=tmp_path / "base" / "ckpt-000004.h5",
        warm_start_name="base@4",
        partial=True,
    )
    for name, value in run.to_env().items():
        monkeypatch.setenv(name, value)
    wide = model(1, hidden=32)

    with pytest.warns(PartialRestoreWarning) as warned:
        trainer = fit(wide, 2, ExpmanCheckpoint(), tmp_path, "last")

    assert str(warned[0].message) == (
        f"partial restore from {tmp_path / 'base' / 'ckpt-000004.h5'}: 1 tensors restored, "
        "3 skipped: net.0.bias: checkpoint [16] vs model [32]; net.0.weight: checkpoint "
        "[16, 4] vs model [32, 4]; net.3.weight: checkpoint [1, 16] vs model [1, 32]"
    )
    loaded = wide.loaded[0]
    assert torch.equal(loaded["state_dict"]["net.3.bias"], narrow.state_dict()["net.3.bias"])
    assert loaded["optimizer_states"][0]["state"] == {}  # fresh: Adam's moments had old shapes
    assert loaded["lr_schedulers"][0]["last_epoch"] == 0
    assert loaded["global_step"] == 4  # the loops go on from the checkpoint
    assert trainer.global_step == 8
    assert sorted(p.name for p in (tmp_path / "wide").glob("ckpt-*")) == ["ckpt-000008.h5"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "base").iterdir()) == before


def test_the_lightning_template_trains_resumes_and_refuses_a_wider_model(tmp_path: Path) -> None:
    from tests.cli import expman, scaffold

    project = scaffold(tmp_path, "lightning")
    assert expman(project, "new", "base", "--set", "epochs=2").returncode == 0
    first = expman(project, "run", "base")
    assert first.returncode == 0, first.stderr
    assert "no checkpoint: starting from step 0" in first.stdout
    second = expman(project, "run", "base")
    assert second.returncode == 0, second.stderr
    assert "resuming at step 40, 2 epochs done" in second.stdout
    assert "step 80: accuracy" in second.stdout
    directory = project / ".expman" / "checkpoints" / "base"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == [
        "ckpt-000040.h5",  # the one run 2 resumed from
        "ckpt-000060.h5",
        "ckpt-000080.h5",
    ]
    assert not [p for p in project.rglob("*") if p.suffix in (".ckpt", ".pt", ".pth", ".pkl")]
    names = {t.name for t in CheckpointManager(directory).metadata().architecture.tensors}
    assert {"net.0.weight", "extra/lightning"} <= names

    new = expman(project, "new", "wide", "--from", "base", "--set", "model.hidden_units=[64,64]")
    assert new.returncode == 0, new.stderr
    refused = expman(project, "run", "wide", "--from-checkpoint", "base")
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.splitlines()[-8:] == [
        f"expman: checkpoint {directory / 'ckpt-000080.h5'} (written by experiment base, "
        f"commit {commit_of(project, 'exp/base~1')}) does not match the model: "
        "5 tensor differences",
        "  net.0.bias: checkpoint [32] vs model [64]",
        "  net.0.weight: checkpoint [32, 2] vs model [64, 2]",
        "  net.2.bias: checkpoint [32] vs model [64]",
        "  net.2.weight: checkpoint [32, 32] vs model [64, 64]",
        "  net.4.weight: checkpoint [2, 32] vs model [2, 64]",
        "to proceed: restore only the matching tensors with a partial restore (partial=True, "
        "or expman run --partial), or start a new experiment for the changed model "
        "(expman new NAME)",
        refused.stderr.splitlines()[-1],
    ]
    assert "refused (exit 3): architecture differs from base@80" in refused.stderr
    assert not list((project / ".expman" / "checkpoints" / "wide").glob("ckpt-*"))


def commit_of(project: Path, revision: str) -> str:
    from tests.conftest import git

    return git(project, "rev-parse", "--short=12", revision).strip()
