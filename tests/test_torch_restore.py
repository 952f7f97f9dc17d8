"""expman.torch restores what training scripts carry, exactly, or refuses and changes nothing."""

from __future__ import annotations

import copy
import inspect
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if os.environ.get("CI"):
    import torch  # CI installs torch: these tests never skip there
else:
    torch = pytest.importorskip("torch")

import expman.torch as et
from expman import (
    ArchitectureMismatchError,
    CheckpointExistsError,
    CheckpointManager,
    CheckpointPolicy,
    FreshStateWarning,
    LastStepNotSavedWarning,
    PartialRestoreWarning,
    UnsupportedStateError,
    read_metadata,
)
from expman.checkpoints._format import PACK_MAX_BYTES
from expman.checkpoints._state import Bits
from tests.torch_models import GPT, nanogpt_optimizer

lr_scheduler = torch.optim.lr_scheduler


def file_values(directory: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of the latest checkpoint, read back without expman.torch."""
    manager = CheckpointManager(directory)
    names = [
        s.name
        for s in manager.metadata().architecture.tensors
        if s.dtype != "str" and "/" not in s.name and s.name != "global_step"
    ]
    values = manager.load(names=names)
    return {
        name: et._tensors.to_torch(v if isinstance(v, Bits | np.ndarray) else np.asarray(v))
        for name, v in values.items()
    }


def assert_restored_from_file(model: torch.nn.Module, directory: Path) -> None:
    """Restore copied every tensor: each one equals the file, whatever its device or layout."""
    stored = file_values(directory)
    state = et._tensors.unwrap(model).state_dict()
    assert sorted(stored) == sorted(k for k in state if not k.endswith("_extra_state"))
    for name, value in stored.items():
        assert torch.equal(state[name].cpu(), value), name


# -- silent wrong restores ----------------------------------------------------------


class Strided(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3).t())  # transposed: not contiguous
        self.register_buffer("every_other", torch.randn(4, 10)[:, ::2])  # strided view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_non_contiguous_parameters_and_buffers_are_restored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Strided()
    et.save(CheckpointManager(tmp_path), 1, source, force=True, rng=False)
    torch.manual_seed(1)
    target = Strided()
    assert not target.weight.is_contiguous() and not target.every_other.is_contiguous()
    assert not torch.equal(target.weight, source.weight)
    manager = CheckpointManager(tmp_path)
    et.restore(manager, target, rng=False)
    assert torch.equal(target.weight, source.weight)
    assert torch.equal(target.every_other, source.every_other)
    assert not target.weight.is_contiguous()  # restored in place: the same tensor, same layout
    assert manager.last_restore is not None
    assert sorted(manager.last_restore.restored) == ["every_other", "weight"]
    assert_restored_from_file(target, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_model_on_the_gpu_is_restored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = GPT().cuda()
    optimizer = nanogpt_optimizer(source)
    source(torch.randint(0, 64, (2, 8)).cuda(), torch.randint(0, 64, (2, 8)).cuda()).backward()
    optimizer.step()
    et.save(CheckpointManager(tmp_path), 1, source, optimizer, force=True)
    torch.manual_seed(1)
    target = GPT().cuda()
    target_optimizer = nanogpt_optimizer(target)
    et.restore(CheckpointManager(tmp_path), target, target_optimizer)
    assert all(t.is_cuda for t in target.state_dict().values())
    assert_restored_from_file(target, tmp_path)
    exp_avg = target_optimizer.state[target.lm_head.weight]["exp_avg"]
    assert exp_avg.is_cuda
    assert torch.equal(exp_avg, optimizer.state[source.lm_head.weight]["exp_avg"])


def make_scheduler(name: str, optimizer: torch.optim.Optimizer) -> Any:
    """One of each scheduler of torch.optim.lr_scheduler, with arguments that move the LR."""
    cls = getattr(lr_scheduler, name)
    made: dict[str, Any] = {
        "LambdaLR": lambda: cls(optimizer, lambda e: 0.9**e),
        "MultiplicativeLR": lambda: cls(optimizer, lambda e: 0.95),
        "StepLR": lambda: cls(optimizer, step_size=3, gamma=0.5),
        "MultiStepLR": lambda: cls(optimizer, milestones=[4, 8, 12, 18, 26], gamma=0.5),
        "ConstantLR": lambda: cls(optimizer, factor=0.5, total_iters=6),
        "LinearLR": lambda: cls(optimizer, start_factor=0.2, total_iters=15),
        "ExponentialLR": lambda: cls(optimizer, gamma=0.9),
        "SequentialLR": lambda: cls(
            optimizer,
            [
                lr_scheduler.LinearLR(optimizer, 0.2, total_iters=4),
                lr_scheduler.StepLR(optimizer, 3),
            ],
            milestones=[5],
        ),
        "PolynomialLR": lambda: cls(optimizer, total_iters=25, power=2.0),
        "CosineAnnealingLR": lambda: cls(optimizer, T_max=12),
        "ChainedScheduler": lambda: cls(
            [lr_scheduler.ConstantLR(optimizer, 0.5, 4), lr_scheduler.ExponentialLR(optimizer, 0.9)]
        ),
        "ReduceLROnPlateau": lambda: cls(optimizer, patience=1, factor=0.5),
        "CyclicLR": lambda: cls(optimizer, 0.01, 0.1, step_size_up=4),
        "OneCycleLR": lambda: cls(optimizer, 0.1, total_steps=40),
        "CosineAnnealingWarmRestarts": lambda: cls(optimizer, T_0=4, T_mult=2),
    }
    return made[name]()


SCHEDULERS = sorted(
    name
    for name in lr_scheduler.__all__
    if inspect.isclass(getattr(lr_scheduler, name)) and name != "LRScheduler"
)


def scheduled(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.9, 0.99))
    return model, optimizer, make_scheduler(name, optimizer)


def step_lrs(
    optimizer: torch.optim.Optimizer, scheduler: Any, steps: int, start: int
) -> list[float]:
    lrs = []
    for step in range(start, start + steps):
        optimizer.step()
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(1.0)  # a plateau: the LR is reduced after each patience
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        del step
    return lrs


def same_types(a: Any, b: Any, where: str = "state") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert type(key) is type(next(k for k in b if k == key)), f"{where} key {key!r}"
            same_types(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_types(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_resumes_with_its_exact_state(tmp_path: Path, name: str) -> None:
    model, optimizer, scheduler = scheduled(name)
    step_lrs(optimizer, scheduler, 10, 0)
    et.save(CheckpointManager(tmp_path), 10, model, optimizer, scheduler, force=True)
    expected = step_lrs(optimizer, scheduler, 20, 10)  # the uninterrupted run

    model2, optimizer2, scheduler2 = scheduled(name)
    assert et.restore(CheckpointManager(tmp_path), model2, optimizer2, scheduler2) == 10
    _, reference_optimizer, reference = scheduled(name)
    step_lrs(reference_optimizer, reference, 10, 0)
    same_types(scheduler2.state_dict(), reference.state_dict())
    same_types(
        optimizer2.state_dict()["param_groups"], reference_optimizer.state_dict()["param_groups"]
    )
    assert step_lrs(optimizer2, scheduler2, 20, 10) == expected


def test_multistep_lr_keeps_decaying_after_resume(tmp_path: Path) -> None:
    model, optimizer, scheduler = scheduled("MultiStepLR")
    step_lrs(optimizer, scheduler, 5, 0)
    et.save(CheckpointManager(tmp_path), 5, model, optimizer, scheduler, force=True)
    model2, optimizer2, scheduler2 = scheduled("MultiStepLR")
    et.restore(CheckpointManager(tmp_path), model2, optimizer2, scheduler2)
    # Milestones 8 and 12 decay the LR again (today the Counter's keys come back as
    # strings, and the LR stays at 0.05 for ever).
    assert (
        step_lrs(optimizer2, scheduler2, 8, 5)
        == [0.05, 0.05, 0.025, 0.025] + [0.025] * 2 + [0.0125] * 2
    )


def counting_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_close_does_not_label_a_later_state_with_the_last_step(tmp_path: Path) -> None:
    model, optimizer = counting_model()
    manager = CheckpointManager(tmp_path)
    for step in range(1, 6):
        one_step(model, optimizer)
        et.save(manager, step, model, optimizer)
    model.half()  # an fp16 export after the loop
    with pytest.warns(LastStepNotSavedWarning, match=r"step 5 was not saved at close\(\)"):
        manager.close()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.h5")) == ["ckpt-000001.h5"]


def test_save_last_writes_the_state_of_the_last_step(tmp_path: Path) -> None:
    model, optimizer = counting_model()
    manager = CheckpointManager(tmp_path)
    for step in range(1, 6):
        one_step(model, optimizer)
        et.save(manager, step, model, optimizer, last=step == 5)
    at_step_5 = copy.deepcopy(model.state_dict())
    model.half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager.close()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.h5")) == [
        "ckpt-000001.h5",
        "ckpt-000005.h5",
    ]
    restored, _ = counting_model()
    assert et.restore(CheckpointManager(tmp_path), restored) == 5
    for name, value in at_step_5.items():
        assert torch.equal(restored.state_dict()[name], value), name


def test_close_still_saves_an_unchanged_last_step(tmp_path: Path) -> None:
    model, optimizer = counting_model()
    manager = CheckpointManager(tmp_path)
    for step in range(1, 4):
        one_step(model, optimizer)
        et.save(manager, step, model, optimizer)
    manager.close()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.h5")) == [
        "ckpt-000001.h5",
        "ckpt-000003.h5",
    ]


# -- the guard covers everything restored; a refusal changes nothing ------------------


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Any:
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        copy.deepcopy(scheduler.state_dict()),
        torch.get_rng_state().clone(),
        random.getstate(),
        np.random.get_state()[1].copy(),
    )


def assert_unchanged(before: Any, after: Any) -> None:
    for (name, a), b in zip(before[0].items(), after[0].values(), strict=True):
        assert torch.equal(a, b), name
    assert str(before[1]) == str(after[1])
    assert before[2] == after[2]
    assert torch.equal(before[3], after[3])
    assert before[4] == after[4]
    assert np.array_equal(before[5], after[5])


def trained_adamw(tmp_path: Path) -> None:
    model, optimizer = counting_model()
    scheduler = lr_scheduler.StepLR(optimizer, 2)
    one_step(model, optimizer)
    scheduler.step()
    et.save(CheckpointManager(tmp_path), 1, model, optimizer, scheduler, force=True)


def test_adamw_state_is_refused_by_sgd_and_nothing_changes(tmp_path: Path) -> None:
    trained_adamw(tmp_path)
    torch.manual_seed(5)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = lr_scheduler.ExponentialLR(optimizer, 0.5)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), model, optimizer, scheduler)
    assert str(caught.value).splitlines()[:3] == [
        f"checkpoint {tmp_path}/ckpt-000001.h5 does not match the model: 2 other differences",
        "  optimizer: class checkpoint torch.optim.adamw.AdamW vs optimizer torch.optim.sgd.SGD",
        "  lr_scheduler: class checkpoint torch.optim.lr_scheduler.StepLR vs scheduler "
        "torch.optim.lr_scheduler.ExponentialLR",
    ]
    assert_unchanged(before, snapshot(model, optimizer, scheduler))


def test_different_parameter_groups_are_listed_with_the_model_differences(tmp_path: Path) -> None:
    trained_adamw(tmp_path)
    model = torch.nn.Linear(4, 3)  # one more output: weight and bias change shape
    optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}])
    scheduler = lr_scheduler.StepLR(optimizer, 2)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), model, optimizer, scheduler)
    assert str(caught.value).splitlines()[:-1] == [
        f"checkpoint {tmp_path}/ckpt-000001.h5 does not match the model: 2 tensor "
        "differences, 2 other differences",
        "  bias: checkpoint [2] vs model [3]",
        "  weight: checkpoint [2, 4] vs model [3, 4]",
        "  optimizer: 1 parameter groups in the checkpoint, 2 in the optimizer",
        "  optimizer: parameter group 0: not in the optimizer: bias",
    ]
    assert_unchanged(before, snapshot(model, optimizer, scheduler))


def test_an_optimizer_missing_a_parameter_is_refused(tmp_path: Path) -> None:
    trained_adamw(tmp_path)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW([model.weight])  # bias frozen
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), model, optimizer)
    assert str(caught.value).splitlines()[1:] == [
        "  optimizer: parameter group 0: not in the optimizer: bias",
        "  optimizer: state for bias in the checkpoint, which the optimizer does not train",
        "to proceed: restore only the matching tensors with a partial restore "
        "(partial=True, or expman run --partial), or start a new experiment "
        "for the changed model (expman new NAME)",
    ]


def test_a_checkpoint_without_optimizer_warns_what_starts_fresh(tmp_path: Path) -> None:
    model, optimizer = counting_model()
    et.save(CheckpointManager(tmp_path), 1, model, force=True)
    scheduler = lr_scheduler.StepLR(optimizer, 2)
    with pytest.warns(FreshStateWarning) as caught:
        et.restore(CheckpointManager(tmp_path), model, optimizer, scheduler, extra={"c": {}})
    assert str(caught[0].message) == (
        f"checkpoint {tmp_path}/ckpt-000001.h5 has no state for the optimizer, the LR "
        "scheduler, extra state 'c': they start fresh"
    )


# -- partial restore with an optimizer --------------------------------------------------


class Mlp(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(2, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_partial_restore_restores_optimizer_state_only_where_shapes_match(tmp_path: Path) -> None:
    torch.manual_seed(0)
    narrow = Mlp(32)
    optimizer = torch.optim.AdamW(narrow.parameters())
    narrow(torch.randn(8, 2)).sum().backward()
    optimizer.step()
    et.save(CheckpointManager(tmp_path), 1, narrow, optimizer, force=True)

    wide = Mlp(64)
    wide_optimizer = torch.optim.AdamW(wide.parameters())
    manager = CheckpointManager(tmp_path)
    with pytest.warns(PartialRestoreWarning, match="1 tensors restored, 6 skipped"):
        et.restore(manager, wide, wide_optimizer, partial=True)
    assert manager.last_restore is not None
    assert manager.last_restore.skipped[-1] == (
        "optimizer: state starts fresh for fc1.weight, fc1.bias, fc2.weight, fc2.bias, out.weight"
    )
    assert torch.equal(
        wide_optimizer.state[wide.out.bias]["exp_avg"], optimizer.state[narrow.out.bias]["exp_avg"]
    )
    assert wide.fc1.weight not in wide_optimizer.state
    wide(torch.randn(8, 2)).sum().backward()
    wide_optimizer.step()  # today: "The size of tensor a (32) must match ... (64)"


def test_the_torch_template_warm_starts_a_wider_model_with_partial(tmp_path: Path) -> None:
    from tests.cli import expman
    from tests.conftest import git

    project = tmp_path / "moons"
    assert expman(tmp_path, "init", "--template", "torch", str(project)).returncode == 0
    git(project, "config", "user.name", "Ada")
    git(project, "config", "user.email", "ada@example.com")
    assert expman(project, "new", "base", "--set", "steps=20").returncode == 0
    assert expman(project, "run", "base").returncode == 0
    new = expman(project, "new", "wide", "--from", "base", "--set", "model.hidden_units=[64,64]")
    assert new.returncode == 0, new.stderr
    refused = expman(project, "run", "wide", "--from-checkpoint", "base")
    assert refused.returncode == 3, refused.stderr
    run = expman(project, "run", "wide", "--from-checkpoint", "base", "--partial")
    assert run.returncode == 0, run.stderr
    assert "restored step 20" in run.stdout
    assert "step 40: test accuracy" in run.stdout
    assert (
        "optimizer: state starts fresh for 0.weight, 0.bias, 2.weight, 2.bias, 4.weight"
        in run.stderr
    )


# -- wrappers, extra state, tied tensors -----------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_and_wrapped_models_save_canonical_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = Mlp(8)
    compiled = torch.compile(plain)
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    et.save(CheckpointManager(tmp_path / "a"), 1, compiled, force=True, rng=False)
    names = [s.name for s in CheckpointManager(tmp_path / "a").metadata().architecture.tensors]
    assert "fc1.weight" in names and not any("_orig_mod" in n for n in names)

    torch.manual_seed(1)
    wrapped = torch.nn.DataParallel(Mlp(8))
    assert next(iter(wrapped.state_dict())).startswith("module.")
    et.restore(CheckpointManager(tmp_path / "a"), wrapped, rng=False)
    assert torch.equal(wrapped.module.fc1.weight, plain.fc1.weight)

    et.save(CheckpointManager(tmp_path / "b"), 1, wrapped, force=True, rng=False)
    torch.manual_seed(2)
    again = torch.compile(Mlp(8))
    optimizer = torch.optim.AdamW(again.parameters())
    et.restore(CheckpointManager(tmp_path / "b"), again, rng=False)
    assert torch.equal(again._orig_mod.fc2.bias, plain.fc2.bias)
    del optimizer


class WithExtraState(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.calibration: dict[str, Any] = {"scale": 1.0, "seen": 0, "window": (1, 2)}

    def get_extra_state(self) -> Any:
        return {**self.calibration, "amax": torch.full((3,), float(self.calibration["seen"]))}

    def set_extra_state(self, state: Any) -> None:
        self.calibration = {k: v for k, v in state.items() if k != "amax"}
        self.amax = state["amax"]


def test_extra_state_beside_the_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithExtraState()
    model.calibration = {"scale": 0.5, "seen": 7, "window": (3, 4)}
    ema = copy.deepcopy(model.fc)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sampler = torch.Generator().manual_seed(42)
    sampler_draws = torch.randperm(10, generator=sampler)
    counters = {"best_val_loss": torch.tensor(1.25), "iter_num": 300, "eval": np.float32(0.5)}
    extra = {"ema": ema, "scaler": scaler, "sampler": sampler, "counters": counters}
    et.save(CheckpointManager(tmp_path), 300, model, extra=extra, force=True)
    expected_draws = torch.randperm(10, generator=sampler)

    torch.manual_seed(1)
    model2 = WithExtraState()
    ema2 = torch.nn.Linear(2, 2)
    scaler2 = torch.amp.GradScaler("cpu")
    sampler2 = torch.Generator().manual_seed(0)
    counters2: dict[str, Any] = {"best_val_loss": torch.tensor(1e9), "iter_num": 0, "eval": 0.0}
    extra2 = {"ema": ema2, "scaler": scaler2, "sampler": sampler2, "counters": counters2}
    et.restore(CheckpointManager(tmp_path), model2, extra=extra2)
    assert model2.calibration == {"scale": 0.5, "seen": 7, "window": (3, 4)}
    assert torch.equal(model2.amax, torch.full((3,), 7.0))
    assert torch.equal(ema2.weight, ema.weight)
    assert scaler2.state_dict() == scaler.state_dict()
    assert torch.equal(torch.randperm(10, generator=sampler2), expected_draws)
    assert counters2 == {"best_val_loss": torch.tensor(1.25), "iter_num": 300, "eval": 0.5}
    assert type(counters2["eval"]) is np.float32
    del sampler_draws


def test_read_extra_gives_an_extra_state_back_as_a_value(tmp_path: Path) -> None:
    from expman import CheckpointNotFoundError

    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as caught:
        et.read_extra(manager, "loop")
    assert str(caught.value) == f"{tmp_path} has no checkpoint yet"
    loop = {"epoch": 3, "seen": {0: (1, None)}, "scores": torch.arange(3.0)}
    et.save(manager, 1, torch.nn.Linear(2, 2), extra={"loop": loop}, force=True)
    et.save(manager, 2, torch.nn.Linear(2, 2), extra={"loop": {"epoch": 4}}, force=True)

    assert et.read_extra(manager, "loop") == {"epoch": 4}
    value = et.read_extra(manager, "loop", step=1)
    assert value["seen"] == {0: (1, None)} and torch.equal(value["scores"], torch.arange(3.0))
    with pytest.raises(CheckpointNotFoundError) as caught:
        et.read_extra(manager, "ema")
    assert str(caught.value) == (
        f"checkpoint {tmp_path / 'ckpt-000002.h5'} has no extra state 'ema': it was saved "
        "without extra={'ema': ...}"
    )


def test_extra_state_is_checked_by_the_guard(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    et.save(CheckpointManager(tmp_path), 1, model, extra={"ema": torch.nn.Linear(2, 2)}, force=True)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), model, extra={"ema": torch.nn.Linear(2, 3)})
    assert str(caught.value).splitlines()[1:3] == [
        "  extra ema: bias: checkpoint [2] vs model [3]",
        "  extra ema: weight: checkpoint [2, 2] vs model [3, 2]",
    ]
    assert torch.equal(model.weight, before["weight"])


def test_tied_weights_are_stored_once_and_restored_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=4096, n_embd=64)
    et.save(CheckpointManager(tmp_path), 1, model, force=True, rng=False)
    tied = model.lm_head.weight.nbytes  # 1 MiB
    stored = sum(t.nbytes for t in model.state_dict().values()) - tied
    assert stored < (tmp_path / "ckpt-000001.h5").stat().st_size < stored + tied // 4
    torch.manual_seed(1)
    restored = GPT(vocab_size=4096, n_embd=64)
    et.restore(CheckpointManager(tmp_path), restored, rng=False)
    assert restored.lm_head.weight is restored.transformer.wte.weight
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)
    assert_restored_from_file(restored, tmp_path)


def test_a_tied_checkpoint_is_refused_by_an_untied_model(tmp_path: Path) -> None:
    et.save(CheckpointManager(tmp_path), 1, GPT(), force=True, rng=False)
    untied = GPT()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"  lm_head\.weight: tied to transformer\.wte\.weight in the checkpoint, not in",
    ):
        et.restore(CheckpointManager(tmp_path), untied, rng=False)


# -- metrics, two writers --------------------------------------------------------------


def test_metrics_are_converted_or_refused_at_the_save_call(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path, policy=CheckpointPolicy(save_first_step=False))
    with pytest.raises(UnsupportedStateError) as caught:
        et.save(manager, 1, model, metrics={"loss": [0.5]})  # the policy writes nothing here
    assert str(caught.value) == (
        "metric 'loss' is a builtins.list; metrics are numbers: give an int, a float, a numpy "
        "scalar or a 0-d tensor (loss.item())"
    )
    metrics = {"loss": torch.tensor(0.25), "acc": np.float32(0.5), "n": np.int64(3)}
    et.save(manager, 2, model, metrics=metrics, force=True)
    assert CheckpointManager(tmp_path).metadata().metrics == {"loss": 0.25, "acc": 0.5, "n": 3}


def test_a_second_writer_never_replaces_a_committed_checkpoint(tmp_path: Path) -> None:
    first, second = CheckpointManager(tmp_path), CheckpointManager(tmp_path)
    et.save(first, 5, torch.nn.Linear(2, 2), force=True)
    committed = (tmp_path / "ckpt-000005.h5").read_bytes()
    with pytest.raises(CheckpointExistsError) as caught:
        et.save(second, 5, torch.nn.Linear(2, 2), force=True)
    assert str(caught.value) == (
        f"cannot save step 5: another process committed {tmp_path}/ckpt-000005.h5 meanwhile "
        "(two writers in one checkpoint directory); committed checkpoints are never replaced: "
        "let one process write (under torch.distributed, rank 0)"
    )
    assert (tmp_path / "ckpt-000005.h5").read_bytes() == committed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- real models resume bit for bit ---------------------------------------------------


def gpt_trainer(kind: str, seed: int, compiled: bool) -> tuple[Any, ...]:
    """A GPT as nanoGPT or Hugging Face build it (random weights), AdamW, GradScaler, schedule."""
    torch.manual_seed(seed)
    if kind == "nanogpt":
        model: torch.nn.Module = GPT()
    else:
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=64,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config)
    optimizer = nanogpt_optimizer(model)
    scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # backend="eager": the same OptimizedModule wrapper and names, without a C compiler.
    wrapped = torch.compile(model, backend="eager") if compiled else model
    return wrapped, optimizer, scheduler, scaler


def gpt_steps(kind: str, parts: tuple[Any, ...], steps: int) -> None:
    model, optimizer, scheduler, scaler = parts
    model.train()
    for _ in range(steps):
        x, y = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
        loss = model(x, y) if kind == "nanogpt" else model(input_ids=x, labels=y).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# Raised by dynamo while tracing transformers' loss (torch's own code, not expman's).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
@pytest.mark.parametrize("kind", ["nanogpt", "gpt2"])
@pytest.mark.parametrize(
    ("saved", "restored"), [("plain", "plain"), ("compiled", "plain"), ("plain", "compiled")]
)
def test_gpt_models_resume_bit_for_bit(
    tmp_path: Path, kind: str, saved: str, restored: str
) -> None:
    straight = gpt_trainer(kind, 0, compiled=False)
    gpt_steps(kind, straight, 6)

    first = gpt_trainer(kind, 0, compiled=saved == "compiled")
    gpt_steps(kind, first, 3)
    model, optimizer, scheduler, scaler = first
    et.save(
        CheckpointManager(tmp_path),
        3,
        model,
        optimizer,
        scheduler,
        extra={"scaler": scaler},
        force=True,
    )
    torch.manual_seed(999)

    resumed = gpt_trainer(kind, 12345, compiled=restored == "compiled")
    model, optimizer, scheduler, scaler = resumed
    manager = CheckpointManager(tmp_path)
    assert et.restore(manager, model, optimizer, scheduler, extra={"scaler": scaler}) == 3
    assert_restored_from_file(model, tmp_path)
    gpt_steps(kind, resumed, 3)
    expected = et._tensors.unwrap(straight[0]).state_dict()
    for name, value in et._tensors.unwrap(model).state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert resumed[3].state_dict() == straight[3].state_dict()
    assert resumed[2].state_dict() == straight[2].state_dict()


@pytest.mark.parametrize("pack_max_bytes", [PACK_MAX_BYTES, 0], ids=["packed", "datasets"])
def test_the_documented_recipe_loads_weights_without_expman(
    tmp_path: Path, pack_max_bytes: int
) -> None:
    import re
    import subprocess
    import sys

    doc = (Path(__file__).parent.parent / "docs" / "checkpoint-format.md").read_text()
    section = doc.split("## Loading model weights without expman")[1]
    recipe = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    torch.manual_seed(0)
    model = GPT()
    model.transformer.h[0].ln_1.to(torch.bfloat16)  # one bfloat16 module
    optimizer = nanogpt_optimizer(model)
    manager = CheckpointManager(tmp_path, pack_max_bytes=pack_max_bytes)
    et.save(manager, 7, model, optimizer, force=True)
    torch.save(model.state_dict(), tmp_path / "reference.pt")
    paths = {t.path.split("/")[0] for t in read_metadata(tmp_path / "ckpt-000007.h5").tensors}
    assert paths == ({"packed", "tensors"} if pack_max_bytes else {"tensors"})
    models = (Path(__file__).parent / "torch_models.py").read_text()
    check = f"""
import sys
sys.modules["expman"] = None  # importing expman fails from here on
{models}
{recipe}
torch.manual_seed(1)
model = GPT()
model.transformer.h[0].ln_1.to(torch.bfloat16)
loaded = load_weights({str(tmp_path / "ckpt-000007.h5")!r}, model)
reference = torch.load({str(tmp_path / "reference.pt")!r}, weights_only=True)
assert sorted(loaded) == sorted(reference), sorted(set(loaded) ^ set(reference))
for name, value in model.state_dict().items():
    assert torch.equal(value, reference[name]), name
assert model.lm_head.weight is model.transformer.wte.weight
print("loaded", len(loaded))
"""
    script = tmp_path / "recipe.py"
    script.write_text(check.replace("from __future__ import annotations\n", ""))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loaded {len(model.state_dict())}"


# -- found trying nanoGPT's train.py ----------------------------------------------------------


def test_a_counter_saved_as_a_tensor_and_restored_as_a_float_is_named_as_such(
    tmp_path: Path,
) -> None:
    model = torch.nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path)
    et.save(manager, 1, model, extra={"counters": {"best": torch.tensor(1.5)}}, last=True)
    manager.close()
    with pytest.raises(ArchitectureMismatchError) as caught:
        et.restore(CheckpointManager(tmp_path), model, extra={"counters": {"best": 1e9}})
    assert str(caught.value).splitlines()[1] == (
        "  extra counters: best: a tensor [] float32 in the checkpoint, a float here: give it "
        "the type it was saved with"
    )


def test_saving_again_at_the_step_just_restored_writes_nothing(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path)
    et.save(manager, 20, model, force=True)
    manager.close()
    written = (tmp_path / "ckpt-000020.h5").read_bytes()
    resumed = CheckpointManager(tmp_path)
    step = et.restore(resumed, model)
    assert (step, et.save(resumed, step, model, force=True)) == (20, False)
    resumed.close()
    assert (tmp_path / "ckpt-000020.h5").read_bytes() == written
