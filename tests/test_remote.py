"""expman push/pull between two clones ("machines") through a bare git remote and a real store.

The store is a local directory or a real S3 API on loopback (moto's server, with
s3fs as the client, as s3fs's own tests do). Everything is checked as a user sees
it: exit codes, exact error lines, files on disk, git history, the store's objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import h5py
import pytest

from tests.cli import EXPMAN, expman
from tests.conftest import git, make_repository
from tests.hostile_checkpoints import SECRET, external_packed


@dataclass(frozen=True)
class Store:
    url: str
    options: tuple[str, ...]

    def fs(self) -> Any:
        import fsspec

        kwargs = {"endpoint_url": self.options[0].split("=", 1)[1]} if self.options else {}
        fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **kwargs)
        return fs, root


@dataclass(frozen=True)
class Machines:
    a: Path
    b: Path
    bare: Path
    store: Store


class MotoServer:
    """moto's S3 server in this process, on a free loopback port; restartable, data kept."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials in the environment, and no user configuration to find others."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-do-not-store")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


@dataclass(frozen=True)
class _Endpoint:
    endpoint: str


def s3_store(moto_server: MotoServer | _Endpoint) -> Store:
    import s3fs

    bucket = f"team-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=moto_server.endpoint, skip_instance_cache=True).mkdir(bucket)
    return Store(f"s3://{bucket}/expman", (f"endpoint_url={moto_server.endpoint}",))


