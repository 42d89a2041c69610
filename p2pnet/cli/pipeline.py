"""``p2pnet pipeline check | run``: check a pipeline spec, or run its models on different
peers as one pipeline."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    add_input_option,
    finish_checks,
    load_identity,
    running_peer_api,
)
from p2pnet.cli.render import joined_text, out, outputs_table, peer_text
from p2pnet.errors import DeadlineExceededError, UsageError

# Pipelines, trio and numpy are imported where they are used: parsing the command line
# loads none of them.
if TYPE_CHECKING:
    from p2pnet.pipeline import Mode, PipelineResult

__all__ = [
    "CheckOptions",
    "RunOptions",
    "add_pipeline_parsers",
    "check_pipeline",
    "run_pipeline",
]


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """The options of ``p2pnet pipeline check``."""

    spec: Path
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CheckOptions:
        return cls(args.spec, args.json)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The options of ``p2pnet pipeline run``; ``inputs`` as NAME=VALUE texts."""

    discovery: DiscoveryOptions
    spec: Path
    inputs: tuple[str, ...]
    mode: Mode

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(
            DiscoveryOptions.from_args(args), args.spec, tuple(args.input), cast("Mode", args.mode)
        )


def add_pipeline_parsers(sub: Subparsers, parents: ParentParsers) -> None:
    pipeline = sub.add_parser("pipeline", help="run models on different peers as one pipeline")
    pipeline_sub = pipeline.add_subparsers(
        dest="pipeline_command", required=True, metavar="COMMAND"
    )
    p = pipeline_sub.add_parser(
        "check", parents=[parents.common], help="check a pipeline spec without running it"
    )
    p.add_argument("spec", type=Path, metavar="SPEC", help="the spec (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(CheckOptions.from_args, check_pipeline))
    p = pipeline_sub.add_parser(
        "run",
        parents=[parents.common, parents.discovery],
        help="find a provider for every step, check the schemas, run, and show who ran what",
    )
    p.add_argument("spec", type=Path, metavar="SPEC", help="the spec (YAML or JSON)")
    add_input_option(p, "a pipeline input, as for 'p2pnet call' (repeatable)")
    p.add_argument(
        "--mode",
        choices=("orchestrated", "forwarded"),
        default="orchestrated",
        help="orchestrated: this peer calls every step (independent steps at once); "
        "forwarded: each step's peer sends the tensors on to the next step's peer",
    )
    p.set_defaults(handler=Command(RunOptions.from_args, run_pipeline))


def check_pipeline(options: CheckOptions) -> int:
    """Print the checked spec's steps and outputs."""
    from p2pnet.pipeline import Pipeline

    pipeline = Pipeline.from_file(options.spec)
    spec = pipeline.spec
    if options.json:
        print(json.dumps({"pipeline": spec.name, "steps": [s.name for s in spec.steps]}))
        return 0
    # The spec is the user's file, but its names are shown as text all the same.
    out.print(peer_text(spec.name, "bold") + f": {len(spec.steps)} steps, checked")
    for step in spec.steps:
        fed = ", ".join(f"{name}={ref}" for name, ref in step.inputs.items())
        out.print(Text("  ") + peer_text(f"{step.name:<12} {step.target}  <- {fed}", limit=None))
    outputs = ", ".join(f"{n}={r}" for n, r in spec.outputs.items())
    out.print(Text("  outputs      ") + peer_text(outputs, limit=None))
    return 0


def run_pipeline(options: RunOptions) -> int:
    """Run the pipeline; print who ran each step and the outputs.

    Raises:
        DeadlineExceededError: it did not finish within ``--timeout``.
    """
    import trio

    try:
        result = trio.run(_run, options)
    except trio.TooSlowError:
        raise DeadlineExceededError(
            f"the pipeline did not finish within {options.discovery.timeout:g} s"
        ) from None
    if options.discovery.json:
        print(json.dumps(result.to_dict()))
        return 0
    from rich.table import Table

    title = peer_text(str(options.spec)) + f" ({result.mode}, {result.total_ms:.0f} ms)"
    steps = Table(title=title, title_justify="left")
    for column in ("step", "model", "peer", "ms", "failed over"):
        steps.add_column(column, justify="right" if column == "ms" else "left")
    for t in result.steps:
        # Model names, peer IDs and error codes come from other peers.
        failed = joined_text(
            [peer_text(p[:12]) + "… (" + peer_text(code) + ")" for p, code in t.failed]
        )
        model = peer_text(t.model_name) + " " + peer_text(t.model_id[:16]) + "…"
        steps.add_row(peer_text(t.step), model, peer_text(t.peer_id), f"{t.ms:.1f}", failed)
    out.print(steps)
    out.print(outputs_table("outputs", result.outputs))
    return 0


async def _run(options: RunOptions) -> PipelineResult:
    """Run the pipeline: by the running peer of the identity (``running_peer_api``),
    else by a peer of this command's own."""
    import trio

    from p2pnet.inputs import parse_input
    from p2pnet.pipeline import Pipeline

    discovery = options.discovery
    pipeline = Pipeline.from_file(options.spec)
    inputs = dict(parse_input(spec) for spec in options.inputs)
    pipeline.check_inputs(inputs)  # the caller's mistakes before any network work
    api = await running_peer_api(discovery)
    if api is not None:
        # The spec as read above (from_file checked it; the peer checks it again).
        text = options.spec.read_bytes().decode("utf-8", errors="replace")
        async with api:
            reply = await api.run_pipeline(
                text,
                inputs,
                name=str(options.spec),
                mode=options.mode,
                timeout=discovery.timeout,
                max_price=discovery.max_price,
            )
        return _result_of(reply)
    join = discovery.swarm.resolve()
    if not join.bootstrap:
        raise UsageError(
            "a pipeline finds its models in a swarm: give --bootstrap /ip4/.../tcp/PORT/p2p/..."
        )
    identity, _, _ = load_identity(discovery.identity)
    async with discovery.joining_peer(identity, join) as peer:
        with trio.fail_after(discovery.timeout):
            result = await pipeline.run(
                peer, inputs, mode=options.mode, max_price=discovery.max_price
            )
        await finish_checks(peer)
        return result


def _result_of(reply: dict[str, Any]) -> PipelineResult:
    """The PipelineResult of a ``POST /api/pipeline`` reply (its ``to_dict()`` and the
    outputs as JSON tensors, ``tensors``)."""
    from p2pnet.inputs import tensor_from_json
    from p2pnet.pipeline import PipelineResult, StepTrace

    steps = [
        StepTrace(
            str(t["step"]),
            str(t["model_id"]),
            str(t["model"]),
            str(t["peer_id"]),
            float(t["ms"]),
            tuple((str(f["peer_id"]), str(f["error"])) for f in t["failed"]),
        )
        for t in reply["steps"]
    ]
    outputs = {name: tensor_from_json(name, value) for name, value in reply["tensors"].items()}
    mode = cast("Mode", reply["mode"])
    return PipelineResult(outputs, steps, mode, float(reply["total_ms"]))
