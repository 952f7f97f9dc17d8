"""What `expman run` adds to a command, against running the command directly.

    python -m bench.run_overhead [--repeats 15] [--expman PROGRAM ...]

Both are timed as whole processes from a shell's point of view, alternating,
in a throwaway git repository: the command is `python -c pass` (so the
difference is expman's own work: start-up, the lock, the worktree checkout,
the run record and its commit). Several `--expman` programs (two installs,
before and after a change) are alternated in the same repetitions. The report
gives, per program: the median of the paired difference within each
repetition, the fastest expman run less the fastest bare command (the figure
least disturbed by other work on a shared machine), the CPU time of the whole process tree (user +
system, which other processes' load barely changes), and the number of git
processes one run starts (counted by a `git` wrapper on PATH).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._repo import init_repository
from bench._timing import median, table, timed

CONFIG = """\
[run]
command = "python -c pass"

[params]
steps = 1
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_repository(repo: Path, expman: str) -> None:
    init_repository(repo, CONFIG)
    subprocess.run([expman, "new", "base"], cwd=repo, check=True, capture_output=True)
    subprocess.run([expman, "run", "base"], cwd=repo, check=True, capture_output=True)


def git_processes(repo: Path, expman: str, scratch: Path) -> int:
    """How many git processes one `expman run` starts."""
    wrappers = scratch / "wrap"
    wrappers.mkdir(exist_ok=True)
    calls = scratch / "git-calls"
    calls.write_text("")
    wrapper = wrappers / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([expman, "run", "base"], cwd=repo, check=True, capture_output=True, env=env)
    return len(calls.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--expman",
        action="append",
        help="an expman program to time; repeat to compare installs "
        "(default: the one beside this Python)",
    )
    args = parser.parse_args()
    programs = args.expman or [str(Path(sys.executable).parent / "expman")]
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as scratch:
        repos = [Path(scratch) / f"repo{i}" for i in range(len(programs))]
        for repo, expman in zip(repos, programs, strict=True):
            make_repository(repo, expman)
        counts = [
            git_processes(repo, expman, Path(scratch))
            for repo, expman in zip(repos, programs, strict=True)
        ]
        # The interpreter expman runs `python` with: the first program's.
        python = str(Path(programs[0]).parent / "python")

        def direct() -> None:
            subprocess.run([python, "-c", "pass"], cwd=repos[0], check=True)

        plain: list[float] = []
        plain_cpu: list[float] = []
        managed: list[list[float]] = [[] for _ in programs]
        managed_cpu: list[list[float]] = [[] for _ in programs]
        for _ in range(args.repeats):
            before = children_cpu()
            plain.append(timed(direct))
            plain_cpu.append(children_cpu() - before)
            for index, (repo, expman) in enumerate(zip(repos, programs, strict=True)):
                before = children_cpu()
                managed[index].append(
                    timed(
                        lambda e=expman, r=repo: subprocess.run(
                            [e, "run", "base"], cwd=r, check=True, capture_output=True
                        )
                    )
                )
                managed_cpu[index].append(children_cpu() - before)
    print(
        f"`expman run` of `python -c pass`, {args.repeats} alternating repetitions "
        "(each run commits its record)\n"
    )
    rows = [
        [
            "the command alone",
            f"{median(plain) * 1000:.0f} ms",
            "-",
            "-",
            f"{median(plain_cpu) * 1000:.0f} ms",
            "0",
        ]
    ]
    for expman, times, cpu, count in zip(programs, managed, managed_cpu, counts, strict=True):
        added = sorted(m - p for p, m in zip(plain, times, strict=True))
        added_cpu = median([m - p for p, m in zip(plain_cpu, cpu, strict=True)])
        rows.append(
            [
                f"expman run ({expman})",
                f"{median(times) * 1000:.0f} ms",
                f"{median(added) * 1000:.0f} ms (range {added[0] * 1000:.0f} to "
                f"{added[-1] * 1000:.0f})",
                f"{(min(times) - min(plain)) * 1000:.0f} ms",
                f"{median(cpu) * 1000:.0f} ms (+{added_cpu * 1000:.0f})",
                str(count),
            ]
        )
    print(
        table(
            [
                "what",
                "median",
                "added, paired median (target <= 100 ms)",
                "added, fastest of each",
                "CPU time (added)",
                "git processes",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
