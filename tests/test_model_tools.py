"""`p2pnet model import` and `p2pnet model quantize`: real PyTorch and scikit-learn models,
converted, run in p2pnet's runtime and compared with the originals."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pnet.cli import main
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.schema import TensorSpec
from p2pnet.errors import UsageError
from p2pnet.modeltools import (
    compare_outputs,
    import_model,
    parse_input_decl,
    percentile_ms,
    sample_inputs,
    verify_outputs,
)
from p2pnet.runtime.onnx_model import OnnxModel

torch = pytest.importorskip("torch")
joblib = pytest.importorskip("joblib")
pytest.importorskip("skl2onnx")

# TorchScript is deprecated in torch 2.13 but still how many models are shipped.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")

X = "x:float32:N,4"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _mlp(*sizes: int) -> Any:
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small seeded MLP (4 -> 16 -> 3) as TorchScript, and as dynamic and static
    exported programs."""
    root = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    mlp = _mlp(4, 16, 3)
    example = (torch.randn(2, 4),)
    files = {
        "script": root / "mlp.pt",
        "program": root / "mlp.pt2",
        "static": root / "mlp_static.pt2",
    }
    torch.jit.save(torch.jit.script(mlp), str(files["script"]))
    batch = torch.export.Dim("batch")
    dynamic = torch.export.export(mlp, example, dynamic_shapes=({0: batch},))
    torch.export.save(dynamic, str(files["program"]))
    torch.export.save(torch.export.export(mlp, example), str(files["static"]))
    return files


