"""TensorFlow models to ONNX with tf2onnx: a Keras model file (.keras, or a legacy .h5)
or a SavedModel directory (tf.saved_model.save, model.export).

A Keras model is exported to a SavedModel first (Keras's own serving export), so both
take one path through tf2onnx's SavedModel loader; the reference outputs come from the
source itself: the Keras model called on the sample, or the SavedModel's serving
signature. The inputs, when none are declared, are the model's: a Keras model's input
layers, a SavedModel's serving signature (in the order of its argument names).
tensorflow, keras and tf2onnx are imported only here, when a conversion needs them (the
``tensorflow`` extra).

Keras files are loaded in Keras's safe mode: a model with a Lambda layer, whose Python
code the file carries, is refused rather than run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx

from p2pnet.core.schema import Dim, TensorSpec
from p2pnet.errors import InvalidInputError, ModelFileError, P2PNetError, UsageError
from p2pnet.modeltools.converted import Converted, default_output_names
from p2pnet.modeltools.inputs import DTYPES, describe_specs, input_mismatch
from p2pnet.modeltools.libraries import (
    first_line,
    native_output_to_debug,
    quiet_libraries,
    require,
)

__all__ = [
    "KERAS_SUFFIXES",
    "SERVING_SIGNATURE",
    "TensorflowSource",
    "load_tensorflow",
    "tensorflow_to_onnx",
]

log = logging.getLogger(__name__)

SERVING_SIGNATURE: Final = "serving_default"
SERVING_TAG: Final = "serve"
KERAS_SUFFIXES: Final = (".keras", ".h5", ".hdf5")

_PURPOSE: Final = "importing a TensorFlow model"
_CUSTOM_CLASS_HINT: Final = (
    ". A custom layer or model class must be registered "
    "(keras.saving.register_keras_serializable) and imported before the file is loaded: "
    "import it, then call p2pnet.modeltools.import_model, or export the model as a "
    "SavedModel (model.export) and import that"
)
# Keras wraps the message of an error raised inside a layer in lines of its own.
_KERAS_PREAMBLE = re.compile(r"^(Exception encountered when calling|Arguments received by)")


@dataclass(frozen=True, slots=True)
class TensorflowSource:
    """A loaded TensorFlow model.

    ``inputs``: what its signature declares (empty for a Keras model without one, a
    subclassed model never called). ``model``: the Keras model, or the loaded SavedModel
    object (which keeps ``function``'s variables alive). ``function``: the serving
    signature of a SavedModel; None for a Keras model.
    """

    path: Path
    kind: str
    inputs: tuple[TensorSpec, ...]
    model: Any
    function: Any

    @property
    def is_keras(self) -> bool:
        return self.function is None


def _tensorflow() -> ModuleType:
    return require("tensorflow", _PURPOSE)


def _tf_message(exc: BaseException) -> str:
    """The telling line of a TensorFlow or Keras error (Keras puts its own lines first)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    lines = [line for line in lines if not _KERAS_PREAMBLE.match(line)]
    if not lines:
        return first_line(exc)
    return lines[0].removeprefix("Graph execution error:").strip() or lines[0]


def _dtype_name(tf: ModuleType, dtype: Any) -> str | None:
    """p2pnet's name for a TensorFlow dtype, or None for one p2pnet cannot carry."""
    if dtype == tf.string:
        return "string"
    try:
        name = np.dtype(dtype.as_numpy_dtype).name
    except TypeError:
        return None
    return name if name in DTYPES else None


def _declared(tf: ModuleType, name: str, dtype: Any, shape: Any, where: str) -> TensorSpec:
    """The TensorSpec of a model input: an unknown first dimension is the batch, ``N``
    (the same in every input); other unknown dimensions are of any size.

    Raises:
        ModelFileError: the dtype is one p2pnet cannot carry.
        UsageError: the input has no known rank.
    """
    dtype_name = _dtype_name(tf, dtype)
    if dtype_name is None:
        raise ModelFileError(
            f"{where} input {name!r} is {getattr(dtype, 'name', dtype)}, which p2pnet cannot carry"
        )
    if shape.rank is None:
        raise UsageError(
            f"{where} input {name!r} has no fixed rank; declare it with --input NAME:DTYPE:SHAPE"
        )
    dims: list[Dim] = [
        d if d is not None else ("N" if axis == 0 else None)
        for axis, d in enumerate(shape.as_list())
    ]
    return TensorSpec(name, dtype_name, tuple(dims))


def _load_keras(tf: ModuleType, path: Path) -> TensorflowSource:
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelFileError(
            f"{path} is not a Keras model file: Keras loads {', '.join(KERAS_SUFFIXES)} "
            "files, and a SavedModel is a directory"
        )
    with quiet_libraries(), native_output_to_debug():
        try:
            model = tf.keras.models.load_model(str(path), compile=False)
        except Exception as exc:  # a zip, HDF5 or Keras error, or a refused Lambda
            message = _tf_message(exc)
            if "Could not locate class" in message:
                message = message.partition(". ")[0] + _CUSTOM_CLASS_HINT
            raise ModelFileError(
                f"{path} is not a Keras model file that Keras can load: {message}"
            ) from None
    if not isinstance(model, tf.keras.Model):
        raise ModelFileError(f"{path} holds a {type(model).__name__}, not a Keras model")
    kind = f"Keras {type(model).__name__} model"
    try:
        keras_inputs = list(model.inputs)
    except (AttributeError, ValueError):  # a subclassed model has no input layers
        keras_inputs = []
    specs = tuple(
        _declared(tf, t.name, tf.as_dtype(t.dtype), tf.TensorShape(t.shape), "the Keras model's")
        for t in keras_inputs
    )
    return TensorflowSource(path, kind, specs, model, None)


def _load_saved_model(tf: ModuleType, path: Path) -> TensorflowSource:
    if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise ModelFileError(
            f"{path} is a directory without saved_model.pb: not a TensorFlow SavedModel"
        )
    with quiet_libraries(), native_output_to_debug():
        try:
            loaded = tf.saved_model.load(str(path), tags=[SERVING_TAG])
        except Exception as exc:
            raise ModelFileError(
                f"TensorFlow cannot load the SavedModel {path} (tag {SERVING_TAG!r}): "
                f"{_tf_message(exc)}"
            ) from None
    signatures = dict(loaded.signatures)
    if SERVING_SIGNATURE not in signatures:
        others = sorted(name for name in signatures if not name.startswith("_"))
        has = f"its signatures: {', '.join(others)}" if others else "it has no signature"
        raise ModelFileError(
            f"the SavedModel {path} has no serving signature ({SERVING_SIGNATURE!r}; {has}). "
            "Save it with tf.saved_model.save(obj, dir, signatures=...) or a Keras "
            "model's model.export(dir)"
        )
    function = signatures[SERVING_SIGNATURE]
    args, kwargs = function.structured_input_signature
    if args:  # signatures take keyword arguments only; this is a guard, not a case
        raise ModelFileError(f"the SavedModel {path}'s serving signature takes positional inputs")
    specs = tuple(
        _declared(tf, key, kwargs[key].dtype, kwargs[key].shape, "the serving signature's")
        for key in sorted(kwargs)
    )
    return TensorflowSource(path, "SavedModel", specs, loaded, function)


def load_tensorflow(path: Path) -> TensorflowSource:
    """Load a Keras model file, or a SavedModel directory, and read its input signature.

    Raises:
        UsageError: tensorflow is missing, or a signature input has no fixed rank.
        ModelFileError: the file is not a Keras model, the directory not a SavedModel,
            the SavedModel has no serving signature, or an input has a dtype p2pnet
            cannot carry.
    """
    tf = _tensorflow()
    if path.is_dir():
        return _load_saved_model(tf, path)
    return _load_keras(tf, path)


def _match_inputs(names: Sequence[str], specs: Sequence[TensorSpec], what: str) -> None:
    """Declared inputs map on the model's in order; refuse a declaration that names the
    model's inputs in another order.

    Raises:
        InvalidInputError: another number of inputs, or a known name at another place.
    """
    if len(specs) != len(names):
        raise InvalidInputError(
            f"{what} takes {len(names)} input(s) ({', '.join(names)}); {len(specs)} declared "
            f"({describe_specs(specs)})"
        )
    for i, spec in enumerate(specs):
        if spec.name in names and names.index(spec.name) != i:
            raise InvalidInputError(
                f"{what} takes its inputs in the order {', '.join(names)}; {spec.name!r} is "
                f"declared as input {i + 1}: declare them in that order"
            )


def _to_numpy(value: Any) -> npt.NDArray[Any]:
    arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if arr.dtype.kind in "OS":  # TensorFlow strings come back as bytes
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr.flat]
        arr = np.array(flat, dtype=object).reshape(arr.shape)
    return arr


