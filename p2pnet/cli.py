"""The ``p2pnet`` command: thin argument parsing over ``Peer`` and the runtime (docs/cli.md)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pnet import __version__
from p2pnet.config import SwarmJoin, config_path, default_identity_path, resolve_swarm
from p2pnet.core.model_id import parse_model_id
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.tensor import dtype_name
from p2pnet.discovery.service import Offer
from p2pnet.errors import (
    DeadlineExceededError,
    P2PNetError,
    UsageError,
)
from p2pnet.inputs import parse_input
from p2pnet.logs import configure_logging
from p2pnet.net.identity import Identity, load_or_create_identity, peer_id_of
from p2pnet.net.nat import NatConfig
from p2pnet.peer import Peer
from p2pnet.pipeline import Pipeline, PipelineResult
from p2pnet.runtime.onnx_model import inspect_model

__all__ = ["main"]

log = logging.getLogger(__name__)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _identity(args: argparse.Namespace) -> tuple[Identity, Path, bool]:
    path = Path(args.identity) if args.identity else default_identity_path()
    identity, created = load_or_create_identity(path)
    if created:
        log.info("created a new peer identity at %s", path)
    return identity, path, created


def _tensor_json(arr: npt.NDArray[Any]) -> dict[str, Any]:
    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": arr.tolist()}


def _schema_table(info: ModelInfo) -> Table:
    table = Table(title=f"{info.name} ({info.size:,} bytes)", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, specs in (("input", info.schema.inputs), ("output", info.schema.outputs)):
        for spec in specs:
            dims = ", ".join("?" if d is None else str(d) for d in spec.shape)
            table.add_row(kind, spec.name, spec.dtype, f"[{dims}]")
    return table


def cmd_id(args: argparse.Namespace) -> int:
    identity, path, created = _identity(args)
    if args.json:
        print(
            json.dumps({"peer_id": peer_id_of(identity), "identity": str(path), "created": created})
        )
    else:
        out.print(peer_id_of(identity))
        err.print(f"identity: {path}" + (" (new)" if created else ""))
    return 0


def cmd_model_inspect(args: argparse.Namespace) -> int:
    infos = [inspect_model(p) for p in args.files]
    if args.json:
        data = [info.to_dict() for info in infos]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for info in infos:
            out.print(info.model_id)
            out.print(_schema_table(info))
    return 0


def _figure(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cmd_model_import(args: argparse.Namespace) -> int:
    from p2pnet.runtime.convert import import_model, parse_input_decl

    report = import_model(
        args.source,
        args.out,
        framework=args.framework,
        inputs=[parse_input_decl(spec) for spec in args.input],
        output_names=args.output,
        opset=args.opset,
        tolerance=args.tolerance,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    check = report.verification
    out.print(report.info.model_id)
    out.print(_schema_table(report.info))
    out.print(
        f"from {report.source} ({report.source_kind}) by {report.exporter}, opset {report.opset}",
        markup=False,
    )
    shapes = ", ".join(f"{k} {list(v)}" for k, v in report.sample_shapes.items())
    source = "PyTorch" if report.framework == "torch" else "scikit-learn"
    out.print(
        f"checked against {source} on {shapes}: max abs deviation {check.max_abs:.3g} "
        f"(tolerance {check.tolerance:g})",
        markup=False,
    )
    for c in check.comparisons:
        if c.is_label:
            out.print(f"  {c.name}: {_figure(c.agreement, '.1%')} equal", markup=False)
        else:
            out.print(f"  {c.name}: max abs deviation {_figure(c.max_abs, '.3g')}", markup=False)
    for name in check.unchecked:
        out.print(f"  {name}: not checked (the source model has no such output)", markup=False)
    return 0


def cmd_model_quantize(args: argparse.Namespace) -> int:
    from p2pnet.runtime.convert import quantize_model

    report = quantize_model(args.source, args.out, runs=args.runs, weight_type=args.weight_type)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    before, after = report.before, report.after
    shapes = ", ".join(f"{k} {list(v)}" for k, v in report.sample_shapes.items())
    table = Table(
        title=f"dynamic int8 quantization ({report.weight_type} weights, "
        f"{report.quantized_weights} weight tensors)",
        title_justify="left",
    )
    for column in ("", "before", "after", "change"):
        table.add_column(column, justify="right")
    table.add_row(
        "size", f"{before.size:,} B", f"{after.size:,} B", f"{report.size_ratio - 1:+.1%}"
    )
    table.add_row(
        f"latency p50 ({report.runs} runs)",
        f"{before.p50_ms:.3f} ms",
        f"{after.p50_ms:.3f} ms",
        f"{report.speedup:.2f}x faster",
    )
    out.print(table)
    deviations = Table(title=f"outputs on the same inputs ({shapes})", title_justify="left")
    for column in ("output", "dtype", "max abs dev", "mean abs dev", "same argmax/label"):
        deviations.add_column(column, justify="left" if column in ("output", "dtype") else "right")
    for c in report.outputs:
        deviations.add_row(
            c.name,
            c.dtype,
            _figure(c.max_abs, ".4g"),
            _figure(c.mean_abs, ".4g"),
            _figure(c.agreement, ".1%"),
        )
    out.print(deviations)
    out.print(f"before  {before.model_id}  {before.path}", markup=False)
    out.print(f"after   {after.model_id}  {after.path}", markup=False)
    return 0


def _swarm_join(args: argparse.Namespace) -> SwarmJoin:
    """The bootstrap peers and swarm key of ``--swarm``, ``--bootstrap`` and ``--swarm-key``."""
    return resolve_swarm(
        args.swarm,
        bootstrap=args.bootstrap,
        swarm_key=Path(args.swarm_key) if args.swarm_key is not None else None,
    )


async def _serve(args: argparse.Namespace) -> None:
    from p2pnet.status import keep_status

    join = _swarm_join(args)
    identity, _, _ = _identity(args)
    # Signals are caught before "ready" is printed: a supervisor that stops the peer as
    # soon as it is ready must get a clean shutdown, not the default handler's kill.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        peer = Peer(
            identity,
            listen=args.listen,
            max_concurrency=args.max_concurrency,
            bootstrap=join.bootstrap,
            swarm_key=join.swarm_key,
            announce=args.announce,
            # A bootstrap peer is also a circuit relay for peers behind NATs.
            nat=NatConfig(relay_service=args.role == "bootstrap", reachability=args.reachability),
        )
        for path, tasks, allow in args.serve:
            allowed = args.allow + allow if allow is not None or args.allow else None
            peer.serve(path, tasks=args.task + tasks, allow=allowed)
        async with peer:
            status = peer.status()
            role = " (bootstrap)" if args.role == "bootstrap" else ""
            out.print(f"peer {status.peer_id}{role}")
            for addr in status.listen_addrs:
                out.print(f"listening {addr}")
            if args.announce:
                for addr in status.announced_addrs:
                    out.print(f"announcing {addr}")
            if status.swarm_key_fingerprint is not None:
                out.print(f"private network, swarm key {status.swarm_key_fingerprint}")
            for model in status.models:  # tasks: an adapter's own too
                out.print(f"serving {model.model_id} {model.name} {','.join(model.tasks)}".rstrip())
                if model.allow is not None:
                    out.print(f"  only for {', '.join(model.allow) or 'this peer'}")
            if status.models:
                out.print(f"announced to {await peer.announce()} peers")
            async with trio.open_nursery() as nursery:
                status_path = await nursery.start(
                    functools.partial(keep_status, peer, role=args.role, swarm=args.swarm)
                )
                log.info("status in %s", status_path)
                out.print("ready (Ctrl-C to stop)", style="bold")
                sys.stdout.flush()
                async for signum in signals:
                    err.print(f"{signal.Signals(signum).name}: stopping")
                    break
                nursery.cancel_scope.cancel()


def cmd_peer(args: argparse.Namespace) -> int:
    trio.run(_serve, args)
    err.print("stopped")
    return 0


def _discovery_target(
    args: argparse.Namespace, join: SwarmJoin
) -> tuple[str | None, str | None]:
    """(task, model ID) from --task/--model; exactly one is set."""
    if (args.task is None) == (args.model is None):
        raise UsageError("give exactly one of --task TAG or --model MODEL_ID")
    if not join.bootstrap:
        raise UsageError(
            "finding models needs a swarm to ask: give --bootstrap /ip4/.../tcp/PORT/p2p/12D3... "
            "or --swarm NAME"
        )
    return args.task, parse_model_id(args.model) if args.model is not None else None


def _joining_peer(args: argparse.Namespace, identity: Identity, join: SwarmJoin) -> Peer:
    """A peer for find, call and pipeline run: serves nothing, and fails to start unless
    it joins the swarm."""
    return Peer(
        identity,
        listen=args.listen,
        bootstrap=join.bootstrap,
        swarm_key=join.swarm_key,
        require_join=True,
    )


async def _call(args: argparse.Namespace) -> tuple[str, dict[str, npt.NDArray[Any]]]:
    inputs = dict(parse_input(spec) for spec in args.input)
    join = _swarm_join(args)
    identity, _, _ = _identity(args)
    if args.target:
        if len(args.target) != 2 or args.task is not None or args.model is not None:
            raise UsageError("give ADDRESS MODEL_ID, or --task/--model with --bootstrap")
        address, model_id = args.target[0], parse_model_id(args.target[1])
        async with Peer(identity, listen=args.listen, swarm_key=join.swarm_key) as peer:
            outputs = await peer.invoke(address, model_id, inputs, timeout=args.timeout)
        return f"{model_id} on {address.rsplit('/', 1)[-1]}", outputs
    task, model = _discovery_target(args, join)
    async with _joining_peer(args, identity, join) as peer:
        offer, outputs = await peer.call_with_offer(
            inputs, task=task, model=model, timeout=args.timeout
        )
    return f"{offer.record.name} {offer.record.model_id} on {offer.record.peer_id}", outputs


def cmd_call(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    served_by, outputs = trio.run(_call, args)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        print(json.dumps({name: _tensor_json(arr) for name, arr in outputs.items()}))
        return 0
    out.print(_outputs_table(f"{served_by} ({elapsed_ms:.0f} ms)", outputs))
    return 0


def _outputs_table(title: str, outputs: dict[str, npt.NDArray[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("output", "dtype", "shape", "value"):
        table.add_column(column)
    with np.printoptions(threshold=20, edgeitems=3, precision=4, suppress=True):
        for name, arr in outputs.items():
            table.add_row(name, dtype_name(arr), str(list(arr.shape)), str(arr))
    return table


async def _find(args: argparse.Namespace) -> list[Offer]:
    join = _swarm_join(args)
    task, model = _discovery_target(args, join)
    identity, _, _ = _identity(args)
    async with _joining_peer(args, identity, join) as peer:
        return await peer.find(task=task, model=model, timeout=args.timeout)


def cmd_find(args: argparse.Namespace) -> int:
    offers = trio.run(_find, args)
    if args.json:
        print(json.dumps([offer.to_dict() for offer in offers], indent=2))
        return 0 if offers else 1
    if not offers:
        err.print("no peer offers it")
        return 1
    out.print(f"{len(offers)} offer(s), best first")
    for offer in offers:
        r = offer.record
        out.print(f"\n[bold]{r.name}[/]  {r.model_id}  {offer.rtt * 1000:.1f} ms")
        out.print(f"  tasks    {', '.join(r.tasks) or '-'}")
        out.print(f"  peer     {r.peer_id}")
        for addr in r.addrs:
            out.print(f"  address  {addr}/p2p/{r.peer_id}")
        out.print(f"  inputs   {', '.join(t.describe() for t in r.schema.inputs)}")
        out.print(f"  outputs  {', '.join(t.describe() for t in r.schema.outputs)}")
    return 0


def cmd_pipeline_check(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_file(args.spec)
    spec = pipeline.spec
    if args.json:
        print(json.dumps({"pipeline": spec.name, "steps": [s.name for s in spec.steps]}))
        return 0
    out.print(f"[bold]{spec.name}[/]: {len(spec.steps)} steps, checked")
    for step in spec.steps:
        fed = ", ".join(f"{name}={ref}" for name, ref in step.inputs.items())
        out.print(f"  {step.name:<12} {step.target}  <- {fed}")
    out.print("  outputs      " + ", ".join(f"{n}={r}" for n, r in spec.outputs.items()))
    return 0


async def _pipeline_run(args: argparse.Namespace) -> PipelineResult:
    pipeline = Pipeline.from_file(args.spec)
    inputs = dict(parse_input(spec) for spec in args.input)
    pipeline.check_inputs(inputs)  # the caller's mistakes before any network work
    join = _swarm_join(args)
    if not join.bootstrap:
        raise UsageError(
            "a pipeline finds its models in a swarm: give --bootstrap /ip4/.../tcp/PORT/p2p/..."
        )
    identity, _, _ = _identity(args)
    async with _joining_peer(args, identity, join) as peer:
        with trio.fail_after(args.timeout):
            return await pipeline.run(peer, inputs, mode=args.mode)


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    try:
        result = trio.run(_pipeline_run, args)
    except trio.TooSlowError:
        raise DeadlineExceededError(
            f"the pipeline did not finish within {args.timeout:g} s"
        ) from None
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    steps = Table(
        title=f"{args.spec} ({result.mode}, {result.total_ms:.0f} ms)", title_justify="left"
    )
    for column in ("step", "model", "peer", "ms", "failed over"):
        steps.add_column(column, justify="right" if column == "ms" else "left")
    for t in result.steps:
        failed = ", ".join(f"{p[:12]}… ({code})" for p, code in t.failed) or "-"
        model = f"{t.model_name} {t.model_id[:16]}…"
        steps.add_row(t.step, model, t.peer_id, f"{t.ms:.1f}", failed)
    out.print(steps)
    out.print(_outputs_table("outputs", result.outputs))
    return 0


def cmd_swarm_key_new(args: argparse.Namespace) -> int:
    from p2pnet.net.pnet import (
        format_swarm_key,
        generate_swarm_key,
        restrict_swarm_key_output,
        write_swarm_key_file,
    )

    key = generate_swarm_key()
    if args.out:
        path = write_swarm_key_file(key, args.out)
        err.print(f"swarm key {key.fingerprint} written to {path}", markup=False)
        return 0
    if not restrict_swarm_key_output(sys.stdout.fileno()) and sys.stdout.isatty():
        err.print("the key goes to the terminal: redirect it, e.g. > grid.key", markup=False)
    sys.stdout.write(format_swarm_key(key))
    sys.stdout.flush()
    err.print(f"swarm key {key.fingerprint}", markup=False)
    return 0


def cmd_swarm_key_fingerprint(args: argparse.Namespace) -> int:
    from p2pnet.net.pnet import load_swarm_key

    print(load_swarm_key(args.file).fingerprint)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from p2pnet.status import read_statuses

    statuses = [s for s in read_statuses() if args.pid is None or s.data.get("pid") == args.pid]
    if args.json:
        print(json.dumps([s.data | {"age_s": round(s.age, 1)} for s in statuses], indent=2))
        return 0 if statuses else 1
    if not statuses:
        err.print("no running peer on this machine (p2pnet peer writes its status when ready)")
        return 1
    for i, st in enumerate(statuses):
        d = st.data
        if i:
            out.print()
        role = " (bootstrap)" if d.get("role") == "bootstrap" else ""
        out.print(f"[bold]peer {d['peer_id']}[/]{role}  pid {d['pid']}")
        if st.stale:
            out.print(f"  [bold red]not updated for {st.age:.0f} s: the peer may be hung[/]")
        swarm = d.get("swarm") or "-"
        key = d.get("swarm_key_fingerprint")
        out.print(f"  swarm        {swarm}" + (f", private (key {key})" if key else ""))
        for addr in d.get("listen_addrs", []):
            out.print(f"  listening    {addr}", markup=False)
        if d.get("announced_addrs") != d.get("listen_addrs"):
            for addr in d.get("announced_addrs", []):
                out.print(f"  announcing   {addr}", markup=False)
        out.print(f"  reachability {d.get('reachability', 'unknown')}")
        c = d["connections"]
        out.print(
            f"  connections  {c['total']} ({c['direct']} direct, {c['relayed']} relayed)"
        )
        out.print(f"  routing      {d.get('routing_table', 0)} peers in the DHT routing table")
        for m in d.get("models", []):
            tasks = ", ".join(m["tasks"]) or "-"
            out.print(f"  serving      {m['name']} {m['model_id']}  tasks {tasks}", markup=False)
            if m.get("allow") is not None:
                allowed = ", ".join(m["allow"]) or "this peer only"
                out.print(f"               only for {allowed}", markup=False)
    return 0


class _ServeAction(argparse.Action):
    """``--serve FILE``: appends (FILE, tasks, allow) to ``serve``; ``--task`` fills the
    tasks, ``--allow`` the access list (None: everyone)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        served = list(getattr(namespace, "serve", None) or [])
        served.append([values, [], None])
        namespace.serve = served


