"""scikit-learn estimators and Pipelines to ONNX with skl2onnx; classifiers get plain
tensor outputs (label, probabilities), not ZipMap. joblib, scikit-learn and skl2onnx are
imported only here, when a conversion needs them.

Loading a pickled scikit-learn model runs code from the file: import only files you
trust. This is a local, explicit step; nothing from the network is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from p2pnet.core.schema import TensorSpec
from p2pnet.errors import InvalidInputError, ModelFileError, UsageError
from p2pnet.modeltools.converted import Converted
from p2pnet.modeltools.inputs import describe_specs, input_mismatch
from p2pnet.modeltools.libraries import first_line, quiet_libraries, require

__all__ = ["sklearn_to_onnx"]

ML_OPSET: Final = 3  # ai.onnx.ml, for skl2onnx


_SKL2ONNX_TYPES: Final = {
    "bool": "BooleanTensorType",
    "int8": "Int8TensorType",
    "int16": "Int16TensorType",
    "int32": "Int32TensorType",
    "int64": "Int64TensorType",
    "uint8": "UInt8TensorType",
    "uint16": "UInt16TensorType",
    "uint32": "UInt32TensorType",
    "uint64": "UInt64TensorType",
    "float16": "Float16TensorType",
    "float32": "FloatTensorType",
    "float64": "DoubleTensorType",
    "string": "StringTensorType",
}


def _sklearn_reference(estimator: Any, x: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    sklearn_base = require("sklearn.base", "importing a scikit-learn model")
    if hasattr(estimator, "predict"):
        outputs = [np.asarray(estimator.predict(x))]
        if sklearn_base.is_classifier(estimator) and hasattr(estimator, "predict_proba"):
            outputs.append(np.asarray(estimator.predict_proba(x)))
        return outputs
    return [np.asarray(estimator.transform(x))]


def sklearn_to_onnx(
    path: Path,
    specs: Sequence[TensorSpec],
    check_sample: Mapping[str, npt.NDArray[Any]],
    opset: int,
) -> Converted:
    """Load the estimator at ``path``, take its outputs on the check sample for
    reference and convert it with skl2onnx.

    Raises:
        UsageError: a package is missing, or more than one input is declared.
        InvalidInputError: the estimator does not take the declared input.
        ModelFileError: the file holds no estimator, or skl2onnx cannot convert it.
    """
    joblib = require("joblib", "importing a scikit-learn model")
    sklearn_base = require("sklearn.base", "importing a scikit-learn model")
    skl2onnx = require("skl2onnx", "importing a scikit-learn model")
    data_types = require("skl2onnx.common.data_types", "importing a scikit-learn model")
    if len(specs) != 1:
        raise UsageError(
            f"a scikit-learn model takes one input matrix; {len(specs)} declared "
            f"({describe_specs(specs)})"
        )
    (spec,) = specs
    with quiet_libraries():
        try:
            estimator = joblib.load(str(path))
        except Exception as exc:  # unpickling raises anything
            raise ModelFileError(
                f"{path} is not a joblib or pickle file of a scikit-learn model: {first_line(exc)}"
            ) from None
    if not hasattr(estimator, "fit") or not (
        hasattr(estimator, "predict") or hasattr(estimator, "transform")
    ):
        raise ModelFileError(
            f"{path} holds a {type(estimator).__name__}, not a scikit-learn estimator or Pipeline"
        )
    kind = type(estimator).__name__
    x = check_sample[spec.name]
    with quiet_libraries():
        try:
            reference = _sklearn_reference(estimator, x)
        except Exception as exc:
            raise InvalidInputError(input_mismatch(specs, check_sample, exc)) from None
    tensor_type = getattr(data_types, _SKL2ONNX_TYPES[spec.dtype])
    # skl2onnx takes no dimension names; they are put back on the graph afterwards.
    shape = [d if isinstance(d, int) else None for d in spec.shape]
    options: dict[int, dict[str, Any]] = {}
    if sklearn_base.is_classifier(estimator):
        options[id(estimator)] = {"zipmap": False}  # plain tensors, not a sequence of maps
    text = require("sklearn.feature_extraction.text", "importing a scikit-learn model")
    for step in [estimator, *estimator.get_params(deep=True).values()]:
        if isinstance(step, text.CountVectorizer):  # TfidfVectorizer included
            # onnxruntime's default, en_US.UTF-8, is missing on minimal machines; "C" never is.
            options.setdefault(id(step), {})["locale"] = "C"
    with quiet_libraries():
        try:
            model = skl2onnx.convert_sklearn(
                estimator, name=path.stem, initial_types=[(spec.name, tensor_type(shape))],
                target_opset={"": opset, "ai.onnx.ml": ML_OPSET}, options=options or None,
            )  # fmt: skip
        except Exception as exc:
            message = first_line(exc)
            if "shape" in message.lower():
                raise InvalidInputError(input_mismatch(specs, check_sample, exc)) from None
            raise ModelFileError(f"skl2onnx cannot convert {kind}: {message}") from None
    return Converted(model, kind, f"skl2onnx {skl2onnx.__version__}", reference)
