"""``p2pnet chat`` and ``p2pnet call --prompt``: replies of a generative model streamed as
they are generated, as text or JSON events; Ctrl-C cancels a reply, not the chat; the
reply's text reaches the terminal escaped; generation options are checked before
anything is dialled."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from memory_peers import memory_peer
from rich.console import Console
from test_cli import RunningPeer, p2pnet, start_peer, typed_options

from p2pnet.cli import main
from p2pnet.cli.call import CallOptions
from p2pnet.cli.chat import ChatOptions
from p2pnet.cli.options import DiscoveryOptions
from p2pnet.cli.stream import (
    Interrupts,
    JsonReplies,
    ReplyOutput,
    ReplyTiming,
    TextReplies,
    stream_reply,
)
from p2pnet.core.generation import GenerationParams, GenerationSummary
from p2pnet.core.messages import Chunk
from p2pnet.discovery.generation import Replay
from p2pnet.discovery.service import Offer
from p2pnet.errors import PeerBusyError
from p2pnet.net.memory import MemoryNetwork

PEER = "12D3KooWEtJQnzCAiTpqs1bC1qZy9auioRn9RmZsZYtGpjuJZzzi"
BOOTSTRAP = f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"
MODEL_ID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
# Characters a terminal acts on rather than shows (line breaks and tabs aside).
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


# --- options: checked before anything is dialled --------------------------------------------


def test_generation_options_are_typed_once() -> None:
    options = typed_options(
        "chat", "--task", "chat", "--bootstrap", BOOTSTRAP, "--system", "Be brief.",
        "--max-tokens", "64", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "40",
        "--seed", "7", "--stop", "\n\n", "--stop", "User:", "--json",
    )  # fmt: skip
    assert isinstance(options, ChatOptions)
    assert options.system == "Be brief." and options.discovery.json
    assert options.params == GenerationParams(
        max_tokens=64, temperature=0.7, top_k=40, top_p=0.9, seed=7, stop=("\n\n", "User:")
    )
    assert typed_options("chat", "--model", MODEL_ID).params == GenerationParams()

    call = typed_options(
        "call", "--task", "chat", "--message", "system:Be brief: one line.", "--prompt", "Hi",
        "--message", "assistant:Hello!", "--prompt", "Name a colour.", "--max-tokens", "8",
    )  # fmt: skip
    assert isinstance(call, CallOptions) and call.generates
    assert call.messages == (
        ("system", "Be brief: one line."),  # split at the first colon only
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Name a colour."),
    )
    assert call.params.max_tokens == 8
    assert not typed_options("call", "--task", "t", "-i", "prompt=Hi").generates


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--temperature", "20"], "--temperature must be in [0, 10], got 20.0"),
        (["chat", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["chat", "--max-tokens", "0"], "--max-tokens must be in 1..4096, got 0"),
        (["chat", "--top-k", "-1"], "--top-k must be in 0..1048576, got -1"),
        (["chat", "--stop", ""], "--stop: a stop string must be 1..64 characters"),
        (["call", "--prompt", "Hi", "--temperature", "nan"], "--temperature must be in"),
        (["call", "--prompt", "Hi", "-i", "prompt=Hi"], "--input for a call with tensors"),
        (["call", "--prompt", "Hi", "--max-price", "5"], "--max-price: a generation does not"),
        (["call", "--message", "robot:Hi"], "expected ROLE:TEXT with ROLE one of system"),
        (["chat", "--max-price", "5"], "unrecognized arguments: --max-price 5"),
    ],
)
def test_bad_generation_options_are_usage_errors_before_anything_is_dialled(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_peer(*args: object, **kwargs: object) -> None:
        raise AssertionError("a peer was started")

    monkeypatch.setattr(DiscoveryOptions, "joining_peer", no_peer)
    monkeypatch.setattr(DiscoveryOptions, "calling_peer", no_peer)
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--task", "chat", "--bootstrap", BOOTSTRAP])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


# --- rendering: the reply is text, never markup or terminal controls -------------------------


def hostile_offer(text: str) -> Offer:
    record = SimpleNamespace(name=text, model_id=MODEL_ID, peer_id=text, tasks=("chat",))
    return cast(Offer, SimpleNamespace(record=record))


def text_replies() -> tuple[TextReplies, io.StringIO, io.StringIO]:
    """TextReplies writing the reply to one buffer and the notes, as a colour terminal
    gets them, to another."""
    reply, notes = io.StringIO(), io.StringIO()
    console = Console(file=notes, width=20_000, force_terminal=True, color_system="truecolor")
    return TextReplies(reply, console), reply, notes


def without_styles(output: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", output)


def test_a_hostile_reply_cannot_reach_the_terminal_as_controls_or_markup() -> None:
    output, reply, notes = text_replies()
    pieces = ["Sure! \x1b[2J", "[red]boom[/red] [/]", "\x1b]8;;http://evil\x07x", "\r\n", "a\tb\n"]
    pieces += ["\u202eevil\x9b31m", "\rhidden"]
    for text in pieces:
        output.chunk(Chunk(1, text, (1,)))
    output.done(GenerationSummary("eos", 5, 7), ReplyTiming(12.0, 50.0))
    written = reply.getvalue()
    assert not UNSAFE.search(written), repr(UNSAFE.search(written))
    assert written == (
        "Sure! \\x1b[2J[red]boom[/red] [/]\\x1b]8;;http://evil\\x07x\n"  # \r\n: a line break
        "a\tb\n\\u202eevil\\x9b31m\\x0dhidden\n"  # tabs and line breaks kept; ends its line
    )
    assert without_styles(notes.getvalue()) == (
        "eos · 7 tokens · first after 12 ms · 50 tokens/s · prompt 5 tokens\n"
    )


def test_provider_replay_and_error_notes_show_peer_text_escaped() -> None:
    output, reply, notes = text_replies()
    hostile = "[bold red]m\x1b[2J\n\u202e"
    output.provider(hostile_offer(hostile))
    output.chunk(Chunk(1, "partial", (1,)))
    output.replay(Replay(hostile, PEER, "unknown_session: [/] gone\x1b[5m"))
    output.error(PeerBusyError("model [x] busy\x1b[31m", peer=PEER))
    shown = without_styles(notes.getvalue())
    assert not UNSAFE.search(shown), repr(UNSAFE.search(shown))
    lines = shown.splitlines()
    assert lines == [
        f"[bold red]m\\x1b[2J\\x0a\\u202e {MODEL_ID} on [bold red]m\\x1b[2J\\x0a\\u202e",
        "session on [bold red]m\\x1b[2J\\x0a\\u202e lost (unknown_session: [/] gone\\x1b[5m); "
        f"conversation replayed on {PEER}",
        f"error (the other peer's fault): model [x] busy\\x1b[31m (reported by peer {PEER})",
    ]
    assert reply.getvalue() == "partial\n"  # the open line ended before the notes


def test_json_events_hold_the_exact_text() -> None:
    file = io.StringIO()
    output = JsonReplies(file)
    output.chunk(Chunk(3, "\x1b[2J[red]", (27, 58)))
    output.replay(Replay(None, PEER, "busy: full"))
    output.done(GenerationSummary("length", 4, 2, 9, "s1"), ReplyTiming(None, None))
    output.error(PeerBusyError("full", peer=PEER))
    output.interrupted()
    events = [json.loads(line) for line in file.getvalue().splitlines()]
    assert events == [
        {"event": "chunk", "text": "\x1b[2J[red]", "tokens": [27, 58]},
        {"event": "replay", "from_peer": None, "to_peer": PEER, "reason": "busy: full"},
        {
            "event": "done", "finish": "length", "prompt_tokens": 4, "completion_tokens": 2,
            "cached_tokens": 9, "session": "s1", "ttft_ms": None, "tokens_per_s": None,
        },
        {"event": "error", "code": "busy", "message": f"full (reported by peer {PEER})"},
        {"event": "error", "code": "interrupted", "message": "interrupted before the reply ended"},
    ]  # fmt: skip
    assert "\x1b" not in file.getvalue()  # JSON escapes it


@pytest.mark.slow
async def test_a_replayed_session_is_noted_before_the_replys_text(
    dialogue_models: dict[str, Path],
) -> None:
    """The chat's output over a real session on the in-memory network: the provider is
    shown once; when the provider drops the session, the next reply is preceded by one
    note of the replay, and the conversation goes on (there, in a new session)."""
    model_file = dialogue_models["smollm2-chat"]
    async with MemoryNetwork(seed=3) as network:
        provider = memory_peer(network)
        info = provider.serve(model_file, tasks=["chat"])
        async with provider, memory_peer(network, bootstrap=[provider.addrs[0]]) as caller:
            output, reply, notes = text_replies()
            events = io.StringIO()
            both = Both(output, JsonReplies(events))
            interrupts = Interrupts(trio.CancelScope())
            params = GenerationParams(max_tokens=12)
            async with caller.chat(task="chat", timeout=60) as chat:
                shown = None
                for turn, message in enumerate(["Name a colour.", "Another one?", "And a third?"]):
                    if turn == 2:  # the provider drops the session (as when it expires)
                        model = cast(Any, provider.models[info.model_id])
                        assert model.sessions.close(chat.session_id)
                    generation = chat.send(message, params)
                    summary = await stream_reply(generation, both, interrupts, shown=shown)
                    assert summary is not None and summary.completion_tokens > 0
                    shown = generation.offer
    lines = without_styles(notes.getvalue()).splitlines()
    assert len(lines) == 5, lines
    assert lines[0] == f"{info.name} {info.model_id} on {provider.peer_id}"
    assert re.fullmatch(
        f"session on {provider.peer_id} lost \\(unknown_session: .+\\); "
        f"conversation replayed on {provider.peer_id}",
        lines[3],
    ), lines[3]
    assert reply.getvalue().count("\n") >= 3  # each reply ends its line
    kinds = [json.loads(line)["event"] for line in events.getvalue().splitlines()]
    assert kinds.count("provider") == 1 and kinds.count("done") == 3
    replay = kinds.index("replay")
    assert kinds[replay - 1] == "done" and kinds[replay + 1] == "chunk"


class Both:
    """A ReplyOutput that passes every event to two."""

    def __init__(self, *outputs: ReplyOutput) -> None:
        self._outputs = outputs

    def __getattr__(self, name: str) -> Any:
        def each(*args: Any) -> None:
            for output in self._outputs:
                getattr(output, name)(*args)

        return each


# --- the real commands against a peer serving the generative model ---------------------------


@pytest.fixture(scope="module")
def chat_peer(
    dialogue_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPeer]:
    """A `p2pnet peer` serving the chat model for task "chat"; the swarm's only peer, so
    callers bootstrap through it."""
    env = os.environ | {"XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("chat-server"))}
    peer = start_peer(env, "--serve", str(dialogue_models["smollm2-chat"]), "--task", "chat")
    yield peer
    peer.proc.send_signal(signal.SIGINT)
    assert peer.proc.wait(timeout=30) == 0


def chat_model(peer: RunningPeer) -> str:
    """The ID of the one model ``peer`` serves."""
    (model_id,) = peer.models.values()
    return model_id


@pytest.fixture
def env(config_home: Path) -> dict[str, str]:
    return os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200"}


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def turns(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(the reply's text, its done event) per turn, checking each chunk on the way."""
    done: list[tuple[str, dict[str, Any]]] = []
    text, tokens = "", 0
    for event in events:
        if event["event"] == "chunk":
            assert set(event) == {"event", "text", "tokens"}
            assert all(isinstance(t, int) for t in event["tokens"])
            text += event["text"]
            tokens += len(event["tokens"])
        elif event["event"] == "done":
            assert event["completion_tokens"] == tokens  # every token came in a chunk
            done.append((text, event))
            text, tokens = "", 0
    return done


