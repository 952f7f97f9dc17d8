"""Saving and restoring a real PyTorch model: expman.torch vs torch.save and safetensors.

    python -m bench.torch_io [--layers 8] [--width 2048] [--repeats 5]

The model (8 Linear(2048, 2048) layers: 33.6 M parameters, 134 MB in float32)
is created in code. Each contender saves the model's state_dict to a fresh
file and fsyncs it, then restores it into a freshly built model; the order of
the contenders alternates between repetitions, and each time is taken after
os.sync(). safetensors is measured if it is installed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import expman.torch
from bench._timing import fsync_path, median, settled, table
from expman import CheckpointManager, CheckpointPolicy

try:
    import safetensors.torch as safetensors
except ImportError:  # measured only where installed
    safetensors = None


def build(layers: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))


def contenders(
    work: Path, model: torch.nn.Module, fresh: torch.nn.Module
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    pt, st = work / "model.pt", work / "model.safetensors"
    policy = CheckpointPolicy(keep_max=None)

    def expman_save() -> None:
        expman.torch.save(
            CheckpointManager(work / "expman", policy=policy), 1, model, force=True, rng=False
        )

    def expman_restore() -> None:
        expman.torch.restore(CheckpointManager(work / "expman", policy=policy), fresh, rng=False)

    def torch_save() -> None:
        torch.save(model.state_dict(), pt)
        fsync_path(pt)

    def torch_restore() -> None:
        fresh.load_state_dict(torch.load(pt, weights_only=True))

    found = {
        "expman.torch": (expman_save, expman_restore),
        "torch.save / torch.load": (torch_save, torch_restore),
    }
    if safetensors is not None:

        def st_save() -> None:
            safetensors.save_file(model.state_dict(), st)
            fsync_path(st)

        def st_restore() -> None:
            fresh.load_state_dict(safetensors.load_file(st))

        found["safetensors"] = (st_save, st_restore)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, fresh = build(args.layers, args.width), build(args.layers, args.width)
    parameters = sum(p.numel() for p in model.parameters())
    megabytes = parameters * 4 / 1e6
    samples: dict[str, list[float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="expman-bench-"))
    try:
        for repeat in range(args.repeats):
            work = scratch / str(repeat)
            work.mkdir()
            found = contenders(work, model, fresh)
            names = list(found)[:: -1 if repeat % 2 else 1]
            for name in names:
                samples.setdefault(f"{name} save (fsync)", []).append(settled(found[name][0]))
            for name in names:
                samples.setdefault(f"{name} restore", []).append(settled(found[name][1]))
            shutil.rmtree(work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    print(
        f"{parameters / 1e6:.1f} M parameters ({megabytes:.0f} MB float32), median of "
        f"{args.repeats}; torch {torch.__version__}, CPU\n"
    )
    print(
        table(
            ["operation", "median", "throughput"],
            [
                [name, f"{median(v) * 1000:.0f} ms", f"{megabytes / 1000 / median(v):.2f} GB/s"]
                for name, v in sorted(samples.items())
            ],
        )
    )


if __name__ == "__main__":
    main()
