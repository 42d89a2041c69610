"""The p2pnet demo: a customer-service pipeline across a local swarm of five peers.

Five ``p2pnet peer`` processes on 127.0.0.1, each serving different models:

  peer 1  bootstrap; serves the ticket router (a Python function behind an adapter)
  peer 2  emotion-analysis   (MiniLM embeddings + a trained classifier)
  peer 3  kb-retrieval       (MiniLM sentence embeddings over the shop's help articles)
  peer 4  reply-generation   (SmolLM2-135M-Instruct, 4-bit: the reply is generated)
          and reply-template (the fixed-template reply, a cheap alternative)
  peer 5  reply-generation and emotion-analysis again: a second provider

A sixth peer, in this process, joins through peer 1 knowing no other address, finds
a provider for every step of examples/customer_service.yaml through the DHT, checks
the schemas, and runs the pipeline on three customer messages, showing each step's
result and which peer and model produced it, and streams one generated reply token
by token as the provider produces it. Then it runs one message forwarded
(peer to peer, not through the caller), kills the peer that served the reply and
runs again to show the failover to the other reply provider, and stops every peer
with SIGINT. Nothing leaves this machine.

Usage: python scripts/demo.py [--models build/models] [--reply-model FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import trio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pnet import Peer
from p2pnet.core.generation import GenerationParams, Prompt
from p2pnet.localswarm import PeerProcess, start_peer
from p2pnet.pipeline import Pipeline, PipelineResult

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "examples" / "customer_service.yaml"
ADAPTER = REPO / "examples" / "adapters" / "ticket_router.json"
MESSAGES = [
    "My order arrived broken, I want a refund",
    "Where is my parcel? It was supposed to be here three days ago",
    "Thanks a lot, the new headphones are great!",
]
console = Console(highlight=False, soft_wrap=True)


def short(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[:n] + "…"


def show(result: PipelineResult, names: dict[str, str], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("step", "model", "peer", "ms", "failed over"):
        table.add_column(column, justify="right" if column == "ms" else "left")
    for t in result.steps:
        failed = ", ".join(f"{names.get(p, short(p))} ({code})" for p, code in t.failed)
        table.add_row(
            t.step, f"{t.model_name} {short(t.model_id, 16)}", names.get(t.peer_id, t.peer_id),
            f"{t.ms:.1f}", failed or "-",
        )  # fmt: skip
    console.print(table)


def show_outputs(result: PipelineResult, row: int = 0) -> None:
    out = {k: str(v[row]) for k, v in result.outputs.items()}
    console.print(
        f"  emotion [bold]{out['emotion']}[/]   article [bold]{out['article']}[/]   "
        f"priority [bold]{out['priority']}[/] -> queue {out['queue']}"
    )
    console.print(f"  reply   [green]{out['reply']}[/]\n")


async def stream_reply(caller: Peer, names: dict[str, str], result: PipelineResult) -> None:
    """Generate message 1's reply again, streamed: each piece printed as it arrives."""
    out = {k: str(v[0]) for k, v in result.outputs.items()}
    fields = {"text": MESSAGES[0], "emotion": out["emotion"], "answer": out["answer"]}
    generation = caller.generate(
        Prompt(fields=fields), task="reply-generation", params=GenerationParams(max_tokens=96)
    )
    console.print("[bold]streamed[/]: the reply model's tokens as they arrive:\n  ", end="")
    async for chunk in generation:
        console.print(f"[green]{escape(chunk.text)}[/]", end="")
        console.file.flush()
    summary, offer = generation.summary, generation.offer
    assert summary is not None and offer is not None
    assert generation.started_at is not None and generation.first_chunk_at is not None
    first_ms = (generation.first_chunk_at - generation.started_at) * 1000
    console.print(
        f"\n  [dim]{summary.completion_tokens} tokens from "
        f"{names.get(offer.record.peer_id, '?')}, first after {first_ms:.0f} ms (finding the "
        f"provider included), ended by {summary.finish}[/]\n"
    )


