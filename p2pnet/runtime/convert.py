"""Bringing models into p2pnet: PyTorch and scikit-learn models to ONNX, and int8 quantization.

import_model      a TorchScript file, a saved exported program or a pickled scikit-learn
                  estimator -> ONNX, checked: the ONNX checker, a run in p2pnet's runtime,
                  and the same sample inputs through the source model, within a tolerance
quantize_model    onnxruntime dynamic int8 quantization, with before/after figures

The figures (sample inputs, output comparisons, latency percentiles) are pure functions
that return dataclasses; the two entry points above do the file and model I/O around
them. torch, skl2onnx and scikit-learn are imported only when a conversion needs them
(the ``models`` extra).

Loading a pickled scikit-learn model runs code from the file: import only files you
trust. This is a local, explicit step; nothing from the network is ever unpickled.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnx

from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import Dim, TensorSpec
from p2pnet.core.tensor import DTYPE_CODES, dtype_name
from p2pnet.errors import (
    InvalidInputError,
    ModelExecutionError,
    ModelFileError,
    P2PNetError,
    UsageError,
)
from p2pnet.runtime.onnx_model import OnnxModel, inspect_model

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "DTYPES",
    "FRAMEWORKS",
    "MODELS_EXTRA",
    "ImportReport",
    "ModelFigures",
    "OutputComparison",
    "QuantizeReport",
    "Verification",
    "compare_outputs",
    "import_model",
    "parse_input_decl",
    "percentile_ms",
    "quantize_model",
    "sample_inputs",
    "verify_outputs",
]

log = logging.getLogger(__name__)

Framework = Literal["torch", "sklearn"]
FRAMEWORKS: Final[tuple[Framework, ...]] = ("torch", "sklearn")
MODELS_EXTRA: Final = "pip install 'p2pnet[models]'"
DEFAULT_OPSET: Final = 18  # both torch exporters and skl2onnx 1.20 produce it; onnxruntime runs it
ML_OPSET: Final = 3  # ai.onnx.ml, for skl2onnx
DEFAULT_TOLERANCE: Final = 1e-4
WEIGHT_TYPES: Final = ("qint8", "quint8")
DTYPES: Final[frozenset[str]] = frozenset(dtype_name(dt) for dt in DTYPE_CODES.values())

# Fixed text for string inputs of sample runs: short customer-service style sentences.
SAMPLE_TEXTS: Final = (
    "I love it, works great",
    "terrible, it broke after one day",
    "where is my order?",
    "thanks for the quick reply",
    "the battery does not charge",
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- declared inputs and sample data -------------------------------------------------------


def parse_input_decl(spec: str) -> TensorSpec:
    """Parse one ``--input NAME:DTYPE:SHAPE`` of ``model import``.

    SHAPE is comma-separated dimensions: a number is a fixed size, a name (``N``,
    ``batch``) a symbolic one (the same name is the same size in every input), ``?`` a
    dimension of any size; empty (``x:float32:``) is a scalar. Brackets are optional.

    Raises:
        UsageError: a malformed spec, an unknown dtype or a bad dimension.
    """
    parts = spec.split(":")
    if len(parts) != 3:
        raise UsageError(
            f"--input {spec!r}: expected NAME:DTYPE:SHAPE, e.g. x:float32:N,4 "
            "(a number is a fixed size, a name a symbolic one, ? any size)"
        )
    name, dtype, shape_text = (p.strip() for p in parts)
    if not _NAME.match(name):
        raise UsageError(f"--input {spec!r}: {name!r} is not a tensor name (letters, digits, _.-)")
    if dtype not in DTYPES:
        raise UsageError(f"--input {spec!r}: unknown dtype {dtype!r}; one of {sorted(DTYPES)}")
    shape_text = shape_text.removeprefix("[").removesuffix("]").strip()
    dims: list[Dim] = []
    for axis, raw in enumerate(shape_text.split(",") if shape_text else []):
        text = raw.strip()
        if text == "?":
            dims.append(None)
        elif text.isdigit() and int(text) > 0:
            dims.append(int(text))
        elif _DIM_NAME.match(text):
            dims.append(text)
        else:
            raise UsageError(
                f"--input {spec!r}: dimension {axis} is {text!r}; give a positive size, "
                "a name for a symbolic dimension, or ?"
            )
    return TensorSpec(name, dtype, tuple(dims))


def sample_inputs(
    specs: Sequence[TensorSpec], *, seed: int = 0, dynamic_size: int = 3
) -> dict[str, npt.NDArray[Any]]:
    """Inputs that fit ``specs``, the same for the same arguments.

    Symbolic and any-size dimensions get ``dynamic_size``. Floats are standard normal,
    integers in 0..9, booleans fair coin flips, strings cycle through SAMPLE_TEXTS.
    """
    rng = np.random.default_rng(seed)
    result: dict[str, npt.NDArray[Any]] = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else dynamic_size for d in spec.shape)
        count = math.prod(shape)
        arr: npt.NDArray[Any]
        if spec.dtype == "string":
            arr = np.array(
                [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(count)], dtype=object
            ).reshape(shape)
        elif spec.dtype == "bool":
            arr = rng.random(shape) < 0.5
        elif np.dtype(spec.dtype).kind in "iu":
            arr = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            arr = rng.standard_normal(shape).astype(spec.dtype)
        result[spec.name] = arr
    return result


def _describe_shapes(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    return ", ".join(f"{name} {list(arr.shape)}" for name, arr in arrays.items())


# --- comparing outputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputComparison:
    """How one output of a model compares with a reference output for the same inputs.

    max_abs/mean_abs: absolute deviation of float outputs (None for labels).
    agreement: for labels (integer, bool or string outputs) the fraction of equal
    values; for float outputs of rank >= 2 with at least 2 columns, the fraction of
    rows with the same argmax over the last axis; otherwise None.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float | None
    mean_abs: float | None
    agreement: float | None

    @property
    def is_label(self) -> bool:
        return self.dtype == "string" or self.dtype == "bool" or np.dtype(self.dtype).kind in "iu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "agreement": self.agreement,
        }


