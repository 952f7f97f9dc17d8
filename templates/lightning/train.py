"""A Lightning classifier on two interleaved half-moons, checkpointed through expman.

    python train.py            # train params["epochs"] more epochs, resuming the latest checkpoint

ExpmanCheckpoint replaces Lightning's ModelCheckpoint: the same triggers
(the end of each epoch's validation here), but each checkpoint is an expman
HDF5 file in the run's checkpoint directory, nothing is pickled, and
``ckpt_path="last"`` resumes only into the same model, optimizer and
schedule. The data is generated in code (no download).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

import expman
from expman.lightning import ExpmanCheckpoint

# Lightning's advice for big datasets (more DataLoader workers): not for 1,000 points.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# The first run has no checkpoint: ExpmanCheckpoint always keeps the newest (save_last).
warnings.filterwarnings("ignore", ".*there is no last checkpoint available.*")
# Lightning 2.6 with torch >= 2.10: a deprecation inside Lightning, nothing to do here.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")


def moons(count: int, seed: int) -> torch.utils.data.TensorDataset:
    """Two interleaved half-circles with a little noise: a classic non-linear task."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(count, generator=generator) * math.pi
    label = torch.randint(0, 2, (count,), generator=generator)
    x = torch.where(label == 0, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(label == 0, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1) + 0.1 * torch.randn(count, 2, generator=generator)
    return torch.utils.data.TensorDataset(points, label)


class Classifier(pl.LightningModule):
    def __init__(self, hidden_units: list[int], learning_rate: float) -> None:
        super().__init__()
        sizes = [2, *hidden_units]
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 2))
        self.learning_rate = learning_rate

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("accuracy", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        return [optimizer], [scheduler]


class MoreEpochs(pl.Callback):
    """Each run trains ``epochs`` more epochs than the checkpoint it resumes from has."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_load_checkpoint(
        self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Saved at the end of an epoch's validation: that epoch (counted from 0) is done.
        done = checkpoint["epoch"] + 1
        print(f"resuming at step {checkpoint['global_step']}, {done} epochs done", flush=True)
        trainer.fit_loop.max_epochs = done + self.epochs

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            print("no checkpoint: starting from step 0", flush=True)


def main() -> None:
    params = expman.params()
    pl.seed_everything(params["seed"], verbose=False)
    model = Classifier(params["model"]["hidden_units"], params["learning_rate"])
    batch = params["batch_size"]
    train = torch.utils.data.DataLoader(moons(1000, params["seed"]), batch_size=batch, shuffle=True)
    val = torch.utils.data.DataLoader(moons(300, params["seed"] + 1), batch_size=300)
    trainer = pl.Trainer(
        max_epochs=params["epochs"],
        callbacks=[
            ExpmanCheckpoint(monitor="val_loss", mode="min", save_top_k=2),
            MoreEpochs(params["epochs"]),
        ],
        logger=False,  # metrics go to expman.log_metrics (events.jsonl, TensorBoard)
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    trainer.fit(model, train, val, ckpt_path="last")  # the latest checkpoint, if there is one
    accuracy = trainer.callback_metrics["accuracy"].item()
    print(f"step {trainer.global_step}: accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
