"""Every kind of value a state may hold comes back exactly; anything else is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import expman
from expman import CheckpointManager, UnsupportedStateError

NUMERIC_DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.longdouble,
    np.complex64,
    np.complex128,
    np.clongdouble,
]


def save_and_load(directory: Path, state: dict[str, Any]) -> dict[str, Any]:
    manager = CheckpointManager(directory)
    manager.save(1, state, force=True)
    return CheckpointManager(directory).load()


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_numeric_dtype_round_trips_bit_exactly(ckpt_dir: Path, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((3, 5)) * 100
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal((3, 5))
    array = values.astype(dtype)
    loaded = save_and_load(ckpt_dir, {"x": array})["x"]
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.shape == (3, 5)
    assert loaded.tobytes() == array.tobytes()


def test_nan_inf_and_negative_zero_survive(ckpt_dir: Path) -> None:
    array = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    loaded = save_and_load(ckpt_dir, {"x": array})["x"]
    assert loaded.tobytes() == array.tobytes()


def test_zero_d_empty_and_non_contiguous_arrays(ckpt_dir: Path) -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    state = {
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), np.float32),
        "strided": base[:, ::2],
        "fortran": np.asfortranarray(base),
        "big_endian": np.arange(5, dtype=">i4"),
    }
    loaded = save_and_load(ckpt_dir, state)
    assert loaded["scalar"].shape == () and loaded["scalar"] == 3.5
    assert loaded["empty"].shape == (0, 3) and loaded["empty"].dtype == np.float32
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["fortran"], base)
    np.testing.assert_array_equal(loaded["big_endian"], np.arange(5))
    assert loaded["big_endian"].dtype == np.dtype("int32")


def test_plain_python_values_and_numpy_scalars_keep_their_type(ckpt_dir: Path) -> None:
    state = {
        "flag": True,
        "count": -(2**40),
        "rate": 0.125,
        "label": "héllo, wörld / ✓",
        "np_scalar": np.float16(1.5),
    }
    loaded = save_and_load(ckpt_dir, state)
    assert loaded == state
    assert [type(v) for v in loaded.values()] == [bool, int, float, str, np.float16]


def test_names_keep_hierarchy_including_prefixes_of_other_names(ckpt_dir: Path) -> None:
    state = {
        "dnn/hiddenlayer_1/bias": np.ones(3),
        "dnn/hiddenlayer_1/bias/t_0/Adagrad": np.full(3, 0.1),
        "dnn": {"hiddenlayer_1": {"kernel": np.zeros((2, 3))}},
    }
    loaded = save_and_load(ckpt_dir, state)
    assert sorted(loaded) == [
        "dnn/hiddenlayer_1/bias",
        "dnn/hiddenlayer_1/bias/t_0/Adagrad",
        "dnn/hiddenlayer_1/kernel",
    ]
    np.testing.assert_array_equal(loaded["dnn/hiddenlayer_1/bias/t_0/Adagrad"], np.full(3, 0.1))


@pytest.mark.parametrize(
    "name",
    [
        "fc1.weight",
        "a:0",
        "50%",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "/leading",
        "trailing/",
        "double//slash",
        "with space",
        "ünïcødé/名前",
        "%2E",
        "tab\tand\nnewline",
    ],
)
def test_names_hdf5_treats_specially_round_trip(ckpt_dir: Path, name: str) -> None:
    state = {name: np.arange(3), "plain": np.zeros(1)}
    loaded = save_and_load(ckpt_dir, state)
    assert sorted(loaded) == sorted(state)
    np.testing.assert_array_equal(loaded[name], np.arange(3))


def test_names_that_would_collide_after_escaping_stay_distinct(ckpt_dir: Path) -> None:
    state = {
        ".": np.array(1),
        "%2E": np.array(2),
        "a:0": np.array(3),
        "a": np.array(4),
    }
    loaded = save_and_load(ckpt_dir, state)
    assert {k: int(v) for k, v in loaded.items()} == {".": 1, "%2E": 2, "a:0": 3, "a": 4}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            np.array([object()], dtype=object),
            "state value 'bad' has dtype object; expman stores only numeric and bool "
            "arrays (nothing is pickled): convert it to a numeric dtype",
        ),
        (
            np.array(["a", "b"]),
            "state value 'bad' has dtype <U1; expman stores only numeric and bool "
            "arrays (nothing is pickled): convert it to a numeric dtype",
        ),
        (
            np.array(["2026-01-01"], dtype="datetime64[D]"),
            "state value 'bad' has dtype datetime64[D]; expman stores only numeric and "
            "bool arrays (nothing is pickled): convert it to a numeric dtype",
        ),
        (
            np.zeros(2, dtype=[("a", "f4")]),
            "state value 'bad' has dtype [('a', '<f4')]; expman stores only numeric and "
            "bool arrays (nothing is pickled): convert it to a numeric dtype",
        ),
        (
            [1, 2, 3],
            "state value 'bad' is a builtins.list; expman stores numeric and bool numpy "
            "arrays, numpy scalars, and plain bool/int/float/str values (nothing is "
            "pickled): convert it to one of those",
        ),
        (
            2**70,
            "state value 'bad' is an int outside the int64 range; store it as a string or split it",
        ),
    ],
)
def test_values_that_cannot_be_stored_are_refused_before_writing(
    ckpt_dir: Path, value: Any, message: str
) -> None:
    manager = CheckpointManager(ckpt_dir)
    with pytest.raises(UnsupportedStateError) as caught:
        manager.save(1, {"good": np.zeros(2), "bad": value}, force=True)
    assert str(caught.value) == message
    assert list(ckpt_dir.iterdir()) == []


def test_non_string_keys_and_colliding_names_are_refused(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir)
    with pytest.raises(UnsupportedStateError, match=r"^state key 3 under 'a' is not a non-empty"):
        manager.save(1, {"a": {3: np.zeros(1)}}, force=True)
    with pytest.raises(UnsupportedStateError, match=r"^state key 'a\\x00b' is not a non-empty"):
        manager.save(1, {"a\x00b": np.zeros(1)}, force=True)
    with pytest.raises(UnsupportedStateError, match=r"^state name 'a/b' appears twice"):
        manager.save(1, {"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}, force=True)
    with pytest.raises(UnsupportedStateError, match=r"^a state must be a mapping"):
        manager.save(1, [np.zeros(1)], force=True)  # type: ignore[arg-type]
    assert list(ckpt_dir.iterdir()) == []


def test_unsupported_state_error_is_a_type_error() -> None:
    assert issubclass(expman.UnsupportedStateError, TypeError)
