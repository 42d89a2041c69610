"""Benchmark streamed generation: over p2pnet against the same model run locally, a
session's second turn against replaying the conversation, and concurrent sessions on one
provider, all with their baselines in the same run.

Usage: python scripts/bench/generate.py [--model build/models/smollm2-chat.onnx]
           [--out build/bench] [--max-tokens 128] [--reps 5] [--quick]
           [--threads 0] [--max-concurrency 1]

Everything runs on 127.0.0.1. The provider runs in a child process (this file with
--serve-child): a p2pnet Peer (TCP + Noise + Yamux via py-libp2p) serving the model as
a GenerativeModel with --max-concurrency and --threads (default: GenerativeModel's own,
which is what ``p2pnet peer`` serves with). Every generation is greedy, so local and
network replies to one prompt must be the same tokens (checked).

  streaming    one prompt at a time, local and network alternating:
               local       GenerativeModel.generate in the child's process, on the
                           model object it serves, without the network (the baseline:
                           the same process and onnxruntime session as the network runs)
               network     InvokeClient.generate to the child on an open connection
               then, not in turn with those (see ``streaming``):
               local_here  GenerativeModel.generate in this process
               peer_generate  Peer.generate(model=, peer=): adds finding the offer (a
                           DHT lookup and the provider's record, every call)
               TTFT: from the call to the first token's chunk, also over one-token
               runs; tokens/s: decode only, (tokens - 1) / (last token's time - first
               token's time). The child traces each generation (when it was called,
               when each token was handed to the server, how long the chunk's write
               took), on the clock this process reads too: what the transport adds.
  session      a two-turn conversation over the network: the second turn in the
               session that kept the first turn's cache, against the whole conversation
               replayed as a new generation (no session); TTFT and tokens fed of both
  concurrency  8 callers (8 client Peers), each in its own session (keep), generating
               at once on the child; baseline: one session alone on the same child.
               The same on providers with max_concurrency 1 and 2 x onnxruntime
               threads 1 and 2 (a child each, all started first), round after round
               in turn, so that every setting sees the same machine

Writes <out>/generate.json and prints tables. Targets: network decode tokens/s >= 90%
of local; network TTFT <= local TTFT + 5 ms (medians); each judged end to end and for
the transport alone (from the traces). --quick: few tokens and repetitions (about a
minute), for the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import itertools
import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info, targets_table

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.generation import GenerationParams, GenerationSummary, Prompt
from p2pnet.invoke.client import GenerationStream, InvokeClient
from p2pnet.peer import Peer
from p2pnet.runtime.generative import GenerativeModel
from p2pnet.simulate.procstats import process_cpu_seconds

DEFAULT_MODEL = REPO_ROOT / "build" / "models" / "smollm2-chat.onnx"
CHILD_START_TIMEOUT = 120.0  # seconds for the serving child to load the model and listen
CHILD_LIFETIME = 1800.0  # the serving child exits after this long whatever happens
STREAM_TIMEOUT = 600.0  # seconds, per generation (8 at once on a slow provider included)
TARGET_TOKENS_RATIO = 0.90  # network decode tokens/s over local
TARGET_TTFT_ADDED_MS = 5.0
SESSIONS = 8
# (max_concurrency, threads) of the provider tried with concurrent sessions
SWEEP = ((1, 1), (1, 2), (2, 1), (2, 2))

# Prompts whose greedy replies run past 128 tokens with SmolLM2-135M-Instruct (a reply
# that ends earlier is counted as it is: rates are per token actually produced).
PROMPTS = (
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a busy day in the life of a lighthouse keeper, hour by hour.",
    "Write a long essay about the history of the printing press.",
    "Tell a long story about two friends who sail around the world.",
    "Explain in detail how bees make honey and why they matter to farmers.",
    "Describe in detail a journey by train across a large country.",
    "Write a long letter from a gardener to a friend about the seasons.",
)
FIRST_TURN = "Tell me a story about a fox who finds a lost key."
SECOND_TURN = "Now tell me what the fox did with the key the next morning."


@dataclass(frozen=True)
class Plan:
    """How many of each measurement."""

    max_tokens: int  # per reply when streaming, and of the first turn of a session
    reps: int  # runs of each streaming kind
    ttft_reps: int  # one-token runs of each kind, for the time to the first token
    peer_reps: int  # runs of Peer.generate
    second_turn_tokens: int  # only its time to the first token matters
    session_reps: int
    concurrent_tokens: int  # per session, with many sessions at once
    concurrency_rounds: int  # of every provider setting
    other_settings: int  # settings of SWEEP measured besides the main one
    sessions: int = SESSIONS

    @classmethod
    def for_args(cls, quick: bool, max_tokens: int | None, reps: int | None) -> Plan:
        if quick:
            tokens, count = max_tokens or 16, reps or 2
            return cls(tokens, count, 3, 1, 4, count, tokens, 1, 1)
        tokens, count = max_tokens or 128, reps or 5
        return cls(
            tokens,
            count,
            4 * count,
            max(2, count // 2),
            8,
            max(3, count - 2),
            min(tokens, 64),
            3,
            len(SWEEP),
        )


@dataclass(frozen=True)
class Config:
    """How the provider runs the model."""

    max_concurrency: int
    threads: int

    @property
    def label(self) -> str:
        threads = "auto" if self.threads == 0 else str(self.threads)
        return f"max_concurrency {self.max_concurrency}, threads {threads}"


@dataclass
class Run:
    """One generation as the caller saw it: when it started, when each token arrived."""

    started: float
    token_times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    ended: float = 0.0
    summary: GenerationSummary | None = None

    def take(self, text: str, tokens: Sequence[int]) -> None:
        now = time.perf_counter()
        self.text.append(text)
        for token in tokens:
            self.token_times.append(now)
            self.tokens.append(token)

    @property
    def ttft_ms(self) -> float:
        return (self.token_times[0] - self.started) * 1e3

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after the first token (0 when fewer than two came)."""
        span = self.token_times[-1] - self.token_times[0]
        return (len(self.token_times) - 1) / span if span > 0 else 0.0

    @property
    def gaps_ms(self) -> list[float]:
        t = self.token_times
        return [(b - a) * 1e3 for a, b in itertools.pairwise(t)]

    def check(self, what: str) -> None:
        if self.summary is None or not self.tokens:
            raise RuntimeError(f"{what}: no summary or no token ({self.summary})")
        if self.summary.completion_tokens != len(self.tokens):
            raise RuntimeError(
                f"{what}: summary says {self.summary.completion_tokens} tokens, "
                f"{len(self.tokens)} arrived"
            )


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and count of ``values``."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def user(text: str) -> Prompt:
    return Prompt(messages=(("user", text),))