def _compare(name: str, ref: npt.NDArray[Any], got: npt.NDArray[Any]) -> OutputComparison:
    if ref.shape != got.shape:
        if ref.size != got.size:
            raise ValueError(
                f"output {name!r} has shape {list(got.shape)}; the reference has {list(ref.shape)}"
            )
        ref = ref.reshape(got.shape)  # e.g. scikit-learn's [N] against ONNX's [N, 1]
    dtype = dtype_name(got)
    if dtype == "string" or ref.dtype.kind in "OUS":
        equal = ref.astype(str) == got.astype(str)
        return OutputComparison(name, dtype, got.shape, None, None, _fraction(equal))
    if got.dtype.kind in "biu":  # labels: equal or not
        return OutputComparison(name, dtype, got.shape, None, None, _fraction(ref == got))
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    if got.ndim >= 2 and got.shape[-1] >= 2:
        agreement: float | None = _fraction(ref.argmax(axis=-1) == got.argmax(axis=-1))
    else:
        agreement = None
    return OutputComparison(name, dtype, got.shape, max_abs, mean_abs, agreement)


def _fraction(equal: Any) -> float:
    equal = np.asarray(equal)
    return float(equal.mean()) if equal.size else 1.0


def compare_outputs(
    reference: Mapping[str, npt.NDArray[Any]], candidate: Mapping[str, npt.NDArray[Any]]
) -> tuple[OutputComparison, ...]:
    """Compare each output of ``candidate`` with the output of the same name in ``reference``.

    Raises:
        ValueError: an output missing from ``reference``, or of another size.
    """
    return tuple(_compare(name, reference[name], got) for name, got in candidate.items())


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether a converted model reproduces its source within ``tolerance``.

    A float output passes when every element is within ``tolerance * max(1, |reference|)``
    of the reference; an integer, bool or string output when every value is equal.
    ``unchecked`` names outputs the source model has no counterpart for.
    """

    comparisons: tuple[OutputComparison, ...]
    tolerance: float
    failures: tuple[str, ...]
    unchecked: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max((c.max_abs or 0.0 for c in self.comparisons if not c.is_label), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "max_abs_deviation": self.max_abs,
            "outputs": [c.to_dict() for c in self.comparisons],
            "failures": list(self.failures),
            "unchecked": list(self.unchecked),
        }


def verify_outputs(
    reference: Mapping[str, npt.NDArray[Any]],
    candidate: Mapping[str, npt.NDArray[Any]],
    tolerance: float,
) -> Verification:
    """Decide whether ``candidate`` reproduces ``reference`` (see Verification).

    Outputs of ``candidate`` without a reference are listed as unchecked.
    """
    comparisons: list[OutputComparison] = []
    failures: list[str] = []
    unchecked: list[str] = []
    for name, got in candidate.items():
        if name not in reference:
            unchecked.append(name)
            continue
        try:
            comparison = _compare(name, reference[name], got)
        except ValueError as exc:
            failures.append(str(exc))
            continue
        comparisons.append(comparison)
        if comparison.is_label:
            if comparison.agreement is not None and comparison.agreement < 1.0:
                failures.append(
                    f"output {name!r}: {1 - comparison.agreement:.1%} of the values differ "
                    "from the source model's"
                )
            continue
        ref = reference[name].astype(np.float64).reshape(got.shape)
        excess = np.abs(ref - got.astype(np.float64)) - tolerance * np.maximum(1.0, np.abs(ref))
        if excess.size and float(excess.max()) > 0:
            failures.append(
                f"output {name!r} deviates by up to {comparison.max_abs:.3g} from the source "
                f"model's (tolerance {tolerance:g} x max(1, |value|))"
            )
    return Verification(tuple(comparisons), tolerance, tuple(failures), tuple(unchecked))


def percentile_ms(seconds: Sequence[float], q: float = 50.0) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no durations")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q)) * 1000.0


# --- import --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportReport:
    """An imported model: the ONNX file written, where it came from, and how it was checked."""

    info: ModelInfo
    source: Path
    framework: Framework
    source_kind: str  # "TorchScript", "exported program", or the estimator's class name
    exporter: str
    opset: int
    sample_shapes: Mapping[str, tuple[int, ...]]
    verification: Verification

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info.to_dict(),
            "source": str(self.source),
            "framework": self.framework,
            "source_kind": self.source_kind,
            "exporter": self.exporter,
            "opset": self.opset,
            "sample_shapes": {k: list(v) for k, v in self.sample_shapes.items()},
            "check": self.verification.to_dict(),
        }


def _require(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not "
            f"installed: {MODELS_EXTRA}"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The most telling line of a library's exception (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and ("Traceback" in lines[0] or "TorchScript interpreter" in lines[0]):
        return lines[-1]
    return lines[0]


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Route the converters' warnings and chatter to p2pnet's debug log, not the terminal."""

    class _ToDebug(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            log.debug("%s: %s", record.name, record.getMessage())
            return False

    root = logging.getLogger()
    quiet = _ToDebug()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    saved = [logger.level for logger in noisy]
    root.addFilter(quiet)  # onnxruntime.quantization logs through the root logger
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            log.debug("%s: %s", w.category.__name__, w.message)
    finally:
        root.removeFilter(quiet)
        for logger, level in zip(noisy, saved, strict=True):
            logger.setLevel(level)


def _declared(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(spec.describe() for spec in specs)


def _mismatch(specs: Sequence[TensorSpec], sample: Mapping[str, Any], exc: BaseException) -> str:
    return (
        f"the model does not accept the declared inputs ({_declared(specs)}; tried "
        f"{_describe_shapes(sample)}): {_first_line(exc)}"
    )


def _default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class _Converted:
    """What a framework converter hands back: the ONNX model and the source's outputs on
    the check sample, in output order."""

    model: onnx.ModelProto
    kind: str
    exporter: str
    reference: list[npt.NDArray[Any]]


def _torch_load(torch: ModuleType, path: Path) -> tuple[Any, str]:
    loaders = [("TorchScript", torch.jit.load), ("exported program", torch.export.load)]
    if path.suffix == ".pt2":
        loaders.reverse()
    problems: list[str] = []
    for kind, load in loaders:
        try:
            return load(str(path)), kind
        except Exception as exc:  # each loader raises its own zoo of types
            problems.append(f"as {kind}: {_first_line(exc)}")
    log.debug("cannot load %s: %s", path, "; ".join(problems))
    raise ModelFileError(
        f"{path} is neither a TorchScript file (torch.jit.save) nor an exported program "
        "(torch.export.save). A state_dict, or a module saved with torch.save, needs its "
        "Python class to load: script it (torch.jit.script) or export it "
        "(torch.export.export) and save that"
    )


def _torch_flatten(value: Any, torch: ModuleType) -> list[npt.NDArray[Any]]:
    if isinstance(value, torch.Tensor):
        try:
            return [value.detach().cpu().numpy()]
        except (TypeError, RuntimeError) as exc:  # bfloat16, complex32, quantized ...
            raise ModelFileError(
                f"the model returns a {value.dtype} tensor, which p2pnet cannot carry: {exc}"
            ) from None
    if isinstance(value, (tuple, list)):
        return [arr for item in value for arr in _torch_flatten(item, torch)]
    raise ModelFileError(
        f"the model returns a {type(value).__name__}; p2pnet imports models that return "
        "a tensor or a tuple or list of tensors"
    )


def _torch_convert(
    path: Path,
    specs: Sequence[TensorSpec],
    export_sample: Mapping[str, npt.NDArray[Any]],
    check_sample: Mapping[str, npt.NDArray[Any]],
    opset: int,
    workdir: Path,
) -> _Converted:
    torch = _require("torch", "importing a PyTorch model")
    if any(spec.dtype == "string" for spec in specs):
        raise UsageError("PyTorch models take no string tensors; declare numeric inputs")
    with _quiet_libraries():
        loaded, kind = _torch_load(torch, path)
    if kind == "TorchScript":
        arguments = loaded.forward.schema.arguments[1:]  # without self
        names = [a.name for a in arguments]
        required = sum(1 for a in arguments if not a.has_default_value())
        program = loaded
    else:
        names = list(loaded.graph_signature.user_inputs)
        required = len(names)
        program = loaded.module()
    if not required <= len(specs) <= len(names):
        raise InvalidInputError(
            f"the model's forward takes {len(names)} input(s) ({', '.join(names)}); "
            f"{len(specs)} declared ({_declared(specs)})"
        )

    def forward(sample: Mapping[str, npt.NDArray[Any]], hint: str = "") -> list[npt.NDArray[Any]]:
        tensors = [torch.from_numpy(np.ascontiguousarray(arr)) for arr in sample.values()]
        with torch.no_grad(), _quiet_libraries():
            try:
                result = program(*tensors)
            except Exception as exc:
                raise InvalidInputError(_mismatch(specs, sample, exc) + hint) from None
        return _torch_flatten(result, torch)

    forward(export_sample)
    reference = forward(
        check_sample,
        f"; it accepts {_describe_shapes(export_sample)}, so it fixes a dimension declared "
        "symbolic"
        + (
            " (an exported program keeps the shapes it was exported with unless "
            "torch.export.export got dynamic_shapes)"
            if kind == "exported program"
            else ""
        ),
    )
    input_names = [spec.name for spec in specs]
    output_names = _default_output_names(len(reference))
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in export_sample.values())
    target = workdir / "export.onnx"
    with _quiet_libraries():
        try:
            if kind == "TorchScript":
                # torch.export (the default exporter) cannot trace a ScriptModule; the
                # TorchScript exporter can, and takes the symbolic dimensions by name.
                dynamic_axes = {
                    spec.name: {
                        axis: dim if isinstance(dim, str) else f"{spec.name}_{axis}"
                        for axis, dim in enumerate(spec.shape)
                        if not isinstance(dim, int)
                    }
                    for spec in specs
                }
                exporter = "torch.onnx TorchScript exporter"
                torch.onnx.export(
                    loaded, args, str(target), input_names=input_names,
                    output_names=output_names, dynamic_axes=dynamic_axes,
                    opset_version=opset, dynamo=False,
                )  # fmt: skip
            else:
                # The exported program's own shapes (static or dynamic) are kept.
                exporter = "torch.onnx dynamo exporter"
                torch.onnx.export(
                    loaded, args, str(target), input_names=input_names,
                    output_names=output_names, opset_version=opset, dynamo=True,
                    external_data=False, verbose=False,
                )  # fmt: skip
        except P2PNetError:
            raise
        except Exception as exc:
            raise ModelFileError(
                f"torch.onnx.export cannot convert {path}: {_first_line(exc)}"
            ) from None
    try:
        model = onnx.load(str(target))
    except Exception as exc:
        raise ModelFileError(f"torch.onnx.export wrote no usable ONNX model: {exc}") from None
    return _Converted(model, kind, exporter, reference)


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
    sklearn_base = _require("sklearn.base", "importing a scikit-learn model")
    if hasattr(estimator, "predict"):
        outputs = [np.asarray(estimator.predict(x))]
        if sklearn_base.is_classifier(estimator) and hasattr(estimator, "predict_proba"):
            outputs.append(np.asarray(estimator.predict_proba(x)))
        return outputs
    return [np.asarray(estimator.transform(x))]


def _sklearn_convert(
    path: Path,
    specs: Sequence[TensorSpec],
    check_sample: Mapping[str, npt.NDArray[Any]],
    opset: int,
) -> _Converted:
    joblib = _require("joblib", "importing a scikit-learn model")
    sklearn_base = _require("sklearn.base", "importing a scikit-learn model")
    skl2onnx = _require("skl2onnx", "importing a scikit-learn model")
    data_types = _require("skl2onnx.common.data_types", "importing a scikit-learn model")
    if len(specs) != 1:
        raise UsageError(
            f"a scikit-learn model takes one input matrix; {len(specs)} declared "
            f"({_declared(specs)})"
        )
    (spec,) = specs
    with _quiet_libraries():
        try:
            estimator = joblib.load(str(path))
        except Exception as exc:  # unpickling raises anything
            raise ModelFileError(
                f"{path} is not a joblib or pickle file of a scikit-learn model: "
                f"{_first_line(exc)}"
            ) from None
    if not hasattr(estimator, "fit") or not (
        hasattr(estimator, "predict") or hasattr(estimator, "transform")
    ):
        raise ModelFileError(
            f"{path} holds a {type(estimator).__name__}, not a scikit-learn estimator or Pipeline"
        )
    kind = type(estimator).__name__
    x = check_sample[spec.name]
    with _quiet_libraries():
        try:
            reference = _sklearn_reference(estimator, x)
        except Exception as exc:
            raise InvalidInputError(_mismatch(specs, check_sample, exc)) from None
    tensor_type = getattr(data_types, _SKL2ONNX_TYPES[spec.dtype])
    # skl2onnx takes no dimension names; they are put back on the graph afterwards.
    shape = [d if isinstance(d, int) else None for d in spec.shape]
    options: dict[int, dict[str, Any]] = {}
    if sklearn_base.is_classifier(estimator):
        options[id(estimator)] = {"zipmap": False}  # plain tensors, not a sequence of maps
    text = _require("sklearn.feature_extraction.text", "importing a scikit-learn model")
    for step in [estimator, *estimator.get_params(deep=True).values()]:
        if isinstance(step, text.CountVectorizer):  # TfidfVectorizer included
            # onnxruntime's default, en_US.UTF-8, is missing on minimal machines; "C" never is.
            options.setdefault(id(step), {})["locale"] = "C"
    with _quiet_libraries():
        try:
            model = skl2onnx.convert_sklearn(
                estimator, name=path.stem, initial_types=[(spec.name, tensor_type(shape))],
                target_opset={"": opset, "ai.onnx.ml": ML_OPSET}, options=options or None,
            )  # fmt: skip
        except Exception as exc:
            message = _first_line(exc)
            if "shape" in message.lower():
                raise InvalidInputError(_mismatch(specs, check_sample, exc)) from None
            raise ModelFileError(f"skl2onnx cannot convert {kind}: {message}") from None
    return _Converted(model, kind, f"skl2onnx {skl2onnx.__version__}", reference)


def _dims(value: onnx.ValueInfoProto) -> list[Any]:
    return list(value.type.tensor_type.shape.dim)


def _set_dim(dim: Any, new: Dim) -> None:
    if isinstance(new, int):
        dim.dim_value = new
    elif isinstance(new, str):
        dim.dim_param = new
    else:
        dim.ClearField("value")


def _fit_inputs(graph: onnx.GraphProto, specs: Sequence[TensorSpec]) -> None:
    """Give the graph's inputs the declared dimensions (names included), or say why not.

    Raises:
        InvalidInputError: the graph's inputs differ from the declared ones in number,
            rank or a fixed size.
    """
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if [v.name for v in inputs] != [s.name for s in specs]:
        raise InvalidInputError(
            f"the converted model takes inputs {[v.name for v in inputs]}; declared "
            f"{[s.name for s in specs]}"
        )
    renamed: dict[str, Dim] = {}
    for value, spec in zip(inputs, specs, strict=True):
        dims = _dims(value)
        if len(dims) != len(spec.shape):
            raise InvalidInputError(
                f"input {spec.name!r} has rank {len(dims)} in the model; declared "
                f"{spec.describe()}"
            )
        for axis, (dim, want) in enumerate(zip(dims, spec.shape, strict=True)):
            if dim.HasField("dim_value"):
                if dim.dim_value != want:
                    fixed = dim.dim_value
                    hint = (
                        " (an exported program keeps the shapes it was exported with: give "
                        "torch.export.export dynamic_shapes for a dimension of any size)"
                        if not isinstance(want, int)
                        else ""
                    )
                    raise InvalidInputError(
                        f"input {spec.name!r} has size {fixed} on axis {axis} in the model; "
                        f"declared {spec.describe()}{hint}"
                    )
                continue
            if dim.dim_param:
                renamed[dim.dim_param] = want
            _set_dim(dim, want)
    if renamed:
        for value in [*graph.output, *graph.value_info]:
            for dim in _dims(value):
                if dim.HasField("dim_param") and dim.dim_param in renamed:
                    _set_dim(dim, renamed[dim.dim_param])


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename values everywhere in ``graph`` and its subgraphs."""
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_values(attr.g, mapping)
            for sub in attr.graphs:
                _rename_values(sub, mapping)
    for value in [*graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)


def _finish(
    model: onnx.ModelProto, specs: Sequence[TensorSpec], output_names: Sequence[str]
) -> onnx.ModelProto:
    """Declared input dimensions, requested output names, one opset per domain; checked."""
    graph = model.graph
    _fit_inputs(graph, specs)
    current = [v.name for v in graph.output]
    if output_names:
        if len(output_names) != len(current):
            raise UsageError(
                f"the model has {len(current)} output(s) ({', '.join(current)}); "
                f"{len(output_names)} --output name(s) given"
            )
        taken = {s.name for s in specs}
        if len(set(output_names)) != len(output_names) or taken & set(output_names):
            raise UsageError(
                f"--output names must differ from each other and from the inputs: {output_names}"
            )
        _rename_values(graph, dict(zip(current, output_names, strict=True)))
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelFileError(f"the converted model fails the ONNX checker: {exc}") from None
    return model


def _write_atomic(data: bytes, out: Path) -> Path:
    """A temporary file next to ``out`` holding ``data``; the caller renames or deletes it."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _check_paths(source: Path, out: Path) -> None:
    if not source.is_file():
        what = "is a directory" if source.is_dir() else "does not exist"
        raise ModelFileError(f"cannot read {source}: it {what}")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.exists() and out.resolve() == source.resolve():
        raise UsageError(f"{out} is the source file; give another output path")


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
    """Convert a PyTorch or scikit-learn model file to ONNX at ``out``, checked end to end.

    ``framework`` "torch": ``source`` is a TorchScript file (torch.jit.save) or an
    exported program (torch.export.save, .pt2). "sklearn": a joblib or pickle file of a
    fitted estimator or Pipeline -- loading it runs code from the file, so only import
    files you trust. Classifiers get plain tensor outputs (label, probabilities).

    The ONNX model gets the declared inputs (names, dtypes, symbolic dimensions), passes
    the ONNX checker, loads in p2pnet's runtime and, on sample inputs made from the
    declaration, matches the source model's own outputs within ``tolerance`` (see
    Verification). Only then is ``out`` written (replaced atomically).

    Raises:
        UsageError: a bad argument or declaration, or a missing optional package.
        InvalidInputError: the model does not take the declared inputs.
        ModelFileError: the source cannot be read or converted, or the conversion does
            not reproduce the source's outputs.
    """
    source, out = Path(source), Path(out)
    if framework not in FRAMEWORKS:
        raise UsageError(f"unknown framework {framework!r}; one of {', '.join(FRAMEWORKS)}")
    fw: Framework = "torch" if framework == "torch" else "sklearn"
    if not inputs:
        raise UsageError("declare the model's inputs: --input NAME:DTYPE:SHAPE, e.g. x:float32:N,4")
    names = [spec.name for spec in inputs]
    if len(set(names)) != len(names):
        raise UsageError(f"input names must differ: {names}")
    if not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise UsageError(f"opset {opset}: give 7..{onnx.defs.onnx_opset_version()}")
    if not tolerance > 0:
        raise UsageError(f"the tolerance must be positive, not {tolerance}")
    _check_paths(source, out)
    # The model is exported with one size for the symbolic dimensions and checked with
    # another, so a dimension the export fixed by mistake shows up as a failure.
    export_sample = sample_inputs(inputs, seed=seed, dynamic_size=2)
    check_sample = sample_inputs(inputs, seed=seed + 1, dynamic_size=3)
    with tempfile.TemporaryDirectory(prefix="p2pnet-import-") as workdir:
        if fw == "torch":
            converted = _torch_convert(
                source, inputs, export_sample, check_sample, opset, Path(workdir)
            )
        else:
            converted = _sklearn_convert(source, inputs, check_sample, opset)
    model = _finish(converted.model, inputs, output_names)
    tmp = _write_atomic(model.SerializeToString(), out)
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
                f"({_describe_shapes(check_sample)}): " + "; ".join(verification.failures)
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


# --- quantize ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """One model file measured: ID, size, and median latency over ``runs`` runs."""

    path: Path
    model_id: str
    size: int
    p50_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "size": self.size,
            "p50_ms": self.p50_ms,
        }


