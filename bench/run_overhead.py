"""What `expman run` adds to a command, against running the command directly.

    python -m bench.run_overhead [--repeats 15]

Both are timed as whole processes from a shell's point of view, alternating,
in a throwaway git repository: the command is `python -c pass` (so the
difference is expman's own work: start-up, the lock, the worktree checkout,
the run record and its commit). The report gives medians and the paired
difference within each repetition.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._timing import median, table, timed

CONFIG = """\
[run]
command = "python -c pass"

[params]
steps = 1
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--expman",
        default=str(Path(sys.executable).parent / "expman"),
        help="the expman program to time (default: the one beside this Python)",
    )
    args = parser.parse_args()
    expman = args.expman
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as scratch:
        repo = Path(scratch)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.name", "Bench")
        git(repo, "config", "user.email", "bench@example.com")
        (repo / "expman.toml").write_text(CONFIG)
        (repo / ".gitignore").write_text("/.expman/\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "bench")
        subprocess.run([expman, "new", "base"], cwd=repo, check=True, capture_output=True)
        subprocess.run([expman, "run", "base"], cwd=repo, check=True, capture_output=True)

        python = str(Path(expman).parent / "python")  # the interpreter expman runs it with

        def direct() -> None:
            subprocess.run([python, "-c", "pass"], cwd=repo, check=True)

        def through_expman() -> None:
            subprocess.run([expman, "run", "base"], cwd=repo, check=True, capture_output=True)

        plain, managed = [], []
        for _ in range(args.repeats):
            plain.append(timed(direct))
            managed.append(timed(through_expman))
    added = sorted(m - p for p, m in zip(plain, managed, strict=True))
    print(
        f"`expman run` of `python -c pass`, {args.repeats} alternating repetitions "
        "(each run commits its record)\n"
    )
    print(
        table(
            ["what", "median"],
            [
                ["the command alone", f"{median(plain) * 1000:.0f} ms"],
                ["expman run", f"{median(managed) * 1000:.0f} ms"],
                [
                    "added by expman (paired; target <= 150 ms)",
                    f"{median(added) * 1000:.0f} ms (range {added[0] * 1000:.0f} to "
                    f"{added[-1] * 1000:.0f})",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
