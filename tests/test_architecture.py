"""The architecture comparison is pure: specs in, differences out."""

from __future__ import annotations

from expman import (
    Architecture,
    ArchitectureMismatchError,
    ShapeChange,
    TensorSpec,
    compare_architectures,
)


def arch(*specs: tuple[str, tuple[int, ...], str], **config: object) -> Architecture:
    return Architecture.of((TensorSpec(*s) for s in specs), config)


CHECKPOINT = arch(
    ("dnn/hiddenlayer_0/kernel", (4, 10), "float32"),
    ("dnn/hiddenlayer_0/bias", (10,), "float32"),
    ("dnn/logits/bias", (3,), "float32"),
    ("global_step", (), "int64"),
    ("old", (2,), "float32"),
    hidden_units=[10, 10],
)
MODEL = arch(
    ("dnn/hiddenlayer_0/kernel", (4, 20), "float32"),
    ("dnn/hiddenlayer_0/bias", (20,), "float32"),
    ("dnn/logits/bias", (3,), "float64"),
    ("global_step", (), "int64"),
    ("new", (5, 5), "float16"),
    hidden_units=[20, 20],
)


def test_every_kind_of_difference_is_found_at_once() -> None:
    diff = compare_architectures(CHECKPOINT, MODEL)
    assert diff.missing == ("new",)
    assert diff.unexpected == ("old",)
    assert diff.shape_changes == (
        ShapeChange("dnn/hiddenlayer_0/bias", (10,), (20,)),
        ShapeChange("dnn/hiddenlayer_0/kernel", (4, 10), (4, 20)),
    )
    assert [(c.name, c.checkpoint, c.model) for c in diff.dtype_changes] == [
        ("dnn/logits/bias", "float32", "float64")
    ]
    assert diff.matching == ("global_step",)
    assert diff.config_changes == ("hidden_units",)
    assert not diff.tensors_match
    assert diff.mismatched == {
        "dnn/hiddenlayer_0/bias",
        "dnn/hiddenlayer_0/kernel",
        "dnn/logits/bias",
    }


def test_lines_name_every_tensor_with_both_shapes() -> None:
    assert compare_architectures(CHECKPOINT, MODEL).lines() == [
        "dnn/hiddenlayer_0/bias: checkpoint [10] vs model [20]",
        "dnn/hiddenlayer_0/kernel: checkpoint [4, 10] vs model [4, 20]",
        "dnn/logits/bias: dtype checkpoint float32 vs model float64",
        "new: missing from the checkpoint (model has [5, 5] float16)",
        "old: not in the model (checkpoint has [2] float32)",
    ]


def test_config_lines_show_both_values() -> None:
    assert compare_architectures(CHECKPOINT, MODEL).config_lines() == [
        "hidden_units: checkpoint [10, 10] vs model [20, 20]"
    ]
    nested = compare_architectures(arch(model={"depth": 2}), arch(model={"depth": 3}, extra=1))
    assert nested.config_lines() == [
        "extra: checkpoint (absent) vs model 1",
        "model.depth: checkpoint 2 vs model 3",
    ]


def test_identical_architectures_match_and_share_a_digest() -> None:
    same = arch(*((s.name, s.shape, s.dtype) for s in reversed(CHECKPOINT.tensors)))
    diff = compare_architectures(CHECKPOINT, same)
    assert diff.tensors_match
    assert diff.lines() == []
    assert same.digest == CHECKPOINT.digest
    assert same.digest.startswith("sha256:") and len(same.digest) == 7 + 64
    assert MODEL.digest != CHECKPOINT.digest


def test_json_round_trip() -> None:
    assert Architecture.from_json(CHECKPOINT.to_json()) == CHECKPOINT


def test_mismatch_error_message_is_exact_and_names_the_writer() -> None:
    error = ArchitectureMismatchError(
        compare_architectures(CHECKPOINT, MODEL),
        checkpoint="model_dir/ckpt-000200.h5",
        experiment="base",
        code_commit="0123456789abcdef0123",
    )
    assert str(error) == (
        "checkpoint model_dir/ckpt-000200.h5 (written by experiment base, commit "
        "0123456789ab) does not match the model: 5 tensor differences\n"
        "  dnn/hiddenlayer_0/bias: checkpoint [10] vs model [20]\n"
        "  dnn/hiddenlayer_0/kernel: checkpoint [4, 10] vs model [4, 20]\n"
        "  dnn/logits/bias: dtype checkpoint float32 vs model float64\n"
        "  new: missing from the checkpoint (model has [5, 5] float16)\n"
        "  old: not in the model (checkpoint has [2] float32)\n"
        "to proceed: restore only the matching tensors with a partial restore "
        "(partial=True, or expman run --partial), or start a new experiment for the "
        "changed model (expman new NAME)"
    )
    assert error.missing == ("new",)
    assert error.unexpected == ("old",)
    assert error.experiment == "base"
    assert isinstance(error, ValueError)


def test_mismatch_error_without_origin() -> None:
    one = compare_architectures(arch(("a", (1,), "float32")), arch(("a", (2,), "float32")))
    first = str(ArchitectureMismatchError(one, checkpoint="c.h5")).splitlines()[0]
    assert first == "checkpoint c.h5 does not match the model: 1 tensor difference"
