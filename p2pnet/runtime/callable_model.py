"""Python steps served like models: a function with a declared schema (docs/adapters.md).

An adapter manifest (JSON) names a Python function and declares its inputs and outputs
in the vocabulary of ``ModelSchema``. Its model ID is the CID of the manifest file's
bytes, exactly as an ONNX model's is the CID of its file; ``entry_sha256`` in the
manifest pins the entry file's source, so that the ID covers the code too.

    read_manifest(path)    the manifest checked, its ID and schema; runs no code
    CallableModel          the function loaded: inputs checked against the schema, outputs
                           checked too, worker threads, concurrency and queue limits,
                           timeouts (as OnnxModel)
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import platform
import re
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import Dim, ModelSchema, TensorSpec, tensor_mismatch
from p2pnet.core.tensor import DTYPE_CODES, MAX_NDIM, dtype_name, normalize_array
from p2pnet.errors import InvalidInputError, ModelExecutionError, ModelFileError
from p2pnet.runtime.served import SlottedModel

__all__ = [
    "ADAPTER_FORMAT",
    "PYTHON_RUNTIME",
    "AdapterManifest",
    "CallableModel",
    "check_outputs",
    "read_manifest",
]

log = logging.getLogger(__name__)

ADAPTER_FORMAT: Final = "p2pnet-adapter/1"
# What capability records of Python adapters say in their ``runtime`` field.
PYTHON_RUNTIME: Final = f"python/{platform.python_version()}"

Function = Callable[[dict[str, npt.NDArray[Any]]], object]

_REQUIRED: Final = ("format", "name", "entry", "inputs", "outputs")
_OPTIONAL: Final = ("version", "description", "tasks", "entry_sha256")
_TENSOR_KEYS: Final = ("name", "dtype", "shape")
_DTYPES: Final = tuple(dtype_name(dt) for dt in DTYPE_CODES.values())
_TASK = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class AdapterManifest:
    """A checked adapter manifest: its ID (CID of the file's bytes), what it declares,
    and where its entry function is (``target:function``, ``target`` a ``.py`` file
    relative to the manifest, or an importable module)."""

    path: Path
    model_id: str
    size: int
    name: str
    version: str
    description: str
    entry: str
    entry_sha256: str | None
    tasks: tuple[str, ...]
    schema: ModelSchema

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self.model_id,
            self.path,
            self.size,
            self.schema,
            name=self.name,
            version=self.version,
            runtime=PYTHON_RUNTIME,
        )

    @property
    def entry_file(self) -> Path | None:
        """The entry's source file, or None for an entry in an importable module."""
        target = self.entry.rpartition(":")[0]
        if not _is_file_target(target):
            return None
        return self.path.parent / target


def read_manifest(path: str | Path) -> AdapterManifest:
    """Read and check an adapter manifest; its model ID is the CID of the file's bytes.

    Runs no code: the entry is only parsed here (CallableModel loads it).

    Raises:
        ModelFileError: the file cannot be read, is not JSON, or breaks a rule of the
            format (docs/adapters.md); the message names the field.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(
            f"cannot read adapter manifest {path}: {exc.strerror or exc}"
        ) from None
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{path} is not a JSON adapter manifest: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"{path}: an adapter manifest is a JSON object, not {_kind(doc)}")
    if doc.get("format") != ADAPTER_FORMAT:
        raise ModelFileError(
            f"{path}: 'format' is {doc.get('format')!r:.60}; an adapter manifest says "
            f'"format": "{ADAPTER_FORMAT}"'
        )
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ModelFileError(f"{path}: the manifest lacks {missing[0]!r}")
    unknown = [k for k in doc if k not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise ModelFileError(
            f"{path}: unknown manifest field {unknown[0]!r:.60}; the fields are "
            + ", ".join(_REQUIRED + _OPTIONAL)
        )

    def fail(message: str) -> ModelFileError:
        return ModelFileError(f"{path}: {message}")

    name = _text(doc["name"], "'name'", 128, fail)
    if not name:
        raise fail("'name' is empty")
    version = _text(doc.get("version", ""), "'version'", 64, fail)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise fail(f"'description' must be a string, not {_kind(description)}")
    entry = doc["entry"]
    if not isinstance(entry, str):
        raise fail(f"'entry' must be a string, not {_kind(entry)}")
    target, _, function = entry.rpartition(":")
    if not target or not _MODULE.fullmatch(function):
        raise fail(
            f"'entry' is {entry!r:.80}; it must be 'file.py:function' (a file relative to "
            "the manifest) or 'package.module:function'"
        )
    if not _is_file_target(target) and not _MODULE.fullmatch(target):
        raise fail(f"'entry' names {target!r:.80}, which is neither a .py file nor a module name")
    entry_sha256 = doc.get("entry_sha256")
    if entry_sha256 is not None:
        if not isinstance(entry_sha256, str) or not _SHA256.fullmatch(entry_sha256):
            raise fail(
                f"'entry_sha256' is {entry_sha256!r:.80}; it must be the SHA-256 of the entry "
                "file, 64 lower-case hex digits"
            )
        if not _is_file_target(target):
            raise fail(
                "'entry_sha256' pins an entry file's source; entry "
                f"{entry!r:.80} names a module, which has no single file to pin"
            )
    tasks = doc.get("tasks", [])
    if not isinstance(tasks, list):
        raise fail(f"'tasks' must be a list of task tags, not {_kind(tasks)}")
    for tag in tasks:
        if not isinstance(tag, str) or not _TASK.fullmatch(tag):
            raise fail(
                f"'tasks' holds {tag!r:.80}, which is not a task tag: lower-case letters, "
                "digits and '-', starting with a letter or digit, at most 64 characters"
            )
    schema = ModelSchema(
        inputs=_specs(doc["inputs"], "inputs", fail),
        outputs=_specs(doc["outputs"], "outputs", fail),
    )
    return AdapterManifest(
        path=path.resolve(),
        model_id=model_id_of_bytes(data),
        size=len(data),
        name=name,
        version=version,
        description=description,
        entry=entry,
        entry_sha256=entry_sha256,
        tasks=tuple(dict.fromkeys(tasks)),
        schema=schema,
    )


def check_outputs(
    schema: ModelSchema, inputs: Mapping[str, npt.NDArray[Any]], outputs: object
) -> dict[str, npt.NDArray[Any]]:
    """Check what a function returned against ``schema.outputs``; return it as arrays.

    Exactly the declared outputs, each with the declared dtype (no casts) and rank,
    fixed dimensions equal, and a symbolic dimension the same size as wherever else it
    occurs, in the (already checked) ``inputs`` included.

    Raises:
        ValueError: the first mismatch, naming the output, what was declared and what came.
    """
    declared = ", ".join(spec.describe() for spec in schema.outputs)
    if not isinstance(outputs, Mapping):
        raise ValueError(
            f"it returned {_kind(outputs)}; it must return a dict of its outputs: {declared}"
        )
    missing = [spec.name for spec in schema.outputs if spec.name not in outputs]
    if missing:
        raise ValueError(f"it returned no output {missing[0]!r}; it declares {declared}")
    names = {spec.name for spec in schema.outputs}
    unexpected = [name for name in outputs if name not in names]
    if unexpected:
        raise ValueError(
            f"it returned an undeclared output {unexpected[0]!r:.80}; it declares {declared}"
        )
    symbols: dict[str, tuple[int, str]] = {}
    for spec in schema.inputs:
        for dim, size in zip(spec.shape, inputs[spec.name].shape, strict=True):
            if isinstance(dim, str):
                symbols.setdefault(dim, (size, f"input {spec.name!r}"))
    checked: dict[str, npt.NDArray[Any]] = {}
    for spec in schema.outputs:
        value = outputs[spec.name]
        try:
            arr = normalize_array(spec.name, value)
        except InvalidInputError as exc:
            raise ValueError(f"output {exc.message}") from None
        if arr.size == 0 and not isinstance(value, np.ndarray):
            # An empty list has no dtype of its own (numpy says float64): take the declared one.
            arr = arr.astype(object if spec.dtype == "string" else spec.dtype)
        mismatch = tensor_mismatch(spec, arr, "output", "it declares", symbols)
        if mismatch is not None:
            raise ValueError(mismatch)
        checked[spec.name] = arr
    return checked


class CallableModel(SlottedModel):
    """An adapter's function, served like a model: at most ``max_concurrency`` runs at a
    time in worker threads (so the function must be thread-safe if that is above 1) and
    at most ``max_queue`` more waiting; callers beyond that are refused.

    ``run`` and ``run_sync`` raise ``ModelExecutionError`` when the function raises, or
    returns outputs that do not match the declared ones.
    """

    def __init__(
        self, manifest: AdapterManifest, *, max_concurrency: int = 2, max_queue: int = 64
    ) -> None:
        """Import the manifest's entry function (this runs the entry's module code).

        Raises:
            ModelFileError: the entry file is missing, does not match ``entry_sha256``,
                fails to import, or lacks the function, or the function cannot take
                one argument.
        """
        super().__init__(manifest.info, max_concurrency=max_concurrency, max_queue=max_queue)
        self.manifest = manifest
        self._function = _load_entry(manifest)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> CallableModel:
        """Read a manifest and load its entry in one step (see read_manifest, __init__)."""
        return cls(read_manifest(path), **kwargs)

    def _run_checked(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        which = f"model {self.info.name} ({self.model_id})"
        try:
            outputs = self._function(dict(inputs))
        except (Exception, SystemExit) as exc:
            log.info("%s raised", which, exc_info=True)
            raise ModelExecutionError(f"{which} failed: {type(exc).__name__}: {exc}") from None
        try:
            return check_outputs(self.info.schema, inputs, outputs)
        except ValueError as exc:
            raise ModelExecutionError(f"{which} returned bad outputs: {exc}") from None


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _load_entry(manifest: AdapterManifest) -> Function:
    target, _, function = manifest.entry.rpartition(":")
    where = f"{manifest.path}: entry {manifest.entry!r}"
    file = manifest.entry_file
    module = _load_file(manifest, file, where) if file else _import_module(target, where)
    value: object = module
    for part in function.split("."):
        if not hasattr(value, part):
            raise ModelFileError(f"{where}: {target} defines no {function!r}")
        value = getattr(value, part)
    if not callable(value):
        raise ModelFileError(f"{where}: {function!r} is {_kind(value)}, not a function")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have none; they are called as they are
        return value
    try:
        signature.bind({})
    except TypeError:
        raise ModelFileError(
            f"{where}: {function}{signature} must take one argument, the dict of inputs"
        ) from None
    return value


def _load_file(manifest: AdapterManifest, file: Path, where: str) -> types.ModuleType:
    try:
        source = file.read_bytes()
    except OSError as exc:
        raise ModelFileError(
            f"{where}: cannot read entry file {file}: {exc.strerror or exc}"
        ) from None
    digest = hashlib.sha256(source).hexdigest()
    if manifest.entry_sha256 is not None and digest != manifest.entry_sha256:
        raise ModelFileError(
            f"{where}: entry file {file} has SHA-256 {digest}, but the manifest pins "
            f"{manifest.entry_sha256}; if the change is meant, update 'entry_sha256' (the "
            "model ID changes with it)"
        )
    # One module per distinct source: loading the same file twice shares it.
    name = "_p2pnet_adapter_" + re.sub(r"\W", "_", file.stem) + "_" + digest[:16]
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    module = types.ModuleType(name)
    module.__file__ = str(file.resolve())
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        # The bytes just hashed are the ones run: the file may change in between.
        exec(compile(source, str(file), "exec"), module.__dict__)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ModelFileError(
            f"{where}: entry file {file} fails to load: {type(exc).__name__}: {exc}"
        ) from None
    return module


def _import_module(target: str, where: str) -> types.ModuleType:
    try:
        return importlib.import_module(target)
    except (Exception, SystemExit) as exc:
        raise ModelFileError(
            f"{where}: module {target!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from None


def _specs(
    value: object, side: str, fail: Callable[[str], ModelFileError]
) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise fail(f"{side!r} must be a non-empty list of tensors, not {_kind(value)}")
    specs: list[TensorSpec] = []
    for i, item in enumerate(value):
        where = f"{side}[{i}]"
        if not isinstance(item, dict) or set(item) != set(_TENSOR_KEYS):
            raise fail(f"{where} must be an object with exactly the keys name, dtype, shape")
        name = _text(item["name"], f"{where} name", 128, fail)
        if not name:
            raise fail(f"{where} name is empty")
        where = f"{side} {name!r}"
        dtype = item["dtype"]
        if dtype not in _DTYPES:
            raise fail(f"{where} has dtype {dtype!r:.40}; p2pnet carries " + ", ".join(_DTYPES))
        shape = item["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise fail(f"{where} shape must be a list of at most {MAX_NDIM} dimensions")
        dims: list[Dim] = []
        for dim in shape:
            if dim is None or (type(dim) is int and dim >= 0):
                dims.append(dim)
            elif (
                isinstance(dim, str)
                and dim
                and len(dim.encode()) <= 64
                and not _CONTROL.search(dim)
            ):
                dims.append(dim)
            else:
                raise fail(
                    f"{where} has dimension {dim!r:.40}; a dimension is a size (an integer "
                    '0 or more), a symbol (a name such as "n": the same size wherever it '
                    "occurs) or null (any size)"
                )
        specs.append(TensorSpec(name, dtype, tuple(dims)))
    names = [spec.name for spec in specs]
    twice = [n for n in names if names.count(n) > 1]
    if twice:
        raise fail(f"{side} name tensor {twice[0]!r} twice")
    return tuple(specs)


def _text(value: object, field: str, max_bytes: int, fail: Callable[[str], ModelFileError]) -> str:
    if not isinstance(value, str):
        raise fail(f"{field} must be a string, not {_kind(value)}")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise fail(f"{field} is over {max_bytes} bytes of UTF-8")
    if _CONTROL.search(value):
        raise fail(f"{field} holds a control character")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two readers could take different values; the ID must name one meaning.
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _kind(value: object) -> str:
    """What a value is, in JSON's words where it came from JSON."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return f"a {type(value).__name__}"
