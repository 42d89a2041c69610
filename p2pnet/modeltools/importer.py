"""``import_model``: a PyTorch, scikit-learn or TensorFlow model to ONNX, checked end to
end (the ONNX checker, a run in p2pnet's runtime, and the source model's own outputs on
the same sample inputs, within a tolerance) before the file is written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import onnx

from p2pnet.core.schema import TensorSpec
from p2pnet.errors import ModelExecutionError, ModelFileError, UsageError
from p2pnet.modeltools.converted import finish_model
from p2pnet.modeltools.files import check_paths, write_atomic
from p2pnet.modeltools.from_sklearn import sklearn_to_onnx
from p2pnet.modeltools.from_tensorflow import load_tensorflow, tensorflow_to_onnx
from p2pnet.modeltools.from_torch import torch_to_onnx
from p2pnet.modeltools.inputs import describe_shapes, sample_inputs
from p2pnet.modeltools.reports import FRAMEWORKS, ImportReport
from p2pnet.modeltools.verification import verify_outputs
from p2pnet.runtime.onnx_model import OnnxModel, inspect_model

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "import_model"]

# Both torch exporters, skl2onnx 1.20 and tf2onnx 1.17 (its newest) produce it; onnxruntime runs it.
DEFAULT_OPSET: Final = 18

DEFAULT_TOLERANCE: Final = 1e-4


def import_model(
    source: str | Path,
    out: str | Path,
    *,
    framework: str,
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ImportReport:
    """Convert a PyTorch, scikit-learn or TensorFlow model to ONNX at ``out``, checked end
    to end.

    ``framework`` "torch": ``source`` is a TorchScript file (torch.jit.save) or an
    exported program (torch.export.save, .pt2). "sklearn": a joblib or pickle file of a
    fitted estimator or Pipeline -- loading it runs code from the file, so only import
    files you trust. Classifiers get plain tensor outputs (label, probabilities).
    "tensorflow": a Keras model file (.keras, or a legacy .h5) or a SavedModel directory
    with a serving signature; without ``inputs`` the model's own input signature is
    taken (an unknown first dimension is the batch, ``N``).

    The ONNX model gets the declared inputs (names, dtypes, symbolic dimensions), passes
    the ONNX checker, loads in p2pnet's runtime and, on sample inputs made from the
    declaration, matches the source model's own outputs within ``tolerance`` (see
    Verification). Only then is ``out`` written (replaced atomically).

    Raises:
        UsageError: a bad argument or declaration, or a missing optional package.
        InvalidInputError: the model does not take the declared inputs.
        ModelFileError: the source cannot be read or converted (for TensorFlow: not a
            Keras model, a SavedModel without a serving signature, an op tf2onnx cannot
            convert), or the conversion does not reproduce the source's outputs.
    """
    source, out = Path(source), Path(out)
    fw = next((f for f in FRAMEWORKS if f == framework), None)
    if fw is None:
        raise UsageError(f"unknown framework {framework!r}; one of {', '.join(FRAMEWORKS)}")
    if not inputs and fw != "tensorflow":
        raise UsageError("declare the model's inputs: --input NAME:DTYPE:SHAPE, e.g. x:float32:N,4")
    if not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise UsageError(f"opset {opset}: give 7..{onnx.defs.onnx_opset_version()}")
    if not tolerance > 0:
        raise UsageError(f"the tolerance must be positive, not {tolerance}")
    check_paths(source, out, directory=fw == "tensorflow")
    tf_source = load_tensorflow(source) if fw == "tensorflow" else None
    if tf_source is not None and not inputs:
        inputs = tf_source.inputs
        if not inputs:
            raise UsageError(
                f"the {tf_source.kind} in {source.name} declares no inputs (a subclassed Keras "
                "model keeps no input signature): declare them with --input NAME:DTYPE:SHAPE, "
                "e.g. x:float32:N,4"
            )
    names = [spec.name for spec in inputs]
    if len(set(names)) != len(names):
        raise UsageError(f"input names must differ: {names}")
    # The model is exported with one size for the symbolic dimensions and checked with
    # another, so a dimension the export fixed by mistake shows up as a failure.
    export_sample = sample_inputs(inputs, seed=seed, dynamic_size=2)
    check_sample = sample_inputs(inputs, seed=seed + 1, dynamic_size=3)
    with tempfile.TemporaryDirectory(prefix="p2pnet-import-") as workdir:
        if fw == "torch":
            converted = torch_to_onnx(
                source, inputs, export_sample, check_sample, opset, Path(workdir)
            )
        elif tf_source is not None:
            converted = tensorflow_to_onnx(tf_source, inputs, check_sample, opset, Path(workdir))
        else:
            converted = sklearn_to_onnx(source, inputs, check_sample, opset)
    model = finish_model(converted.model, inputs, output_names)
    tmp = write_atomic(model.SerializeToString(), out)
    try:
        info = inspect_model(tmp)
        try:
            got = OnnxModel(info, max_concurrency=1).run_sync(check_sample)
        except (ModelFileError, ModelExecutionError) as exc:
            message = str(exc).replace(str(info.path), out.name)
            raise ModelFileError(f"the converted model fails in onnxruntime: {message}") from None
        onnx_names = [spec.name for spec in info.schema.outputs]
        reference = dict(zip(onnx_names, converted.reference, strict=False))
        verification = verify_outputs(reference, got, tolerance)
        if not verification.passed:
            raise ModelFileError(
                f"the ONNX model does not reproduce {source.name}'s outputs on sample inputs "
                f"({describe_shapes(check_sample)}): " + "; ".join(verification.failures)
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ImportReport(
        info=inspect_model(out),
        source=source,
        framework=fw,
        source_kind=converted.kind,
        exporter=converted.exporter,
        opset=max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        sample_shapes={k: tuple(v.shape) for k, v in check_sample.items()},
        verification=verification,
    )
