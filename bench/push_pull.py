"""expman push/pull against a local S3 API (moto's server), and s3fs's own put/get.

Builds a repository with one experiment whose recorded checkpoints total
``--megabytes``, then times on the same server, in the same run, alternating
and repeated ``--repeats`` times (medians reported):

- ``expman push`` to a fresh prefix against ``s3fs.put`` of the same files,
  both in this process (s3fs imported, client connected) and in a new
  process (``python -c``: import, connect, put), as ``expman push`` is;
- ``expman pull --checkpoints all`` on a fresh clone against ``s3fs.get``,
  the same two ways; and the verification alone (digest, structure);
- a second ``expman push`` with nothing new, and one that has to compare with
  the store (its memory of the last push deleted);
- ``expman pull --checkpoints none`` of ``--experiments`` branches (records
  built as bench/list_compare builds them, one manifest each) against ``git fetch``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from bench._timing import median, table, timed
from bench.list_compare import build

EXPMAN = str(Path(sys.executable).parent / "expman")

TRAIN = """\
import numpy as np
import expman

params = expman.params()
size = params["megabytes"] * 1024 * 1024 // params["checkpoints"] // 4
state = {"w": np.random.default_rng(0).standard_normal(size).astype(np.float32)}
ckpts = expman.CheckpointManager()
for step in range(1, params["checkpoints"] + 1):
    state["w"] += 1.0
    ckpts.save(step, state)
