"""A PyTorch classifier on two interleaved half-moons, checkpointed with expman.torch.

    python train.py train      # train params["steps"] steps from the latest checkpoint
    python train.py evaluate   # accuracy on held-out points, from the latest checkpoint

The data is generated in code (no download). The model, its AdamW optimizer,
the LR schedule and the random generators are all restored, so a resumed
run continues exactly where the last one stopped.
"""

from __future__ import annotations

import itertools
import math
import sys

import torch

import expman
import expman.torch


def moons(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half-circles with a little noise: a classic non-linear task."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(count, generator=generator) * math.pi
    label = torch.randint(0, 2, (count,), generator=generator)
    x = torch.where(label == 0, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(label == 0, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1) + 0.1 * torch.randn(count, 2, generator=generator)
    return points, label


def build(params: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(params["seed"])
    sizes = [2, *params["model"]["hidden_units"]]
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["learning_rate"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=500, gamma=0.5)
    return model, optimizer, scheduler


def main(mode: str) -> None:
    params = expman.params()
    train_x, train_y = moons(1000, seed=params["seed"])
    test_x, test_y = moons(300, seed=params["seed"] + 1)
    model, optimizer, scheduler = build(params)
    ckpts = expman.CheckpointManager(model_config=params["model"])
    start = expman.torch.restore(ckpts, model, optimizer, scheduler)
    print(f"restored step {start}" if start else "no checkpoint: starting from step 0")
    if mode == "train":
        for step in range(start, start + params["steps"]):
            batch = torch.randint(0, len(train_x), (params["batch_size"],))
            loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            expman.log_metrics(step + 1, loss=loss.item())
            expman.torch.save(
                ckpts,
                step + 1,
                model,
                optimizer,
                scheduler,
                metrics={"loss": loss.item()},
                last=step + 1 == start + params["steps"],  # written now, as of this step
            )
        ckpts.close()
        start += params["steps"]
    with torch.no_grad():
        accuracy = (model(test_x).argmax(dim=1) == test_y).float().mean().item()
    expman.log_metrics(start, accuracy=accuracy)
    print(f"step {start}: test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "train")
