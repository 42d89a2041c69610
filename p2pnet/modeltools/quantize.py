"""``quantize_model``: onnxruntime dynamic int8 quantization of an ONNX model's weights,
with both models measured (size, median latency) and compared on the same sample
inputs. onnxruntime.quantization is imported only here, when a quantization runs."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx

from p2pnet.errors import ModelExecutionError, ModelFileError, UsageError
from p2pnet.modeltools.files import check_paths, write_atomic
from p2pnet.modeltools.inputs import sample_inputs
from p2pnet.modeltools.libraries import first_line, quiet_libraries
from p2pnet.modeltools.reports import ModelFigures, QuantizeReport
from p2pnet.modeltools.verification import compare_outputs
from p2pnet.runtime.onnx_model import OnnxModel, inspect_model

__all__ = ["WEIGHT_TYPES", "percentile_ms", "quantize_model"]

WEIGHT_TYPES: Final = ("qint8", "quint8")


def percentile_ms(seconds: Sequence[float], q: float = 50.0) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no durations")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q)) * 1000.0


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
    check_paths(source, out)
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
    tmp = write_atomic(b"", out)
    try:
        with quiet_libraries():
            try:
                quantization.quantize_dynamic(str(source), str(tmp), weight_type=quant_type)
            except Exception as exc:
                raise ModelFileError(
                    f"onnxruntime cannot quantize {source}: {first_line(exc)}"
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
