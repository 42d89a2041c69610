"""Pipeline specs: parsing, static checks, schema checks and the forward plan (pure)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.pipeline import (
    Ref,
    check_schemas,
    forward_plan,
    parse_pipeline,
    parse_tensor_type,
)
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import PipelineSpecError, SchemaMismatchError, UsageError
from p2pnet.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
MODEL = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"

SPEC: dict[str, Any] = {
    "pipeline": "support",
    "inputs": {"text": "string[N]"},
    "steps": {
        "reply": {
            "task": "reply-generation",
            "inputs": {"emotion": "emotion.label", "answer": "retrieve.answer"},
            "deadline": 5,
        },
        "emotion": {"task": "emotion-analysis", "inputs": {"text": "input.text"}},
        "retrieve": {"task": "kb-retrieval", "inputs": {"text": "input.text"}, "failover": 2},
    },
    "outputs": {"reply": "reply.reply", "emotion": "emotion.label"},
}


def s(name: str, dtype: str, *shape: int | str | None) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


SCHEMAS = {
    "emotion": ModelSchema(
        (s("text", "string", "N"),), (s("label", "string", "N"), s("scores", "float32", "N", 5))
    ),
    "retrieve": ModelSchema(
        (s("text", "string", "N"),), (s("answer", "string", "N"), s("article", "string", "N"))
    ),
    "reply": ModelSchema(
        (s("emotion", "string", "N"), s("answer", "string", "N")), (s("reply", "string", "N"),)
    ),
}


def spec_with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for p in parents:
            target = target[p]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return doc


def test_parse_orders_steps_after_their_inputs() -> None:
    spec = parse_pipeline(SPEC)
    assert [step.name for step in spec.steps] == ["emotion", "retrieve", "reply"]
    reply = spec.step("reply")
    assert reply.inputs == {"emotion": Ref("emotion", "label"), "answer": Ref("retrieve", "answer")}
    assert reply.deadline == 5.0 and reply.failover == 3
    assert spec.step("retrieve").failover == 2
    assert spec.inputs["text"] == TensorSpec("text", "string", ("N",))
    assert spec.outputs == {"reply": Ref("reply", "reply"), "emotion": Ref("emotion", "label")}


def test_the_example_file_parses() -> None:
    pipeline = Pipeline.from_file(REPO / "examples" / "customer_service.yaml")
    assert pipeline.spec.name == "customer-service"
    assert [s.name for s in pipeline.spec.steps] == ["emotion", "retrieve", "reply", "route"]
    # docs/pipelines.md shows the file as it is.
    example = (REPO / "examples" / "customer_service.yaml").read_text()
    assert example in (REPO / "docs" / "pipelines.md").read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps__reply__inputs__answer": "retrieval.answer"}, "unknown step 'retrieval'"),
        ({"steps__emotion__inputs__text": "input.body"}, "pipeline's inputs are text"),
        ({"outputs__reply": "nowhere.reply"}, "output 'reply' refers to unknown step"),
        ({"steps__emotion__task": None}, "exactly one of task and model"),
        ({"steps__emotion__model": MODEL}, "exactly one of task and model"),
        ({"steps__emotion__task": "Emotion Analysis"}, "is not a task tag"),
        ({"steps__emotion__deadline": 0}, "deadline must be seconds"),
        ({"steps__emotion__deadline": "5s"}, "deadline must be seconds"),
        ({"steps__emotion__failover": 0}, "failover is how many providers"),
        ({"steps__emotion__retries": 2}, "unknown field 'retries' in step 'emotion'"),
        ({"stepz": {}}, "unknown field 'stepz' in the pipeline"),
        ({"steps__emotion__inputs__text": "text"}, "is not a reference"),
        ({"inputs": None}, "inputs must list"),
        ({"inputs__text": "strin[N]"}, "unknown dtype 'strin'"),
        ({"outputs": {}}, "outputs must be a non-empty mapping"),
        ({"steps": {}}, "steps must be a non-empty mapping"),
        ({"steps__input": {"task": "x", "inputs": {"a": "input.text"}}}, "not be 'input'"),
    ],
)
def test_static_errors_name_the_problem(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec_with(**changes))


def test_a_model_step_needs_a_model_id() -> None:
    doc = spec_with(steps__emotion__task=None, steps__emotion__model="not-a-cid")
    with pytest.raises(PipelineSpecError, match="step 'emotion'"):
        parse_pipeline(doc)
    doc = spec_with(steps__emotion__task=None, steps__emotion__model=MODEL)
    assert parse_pipeline(doc).step("emotion").model == MODEL


def test_cycles_are_named() -> None:
    doc = spec_with(steps__emotion__inputs__text="reply.reply")
    with pytest.raises(PipelineSpecError, match="cycle: reply -> emotion -> reply"):
        parse_pipeline(doc)
    doc = spec_with(steps__emotion__inputs__text="emotion.label")
    with pytest.raises(PipelineSpecError, match="cycle: emotion -> emotion"):
        parse_pipeline(doc)


def test_spec_errors_are_the_callers_fault() -> None:
    assert issubclass(SchemaMismatchError, PipelineSpecError)
    assert issubclass(PipelineSpecError, UsageError)


def test_matching_schemas_pass() -> None:
    check_schemas(parse_pipeline(SPEC), SCHEMAS)


@pytest.mark.parametrize(
    ("step", "schema", "message"),
    [
        (
            "reply",
            ModelSchema((s("emotion", "float32", "N"), s("answer", "string", "N")), ()),
            r"emotion.label -> reply.emotion: string does not fit emotion: float32\[N\]",
        ),
        (
            "reply",
            ModelSchema((s("emotion", "string", "N", 1), s("answer", "string", "N")), ()),
            "rank 1 does not fit",
        ),
        (
            "reply",
            ModelSchema((s("answer", "string", "N"),), (s("reply", "string", "N"),)),
            "feeds 'emotion', which its model",
        ),
        (
            "reply",
            ModelSchema(
                (s("emotion", "string", "N"), s("answer", "string", "N"), s("k", "int64")),
                (s("reply", "string", "N"),),
            ),
            r"does not feed input k: int64\[\]",
        ),
        (
            "emotion",
            ModelSchema((s("text", "string", "N"),), (s("labels", "string", "N"),)),
            "emotion.label does not exist",
        ),
        (
            "emotion",
            ModelSchema((s("text", "string", 3),), (s("label", "string", "N"),)),
            None,  # a fixed size fed from a symbolic one is checked when it runs
        ),
    ],
)
def test_schema_mismatches(step: str, schema: ModelSchema, message: str | None) -> None:
    schemas = {**SCHEMAS, step: schema}
    if message is None:
        check_schemas(parse_pipeline(SPEC), schemas)
        return
    with pytest.raises(SchemaMismatchError, match=message):
        check_schemas(parse_pipeline(SPEC), schemas)


def test_fixed_sizes_must_agree() -> None:
    doc = spec_with(inputs__text="string[2]")
    schemas = {
        **SCHEMAS,
        "emotion": ModelSchema((s("text", "string", 3),), SCHEMAS["emotion"].outputs),
    }
    with pytest.raises(SchemaMismatchError, match="size 2 on axis 0 does not fit"):
        check_schemas(parse_pipeline(doc), schemas)


def test_forward_plan_carries_only_what_later_steps_need() -> None:
    spec = parse_pipeline(spec_with(outputs__text="input.text"))
    assert [st.name for st in spec.steps] == ["emotion", "retrieve", "reply"]
    assert forward_plan(spec) == [
        ("emotion.label", "input.text"),  # retrieve still needs the text
        ("emotion.label", "input.text", "retrieve.answer"),
        ("emotion.label", "input.text", "reply.reply"),  # what the pipeline returns
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("float32[N, 4]", ("float32", ("N", 4))),
        ("string[]", ("string", ())),
        (" int64 [ ?, 3 ] ", ("int64", (None, 3))),
    ],
)
def test_tensor_types(text: str, expected: tuple[str, tuple[Any, ...]]) -> None:
    spec = parse_tensor_type(text, "x")
    assert (spec.dtype, spec.shape) == expected


@pytest.mark.parametrize("text", ["float32", "float32[N,", "complex64[2]", "float32[2x]"])
def test_bad_tensor_types(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tensor_type(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_document_is_a_spec_or_a_spec_error(doc: object) -> None:
    try:
        parse_pipeline(doc)
    except PipelineSpecError:
        pass


def test_files_with_duplicate_steps_or_bad_yaml_are_refused(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "inputs: {x: null}\nsteps:\n  a: {task: t, inputs: {x: input.x}}\n"
        "  a: {task: u, inputs: {x: input.x}}\noutputs: {y: a.y}\n"
    )
    with pytest.raises(PipelineSpecError, match="duplicate key 'a'"):
        Pipeline.from_file(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed\n")
    with pytest.raises(PipelineSpecError, match="not valid YAML"):
        Pipeline.from_file(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(PipelineSpecError, match="not valid YAML"):
        Pipeline.from_file(unsafe)
    with pytest.raises(PipelineSpecError, match="cannot read pipeline"):
        Pipeline.from_file(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(PipelineSpecError, match="over 1048576 bytes"):
        Pipeline.from_file(big)
