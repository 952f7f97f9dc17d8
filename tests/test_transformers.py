"""expman.transformers: Hugging Face's Trainer saving and resuming through expman."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded: the model is built from a config

if os.environ.get("CI"):
    import transformers  # CI installs the extra: these tests never skip there
else:
    transformers = pytest.importorskip("transformers")

import torch

from expman import ArchitectureMismatchError, CheckpointManager
from expman.transformers import ExpmanTrainer, retention_policy


def gpt2(seed: int, n_embd: int = 64) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=n_embd, n_head=2, vocab_size=128, n_positions=64
    )
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, count: int) -> None:
        self.ids = torch.randint(0, 128, (count, 16), generator=torch.Generator().manual_seed(5))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class StopAt(transformers.TrainerCallback):  # type: ignore[misc]
    """An interruption: training stops after ``step`` of a longer schedule."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def trainer(
    root: Path,
    model: Any,
    max_steps: int,
    stop_at: int | None = None,
    eval_dataset: Any = None,
    **options: Any,
) -> ExpmanTrainer:
    args = transformers.TrainingArguments(
        output_dir=str(root),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        save_strategy="steps",
        save_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **options,
    )
    callbacks = [StopAt(stop_at)] if stop_at else []
    return ExpmanTrainer(
        model=model,
        args=args,
        train_dataset=Tokens(32),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


def test_saves_through_expman_and_resumes_exactly(tmp_path: Path) -> None:
    straight = gpt2(0)
    trainer(tmp_path / "a", straight, 12).train()

    first = gpt2(0)
    trainer(tmp_path / "b", first, 12, stop_at=8).train()
    directory = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in directory.glob("ckpt-*")) == ["ckpt-000004.h5", "ckpt-000008.h5"]
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith("checkpoint-")]

    resumed = gpt2(3)
    again = trainer(tmp_path / "b", resumed, 12)
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 12
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    events = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    assert {"loss", "learning_rate"} <= {k for e in events for k in e["metrics"]}
    assert CheckpointManager(directory).latest().step == 12  # type: ignore[union-attr]


def test_a_changed_model_is_refused(tmp_path: Path) -> None:
    trainer(tmp_path, gpt2(0), 4).train()
    wide = gpt2(1, n_embd=32)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(ArchitectureMismatchError) as caught:
        trainer(tmp_path, wide, 8).train(resume_from_checkpoint=True)
    assert str(caught.value).startswith(
        f"checkpoint {tmp_path / 'checkpoints' / 'ckpt-000004.h5'} does not match the model: "
    )
    assert "transformer.wte.weight: checkpoint [128, 64] vs model [128, 32]" in str(caught.value)
    for name, value in wide.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_save_total_limit_and_best_model_are_retention(tmp_path: Path) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        eval_strategy="steps",
        save_strategy="steps",
        report_to=[],
    )
    policy = retention_policy(args)
    assert (policy.keep_max, policy.keep_best, policy.best_metric, policy.best_mode) == (
        2,
        1,
        "eval_loss",
        "min",
    )
    assert retention_policy(transformers.TrainingArguments(str(tmp_path))).keep_max is None


def with_scaler(run: ExpmanTrainer) -> ExpmanTrainer:
    """The GradScaler that fp16 training on a GPU gets, on the CPU.

    On the CPU, accelerate makes no scaler for ``fp16=True``; the trainer uses
    one it is given through the same calls (``scale``, ``unscale_``, ``step``,
    ``update``), so a CPU GradScaler stands in for the GPU's.
    """
    run.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    return run


def test_the_fp16_grad_scaler_is_saved_and_resumed(tmp_path: Path) -> None:
    straight = with_scaler(trainer(tmp_path / "a", gpt2(0), 12))
    straight.train()
    first = with_scaler(trainer(tmp_path / "b", gpt2(0), 12, stop_at=8))
    first.train()
    assert first.accelerator.scaler.state_dict()["scale"] == 2.0**12  # grown at steps 3 and 6

    resumed = with_scaler(trainer(tmp_path / "b", gpt2(3), 12))
    resumed.train(resume_from_checkpoint=True)
    assert resumed.accelerator.scaler.state_dict() == straight.accelerator.scaler.state_dict()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


