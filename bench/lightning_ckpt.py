"""The Lightning template's training with expman's checkpoints vs Lightning's own.

    python -m bench.lightning_ckpt [--hidden 32,32] [--epochs 4] [--repeats 5]

The model, data and Trainer settings are templates/lightning/train.py's
(``expman init --template lightning``), with ``--hidden`` as its
``hidden_units``. Each repeat trains ``--epochs`` epochs twice, once with
``ExpmanCheckpoint(monitor="val_loss", save_top_k=2)`` and once with
Lightning's ``ModelCheckpoint`` with the same arguments and
``save_last="link"`` (the newest is kept by both; Lightning links it rather
than writing it twice), and once more with Lightning's files fsynced (file
and directory) as expman's are, in rotating order, then resumes each from its
last checkpoint into a freshly built model (``ckpt_path="last"``, no further
epochs). Timed: every ``trainer.save_checkpoint`` call (building Lightning's
checkpoint dict and writing it: expman's HDF5 with fsync, Lightning's
``torch.save`` without fsync), and the restore of the resume (the
checkpoint connector's ``_restore_modules_and_callbacks`` and
``restore_training_state``: reading the file, the guard for expman, and
loading model, optimizers, loops and callbacks).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bench._timing import fsync_path, median, table
from expman.lightning import ExpmanCheckpoint
from templates.lightning.train import Classifier, moons

CONTENDERS = (
    "expman (ExpmanCheckpoint)",
    "Lightning (ModelCheckpoint, torch.save)",
    "Lightning + fsync",
)


class FsyncCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save files, made durable as expman's are (file, then directory)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        fsync_path(Path(path))
        fsync_path(Path(path).parent)


def callback(name: str, directory: Path) -> pl.Callback:
    if name.startswith("expman"):
        return ExpmanCheckpoint(dirpath=directory, monitor="val_loss", save_top_k=2)
    return pl.callbacks.ModelCheckpoint(
        dirpath=directory, monitor="val_loss", save_top_k=2, save_last="link"
    )


def timing(target: Any, method: str, into: list[float]) -> None:
    """Replace ``target.method`` by a wrapper that appends each call's duration to ``into``."""
    original: Callable[..., Any] = getattr(target, method)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(target, method, wrapper)


def trainer(name: str, directory: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback(name, directory)],
        plugins=[FsyncCheckpointIO()] if name.endswith("fsync") else None,
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )


def one_run(
    name: str, directory: Path, hidden: list[int], epochs: int
) -> tuple[list[float], float]:
    """Seconds per checkpoint save, and of the resume's restore."""
    train = torch.utils.data.DataLoader(moons(1000, 0), batch_size=50, shuffle=True)
    val = torch.utils.data.DataLoader(moons(300, 1), batch_size=300)
    pl.seed_everything(0, verbose=False)
    saves: list[float] = []
    first = trainer(name, directory, epochs)
    timing(first, "save_checkpoint", saves)
    first.fit(Classifier(hidden, 0.01), train, val)
    pl.seed_everything(1, verbose=False)
    restores: list[float] = []
    again = trainer(name, directory, epochs)
    connector = again._checkpoint_connector
    timing(connector, "_restore_modules_and_callbacks", restores)
    timing(connector, "restore_training_state", restores)
    resumed = Classifier(hidden, 0.01)
    again.fit(resumed, train, val, ckpt_path="last")
    assert again.global_step == first.global_step, (name, again.global_step)
    for key, value in first.lightning_module.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), (name, key)
    return saves, sum(restores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="32,32", help="hidden_units, comma-separated")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    saves: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    restores: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    sizes: dict[str, int] = {}
    scratch = Path(tempfile.mkdtemp(prefix="expman-bench-"))
    try:
        for repeat in range(args.repeats):
            shift = repeat % len(CONTENDERS)
            for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                directory = scratch / f"{repeat}-{CONTENDERS.index(name)}"
                found, restore = one_run(name, directory, hidden, args.epochs)
                saves[name] += found
                restores[name].append(restore)
                files = [p for p in directory.iterdir() if p.suffix in (".h5", ".ckpt")]
                sizes[name] = max(p.stat().st_size for p in files if not p.is_symlink())
                shutil.rmtree(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parameters = sum(p.numel() for p in Classifier(hidden, 0.01).parameters())
    print(
        f"hidden_units {hidden}: {parameters:,} parameters; {args.epochs} epochs, one checkpoint "
        f"per epoch; {args.repeats} repeats, rotating order; torch {torch.__version__}, "
        f"lightning {pl.__version__}, CPU\n"
    )
    base = CONTENDERS[1]
    rows = []
    for name in CONTENDERS:
        save, restore = median(saves[name]), median(restores[name])
        rows.append(
            [
                name,
                f"{save * 1000:.1f} ms ({save / median(saves[base]):.2f}x)",
                f"{restore * 1000:.1f} ms ({restore / median(restores[base]):.2f}x)",
                f"{sizes[name] / 1e6:.2f} MB",
            ]
        )
    header = ["checkpointing", "save, per checkpoint (median)", "resume restore (median)", "file"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
