"""The checkpoint core in one minute: train, resume, and a refused restore.

Played by `make demo`. It exits non-zero if anything does not behave as shown.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import expman


def build_model(hidden_units: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "dnn/hiddenlayer_0/kernel": rng.standard_normal((4, hidden_units)).astype(np.float32),
        "dnn/hiddenlayer_0/bias": np.zeros(hidden_units, np.float32),
        "dnn/logits/kernel": rng.standard_normal((hidden_units, 3)).astype(np.float32),
        "global_step": 0,
    }


def train(model_dir: Path, hidden_units: int, steps: int) -> int:
    state = build_model(hidden_units)
    ckpts = expman.CheckpointManager(model_dir)
    start = ckpts.restore_latest(into=state)
    print(f"  restored step {start}" if start else "  no checkpoint yet: starting at step 0")
    for step in range(start, start + steps):
        state["dnn/hiddenlayer_0/kernel"] *= 0.99  # stands in for a training step
        state["global_step"] = step + 1
        ckpts.save(step + 1, state, metrics={"loss": 1.0 / (step + 1)})
    ckpts.close()
    files = sorted(p.name for p in model_dir.iterdir())
    print(f"  {model_dir.name}/: {' '.join(files)}")
    return int(state["global_step"])


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"demo failed: {what}", file=sys.stderr)
        raise SystemExit(1)


def main() -> None:
    model_dir = Path(tempfile.mkdtemp(prefix="expman-demo-")) / "model_dir"
    print("$ train 200 steps with hidden_units=10")
    check(train(model_dir, 10, 200) == 200, "the first run ends at step 200")
    print("$ train 200 more steps: resumes from the latest checkpoint")
    check(train(model_dir, 10, 200) == 400, "the second run ends at step 400")
    print("$ change hidden_units to 20 and train again: refused, nothing touched")
    try:
        train(model_dir, 20, 200)
    except expman.ArchitectureMismatchError as error:
        print("  " + str(error).replace("\n", "\n  "))
        check(len(error.diff.shape_changes) == 3, "three tensors changed shape")
    else:
        check(False, "a restore into a wider model must be refused")


if __name__ == "__main__":
    main()
