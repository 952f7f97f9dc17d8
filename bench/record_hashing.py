"""How long `expman run` takes after its command ends, when the run saved checkpoints.

    python -m bench.record_hashing [--checkpoints 4] [--mib 256] [--pause 2] [--repeats 3]
                                   [--expman PROGRAM ...]

The command, a script in a throwaway git repository, saves ``--checkpoints``
checkpoints of ``--mib`` MiB through ``CheckpointManager``, ``--pause``
seconds apart (the training between saves), and writes down when it ends.
Reported per program: the median of expman's exit less the command's end,
which is the run record's work (the digest of each checkpoint not hashed
before, the record's commit) and expman's exit. Several ``--expman``
programs (two installs, before and after a change) alternate in the same
repetitions; each run is a new experiment, its checkpoints removed after.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._repo import git, init_repository
from bench._timing import median, table

CONFIG = """\
[run]
command = "python train.py"
"""

TRAIN = """\
import sys
import time

import numpy as np

import expman

count, mib, pause, ended = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
weights = np.random.default_rng(0).standard_normal(mib * 2**18, dtype=np.float32)
with expman.CheckpointManager() as ckpts:
    for step in range(1, count + 1):
        time.sleep(pause)  # training between two saves
        weights[0] = step
        ckpts.save(step, {"weights": weights}, force=True)
with open(ended, "w") as out:
    out.write(repr(time.time()))
"""


def one_run(repo: Path, expman: str, name: str, argv: list[str], ended: Path) -> float:
    """Seconds from the command's end to expman's exit."""
    subprocess.run([expman, "new", name], cwd=repo, check=True, capture_output=True)
    command = [expman, "run", name, "--", sys.executable, "train.py", *argv, str(ended)]
    subprocess.run(command, cwd=repo, check=True, capture_output=True)
    exited = time.time()
    shutil.rmtree(repo / ".expman" / "checkpoints" / name)
    return exited - float(ended.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--pause", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--expman", action="append", help="an expman program; repeat to compare")
    args = parser.parse_args()
    programs = args.expman or [str(Path(sys.executable).parent / "expman")]
    argv = [str(args.checkpoints), str(args.mib), str(args.pause)]
    tails: dict[str, list[float]] = {program: [] for program in programs}
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as scratch:
        repo = Path(scratch) / "repo"
        init_repository(repo, CONFIG)
        (repo / "train.py").write_text(TRAIN)
        git(repo, "add", "train.py")
        git(repo, "commit", "-qm", "train.py")
        for repeat in range(args.repeats):
            order = programs if repeat % 2 == 0 else programs[::-1]
            for program in order:
                name = f"r{repeat}p{programs.index(program)}"
                ended = Path(scratch) / f"{name}.ended"
                tails[program].append(one_run(repo, program, name, argv, ended))
    print(
        f"{args.checkpoints} checkpoints of {args.mib} MiB, {args.pause} s apart, "
        f"{args.repeats} repetitions\n"
    )
    rows = [
        [program, f"{median(values) * 1000:.0f} ms", ", ".join(f"{v:.2f}" for v in values)]
        for program, values in tails.items()
    ]
    print(table(["expman", "after the command ends (median)", "samples (s)"], rows))


if __name__ == "__main__":
    main()
