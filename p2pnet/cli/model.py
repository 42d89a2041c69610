"""``p2pnet model inspect | import | quantize``: work with model files."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.text import Text

from p2pnet.cli.options import Command, ParentParsers, Subparsers
from p2pnet.cli.render import figure, generation_text, out, peer_text, schema_table

__all__ = [
    "ImportOptions",
    "InspectOptions",
    "QuantizeOptions",
    "add_model_parsers",
    "import_model_file",
    "inspect_model_files",
    "quantize_model_file",
]


@dataclass(frozen=True, slots=True)
class InspectOptions:
    """The options of ``p2pnet model inspect``."""

    files: tuple[Path, ...]
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InspectOptions:
        return cls(tuple(Path(f) for f in args.files), args.json)


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """The options of ``p2pnet model import``; ``inputs`` as NAME:DTYPE:SHAPE text."""

    source: Path
    out: Path
    framework: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int
    tolerance: float
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ImportOptions:
        return cls(
            source=Path(args.source),
            out=Path(args.out),
            framework=args.framework,
            inputs=tuple(args.input),
            outputs=tuple(args.output),
            opset=args.opset,
            tolerance=args.tolerance,
            json=args.json,
        )


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    """The options of ``p2pnet model quantize``."""

    source: Path
    out: Path
    runs: int
    weight_type: str
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QuantizeOptions:
        return cls(Path(args.source), Path(args.out), args.runs, args.weight_type, args.json)


# How ``model import`` names the source frameworks (p2pnet.modeltools.FRAMEWORKS).
_FRAMEWORK_NAMES: Final = {
    "torch": "PyTorch",
    "sklearn": "scikit-learn",
    "tensorflow": "TensorFlow",
}


def add_model_parsers(sub: Subparsers, parents: ParentParsers) -> None:
    model = sub.add_parser("model", help="work with model files")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    p = model_sub.add_parser(
        "inspect",
        parents=[parents.common],
        help="model ID (CID), size, inputs and outputs of ONNX files",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(InspectOptions.from_args, inspect_model_files))

    p = model_sub.add_parser(
        "import",
        parents=[parents.common],
        help="convert a PyTorch, scikit-learn or TensorFlow model to ONNX, checked against the "
        "original",
        description="Convert a TorchScript file (torch.jit.save), an exported program "
        "(torch.export.save, .pt2), a pickled scikit-learn estimator or Pipeline, or a "
        "TensorFlow model (a Keras .keras or .h5 file, a SavedModel directory) to ONNX, "
        "check it (ONNX checker, a run in p2pnet's runtime, the same sample inputs through "
        "the original model) and write it. WARNING: --from sklearn unpickles SRC, which runs "
        "code from the file: import only files you trust. Needs: pip install 'p2pnet[models]' "
        "(PyTorch, scikit-learn) or 'p2pnet[tensorflow]'.",
    )
    p.add_argument(
        "source", metavar="SRC", help="the model file (or SavedModel directory) to convert"
    )
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (replaced if present)")
    p.add_argument(
        "--from",
        dest="framework",
        required=True,
        choices=("torch", "sklearn", "tensorflow"),
        help="torch: TorchScript or exported program; sklearn: joblib/pickle file (runs code "
        "from the file when loaded: trusted files only); tensorflow: Keras file (.keras, .h5) "
        "or SavedModel directory with a serving signature",
    )
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME:DTYPE:SHAPE",
        help="a model input, e.g. x:float32:N,4 (a number is a fixed size, a name a symbolic "
        "one, ? any size); repeatable, in the order the model takes them. Required for torch "
        "and sklearn; tensorflow takes the model's input signature unless given",
    )
    p.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="name of the model's next output (repeatable, in order; default: output, "
        "output_0.. for PyTorch, label/probabilities or variable for scikit-learn, the output "
        "layers' or the serving signature's names for TensorFlow)",
    )
    p.add_argument(
        "--opset", type=int, default=18, metavar="N", help="ONNX opset to target (default 18)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        metavar="TOL",
        help="fail if an output deviates from the original's by more than TOL x max(1, |value|) "
        "(default 1e-4)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(ImportOptions.from_args, import_model_file))

    p = model_sub.add_parser(
        "quantize",
        parents=[parents.common],
        help="dynamic int8 quantization of an ONNX model: size, latency and deviation",
        description="Quantize an ONNX model's weights to 8 bits (onnxruntime dynamic "
        "quantization) and compare both models on the same sample inputs: file size, median "
        "latency, output deviation and, for classifiers, agreeing labels.",
    )
    p.add_argument("source", metavar="IN.onnx")
    p.add_argument("out", metavar="OUT.onnx", help="the quantized model (replaced if present)")
    p.add_argument(
        "--runs", type=int, default=50, metavar="N", help="timed runs per model (default 50)"
    )
    p.add_argument(
        "--weight-type",
        choices=("qint8", "quint8"),
        default="qint8",
        help="weight encoding (default qint8: faster on x86, same deviation)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(QuantizeOptions.from_args, quantize_model_file))


def inspect_model_files(options: InspectOptions) -> int:
    """Print each file's model ID and schema table (or JSON); for a generative model,
    also what its record's generation card says."""
    # onnx takes half a second to load
    from p2pnet.runtime.generative import inspect_model_file

    infos = [inspect_model_file(p) for p in options.files]
    if options.json:
        data = [info.to_dict() for info in infos]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for info in infos:
            out.print(info.model_id)
            out.print(schema_table(info))
            if info.generation is not None:
                out.print(generation_text(info.generation))
    return 0


