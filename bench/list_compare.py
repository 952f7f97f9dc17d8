"""`expman list` and `expman compare` with many experiments, against plain git.

    python -m bench.list_compare [--experiments 1000] [--runs 10] [--repeats 5]

Builds a repository with N experiment branches of R run commits each, every
commit carrying expman's records and trailers (written with git fast-import,
as expman itself would write them), then times the commands as a user runs
them. The baseline, in the same run, is `git for-each-ref` over the branches,
the least git work that can list them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._timing import median, table, timed

CONFIG = (
    '[run]\ncommand = "python train.py"\n\n[params]\nlr = {lr}\n\n'
    '[experiments]\nkey_metric = "loss"\n'
)


def build(repo: Path, experiments: int, runs: int) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream: list[bytes] = []

    def blob(mark: int, content: str) -> None:
        data = content.encode()
        stream.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))

    def commit(
        ref: str, mark: int, parent: int | None, message: str, files: dict[str, int]
    ) -> None:
        text = message.encode()
        lines = [
            b"commit %s" % ref.encode(),
            b"mark :%d" % mark,
            b"committer Bench <bench@example.com> 1795536000 +0000",
            b"data %d" % len(text),
            text,
        ]
        if parent is not None:
            lines.append(b"from :%d" % parent)
        lines += [b"M 100644 :%d %s" % (m, p.encode()) for p, m in files.items()]
        stream.append(b"\n".join(lines) + b"\n\n")

    mark = 1
    blob(mark, CONFIG.format(lr=0.1))
    config, mark = mark, mark + 1
    root = mark
    commit("refs/heads/main", root, None, "project\n", {"expman.toml": config})
    mark += 1
    for e in range(experiments):
        name = f"exp{e:04d}"
        blob(mark, CONFIG.format(lr=0.001 * (e + 1)))
        cfg, mark = mark, mark + 1
        trailers = f"Experiment: {name}\nRuns: 0\n"
        commit(
            f"refs/heads/exp/{name}",
            mark,
            root,
            f"new experiment {name}\n\n{trailers}",
            {"expman.toml": cfg},
        )
        parent, mark = mark, mark + 1
        for r in range(1, runs + 1):
            loss = 1.0 / (r + e)
            directory = f"expman-runs/{name}/{r:03d}"
            files = {}
            for file, content in (
                ("run.json", {"run": r, "status": "succeeded"}),
                ("metrics.json", {"final": {"loss": loss}, "best": {"loss": loss}}),
                ("params.json", {"lr": 0.001 * (e + 1)}),
                (
                    "checkpoints.json",
                    [
                        {
                            "step": 200 * r,
                            "file": f"ckpt-{200 * r:06d}.h5",
                            "size": 1,
                            "blake3": "0" * 64,
                            "metrics": {},
                        }
                    ],
                ),
                (
                    "architecture.json",
                    {
                        "tensors": [{"name": "w", "shape": [4, 10], "dtype": "float32"}],
                        "config": {},
                    },
                ),
            ):
                blob(mark, json.dumps(content))
                files[f"{directory}/{file}"] = mark
                mark += 1
            message = (
                f"run {r} of {name}: step {200 * r}, loss {loss:.4g}\n\n"
                f"Experiment: {name}\nRun: {r}\nRuns: {r}\nStatus: succeeded\nExit-Code: 0\n"
                f"Step: {200 * r}\nMetrics: loss={loss!r}\n"
            )
            commit(f"refs/heads/exp/{name}", mark, parent, message, {"expman.toml": cfg, **files})
            parent, mark = mark, mark + 1
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=b"".join(stream), check=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    subprocess.run(["git", "pack-refs", "--all"], cwd=repo, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    expman = str(Path(sys.executable).parent / "expman")
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as scratch:
        repo = Path(scratch) / "repo"
        build(repo, args.experiments, args.runs)
        last = f"exp{args.experiments - 1:04d}"
        commands = {
            "git for-each-ref refs/heads/exp/ (baseline)": [
                "git",
                "for-each-ref",
                "refs/heads/exp/",
            ],
            "expman list": [expman, "list"],
            "expman list --json": [expman, "list", "--json"],
            "expman compare (2 experiments)": [expman, "compare", "exp0000", last],
            "expman compare (2 runs, --json)": [
                expman,
                "compare",
                "exp0000@3",
                f"{last}@7",
                "--json",
            ],
        }
        for command in commands.values():  # warm the page cache; check they work
            subprocess.run(command, cwd=repo, check=True, capture_output=True)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                samples[name].append(
                    timed(
                        lambda c=command: subprocess.run(
                            c, cwd=repo, check=True, capture_output=True
                        )
                    )
                )
    print(
        f"{args.experiments} experiments x {args.runs} runs, median of {args.repeats} "
        "(target: list and compare under 0.5 s)\n"
    )
    print(
        table(
            ["command", "median"], [[n, f"{median(v) * 1000:.0f} ms"] for n, v in samples.items()]
        )
    )


if __name__ == "__main__":
    main()
