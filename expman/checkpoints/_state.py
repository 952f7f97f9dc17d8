"""States: (nested) mappings of names to arrays, flattened to ``a/b/c`` names.

A state is what a training script saves and restores: numpy arrays of any
numeric or bool dtype, numpy scalars, and plain ``bool``, ``int``, ``float`` and
``str`` values, in mappings that may nest. Nested keys join with ``/`` into
tensor names (``{"dnn": {"logits": {"bias": b}}}`` is ``dnn/logits/bias``).
Anything else is refused: expman never pickles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from expman._errors import UnsupportedStateError

__all__ = [
    "Bits",
    "Leaf",
    "LeafKind",
    "SameAs",
    "Slot",
    "dtype_name",
    "fillable",
    "state_leaves",
    "state_slots",
    "to_leaf",
]

LeafKind = Literal["array", "numpy", "bool", "int", "float", "str", "bits"]

_NUMERIC_KINDS = frozenset("biufc")
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class Bits:
    """A tensor of a dtype numpy lacks (``bfloat16``, ``float8_e4m3fn``, ...).

    ``array`` holds its raw bits as unsigned integers of the same width; it is
    stored as such, and ``dtype`` is recorded as the tensor's dtype (so the
    architecture check tells bfloat16 from float16). Restored as ``Bits``.

    Example:
        >>> bits = bf16.view(torch.int16).numpy().view(np.uint16)  # doctest: +SKIP
        >>> Bits(bits, "bfloat16")  # doctest: +SKIP
    """

    array: np.ndarray[Any, Any]
    dtype: str


@dataclass(frozen=True)
class SameAs:
    """A state value that is the same tensor as an earlier one (tied weights).

    It is stored once: the file links both names to one dataset, and each
    name restores the same values.

    Example:
        >>> state = {"wte": embedding, "lm_head": SameAs("wte")}  # doctest: +SKIP
    """

    name: str


def dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, remembered: numpy computes it in Python, ~1.4 us a call."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def fillable(value: Any) -> Any:
    """What a restore fills in place for a state value: a Bits' array, else the value."""
    return value.array if isinstance(value, Bits) else value


class Leaf(NamedTuple):
    """One value of a flattened state, ready to be written.

    A named tuple rather than a frozen dataclass: a save makes one or two a
    tensor, and at 10,000 tensors the dataclass's ``__init__`` alone took
    ~30 ms of it (docs/benchmarks.md).

    Attributes:
        name: the full tensor name, e.g. ``dnn/logits/bias``.
        kind: how the value is given back: a numpy array, a numpy scalar, or a
            plain Python ``bool``/``int``/``float``/``str``.
        value: a native-byte-order array, or the string for ``kind == "str"``.
        same_as: the earlier leaf this one is the same tensor as (stored once).
    """

    name: str
    kind: LeafKind
    value: np.ndarray[Any, Any] | str
    bits_dtype: str | None = None
    same_as: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return () if isinstance(self.value, str) else tuple(self.value.shape)

    @property
    def dtype(self) -> str:
        if self.bits_dtype is not None:
            return self.bits_dtype
        return "str" if isinstance(self.value, str) else dtype_name(self.value.dtype)


class Slot(NamedTuple):
    """Where a flattened name lives in a nested state: ``container[key]`` (a named tuple)."""

    container: MutableMapping[str, Any]
    key: str

    @property
    def value(self) -> Any:
        return self.container[self.key]


def iter_slots(state: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Slot]]:
    """Yield ``(name, slot)`` for every leaf of a nested state, in insertion order."""
    if not isinstance(state, Mapping):
        raise UnsupportedStateError(
            f"a state must be a mapping of names to arrays, got {type(state).__name__}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or key == "" or "\x00" in key:
            where = f" under {prefix!r}" if prefix else ""
            raise UnsupportedStateError(
                f"state key {key!r}{where} is not a non-empty string without NUL "
                "characters; use string names such as 'dnn/logits/bias'"
            )
        name = f"{prefix}/{key}" if prefix else key
        # an array is tested first: Mapping's isinstance is an ABC check, slow per tensor
        if not isinstance(value, np.ndarray) and isinstance(value, Mapping):
            yield from iter_slots(value, name)
        else:
            yield name, Slot(state, key)  # type: ignore[arg-type]


def state_slots(state: Mapping[str, Any]) -> dict[str, Slot]:
    """Every leaf of a nested state by name, refusing names that collide."""
    slots: dict[str, Slot] = {}
    for name, slot in iter_slots(state):
        if name in slots:
            raise UnsupportedStateError(
                f"state name {name!r} appears twice (a key containing '/' collides "
                "with a nested mapping); rename one of them"
            )
        slots[name] = slot
    return slots


def state_leaves(state: Mapping[str, Any]) -> list[Leaf]:
    """Check every value of a state and flatten it to leaves, in insertion order.

    A :class:`SameAs` value becomes a leaf sharing the value of the earlier
    leaf it names.
    """
    leaves: dict[str, Leaf] = {}
    for name, slot in state_slots(state).items():
        value = slot.value
        if isinstance(value, SameAs):
            first = leaves.get(value.name)
            if first is None or first.same_as is not None or first.kind not in ("array", "bits"):
                raise UnsupportedStateError(
                    f"state value {name!r} is SameAs({value.name!r}), which does not name "
                    "an earlier array of the state"
                )
            leaves[name] = Leaf(name, first.kind, first.value, first.bits_dtype, value.name)
        else:
            leaves[name] = to_leaf(name, value)
    return list(leaves.values())


def to_leaf(name: str, value: Any) -> Leaf:
    """Check that ``value`` can be stored and convert it to a :class:`Leaf`."""
    if isinstance(value, np.ndarray):
        return Leaf(name, "array", _native(name, value))
    if isinstance(value, Bits):
        if value.array.dtype.kind != "u" or not value.dtype.isidentifier():
            raise UnsupportedStateError(
                f"state value {name!r} is Bits of {value.array.dtype} named {value.dtype!r}; "
                "Bits holds unsigned integers and a dtype name such as 'bfloat16'"
            )
        return Leaf(name, "bits", _native(name, value.array), value.dtype)
    if isinstance(value, np.generic):
        return Leaf(name, "numpy", _native(name, np.asarray(value)))
    if isinstance(value, bool):
        return Leaf(name, "bool", np.asarray(value, dtype=np.bool_))
    if isinstance(value, int):
        if not _INT64.min <= value <= _INT64.max:
            raise UnsupportedStateError(
                f"state value {name!r} is an int outside the int64 range; "
                "store it as a string or split it"
            )
        return Leaf(name, "int", np.asarray(value, dtype=np.int64))
    if isinstance(value, float):
        return Leaf(name, "float", np.asarray(value, dtype=np.float64))
    if isinstance(value, str):
        return Leaf(name, "str", value)
    raise UnsupportedStateError(
        f"state value {name!r} is a {type(value).__module__}.{type(value).__qualname__}; "
        "expman stores numeric and bool numpy arrays, numpy scalars, and plain "
        "bool/int/float/str values (nothing is pickled): convert it to one of those"
    )


def _native(name: str, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    dtype = array.dtype
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise UnsupportedStateError(
            f"state value {name!r} has dtype {dtype}; expman stores only numeric and "
            "bool arrays (nothing is pickled): convert it to a numeric dtype"
        )
    if not dtype.isnative:
        return array.astype(dtype.newbyteorder("="))
    return array
