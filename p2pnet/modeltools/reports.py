"""What ``import_model`` and ``quantize_model`` hand back: plain dataclasses with a
``to_dict`` for ``--json`` output."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from p2pnet.core.model_info import ModelInfo
from p2pnet.modeltools.verification import OutputComparison, Verification

__all__ = ["FRAMEWORKS", "Framework", "ImportReport", "ModelFigures", "QuantizeReport"]

Framework = Literal["torch", "sklearn", "tensorflow"]
FRAMEWORKS: Final[tuple[Framework, ...]] = ("torch", "sklearn", "tensorflow")


@dataclass(frozen=True, slots=True)
class ImportReport:
    """An imported model: the ONNX file written, where it came from, and how it was checked."""

    info: ModelInfo
    source: Path
    framework: Framework
    # "TorchScript", "exported program", the estimator's class name, "Keras Functional
    # model" (Sequential ...), or "SavedModel"
    source_kind: str
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