@pytest.fixture(params=["directory", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, aws_env: None, moto_server: MotoServer
) -> Store:
    if request.param == "directory":
        return Store(str(tmp_path / "store"), ())
    return s3_store(moto_server)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def make_machines(tmp_path: Path, store: Store) -> Machines:
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    a = make_repository(tmp_path / "a")
    git(a, "remote", "add", "origin", str(bare))
    options = [f"--option={option}" for option in store.options]
    ok(expman(a, "remote", "add", "origin", store.url, *options))
    git(a, "commit", "-q", "-am", "share experiments")
    git(a, "push", "-q", "origin", "main")
    git(tmp_path, "clone", "-q", str(bare), "b")
    b = tmp_path / "b"
    git(b, "config", "user.name", "Grace Hopper")
    git(b, "config", "user.email", "grace@example.com")
    return Machines(a, b, bare, store)


@pytest.fixture
def machines(tmp_path: Path, store: Store) -> Machines:
    return make_machines(tmp_path, store)


def records(repo: Path, name: str, run: int) -> list[dict[str, Any]]:
    text = git(repo, "show", f"exp/{name}:expman-runs/{name}/{run:03d}/checkpoints.json")
    entries: list[dict[str, Any]] = json.loads(text)
    return entries


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blake3_of(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def checkpoint_files(repo: Path, name: str) -> list[str]:
    directory = repo / ".expman" / "checkpoints" / name
    return sorted(p.name for p in directory.glob("*")) if directory.is_dir() else []


def train_and_push(machine: Path, name: str = "base") -> None:
    ok(expman(machine, "new", name, "--set", "steps=200"))
    ok(expman(machine, "run", name))
    ok(expman(machine, "push", name))


# -- end to end ------------------------------------------------------------------------


def test_two_machines_train_push_pull_resume_and_compare(machines: Machines) -> None:
    a, b = machines.a, machines.b
    train_and_push(a)

    pulled = ok(expman(b, "pull", "--json"))
    summary = json.loads(pulled.stdout)
    assert summary["branches"] == {"base": "created"}
    assert summary["checkpoints"] == {"base": [1, 200]} or summary["checkpoints"] == {"base": [200]}
    assert git(b, "rev-parse", "exp/base") == git(a, "rev-parse", "exp/base")
    resumed = ok(expman(b, "run", "base"))
    assert "starting at step 200" in resumed.stdout
    assert "finished at step 400" in resumed.stdout
    ok(expman(b, "push", "base"))

    ok(expman(a, "pull", "--checkpoints", "all"))
    subjects = git(a, "log", "--format=%s", "exp/base").splitlines()
    assert subjects[:2] == [
        "run 2 of base: step 400, loss 0.0025, accuracy 0.9975",
        "run 1 of base: step 200, loss 0.005, accuracy 0.995",
    ]
    compare = ok(expman(a, "compare", "base@1", "base@2"))
    assert "0.005" in compare.stdout
    assert "0.0025" in compare.stdout
    # every checkpoint the latest record names is here, byte-identical to its digest
    directory = a / ".expman" / "checkpoints" / "base"
    for entry in records(a, "base", 2):
        path = directory / entry["file"]
        assert path.stat().st_size == entry["size"]
        assert blake3_of(path) == entry["blake3"]
    # the event log came along: run 2's metrics continue run 1's
    events = (directory / "events.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in events]
    assert steps == list(range(1, 401))
    assert (
        (a / ".expman" / "runs" / "base" / "002" / "output.log")
        .read_text()
        .startswith("starting at step 200")
    )


_PULL_IN_THIS_PROCESS = """
import sys
import expman.cli

try:
    expman.cli.main(["pull", "--checkpoints", "all"])
except SystemExit as exit:
    print(exit.code, sorted(m for m in ("h5py", "numpy") if m in sys.modules))
"""


def test_pull_leaves_a_pulled_checkpoint_to_hdf5_in_the_checking_process_only(
    machines: Machines,
) -> None:
    """A pulled file is a stranger's: HDF5 parses it only in the helper (docs/sharing.md)."""
    train_and_push(machines.a)
    pulled = subprocess.run(
        [sys.executable, "-c", _PULL_IN_THIS_PROCESS],
        cwd=machines.b,
        capture_output=True,
        text=True,
        check=True,
    )
    assert pulled.stdout.splitlines()[-1] == "0 []"
    assert checkpoint_files(machines.b, "base") == checkpoint_files(machines.a, "base")


def test_a_second_push_with_nothing_new_sends_nothing(machines: Machines) -> None:
    train_and_push(machines.a)
    again = json.loads(ok(expman(machines.a, "push", "--json")).stdout)
    assert again["uploaded_files"] == 0
    assert again["manifests_written"] == []


def test_the_store_holds_each_file_once_by_digest(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    store = tmp_path / "store"
    (path,) = (store / "manifests" / "base").iterdir()  # one push, one manifest
    assert path.name == f"{sha256(path)}.json"  # named by its own digest
    manifest = json.loads(path.read_text())
    files = manifest["files"]
    assert sorted(files) == [
        "checkpoints/ckpt-000001.h5",
        "checkpoints/ckpt-000200.h5",
        "checkpoints/events.jsonl",
        *sorted(p for p in files if p.startswith("checkpoints/events.out.tfevents")),
        "runs/001/output.log",
    ]
    for entry in records(machines.a, "base", 1):
        assert files[f"checkpoints/{entry['file']}"] == {
            "blake3": entry["blake3"],
            "size": entry["size"],
        }
        stored = store / "objects" / "blake3" / entry["blake3"][:2] / entry["blake3"]
        assert blake3_of(stored) == entry["blake3"]
    assert len(list((store / "objects").rglob("*"))) - len(
        list((store / "objects").rglob("*/"))
    ) >= len(files)


# -- two machines, one experiment ------------------------------------------------------


def test_a_push_that_is_not_a_fast_forward_is_refused_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    a, b = machines.a, machines.b
    train_and_push(a)
    ok(expman(b, "pull"))
    ok(expman(a, "run", "base", "--set", "steps=10"))
    ok(expman(b, "run", "base", "--set", "steps=20"))
    ok(expman(a, "push"))
    before_b = git(b, "rev-parse", "exp/base")

    refused = expman(b, "push")
    assert refused.returncode == 15
    assert refused.stderr == (
        "expman: error: the git remote origin has runs of base that this machine does not "
        "have (not a fast-forward): run expman pull base first, then push again; nothing "
        "was lost on either side\n"
    )
    assert git(b, "rev-parse", "exp/base") == before_b
    assert git(machines.bare, "rev-parse", "exp/base") == git(a, "rev-parse", "exp/base")

    pulled = expman(b, "pull")
    assert pulled.returncode == 14
    assert "base ran both here and on the remote since they last met" in pulled.stderr
    assert git(b, "rev-parse", "exp/base") == before_b  # B's run is still there


# -- faults ----------------------------------------------------------------------------


def test_a_corrupted_object_is_caught_by_its_digest_and_never_used(machines: Machines) -> None:
    train_and_push(machines.a)
    latest = records(machines.a, "base", 1)[-1]
    fs, root = machines.store.fs()
    key = f"{root}/objects/blake3/{latest['blake3'][:2]}/{latest['blake3']}"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    fs.pipe_file(key, bytes(data))

    pulled = expman(machines.b, "pull")
    assert pulled.returncode == 14
    assert f"expman: error: {latest['file']} of base from " in pulled.stderr
    assert "does not match its digest" in pulled.stderr
    assert "the object on the store is damaged and was not used" in pulled.stderr
    assert latest["file"] not in checkpoint_files(machines.b, "base")
    assert not [n for n in checkpoint_files(machines.b, "base") if n.startswith(".")]
    # and a run does not start from scratch in silence either
    run = expman(machines.b, "run", "base")
    assert run.returncode == 14
    assert "train" not in run.stdout


def forge_latest_checkpoint(machine: Path, change: Callable[[h5py.File], None]) -> Path:
    """Rewrite base's latest checkpoint, and commit a run record naming the new bytes.

    What a teammate who can push to the git remote (and so decides which digests
    are expected) could do. Returns the rewritten checkpoint's path.
    """
    entries = records(machine, "base", 1)
    path = machine / ".expman" / "checkpoints" / "base" / entries[-1]["file"]
    with h5py.File(path, "r+") as f:
        change(f)
    entries[-1].update(blake3=blake3_of(path), size=path.stat().st_size)
    commit_records(machine, "base", 1, entries, "forged")
    return path


def commit_records(
    machine: Path, name: str, run: int, entries: list[dict[str, Any]], message: str
) -> None:
    """Commit ``entries`` as run ``run``'s checkpoints.json on exp/NAME, outside the checkout."""
    env = {**os.environ, "GIT_INDEX_FILE": str(machine.parent / "forged.index")}

    def plumbing(*args: str, content: str | None = None) -> str:
        run = subprocess.run(
            ["git", *args], cwd=machine, env=env, input=content, text=True, capture_output=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    plumbing("read-tree", f"exp/{name}")
    blob = plumbing("hash-object", "-w", "--stdin", content=json.dumps(entries))
    record = f"expman-runs/{name}/{run:03d}/checkpoints.json"
    plumbing("update-index", "--cacheinfo", f"100644,{blob},{record}")
    commit = plumbing("commit-tree", plumbing("write-tree"), "-p", f"exp/{name}", "-m", message)
    plumbing("update-ref", f"refs/heads/exp/{name}", commit)


def test_a_hostile_file_matching_a_forged_record_is_refused_at_pull(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    ok(expman(machines.a, "new", "base", "--set", "steps=200"))
    ok(expman(machines.a, "run", "base"))
    secret = tmp_path / "token.txt"
    secret.write_text(SECRET)
    forged = forge_latest_checkpoint(
        machines.a, lambda f: external_packed(f, "packed/int64", secret, len(f["packed/int64"]))
    )
    ok(expman(machines.a, "push", "base"))

    pulled = expman(machines.b, "pull")
    assert pulled.returncode == 14
    line = pulled.stderr.splitlines()[-1]
    assert line == (
        f"expman: error: {forged.name} of base matches its digest but is not a valid "
        "checkpoint: it breaks the checkpoint format ('/packed/int64' has external "
        "storage); it was not used"
    )
    assert "s3cr3t" not in pulled.stdout + pulled.stderr
    assert not [n for n in checkpoint_files(machines.b, "base") if n.startswith((".", "ckpt-"))]


def test_tensor_bytes_matching_a_forged_record_are_pulled_and_refused_at_restore(
    tmp_path: Path,
) -> None:
    """Pull checks the file's structure; each tensor's checksum is checked where it is read."""
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    ok(expman(machines.a, "new", "base", "--set", "steps=200"))
    ok(expman(machines.a, "run", "base"))

    def change(f: h5py.File) -> None:  # same layout, other bytes in dnn/logits/kernel
        manifest = json.loads(f["meta/tensors"][()])
        entry = next(t for t in manifest if t["name"] == "dnn/logits/kernel")
        f[entry["path"]][entry["offset"]] = 42.0

    forged = forge_latest_checkpoint(machines.a, change)
    ok(expman(machines.a, "push", "base"))

    ok(expman(machines.b, "pull"))
    pulled = machines.b / ".expman" / "checkpoints" / "base" / forged.name
    assert sha256(pulled) == sha256(forged)
    run = expman(machines.b, "run", "base")
    assert run.returncode == 8
    assert (
        f"expman: error: {pulled} is corrupt: tensor 'dnn/logits/kernel' fails its checksum "
        "(recorded xxh3-64:"
    ) in run.stderr
    assert "): restore another step, or move the file away\n" in run.stderr
    assert "starting at step" not in run.stdout


def push_as_an_earlier_version(machine: Path, store: Path) -> dict[str, Path]:
    """Train base and share it as expman did before BLAKE3: sha256 in records and store.

    The run record names each checkpoint by its sha256, the store holds objects
    under objects/sha256/ and a format 2 manifest. Returns the files by manifest path.
    """
    ok(expman(machine, "new", "base", "--set", "steps=200"))
    ok(expman(machine, "run", "base"))
    directory = machine / ".expman" / "checkpoints" / "base"
    entries = records(machine, "base", 1)
    for entry in entries:
        del entry["blake3"]
        entry["sha256"] = sha256(directory / entry["file"])
    commit_records(machine, "base", 1, entries, "run 1 of base, as an earlier version")
    git(machine, "push", "-q", "origin", "exp/base")
    files = {f"checkpoints/{entry['file']}": directory / entry["file"] for entry in entries}
    files["checkpoints/events.jsonl"] = directory / "events.jsonl"
    files["runs/001/output.log"] = machine / ".expman" / "runs" / "base" / "001" / "output.log"
    write_manifest(store, "base", {path: file.read_bytes() for path, file in files.items()})
    return files


def test_an_experiment_shared_by_an_earlier_version_pulls_resumes_and_pushes(
    tmp_path: Path,
) -> None:
    """Records and objects named by sha256 still verify; new runs beside them use BLAKE3."""
    store = tmp_path / "store"
    machines = make_machines(tmp_path, Store(str(store), ()))
    a, b = machines.a, machines.b
    files = push_as_an_earlier_version(a, store)
    latest = records(a, "base", 1)[-1]
    old_object = store / "objects" / "sha256" / latest["sha256"][:2] / latest["sha256"]
    good = old_object.read_bytes()
    old_object.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))

    damaged = expman(b, "pull")
    assert damaged.returncode == 14
    assert damaged.stderr.splitlines()[-1] == (
        f"expman: error: {latest['file']} of base from {store} does not match its digest "
        f"(sha256:{sha256(old_object)[:12]}..., expected sha256:{latest['sha256'][:12]}...): "
        "the object on the store is damaged and was not used; push it again from a machine "
        "that has it"
    )
    assert latest["file"] not in checkpoint_files(b, "base")

    old_object.write_bytes(good)
    ok(expman(b, "pull", "--checkpoints", "all"))
    for path, file in files.items():
        pulled = b / ".expman" / ("checkpoints" if path.startswith("checkpoints/") else "runs")
        pulled = pulled / "base" / path.split("/", 1)[1]
        assert pulled.read_bytes() == file.read_bytes(), path
    resumed = ok(expman(b, "run", "base"))
    assert "starting at step 200" in resumed.stdout
    ok(expman(b, "push", "base"))

    ok(expman(a, "pull", "--checkpoints", "all"))
    run_2 = records(a, "base", 2)
    assert all("blake3" in entry and "sha256" not in entry for entry in run_2)
    for entry in run_2:
        path = a / ".expman" / "checkpoints" / "base" / entry["file"]
        assert blake3_of(path) == entry["blake3"]
        assert (store / "objects" / "blake3" / entry["blake3"][:2] / entry["blake3"]).is_file()
    manifests = [json.loads(p.read_text()) for p in (store / "manifests" / "base").iterdir()]
    assert sorted(m["format"] for m in manifests) == [2, 3]
    compare = ok(expman(a, "compare", "base@1", "base@2"))
    assert "0.0025" in compare.stdout


def test_a_missing_manifest_means_no_files_are_trusted(machines: Machines) -> None:
    train_and_push(machines.a)
    fs, root = machines.store.fs()
    fs.rm(f"{root}/manifests/base", recursive=True)

    pulled = expman(machines.b, "pull")
    assert pulled.returncode == 14
    assert pulled.stderr.splitlines()[-1] == (
        f"expman: error: the store {machines.store.url} has no manifest for base, whose "
        "records name checkpoints: its files were never pushed (or the push stopped early); "
        "run expman push base on the machine that ran it"
    )
    assert git(machines.b, "rev-parse", "exp/base") == git(machines.a, "rev-parse", "exp/base")
    assert checkpoint_files(machines.b, "base") == []


def test_run_of_a_pulled_experiment_fetches_its_latest_checkpoint_first(
    machines: Machines,
) -> None:
    train_and_push(machines.a)
    ok(expman(machines.b, "pull", "--checkpoints", "none"))
    assert "ckpt-000200.h5" not in checkpoint_files(machines.b, "base")

    run = ok(expman(machines.b, "run", "base"))
    assert "expman: fetched the latest checkpoint of base (step 200) from the remote" in run.stderr
    assert "starting at step 200" in run.stdout


def test_run_without_a_remote_says_how_to_get_the_latest_checkpoint(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    ok(expman(machines.b, "pull", "--checkpoints", "none"))
    ok(expman(machines.b, "remote", "remove", "origin"))

    run = expman(machines.b, "run", "base")
    assert run.returncode == 5
    assert run.stderr == (
        "expman: error: the latest checkpoint of base (ckpt-000200.h5, step 200, from run 1) "
        "is not on this machine: fetch it with expman pull base --checkpoints latest, or "
        "start over with expman run base --fresh\n"
    )
    assert run.stdout == ""


def _big_experiment(machine: Path, megabytes: int, files: int) -> None:
    """base, plus large TensorBoard-like event files, so a push takes a while."""
    ok(expman(machine, "new", "base", "--set", "steps=200"))
    ok(expman(machine, "run", "base"))
    directory = machine / ".expman" / "checkpoints" / "base"
    for number in range(files):
        (directory / f"events.out.tfevents.big{number}").write_bytes(
            os.urandom(megabytes * 1024 * 1024)
        )


def _wait_for_objects(fs: Any, root: str, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        fs.invalidate_cache()
        if len(fs.find(f"{root}/objects")) >= count:
            return
        time.sleep(0.02)
    pytest.fail("the push finished (or stalled) before the first objects arrived")


def test_a_push_killed_midway_resumes_and_nothing_partial_is_ever_restored(
    tmp_path: Path, aws_env: None, moto_server: MotoServer
) -> None:
    machines = make_machines(tmp_path, s3_store(moto_server))
    _big_experiment(machines.a, megabytes=24, files=8)
    fs, root = machines.store.fs()
    push = subprocess.Popen(
        [str(EXPMAN), "push"],
        cwd=machines.a,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    _wait_for_objects(fs, root, 1, push)
    os.killpg(push.pid, signal.SIGKILL)
    push.wait()
    assert fs.find(f"{root}/manifests") == []
    # what a killed push left is never used: the branch may be there, its files are not
    pulled = expman(machines.b, "pull")
    if git(machines.bare, "branch", "--list", "exp/base"):
        assert pulled.returncode == 14
        assert checkpoint_files(machines.b, "base") == []

    again = json.loads(ok(expman(machines.a, "push", "--json")).stdout)
    assert again["already_stored"] >= 1
    assert again["manifests_written"] == ["base"]
    ok(expman(machines.b, "pull", "--checkpoints", "all"))
    for entry in records(machines.a, "base", 1):
        assert (
            blake3_of(machines.b / ".expman" / "checkpoints" / "base" / entry["file"])
            == entry["blake3"]
        )
    big = machines.b / ".expman" / "checkpoints" / "base" / "events.out.tfevents.big7"
    assert sha256(big) == sha256(machines.a / ".expman" / "checkpoints" / "base" / big.name)


def _moto_process(port: int) -> subprocess.Popen[bytes]:
    """moto's server in a process of its own: killing it drops every connection at once."""
    server = subprocess.Popen(
        [str(Path(EXPMAN).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.05)
    server.kill()
    pytest.fail("moto's server did not start")


def test_the_server_gone_mid_push_is_one_line_and_the_next_push_succeeds(
    tmp_path: Path, aws_env: None
) -> None:
    port = MotoServer().port
    server = _moto_process(port)
    try:
        machines = make_machines(tmp_path, s3_store(_Endpoint(f"http://127.0.0.1:{port}")))
        _big_experiment(machines.a, megabytes=24, files=8)
        fs, root = machines.store.fs()
        push = subprocess.Popen(
            [str(EXPMAN), "push"],
            cwd=machines.a,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_objects(fs, root, 1, push)
        server.kill()
        server.wait()
        _, stderr = push.communicate(timeout=120)
        assert push.returncode == 15
        assert len(stderr.splitlines()) == 1
        assert stderr.startswith(f"expman: error: cannot upload to {machines.store.url} (")
        assert stderr.endswith(
            "check the URL, the endpoint and the network, then retry (a push "
            "resumes where it stopped)\n"
        )
        assert git(machines.bare, "branch", "--list", "exp/base") == ""  # objects first

        server = _moto_process(port)  # a new, empty server: the bucket again, nothing in it
        fs.mkdir(machines.store.url.removeprefix("s3://").split("/")[0])
        ok(expman(machines.a, "push"))
        ok(expman(machines.b, "pull"))
        assert "ckpt-000200.h5" in checkpoint_files(machines.b, "base")
    finally:
        server.kill()
        server.wait()


# -- errors and credentials ------------------------------------------------------------


def test_a_missing_bucket_is_one_line(
    tmp_path: Path, aws_env: None, moto_server: MotoServer
) -> None:
    store = Store("s3://no-such-bucket/expman", (f"endpoint_url={moto_server.endpoint}",))
    machines = make_machines(tmp_path, store)
    ok(expman(machines.a, "new", "base", "--set", "steps=3"))
    ok(expman(machines.a, "run", "base"))
    push = expman(machines.a, "push")
    assert push.returncode == 15
    assert push.stderr == (
        "expman: error: cannot upload to s3://no-such-bucket/expman: The specified bucket does "
        "not exist (does the bucket or directory exist? create it, or fix the URL with expman "
        "remote remove/add)\n"
    )


def test_no_credentials_is_one_line(
    tmp_path: Path, aws_env: None, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    machines = make_machines(tmp_path, s3_store(moto_server))
    ok(expman(machines.a, "new", "base", "--set", "steps=3"))
    ok(expman(machines.a, "run", "base"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    push = expman(machines.a, "push")
    assert push.returncode == 15
    assert push.stderr.startswith(
        f"expman: error: cannot read a manifest from {machines.store.url} (NoCredentialsError"
    )
    assert push.stderr.endswith(
        "set credentials in your environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for "
        "S3) or the storage library's configuration\n"
    )


def test_credentials_are_refused_in_expman_toml_and_never_written(machines: Machines) -> None:
    added = expman(machines.a, "remote", "add", "other", "s3://b/x", "--option", "secret=abc")
    assert added.returncode == 11
    assert added.stderr == (
        "expman: error: expman remote add --option: 'secret' looks like a credential, and "
        "expman never stores credentials: set them in the environment (AWS_ACCESS_KEY_ID, "
        "...) or in the storage library's own configuration instead\n"
    )
    train_and_push(machines.a)
    ok(expman(machines.b, "pull"))
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "testing-secret-do-not-store")
    everything = git(machines.bare, "log", "--all", "-p", "--format=%B")
    assert secret not in everything
    for machine in (machines.a, machines.b):
        for path in machine.rglob("*"):
            if path.is_file() and ".git" not in path.parts:
                assert secret.encode() not in path.read_bytes(), path


def test_remote_add_list_remove(workspace: Path) -> None:
    ok(
        expman(
            workspace,
            "remote",
            "add",
            "origin",
            "s3://team-bucket/expman",
            "--option",
            "endpoint_url=http://localhost:9000",
        )
    )
    listed = json.loads(ok(expman(workspace, "remote", "list", "--json")).stdout)
    assert listed == [
        {
            "name": "origin",
            "url": "s3://team-bucket/expman",
            "git_remote": "origin",
            "options": {"endpoint_url": "http://localhost:9000"},
        }
    ]
    assert (
        '[remote.origin]\nurl = "s3://team-bucket/expman"'
        in (workspace / "expman.toml").read_text()
    )
    twice = expman(workspace, "remote", "add", "origin", "/tmp/x")
    assert twice.returncode == 2
    ok(expman(workspace, "remote", "remove", "origin"))
    assert "remote" not in (workspace / "expman.toml").read_text()
    none = expman(workspace, "push")
    assert none.returncode == 11
    assert none.stderr == (
        "expman: error: no remote in expman.toml: add one with expman remote add origin "
        "s3://bucket/path (or a directory)\n"
    )


# -- concurrent pushes -----------------------------------------------------------------


def test_two_pushes_at_once_lose_no_manifest_entry(
    tmp_path: Path, aws_env: None, moto_server: MotoServer
) -> None:
    machines = make_machines(tmp_path, s3_store(moto_server))
    a, b = machines.a, machines.b
    train_and_push(a)
    ok(expman(b, "pull"))
    # A adds big files (a slow upload); B, meanwhile, adds a small one and pushes it all
    directory = a / ".expman" / "checkpoints" / "base"
    for number in range(8):
        (directory / f"events.out.tfevents.big{number}").write_bytes(os.urandom(32 * 2**20))
    (b / ".expman" / "runs" / "base" / "001" / "review.txt").write_text("looks good\n")
    fs, root = machines.store.fs()
    before = len(fs.find(f"{root}/objects"))
    push_a = subprocess.Popen(
        [str(EXPMAN), "push"],
        cwd=a,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_objects(fs, root, before + 1, push_a)  # A has read the manifests, and uploads
    assert push_a.poll() is None, "A's push ended already: the test could not overlap them"
    os.killpg(push_a.pid, signal.SIGSTOP)  # A waits, mid-upload, while B pushes
    try:
        ok(expman(b, "push"))
    finally:
        os.killpg(push_a.pid, signal.SIGCONT)
    _, stderr = push_a.communicate(timeout=120)
    assert push_a.returncode == 0, stderr

    ok(expman(a, "pull"))
    assert (a / ".expman" / "runs" / "base" / "001" / "review.txt").read_text() == "looks good\n"
    ok(expman(b, "pull"))
    pulled = b / ".expman" / "checkpoints" / "base" / "events.out.tfevents.big7"
    assert sha256(pulled) == sha256(directory / pulled.name)


# -- garbage ---------------------------------------------------------------------------


def objects_on(store: Path) -> set[str]:
    """Each object as ``ALGORITHM:HEX``, the digest its path names."""
    return {
        f"{p.parent.parent.name}:{p.name}" for p in (store / "objects").rglob("*") if p.is_file()
    }


def test_gc_lists_by_default_and_deletes_only_what_nothing_references(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    a, store = machines.a, tmp_path / "store"
    train_and_push(a)
    (a / ".expman" / "runs" / "base" / "001" / "review.txt").write_text("looks good\n")
    ok(expman(a, "push"))  # a second manifest, naming everything the first names
    first, second = sorted(
        (store / "manifests" / "base").iterdir(), key=lambda p: json.loads(p.read_text())["pushed"]
    )
    # an object as earlier versions named them (by sha256) that nothing references
    old = hashlib.sha256(b"left by a push that never finished").hexdigest()
    (store / "objects" / "sha256" / old[:2]).mkdir(parents=True, exist_ok=True)
    (store / "objects" / "sha256" / old[:2] / old).write_bytes(b"left by a push ...")
    garbage = f"sha256:{old}"
    everything = objects_on(store)

    young = ok(expman(a, "remote", "gc"))
    assert young.stderr.splitlines()[-1] == (
        "expman: 1 unreferenced object(s) younger than 24 h left alone"
    )
    listed = json.loads(ok(expman(a, "remote", "gc", "--min-age", "0", "--json")).stdout)
    assert listed["deleted"] is False
    assert listed["unreferenced_objects"] == [garbage]
    assert listed["redundant_manifests"] == [f"base/{first.name}"]
    assert objects_on(store) == everything and first.exists()  # a dry run deletes nothing

    ok(expman(a, "remote", "gc", "--delete", "--min-age", "0"))
    assert objects_on(store) == everything - {garbage}
    assert not first.exists() and second.exists()
    for entry in records(a, "base", 1):
        assert f"blake3:{entry['blake3']}" in objects_on(store)
    ok(expman(machines.b, "pull", "--checkpoints", "all"))
    assert (machines.b / ".expman" / "runs" / "base" / "001" / "review.txt").is_file()


def test_gc_keeps_what_a_branch_record_names_even_without_a_manifest(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    store = tmp_path / "store"
    train_and_push(machines.a)
    everything = objects_on(store)
    shutil.rmtree(store / "manifests")  # as if the push had died before its manifest

    gone = json.loads(
        ok(expman(machines.b, "remote", "gc", "--delete", "--min-age", "0", "--json")).stdout
    )
    kept = objects_on(store)
    recorded = {f"blake3:{entry['blake3']}" for entry in records(machines.a, "base", 1)}
    assert recorded <= kept  # B never had the branch: gc fetched it and read its records
    assert set(gone["unreferenced_objects"]) == everything - recorded  # the logs, unnamed now
    assert kept == recorded


# -- progress and summaries ------------------------------------------------------------


def on_a_terminal(cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run expman with stderr on a pseudo-terminal; return its code, stdout and stderr."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(EXPMAN), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    stdout, _ = process.communicate()
    return process.returncode, stdout.decode(), b"".join(chunks).decode()


def test_transfers_draw_a_progress_bar_on_a_terminal_and_nothing_on_a_pipe(
    tmp_path: Path, aws_env: None, moto_server: MotoServer
) -> None:
    machines = make_machines(tmp_path, s3_store(moto_server))
    _big_experiment(machines.a, megabytes=8, files=2)
    code, _, terminal = on_a_terminal(machines.a, "push")
    assert code == 0
    bar = re.compile(
        r"uploading to origin \[[#-]{20}\] [\d.]+ MiB/[\d.]+ MiB [\d.]+ (B|KiB|MiB|GiB)/s ETA \d+s"
    )
    assert bar.search(terminal), terminal
    assert re.search(r"uploading to origin \[#{20}\] ([\d.]+ MiB)/\1 ", terminal), terminal

    code, _, terminal = on_a_terminal(machines.b, "pull", "--checkpoints", "all")
    assert code == 0
    assert re.search(
        r"downloading checkpoints \[#{20}\] ([\d.]+ \w+)/\1 [\d.]+ \w+/s ETA \d+s", terminal
    )

    (machines.a / ".expman" / "runs" / "base" / "001" / "more.txt").write_text("x" * 100)
    piped = ok(expman(machines.a, "push"))
    assert "ETA" not in piped.stderr and "\r" not in piped.stderr
    assert piped.stderr.splitlines() == [
        "expman: pushed 1 experiment(s) to origin "
        f"({machines.store.url}): 1 file(s) uploaded (100 B), 0 already there, 1 manifest(s) "
        "written"
    ]


def test_push_and_pull_json_summaries(machines: Machines) -> None:
    ok(expman(machines.a, "new", "base", "--set", "steps=200"))
    ok(expman(machines.a, "run", "base"))
    recorded = records(machines.a, "base", 1)
    pushed = json.loads(ok(expman(machines.a, "push", "--json")).stdout)
    assert pushed == {
        "remote": "origin",
        "url": machines.store.url,
        "experiments": ["base"],
        "uploaded_files": pushed["uploaded_files"],
        "uploaded_bytes": pushed["uploaded_bytes"],
        "already_stored": 0,
        "manifests_written": ["base"],
        "behind": [],
    }
    assert pushed["uploaded_files"] >= len(recorded) + 2  # checkpoints, events, output log
    assert pushed["uploaded_bytes"] >= sum(entry["size"] for entry in recorded)
    again = json.loads(ok(expman(machines.a, "push", "--json")).stdout)
    assert (again["uploaded_files"], again["manifests_written"]) == (0, [])

    pulled = json.loads(ok(expman(machines.b, "pull", "--json")).stdout)
    latest = recorded[-1]
    assert pulled["remote"] == "origin" and pulled["url"] == machines.store.url
    assert pulled["branches"] == {"base": "created"}
    assert pulled["checkpoints"] == {"base": [latest["step"]]}
    assert pulled["problems"] == []
    assert pulled["downloaded_files"] == pushed["uploaded_files"] - (len(recorded) - 1)
    assert pulled["downloaded_bytes"] == pushed["uploaded_bytes"] - sum(
        entry["size"] for entry in recorded[:-1]
    )


# -- what a stranger's manifest may name ----------------------------------------------


def write_manifest(store: Path, name: str, files: dict[str, bytes]) -> None:
    """A manifest as a push writes it, naming ``files`` (each stored as an object)."""
    entries = {}
    for path, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        (store / "objects" / "sha256" / digest[:2]).mkdir(parents=True, exist_ok=True)
        (store / "objects" / "sha256" / digest[:2] / digest).write_bytes(content)
        entries[path] = {"sha256": digest, "size": len(content)}
    manifest = {"format": 2, "experiment": name, "commit": "", "pushed": "9", "files": entries}
    content = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    directory = store / "manifests" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{hashlib.sha256(content).hexdigest()}.json").write_bytes(content)


@pytest.mark.parametrize(
    "path",
    [
        "runs/../../../escaped.txt",
        "checkpoints/../../runs/other/x",
        "/etc/escaped.txt",
        "runs//x",
        "runs/.hidden",
        "checkpoints/.git/config",
        "runs/./x",
        "escaped.txt",
    ],
)
def test_a_manifest_naming_a_path_outside_the_experiment_is_refused(
    tmp_path: Path, path: str
) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    write_manifest(tmp_path / "store", "base", {path: b"not yours\n"})
    before = {p for p in tmp_path.rglob("*")}

    pulled = expman(machines.b, "pull", "--checkpoints", "none")
    assert pulled.returncode == 14
    assert pulled.stderr == (
        f"expman: error: the manifest of base names a file {path!r} outside the experiment's "
        "directories: refusing it; push the experiment again from a trusted machine\n"
    )
    created = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in created if p.is_file() and p.read_bytes() == b"not yours\n"]


def test_a_manifest_naming_neither_checkpoints_nor_runs_is_refused(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    write_manifest(tmp_path / "store", "base", {"worktrees/base/x": b"not yours\n"})
    pulled = expman(machines.b, "pull", "--checkpoints", "none")
    assert pulled.returncode == 14
    assert pulled.stderr == (
        "expman: error: the manifest of base names 'worktrees/base/x', neither checkpoints/ nor "
        "runs/: refusing it; push the experiment again from a trusted machine\n"
    )
    assert not (machines.b / ".expman" / "worktrees").exists()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            {"sha256": "../../../../secret", "size": 3},
            "sha256 '../../../../secret' is not a digest",
        ),
        ({"blake3": "AB" * 32, "size": 3}, f"blake3 '{'AB' * 32}' is not a digest"),
        ({"md5": "0" * 32, "size": 3}, "no digest (blake3 or sha256) in ['md5', 'size']"),
    ],
)
def test_a_manifest_whose_digest_could_name_another_path_is_refused(
    tmp_path: Path, entry: dict[str, Any], reason: str
) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    directory = tmp_path / "store" / "manifests" / "base"
    manifest = {
        "format": 3,
        "experiment": "base",
        "commit": "",
        "pushed": "9",
        "files": {"runs/001/notes.txt": entry},
    }
    content = json.dumps(manifest).encode()
    where = directory / f"{hashlib.sha256(content).hexdigest()}.json"
    where.write_bytes(content)

    pulled = expman(machines.b, "pull", "--checkpoints", "none")
    assert pulled.returncode == 14
    assert pulled.stderr == (
        f"expman: error: the manifest {where} is damaged ({reason}): push the experiment "
        "again from a machine that has its files\n"
    )
    assert not (machines.b / ".expman" / "runs" / "base" / "001" / "notes.txt").exists()


def test_a_manifest_from_a_newer_expman_says_to_upgrade(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    directory = tmp_path / "store" / "manifests" / "base"
    content = json.dumps({"format": 4, "files": {"runs/x": {"blake4": "0"}}}).encode()
    where = directory / f"{hashlib.sha256(content).hexdigest()}.json"
    where.write_bytes(content)

    pulled = expman(machines.b, "pull")
    assert pulled.returncode == 14
    assert pulled.stderr == (
        f"expman: error: the manifest {where} was written by a newer expman (format 4): "
        "upgrade expman to read it\n"
    )


def test_a_record_naming_a_checkpoint_outside_its_directory_is_refused(tmp_path: Path) -> None:
    """A teammate who can push to the git remote decides the records; not where files go."""
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    entries = records(machines.a, "base", 1)
    entries[-1]["file"] = "../../../../escaped.h5"
    commit_records(machines.a, "base", 1, entries, "a record naming a path outside")
    damaged = (
        "expman: error: the run record expman-runs/base/001/checkpoints.json on base's branch "
        "is damaged ('../../../../escaped.h5' is not a checkpoint's name): its checkpoints "
        "cannot be shared or checked; fix or revert that commit\n"
    )
    pushed = expman(machines.a, "push", "base")
    assert (pushed.returncode, pushed.stderr) == (14, damaged)
    git(machines.a, "push", "-q", "origin", "exp/base")  # the teammate pushes it with git

    pulled = expman(machines.b, "pull")
    assert (pulled.returncode, pulled.stderr) == (14, damaged)
    assert not list(tmp_path.rglob("escaped.h5"))


def test_credentials_already_in_expman_toml_are_refused(tmp_path: Path) -> None:
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    config = machines.a / "expman.toml"
    config.write_text(
        config.read_text() + '\n[remote.other]\nurl = "s3://b/x"\n'
        'options = { endpoint_url = "http://x", aws_secret_access_key = "abc" }\n'
    )
    for command in (["push"], ["pull"], ["remote", "list"], ["remote", "gc"]):
        refused = expman(machines.a, *command)
        assert refused.returncode == 11, command
        assert refused.stderr == (
            f"expman: error: {config}: [remote.other] options: 'aws_secret_access_key' looks "
            "like a credential, and expman never stores credentials: set them in the "
            "environment (AWS_ACCESS_KEY_ID, ...) or in the storage library's own "
            "configuration instead\n"
        ), command
    assert not (tmp_path / "store").exists()


def test_pull_of_branches_only_does_not_contact_the_store(tmp_path: Path, aws_env: None) -> None:
    closed = MotoServer()  # a free port that nothing listens on: every request is refused
    machines = make_machines(tmp_path, Store(str(tmp_path / "store"), ()))
    train_and_push(machines.a)
    ok(expman(machines.b, "remote", "remove", "origin"))
    ok(
        expman(
            machines.b,
            "remote",
            "add",
            "origin",
            "s3://team/expman",
            "--option",
            f"endpoint_url={closed.endpoint}",
        )
    )

    pulled = json.loads(
        ok(expman(machines.b, "pull", "--checkpoints", "none", "--no-logs", "--json")).stdout
    )
    assert pulled["branches"] == {"base": "created"}
    assert pulled["downloaded_files"] == 0
    assert git(machines.b, "rev-parse", "exp/base") == git(machines.a, "rev-parse", "exp/base")
    assert not (machines.b / ".expman" / "runs" / "base").exists()

    with_logs = expman(machines.b, "pull", "--checkpoints", "none")
    assert with_logs.returncode == 15
    assert with_logs.stderr.startswith(
        "expman: error: cannot read a manifest from s3://team/expman ("
    )


_ORPHANED_TASK = """
import asyncio, gc
from expman.remote._config import RemoteConfig
from expman.remote._store import ObjectStore

store = ObjectStore(RemoteConfig("origin", "s3://bucket/expman", "origin",
                                 {"endpoint_url": "http://127.0.0.1:9"}))

async def send_body():  # what aiohttp leaves behind when the server goes away mid-request
    raise ConnectionResetError("Connection lost")

async def orphan():
    asyncio.ensure_future(send_body())
    await asyncio.sleep(0.1)

asyncio.run_coroutine_threadsafe(orphan(), store.fs.loop).result()
gc.collect()
"""


@pytest.mark.parametrize("debug", [False, True])
def test_a_storage_library_task_failing_in_the_background_prints_nothing(
    aws_env: None, debug: bool
) -> None:
    """The server going away leaves aiohttp tasks nobody awaits; their tracebacks are noise.

    The failure that matters reaches the user as one line from the request that
    was awaited; the background copies show only with EXPMAN_DEBUG=1.
    """
    env = (
        {**os.environ, "EXPMAN_DEBUG": "1"}
        if debug
        else {k: v for k, v in os.environ.items() if k != "EXPMAN_DEBUG"}
    )
    result = subprocess.run(
        [sys.executable, "-c", _ORPHANED_TASK], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    if debug:
        assert "Task exception was never retrieved" in result.stderr
        assert "ConnectionResetError: Connection lost" in result.stderr
    else:
        assert result.stderr == ""
