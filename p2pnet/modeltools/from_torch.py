"""PyTorch models to ONNX: a TorchScript file (torch.jit.save) or a saved exported
program (torch.export.save), run on the sample inputs for reference and exported with
torch.onnx. torch is imported only here, when a conversion needs it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from p2pnet.core.schema import TensorSpec
from p2pnet.errors import InvalidInputError, ModelFileError, P2PNetError, UsageError
from p2pnet.modeltools.converted import Converted, default_output_names
from p2pnet.modeltools.inputs import describe_shapes, describe_specs, input_mismatch
from p2pnet.modeltools.libraries import first_line, quiet_libraries, require

__all__ = ["torch_to_onnx"]

log = logging.getLogger(__name__)


def _torch_load(torch: ModuleType, path: Path) -> tuple[Any, str]:
    loaders = [("TorchScript", torch.jit.load), ("exported program", torch.export.load)]
    if path.suffix == ".pt2":
        loaders.reverse()
    problems: list[str] = []
    for kind, load in loaders:
        try:
            return load(str(path)), kind
        except Exception as exc:  # each loader raises its own zoo of types
            problems.append(f"as {kind}: {first_line(exc)}")
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


def torch_to_onnx(
    path: Path,
    specs: Sequence[TensorSpec],
    export_sample: Mapping[str, npt.NDArray[Any]],
    check_sample: Mapping[str, npt.NDArray[Any]],
    opset: int,
    workdir: Path,
) -> Converted:
    """Load the model at ``path``, run it on both samples and export it to ONNX in
    ``workdir``: the export sample fixes the traced shapes, the check sample gives the
    reference outputs (another size for the symbolic dimensions).

    Raises:
        UsageError: torch is missing, or a string input is declared.
        InvalidInputError: the model does not take the declared inputs.
        ModelFileError: the file is not a loadable program, or the export fails.
    """
    torch = require("torch", "importing a PyTorch model")
    if any(spec.dtype == "string" for spec in specs):
        raise UsageError("PyTorch models take no string tensors; declare numeric inputs")
    with quiet_libraries():
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
            f"{len(specs)} declared ({describe_specs(specs)})"
        )

    def forward(sample: Mapping[str, npt.NDArray[Any]], hint: str = "") -> list[npt.NDArray[Any]]:
        tensors = [torch.from_numpy(np.ascontiguousarray(arr)) for arr in sample.values()]
        with torch.no_grad(), quiet_libraries():
            try:
                result = program(*tensors)
            except Exception as exc:
                raise InvalidInputError(input_mismatch(specs, sample, exc) + hint) from None
        return _torch_flatten(result, torch)

    forward(export_sample)
    reference = forward(
        check_sample,
        f"; it accepts {describe_shapes(export_sample)}, so it fixes a dimension declared "
        "symbolic"
        + (
            " (an exported program keeps the shapes it was exported with unless "
            "torch.export.export got dynamic_shapes)"
            if kind == "exported program"
            else ""
        ),
    )
    input_names = [spec.name for spec in specs]
    output_names = default_output_names(len(reference))
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in export_sample.values())
    target = workdir / "export.onnx"
    with quiet_libraries():
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
                f"torch.onnx.export cannot convert {path}: {first_line(exc)}"
            ) from None
    try:
        model = onnx.load(str(target))
    except Exception as exc:
        raise ModelFileError(f"torch.onnx.export wrote no usable ONNX model: {exc}") from None
    return Converted(model, kind, exporter, reference)
