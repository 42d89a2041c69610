"""Offline model tools: PyTorch, scikit-learn and TensorFlow models to ONNX, and int8
quantization. Nothing here serves a model: the runtime never imports this package, which
runs the models it writes in the runtime to check them.

importer.py      import_model                  a model file to ONNX, checked end to end
quantize.py      quantize_model, percentile_ms dynamic int8 quantization, before/after figures
reports.py       ImportReport, QuantizeReport, what those two hand back (to_dict for --json)
                 ModelFigures
inputs.py        parse_input_decl,             --input NAME:DTYPE:SHAPE declarations and the
                 sample_inputs                 seeded sample inputs made from them
verification.py  compare_outputs,              outputs against a reference's on the same
                 verify_outputs                inputs: figures, and pass/fail within a
                 (OutputComparison,            tolerance
                 Verification)
from_torch.py    torch_to_onnx                 TorchScript files and exported programs to ONNX
from_sklearn.py  sklearn_to_onnx               scikit-learn estimators and Pipelines to ONNX
from_tensorflow.py
                 load_tensorflow,              Keras files (.keras, .h5) and SavedModels to
                 tensorflow_to_onnx            ONNX with tf2onnx (a Keras model through its
                                               serving export); their input signatures
converted.py     Converted, finish_model       an exporter's result; its graph fitted to the
                                               declared inputs and output names, checked
libraries.py     require, quiet_libraries,     the optional packages, imported when needed
                 native_output_to_debug,       (with an install hint naming their extra);
                 first_line, MODELS_EXTRA,     their noise, TensorFlow's C++ lines too, to
                 TENSORFLOW_EXTRA              the debug log
files.py         check_paths, write_atomic     source and output paths; output written beside
                                               its place, then renamed over it

torch, scikit-learn, skl2onnx and onnxruntime.quantization (the ``models`` extra), and
tensorflow and tf2onnx (the ``tensorflow`` extra) are imported only when a conversion
needs them. Loading a pickled scikit-learn model runs code from the file: import only
files you trust. Nothing from the network is unpickled.
"""

from __future__ import annotations

from p2pnet.modeltools.importer import DEFAULT_OPSET, DEFAULT_TOLERANCE, import_model
from p2pnet.modeltools.inputs import DTYPES, parse_input_decl, sample_inputs
from p2pnet.modeltools.libraries import MODELS_EXTRA, TENSORFLOW_EXTRA
from p2pnet.modeltools.quantize import percentile_ms, quantize_model
from p2pnet.modeltools.reports import (
    FRAMEWORKS,
    ImportReport,
    ModelFigures,
    QuantizeReport,
)
from p2pnet.modeltools.verification import (
    OutputComparison,
    Verification,
    compare_outputs,
    verify_outputs,
)

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "DTYPES",
    "FRAMEWORKS",
    "MODELS_EXTRA",
    "TENSORFLOW_EXTRA",
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