def _keras_outputs(result: Any) -> dict[str, npt.NDArray[Any]]:
    """A Keras model's outputs by the names its serving export gives them."""
    if isinstance(result, Mapping):
        return {str(k): _to_numpy(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return {f"output_{i}": _to_numpy(v) for i, v in enumerate(result)}
    return {"output_0": _to_numpy(result)}


class _Cut(Exception):
    """An exception whose text is the telling line of a TensorFlow error."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(_tf_message(exc))


def _reference(
    tf: ModuleType,
    source: TensorflowSource,
    specs: Sequence[TensorSpec],
    sample: Mapping[str, npt.NDArray[Any]],
) -> dict[str, npt.NDArray[Any]]:
    """The source model's own outputs on ``sample``, by the names its SavedModel gives them.

    Raises:
        InvalidInputError: the model refuses the declared inputs.
        ModelFileError: it returns a tensor p2pnet cannot carry.
    """

    def tensor(spec: TensorSpec) -> Any:
        return tf.constant(sample[spec.name], dtype=_tf_dtype(tf, spec.dtype))

    with quiet_libraries(), native_output_to_debug():
        try:
            if source.is_keras:
                tensors = [tensor(spec) for spec in specs]
                result = source.model(tensors if len(tensors) > 1 else tensors[0], training=False)
                outputs = _keras_outputs(result)
            else:
                keys = [spec.name for spec in source.inputs]
                result = source.function(
                    **{key: tensor(spec) for key, spec in zip(keys, specs, strict=True)}
                )
                outputs = {str(k): _to_numpy(v) for k, v in result.items()}
        except P2PNetError:
            raise
        except Exception as exc:
            raise InvalidInputError(input_mismatch(specs, sample, _Cut(exc))) from None
    for name, arr in outputs.items():
        if arr.dtype.kind != "O" and arr.dtype.name not in DTYPES:
            raise ModelFileError(
                f"the model returns {name!r} as {arr.dtype}, which p2pnet cannot carry"
            )
    return outputs


def _tf_dtype(tf: ModuleType, dtype: str) -> Any:
    return tf.string if dtype == "string" else tf.as_dtype(dtype)


def _export_keras(
    tf: ModuleType, source: TensorflowSource, specs: Sequence[TensorSpec], target: Path
) -> None:
    """Write the Keras model's serving SavedModel to ``target``, taking ``specs``.

    Raises:
        ModelFileError: Keras cannot export it.
    """
    signature = [
        tf.TensorSpec([d if isinstance(d, int) else None for d in spec.shape],
                      _tf_dtype(tf, spec.dtype), name=spec.name)
        for spec in specs
    ]  # fmt: skip
    with quiet_libraries(), native_output_to_debug():
        try:
            source.model.export(
                str(target), format="tf_saved_model", verbose=False,
                input_signature=signature if len(signature) == 1 else [signature],
            )  # fmt: skip
        except Exception as exc:
            raise ModelFileError(
                f"Keras cannot export {source.path.name} for serving: {_tf_message(exc)}"
            ) from None


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _unconverted_ops(model: onnx.ModelProto) -> list[str]:
    """TensorFlow ops tf2onnx left in the graph as they were: no ONNX op of that name."""
    found: dict[str, None] = {}
    for node in _nodes(model.graph):
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            found[node.op_type] = None
    return list(found)


def _reorder(values: Any, names: Sequence[str]) -> None:
    """Put a graph's inputs or outputs in the order of ``names``."""
    by_name = {v.name: v for v in values}
    if sorted(by_name) != sorted(names):
        return  # finish_model says what differs
    ordered = []
    for name in names:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(by_name[name])
        ordered.append(copy)
    del values[:]
    values.extend(ordered)


def _name_output_dims(model: onnx.ModelProto, specs: Sequence[TensorSpec]) -> None:
    """Replace the placeholder names tf2onnx gives unknown output dimensions ("unk__7")
    with what ONNX shape inference derives from the declared inputs ("N"), or with no
    name (any size) where it derives nothing."""
    outputs = model.graph.output
    unknown = [
        (i, axis)
        for i, value in enumerate(outputs)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if dim.dim_param.startswith("unk__")
    ]
    if not unknown:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    initializers = {init.name for init in probe.graph.initializer}
    inputs = [v for v in probe.graph.input if v.name not in initializers]
    for value, spec in zip(inputs, specs, strict=False):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == len(spec.shape):
            for dim, want in zip(dims, spec.shape, strict=True):
                if isinstance(want, str) and not dim.HasField("dim_value"):
                    dim.dim_param = want
    for i, axis in unknown:
        probe.graph.output[i].type.tensor_type.shape.dim[axis].ClearField("value")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe).graph.output
    except Exception as exc:  # leave the dimensions unnamed
        log.debug("no shape inference on the converted model: %s", exc)
        inferred = probe.graph.output
    symbols = {d for spec in specs for d in spec.shape if isinstance(d, str)}
    for i, axis in unknown:
        dim = outputs[i].type.tensor_type.shape.dim[axis]
        got = inferred[i].type.tensor_type.shape.dim
        new = got[axis] if axis < len(got) else None
        if new is not None and new.HasField("dim_value"):
            dim.dim_value = new.dim_value
        elif new is not None and new.dim_param in symbols:
            dim.dim_param = new.dim_param
        else:
            dim.ClearField("value")


def _numbered(keys: Sequence[str]) -> bool:
    """Keras's serving export names a list of outputs (or one) output_0, output_1, ..."""
    return all(re.fullmatch(r"output_\d+", key) for key in keys)


def _serving_order(keys: Sequence[str]) -> list[str]:
    """The outputs in the model's order: numbered ones by number (tf2onnx sorts them by
    name, output_10 before output_2), named ones (a dict) as the model returns them."""
    if _numbered(keys):
        return sorted(keys, key=lambda key: int(key.removeprefix("output_")))
    return list(keys)


def _output_names(source: TensorflowSource, keys: Sequence[str]) -> dict[str, str]:
    """The ONNX output names for the serving outputs ``keys`` (in order): a SavedModel's
    and a Keras model's dict outputs keep their names; a functional Keras model's list
    of outputs takes its output layers' names, another Keras model's output, output_0..."""
    if not source.is_keras or not _numbered(keys):
        return {key: key for key in keys}
    if type(source.model).__name__ == "Functional":
        names = [str(n) for n in getattr(source.model, "output_names", None) or ()]
        if len(names) == len(keys) and len(set(names)) == len(names):
            return dict(zip(keys, names, strict=True))
    return dict(zip(keys, default_output_names(len(keys)), strict=True))


def tensorflow_to_onnx(
    source: TensorflowSource,
    specs: Sequence[TensorSpec],
    check_sample: Mapping[str, npt.NDArray[Any]],
    opset: int,
    workdir: Path,
) -> Converted:
    """Run the model on the check sample for reference and convert it with tf2onnx: a
    SavedModel's serving signature, or a Keras model exported to one in ``workdir``.
    ``specs`` map on the model's inputs in order and name the ONNX inputs.

    Raises:
        UsageError: tf2onnx is missing, or cannot target ``opset``.
        InvalidInputError: the model does not take the declared inputs.
        ModelFileError: Keras cannot export the model, or tf2onnx cannot convert it (an
            op it has no ONNX conversion for is named).
    """
    tf = _tensorflow()
    tf2onnx = require("tf2onnx", _PURPOSE)
    tf_loader = require("tf2onnx.tf_loader", _PURPOSE)
    newest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if opset > newest:
        raise UsageError(f"tf2onnx {tf2onnx.__version__} converts to opsets up to {newest}")
    what = f"the {source.kind}" if source.is_keras else "the SavedModel's serving signature"
    if source.inputs or not source.is_keras:
        _match_inputs([spec.name for spec in source.inputs], specs, what)
    reference = _reference(tf, source, specs, check_sample)
    if source.is_keras:
        saved_model = workdir / "saved_model"
        _export_keras(tf, source, specs, saved_model)
        signature_inputs = [spec.name for spec in specs]  # the export takes their names
    else:
        saved_model = source.path
        signature_inputs = [spec.name for spec in source.inputs]
    declared = dict(zip(signature_inputs, (spec.name for spec in specs), strict=True))
    keys = _serving_order(list(reference))
    out_names = _output_names(source, keys)
    with quiet_libraries(), native_output_to_debug():
        try:
            graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                str(saved_model), None, None, tag=[SERVING_TAG], signatures=[SERVING_SIGNATURE],
                return_initialized_tables=True, return_tensors_to_rename=True,
            )  # fmt: skip
            # Graph tensor -> signature name (tf2onnx's) -> declared or chosen name.
            renames = {
                tensor: declared.get(name, out_names.get(name, name))
                for tensor, name in renames.items()
            }
            with tf.Graph().as_default() as graph:
                tf.import_graph_def(graph_def, name="")
                converted = tf2onnx.tfonnx.process_tf_graph(
                    graph, opset=opset, input_names=inputs, output_names=outputs,
                    tensors_to_rename=renames, initialized_tables=tables,
                )  # fmt: skip
                converted = tf2onnx.optimizer.optimize_graph(converted)
                model = converted.make_model(f"converted from {source.path.name}")
        except P2PNetError:
            raise
        except Exception as exc:
            raise ModelFileError(
                f"tf2onnx cannot convert {source.path.name}: {_tf_message(exc)}"
            ) from None
    unconverted = _unconverted_ops(model)
    if unconverted:
        raise ModelFileError(
            f"tf2onnx {tf2onnx.__version__} cannot convert the TensorFlow op(s) "
            f"{', '.join(unconverted)} in {source.path.name} to ONNX (opset {opset})"
        )
    want = [out_names[key] for key in keys]
    got = [value.name for value in model.graph.output]
    if sorted(got) != sorted(want):
        raise ModelFileError(
            f"the converted model's outputs ({', '.join(got)}) are not those {what} returns "
            f"({', '.join(want)})"
        )
    _reorder(model.graph.input, [spec.name for spec in specs])
    _reorder(model.graph.output, want)
    _name_output_dims(model, specs)
    exporter = f"tf2onnx {tf2onnx.__version__} (TensorFlow {tf.__version__})"
    return Converted(model, source.kind, exporter, [reference[key] for key in keys])