# ---------------------------------------------------------------- generating


async def local_run(model: GenerativeModel, prompt: Prompt, params: GenerationParams) -> Run:
    """GenerativeModel.generate in this process, timed from the call."""
    run = Run(time.perf_counter())

    async def emit(text: str, tokens: list[int]) -> None:
        run.take(text, tokens)

    run.summary = await model.generate(prompt, params, emit, timeout=STREAM_TIMEOUT)
    run.ended = time.perf_counter()
    return run


async def stream_run(stream: Any) -> Run:
    """Iterate a GenerationStream (or Peer.generate's Generation), timed from its start."""
    run = Run(time.perf_counter())
    async with stream:
        async for chunk in stream:
            run.take(chunk.text, chunk.tokens)
    run.ended = time.perf_counter()
    run.summary = stream.summary
    return run


@dataclass
class Remote:
    """The provider as this process reaches it."""

    client: InvokeClient
    address: PeerAddress
    model_id: str

    def generate(
        self,
        prompt: Prompt,
        params: GenerationParams,
        *,
        session: str | None = None,
        keep: bool = False,
    ) -> GenerationStream:
        return self.client.generate(
            self.address,
            self.model_id,
            prompt,
            params,
            session=session,
            keep=keep,
            timeout=STREAM_TIMEOUT,
        )

    async def run(self, prompt: Prompt, params: GenerationParams, **kw: Any) -> Run:
        return await stream_run(self.generate(prompt, params, **kw))

    async def close_session(self, session: str) -> None:
        await self.client.close_session(self.address, self.model_id, session)


class CpuMeter:
    """CPU seconds spent by some processes between start() and stop()."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self._start: list[float] = []

    def start(self) -> None:
        self._start = [process_cpu_seconds(pid) for pid in self.pids]

    def stop(self) -> list[float]:
        return [
            process_cpu_seconds(pid) - before
            for pid, before in zip(self.pids, self._start, strict=True)
        ]


# ---------------------------------------------------------------- serving child


class TracedModel(GenerativeModel):
    """The provider's model, noting when each generation was called, when each of its
    decoding steps ran (in the worker thread), and for each token when it was handed to
    ``emit`` (the server: encode and write the chunk) and when that returned.
    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, one clock for both processes, so
    the caller can set these against its own times. Steps are noted in the last trace:
    right for one generation at a time (the streaming runs), mixed with several."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.traces: list[dict[str, Any]] = []

    async def generate(
        self, prompt: Prompt, params: GenerationParams, emit: Any, **kwargs: Any
    ) -> GenerationSummary:
        emits: list[tuple[float, float]] = []
        self.traces.append({"called": time.perf_counter(), "emits": emits, "steps": []})
        del self.traces[:-64]

        async def timed(text: str, tokens: list[int]) -> None:
            start = time.perf_counter()
            await emit(text, tokens)
            if tokens:
                emits.append((start, time.perf_counter()))

        return await super().generate(prompt, params, timed, **kwargs)

    def _step(self, job: Any) -> Any:
        start = time.perf_counter()
        logits = super()._step(job)
        if self.traces:
            self.traces[-1]["steps"].append((start, time.perf_counter()))
        return logits


async def child_main(model_path: Path, config: Config) -> None:
    """Serve the model with ``config`` until stdin closes. Lines on stdin: "trace" is
    answered with the traces of the generations since the last one; "local" and a
    JSON job (prompt, max_tokens) with a generation by the served model object in this
    process, without the network, and its trace."""
    model = TracedModel(model_path, max_concurrency=config.max_concurrency, threads=config.threads)
    async with Peer() as peer:
        peer.serve(model, tasks=["bench-chat"])
        info = {"addr": peer.addrs[0], "model_id": model.model_id}
        print(json.dumps(info), flush=True)
        with trio.move_on_after(CHILD_LIFETIME):
            # The parent closes our stdin when it is done (or dies).
            while line := await trio.to_thread.run_sync(
                sys.stdin.readline,
                abandon_on_cancel=True,  # type: ignore[call-arg]
            ):
                if line.strip() == "trace":
                    print(json.dumps(model.traces), flush=True)
                    model.traces.clear()
                elif line.startswith("local "):
                    job = json.loads(line[len("local ") :])
                    params = GenerationParams(max_tokens=job["max_tokens"])
                    run = await local_run(model, user(job["prompt"]), params)
                    answer = {"run": dataclasses.asdict(run), "trace": model.traces.pop()}
                    print(json.dumps(answer), flush=True)


