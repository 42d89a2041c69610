"""The OpenAI-style chat API of a peer's HTTP app (p2pnet/gateway/openai.py), called with
the ``openai`` Python client unchanged: models listed, replies whole and streamed, stop
strings, errors in OpenAI's shape, a client that goes away mid-stream.

One swarm serves every test of the module: a provider of the SmolLM2 chat model (task
"chat") and a caller that serves its HTTP app on 127.0.0.1, both in a trio loop on a
thread of their own; the clients, which are synchronous, call it from the test's thread.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import openai
import pytest
import trio
from hypothesis import strategies as st
from memory_peers import memory_peer
from openai.types.chat import ChatCompletionMessageParam

from p2pnet.core.records import CapabilityRecord
from p2pnet.gateway.app import serve_http
from p2pnet.gateway.openai import (
    MAX_CHAT_BODY,
    OpenAIError,
    generative_models,
    parse_chat_request,
)
from p2pnet.invoke.server import ServerStats
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.generative import GenerativeModel

TOKEN = "chat-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "List five colours, one per line."}
]


@dataclass(frozen=True)
class Swarm:
    url: str
    model_id: str
    stats: ServerStats  # the provider's invoke server counters
    trio_token: trio.lowlevel.TrioToken
    record: CapabilityRecord  # the provider's record of the chat model
    caller_id: str


@pytest.fixture(scope="module")
def swarm(dialogue_models: dict[str, Path]) -> Iterator[Swarm]:
    started: queue.Queue[Swarm | BaseException] = queue.Queue()
    stop = threading.Event()

    async def run() -> None:
        async with MemoryNetwork(seed=3) as network, memory_peer(network) as caller:
            provider = memory_peer(network, bootstrap=[caller.addrs[0]])
            info = provider.serve(GenerativeModel(dialogue_models["smollm2-chat"]), tasks=["chat"])
            async with provider, trio.open_nursery() as nursery:
                await provider.announce()
                # The caller sees the provider's record (as it would after any search).
                assert await caller.find(task="chat")
                url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
                stats = provider.services.invoke_server.stats
                token = trio.lowlevel.current_trio_token()
                record = provider.known_records()[0]
                started.put(Swarm(url, info.model_id, stats, token, record, caller.peer_id))
                await trio.to_thread.run_sync(stop.wait)
                nursery.cancel_scope.cancel()

    def main() -> None:
        try:
            trio.run(run)
        except BaseException as exc:  # reported to the fixture, which raises it
            started.put(exc)

    thread = threading.Thread(target=main, name="swarm")
    thread.start()
    first = started.get(timeout=60)
    try:
        if isinstance(first, BaseException):
            raise first
        yield first
    finally:
        stop.set()
        thread.join(timeout=30)
    if not started.empty():
        failed = started.get()
        assert not isinstance(failed, BaseException), failed


def client(swarm: Swarm, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=swarm.url + "/v1", api_key=token, max_retries=0, timeout=60)


@pytest.mark.network
@pytest.mark.slow
def test_models_are_listed_by_task_and_by_model_id(swarm: Swarm) -> None:
    models = client(swarm).models.list()
    ids = [m.id for m in models.data]
    assert ids == ["chat", swarm.model_id]
    assert all(m.object == "model" and m.owned_by == "p2pnet" for m in models.data)
    assert client(swarm).models.retrieve(swarm.model_id).id == swarm.model_id
    with pytest.raises(openai.NotFoundError) as missing:
        client(swarm).models.retrieve("sentiment-analysis")
    assert missing.value.code == "model_not_found"


@pytest.mark.network
@pytest.mark.slow
def test_the_list_holds_generative_models_only(swarm: Swarm) -> None:
    """What ``/v1/chat/completions`` can reach: generative models, the peer's own too."""
    record = swarm.record
    assert generative_models([dataclasses.replace(record, generation=None)]) == []
    other = dataclasses.replace(record, peer_id=swarm.caller_id, tasks=("chat", "story"))
    listed = generative_models([record, other])
    assert [m["id"] for m in listed] == ["chat", "story", swarm.model_id]


