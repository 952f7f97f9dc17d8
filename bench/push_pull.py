"""expman push/pull against a local S3 API (moto's server), and s3fs's own put/get.

Builds a repository with one experiment whose recorded checkpoints total
``--megabytes``, then times on the same server, in the same run:

- ``expman push`` against ``s3fs.put`` of the same files (another prefix);
- ``expman pull --checkpoints all`` on a clone against ``s3fs.get`` of them;
- a second ``expman push`` with nothing new;
- ``expman pull --checkpoints none`` of ``--experiments`` branches (records
  built as bench/list_compare builds them, one manifest each) against ``git fetch``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench._timing import table, timed
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--experiments", type=int, default=1000)
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    scratch = Path(tempfile.mkdtemp(prefix="expman-bench-push-"))
    rows: list[list[str]] = []
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
        expman(
            a,
            "remote",
            "add",
            "origin",
            f"s3://{bucket}/expman",
            "--option",
            f"endpoint_url={endpoint}",
        )
        git(a, "add", "-A")
        git(a, "commit", "-q", "-m", "bench")
        git(a, "push", "-q", "origin", "main")
        expman(a, "new", "big")
        expman(a, "run", "big")
        files = sorted((a / ".expman" / "checkpoints" / "big").glob("ckpt-*.h5"))
        total = sum(f.stat().st_size for f in files)
        mib = total / 2**20

        put = timed(
            lambda: fs.put([str(f) for f in files], [f"{bucket}/baseline/{f.name}" for f in files])
        )
        push = timed(lambda: expman(a, "push"))
        again = timed(lambda: expman(a, "push"))
        got = scratch / "got"
        got.mkdir()
        get = timed(
            lambda: fs.get(
                [f"{bucket}/baseline/{f.name}" for f in files], [str(got / f.name) for f in files]
            )
        )
        git(scratch, "clone", "-q", str(bare), "b")
        b = scratch / "b"
        pull = timed(lambda: expman(b, "pull", "--checkpoints", "all"))
        rows += [
            [
                f"s3fs put ({mib:.0f} MiB, {len(files)} files)",
                f"{put:.2f} s",
                f"{mib / put:.0f} MiB/s",
                "",
            ],
            ["expman push", f"{push:.2f} s", f"{mib / push:.0f} MiB/s", f"{put / push:.2f}x"],
            ["expman push, nothing new", f"{again:.2f} s", "", ""],
            [f"s3fs get ({mib:.0f} MiB)", f"{get:.2f} s", f"{mib / get:.0f} MiB/s", ""],
            [
                "expman pull --checkpoints all",
                f"{pull:.2f} s",
                f"{mib / pull:.0f} MiB/s",
                f"{get / pull:.2f}x",
            ],
        ]

        many = scratch / "many"
        build(many, args.experiments, 2)
        many_bare = scratch / "many.git"
        git(scratch, "init", "-q", "--bare", "-b", "main", str(many_bare))
        git(many, "remote", "add", "origin", str(many_bare))
        git(many, "push", "-q", "origin", "refs/heads/*:refs/heads/*")
        for e in range(args.experiments):
            name = f"exp{e:04d}"
            manifest = {
                "format": 1,
                "experiment": name,
                "commit": "",
                "files": {
                    f"checkpoints/ckpt-{200 * r:06d}.h5": {"sha256": "0", "size": 1} for r in (1, 2)
                },
            }
            fs.pipe_file(f"{bucket}/many/manifests/{name}.json", json.dumps(manifest).encode())
        git(scratch, "clone", "-q", str(many_bare), "c")
        c = scratch / "c"
        git(c, "config", "user.name", "Bench")
        git(c, "config", "user.email", "bench@example.com")
        expman(
            c,
            "remote",
            "add",
            "origin",
            f"s3://{bucket}/many",
            "--option",
            f"endpoint_url={endpoint}",
        )
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
        pull_many = timed(lambda: expman(c, "pull", "--checkpoints", "none"))
        rows += [
            [f"git fetch of {args.experiments} exp/* branches", f"{fetch:.2f} s", "", ""],
            [
                f"expman pull --checkpoints none, {args.experiments} experiments",
                f"{pull_many:.2f} s",
                "",
                "",
            ],
        ]
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(["what", "time", "throughput", "vs s3fs"], rows))


if __name__ == "__main__":
    main()
