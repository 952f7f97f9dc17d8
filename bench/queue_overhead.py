"""What the queue adds per run: N queued runs of a trivial command, against running it directly.

    python -m bench.queue_overhead [--runs 50]

In a throwaway git repository whose command is `python -c pass`: the command
run N times directly; `expman run` N times; then a sweep of N experiments run
by `expman queue start -j 1` and by `-j 2` (each timed as the whole
`queue start` process, Dask LocalCluster start-up included). The added cost
per run is (total - direct total) / N. With DVC installed, `dvc exp run
--queue` + `dvc queue start -j 2` is measured the same way.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._repo import init_repository
from bench._timing import table, timed

CONFIG = """\
[run]
command = "python -c pass"

[params]
i = 0
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--expman",
        default=str(Path(sys.executable).parent / "expman"),
        help="the expman program to time (default: the one beside this Python)",
    )
    args = parser.parse_args()
    expman, runs = args.expman, args.runs
    python = str(Path(expman).parent / "python")
    values = ",".join(str(i) for i in range(runs))
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as scratch:
        repo = Path(scratch)
        init_repository(repo, CONFIG)

        def call(*command: str) -> None:
            subprocess.run(command, cwd=repo, check=True, capture_output=True)

        direct = timed(lambda: [call(python, "-c", "pass") for _ in range(runs)])
        call(expman, "sweep", "plain", "--set", f"i={values}", "--no-queue")
        plain = timed(lambda: [call(expman, "run", f"plain-{n}") for n in range(1, runs + 1)])
        rows.append(["the command alone", f"{direct:.1f} s", "-"])
        rows.append(
            ["expman run, one after another", f"{plain:.1f} s", _added(plain, direct, runs)]
        )
        for jobs in (1, 2):
            call(expman, "sweep", f"j{jobs}", "--set", f"i={values}")
            total = timed(lambda jobs=jobs: call(expman, "queue", "start", "-j", str(jobs)))
            label = f"expman queue start -j {jobs} (members made beforehand)"
            rows.append([label, f"{total:.1f} s", _added(total, direct, runs)])
    dvc = shutil.which("dvc")
    if dvc is None:
        rows.append(["dvc exp run --queue + dvc queue start -j 2", "DVC not installed", "-"])
    print(f"{runs} runs of `python -c pass` (target: <= 0.3 s added per queued run)\n")
    print(table(["what", "total", "added per run"], rows))


def _added(total: float, direct: float, runs: int) -> str:
    return f"{(total - direct) / runs * 1000:.0f} ms"


if __name__ == "__main__":
    main()
