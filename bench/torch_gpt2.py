"""GPT-2 small (124 M parameters, random weights built in code): expman.torch against
torch.save/torch.load and safetensors, paired in one run.

    python -m bench.torch_gpt2 [--repeats 3]

Measured: file size; save (fsync) and restore time of the model; the peak
memory a restore of the model with its AdamW state adds to the process (each
in a fresh process, peak RSS reset through /proc/self/clear_refs); and
building the model for a restore: random initialisation, against
``torch.device("meta")`` + ``to_empty()``, against ``from_pretrained`` of a
local ``save_pretrained`` directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

import expman.torch
from bench._timing import fsync_path, median, settled, table
from expman import CheckpointManager, CheckpointPolicy

try:
    import safetensors.torch as safetensors
except ImportError:  # measured only where installed
    safetensors = None

transformers.logging.set_verbosity_error()
POLICY = CheckpointPolicy(keep_max=None)


def build(*, meta: bool = False) -> torch.nn.Module:
    config = transformers.GPT2Config()  # GPT-2 small
    if not meta:
        return transformers.GPT2LMHeadModel(config)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty() unties lm_head from wte; the guard refuses an untied model
    return model


def trained(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def peak(contender: str, work: Path) -> None:
    """In a fresh process: the memory a restore of model + AdamW adds at its peak."""
    model = build()
    optimizer = trained(model)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    before = _rss("VmRSS")
    if contender == "expman.torch":
        expman.torch.restore(CheckpointManager(work / "expman", policy=POLICY), model, optimizer)
    else:
        both = torch.load(work / "all.pt", weights_only=True)
        model.load_state_dict(both["model"])
        optimizer.load_state_dict(both["optimizer"])
        del both
    print(json.dumps({"added": _rss("VmHWM") - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        peak(args.peak, args.work)
        return
    torch.manual_seed(0)
    model = build()
    optimizer = trained(model)
    fresh = build()
    work = Path(tempfile.mkdtemp(prefix="expman-bench-"))
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    try:
        pt, st = work / "model.pt", work / "model.safetensors"

        def expman_save() -> None:
            shutil.rmtree(work / "m", ignore_errors=True)
            expman.torch.save(CheckpointManager(work / "m", policy=POLICY), 1, model, force=True)

        def torch_save() -> None:
            torch.save(model.state_dict(), pt)
            fsync_path(pt)

        def st_save() -> None:
            safetensors.save_model(model, str(st))
            fsync_path(st)

        contenders: dict[str, tuple[Any, Any, Any]] = {
            "expman.torch": (
                expman_save,
                lambda: expman.torch.restore(CheckpointManager(work / "m", policy=POLICY), fresh),
                lambda: next((work / "m").glob("ckpt-*.h5")),
            ),
            "torch.save / torch.load": (
                torch_save,
                lambda: fresh.load_state_dict(torch.load(pt, weights_only=True)),
                lambda: pt,
            ),
        }
        if safetensors is not None:
            contenders["safetensors (save_model / load_model)"] = (
                st_save,
                lambda: safetensors.load_model(fresh, str(st)),
                lambda: st,
            )
        for repeat in range(args.repeats):
            names = list(contenders)[:: -1 if repeat % 2 else 1]
            for name in names:
                samples.setdefault(f"{name} save (fsync)", []).append(settled(contenders[name][0]))
                sizes[name] = contenders[name][2]().stat().st_size
            for name in names:
                samples.setdefault(f"{name} restore", []).append(settled(contenders[name][1]))
            samples.setdefault("build: random init", []).append(settled(build))
            samples.setdefault("build: meta + to_empty", []).append(
                settled(lambda: build(meta=True))
            )
            model.save_pretrained(work / "hf")
            samples.setdefault("build + load: from_pretrained (local)", []).append(
                settled(lambda: transformers.GPT2LMHeadModel.from_pretrained(work / "hf"))
            )

            def meta_restore() -> None:
                expman.torch.restore(
                    CheckpointManager(work / "m", policy=POLICY), build(meta=True), rng=False
                )

            samples.setdefault("build + load: meta + expman.torch.restore", []).append(
                settled(meta_restore)
            )
        expman.torch.save(
            CheckpointManager(work / "expman", policy=POLICY), 1, model, optimizer, force=True
        )
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, work / "all.pt"
        )
        added = {}
        for name in ("expman.torch", "torch.load"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.torch_gpt2", "--peak", name, "--work", str(work)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            added[name] = json.loads(out.splitlines()[-1])["added"]
        state_bytes = (work / "all.pt").stat().st_size
        largest = max(t.nbytes for t in model.state_dict().values())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"GPT-2 small, {parameters / 1e6:.1f} M parameters, median of {args.repeats}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, CPU\n"
    )
    print(table(["file", "size"], [[n, f"{s / 1e6:.0f} MB"] for n, s in sizes.items()]))
    print()
    print(
        table(
            ["operation", "median"], [[n, f"{median(v) * 1000:.0f} ms"] for n, v in samples.items()]
        )
    )
    print()
    print(
        table(
            ["restore of model + AdamW state", "peak memory added"],
            [[n, f"{a / 1e9:.2f} GB"] for n, a in added.items()]
            + [
                ["(the state itself, torch.save file)", f"{state_bytes / 1e9:.2f} GB"],
                ["(the largest tensor)", f"{largest / 1e9:.3f} GB"],
            ],
        )
    )


if __name__ == "__main__":
    main()