@pytest.mark.network
@pytest.mark.slow
def test_a_streamed_reply_joins_to_the_whole_reply(swarm: Swarm) -> None:
    chat = client(swarm).chat.completions
    whole = chat.create(model="chat", messages=QUESTION, max_tokens=8, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert whole.model == swarm.model_id and whole.object == "chat.completion"
    assert whole.usage is not None and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    if choice.finish_reason == "length":
        assert whole.usage.completion_tokens == 8
    else:
        assert choice.finish_reason == "stop" and whole.usage.completion_tokens < 8

    chunks = list(
        chat.create(
            model=swarm.model_id,  # by model ID this time
            messages=QUESTION,
            max_completion_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == choice.finish_reason and not any(finish[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


@pytest.mark.network
@pytest.mark.slow
def test_a_reply_ends_before_a_stop_string(swarm: Swarm) -> None:
    chat = client(swarm).chat.completions
    text = chat.create(model="chat", messages=QUESTION, max_tokens=8).choices[0].message.content
    assert text is not None and len(text) > 8
    stop = text[len(text) // 2 :][:3]
    stopped = chat.create(model="chat", messages=QUESTION, max_tokens=8, stop=["\u2603", stop])
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.network
@pytest.mark.slow
def test_the_events_are_openais_and_a_client_that_leaves_stops_the_provider(
    swarm: Swarm,
) -> None:
    """Raw server-sent events: ``data: {...}`` blocks, then ``data: [DONE]``; and a
    client that closes a long reply after its first words cancels it on the provider."""
    request = {"model": "chat", "messages": QUESTION, "max_tokens": 3, "stream": True}
    with httpx.Client(base_url=swarm.url, headers=AUTH, timeout=60) as http:
        reply = http.post("/v1/chat/completions", json=request)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = reply.text.split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        assert all(e.startswith("data: {") for e in events[:-2])
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1]["choices"][0]["delta"] == {}
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)

        story: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Write a long story about a fox and a lost key."}
        ]
        cancelled, tokens = swarm.stats.cancelled, swarm.stats.tokens
        long = {"model": "chat", "messages": story, "max_tokens": 400, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=long) as streamed:
            for line in streamed.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the first words arrived; now go away

    async def provider_cancelled() -> None:
        with trio.fail_after(20):
            while swarm.stats.cancelled == cancelled:
                await trio.sleep(0.01)

    trio.from_thread.run(provider_cancelled, trio_token=swarm.trio_token)
    assert swarm.stats.tokens - tokens < 400


@pytest.mark.network
@pytest.mark.slow
def test_unknown_models_unsupported_parameters_and_a_wrong_token(swarm: Swarm) -> None:
    chat = client(swarm).chat.completions
    with pytest.raises(openai.NotFoundError) as missing:
        chat.create(model="no-such-task", messages=QUESTION, max_tokens=2)
    assert missing.value.code == "model_not_found"
    for extra, param in (
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"mirostat": 2}, "mirostat"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            chat.create(model="chat", messages=QUESTION, max_tokens=2, extra_body=extra)
        assert refused.value.param == param, extra
        body: Any = refused.value.body
        assert body["type"] == "invalid_request_error" and body["message"]
    with pytest.raises(openai.AuthenticationError):
        client(swarm, "wrong-token").chat.completions.create(model="chat", messages=QUESTION)
    # The peer serves on.
    assert chat.create(model="chat", messages=QUESTION, max_tokens=1).choices[0].message.content


@pytest.mark.network
@pytest.mark.slow
def test_bodies_over_the_limit_and_malformed_json_are_refused(swarm: Swarm) -> None:
    with httpx.Client(base_url=swarm.url, headers=AUTH, timeout=60) as http:
        huge = http.post("/v1/chat/completions", content=b"{" + b" " * MAX_CHAT_BODY + b"}")
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "payload_too_large"
        for body, code in ((b"{", "invalid_json"), (b"[]", "invalid_json")):
            refused = http.post("/v1/chat/completions", content=body)
            assert refused.status_code == 400, body
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", code)
        assert http.get("/v1/models").status_code == 200  # the peer serves on


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": QUESTION}, "model", "missing_required_parameter"),
        ({"model": "chat"}, "messages", "missing_required_parameter"),
        ({"model": "chat", "messages": []}, "messages", "invalid_type"),
        (
            {"model": "chat", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
            "unsupported_value",
        ),
        (
            {"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"model": "chat", "messages": [{"role": "user", "content": "x", "name": "ann"}]},
            "messages[0].name",
            "unsupported_parameter",
        ),
        ({"model": "chat", "messages": QUESTION, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "chat", "messages": QUESTION, "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "chat", "messages": QUESTION, "top_p": 0}, "top_p", "invalid_value"),
        ({"model": "chat", "messages": QUESTION, "stop": 5}, "stop", "invalid_type"),
        ({"model": "chat", "messages": QUESTION, "stop": ["x"] * 9}, "stop", "invalid_value"),
        (
            {"model": "chat", "messages": QUESTION, "stream_options": {"include_usage": True}},
            "stream_options",
            "invalid_value",
        ),
        (
            {"model": "chat", "messages": QUESTION, "presence_penalty": 0.5},
            "presence_penalty",
            "unsupported_parameter",
        ),
    ],
)
def test_requests_are_refused_naming_the_parameter(
    body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(OpenAIError) as refused:
        parse_chat_request(body)
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)


def test_text_parts_defaults_and_the_model_name() -> None:
    chat = parse_chat_request(
        {
            "model": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "stop": "\n",
            "n": 1,
            "logprobs": False,
            "frequency_penalty": 0,
            "user": "someone",
        }
    )
    assert chat.messages == (("system", "Be brief."), ("user", "Hi there"))
    assert chat.params.stop == ("\n",) and chat.params.temperature == 0
    assert (chat.task, chat.model_id, chat.stream) == ("chat", None, False)
    model_id = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
    by_id = parse_chat_request({"model": model_id, "messages": QUESTION})
    assert (by_id.task, by_id.model_id) == (None, model_id)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": JSON | st.text()}
)
KEYS = [
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "response_format",
    "logprobs",
    "tools",
    "user",
    "other",
]


@hypothesis.settings(max_examples=300, derandomize=True)
@hypothesis.given(
    st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6),
    st.sampled_from(["chat", 7, None]),
    st.lists(MESSAGE, max_size=3) | JSON,
)
def test_any_request_is_taken_or_refused_with_a_400(
    body: dict[str, Any], model: object, messages: object
) -> None:
    try:
        chat = parse_chat_request({**body, "model": model, "messages": messages})
    except OpenAIError as exc:
        assert exc.status == 400 and exc.message and exc.code
        assert exc.param is None or exc.param.split("[")[0].split(".")[0] in [*KEYS, "messages"]
    else:
        assert chat.model == "chat" and chat.messages