@dataclass(frozen=True, slots=True)
class QuantizeReport:
    """Before and after dynamic int8 quantization, on the same sample inputs."""

    before: ModelFigures
    after: ModelFigures
    weight_type: str
    runs: int
    quantized_weights: int
    sample_shapes: Mapping[str, tuple[int, ...]]
    outputs: tuple[OutputComparison, ...]

    @property
    def size_ratio(self) -> float:
        """after / before file size."""
        return self.after.size / self.before.size

    @property
    def speedup(self) -> float:
        """before / after median latency."""
        return self.before.p50_ms / self.after.p50_ms if self.after.p50_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "weight_type": self.weight_type,
            "runs": self.runs,
            "quantized_weights": self.quantized_weights,
            "sample_shapes": {k: list(v) for k, v in self.sample_shapes.items()},
            "size_ratio": self.size_ratio,
            "speedup": self.speedup,
            "outputs": [c.to_dict() for c in self.outputs],
        }


def _time_runs(
    model: OnnxModel, inputs: Mapping[str, npt.NDArray[Any]], runs: int, warmup: int = 3
) -> tuple[dict[str, npt.NDArray[Any]], list[float]]:
    """The outputs and the duration of each of ``runs`` runs, after ``warmup`` untimed ones."""
    outputs = model.run_sync(inputs)
    for _ in range(warmup):
        model.run_sync(inputs)
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run_sync(inputs)
        durations.append(time.perf_counter() - started)
    return outputs, durations