@pytest.fixture(scope="module")
def sklearn_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fitted scikit-learn models in joblib files: an iris Pipeline, a text Pipeline."""
    from sklearn.datasets import load_iris
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path_factory.mktemp("sklearn")
    iris = load_iris()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    pipe.fit(iris.data.astype(np.float32), iris.target)
    text = make_pipeline(TfidfVectorizer(), LogisticRegression(random_state=0))
    text.fit(["great, works", "broke in a day", "love it", "awful support"], [1, 0, 1, 0])
    files = {"iris": root / "iris.joblib", "text": root / "text.joblib"}
    joblib.dump(pipe, files["iris"])
    joblib.dump(text, files["text"])
    return files


# --- import --------------------------------------------------------------------------------


def test_import_torchscript_runs_in_p2pnet_like_torch(
    capsys: pytest.CaptureFixture[str], torch_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "mlp.onnx"
    report = run_json(
        capsys, "model", "import", str(torch_files["script"]), str(out),
        "--from", "torch", "--input", X, "--output", "logits",
    )  # fmt: skip
    assert report["model_id"] == model_id_of_bytes(out.read_bytes())
    assert report["size"] == out.stat().st_size
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert report["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["N", 3]}]
    assert report["source_kind"] == "TorchScript"
    assert report["check"]["passed"] and report["check"]["max_abs_deviation"] < 1e-5

    # Another batch size than the check used: the symbolic dimension really is dynamic.
    x = np.random.default_rng(7).standard_normal((7, 4)).astype(np.float32)
    got = OnnxModel.load(out).run_sync({"x": x})["logits"]
    want = torch.jit.load(str(torch_files["script"]))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_import_exported_program_runs_in_p2pnet_like_torch(
    capsys: pytest.CaptureFixture[str], torch_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "mlp.onnx"
    code, stdout, err = run(
        capsys, "model", "import", str(torch_files["program"]), str(out), "--from", "torch",
        "--input", X,
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith(model_id_of_bytes(out.read_bytes()))
    assert "exported program" in stdout and "checked against PyTorch" in stdout
    info = OnnxModel.load(out).info
    assert [(t.name, t.dtype, t.shape) for t in info.schema.inputs] == [("x", "float32", ("N", 4))]
    assert [(t.name, t.shape) for t in info.schema.outputs] == [("output", ("N", 3))]

    x = np.random.default_rng(8).standard_normal((5, 4)).astype(np.float32)
    got = OnnxModel.load(out).run_sync({"x": x})["output"]
    program = torch.export.load(str(torch_files["program"])).module()
    np.testing.assert_allclose(got, program(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_import_sklearn_pipeline_gives_plain_tensors_like_sklearn(
    capsys: pytest.CaptureFixture[str], sklearn_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "iris.onnx"
    report = run_json(
        capsys, "model", "import", str(sklearn_files["iris"]), str(out), "--from", "sklearn",
        "-i", X,
    )  # fmt: skip
    assert [o["name"] for o in report["outputs"]] == ["label", "probabilities"]
    assert report["source_kind"] == "Pipeline" and report["check"]["passed"]
    x = np.random.default_rng(1).uniform(0, 8, (20, 4)).astype(np.float32)
    got = OnnxModel.load(out).run_sync({"x": x})
    pipe = joblib.load(sklearn_files["iris"])
    assert got["label"].tolist() == pipe.predict(x).tolist()
    np.testing.assert_allclose(got["probabilities"], pipe.predict_proba(x), atol=1e-5)


def test_import_sklearn_text_pipeline(
    capsys: pytest.CaptureFixture[str], sklearn_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "text.onnx"
    code, stdout, err = run(
        capsys, "model", "import", str(sklearn_files["text"]), str(out), "--from", "sklearn",
        "-i", "text:string:N", "--output", "label", "--output", "scores",
    )  # fmt: skip
    assert code == 0, err
    assert "label: 100.0% equal" in stdout
    got = OnnxModel.load(out).run_sync({"text": np.array(["love it", "awful"], dtype=object)})
    assert got["label"].tolist() == [1, 0] and got["scores"].shape == (2, 2)


class _TwoInTwoOut(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: Any, ids: Any) -> tuple[Any, Any]:
        return x * ids.to(x.dtype), (x.sum(dim=1) > 0).to(torch.int64)


def test_import_several_inputs_and_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "two.pt"  # traced, not scripted: torch.jit.trace files work too
    example = (torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64))
    torch.jit.save(torch.jit.trace(_TwoInTwoOut(), example), str(script))
    report = run_json(
        capsys, "model", "import", str(script), str(tmp_path / "two.onnx"), "--from", "torch",
        "-i", "x:float32:batch,3", "-i", "ids:int64:batch,3",
    )  # fmt: skip
    assert report["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
        {"name": "ids", "dtype": "int64", "shape": ["batch", 3]},
    ]
    assert [(o["name"], o["dtype"]) for o in report["outputs"]] == [
        ("output_0", "float32"), ("output_1", "int64"),
    ]  # fmt: skip
    floats, labels = report["check"]["outputs"]
    assert floats["max_abs"] < 1e-6 and labels["max_abs"] is None and labels["agreement"] == 1.0


@pytest.mark.parametrize(
    ("source", "framework", "inputs", "message"),
    [
        ("script", "torch", ["x:float32"], "expected NAME:DTYPE:SHAPE"),
        ("script", "torch", ["x:complex64:N,4"], "unknown dtype 'complex64'"),
        ("script", "torch", ["x:float32:N,0"], "dimension 1 is '0'"),
        ("missing", "torch", [X], "does not exist"),
        ("script", "torch", ["x:float32:N,3"], "mat1 and mat2 shapes cannot be multiplied"),
        ("script", "torch", ["x:float64:N,4"], "must have the same dtype"),
        ("script", "torch", [X, "y:float32:N,4"], "forward takes 1 input(s) (input); 2 declared"),
        ("program", "torch", ["x:float32:N,5"], "Guard failed"),
        ("static", "torch", [X], "fixes a dimension declared symbolic"),
        ("iris", "sklearn", ["x:float32:N,3"], "X has 3 features"),
        ("script", "sklearn", [X], "is not a joblib or pickle file of a scikit-learn model"),
        ("iris", "torch", [X], "neither a TorchScript file"),
        ("iris", "sklearn", [X, "y:float32:N,4"], "takes one input matrix; 2 declared"),
    ],
)
def test_import_errors_are_precise_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    torch_files: dict[str, Path],
    sklearn_files: dict[str, Path],
    tmp_path: Path,
    source: str,
    framework: str,
    inputs: list[str],
    message: str,
) -> None:
    path = {**torch_files, **sklearn_files}.get(source, tmp_path / "missing.pt")
    out = tmp_path / "out.onnx"
    argv = ["model", "import", str(path), str(out), "--from", framework]
    for spec in inputs:
        argv += ["--input", spec]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_an_unknown_framework_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str], torch_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["model", "import", str(torch_files["script"]), str(tmp_path / "o.onnx"),
              "--from", "jax", "-i", X])  # fmt: skip
    assert exc.value.code == 2
    assert "invalid choice: 'jax'" in capsys.readouterr().err


def test_a_conversion_beyond_the_tolerance_fails_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], torch_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "mlp.onnx"
    code, _, err = run(
        capsys, "model", "import", str(torch_files["script"]), str(out), "--from", "torch",
        "-i", X, "--tolerance", "1e-15",
    )  # fmt: skip
    assert code == 2 and "does not reproduce mlp.pt's outputs" in err
    assert "tolerance 1e-15" in err and not out.exists()


def test_a_missing_optional_package_names_the_extra(
    capsys: pytest.CaptureFixture[str],
    sklearn_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # import skl2onnx raises ImportError
    args = [str(sklearn_files["iris"]), str(tmp_path / "o.onnx")]
    with pytest.raises(UsageError, match=re.escape("'skl2onnx', which is not installed: pip "
                                                   "install 'p2pnet[models]'")):  # fmt: skip
        import_model(*args, framework="sklearn", inputs=[parse_input_decl(X)])
    code, _, err = run(capsys, "model", "import", *args, "--from", "sklearn", "-i", X)
    assert code == 2 and "'skl2onnx', which is not installed: pip install 'p2pnet" in err


def test_the_help_warns_that_sklearn_files_are_unpickled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["model", "import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "runs code from the file" in text and "trust" in text


# --- quantize ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 -> 256 -> 256 -> 10 MLP trained briefly on scikit-learn's digits, as ONNX."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    x = torch.from_numpy((digits.data / 16).astype(np.float32))
    y = torch.from_numpy(digits.target)
    torch.manual_seed(0)
    mlp = _mlp(64, 256, 256, 10).train()
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(mlp(x), y).backward()
        optimizer.step()
    script = root / "digits_mlp.pt"
    torch.jit.save(torch.jit.script(mlp.eval()), str(script))
    out = root / "digits_mlp.onnx"
    import_model(
        script, out, framework="torch", inputs=[parse_input_decl("x:float32:N,64")],
        output_names=["logits"],
    )  # fmt: skip
    return out


@pytest.mark.slow  # trains the MLP first (about 3 s)
def test_quantize_shrinks_the_model_and_keeps_its_answers(
    capsys: pytest.CaptureFixture[str], digits_mlp: Path, tmp_path: Path
) -> None:
    out = tmp_path / "digits_mlp.int8.onnx"
    report = run_json(capsys, "model", "quantize", str(digits_mlp), str(out), "--runs", "20")
    assert report["weight_type"] == "qint8" and report["quantized_weights"] == 3
    before, after = report["before"], report["after"]
    assert before["size"] == digits_mlp.stat().st_size and after["size"] == out.stat().st_size
    assert after["size"] < 0.3 * before["size"]  # float32 -> int8 weights
    assert after["model_id"] == model_id_of_bytes(out.read_bytes()) != before["model_id"]
    assert before["p50_ms"] > 0 and after["p50_ms"] > 0
    (logits,) = report["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [16, 10]
    assert 0 < logits["mean_abs"] <= logits["max_abs"] < 0.5
    assert logits["agreement"] >= 0.9

    # The quantized model keeps the schema it is announced with.
    assert OnnxModel.load(out).info.schema == OnnxModel.load(digits_mlp).info.schema


def test_quantize_prints_a_table(
    capsys: pytest.CaptureFixture[str], digits_mlp: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        capsys, "model", "quantize", str(digits_mlp), str(tmp_path / "q.onnx"), "--runs", "5",
        "--weight-type", "quint8",
    )  # fmt: skip
    assert code == 0, err
    for text in ("quint8 weights", "latency p50 (5 runs)", "same argmax/label", "logits"):
        assert text in out


def test_quantize_refuses_a_model_without_weights_to_quantize(
    capsys: pytest.CaptureFixture[str], sklearn_files: dict[str, Path], tmp_path: Path
) -> None:
    onnx_file = tmp_path / "iris.onnx"
    run_json(capsys, "model", "import", str(sklearn_files["iris"]), str(onnx_file),
             "--from", "sklearn", "-i", X)  # fmt: skip
    code, _, err = run(capsys, "model", "quantize", str(onnx_file), str(tmp_path / "q.onnx"))
    assert code == 2 and "no weights that dynamic int8 quantization applies to" in err
    assert not (tmp_path / "q.onnx").exists()
    code, _, err = run(capsys, "model", "quantize", str(onnx_file), str(tmp_path / "q.onnx"),
                       "--runs", "0")  # fmt: skip
    assert code == 2 and "--runs must be at least 1" in err


# --- the pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("x:float32:N,4", TensorSpec("x", "float32", ("N", 4))),
        ("ids:int64:[batch, seq]", TensorSpec("ids", "int64", ("batch", "seq"))),
        ("text:string:?", TensorSpec("text", "string", (None,))),
        ("t:float64:", TensorSpec("t", "float64", ())),
    ],
)
def test_parse_input_decl(spec: str, expected: TensorSpec) -> None:
    assert parse_input_decl(spec) == expected


@pytest.mark.parametrize("spec", ["x", "x:float32:N:4", ":float32:N", "x:float32:N,-1", "x:f:N"])
def test_parse_input_decl_refuses(spec: str) -> None:
    with pytest.raises(UsageError, match=r"--input"):
        parse_input_decl(spec)


def test_sample_inputs_follow_the_schema_and_the_seed() -> None:
    specs = [
        TensorSpec("x", "float32", ("N", 3)),
        TensorSpec("ids", "int64", ("N", None)),
        TensorSpec("text", "string", ("N",)),
        TensorSpec("mask", "bool", (2,)),
    ]
    a = sample_inputs(specs, seed=5, dynamic_size=4)
    b = sample_inputs(specs, seed=5, dynamic_size=4)
    assert {k: v.shape for k, v in a.items()} == {
        "x": (4, 3), "ids": (4, 4), "text": (4,), "mask": (2,),
    }  # fmt: skip
    assert a["x"].dtype == np.float32 and a["ids"].dtype == np.int64 and a["mask"].dtype == bool
    assert a["text"].dtype == object and all(isinstance(s, str) for s in a["text"])
    assert 0 <= a["ids"].min() and a["ids"].max() <= 9
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_compare_and_verify_outputs() -> None:
    ref = {"p": np.array([[0.9, 0.1], [0.4, 0.6]]), "label": np.array([0, 1])}
    got = {"p": np.array([[0.8, 0.2], [0.7, 0.3]], np.float32), "label": np.array([0, 0])}
    p, label = compare_outputs(ref, got)
    assert p.max_abs == pytest.approx(0.3) and p.mean_abs == pytest.approx(0.2)
    assert p.agreement == 0.5 and label.agreement == 0.5 and label.max_abs is None
    verdict = verify_outputs(ref, got, tolerance=1e-3)
    assert not verdict.passed and len(verdict.failures) == 2
    assert verify_outputs(ref, ref | {"extra": np.zeros(2)}, 1e-6).unchecked == ("extra",)
    assert percentile_ms([0.001, 0.002, 0.010]) == pytest.approx(2.0)
