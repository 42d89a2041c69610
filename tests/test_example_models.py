"""Tests for scripts/build_models.py: the example ONNX models are deterministic, load, and work."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "build_models.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_models = _load_script()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    paths: dict[str, pathlib.Path] = build_models.build_all(tmp_path_factory.mktemp("models"))
    return paths


def _session(path: pathlib.Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


Signature = tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]


def _io(session: ort.InferenceSession) -> Signature:
    return (
        [(i.name, i.type, i.shape) for i in session.get_inputs()],
        [(o.name, o.type, o.shape) for o in session.get_outputs()],
    )


# What onnxruntime reports for each model: (inputs, outputs) as (name, type, shape).
SIGNATURES: dict[str, Signature] = {
    "iris": (
        [("x", "tensor(float)", [None, 4])],
        [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 3])],
    ),
    "digits": (
        [("x", "tensor(float)", [None, 64])],
        [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 10])],
    ),
    "sentiment": (
        [("text", "tensor(string)", [None])],
        [("label", "tensor(string)", [None]), ("probabilities", "tensor(float)", [None, 2])],
    ),
    "identity": ([("x", "tensor(float)", ["n"])], [("y", "tensor(float)", ["n"])]),
    "reshape3": ([("x", "tensor(float)", ["n"])], [("y", "tensor(float)", [3, None])]),
    "matmul": ([("a", "tensor(float)", ["n", "n"])], [("y", "tensor(float)", ["n", "n"])]),
}


def test_script_imports_only_allowed_modules() -> None:
    allowed = {"numpy", "onnx", "onnxruntime", "sklearn", "skl2onnx"} | sys.stdlib_module_names
    roots: set[str] = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= allowed, roots - allowed


def test_build_all_returns_every_model(models: dict[str, pathlib.Path]) -> None:
    assert set(models) == set(SIGNATURES)
    for name, path in models.items():
        assert path.name == f"{name}.onnx" and path.stat().st_size > 0


@pytest.mark.slow
def test_builds_are_byte_identical(models: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    again = build_models.build_all(tmp_path / "again")
    # Also through the CLI in a fresh interpreter with another hash seed: skl2onnx iterates sets.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cli = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "cli")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "held-out accuracy sentiment" in cli.stdout
    for name, path in models.items():
        assert again[name].read_bytes() == path.read_bytes(), name
        assert (tmp_path / "cli" / f"{name}.onnx").read_bytes() == path.read_bytes(), name


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(models: dict[str, pathlib.Path], name: str) -> None:
    assert _io(_session(models[name])) == SIGNATURES[name]


@pytest.mark.parametrize(("name", "n_features", "n_classes"), [("iris", 4, 3), ("digits", 64, 10)])
def test_tabular_classifiers_are_accurate(
    models: dict[str, pathlib.Path], name: str, n_features: int, n_classes: int
) -> None:
    x_train, x_test, y_train, y_test = getattr(build_models, f"{name}_data")()
    x = np.concatenate([x_train, x_test])
    y = np.concatenate([y_train, y_test])
    assert x.dtype == np.float32 and x.shape[1] == n_features
    label, proba = _session(models[name]).run(None, {"x": x})
    assert label.dtype == np.int64 and label.shape == (len(x),)
    assert proba.dtype == np.float32 and proba.shape == (len(x), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(label, proba.argmax(axis=1))
    assert np.mean(label == y) > 0.9


def test_heldout_accuracy(models: dict[str, pathlib.Path]) -> None:
    acc = build_models.heldout_accuracy(models)
    assert acc["iris"] > 0.9 and acc["digits"] > 0.9 and acc["sentiment"] > 0.7, acc


def test_sentiment_classifies_obvious_sentences(models: dict[str, pathlib.Path]) -> None:
    cases = {
        "I love it, works great": "positive",
        "Fantastic product, really happy with it!": "positive",
        "The support team was friendly and fixed it quickly": "positive",
        "broken on arrival, terrible": "negative",
        "Awful quality, it stopped working after a day": "negative",
        "DO NOT BUY. Worst customer service ever.": "negative",
    }
    text = np.array(list(cases))
    label, proba = _session(models["sentiment"]).run(None, {"text": text})
    assert label.tolist() == list(cases.values())
    assert proba.dtype == np.float32 and proba.shape == (len(cases), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_sentiment_training_data_is_balanced() -> None:
    _, _, y_train, y_test = build_models.sentiment_data()
    labels = np.concatenate([y_train, y_test])
    assert 150 <= len(labels) <= 300
    assert set(labels) == {"positive", "negative"}
    assert np.sum(labels == "positive") == np.sum(labels == "negative")


def test_identity_returns_input(models: dict[str, pathlib.Path]) -> None:
    session = _session(models["identity"])
    for n in (0, 1, 1000):
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert y.dtype == np.float32 and np.array_equal(y, x)


def test_reshape3_fails_at_run_time_unless_3_divides_n(models: dict[str, pathlib.Path]) -> None:
    session = _session(models["reshape3"])
    (y,) = session.run(None, {"x": np.arange(6, dtype=np.float32)})
    assert np.array_equal(y, np.arange(6, dtype=np.float32).reshape(3, 2))
    with pytest.raises(Exception, match="cannot be reshaped"):
        session.run(None, {"x": np.arange(4, dtype=np.float32)})


def test_matmul_squares_its_input(models: dict[str, pathlib.Path]) -> None:
    a = np.random.default_rng(0).standard_normal((50, 50)).astype(np.float32)
    (y,) = _session(models["matmul"]).run(None, {"a": a})
    np.testing.assert_allclose(y, a @ a, rtol=1e-4, atol=1e-4)