@pytest.mark.slow
def test_chat_keeps_the_session_between_turns(chat_peer: RunningPeer, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", "chat", "--task", "chat", "--bootstrap",
         chat_peer.address, "--json", "--max-tokens", "24", "--timeout", "120",
         "--system", "You answer in one short sentence."],
        input="What is the capital of France?\n\nAnd of Italy?\n",  # a blank line is skipped
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    provider = events[0]
    assert provider["event"] == "provider" and provider["tasks"] == ["chat"]
    assert provider["model_id"] == chat_model(chat_peer)
    assert [e["event"] for e in events].count("provider") == 1  # the same provider throughout
    (first_text, first), (second_text, second) = turns(events)
    assert first_text.strip() and second_text.strip()
    assert "Paris" in first_text
    for done in (first, second):
        assert done["finish"] in {"eos", "length"}
        assert done["ttft_ms"] > 0 and done["completion_tokens"] > 0
    assert first["cached_tokens"] == 0 and first["session"]
    # The second turn sent only its message: the conversation so far was in the cache.
    assert second["session"] == first["session"]
    assert second["cached_tokens"] >= first["prompt_tokens"] + first["completion_tokens"] - 1
    assert second["prompt_tokens"] < first["prompt_tokens"]


@pytest.mark.slow
def test_ctrl_c_cancels_the_reply_and_the_chat_goes_on(
    chat_peer: RunningPeer, env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pnet.cli", "chat", "--task", "chat", "--bootstrap",
         chat_peer.address, "--json", "--max-tokens", "120", "--timeout", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_event() -> dict[str, Any]:
        event: dict[str, Any] = json.loads(lines.get(timeout=120))
        return event

    try:
        proc.stdin.write("Tell me a long story about a dragon and a knight.\n")
        proc.stdin.flush()
        assert next_event()["event"] == "provider"
        for _ in range(3):
            assert next_event()["event"] == "chunk"
        proc.send_signal(signal.SIGINT)
        while (event := next_event())["event"] == "chunk":
            pass
        assert event["event"] == "done" and event["finish"] == "cancelled", event
        assert 3 <= event["completion_tokens"] < 120
        cancelled = event
        proc.stdin.write("Who won?\n")
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = []
    while not lines.empty():
        rest.append(json.loads(lines.get()))
    ((text, done),) = turns(rest)
    assert text.strip() and done["finish"] in {"eos", "length"}
    # The cancelled reply stayed in the conversation and in its cache.
    assert done["session"] == cancelled["session"]
    assert done["cached_tokens"] >= cancelled["prompt_tokens"] + cancelled["completion_tokens"] - 1


@pytest.mark.slow
def test_call_with_a_prompt_streams_chunks_then_done(
    chat_peer: RunningPeer, env: dict[str, str]
) -> None:
    model = chat_model(chat_peer)
    started = time.monotonic()
    result = p2pnet(
        "call", chat_peer.address, model, "--prompt", "Name three colours.", "--json",
        "--max-tokens", "16", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert [e["event"] for e in events[:2]] == ["provider", "chunk"]
    assert events[-1]["event"] == "done" and events[-1]["session"] is None
    assert {e["event"] for e in events[1:-1]} == {"chunk"}
    ((text, done),) = turns(events)
    assert text.strip() and done["finish"] in {"eos", "length"} and done["cached_tokens"] == 0

    # As text, through the swarm: the reply on stdout, who answered and how on stderr.
    result = p2pnet(
        "call", "--task", "chat", "--bootstrap", chat_peer.address, "--prompt",
        "Name three colours.", "--max-tokens", "16", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + ("" if text.endswith("\n") else "\n")  # greedy: the same
    served_by = f"{events[0]['name']} {model} on {chat_peer.address.rsplit('/', 1)[-1]}"
    assert served_by in result.stderr
    assert f"{done['finish']} · {done['completion_tokens']} tokens · first after" in result.stderr

    # The model's tensor view answers a plain tensor call, not streamed.
    result = p2pnet(
        "call", chat_peer.address, model, "-i", "prompt=Name three colours.", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    (reply,) = json.loads(result.stdout)["text"]["data"]
    assert reply.startswith(text.strip()[:10])
    assert time.monotonic() - started < 240


@pytest.mark.slow
def test_generation_errors_exit_as_other_calls_do(
    chat_peer: RunningPeer, env: dict[str, str]
) -> None:
    # A model the peer does not serve: the caller's mistake, as an event in --json.
    result = p2pnet(
        "call", chat_peer.address, MODEL_ID, "--prompt", "Hi", "--json", "--timeout", "20",
        env=env,
    )  # fmt: skip
    assert result.returncode == 2
    (event,) = events_of(result.stdout)
    assert event["event"] == "error" and event["code"] == "unknown_model"
    assert f"does not offer model {MODEL_ID}" in event["message"]
    # Nobody offers the task: as text on stderr; stdin is not a terminal, so the first
    # failed turn ends the chat.
    result = subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", "chat", "--task", "translation", "--bootstrap",
         chat_peer.address, "--timeout", "6"],
        input="Hello\nAgain\n", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error (in the call or the configuration): ") == 1
    assert "no provider offers it" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