def import_model_file(options: ImportOptions) -> int:
    """Convert a PyTorch, scikit-learn or TensorFlow model to ONNX and print how well it
    matches."""
    from p2pnet.modeltools import import_model, parse_input_decl

    report = import_model(
        options.source,
        options.out,
        framework=options.framework,
        inputs=[parse_input_decl(spec) for spec in options.inputs],
        output_names=options.outputs,
        opset=options.opset,
        tolerance=options.tolerance,
    )
    if options.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    check = report.verification
    out.print(report.info.model_id)
    out.print(schema_table(report.info))
    out.print(
        f"from {report.source} ({report.source_kind}) by {report.exporter}, opset {report.opset}",
        markup=False,
    )
    shapes = ", ".join(f"{k} {list(v)}" for k, v in report.sample_shapes.items())
    source = _FRAMEWORK_NAMES[report.framework]
    out.print(
        f"checked against {source} on {shapes}: max abs deviation {check.max_abs:.3g} "
        f"(tolerance {check.tolerance:g})",
        markup=False,
    )
    for c in check.comparisons:
        if c.is_label:
            out.print(_named(c.name, f"{figure(c.agreement, '.1%')} equal"))
        else:
            out.print(_named(c.name, f"max abs deviation {figure(c.max_abs, '.3g')}"))
    for name in check.unchecked:
        out.print(_named(name, "not checked (the source model has no such output)"))
    return 0


def quantize_model_file(options: QuantizeOptions) -> int:
    """Quantize a model's weights to 8 bits and print size, latency and deviation."""
    from p2pnet.modeltools import quantize_model

    report = quantize_model(
        options.source, options.out, runs=options.runs, weight_type=options.weight_type
    )
    if options.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    before, after = report.before, report.after
    from rich.table import Table

    shapes = ", ".join(f"{k} {list(v)}" for k, v in report.sample_shapes.items())
    table = Table(
        title=f"dynamic int8 quantization ({report.weight_type} weights, "
        f"{report.quantized_weights} weight tensors)",
        title_justify="left",
    )
    for column in ("", "before", "after", "change"):
        table.add_column(column, justify="right")
    table.add_row(
        "size", f"{before.size:,} B", f"{after.size:,} B", f"{report.size_ratio - 1:+.1%}"
    )
    table.add_row(
        f"latency p50 ({report.runs} runs)",
        f"{before.p50_ms:.3f} ms",
        f"{after.p50_ms:.3f} ms",
        f"{report.speedup:.2f}x faster",
    )
    out.print(table)
    deviations = Table(title=f"outputs on the same inputs ({shapes})", title_justify="left")
    for column in ("output", "dtype", "max abs dev", "mean abs dev", "same argmax/label"):
        deviations.add_column(column, justify="left" if column in ("output", "dtype") else "right")
    for c in report.outputs:
        deviations.add_row(
            peer_text(c.name),
            peer_text(c.dtype),
            figure(c.max_abs, ".4g"),
            figure(c.mean_abs, ".4g"),
            figure(c.agreement, ".1%"),
        )
    out.print(deviations)
    out.print(f"before  {before.model_id}  {before.path}", markup=False)
    out.print(f"after   {after.model_id}  {after.path}", markup=False)
    return 0


def _named(name: str, what: str) -> Text:
    """``  name: what``, the name (a tensor's, from the model file) as terminal-safe text."""
    return Text("  ") + peer_text(name) + f": {what}"