def _replaced_weights(source: Path, quantized: Path) -> int:
    """How many float initializers of ``source`` the quantizer replaced by 8-bit ones."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    before = onnx.load(str(source), load_external_data=False).graph.initializer
    after = {init.name for init in onnx.load(str(quantized)).graph.initializer}
    return sum(1 for init in before if init.data_type in floats and init.name not in after)


def _keep_output_types(source: Path, quantized: Path) -> None:
    """Give the quantized model's outputs the original's declared types and shapes.

    The quantizer's shape inference fills in output dimensions (``unk__0``, ...); the
    schema a model is announced with should not change because its weights shrank.
    """
    original = {
        v.name: v.type for v in onnx.load(str(source), load_external_data=False).graph.output
    }
    model = onnx.load(str(quantized))
    for value in model.graph.output:
        if value.name in original:
            value.type.CopyFrom(original[value.name])
    onnx.save(model, str(quantized))


def _op_types(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return sorted({node.op_type for node in model.graph.node})


def quantize_model(
    source: str | Path,
    out: str | Path,
    *,
    runs: int = 50,
    weight_type: str = "qint8",
    dynamic_size: int = 16,
    seed: int = 0,
) -> QuantizeReport:
    """Quantize the weights of an ONNX model to 8 bits (onnxruntime dynamic quantization)
    and measure both models on the same sample inputs (see sample_inputs; symbolic
    dimensions are ``dynamic_size``).

    QInt8 weights are the default: onnxruntime runs them against u8 activations, its
    fast integer path on x86; QUInt8 weights were slower in every case measured, at
    about the same deviation (docs/cli.md has the figures).

    Raises:
        UsageError: bad arguments, or a model without weights quantization applies to.
        ModelFileError: ``source`` is not a usable ONNX model, or quantization broke it.
    """
    source, out = Path(source), Path(out)
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, not {runs}")
    if weight_type not in WEIGHT_TYPES:
        raise UsageError(f"unknown weight type {weight_type!r}; one of {', '.join(WEIGHT_TYPES)}")
    _check_paths(source, out)
    before_info = inspect_model(source)
    before_model = OnnxModel(before_info, max_concurrency=1)
    sample = sample_inputs(before_info.schema.inputs, seed=seed, dynamic_size=dynamic_size)
    try:
        reference, before_times = _time_runs(before_model, sample, runs)
    except ModelExecutionError as exc:
        raise ModelFileError(f"{source} fails on sample inputs: {exc}") from None
    quantization = importlib.import_module("onnxruntime.quantization")
    quant_type = {
        "qint8": quantization.QuantType.QInt8,
        "quint8": quantization.QuantType.QUInt8,
    }[weight_type]
    tmp = _write_atomic(b"", out)
    try:
        with _quiet_libraries():
            try:
                quantization.quantize_dynamic(str(source), str(tmp), weight_type=quant_type)
            except Exception as exc:
                raise ModelFileError(
                    f"onnxruntime cannot quantize {source}: {_first_line(exc)}"
                ) from None
        _keep_output_types(source, tmp)
        quantized = _replaced_weights(source, tmp)
        if quantized == 0:
            raise UsageError(
                f"{source} has no weights that dynamic int8 quantization applies to (its "
                f"operators: {', '.join(_op_types(source))}; quantization covers MatMul, "
                "Gemm, Conv, Gather, Attention, LSTM and similar with constant weights); "
                "nothing written"
            )
        after_info = inspect_model(tmp)
        if after_info.schema != before_info.schema:
            raise ModelFileError(
                f"quantization changed the model's inputs or outputs: {after_info.schema}"
            )
        try:
            got, after_times = _time_runs(OnnxModel(after_info, max_concurrency=1), sample, runs)
        except ModelExecutionError as exc:
            raise ModelFileError(f"the quantized model fails on sample inputs: {exc}") from None
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    after_info = inspect_model(out)
    return QuantizeReport(
        before=ModelFigures(
            before_info.path, before_info.model_id, before_info.size, percentile_ms(before_times)
        ),
        after=ModelFigures(
            after_info.path, after_info.model_id, after_info.size, percentile_ms(after_times)
        ),
        weight_type=weight_type,
        runs=runs,
        quantized_weights=quantized,
        sample_shapes={k: tuple(v.shape) for k, v in sample.items()},
        outputs=compare_outputs(reference, got),
    )
