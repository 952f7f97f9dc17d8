"""The iris walkthrough of docs/tutorial.md, played end to end in a temporary repository.

`make demo` runs it. Every command is printed with its output, as a user
would see it; the walkthrough stops with a non-zero exit code as soon as a
step does not behave as the tutorial says.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


class WalkthroughError(Exception):
    pass


class Shell:
    """Runs commands in the demo repository and prints them like a terminal."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EXPMAN_")}
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["NO_COLOR"] = "1"

    def run(self, command: str, *, expect: int = 0) -> str:
        print(f"\n$ {command}", flush=True)
        result = subprocess.run(
            command,
            shell=True,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        print(result.stdout, end="", flush=True)
        if result.returncode != expect:
            raise WalkthroughError(
                f"`{command}` exited {result.returncode}, the tutorial expects {expect}"
            )
        return result.stdout


def _ours(listing: str) -> list[str]:
    """A directory listing without TensorBoard's files (there with the tensorboard extra)."""
    return [name for name in listing.split() if not name.startswith("events.out.tfevents.")]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise WalkthroughError(what)


def walkthrough(root: Path) -> None:
    sh = Shell(root)
    sh.env.setdefault("GIT_AUTHOR_NAME", "expman demo")
    sh.env.setdefault("GIT_AUTHOR_EMAIL", "demo@example.com")
    sh.env.setdefault("GIT_COMMITTER_NAME", "expman demo")
    sh.env.setdefault("GIT_COMMITTER_EMAIL", "demo@example.com")

    print("# 1. A project: the Estimator guide's iris DNNClassifier, in numpy")
    sh.run("expman init --template iris iris")
    sh.cwd = root / "iris"
    sh.run("git log --oneline")

    print("\n# 2. No model directory given: checkpoints go to a temporary directory")
    out = sh.run("python train.py train")
    check("Using temporary directory as checkpoint directory:" in out, "a temporary directory")

    print("\n# 3. The schedule: every 20 minutes and keep 10, in expman.toml")
    toml = (sh.cwd / "expman.toml").read_text()
    toml = toml.replace("save_every_secs = 600", "save_every_secs = 1200")
    toml = toml.replace("keep_max = 5", "keep_max = 10")
    (sh.cwd / "expman.toml").write_text(toml)
    sh.run("git diff --stat")

    print("\n# 4. The experiment: this code and expman.toml, as branch exp/base")
    sh.run("expman new base -m 'DNNClassifier [10, 10], checkpoints every 20 min, keep 10'")
    out = sh.run("expman run base")
    check("trained to step 200" in out, "the first run trains to step 200")
    listing = sh.run("ls .expman/checkpoints/base")
    check(
        _ours(listing) == ["checkpoint", "ckpt-000001.h5", "ckpt-000200.h5", "events.jsonl"],
        "checkpoints at step 1 and step 200",
    )
    sh.run("cat .expman/checkpoints/base/checkpoint")

    print("\n# 5. Train again: it continues from the latest checkpoint")
    out = sh.run("expman run base")
    check("restored step 200" in out and "trained to step 400" in out, "200 -> 400")
    listing = sh.run("ls .expman/checkpoints/base")
    check("ckpt-000400.h5" in listing.split(), "a checkpoint at step 400")

    print("\n# 6. Evaluate and predict: each restores the latest checkpoint")
    out = sh.run("expman run base -- python train.py evaluate")
    accuracy = float(re.search(r"accuracy (\d\.\d+)", out)[1])  # type: ignore[index]
    check("evaluation at step 400" in out and accuracy > 0.8, "evaluation of step 400")
    out = sh.run("expman run base -- python train.py predict")
    check("-> setosa" in out and "-> virginica" in out, "the guide's predictions")

    print("\n# 7. The guide's failure: hidden_units = [20, 20] against [10, 10] checkpoints")
    sh.run("expman new wide --from base --set 'model.hidden_units=[20,20]'")
    out = sh.run("expman run wide --from-checkpoint base", expect=3)
    for tensor in (
        "dnn/hiddenlayer_0/kernel",
        "dnn/hiddenlayer_1/kernel",
        "dnn/logits/kernel",
        "dnn/hiddenlayer_0/bias/t_0/Adagrad",
    ):
        check(f"  {tensor}: checkpoint [" in out, f"{tensor} is listed")
    check("restored step" not in out, "refused before any weight was touched")

    print("\n# 8. The wider model is a variant of its own: both stay recoverable")
    out = sh.run("expman run wide")
    check("no checkpoint: starting from step 0" in out, "wide trains from scratch")
    sh.run("expman list")
    sh.run("expman compare base wide")
    sh.run("git log --oneline exp/wide")
    sh.run("git status --short")


def main() -> None:
    keep = "--keep" in sys.argv[1:]
    root = Path(tempfile.mkdtemp(prefix="expman-demo-"))
    print(f"# The iris walkthrough (docs/tutorial.md), in {root}")
    try:
        walkthrough(root)
    except WalkthroughError as error:
        print(f"\ndemo FAILED: {error}\nFiles kept in {root} to look at.", file=sys.stderr)
        raise SystemExit(1) from None
    if keep:
        print(f"\n# Done: every step behaved as docs/tutorial.md says. Files kept in {root}")
    else:
        shutil.rmtree(root)
        print("\n# Done: every step behaved as docs/tutorial.md says (KEEP=1 keeps the files)")


if __name__ == "__main__":
    main()
