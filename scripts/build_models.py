"""Build the small, real example ONNX models that p2pnet's tests, demo and benchmark use.

Every model is built deterministically: the same versions of numpy, scikit-learn,
skl2onnx and onnx give byte-identical files on every run (whatever PYTHONHASHSEED),
so content IDs stay stable. Training data ships with scikit-learn (iris, digits) or
with this repo (scripts/data/sentiment.tsv); nothing is downloaded.

Usage: python scripts/build_models.py [--out DIR]   (default: build/models in the repo)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.datasets import load_digits, load_iris
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SENTIMENT_TSV = REPO_ROOT / "scripts" / "data" / "sentiment.tsv"

OPSET = 17  # default ONNX domain: hand-built graphs use it, skl2onnx uses at most it
ML_OPSET = 3  # ai.onnx.ml: at most this for skl2onnx
IR_VERSION = 8  # the IR version that goes with opset 17
PRODUCER = "p2pnet-build_models"
SEED = 0
TEST_SIZE = 0.2

# (x_train, x_test, y_train, y_test)
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    """The fixed, stratified 80/20 train/held-out split used by every trained model."""
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def iris_data() -> Split:
    """Iris (150 x 4 float32 features, 3 classes), split 80/20."""
    data = load_iris()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64))


def digits_data() -> Split:
    """8x8 handwritten digits (1797 x 64 float32 pixels in 0..16, 10 classes), split 80/20."""
    data = load_digits()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64))


def sentiment_data() -> Split:
    """The repo's hand-written product/customer-service corpus (object arrays), split 80/20."""
    with SENTIMENT_TSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts = np.array([r["text"] for r in rows], dtype=object)
    labels = np.array([r["label"] for r in rows], dtype=object)
    return _split(texts, labels)


