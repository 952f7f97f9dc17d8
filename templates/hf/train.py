"""A tiny GPT-2 learning to count, trained by Hugging Face's Trainer through expman.

    python train.py            # train params["steps"] more steps, resuming the latest checkpoint

ExpmanTrainer is a transformers.Trainer whose checkpoints are expman HDF5
files in the run's checkpoint directory (no checkpoint-N folders, nothing
pickled); train(resume_from_checkpoint=True) resumes the latest one, model,
optimizer, schedule, trainer state and random generators, only if the model
is the same. The model is built from a config in code and the data is
generated (no download): each sequence counts up from a random token,
modulo the vocabulary, so the next token is always the last one plus one.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to download: set before the import

import torch
import transformers

import expman
from expman.transformers import ExpmanTrainer


class Counting(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Sequences ``s, s+1, s+2, ...`` (mod ``vocab_size``) from random starts ``s``."""

    def __init__(self, count: int, length: int, vocab_size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, vocab_size, (count, 1), generator=generator)
        self.ids = (starts + torch.arange(length)) % vocab_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def main() -> None:
    params = expman.params()
    model_params = params["model"]
    transformers.set_seed(params["seed"])
    config = transformers.GPT2Config(
        n_layer=model_params["n_layer"],
        n_embd=model_params["n_embd"],
        n_head=model_params["n_head"],
        vocab_size=model_params["vocab_size"],
        n_positions=params["length"],
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    vocab = model_params["vocab_size"]
    args = transformers.TrainingArguments(
        output_dir="hf-output",  # holds nothing: the checkpoints are expman's
        max_steps=params["steps"],
        per_device_train_batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=5,
        save_strategy="steps",
        save_steps=params["save_steps"],
        save_total_limit=2,  # expman's retention: the 2 newest (and the one resumed from)
        eval_strategy="steps",
        eval_steps=params["save_steps"],
        logging_steps=params["save_steps"],
        report_to=[],  # metrics go to expman.log_metrics (events.jsonl, TensorBoard)
        use_cpu=True,
        seed=params["seed"],
        disable_tqdm=True,
    )
    trainer = ExpmanTrainer(
        model=model,
        args=args,
        train_dataset=Counting(512, params["length"], vocab, seed=params["seed"]),
        eval_dataset=Counting(64, params["length"], vocab, seed=params["seed"] + 1),
    )
    latest = trainer.manager.checkpoint_for_restore()  # this run's, or --from-checkpoint's
    start = 0 if latest is None else latest.step
    args.max_steps = start + params["steps"]  # each run trains params["steps"] more steps
    print(f"resuming at step {start}" if start else "no checkpoint: starting from step 0")
    trainer.train(resume_from_checkpoint=True)  # the latest checkpoint, if there is one
    loss = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    print(f"step {trainer.state.global_step}: eval loss {loss[-1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
