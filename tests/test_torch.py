"""expman.torch: models, optimizers, schedulers and RNG states, through the same guard."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):
    import torch  # CI installs torch: these tests never skip there
else:
    torch = pytest.importorskip("torch")

import h5py

import expman
import expman.torch as et
from expman import ArchitectureMismatchError, CheckpointManager, PartialRestoreWarning


class Net(torch.nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.drop = torch.nn.Dropout(0.2)
        self.norm = torch.nn.BatchNorm1d(hidden)
        self.fc2 = torch.nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.norm(self.fc1(x)))))


def trainer(
    seed: int = 0,
) -> tuple[Net, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def train(model: Net, optimizer: torch.optim.Optimizer, scheduler: object, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 4)  # the torch RNG drives data and dropout
        y = torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y) + float(np.random.rand()) * 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()  # type: ignore[attr-defined]
        random.random()


def test_training_resumes_exactly(tmp_path: Path) -> None:
    straight = trainer()
    train(*straight, steps=6)

    first = trainer()
    train(*first, steps=3)
    manager = CheckpointManager(tmp_path)
    assert et.save(manager, 3, *first, force=True)
    torch.manual_seed(999)  # a restart: everything else differs
    np.random.seed(999)
    random.seed(999)

    resumed = trainer(seed=12345)
    assert et.restore(CheckpointManager(tmp_path), *resumed) == 3
    assert resumed[2].get_last_lr() == first[2].get_last_lr()
    train(*resumed, steps=3)
    for (name, a), (_, b) in zip(
        straight[0].state_dict().items(), resumed[0].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_file_holds_tensors_and_json_never_pickles(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer()
    train(model, optimizer, scheduler, steps=1)
    et.save(CheckpointManager(tmp_path), 1, model, optimizer, scheduler, force=True)
    with h5py.File(tmp_path / "ckpt-000001.h5") as f:
        manifest = json.loads(f["meta/tensors"].asstr()[()])
        stored = {f"/{t['path']}" for t in manifest}
        # the manifest names every dataset (its own, or the packed one of its dtype)
        assert stored == set(_datasets(f["tensors"])) | set(_datasets(f["packed"]))
        # numbers and strings only: no object, opaque or compound data to unpickle
        assert all(f[p].dtype.kind in "biufcO" for p in stored)
    names = {t["name"] for t in manifest}
    kinds = {t["name"]: t["kind"] for t in manifest}
    assert {"fc1.weight", "norm.running_mean", "norm.num_batches_tracked"} <= names
    assert {"optimizer/state/fc1.weight/exp_avg", "optimizer/state/fc1.weight/step"} <= names
    assert kinds["optimizer/param_groups"] == "str"
    assert kinds["lr_scheduler/state"] == "str"
    assert {"rng/torch", "rng/numpy/keys", "rng/python", "global_step"} <= names


def _datasets(group: h5py.Group) -> list[str]:
    found: list[str] = []
    group.visititems(
        lambda name, obj: found.append(obj.name) if isinstance(obj, h5py.Dataset) else None
    )
    return found


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    source = torch.nn.Module()
    values = (torch.randn(3, 5) * 10).to(dtype) if dtype != torch.bool else torch.rand(3, 5) > 0.5
    source.register_buffer("x", values)
    et.save(CheckpointManager(tmp_path), 1, source, force=True, rng=False)
    target = torch.nn.Module()
    target.register_buffer("x", torch.zeros(3, 5, dtype=dtype))
    assert et.restore(CheckpointManager(tmp_path), target, rng=False) == 1
    assert target.x.dtype == dtype
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    if dtype.is_complex:
        assert torch.equal(target.x, source.x)
    else:
        carrier = width[values.element_size()]
        assert torch.equal(target.x.view(carrier), source.x.view(carrier))


def test_bfloat16_is_recorded_as_bfloat16_and_readable_as_uint16(tmp_path: Path) -> None:
    source = torch.nn.Linear(2, 2).to(torch.bfloat16)
    et.save(CheckpointManager(tmp_path), 1, source, force=True, rng=False)
    meta = CheckpointManager(tmp_path).metadata()
    assert {s.name: s.dtype for s in meta.architecture.tensors}["weight"] == "bfloat16"
    record = {t.name: t for t in meta.tensors}["weight"]
    assert (record.kind, record.path, record.offset) == ("bits", "packed/uint16", 0)
    with h5py.File(tmp_path / "ckpt-000001.h5") as f:
        assert f["packed/uint16"].dtype == np.uint16
    et.save(CheckpointManager(tmp_path / "own", pack_max_bytes=0), 1, source, force=True, rng=False)
    with h5py.File(tmp_path / "own" / "ckpt-000001.h5") as f:
        dataset = f["tensors/weight:0"]  # a dataset of its own carries its dtype's name
        assert dataset.dtype == np.uint16
        assert dict(dataset.attrs) == {"dtype": "bfloat16"}
    float16 = torch.nn.Linear(2, 2).to(torch.float16)
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), float16, rng=False)
    assert "weight: dtype checkpoint bfloat16 vs model float16" in str(caught.value)


def test_a_changed_model_is_refused_with_every_tensor_listed(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer()
    et.save(
        CheckpointManager(tmp_path, experiment="base"), 5, model, optimizer, scheduler, force=True
    )
    wide = Net(hidden=32)
    before = copy.deepcopy(wide.state_dict())
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), wide, torch.optim.AdamW(wide.parameters()))
    lines = str(caught.value).splitlines()
    assert lines[0] == (
        f"checkpoint {tmp_path}/ckpt-000005.h5 (written by experiment base) does not match "
        "the model: 7 tensor differences"
    )
    assert lines[1:8] == [
        "  fc1.bias: checkpoint [16] vs model [32]",
        "  fc1.weight: checkpoint [16, 4] vs model [32, 4]",
        "  fc2.weight: checkpoint [3, 16] vs model [3, 32]",
        "  norm.bias: checkpoint [16] vs model [32]",
        "  norm.running_mean: checkpoint [16] vs model [32]",
        "  norm.running_var: checkpoint [16] vs model [32]",
        "  norm.weight: checkpoint [16] vs model [32]",
    ]
    assert not isinstance(caught.value, RuntimeError)  # not PyTorch's load_state_dict error
    for name, value in before.items():
        assert torch.equal(wide.state_dict()[name], value), name


def test_partial_restore_reports_what_it_skipped(tmp_path: Path) -> None:
    model, _, _ = trainer()
    et.save(CheckpointManager(tmp_path), 1, model, force=True, rng=False)
    wide = Net(hidden=32)
    manager = CheckpointManager(tmp_path)
    with pytest.warns(PartialRestoreWarning, match="2 tensors restored, 7 skipped"):
        assert et.restore(manager, wide, partial=True, rng=False) == 1
    assert torch.equal(wide.fc2.bias, model.fc2.bias)
    assert manager.last_restore is not None
    assert "fc1.weight: checkpoint [16, 4] vs model [32, 4]" in manager.last_restore.skipped


def test_async_save_and_close_save_the_last_step(tmp_path: Path) -> None:
    model, optimizer, scheduler = trainer()
    manager = CheckpointManager(tmp_path, async_save=True)
    for step in range(1, 4):
        train(model, optimizer, scheduler, steps=1)
        et.save(manager, step, model, optimizer, scheduler)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    manager.close()
    assert [c.step for c in manager.checkpoints()] == [1, 3]
    restored, opt, sched = trainer(seed=7)
    assert et.restore(CheckpointManager(tmp_path), restored, opt, sched) == 3
    for name, value in final.items():
        assert torch.equal(restored.state_dict()[name], value), name


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    model = torch.nn.Module()
    model.register_buffer("global_step", torch.zeros(1))
    with pytest.raises(expman_errors().UnsupportedStateError, match="reserves"):
        et.save(CheckpointManager(tmp_path), 1, model, force=True)


def expman_errors():  # type: ignore[no-untyped-def]
    import expman

    return expman


def test_the_torch_template_trains_and_resumes_through_the_cli(tmp_path: Path) -> None:
    from tests.cli import expman
    from tests.conftest import git

    project = tmp_path / "moons"
    env = {
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
    }
    assert expman(tmp_path, "init", "--template", "torch", str(project), env=env).returncode == 0
    git(project, "config", "user.name", "Ada")
    git(project, "config", "user.email", "ada@example.com")
    assert expman(project, "new", "base", "--set", "steps=100").returncode == 0
    first = expman(project, "run", "base")
    assert first.returncode == 0, first.stderr
    assert "no checkpoint: starting from step 0" in first.stdout
    second = expman(project, "run", "base")
    assert second.returncode == 0, second.stderr
    assert "restored step 100" in second.stdout
    accuracy = float(second.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9  # two moons are easy for an MLP; chance is 0.5
    steps = sorted(p.name for p in (project / ".expman/checkpoints/base").glob("ckpt-*.h5"))
    assert steps == ["ckpt-000001.h5", "ckpt-000100.h5", "ckpt-000200.h5"]


def test_a_required_torch_restore_with_no_checkpoint_raises_and_touches_nothing(
    tmp_path: Path,
) -> None:
    model = Net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(expman.CheckpointNotFoundError, match=r"^no checkpoint to restore in "):
        et.restore(CheckpointManager(tmp_path / "empty"), model, required=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