async def run_pipeline(bootstrap: str, peers: dict[str, PeerProcess]) -> None:
    names = {p.peer_id: name for name, p in peers.items()}
    pipeline = Pipeline.from_file(SPEC)
    console.print(f"\n[bold]p2pnet pipeline check[/] {SPEC.relative_to(REPO)}: ", end="")
    console.print(", ".join(f"{s.name} ({s.target})" for s in pipeline.spec.steps))
    async with Peer(bootstrap=[bootstrap]) as caller:
        names[caller.peer_id] = "caller"
        t0 = time.perf_counter()
        plan = await pipeline.plan(caller)
        console.print(
            f"a sixth peer joined through peer 1 and planned in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms "
            "(one DHT lookup per step, signed records checked, schemas matched):"
        )
        for name, step in plan.steps.items():
            providers = ", ".join(names.get(o.record.peer_id, "?") for o in step.offers)
            console.print(
                f"  {name:<9} {step.model_name:<14} {short(step.model_id, 20)}  on {providers}"
            )

        first: PipelineResult | None = None
        for i, message in enumerate(MESSAGES, start=1):
            console.print(f'\n[bold]message {i}[/]: "{message}"')
            result = await pipeline.run(
                caller, {"text": np.array([message], dtype=object)}, plan=plan
            )
            show(result, names, f"orchestrated, {result.total_ms:.0f} ms")
            show_outputs(result)
            first = first or result
        assert first is not None

        await stream_reply(caller, names, first)

        message = np.array([MESSAGES[0]], dtype=object)
        result = await pipeline.run(caller, {"text": message}, mode="forwarded", plan=plan)
        console.print(
            "[bold]forwarded[/]: the caller sends the plan to the first step's peer; "
            "each peer passes the tensors on to the next"
        )
        show(result, names, f"forwarded, {result.total_ms:.0f} ms (run times as each peer reports)")

        # Kill whichever peer served the reply step: the next run must fail over.
        victim = names[next(t.peer_id for t in result.steps if t.step == "reply")]
        console.print(f"[bold]{victim} is killed[/] (SIGKILL); the same plan runs again:")
        peers[victim].kill()
        result = await pipeline.run(caller, {"text": message}, plan=plan)
        show(result, names, f"orchestrated after a crash, {result.total_ms:.0f} ms")
        show_outputs(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "build" / "models")
    parser.add_argument(
        "--reply-model", type=Path, help="the generated-reply model (default: in --models)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    m = {name: str(args.models / f"{name}.onnx") for name in ("emotion", "retrieval", "reply")}
    llm = str(args.reply_model or args.models / "cs-reply-llm.onnx")
    layout = {
        "peer 2": ["--serve", m["emotion"], "--task", "emotion-analysis"],
        "peer 3": ["--serve", m["retrieval"], "--task", "kb-retrieval"],
        "peer 4": [
            "--serve", llm, "--task", "reply-generation",
            "--serve", m["reply"], "--task", "reply-template",
        ],
        "peer 5": [
            "--serve", llm, "--task", "reply-generation",
            "--serve", m["emotion"], "--task", "emotion-analysis",
        ],
    }  # fmt: skip
    peers: dict[str, PeerProcess] = {}
    codes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="p2pnet-demo-") as tmp:
        try:
            console.print("[dim]$ p2pnet peer --role bootstrap --serve ticket_router.json[/]")
            boot = start_peer(
                ["--role", "bootstrap", "--serve", str(ADAPTER)], identity=Path(tmp) / "1.key"
            )
            peers["peer 1"] = boot
            for name, serve in layout.items():
                shown = " ".join(Path(a).name if a.endswith(".onnx") else a for a in serve)
                console.print(f"[dim]$ p2pnet peer {shown} --bootstrap <peer 1>[/]")
                peers[name] = start_peer(
                    [*serve, "--bootstrap", boot.address], identity=Path(tmp) / f"{name[-1]}.key"
                )
            for name, peer in peers.items():
                console.print(f"[dim]  {name}: {peer.peer_id}[/]")
            trio.run(run_pipeline, boot.address, peers)
        finally:
            for name, peer in reversed(peers.items()):
                if peer.process.poll() is None:
                    codes[name] = peer.stop()
    console.print(
        f"peers stopped with SIGINT (exit codes {list(codes.values())}); "
        f"the demo took {time.monotonic() - started:.1f} s"
    )
    if any(codes.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