ckpts.close()
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def expman(cwd: Path, *args: str) -> None:
    result = subprocess.run([EXPMAN, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"expman {' '.join(args)} failed: {result.stderr}")


S3FS = """\
import json, sys, s3fs
how, endpoint, sources, targets = sys.argv[1], sys.argv[2], *json.loads(sys.argv[3])
fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
(fs.put if how == "put" else fs.get)(sources, targets)
"""


def s3fs_process(endpoint: str, how: str, sources: list[str], targets: list[str]) -> None:
    """s3fs's own put/get in a new process: imports and connection included, as expman's."""
    paths = json.dumps([sources, targets])
    subprocess.run([sys.executable, "-c", S3FS, how, endpoint, paths], check=True)


def verify(directory: Path, names: list[str]) -> None:
    """What pull does to each downloaded checkpoint, alone: its digest, then its structure."""
    from expman._digest import file_digest
    from expman.remote._pull import _validate

    for name in names:
        file_digest(directory / name)
        _validate(directory / name, name)


def rate(seconds: float, mib: float) -> list[str]:
    return [f"{seconds:.2f} s", f"{mib / seconds:.0f} MiB/s"]


def ratio(warm: float, cold: float, ours: float) -> str:
    return f"{warm / ours:.2f}x ({cold / ours:.2f}x)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    scratch = Path(tempfile.mkdtemp(prefix="expman-bench-push-"))
    rows: list[list[str]] = []
    samples: dict[str, list[float]] = {}
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        bare = scratch / "remote.git"
        git(scratch, "init", "-q", "--bare", "-b", "main", str(bare))
        a = scratch / "a"
        git(scratch, "init", "-q", "-b", "main", str(a))
        git(a, "config", "user.name", "Bench")
        git(a, "config", "user.email", "bench@example.com")
        (a / "train.py").write_text(TRAIN)
        expman(a, "init", "--command", "python train.py")
        config = (a / "expman.toml").read_text()
        config = config.replace(
            "[params]\n",
            f"[params]\nmegabytes = {args.megabytes}\ncheckpoints = {args.checkpoints}\n",
        ).replace("keep_max = 5", f"keep_max = {args.checkpoints}\nsave_every_steps = 1")
        (a / "expman.toml").write_text(config)
        git(a, "remote", "add", "origin", str(bare))
        option = f"endpoint_url={endpoint}"
        expman(a, "remote", "add", "origin", f"s3://{bucket}/expman", "--option", option)
        git(a, "add", "-A")
        git(a, "commit", "-q", "-m", "bench")
        git(a, "push", "-q", "origin", "main")
        expman(a, "new", "big")
        expman(a, "run", "big")
        files = sorted((a / ".expman" / "checkpoints" / "big").glob("ckpt-*.h5"))
        total = sum(f.stat().st_size for f in files)
        mib = total / 2**20

        sources = [str(f) for f in files]

        def sample(what: str, work: Callable[..., object], *args: object) -> None:
            samples.setdefault(what, []).append(timed(lambda: work(*args)))

        for repeat in range(args.repeats):
            prefix = f"{bucket}/r{repeat}"
            targets = [f"{prefix}/baseline/{f.name}" for f in files]
            sample("put", fs.put, sources, targets)
            sample("put, own process", s3fs_process, endpoint, "put", sources, targets)
            expman(a, "remote", "remove", "origin")
            expman(a, "remote", "add", "origin", f"s3://{prefix}/expman", "--option", option)
            sample("push", expman, a, "push")
            sample("push, nothing new", expman, a, "push")
            shutil.rmtree(a / ".expman" / "remote")
            sample("push, nothing new, compared", expman, a, "push")
            got = scratch / f"got{repeat}"
            got.mkdir()
            copies = [str(got / f.name) for f in files]
            sample("get", fs.get, targets, copies)
            shutil.rmtree(got)
            got.mkdir()
            sample("get, own process", s3fs_process, endpoint, "get", targets, copies)
            sample("verify", verify, got, [f.name for f in files])
            shutil.rmtree(got)
            b = scratch / f"b{repeat}"
            git(scratch, "clone", "-q", str(bare), b.name)
            expman(b, "remote", "remove", "origin")
            expman(b, "remote", "add", "origin", f"s3://{prefix}/expman", "--option", option)
            sample("pull", expman, b, "pull", "--checkpoints", "all")
            shutil.rmtree(b)
            fs.rm(prefix, recursive=True)
        m = {what: median(times) for what, times in samples.items()}
        rows += [
            [f"s3fs put ({mib:.0f} MiB, {len(files)} files)", *rate(m["put"], mib)],
            ["s3fs put, own process", *rate(m["put, own process"], mib)],
            [
                "expman push",
                *rate(m["push"], mib),
                ratio(m["put"], m["put, own process"], m["push"]),
            ],
            ["expman push, nothing new", f"{m['push, nothing new']:.2f} s", "", ""],
            [
                "expman push, nothing new, compared with the store",
                f"{m['push, nothing new, compared']:.2f} s",
                "",
                "",
            ],
            [f"s3fs get ({mib:.0f} MiB)", *rate(m["get"], mib)],
            ["s3fs get, own process", *rate(m["get, own process"], mib)],
            ["verification alone (BLAKE3 + structure)", *rate(m["verify"], mib)],
            [
                "expman pull --checkpoints all",
                *rate(m["pull"], mib),
                ratio(m["get"], m["get, own process"], m["pull"]),
            ],
        ]

        if args.experiments:  # 0: the 1 GiB push and pull only
            many = scratch / "many"
            build(many, args.experiments, 2)
            many_bare = scratch / "many.git"
            git(scratch, "init", "-q", "--bare", "-b", "main", str(many_bare))
            git(many, "remote", "add", "origin", str(many_bare))
            git(many, "push", "-q", "origin", "refs/heads/*:refs/heads/*")
            manifests = {}
            for e in range(args.experiments):
                name = f"exp{e:04d}"
                manifest = {
                    "format": 3,
                    "experiment": name,
                    "commit": "",
                    "pushed": "2026-11-25T00:00:00+00:00",
                    "files": {
                        f"checkpoints/ckpt-{200 * r:06d}.h5": {"blake3": "0" * 64, "size": 1}
                        for r in (1, 2)
                    },
                }
                content = json.dumps(manifest).encode()
                digest = hashlib.sha256(content).hexdigest()
                manifests[f"{bucket}/many/manifests/{name}/{digest}.json"] = content
            fs.pipe(manifests)
            clones = []
            for clone in ("c", "c2"):
                git(scratch, "clone", "-q", str(many_bare), clone)
                c = scratch / clone
                git(c, "config", "user.name", "Bench")
                git(c, "config", "user.email", "bench@example.com")
                expman(c, "remote", "add", "origin", f"s3://{bucket}/many", "--option", option)
                clones.append(c)
            git(scratch, "clone", "-q", "--bare", str(many_bare), "d.git")
            fetch = timed(
                lambda: git(
                    scratch / "d.git",
                    "fetch",
                    "-q",
                    "origin",
                    "+refs/heads/exp/*:refs/remotes/origin/exp/*",
                )
            )
            shutil.rmtree(scratch / "d.git")
            c, c2 = clones
            pull_many = timed(lambda: expman(c, "pull", "--checkpoints", "none"))
            again_many = timed(lambda: expman(c, "pull", "--checkpoints", "none"))
            branches_only = timed(lambda: expman(c2, "pull", "--checkpoints", "none", "--no-logs"))
            rows += [
                [f"git fetch of {args.experiments} exp/* branches", f"{fetch:.2f} s", "", ""],
                [
                    f"expman pull --checkpoints none, {args.experiments} experiments",
                    f"{pull_many:.2f} s",
                    "",
                    "",
                ],
                ["the same pull again, nothing new", f"{again_many:.2f} s", "", ""],
                [
                    f"expman pull --checkpoints none --no-logs, {args.experiments} experiments",
                    f"{branches_only:.2f} s",
                    "",
                    "",
                ],
            ]
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"medians of {args.repeats} alternating repeats; vs s3fs: in-process (own process)")
    print(table(["what", "time", "throughput", "vs s3fs"], rows))
    for what, times in samples.items():
        print(f"{what}: {', '.join(f'{t:.2f}' for t in times)} s")


if __name__ == "__main__":
    main()
