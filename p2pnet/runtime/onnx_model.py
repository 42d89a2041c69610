"""ONNX models: identity and schema from the file, execution in onnxruntime off the trio thread."""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from p2pnet.core.model_id import model_id_from_digest
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import Dim, ModelSchema, TensorSpec
from p2pnet.core.tensor import dtype_name
from p2pnet.errors import InternalPeerError, ModelExecutionError, ModelFileError
from p2pnet.runtime.served import SlottedModel, threads_per_run, usable_cpus

__all__ = ["ONNX_RUNTIME", "ModelInfo", "OnnxModel", "inspect_model", "read_model_proto"]

# What capability records of ONNX models say in their ``runtime`` field.
ONNX_RUNTIME = f"onnxruntime/{ort.__version__}"


def file_model_id(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return model_id_from_digest(digest.digest()), size


def _tensor_spec(value: onnx.ValueInfoProto, path: Path) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelFileError(
            f"{path}: {value.name!r} is an ONNX {kind}, not a tensor; p2pnet serves models whose "
            "inputs and outputs are tensors (for scikit-learn classifiers, convert with "
            "options={'zipmap': False})"
        )
    tensor_type = value.type.tensor_type
    elem = tensor_type.elem_type
    if elem == onnx.TensorProto.STRING:
        dtype = "string"
    else:
        try:
            dtype = dtype_name(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))
        except Exception:
            raise ModelFileError(
                f"{path}: tensor {value.name!r} has ONNX element type "
                f"{onnx.TensorProto.DataType.Name(elem)}, which p2pnet cannot carry"
            ) from None
    shape: tuple[Dim, ...] = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    )
    return TensorSpec(value.name, dtype, shape)


@functools.cache
def _extensions_library() -> str | None:
    """The onnxruntime-extensions custom-op library (domain ai.onnx.contrib: tokenizers and
    string ops), or None if the package is not installed.

    Found without importing the package, whose __init__ takes seconds (it imports its
    converters); its get_library_path() returns this same file.
    """
    spec = importlib.util.find_spec("onnxruntime_extensions")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            library = Path(folder) / f"_extensions_pydll{suffix}"
            if library.is_file():
                return str(library)
    return None


def read_model_proto(path: str | Path) -> onnx.ModelProto:
    """A model file's graph and metadata, without external weight files.

    Raises:
        ModelFileError: the file cannot be read or is not an ONNX model.
    """
    try:
        return onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX bytes
        raise ModelFileError(f"{path} is not an ONNX model: {exc}") from None


def inspect_model(path: str | Path, proto: onnx.ModelProto | None = None) -> ModelInfo:
    """Read a model file: its ID (CID of the bytes), size, and schema from the ONNX graph
    (``proto``: the file's ``read_model_proto``, when already read).

    Raises:
        ModelFileError: the file cannot be read or is not an ONNX model with tensor I/O.
    """
    path = Path(path)
    try:
        model_id, size = file_model_id(path)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    graph = (proto if proto is not None else read_model_proto(path)).graph
    initializers = {init.name for init in graph.initializer}
    schema = ModelSchema(
        inputs=tuple(_tensor_spec(v, path) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor_spec(v, path) for v in graph.output),
    )
    if not schema.inputs or not schema.outputs:
        raise ModelFileError(f"{path}: the ONNX graph declares no inputs or no outputs")
    return ModelInfo(model_id, path.resolve(), size, schema, runtime=ONNX_RUNTIME)


class OnnxModel(SlottedModel):
    """A loaded model: one onnxruntime session, at most ``max_concurrency`` runs at a time
    and at most ``max_queue`` more waiting for a slot; callers beyond that are refused.

    ``run`` and ``run_sync`` raise ``ModelExecutionError`` when onnxruntime fails on the
    inputs. Call ``wait_idle`` before the process exits: onnxruntime aborts the whole
    process if the interpreter shuts down while one of its runs is still going in a thread.
    """

    def __init__(
        self,
        info: ModelInfo,
        *,
        max_concurrency: int = 2,
        max_queue: int = 64,
        threads: int | None = None,
    ) -> None:
        """Load the session for ``info``, each run using ``threads`` threads: None, the
        CPUs shared among ``max_concurrency`` runs (``threads_per_run``); 0, as many as
        onnxruntime chooses (one per core).

        Raises:
            ModelFileError: onnxruntime cannot load the model.
        """
        super().__init__(info, max_concurrency=max_concurrency, max_queue=max_queue)
        if threads is None:
            threads = threads_per_run(max_concurrency, usable_cpus())
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # onnxruntime's own choice is a thread per core for each run: two runs at once on
        # two cores then ran four threads, and the customer-service models took a third
        # more CPU for no less time (docs/models.md, "Threads").
        options.intra_op_num_threads = threads
        # onnxruntime's intra-op threads spin after each run by default, waiting for the
        # next; in a peer they take the cores its network stack and its other models need.
        # Off: the customer-service floor took 5.5-5.8 ms and 8 ms of CPU per run instead
        # of 7.2-7.8 ms and 16 ms, and the pipeline over four peers 9.8-12.4 ms instead of
        # 16-19 ms (scripts/bench/pipeline.py, docs/benchmarks.md "Pipelines").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        extensions = _extensions_library()
        if extensions is not None:
            # Always: about 2 ms once per process, then ~0.1 ms per session (measured).
            options.register_custom_ops_library(extensions)
        try:
            self._session = ort.InferenceSession(
                str(info.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelFileError(f"onnxruntime cannot load {info.path}: {exc}") from None
        self._output_names = [spec.name for spec in info.schema.outputs]

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> OnnxModel:
        """Inspect and load a model file in one step (see inspect_model, __init__)."""
        return cls(inspect_model(path), **kwargs)

    def _run_checked(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        try:
            outputs = self._session.run(self._output_names, inputs)
        except Exception as exc:  # onnxruntime's pybind errors have no common base we can import
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise ModelExecutionError(
                f"model {self.info.name} ({self.model_id}) failed: {message}"
            ) from None
        result: dict[str, npt.NDArray[Any]] = {}
        for name, value in zip(self._output_names, outputs, strict=True):
            if not isinstance(value, np.ndarray):
                raise InternalPeerError(
                    f"model {self.info.name} produced a {type(value).__name__} for {name!r}"
                )
            result[name] = value
        return result