class Child:
    """The serving child process."""

    def __init__(self, model_path: Path, config: Config) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [
                sys.executable, __file__, "--serve-child", "--model", str(model_path),
                "--max-concurrency", str(config.max_concurrency),
                "--threads", str(config.threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], CHILD_START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise SystemExit("the serving child process did not start (see its error above)")
        info = json.loads(line)
        self.addr: str = info["addr"]
        self.model_id: str = info["model_id"]

    def _ask(self, line: str, timeout: float = 30.0) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        answer = self.proc.stdout.readline() if ready else ""
        if not answer:
            raise RuntimeError(f"the serving child did not answer {line[:20]!r}")
        return json.loads(answer)

    def traces(self) -> list[dict[str, Any]]:
        """The child's traces of the generations since the last call (TracedModel)."""
        traces: list[dict[str, Any]] = self._ask("trace")
        return traces

    async def local_run(self, prompt: str, params: GenerationParams) -> tuple[Run, dict[str, Any]]:
        """A generation by the child's model in the child's process, without the network
        (the same model object the child serves), and its trace."""
        job = json.dumps({"prompt": prompt, "max_tokens": params.max_tokens})
        answer = await trio.to_thread.run_sync(self._ask, f"local {job}", STREAM_TIMEOUT)
        raw = answer["run"]
        summary = raw.pop("summary")
        return Run(**raw, summary=GenerationSummary(**summary)), answer["trace"]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- measuring


def transport(run: Run, trace: dict[str, Any]) -> dict[str, Any]:
    """Where a network run's time went, from the caller's times and the provider's trace
    of the same generation (one clock: see TracedModel)."""
    emits = trace["emits"]
    if len(emits) != len(run.tokens):
        raise RuntimeError(f"the provider traced {len(emits)} tokens, {len(run.tokens)} came")
    arrivals = [t - start for t, (start, _) in zip(run.token_times, emits, strict=True)]
    span = emits[-1][0] - emits[0][0]
    return {
        # the request's way in: encode, write, libp2p, the server's read and dispatch
        "request_ms": (trace["called"] - run.started) * 1e3,
        # the provider's own time to its first token (what local measures)
        "provider_ttft_ms": (emits[0][0] - trace["called"]) * 1e3,
        # each token's way out: chunk encode and write, libp2p, the caller's read
        "chunk_ms": [a * 1e3 for a in arrivals],
        "provider_decode_tok_s": (len(emits) - 1) / span if span > 0 else 0.0,
    }


def decoding_loop(traces: list[dict[str, Any]]) -> dict[str, float]:
    """The provider's time from one token to the next (p50s over every token of
    ``traces``), in parts: the decoding step in the worker thread (onnxruntime), the
    emit (the server encoding and writing the chunk; the benchmark's note of it when
    local), and the rest (the hop to the worker thread and back, choosing the token,
    decoding the text, trio)."""
    gaps, steps, emits, rest = [], [], [], []
    for trace in traces:
        e, st = trace["emits"], trace["steps"]
        if len(st) < len(e):  # the prompt's step, then one per token fed
            raise RuntimeError(f"{len(st)} steps traced for {len(e)} tokens")
        for i in range(len(e) - 1):
            gap = e[i + 1][0] - e[i][0]
            step = st[i + 1][1] - st[i + 1][0]
            emit = e[i][1] - e[i][0]
            gaps.append(gap)
            steps.append(step)
            emits.append(emit)
            rest.append(gap - step - emit)
    total = sum(gaps)
    return {
        "gap_p50_ms": quantile(gaps, 0.5) * 1e3,
        "step_p50_ms": quantile(steps, 0.5) * 1e3,
        "emit_p50_ms": quantile(emits, 0.5) * 1e3,
        "emit_p95_ms": quantile(emits, 0.95) * 1e3,
        "rest_p50_ms": quantile(rest, 0.5) * 1e3,
        "step_share": sum(steps) / total,
        "emit_share": sum(emits) / total,
        "rest_share": sum(rest) / total,
    }


def first_token(traces: list[dict[str, Any]]) -> dict[str, float]:
    """The provider's time to the first token (medians over ``traces``), in parts: from
    the call to the prompt's step starting in the worker thread, the step (onnxruntime),
    from its end to the token handed to ``emit``."""
    parts: dict[str, list[float]] = {"to_step_ms": [], "prefill_ms": [], "to_emit_ms": []}
    for trace in traces:
        start, end = trace["steps"][0]
        parts["to_step_ms"].append((start - trace["called"]) * 1e3)
        parts["prefill_ms"].append((end - start) * 1e3)
        parts["to_emit_ms"].append((trace["emits"][0][0] - end) * 1e3)
    return {name: statistics.median(values) for name, values in parts.items()}


KINDS = ("local", "network", "local_here")
"""local: GenerativeModel.generate in the provider's process, on the model object it
serves (the baseline); network: InvokeClient.generate from this process to the
provider; local_here: a second GenerativeModel in this process."""


async def streaming(
    plan: Plan, model: GenerativeModel, child: Child, client: Peer
) -> dict[str, Any]:
    """Local and network runs of the same prompts, alternating: whole replies, then
    replies of one token for the time to the first; then the same in this process, and
    Peer.generate.

    The runs in this process come last, not in turn with the others: after a run,
    onnxruntime's pool threads keep spinning for a while, and the next prompt's step in
    the other process then took ~35% longer (225 against 163 ms, measured with a 0.3 s
    pause and without)."""
    params = GenerationParams(max_tokens=plan.max_tokens)
    one = GenerationParams(max_tokens=1)
    remote = Remote(client.services.remote, parse_peer_address(child.addr), child.model_id)
    if model.model_id != child.model_id:
        raise RuntimeError("the child serves another model")

    provider_traces: dict[str, list[dict[str, Any]]] = {"local": [], "network": []}

    async def run(kind: str, prompt: str, params: GenerationParams) -> Run:
        if kind == "local":
            done, trace = await child.local_run(prompt, params)
            provider_traces["local"].append(trace)
            return done
        if kind == "local_here":
            return await local_run(model, user(prompt), params)
        done = await remote.run(user(prompt), params)
        provider_traces["network"].append(child.traces()[-1])
        return done

    # Warm every kind up: the first run of an onnxruntime session and the first stream
    # are slower.
    warm = GenerationParams(max_tokens=4)
    for kind in KINDS:
        (await run(kind, PROMPTS[0], warm)).check(f"{kind} warm-up")
    await trio.sleep(0.5)  # this process's onnxruntime threads stop spinning
    for traces in provider_traces.values():
        traces.clear()

    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    cpu = {kind: [0.0, 0.0] for kind in KINDS}
    meter = CpuMeter(os.getpid(), child.proc.pid)
    traced: list[dict[str, Any]] = []

    async def whole(kind: str, prompt: str) -> None:
        meter.start()
        runs[kind].append(await run(kind, prompt, params))
        cpu[kind] = [a + b for a, b in zip(cpu[kind], meter.stop(), strict=True)]
        runs[kind][-1].check(kind)
        if kind == "network":
            traced.append(transport(runs[kind][-1], provider_traces["network"][-1]))

    def order(rep: int) -> tuple[str, str]:
        return ("local", "network") if rep % 2 == 0 else ("network", "local")

    for rep in range(plan.reps):
        for kind in order(rep):
            await whole(kind, PROMPTS[rep % len(PROMPTS)])
        progress(
            f"streaming {rep + 1}/{plan.reps}: "
            + ", ".join(
                f"{kind} {runs[kind][-1].decode_tok_s:.1f} tok/s TTFT "
                f"{runs[kind][-1].ttft_ms:.0f} ms"
                for kind in order(0)
            )
        )
    loop = {kind: decoding_loop(traces) for kind, traces in provider_traces.items()}
    for traces in provider_traces.values():
        traces.clear()

    ttft: dict[str, list[float]] = {kind: [] for kind in KINDS}
    ttft_traced: list[dict[str, Any]] = []
    for rep in range(plan.ttft_reps):
        for kind in order(rep):
            first = await run(kind, PROMPTS[rep % len(PROMPTS)], one)
            ttft[kind].append(first.ttft_ms)
            if kind == "network":
                ttft_traced.append(transport(first, provider_traces["network"][-1]))
    parts = {kind: first_token(traces) for kind, traces in provider_traces.items()}

    for rep in range(plan.reps):
        await whole("local_here", PROMPTS[rep % len(PROMPTS)])
    for rep in range(plan.ttft_reps):
        ttft["local_here"].append(
            (await run("local_here", PROMPTS[rep % len(PROMPTS)], one)).ttft_ms
        )
    await trio.sleep(0.5)
    progress(
        f"time to first token, {plan.ttft_reps} runs each: "
        + ", ".join(f"{kind} {statistics.median(ttft[kind]):.0f} ms" for kind in KINDS)
    )

    peer_runs: list[Run] = []
    for rep in range(plan.peer_reps + 1):
        generation = client.generate(
            user(PROMPTS[rep % len(PROMPTS)]),
            model=child.model_id,
            peer=child.addr,
            params=params if rep else warm,
            timeout=STREAM_TIMEOUT,
        )
        peer_run = await stream_run(generation)
        peer_run.check("Peer.generate")
        if rep:  # the first one warms the lookup's and the describe's streams up
            peer_runs.append(peer_run)
    child.traces()

    def figures(kind: str) -> dict[str, Any]:
        done = runs[kind]
        tokens = sum(len(r.tokens) for r in done)
        gaps = [g for r in done for g in r.gaps_ms]
        return {
            "ttft_ms": spread([r.ttft_ms for r in done]),
            "decode_tok_s": spread([r.decode_tok_s for r in done]),
            "gap_p50_ms": quantile(gaps, 0.5),
            "gap_p95_ms": quantile(gaps, 0.95),
            "tokens": [len(r.tokens) for r in done],
            "prompt_tokens": [r.summary.prompt_tokens for r in done if r.summary],
            "finish": [r.summary.finish for r in done if r.summary],
            # this process, the provider's process
            "cpu_ms_per_token": [c / tokens * 1e3 for c in cpu[kind]],
        }

    chunk = [c for t in traced for c in t["chunk_ms"]]
    both = traced + ttft_traced
    out: dict[str, Any] = {kind: figures(kind) for kind in KINDS}
    out["peer_generate"] = {
        "ttft_ms": spread([r.ttft_ms for r in peer_runs]),
        "decode_tok_s": spread([r.decode_tok_s for r in peer_runs]),
        "tokens": [len(r.tokens) for r in peer_runs],
    }
    out["ttft"] = {"runs": plan.ttft_reps, **{f"{k}_ms": spread(v) for k, v in ttft.items()}}
    tr: dict[str, Any] = {  # from the provider's traces of the network runs
        "request_ms": spread([t["request_ms"] for t in both]),
        "first_chunk_ms": spread([t["chunk_ms"][0] for t in both]),
        "provider_ttft_ms": spread([t["provider_ttft_ms"] for t in both]),
        "chunk_p50_ms": quantile(chunk, 0.5),
        "chunk_p95_ms": quantile(chunk, 0.95),
        "provider_decode_tok_s": spread([t["provider_decode_tok_s"] for t in traced]),
    }
    out["transport"] = tr
    out["same_tokens"] = all(
        len({tuple(runs[kind][i].tokens) for kind in KINDS}) == 1 for i in range(plan.reps)
    )
    lo, net = out["local"], out["network"]
    out["tokens_ratio"] = net["decode_tok_s"]["median"] / lo["decode_tok_s"]["median"]
    out["ttft_added_ms"] = out["ttft"]["network_ms"]["median"] - out["ttft"]["local_ms"]["median"]
    # Paired by repetition (same prompt, one after the other): less exposed to the load
    # changing during the run.
    out["paired_tokens_ratio"] = statistics.median(
        b.decode_tok_s / a.decode_tok_s for a, b in zip(runs["local"], runs["network"], strict=True)
    )
    out["paired_ttft_added_ms"] = statistics.median(
        b - a for a, b in zip(ttft["local"], ttft["network"], strict=True)
    )
    # The provider's time from one token to the next, in parts, local and network.
    out["loop"] = loop
    # The provider's time to the first token in parts, local and network: what the
    # network adds with the model's own time (the prompt's step) taken out.
    out["first_token"] = parts
    tr["ttft_added_ms"] = (
        tr["request_ms"]["median"]
        + tr["first_chunk_ms"]["median"]
        + sum(parts["network"][k] - parts["local"][k] for k in ("to_step_ms", "to_emit_ms"))
    )
    return out


async def second_turn(plan: Plan, child: Child, client: Peer) -> dict[str, Any]:
    """The second turn in a session against the conversation replayed without one."""
    remote = Remote(client.services.remote, parse_peer_address(child.addr), child.model_id)
    first_params = GenerationParams(max_tokens=plan.max_tokens)
    params = GenerationParams(max_tokens=plan.second_turn_tokens)
    kept: list[Run] = []
    replayed: list[Run] = []
    first_tokens: list[int] = []
    for rep in range(plan.session_reps):
        first = await remote.run(user(FIRST_TURN), first_params, keep=True)
        first.check("first turn")
        assert first.summary is not None and first.summary.session is not None
        first_tokens.append(first.summary.prompt_tokens + len(first.tokens))
        session = first.summary.session
        conversation = Prompt(
            messages=(
                ("user", FIRST_TURN),
                ("assistant", "".join(first.text)),
                ("user", SECOND_TURN),
            )
        )

        async def in_session(session: str = session) -> None:
            kept.append(await remote.run(user(SECOND_TURN), params, session=session))
            kept[-1].check("second turn in the session")
            await remote.close_session(session)

        async def replay(conversation: Prompt = conversation) -> None:
            replayed.append(await remote.run(conversation, params))
            replayed[-1].check("second turn replayed")

        for step in (in_session, replay) if rep % 2 == 0 else (replay, in_session):
            await step()
        progress(
            f"session {rep + 1}/{plan.session_reps}: second turn TTFT {kept[-1].ttft_ms:.0f} ms "
            f"in the session, {replayed[-1].ttft_ms:.0f} ms replayed"
        )

    def figures(runs: list[Run]) -> dict[str, Any]:
        summaries = [r.summary for r in runs if r.summary is not None]
        return {
            "ttft_ms": spread([r.ttft_ms for r in runs]),
            "cached_tokens": [s.cached_tokens for s in summaries],
            "prompt_tokens": [s.prompt_tokens for s in summaries],
            "completion_tokens": [s.completion_tokens for s in summaries],
        }

    out: dict[str, Any] = {
        "first_turn_tokens": first_tokens,
        "session": figures(kept),
        "replay": figures(replayed),
    }
    out["ttft_saved_ms"] = out["replay"]["ttft_ms"]["median"] - out["session"]["ttft_ms"]["median"]
    out["ttft_ratio"] = out["replay"]["ttft_ms"]["median"] / out["session"]["ttft_ms"]["median"]
    return out


async def concurrency(plan: Plan, child: Child, callers: list[Peer]) -> dict[str, Any]:
    """One session alone, then one session per caller, all at once."""
    params = GenerationParams(max_tokens=plan.concurrent_tokens)
    address = parse_peer_address(child.addr)
    remotes = [Remote(c.services.remote, address, child.model_id) for c in callers]
    for remote in remotes:  # open each caller's connection and stream: one token in and out
        await remote.run(Prompt(tokens=(1,)), GenerationParams(max_tokens=1))

    started = time.perf_counter()
    alone = await remotes[0].run(user(PROMPTS[0]), params, keep=True)
    alone_wall = time.perf_counter() - started
    alone.check("one session alone")
    assert alone.summary is not None and alone.summary.session is not None
    await remotes[0].close_session(alone.summary.session)

    runs: list[Run | None] = [None] * len(remotes)
    go = trio.Event()

    async def one(i: int) -> None:
        await go.wait()
        runs[i] = await remotes[i].run(user(PROMPTS[i % len(PROMPTS)]), params, keep=True)

    cpu = CpuMeter(os.getpid(), child.proc.pid)
    async with trio.open_nursery() as nursery:
        for i in range(len(remotes)):
            nursery.start_soon(one, i)
        await trio.sleep(0.05)  # every task waits on the event
        cpu.start()
        started = time.perf_counter()
        go.set()
    wall = time.perf_counter() - started
    cpu_s = cpu.stop()
    done = [r for r in runs if r is not None]
    for run, remote in zip(done, remotes, strict=True):
        run.check("concurrent session")
        assert run.summary is not None and run.summary.session is not None
        await remote.close_session(run.summary.session)
    child.traces()  # not looked at here; only emptied
    return {
        "alone": {
            "ttft_ms": alone.ttft_ms,
            "decode_tok_s": alone.decode_tok_s,
            "tokens": len(alone.tokens),
            "tok_s": len(alone.tokens) / alone_wall,
        },
        "concurrent": {
            "tokens_per_session": [len(r.tokens) for r in done],
            "wall_s": wall,
            "ttft_ms": [r.ttft_ms for r in done],
            "decode_tok_s": [r.decode_tok_s for r in done],
            "cpu_s": {"caller": cpu_s[0], "provider": cpu_s[1]},
        },
    }


def combine(config: Config, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one provider setting, summed up."""
    alone = [r["alone"] for r in rounds]
    together = [r["concurrent"] for r in rounds]
    ttfts = [t for c in together for t in c["ttft_ms"]]
    return {
        "max_concurrency": config.max_concurrency,
        "threads": config.threads,
        "rounds": len(rounds),
        "alone": {
            "ttft_ms": spread([a["ttft_ms"] for a in alone]),
            "decode_tok_s": spread([a["decode_tok_s"] for a in alone]),
            "tok_s": spread([a["tok_s"] for a in alone]),
            "tokens": [a["tokens"] for a in alone],
        },
        "concurrent": {
            "sessions": len(together[0]["tokens_per_session"]),
            "tokens": [sum(c["tokens_per_session"]) for c in together],
            "wall_s": [c["wall_s"] for c in together],
            "aggregate_tok_s": spread(
                [sum(c["tokens_per_session"]) / c["wall_s"] for c in together]
            ),
            "per_session_decode_tok_s": spread([d for c in together for d in c["decode_tok_s"]]),
            "ttft_ms": {
                "p50": quantile(ttfts, 0.5),
                "min": min(ttfts),
                "max": max(ttfts),
                "n": len(ttfts),
            },
            "cpu_s_per_token": {
                who: sum(c["cpu_s"][who] for c in together)
                / sum(sum(c["tokens_per_session"]) for c in together)
                for who in ("caller", "provider")
            },
        },
        "runs": rounds,
    }


async def measure(plan: Plan, model: GenerativeModel, children: list[Child]) -> dict[str, Any]:
    """Streaming and sessions on the first child, then concurrent sessions on every child,
    round after round (each round in another order), so that every setting sees the
    machine as the others do."""
    main = children[0]
    async with Peer(bootstrap=[main.addr]) as client:
        progress("streaming: local and network, alternating")
        stream = await streaming(plan, model, main, client)
        progress("session: second turn in the session and replayed")
        session = await second_turn(plan, main, client)
    rounds: dict[Config, list[dict[str, Any]]] = {child.config: [] for child in children}
    async with AsyncExitStack() as stack:
        callers = [await stack.enter_async_context(Peer()) for _ in range(plan.sessions)]
        for n in range(plan.concurrency_rounds):
            shift = n % len(children)
            for child in children[shift:] + children[:shift]:
                await trio.sleep(0.5)  # the last child's onnxruntime threads stop spinning
                result = await concurrency(plan, child, callers)
                rounds[child.config].append(result)
                c = result["concurrent"]
                progress(
                    f"concurrency round {n + 1}/{plan.concurrency_rounds}, "
                    f"{child.config.label}: {sum(c['tokens_per_session']) / c['wall_s']:.1f} "
                    f"tok/s for {plan.sessions} sessions, "
                    f"{result['alone']['decode_tok_s']:.1f} for one alone"
                )
    return {
        "streaming": stream,
        "session": session,
        "concurrency": [combine(config, runs) for config, runs in rounds.items()],
    }


def run_all(plan: Plan, model_path: Path, main: Config) -> dict[str, Any]:
    """Start a serving child for ``main`` and for each other setting of SWEEP (the first
    ``plan.other_settings`` of them), measure, stop them."""
    model = GenerativeModel(model_path, max_concurrency=main.max_concurrency, threads=main.threads)
    others = [c for m, t in SWEEP if (c := Config(m, t)) != main]
    configs = [main, *others[: plan.other_settings]]
    children: list[Child] = []
    try:
        for config in configs:
            progress(f"starting a provider with {config.label}")
            children.append(Child(model_path, config))
        return trio.run(measure, plan, model, children)
    finally:
        for child in children:
            child.stop()


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, measured end to end (medians of local and network runs, which the
    load of a shared machine moves), and for the transport alone (from the provider's
    trace: the part of the time the network path adds)."""
    s = result["streaming"]
    tr = s["transport"]
    kept = 1 - s["loop"]["network"]["emit_share"]

    def row(name: str, value: float, unit: str, goal: str, ok: bool) -> dict[str, Any]:
        return {"name": name, "value": value, "unit": unit, "target": goal, "pass": ok}

    tokens_goal = f">= {TARGET_TOKENS_RATIO * 100:g}"
    ttft_goal = f"<= {TARGET_TTFT_ADDED_MS:g}"
    return [
        row(
            "network decode tokens/s over local, medians",
            s["tokens_ratio"] * 100, "%", tokens_goal, s["tokens_ratio"] >= TARGET_TOKENS_RATIO,
        ),
        row(
            f"network TTFT minus local TTFT, medians of {s['ttft']['runs']}",
            s["ttft_added_ms"], "ms", ttft_goal, s["ttft_added_ms"] <= TARGET_TTFT_ADDED_MS,
        ),
        row(
            "transport: decode time left to the model (1 - chunk writes' share)",
            kept * 100, "%", tokens_goal, kept >= TARGET_TOKENS_RATIO,
        ),
        row(
            "transport: TTFT added with the model's step taken out, medians",
            tr["ttft_added_ms"], "ms", ttft_goal, tr["ttft_added_ms"] <= TARGET_TTFT_ADDED_MS,
        ),
    ]  # fmt: skip


def best_config(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The provider setting with the highest aggregate tokens/s, and the one with the
    fastest session alone (medians over the rounds)."""

    def name(run: dict[str, Any]) -> dict[str, int]:
        return {"max_concurrency": run["max_concurrency"], "threads": run["threads"]}

    return {
        "aggregate": name(max(runs, key=lambda r: r["concurrent"]["aggregate_tok_s"]["median"])),
        "alone": name(max(runs, key=lambda r: r["alone"]["decode_tok_s"]["median"])),
    }


# ---------------------------------------------------------------- report


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    s = report["streaming"]
    p = report["plan"]
    table = Table(
        title=f"streamed generation, greedy, max {p['max_tokens']} tokens, {p['reps']} runs "
        "each (median, min-max)",
        title_justify="left",
    )
    for column in (
        "how",
        "TTFT ms",
        "decode tok/s",
        "gap p50/p95 ms",
        "CPU ms/token here+provider",
    ):
        table.add_column(column, justify="left" if column == "how" else "right")

    def rng(d: dict[str, float], fmt: str) -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"

    for key, label in (
        ("local", "local, provider's process (baseline)"),
        ("network", "network: InvokeClient.generate"),
        ("local_here", "local, this process"),
    ):
        r = s[key]
        table.add_row(
            label, rng(r["ttft_ms"], ".1f"), rng(r["decode_tok_s"], ".1f"),
            f"{r['gap_p50_ms']:.1f} / {r['gap_p95_ms']:.1f}",
            " + ".join(f"{c:.1f}" for c in r["cpu_ms_per_token"]),
        )  # fmt: skip
    r = s["peer_generate"]
    table.add_row(
        "network: Peer.generate", rng(r["ttft_ms"], ".1f"), rng(r["decode_tok_s"], ".1f"), "", ""
    )
    console.print(table)
    f = s["ttft"]
    tr = s["transport"]
    console.print(
        f"network/local decode tokens/s {s['tokens_ratio']:.3f} (paired by run "
        f"{s['paired_tokens_ratio']:.3f}); same tokens: {s['same_tokens']}; tokens per run "
        f"{s['network']['tokens']}\n"
        f"TTFT over {f['runs']} one-token runs each: local {rng(f['local_ms'], '.1f')} ms, "
        f"network {rng(f['network_ms'], '.1f')} ms: added {s['ttft_added_ms']:+.1f} ms "
        f"(paired {s['paired_ttft_added_ms']:+.1f}); local in this process "
        f"{rng(f['local_here_ms'], '.1f')} ms\n"
        f"each chunk from the provider's emit to this process: p50 {tr['chunk_p50_ms']:.2f} "
        f"ms, p95 {tr['chunk_p95_ms']:.2f}"
    )
    table = Table(
        title=f"time to the first token in parts, medians of {f['runs']} one-token runs, ms "
        "(provider's trace)",
        title_justify="left",
    )
    for column in (
        "run", "request in", "to step", "prompt's step", "to emit", "first chunk out",
        "network adds (model's step out)",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "run" else "right")
    lp, np_ = s["first_token"]["local"], s["first_token"]["network"]
    table.add_row(
        "local (baseline)", "-", f"{lp['to_step_ms']:.2f}", f"{lp['prefill_ms']:.1f}",
        f"{lp['to_emit_ms']:.2f}", "-", "",
    )  # fmt: skip
    table.add_row(
        "network", f"{tr['request_ms']['median']:.2f}", f"{np_['to_step_ms']:.2f}",
        f"{np_['prefill_ms']:.1f}", f"{np_['to_emit_ms']:.2f}",
        f"{tr['first_chunk_ms']['median']:.2f}", f"{tr['ttft_added_ms']:.2f}",
    )  # fmt: skip
    console.print(table)
    table = Table(
        title="the provider's time from one token to the next (p50s; shares of the total)",
        title_justify="left",
    )
    for column in ("run", "token to token ms", "step ms", "emit ms", "rest ms"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for kind, label in (("local", "local (baseline)"), ("network", "network")):
        d = s["loop"][kind]
        table.add_row(
            label, f"{d['gap_p50_ms']:.2f}",
            f"{d['step_p50_ms']:.2f} ({d['step_share'] * 100:.1f}%)",
            f"{d['emit_p50_ms']:.2f} ({d['emit_share'] * 100:.1f}%)",
            f"{d['rest_p50_ms']:.2f} ({d['rest_share'] * 100:.1f}%)",
        )  # fmt: skip
    console.print(table)

    t = report["session"]
    table = Table(title="second turn of a conversation, over the network", title_justify="left")
    for column in ("how", "TTFT ms (median, min-max)", "tokens cached", "tokens fed"):
        table.add_column(column, justify="left" if column == "how" else "right")
    for key, label in (
        ("session", "in the session (cache kept)"),
        ("replay", "replayed, no session"),
    ):
        r = t[key]
        table.add_row(
            label, rng(r["ttft_ms"], ".1f"), str(r["cached_tokens"][0]), str(r["prompt_tokens"][0])
        )
    console.print(table)

    table = Table(
        title=f"{p['sessions']} sessions at once on one provider, over the network, max "
        f"{p['concurrent_tokens']} tokens each; {p['concurrency_rounds']} rounds (median, "
        "min-max); tok/s of one session: decode only",
        title_justify="left",
    )
    for column in (
        "provider", "one alone: tok/s", "TTFT ms", f"{p['sessions']} at once: total tok/s",
        "tok/s each", "TTFT p50 / max ms",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "provider" else "right")
    for run in report["concurrency"]:
        c = run["concurrent"]
        label = Config(run["max_concurrency"], run["threads"]).label
        table.add_row(
            label, rng(run["alone"]["decode_tok_s"], ".1f"),
            f"{run['alone']['ttft_ms']['median']:.0f}", rng(c["aggregate_tok_s"], ".1f"),
            f"{c['per_session_decode_tok_s']['median']:.1f}",
            f"{c['ttft_ms']['p50']:.0f} / {c['ttft_ms']['max']:.0f}",
        )  # fmt: skip
    console.print(table)
    best = report["best_config"]
    console.print(
        "best on this machine: aggregate "
        f"{Config(**best['aggregate']).label}; one session alone {Config(**best['alone']).label}"
    )
    console.print(targets_table(report["targets"], lambda v: f"{v:.1f}"))
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']} at start, "
        f"{report['load_average_at_end']} at end; {report['date']}; p2pnet at "
        f"{report['git']['commit']}{' (modified)' if report['git']['modified'] else ''}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--max-tokens", type=int, help="tokens per reply (default 128)")
    parser.add_argument("--reps", type=int, help="runs of each streaming kind (default 5)")
    defaults = inspect.signature(GenerativeModel).parameters
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults["threads"].default,
        help="onnxruntime threads per step (0: its own choice; default: GenerativeModel's)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults["max_concurrency"].default,
        help="decoding steps at once (default: GenerativeModel's)",
    )
    parser.add_argument("--quick", action="store_true", help="few tokens and runs, for the test")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = Config(args.max_concurrency, args.threads)
    if args.serve_child:
        trio.run(child_main, args.model, config)
        return
    if not args.model.is_file():
        raise SystemExit(
            f"no model at {args.model}: build it with scripts/build_dialogue_model.py "
            "or pass --model"
        )

    started = time.perf_counter()
    plan = Plan.for_args(args.quick, args.max_tokens, args.reps)
    machine = machine_info("onnxruntime", "numpy", "tokenizers")
    result = run_all(plan, args.model, config)
    report: dict[str, Any] = {
        "benchmark": "generate",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "git": git_state(),
        "network": "127.0.0.1 only",
        "model": {"path": str(args.model), "bytes": args.model.stat().st_size},
        "plan": {
            **plan.__dict__,
            "threads": config.threads,
            "max_concurrency": config.max_concurrency,
        },
        "units": {
            "ttft": "ms from the call to the first token's chunk",
            "decode tok/s": "(tokens - 1) / (last token's arrival - first token's arrival)",
            "aggregate tok/s": "tokens of all sessions / time from the start to the last end",
            "cpu_ms_per_token": "CPU ms per token produced, per process",
        },
        **result,
    }
    report["best_config"] = best_config(report["concurrency"])
    report["targets"] = judge(result)
    report["load_average_at_end"] = list(os.getloadavg())
    report["duration_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'generate.json'} in {report['duration_s']} s")


if __name__ == "__main__":
    main()
