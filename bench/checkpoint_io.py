"""Checkpoint save and restore throughput against raw I/O, safetensors and np.savez.

    python -m bench.checkpoint_io [--size-mib 512] [--tensors 68] [--repeats 5] [--dir PATH]
    python -m bench.checkpoint_io --size-mib 64 --tensors 10000 --memory

Every repetition measures each contender in turn on the same disk and state,
so that the machine's noise hits them alike; the report gives medians.

- raw write: the state's bytes written to one file, then fsync
- expman save: CheckpointManager.save (checksums, HDF5, fsync, rename,
  directory fsync, index)
- np.savez: the same arrays, then fsync
- expman async save: how long save() blocks the caller with async_save=True
- raw read: the raw file read into preallocated arrays
- expman restore: restore_latest into preallocated arrays (checksums verified)
- np.load: the .npz read back
- safetensors save_file + fsync / load_file, when safetensors is installed
With --memory, each save runs once more in a fresh process, which reports how
far its peak resident memory rose above the state it was given.
Reads are measured twice: from the page cache (warm, just written) and after
evicting the files with posix_fadvise(DONTNEED) (cold, as after a restart).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import expman
from bench._timing import fsync_path, median, settled, table
from expman import CheckpointManager, CheckpointPolicy
from expman.checkpoints._format import PACK_MAX_BYTES

POLICY = CheckpointPolicy(keep_max=None)


def make_state(size_mib: int, tensors: int = 68) -> dict[str, np.ndarray[Any, Any]]:
    """A model-like float32 state of ``tensors`` tensors: four large kernels, the rest small.

    The small tensors share 1/8 of the bytes (at 68 tensors: 64 biases of 4096
    floats in a 512 MiB state, the layout of the earlier benchmark).
    """
    rng = np.random.default_rng(0)
    total = size_mib * 2**20 // 4  # float32 elements
    small = max(tensors - 4, 0)
    small_size = total // 8 // small if small else 0
    large_total = total - small * small_size
    state: dict[str, np.ndarray[Any, Any]] = {}
    for layer, share in enumerate((0.4, 0.3, 0.2, 0.1)[: min(tensors, 4)]):
        state[f"dnn/hiddenlayer_{layer}/kernel"] = rng.standard_normal(
            int(large_total * share), dtype=np.float32
        )
    for i in range(small):
        state[f"dnn/block_{i}/bias"] = rng.standard_normal(small_size, dtype=np.float32)
    return state


def raw_write(path: Path, state: dict[str, np.ndarray[Any, Any]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for array in state.values():
        os.write(fd, memoryview(array).cast("B"))
    os.fsync(fd)
    os.close(fd)


def drop_cache(*paths: Path) -> None:
    """Evict files from the page cache, as after a restart (no root needed)."""
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.iterdir()):
            fd = os.open(file, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def raw_read(path: Path, into: dict[str, np.ndarray[Any, Any]]) -> None:
    with open(path, "rb", buffering=0) as handle:
        for array in into.values():
            handle.readinto(memoryview(array).cast("B"))


def savez(path: Path, state: dict[str, np.ndarray[Any, Any]]) -> None:
    np.savez(path, **{name.replace("/", "."): a for name, a in state.items()})
    fsync_path(path)


def load_npz(path: Path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            archive[name]


try:
    import safetensors.numpy as safetensors
except ImportError:  # a peer, measured where installed
    safetensors = None


def safetensors_save(path: Path, state: dict[str, np.ndarray[Any, Any]]) -> None:
    assert safetensors is not None
    safetensors.save_file(state, str(path))
    fsync_path(path)


def run(
    size_mib: int, tensors: int, repeats: int, directory: Path, pack_max_bytes: int
) -> dict[str, list[float]]:
    state = make_state(size_mib, tensors)
    blank = {name: np.empty_like(a) for name, a in state.items()}
    samples: dict[str, list[float]] = {}
    for repeat in range(repeats):
        work = directory / f"r{repeat}"
        work.mkdir()
        reverse = repeat % 2 == 1
        for name, seconds in one_repeat(work, state, blank, reverse, pack_max_bytes):
            samples.setdefault(name, []).append(seconds)
        shutil.rmtree(work)
    return samples


def one_repeat(
    work: Path,
    state: dict[str, np.ndarray[Any, Any]],
    blank: dict[str, np.ndarray[Any, Any]],
    reverse: bool,
    pack_max_bytes: int,
) -> list[tuple[str, float]]:
    """One timing of every operation; ``reverse`` flips the order within each group."""
    raw_path, npz_path, st_path = work / "raw.bin", work / "state.npz", work / "st.safetensors"
    sync = CheckpointManager(work / "sync", policy=POLICY, pack_max_bytes=pack_max_bytes)
    background = CheckpointManager(
        work / "async", policy=POLICY, async_save=True, pack_max_bytes=pack_max_bytes
    )
    results: list[tuple[str, float]] = []

    def group(suffix: str, contenders: list[tuple[str, Callable[[], object]]]) -> None:
        for name, work_ in reversed(contenders) if reverse else contenders:
            if suffix == ", cold cache":
                drop_cache(raw_path, npz_path, st_path, work / "sync")
            results.append((name + suffix, settled(work_)))

    saves: list[tuple[str, Callable[[], object]]] = [
        ("raw write + fsync", lambda: raw_write(raw_path, state)),
        ("expman save", lambda: sync.save(1, state, force=True)),
        ("np.savez + fsync", lambda: savez(npz_path, state)),
    ]
    reads: list[tuple[str, Callable[[], object]]] = [
        ("raw read", lambda: raw_read(raw_path, blank)),
        ("expman restore", lambda: sync.restore_latest(into=blank)),
        ("np.load", lambda: load_npz(npz_path)),
    ]
    if safetensors is not None:
        saves.append(("safetensors save + fsync", lambda: safetensors_save(st_path, state)))
        reads.append(("safetensors load", lambda: safetensors.load_file(str(st_path))))
    group("", saves)
    background.save(1, state, force=True)  # the first save allocates staging buffers
    background.wait()
    results.append(
        ("expman async save, blocking part", settled(lambda: background.save(2, state, force=True)))
    )
    background.close()
    for suffix in (", warm cache", ", cold cache"):
        group(suffix, reads)
    return results


RATIOS = [
    ("save vs raw write (target >= 0.95)", "raw write + fsync", "expman save"),
    ("save vs safetensors (target >= 0.5)", "safetensors save + fsync", "expman save"),
    ("save vs np.savez (target > 1)", "np.savez + fsync", "expman save"),
    *(
        (
            f"restore vs {peer}, {cache} (target {target})",
            f"{peer}, {cache} cache",
            f"expman restore, {cache} cache",
        )
        for cache in ("warm", "cold")
        for peer, target in (
            ("raw read", ">= 0.90"),
            ("safetensors load", ">= 0.5"),
            ("np.load", "> 1"),
        )
    ),
    (
        "async save blocks for, share of a sync save (target <= 0.10)",
        "expman async save, blocking part",
        "expman save",
    ),
]


def report(
    samples: dict[str, list[float]], size_mib: int, tensors: int, repeats: int, pack_max_bytes: int
) -> str:
    """Medians per operation, and ratios paired within each repetition."""
    gb = size_mib * 2**20 / 1e9
    rows = [
        [name, f"{median(values) * 1000:.0f} ms", f"{gb / median(values):.2f} GB/s"]
        for name, values in samples.items()
    ]
    ratio_rows = []
    for label, baseline, ours in RATIOS:
        if baseline not in samples:
            continue
        paired = sorted(b / o for b, o in zip(samples[baseline], samples[ours], strict=True))
        ratio_rows.append([label, f"{median(paired):.2f}", f"{paired[0]:.2f} to {paired[-1]:.2f}"])
    head = (
        f"{size_mib} MiB state in {tensors} float32 tensors, {repeats} repetitions, "
        f"pack_max_bytes={pack_max_bytes}; "
        f"expman {expman.__version__}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores. Ratios are baseline time / expman time (higher is "
        "better for expman; the async row is expman's blocking time / a sync save), "
        "computed within each repetition."
    )
    return "\n\n".join(
        [
            head,
            table(["operation", "median", "throughput"], rows),
            table(["ratio", "median", "range"], ratio_rows),
        ]
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(
    contender: str, size_mib: int, tensors: int, directory: Path, pack_max_bytes: int
) -> float:
    """In this (fresh) process: how far one save raises peak memory above the state."""
    state = make_state(size_mib, tensors)
    before = peak_rss_mib()
    if contender == "expman save":
        manager = CheckpointManager(
            directory / "sync", policy=POLICY, pack_max_bytes=pack_max_bytes
        )
        manager.save(1, state, force=True)
    elif contender == "safetensors save":
        safetensors_save(directory / "st.safetensors", state)
    else:
        raw_write(directory / "raw.bin", state)
    return peak_rss_mib() - before


def memory_rows(
    size_mib: int, tensors: int, directory: Path, pack_max_bytes: int
) -> list[list[str]]:
    contenders = ["raw write", "expman save"]
    if safetensors is not None:
        contenders.append("safetensors save")
    rows = []
    for contender in contenders:
        work = Path(tempfile.mkdtemp(dir=directory))
        probe = (
            "import sys; from pathlib import Path; from bench.checkpoint_io import memory_probe;"
            f"print(memory_probe({contender!r}, {size_mib}, {tensors}, Path({str(work)!r}), "
            f"{pack_max_bytes}))"
        )
        output = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        rows.append([contender, f"+{float(output.stdout):.0f} MiB"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--tensors", type=int, default=68)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also measure save memory")
    parser.add_argument(
        "--pack-max-bytes",
        type=int,
        default=PACK_MAX_BYTES,
        help=f"CheckpointManager(pack_max_bytes=...) (default {PACK_MAX_BYTES}; 0: no packing)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="expman-bench-", dir=args.dir))
    try:
        samples = run(args.size_mib, args.tensors, args.repeats, directory, args.pack_max_bytes)
        memory = (
            memory_rows(args.size_mib, args.tensors, directory, args.pack_max_bytes)
            if args.memory
            else None
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report(samples, args.size_mib, args.tensors, args.repeats, args.pack_max_bytes))
    if memory:
        print("\n" + table(["save, in a fresh process", "peak memory over the state"], memory))


if __name__ == "__main__":
    main()