def _finish(model: onnx.ModelProto, builder: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """Pin every field that could vary between runs or library versions, then check the model.

    The graph is named after the model; doc_string is the first line of the builder's
    docstring (so editing the rest of a docstring does not change the model's bytes).
    """
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER
    model.producer_version = "1"
    model.domain = "p2pnet.examples"
    model.model_version = 1
    model.doc_string = (builder.__doc__ or "").strip().splitlines()[0]
    model.graph.name = builder.__name__.removeprefix("build_")
    del model.metadata_props[:]
    # skl2onnx lists opset domains in set order (which follows PYTHONHASHSEED), and for
    # classifiers lists ("", 17) twice: keep one entry per domain, sorted.
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    onnx.checker.check_model(model, full_check=True)
    return model


def _convert(
    estimator: Any, inputs: list[tuple[str, Any]], options: dict[int, Any]
) -> onnx.ModelProto:
    model: onnx.ModelProto = convert_sklearn(
        estimator,
        name="model",  # the default is a random uuid; _finish renames the graph anyway
        initial_types=inputs,
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options=options,
    )
    return model


def build_iris() -> onnx.ModelProto:
    """iris: LogisticRegression on iris; x float32 [N,4] -> label int64 [N], probabilities [N,3].

    The smallest realistic tabular classifier: the default model for demos and tests.
    """
    x_train, _, y_train, _ = iris_data()
    clf = LogisticRegression(max_iter=1000, random_state=SEED).fit(x_train, y_train)
    inputs = [("x", FloatTensorType([None, 4]))]
    return _finish(_convert(clf, inputs, {id(clf): {"zipmap": False}}), build_iris)


def build_digits() -> onnx.ModelProto:
    """digits: scaled LogisticRegression; x float32 [N,64] -> label int64 [N], probabilities [N,10].

    StandardScaler + LogisticRegression on scikit-learn's bundled 8x8 digits; x holds raw
    pixels (0..16). A slightly larger tabular model (about 5 KB) with 10 classes and a
    preprocessing step.
    """
    x_train, _, y_train, _ = digits_data()
    clf = LogisticRegression(max_iter=2000, random_state=SEED)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", clf)]).fit(x_train, y_train)
    inputs = [("x", FloatTensorType([None, 64]))]
    return _finish(_convert(pipe, inputs, {id(clf): {"zipmap": False}}), build_digits)


def build_sentiment() -> onnx.ModelProto:
    """sentiment: TF-IDF + LogisticRegression; text string [N] -> label string [N], probs [N,2].

    Trained on scripts/data/sentiment.tsv. label is "positive" or "negative"; the
    probability columns are in class order (negative, positive). The example of a model
    with string tensors in and out.

    Choices that keep onnxruntime's output equal to scikit-learn's (to ~1e-7):
    word unigrams (they also cross-validate better than 1-2 grams or char n-grams on this
    small corpus); an ASCII token pattern, which sklearn and onnxruntime's re2 tokenizer
    apply identically; no sublinear_tf (skl2onnx silently ignores it). StringNormalizer
    gets locale "C", which always exists: onnxruntime's default, en_US.UTF-8, is missing
    on minimal machines (this one included) and makes the model fail to load.
    """
    x_train, _, y_train, _ = sentiment_data()
    tfidf = TfidfVectorizer(token_pattern=r"[a-z0-9']+")
    clf = LogisticRegression(C=10.0, max_iter=1000, random_state=SEED)
    pipe = Pipeline([("tfidf", tfidf), ("clf", clf)]).fit(list(x_train), list(y_train))
    inputs = [("text", StringTensorType([None]))]
    options = {id(clf): {"zipmap": False}, id(tfidf): {"locale": "C"}}
    return _finish(_convert(pipe, inputs, options), build_sentiment)


def _graph(
    builder: Callable[[], onnx.ModelProto],
    node: onnx.NodeProto,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    """A one-node model at opset OPSET."""
    graph = helper.make_graph([node], "model", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _finish(model, builder)


def _float(name: str, shape: list[str | int | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def build_identity() -> onnx.ModelProto:
    """identity: y = Identity(x); x and y float32 [n]. Does no work: for throughput benchmarks."""
    node = helper.make_node("Identity", ["x"], ["y"])
    return _graph(build_identity, node, [_float("x", ["n"])], [_float("y", ["n"])])


def build_reshape3() -> onnx.ModelProto:
    """reshape3: y = Reshape(x, [3, -1]); x float32 [n] -> y float32 [3, n/3]; fails unless 3 | n.

    Every x that matches the input schema is valid, yet onnxruntime raises at run time
    when n is not a multiple of 3: for testing how model runtime errors are handled.
    """
    shape = numpy_helper.from_array(np.array([3, -1], dtype=np.int64), name="shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    return _graph(build_reshape3, node, [_float("x", ["n"])], [_float("y", [3, None])], [shape])


def build_matmul() -> onnx.ModelProto:
    """matmul: y = a @ a; a and y float32 [n, n]. O(n^3) work: a deliberately slow call.

    For deadline tests. Multithreaded BLAS is fast: on a 2-core machine n=2000 takes
    about 0.1-0.2 s and n=5000 about 1.5 s.
    """
    node = helper.make_node("MatMul", ["a", "a"], ["y"])
    return _graph(build_matmul, node, [_float("a", ["n", "n"])], [_float("y", ["n", "n"])])


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "iris": build_iris,
    "sentiment": build_sentiment,
    "identity": build_identity,
    "reshape3": build_reshape3,
    "matmul": build_matmul,
    "digits": build_digits,
}


def build_all(out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Build every example model into out_dir (created if missing); return name -> path.

    Skips nothing; overwrites.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, pathlib.Path] = {}
    for name, build in BUILDERS.items():
        path = out_dir / f"{name}.onnx"
        path.write_bytes(build().SerializeToString(deterministic=True))
        paths[name] = path
    return paths


def heldout_accuracy(paths: dict[str, pathlib.Path]) -> dict[str, float]:
    """Accuracy of the built iris, digits and sentiment models on their held-out 20%.

    Computed by running the .onnx files in onnxruntime, not the scikit-learn objects.
    """
    sources: dict[str, tuple[Callable[[], Split], str]] = {
        "iris": (iris_data, "x"),
        "digits": (digits_data, "x"),
        "sentiment": (sentiment_data, "text"),
    }
    result: dict[str, float] = {}
    for name, (load, input_name) in sources.items():
        _, x_test, _, y_test = load()
        if x_test.dtype == object:
            x_test = x_test.astype(str)  # onnxruntime takes numpy str arrays for strings
        session = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        label = session.run(["label"], {input_name: x_test})[0]
        result[name] = float(np.mean(label == y_test))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=REPO_ROOT / "build" / "models", help="output directory"
    )
    args = parser.parse_args()
    paths = build_all(args.out)
    for name, path in paths.items():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:12]
        print(f"{name:<10} {path}  {len(data):>6} bytes  sha256:{digest}")
    for name, acc in heldout_accuracy(paths).items():
        print(f"held-out accuracy {name}: {acc:.3f}")


if __name__ == "__main__":
    main()
