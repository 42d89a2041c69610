import numpy as np
import pytest

from p2pnet.core.schema import ModelSchema, TensorSpec, check_inputs
from p2pnet.errors import InvalidInputError

SCHEMA = ModelSchema(
    inputs=(
        TensorSpec("x", "float32", (None, 4)),
        TensorSpec("y", "int64", ("n",)),
        TensorSpec("z", "float32", ("n", 2)),
    ),
    outputs=(TensorSpec("out", "float32", (None,)),),
)


def good() -> dict[str, np.ndarray]:
    return {
        "x": np.zeros((3, 4), np.float32),
        "y": np.zeros(5, np.int64),
        "z": np.zeros((5, 2), np.float32),
    }


def test_accepts_matching_inputs_and_any_size_for_free_dims() -> None:
    checked = check_inputs(SCHEMA, good())
    assert set(checked) == {"x", "y", "z"}
    assert check_inputs(SCHEMA, good() | {"x": np.zeros((0, 4), np.float32)})["x"].shape == (0, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d.pop("y"),
            "missing input 'y'; the model takes x: float32\\[\\?, 4\\], y: int64\\[n\\]",
        ),
        (lambda d: d.update(w=np.zeros(1)), "unexpected input 'w'"),
        (
            lambda d: d.update(x=np.zeros((3, 4), np.float64)),
            "input 'x' has dtype float64; the model expects float32",
        ),
        (
            lambda d: d.update(x=np.zeros(4, np.float32)),
            "input 'x' has shape \\[4\\] \\(rank 1\\); the model expects rank 2",
        ),
        (
            lambda d: d.update(x=np.zeros((3, 5), np.float32)),
            "input 'x' has size 5 on axis 1; the model expects 4",
        ),
        (
            lambda d: d.update(z=np.zeros((6, 2), np.float32)),
            "dimension 'n' is 5 in input 'y' but 6 in input 'z'",
        ),
        (
            lambda d: d.update(y=np.array(["a"], dtype=object)),
            "input 'y' has dtype string; the model expects int64",
        ),
    ],
)
def test_each_mismatch_has_its_own_message(change, message: str) -> None:  # type: ignore[no-untyped-def]
    inputs = good()
    change(inputs)
    with pytest.raises(InvalidInputError, match=message):
        check_inputs(SCHEMA, inputs)


def test_lists_and_str_arrays_are_accepted_as_tensors() -> None:
    schema = ModelSchema(
        (TensorSpec("text", "string", (None,)),), (TensorSpec("o", "float32", ()),)
    )
    checked = check_inputs(schema, {"text": np.array(["a", "bc"])})
    assert checked["text"].dtype == object and checked["text"].tolist() == ["a", "bc"]
