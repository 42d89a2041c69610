"""`p2pnet model import --from tensorflow`: a small Keras model saved as .keras, .h5 and a
SavedModel, converted with tf2onnx, checked against TensorFlow's own outputs, then served
by a peer and called over the network; and the precise errors of the ways it can fail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from memory_peers import BOTH_HOSTS, peer_maker
from test_model_tools import run, run_json  # the CLI in this process, its output

from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.errors import ModelFileError, UsageError
from p2pnet.modeltools import import_model, parse_input_decl
from p2pnet.runtime.onnx_model import OnnxModel

MISSING = "TensorFlow is not installed (the tensorflow extra: pip install 'p2pnet[tensorflow]')"
# Keras 3.15 saving a model under numpy 2.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

TASK = "tf-flower-species"


def fresh_rows(seed: int, rows: int = 7) -> Any:
    """Inputs no check has used: another seed, another batch size."""
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def tf() -> ModuleType:
    """TensorFlow, imported by the tests that need it only (a test run that does not
    collects this file without loading it): the import takes seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ INFO and WARNING lines
    tensorflow: ModuleType = pytest.importorskip("tensorflow", reason=MISSING)
    pytest.importorskip("tf2onnx", reason=MISSING)
    return tensorflow


def failing_saved_models(tf: ModuleType, root: Path) -> dict[str, Path]:
    """SavedModels that cannot be imported: one with an op tf2onnx has no conversion
    for, one whose outputs no two runs agree on, one without a serving signature."""

    class Lgamma(tf.Module):  # type: ignore[misc, name-defined]
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": tf.math.lgamma(x)}

    class Noisy(tf.Module):  # type: ignore[misc, name-defined]
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": x + tf.random.uniform(tf.shape(x))}  # converts: RandomUniformLike

    class Unsigned(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function
        def scaled(self, x: Any) -> Any:
            return x * self.scale

    paths = {name: root / name for name in ("lgamma", "noisy", "unsigned")}
    for name, module in (("lgamma", Lgamma()), ("noisy", Noisy())):
        tf.saved_model.save(module, str(paths[name]), signatures={"serving_default": module.serve})
    unsigned = Unsigned()
    unsigned.scaled(tf.zeros([2]))
    tf.saved_model.save(unsigned, str(paths["unsigned"]))
    return paths


@pytest.fixture(scope="module")
def tf_files(tf: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded Keras classifier (float32 [N, 4] -> softmax [N, 3]) as .keras, .h5 and a
    SavedModel (model.export); a subclassed Keras model; files that are no model; and
    SavedModels that fail (failing_saved_models)."""
    keras = tf.keras
    root = tmp_path_factory.mktemp("tensorflow")
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(x)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(x, probabilities)
    files = {
        "keras": root / "flowers.keras",
        "h5": root / "flowers.h5",
        "saved": root / "flowers_saved",
        "subclassed": root / "doubler.keras",
        "not_keras": root / "notes.keras",
        "no_saved_model": root / "empty_dir",
    }
    model.save(files["keras"])
    model.save(files["h5"])
    model.export(str(files["saved"]), verbose=False)

    @keras.utils.register_keras_serializable(package="p2pnet_tests")
    class Doubler(keras.Model):  # type: ignore[misc, name-defined]
        """A subclassed model: Keras keeps no input signature for it."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, x: Any) -> Any:
            return self.dense(x) * 2.0

    doubler = Doubler()
    doubler(np.zeros((1, 4), np.float32))
    doubler.save(files["subclassed"])
    files["not_keras"].write_text("not a zip archive")
    files["no_saved_model"].mkdir()
    return files | failing_saved_models(tf, root)


def keras_outputs(tf: ModuleType, path: Path, x: Any) -> Any:
    return tf.keras.models.load_model(path)(x, training=False).numpy()


def serving_outputs(tf: ModuleType, path: Path, x: Any) -> dict[str, Any]:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(x=tf.constant(x)).items()}


# --- import --------------------------------------------------------------------------------


def test_a_keras_file_takes_its_input_signature_and_runs_like_keras(
    tf: ModuleType, tf_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "flowers.onnx"
    report = import_model(tf_files["keras"], out, framework="tensorflow", inputs=[])
    assert report.framework == "tensorflow" and report.source_kind == "Keras Functional model"
    assert report.exporter.startswith("tf2onnx 1.17") and "TensorFlow 2." in report.exporter
    schema = report.info.schema
    assert [(t.name, t.dtype, t.shape) for t in schema.inputs] == [("x", "float32", ("N", 4))]
    assert [(t.name, t.dtype, t.shape) for t in schema.outputs] == [
        ("probabilities", "float32", ("N", 3))
    ]
    assert report.verification.passed and report.verification.max_abs < 1e-5
    assert report.sample_shapes == {"x": (3, 4)}
    assert report.info.model_id == model_id_of_bytes(out.read_bytes())

    x = fresh_rows(11)
    got = OnnxModel.load(out).run_sync({"x": x})["probabilities"]
    np.testing.assert_allclose(got, keras_outputs(tf, tf_files["keras"], x), atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_a_legacy_h5_file_imports_on_the_command_line(
    tf: ModuleType, capsys: pytest.CaptureFixture[str], tf_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "flowers.onnx"
    code, stdout, err = run(
        capsys, "model", "import", str(tf_files["h5"]), str(out), "--from", "tensorflow"
    )
    assert code == 0, err
    assert stdout.startswith(model_id_of_bytes(out.read_bytes()))
    assert "(Keras Functional model) by tf2onnx 1.17" in stdout
    assert "checked against TensorFlow on x [3, 4]" in stdout
    x = fresh_rows(12)
    got = OnnxModel.load(out).run_sync({"x": x})["probabilities"]
    np.testing.assert_allclose(got, keras_outputs(tf, tf_files["h5"], x), atol=1e-5)


def test_a_saved_model_imports_by_its_serving_signature(
    tf: ModuleType, capsys: pytest.CaptureFixture[str], tf_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "flowers_saved.onnx"
    report = run_json(
        capsys, "model", "import", str(tf_files["saved"]), str(out), "--from", "tensorflow",
        "--output", "probabilities",
    )  # fmt: skip
    assert report["source_kind"] == "SavedModel" and report["framework"] == "tensorflow"
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert report["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": ["N", 3]}]
    assert report["check"]["passed"] and report["check"]["max_abs_deviation"] < 1e-5
    x = fresh_rows(13)
    got = OnnxModel.load(out).run_sync({"x": x})["probabilities"]
    want = serving_outputs(tf, tf_files["saved"], x)
    assert list(want) == ["output_0"]  # the signature's own name, without --output
    np.testing.assert_allclose(got, want["output_0"], atol=1e-5)
    # The Keras file and its export are the same model, converted the same.
    np.testing.assert_allclose(got, keras_outputs(tf, tf_files["keras"], x), atol=1e-5)


def test_declared_inputs_override_the_signature(
    tf: ModuleType, capsys: pytest.CaptureFixture[str], tf_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "renamed.onnx"
    report = run_json(
        capsys, "model", "import", str(tf_files["keras"]), str(out), "--from", "tensorflow",
        "-i", "features:float32:batch,4",
    )  # fmt: skip
    assert report["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 4]}]
    assert report["outputs"][0]["shape"] == ["batch", 3]
    x = fresh_rows(14)
    got = OnnxModel.load(out).run_sync({"features": x})["probabilities"]
    np.testing.assert_allclose(got, keras_outputs(tf, tf_files["keras"], x), atol=1e-5)

    # A fixed batch size, declared on the SavedModel's signature input.
    fixed = tmp_path / "fixed.onnx"
    report = run_json(
        capsys, "model", "import", str(tf_files["saved"]), str(fixed), "--from", "tensorflow",
        "-i", "x:float32:2,4",
    )  # fmt: skip
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 4]}]
    assert report["sample_shapes"] == {"x": [2, 4]}


def test_a_subclassed_model_needs_declared_inputs(
    tf: ModuleType, tf_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "doubler.onnx"
    message = r"Keras Doubler model in doubler\.keras declares no inputs"
    with pytest.raises(UsageError, match=message):
        import_model(tf_files["subclassed"], out, framework="tensorflow", inputs=[])
    assert not out.exists()
    report = import_model(
        tf_files["subclassed"], out, framework="tensorflow",
        inputs=[parse_input_decl("x:float32:N,4")],
    )  # fmt: skip
    assert report.source_kind == "Keras Doubler model"
    assert [(t.name, t.shape) for t in report.info.schema.outputs] == [("output", ("N", 3))]
    x = fresh_rows(15)
    got = OnnxModel.load(out).run_sync({"x": x})["output"]
    np.testing.assert_allclose(got, keras_outputs(tf, tf_files["subclassed"], x), atol=1e-5)


def test_several_inputs_and_outputs_keep_their_order_and_names(
    tf: ModuleType, tmp_path: Path
) -> None:
    """Two inputs; eleven list outputs (tf2onnx sorts them by name: output_10 before
    output_2) named after their layers; dict outputs named by their keys."""
    keras = tf.keras
    keras.utils.set_random_seed(1)
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    both = keras.layers.Concatenate()([a, b])
    listed = keras.Model([a, b], [keras.layers.Dense(i + 1, name=f"o{i}")(both) for i in range(11)])
    keyed = keras.Model(
        [a, b],
        {"zeta": keras.layers.Dense(3)(both), "alpha": keras.layers.Dense(1)(both)},
    )
    rng = np.random.default_rng(17)
    x = {"a": rng.standard_normal((5, 4)), "b": rng.standard_normal((5, 2))}
    x = {k: v.astype(np.float32) for k, v in x.items()}
    for name, model in (("listed", listed), ("keyed", keyed)):
        model.save(tmp_path / f"{name}.keras")
        out = tmp_path / f"{name}.onnx"
        report = import_model(tmp_path / f"{name}.keras", out, framework="tensorflow", inputs=[])
        assert [(t.name, t.shape) for t in report.info.schema.inputs] == [
            ("a", ("N", 4)), ("b", ("N", 2)),
        ]  # fmt: skip
        got = OnnxModel.load(out).run_sync(x)
        want = model([x["a"], x["b"]], training=False)
        if name == "listed":
            assert list(got) == [f"o{i}" for i in range(11)]
            for i, tensor in enumerate(want):
                assert got[f"o{i}"].shape == (5, i + 1)
                np.testing.assert_allclose(got[f"o{i}"], tensor.numpy(), atol=1e-5)
        else:
            assert sorted(got) == ["alpha", "zeta"]
            assert got["zeta"].shape == (5, 3) and got["alpha"].shape == (5, 1)
            for key in got:
                np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("not_keras", [], "notes.keras is not a Keras model file that Keras can load"),
        ("no_saved_model", [], "without saved_model.pb: not a TensorFlow SavedModel"),
        ("unsigned", [], "has no serving signature ('serving_default'; it has no signature)"),
        ("lgamma", [], "tf2onnx 1.17.0 cannot convert the TensorFlow op(s) Lgamma in lgamma"),
        ("noisy", [], "the ONNX model does not reproduce noisy's outputs on sample inputs"),
        ("keras", ["-i", "x:float32:N,5"], "does not accept the declared inputs"),
        ("saved", ["-i", "x:int64:N,4"], "does not accept the declared inputs"),
        ("keras", ["-i", "x:float32:N,4", "-i", "y:float32:N,4"], "takes 1 input(s) (x); 2"),
        ("keras", ["--opset", "19"], "tf2onnx 1.17.0 converts to opsets up to 18"),
        ("keras", ["--output", "a", "--output", "b"], "1 output(s) (probabilities); 2 --output"),
    ],
)
def test_import_errors_are_precise_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    tf_files: dict[str, Path],
    tmp_path: Path,
    source: str,
    options: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.onnx"
    argv = ["model", "import", str(tf_files[source]), str(out), "--from", "tensorflow"]
    code, _, err = run(capsys, *argv, *options)
    assert code == 2
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_the_error_for_another_file_says_what_tensorflow_takes(
    tf: ModuleType, tmp_path: Path
) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"\x80\x04not a keras model")
    with pytest.raises(ModelFileError, match=r"Keras loads \.keras, \.h5, \.hdf5 files"):
        import_model(source, tmp_path / "o.onnx", framework="tensorflow", inputs=[])


def test_a_missing_package_names_the_tensorflow_extra(
    tf_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hint = "which is not installed: pip install 'p2pnet[tensorflow]'"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx raises ImportError
        with pytest.raises(UsageError, match=re.escape(f"'tf2onnx', {hint}")):
            import_model(tf_files["keras"], tmp_path / "o.onnx", framework="tensorflow", inputs=[])
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tensorflow", None)
        with pytest.raises(UsageError, match=re.escape(f"'tensorflow', {hint}")):
            import_model(tf_files["saved"], tmp_path / "o.onnx", framework="tensorflow", inputs=[])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a Python process that imports TensorFlow (about 6 s)
def test_the_command_prints_nothing_of_tensorflow(
    tf_files: dict[str, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    out = tmp_path / "flowers.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", "model", "import", str(tf_files["keras"]), str(out),
         "--from", "tensorflow"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no oneDNN notice, absl preamble or Keras warning
    assert done.stdout.startswith(model_id_of_bytes(out.read_bytes()))


# --- served and called ---------------------------------------------------------------------


@pytest.mark.parametrize("hosts", BOTH_HOSTS)
async def test_an_imported_keras_model_is_served_and_called_over_the_network(
    tf: ModuleType, tf_files: dict[str, Path], tmp_path: Path, hosts: str
) -> None:
    onnx_file = tmp_path / "flowers.onnx"
    report = import_model(tf_files["keras"], onnx_file, framework="tensorflow", inputs=[])
    x = fresh_rows(16, rows=5)
    want = keras_outputs(tf, tf_files["keras"], x)
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, hosts)
        options: dict[str, Any] = (
            {"listen": ["/ip4/127.0.0.1/tcp/0"], "nat": None} if hosts == "libp2p" else {}
        )
        caller = await stack.enter_async_context(new_peer(**options))
        server = await stack.enter_async_context(new_peer(bootstrap=[caller.addrs[0]], **options))
        info = server.serve(onnx_file, tasks=[TASK])
        assert info.model_id == report.info.model_id
        assert await server.announce() > 0

        out = await caller.invoke(server.addrs[0], info.model_id, {"x": x}, timeout=10)
        np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
        (offer,) = await caller.find(task=TASK)
        assert offer.record.model_id == info.model_id
        assert [t.shape for t in offer.record.schema.inputs] == [("N", 4)]
        by_task = await caller.call({"x": x[:2]}, task=TASK)
        np.testing.assert_allclose(by_task["probabilities"], want[:2], atol=1e-5)