class _TaskAction(argparse.Action):
    """``--task TAG``: a task of the last ``--serve`` model, or of all if none came yet."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        served = getattr(namespace, "serve", None) or []
        if served:
            served[-1][1].append(values)
        else:
            namespace.task = [*(getattr(namespace, "task", None) or []), values]


class _AllowAction(argparse.Action):
    """``--allow PEER[,PEER...]``: the peers the last ``--serve`` model is served to, or
    every model's if none came yet."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        peers = [p.strip() for p in str(values).split(",") if p.strip()]
        served = getattr(namespace, "serve", None) or []
        if served:
            served[-1][2] = [*(served[-1][2] or []), *peers]
        else:
            namespace.allow = [*(getattr(namespace, "allow", None) or []), *peers]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pnet", description="A peer-to-peer network for AI models."
    )
    parser.add_argument("--version", action="version", version=f"p2pnet {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (-vv adds py-libp2p warnings, -vvv everything)",
    )
    common.add_argument(
        "--identity", metavar="FILE", help=f"peer key file (default {default_identity_path()})"
    )
    grid = argparse.ArgumentParser(add_help=False)
    grid.add_argument(
        "--swarm",
        metavar="NAME",
        help=f"join the swarm [swarms.NAME] of {config_path()}: its bootstrap peers and "
        "swarm key (default: none, nothing is dialled that is not named)",
    )
    grid.add_argument(
        "--swarm-key",
        metavar="FILE",
        help="a private network's key file (p2pnet swarm-key new): only peers with the same "
        "key connect; TCP only",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("id", parents=[common], help="create or show this peer's identity")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_id)

    model = sub.add_parser("model", help="work with model files")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    p = model_sub.add_parser(
        "inspect", parents=[common], help="model ID (CID), size, inputs and outputs of ONNX files"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_model_inspect)

    p = model_sub.add_parser(
        "import",
        parents=[common],
        help="convert a PyTorch or scikit-learn model to ONNX, checked against the original",
        description="Convert a TorchScript file (torch.jit.save), an exported program "
        "(torch.export.save, .pt2) or a pickled scikit-learn estimator or Pipeline to ONNX, "
        "check it (ONNX checker, a run in p2pnet's runtime, the same sample inputs through "
        "the original model) and write it. WARNING: --from sklearn unpickles SRC, which runs "
        "code from the file: import only files you trust. Needs: pip install 'p2pnet[models]'.",
    )
    p.add_argument("source", metavar="SRC", help="the model file to convert")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (replaced if present)")
    p.add_argument(
        "--from",
        dest="framework",
        required=True,
        choices=("torch", "sklearn"),
        help="torch: TorchScript or exported program; sklearn: joblib/pickle file (runs code "
        "from the file when loaded: trusted files only)",
    )
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        required=True,
        metavar="NAME:DTYPE:SHAPE",
        help="a model input, e.g. x:float32:N,4 (a number is a fixed size, a name a symbolic "
        "one, ? any size); repeatable, in the order the model takes them",
    )
    p.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="name of the model's next output (repeatable, in order; default: output, "
        "output_0.. for PyTorch, label/probabilities or variable for scikit-learn)",
    )
    p.add_argument(
        "--opset", type=int, default=18, metavar="N", help="ONNX opset to target (default 18)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        metavar="TOL",
        help="fail if an output deviates from the original's by more than TOL x max(1, |value|) "
        "(default 1e-4)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_model_import)

    p = model_sub.add_parser(
        "quantize",
        parents=[common],
        help="dynamic int8 quantization of an ONNX model: size, latency and deviation",
        description="Quantize an ONNX model's weights to 8 bits (onnxruntime dynamic "
        "quantization) and compare both models on the same sample inputs: file size, median "
        "latency, output deviation and, for classifiers, agreeing labels.",
    )
    p.add_argument("source", metavar="IN.onnx")
    p.add_argument("out", metavar="OUT.onnx", help="the quantized model (replaced if present)")
    p.add_argument(
        "--runs", type=int, default=50, metavar="N", help="timed runs per model (default 50)"
    )
    p.add_argument(
        "--weight-type",
        choices=("qint8", "quint8"),
        default="qint8",
        help="weight encoding (default qint8: faster on x86, same deviation)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_model_quantize)

    p = sub.add_parser(
        "peer", parents=[common, grid], help="run a peer that serves models until Ctrl-C"
    )
    p.add_argument(
        "--serve",
        action=_ServeAction,
        default=[],
        metavar="FILE",
        help="ONNX file or adapter manifest (.json, docs/adapters.md) to serve (repeatable)",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="address to listen on (repeatable; default /ip4/127.0.0.1/tcp/0)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        metavar="N",
        help="concurrent runs per model (default 2)",
    )
    p.add_argument(
        "--task",
        action=_TaskAction,
        default=[],
        metavar="TAG",
        help="task the model of the --serve before it is announced for, e.g. "
        "sentiment-analysis (repeatable; before any --serve: for every model)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="peer to join the swarm through (repeatable); none starts a new swarm",
    )
    p.add_argument(
        "--role",
        choices=("peer", "bootstrap"),
        default="peer",
        help="bootstrap: a DHT peer that others join through (every peer is a DHT server) "
        "and a relay for peers behind NATs",
    )
    p.add_argument(
        "--reachability",
        choices=("auto", "public", "private"),
        default="auto",
        help="auto: ask the bootstrap peers whether they can dial this peer back (default); "
        "private: always reserve a relay slot on them",
    )
    p.add_argument(
        "--allow",
        action=_AllowAction,
        default=[],
        metavar="PEER,...",
        help="serve the model of the --serve before it only to these peer IDs (repeatable; "
        "before any --serve: every model); others get permission_denied",
    )
    p.add_argument(
        "--announce",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="address to put in this peer's records instead of the listen addresses "
        "(repeatable), e.g. a public address forwarded to --listen",
    )
    p.set_defaults(func=cmd_peer)

    discovery = argparse.ArgumentParser(add_help=False, parents=[grid])
    discovery.add_argument("--task", metavar="TAG", help="find the model by task")
    discovery.add_argument("--model", metavar="MODEL_ID", help="find the model by its ID")
    discovery.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer of the swarm to ask (repeatable)",
    )
    discovery.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default 30)",
    )
    discovery.add_argument(
        "--listen", action="append", default=None, metavar="MULTIADDR", help=argparse.SUPPRESS
    )
    discovery.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "call",
        parents=[common, discovery],
        help="call a model on a given peer, or found by task or ID, and print its outputs",
    )
    p.add_argument(
        "target",
        nargs="*",
        metavar="ADDRESS MODEL_ID",
        help="the peer (/ip4/.../tcp/PORT/p2p/12D3...) and the model ID (bafkrei...)",
    )
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input: NAME=@file.npy, NAME=JSON, NAME:DTYPE=JSON or NAME=text (repeatable)",
    )
    p.set_defaults(func=cmd_call)

    p = sub.add_parser(
        "find",
        parents=[common, discovery],
        help="find models in the swarm by task or ID: providers, schemas, latency",
    )
    p.set_defaults(func=cmd_find)

    pipeline = sub.add_parser("pipeline", help="run models on different peers as one pipeline")
    pipeline_sub = pipeline.add_subparsers(
        dest="pipeline_command", required=True, metavar="COMMAND"
    )
    p = pipeline_sub.add_parser(
        "check", parents=[common], help="check a pipeline spec without running it"
    )
    p.add_argument("spec", type=Path, metavar="SPEC", help="the spec (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_pipeline_check)
    p = pipeline_sub.add_parser(
        "run",
        parents=[common, discovery],
        help="find a provider for every step, check the schemas, run, and show who ran what",
    )
    p.add_argument("spec", type=Path, metavar="SPEC", help="the spec (YAML or JSON)")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline input, as for 'p2pnet call' (repeatable)",
    )
    p.add_argument(
        "--mode",
        choices=("orchestrated", "forwarded"),
        default="orchestrated",
        help="orchestrated: this peer calls every step (independent steps at once); "
        "forwarded: each step's peer sends the tensors on to the next step's peer",
    )
    p.set_defaults(func=cmd_pipeline_run)
    keys = sub.add_parser("swarm-key", help="private network keys")
    keys_sub = keys.add_subparsers(dest="swarm_key_command", required=True, metavar="COMMAND")
    p = keys_sub.add_parser(
        "new",
        parents=[common],
        help="a new random swarm key file on stdout (p2pnet swarm-key new > grid.key)",
    )
    p.add_argument("--out", metavar="FILE", help="write it to FILE (mode 0600, never replaced)")
    p.set_defaults(func=cmd_swarm_key_new)
    p = keys_sub.add_parser(
        "fingerprint", parents=[common], help="a key file's fingerprint, to compare keys"
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_swarm_key_fingerprint)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="what the peers running on this machine are doing",
    )
    p.add_argument("--pid", type=int, metavar="PID", help="only the peer of this process")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    from p2pnet.simulate.cli import add_simulate_parser

    add_simulate_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if getattr(args, "listen", None) is None and args.command in (
        "peer",
        "call",
        "find",
        "pipeline",
    ):
        args.listen = ["/ip4/127.0.0.1/tcp/0"]
    if args.command == "peer" and args.max_concurrency < 1:
        parser.error("--max-concurrency must be at least 1")
    try:
        return int(args.func(args))
    except P2PNetError as exc:
        # escape: messages hold brackets ("float32[n]", "p2pnet[models]") that rich
        # would otherwise take for markup and drop.
        err.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