class BestAtStart(transformers.TrainerCallback):  # type: ignore[misc]
    """What the trainer's state says is the best checkpoint as training (re)starts."""

    found: str | None = "not called"

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.found = state.best_model_checkpoint


@pytest.mark.parametrize("interrupted", [False, True])
def test_load_best_model_at_end_restores_the_best_checkpoint(
    tmp_path: Path, interrupted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The highest eval loss is "best" here, so that the best checkpoint (step 4)
    # is not the last one and loading it is visible in the weights.
    options: dict[str, Any] = dict(
        eval_strategy="steps",
        eval_steps=4,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
    )

    def run(model: Any, **more: Any) -> ExpmanTrainer:
        return trainer(tmp_path, model, 12, eval_dataset=Tokens(8), **options, **more)

    if interrupted:
        run(gpt2(0), stop_at=8).train()
    last = run(gpt2(1))
    at_start = BestAtStart()
    last.add_callback(at_start)
    last.train(resume_from_checkpoint=True)

    directory = tmp_path / "checkpoints"
    # save_total_limit=1: the newest, the best, and the one a run resumed from.
    kept = ["ckpt-000004.h5", *(["ckpt-000008.h5"] if interrupted else [])]
    assert sorted(p.name for p in directory.glob("ckpt-*")) == [*kept, "ckpt-000012.h5"]
    assert last.state.best_global_step == 4
    assert last.state.best_model_checkpoint == str(directory / "ckpt-000004.h5")
    assert at_start.found == (str(directory / "ckpt-000004.h5") if interrupted else None)
    assert "does not exist anymore" not in caplog.text
    best = gpt2(2)
    expman_torch_restore(CheckpointManager(directory), best, step=4)
    for (name, a), b in zip(
        best.state_dict().items(), last.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def expman_torch_restore(manager: CheckpointManager, model: Any, *, step: int) -> None:
    import expman.torch

    expman.torch.restore(manager, model, step=step, rng=False)


def test_the_hf_template_trains_resumes_and_refuses_a_wider_model(tmp_path: Path) -> None:
    from tests.cli import expman, scaffold
    from tests.conftest import git

    project = scaffold(tmp_path, "hf")
    new = expman(project, "new", "base", "--set", "steps=10", "--set", "save_steps=5")
    assert new.returncode == 0, new.stderr
    first = expman(project, "run", "base")
    assert first.returncode == 0, first.stderr
    assert "no checkpoint: starting from step 0" in first.stdout
    second = expman(project, "run", "base")
    assert second.returncode == 0, second.stderr
    assert "resuming at step 10" in second.stdout
    assert "step 20: eval loss" in second.stdout
    directory = project / ".expman" / "checkpoints" / "base"
    # save_total_limit=2: the 2 newest, and the one run 2 resumed from.
    steps = ["ckpt-000010.h5", "ckpt-000015.h5", "ckpt-000020.h5"]
    assert sorted(p.name for p in directory.glob("ckpt-*")) == steps
    assert not [p for p in project.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert not list(project.rglob("checkpoint-*"))
    names = {t.name for t in CheckpointManager(directory).metadata().architecture.tensors}
    assert {"transformer.wte.weight", "optimizer/class", "extra/trainer_state"} <= names

    wide = expman(project, "new", "wide", "--from", "base", "--set", "model.n_embd=64")
    assert wide.returncode == 0, wide.stderr
    refused = expman(project, "run", "wide", "--from-checkpoint", "base")
    assert refused.returncode == 3, refused.stderr
    commit = git(project, "rev-parse", "--short=12", "exp/base~1").strip()
    assert (
        f"expman: checkpoint {directory / 'ckpt-000020.h5'} (written by experiment base, "
        f"commit {commit}) does not match the model: 29 tensor differences\n"
        "  lm_head.weight: checkpoint [64, 32] vs model [64, 64]\n"
    ) in refused.stderr
    assert "  transformer.wte.weight: checkpoint [64, 32] vs model [64, 64]\n" in refused.stderr
    assert "refused (exit 3): architecture differs from base@20" in refused.stderr
    assert not list((project / ".expman" / "checkpoints" / "wide").glob("ckpt-*"))
