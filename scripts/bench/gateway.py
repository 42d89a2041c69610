"""Benchmark the Open Inference Protocol gateways against peer.call, all in one run.

Usage: python scripts/bench/gateway.py [--models build/models] [--out build/bench] [--quick]

Everything runs on 127.0.0.1. A child process (this file with --serve-child) runs a
bootstrap peer and a provider of iris and identity (py-libp2p: TCP + Noise + Yamux). This
process runs the caller peer, which joins through the bootstrap peer and serves its HTTP
app (OIP REST, hypercorn) and the OIP gRPC service (grpcio). A second child (this file
with --client-child) runs tritonclient, as a user's program would, in a process of its
own. The same calls then go three ways, by model ID, in alternating blocks so that all
three see the same machine:

  peer_call   await peer.call(...) through the Python API, in the caller's trio loop
              (the baseline: what both gateways do after decoding a request)
  http        tritonclient.http, binary tensor data both ways, keep-alive connection
  grpc        tritonclient.grpc, raw contents both ways, one channel

Each path is timed where its caller is: peer_call in this process, the gateways in the
client child. Figures: p50 and p90 per path for iris
(1x4 float32) and for identity with a 16 MiB float32 tensor; the gateway overhead per
call = p50 of the gateway minus p50 of peer_call. Target: <= 1 ms added on iris.

In the same blocks, each client's health check (is_server_live: HTTP GET
/v2/health/live through the app's token guard, gRPC ServerLive, which never enters the
trio loop) times the client library and its transport alone: what any server behind
that client costs at least.

Writes <out>/gateway.json and prints a table. --quick cuts iterations (< 30 s).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, machine_info, pct, start_child, stop_child, targets_table

from p2pnet.gateway.app import serve_http
from p2pnet.gateway.oip_grpc import serve_grpc
from p2pnet.peer import Peer

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("iris", "identity")
PATHS = ("peer_call", "http", "grpc")
BULK_MIB = 16
CALL_TIMEOUT = 120.0  # seconds, per call
CHILD_START_TIMEOUT = 120.0
CHILD_LIFETIME = 900.0  # the serving child exits after this long whatever happens
TARGET_IRIS_OVERHEAD_MS = 1.0
TOKEN = "bench-gateway-token"
IRIS_X = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)


@dataclass(frozen=True)
class Plan:
    """Samples per path: iris in ``blocks`` blocks of ``iris_block``, identity
    ``bulk`` calls; ``warmup`` untimed iris calls per path first."""

    warmup: int
    blocks: int
    iris_block: int
    bulk: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(10, 6, 10, 2) if quick else cls(50, 30, 15, 8)


def ensure_models(models_dir: Path) -> dict[str, Path]:
    """The benchmark's model files, built with scripts/build_models.py if any is missing."""
    paths = {name: models_dir / f"{name}.onnx" for name in MODELS}
    if all(p.is_file() for p in paths.values()):
        return paths
    spec = importlib.util.spec_from_file_location(
        "build_models", REPO_ROOT / "scripts" / "build_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: dict[str, Path] = module.build_all(models_dir)
    return {name: Path(built[name]) for name in MODELS}


# ---------------------------------------------------------------- serving child


async def child_main(models_dir: Path) -> None:
    """A bootstrap peer and a provider of iris and identity, until stdin closes."""
    paths = ensure_models(models_dir)
    async with Peer() as boot, Peer(bootstrap=[boot.addrs[0]]) as provider:
        ids = {name: provider.serve(path).model_id for name, path in paths.items()}
        if await provider.announce() < 1:
            raise SystemExit("the provider could not announce its models")
        print(json.dumps({"bootstrap": boot.addrs[0], "model_ids": ids}), flush=True)
        with trio.move_on_after(CHILD_LIFETIME):
            # The parent closes our stdin when it is done (or dies).
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # type: ignore[call-arg]


def start_client(http_url: str, grpc_target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--client-child", http_url, grpc_target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def client_main(http_url: str, grpc_target: str) -> None:
    """Answer the parent's requests, one JSON line each, until stdin closes:
    ``{"op": "check"}`` -> iris labels and whether identity echoed the bulk tensor, per
    gateway; ``{"op": "timed", "path", "input", "n"}`` -> durations in seconds;
    ``{"op": "live", "path", "n"}`` -> durations of health checks."""
    ids = json.loads(sys.stdin.readline())
    clients = TritonClients(http_url, grpc_target)
    inputs = {"iris": (ids["iris"], IRIS_X, "label"), "bulk": (ids["identity"], bulk(), "y")}
    try:
        for line in sys.stdin:
            ask = json.loads(line)
            answer: Any
            if ask["op"] == "check":
                answer = {
                    path: {
                        "label": clients.call(path, *inputs["iris"]).tolist(),
                        "echo": bool(np.array_equal(clients.call(path, *inputs["bulk"]), bulk())),
                    }
                    for path in ("http", "grpc")
                }
            elif ask["op"] == "timed":
                answer = clients.timed(ask["n"], ask["path"], *inputs[ask["input"]])
            else:
                answer = clients.timed_live(ask["n"], ask["path"])
            print(json.dumps(answer), flush=True)
    finally:
        clients.close()


@functools.cache
def bulk() -> np.ndarray:
    """The identity call's tensor, the same in both processes."""
    return np.random.default_rng(0).random(BULK_MIB << 18, dtype=np.float32)


# ---------------------------------------------------------------- clients


class TritonClients:
    """tritonclient's HTTP and gRPC clients of the caller's gateways (blocking: used in
    the client child)."""

    def __init__(self, http_url: str, grpc_target: str) -> None:
        import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
        import tritonclient.http as httpclient  # type: ignore[import-untyped]

        self.httpclient, self.grpcclient = httpclient, grpcclient
        self.http = httpclient.InferenceServerClient(
            http_url.removeprefix("http://"),
            connection_timeout=CALL_TIMEOUT,
            network_timeout=CALL_TIMEOUT,
        )
        self.grpc = grpcclient.InferenceServerClient(grpc_target)
        self.http_headers = {"Authorization": f"Bearer {TOKEN}"}
        self.grpc_headers = {"authorization": f"Bearer {TOKEN}"}

    def call(self, path: str, model: str, x: np.ndarray, output: str) -> np.ndarray:
        """One inference of ``model`` on input ``x`` through ``path``; its ``output``."""
        if path == "http":
            h = self.httpclient
            inp = h.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = [h.InferRequestedOutput(output, binary_data=True)]
            result = self.http.infer(model, [inp], outputs=out, headers=self.http_headers)
        else:
            g = self.grpcclient
            inp = g.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = [g.InferRequestedOutput(output)]
            result = self.grpc.infer(
                model, [inp], outputs=out, headers=self.grpc_headers, client_timeout=CALL_TIMEOUT
            )
        arr: np.ndarray = result.as_numpy(output)
        return arr

    def timed(self, n: int, path: str, model: str, x: np.ndarray, output: str) -> list[float]:
        """Durations in seconds of ``n`` sequential calls, timed in this thread."""
        out = []
        for _ in range(n):
            start = time.perf_counter()
            self.call(path, model, x, output)
            out.append(time.perf_counter() - start)
        return out

    def timed_live(self, n: int, path: str) -> list[float]:
        """Durations in seconds of ``n`` health checks of ``path``'s client."""
        client = self.http if path == "http" else self.grpc
        out = []
        for _ in range(n):
            start = time.perf_counter()
            if not client.is_server_live():
                raise RuntimeError(f"{path}: the gateway says it is not live")
            out.append(time.perf_counter() - start)
        return out

    def close(self) -> None:
        self.http.close()
        self.grpc.close()


async def run(plan: Plan, child: dict[str, Any]) -> dict[str, Any]:
    iris_id = child["model_ids"]["iris"]
    ident_id = child["model_ids"]["identity"]
    bulk_x = bulk()
    samples: dict[str, list[float]] = {f"{m}_{p}": [] for m in ("iris", "bulk") for p in PATHS}
    samples |= {f"live_{p}": [] for p in ("http", "grpc")}

    async with Peer(bootstrap=[child["bootstrap"]]) as caller, trio.open_nursery() as nursery:
        http_url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
        grpc_target = await nursery.start(serve_grpc, caller, "127.0.0.1", 0, TOKEN)
        client = start_client(http_url, grpc_target)
        assert client.stdin is not None and client.stdout is not None
        client_in, client_out = client.stdin, client.stdout

        def ask_sync(request: dict[str, Any]) -> Any:
            client_in.write(json.dumps(request) + "\n")
            client_in.flush()
            line = client_out.readline()
            if not line:
                raise RuntimeError("the client process ended (see its error above)")
            return json.loads(line)

        async def ask(request: dict[str, Any]) -> Any:
            # Blocking pipe I/O in a thread: the trio loop keeps serving the gateways.
            return await trio.to_thread.run_sync(ask_sync, request)

        client_in.write(json.dumps(child["model_ids"]) + "\n")

        async def peer_timed(n: int, model: str, x: np.ndarray, output: str) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                await caller.call({"x": x}, model=model, timeout=CALL_TIMEOUT)
                out.append(time.perf_counter() - start)
            return out

        async def block(path: str, n: int, which: str) -> list[float]:
            if path == "peer_call":
                if which == "iris":
                    return await peer_timed(n, iris_id, IRIS_X, "label")
                return await peer_timed(n, ident_id, bulk_x, "y")
            durations: list[float] = await ask(
                {"op": "timed", "path": path, "input": which, "n": n}
            )
            return durations

        try:
            # Every path answers what the model answers.
            want = (await caller.call({"x": IRIS_X}, model=iris_id))["label"].tolist()
            for path, got in (await ask({"op": "check"})).items():
                if got["label"] != want or not got["echo"]:
                    raise RuntimeError(f"{path} answered {got['label']}, not {want}, or the "
                                       "identity model's tensor changed on the way")  # fmt: skip
            for path in PATHS:
                await block(path, plan.warmup, "iris")
            for _ in range(plan.blocks):
                for path in PATHS:
                    samples[f"iris_{path}"] += await block(path, plan.iris_block, "iris")
                for path in ("http", "grpc"):
                    samples[f"live_{path}"] += await ask(
                        {"op": "live", "path": path, "n": plan.iris_block}
                    )
            for _ in range(plan.bulk):
                for path in PATHS:
                    samples[f"bulk_{path}"] += await block(path, 1, "bulk")
        finally:
            client_in.close()
            await trio.to_thread.run_sync(client.wait)
            nursery.cancel_scope.cancel()

    figures: dict[str, float] = {}
    for key, values in samples.items():
        figures[f"{key}_p50_ms"] = pct(values, 0.5) * 1e3
        figures[f"{key}_p90_ms"] = pct(values, 0.9) * 1e3
    for model in ("iris", "bulk"):
        base = figures[f"{model}_peer_call_p50_ms"]
        for path in ("http", "grpc"):
            figures[f"{model}_{path}_overhead_p50_ms"] = figures[f"{model}_{path}_p50_ms"] - base
    targets = [
        {
            "name": f"{path} gateway overhead on iris, p50",
            "value": figures[f"iris_{path}_overhead_p50_ms"],
            "unit": "ms",
            "target": f"<= {TARGET_IRIS_OVERHEAD_MS:g}",
            "pass": figures[f"iris_{path}_overhead_p50_ms"] <= TARGET_IRIS_OVERHEAD_MS,
        }
        for path in ("http", "grpc")
    ]
    return {
        "figures": figures,
        "samples": {key: len(values) for key, values in samples.items()},
        "targets": targets,
    }


# ---------------------------------------------------------------- report


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = report["figures"]
    console = Console()
    what = {
        "peer_call": "await peer.call (Python API), the baseline",
        "http": "tritonclient.http, binary tensor data",
        "grpc": "tritonclient.grpc, raw contents",
    }
    for model, title in (
        ("iris", "iris (1x4 float32), ms"),
        ("bulk", f"identity, {BULK_MIB} MiB float32 tensor, ms"),
    ):
        table = Table(title=title, title_justify="left")
        for col in ("path", "p50", "p90", "added p50", "what it is"):
            table.add_column(col, justify="left" if col in ("path", "what it is") else "right")
        for path in PATHS:
            added = f.get(f"{model}_{path}_overhead_p50_ms")
            table.add_row(
                path,
                f"{f[f'{model}_{path}_p50_ms']:.3f}",
                f"{f[f'{model}_{path}_p90_ms']:.3f}",
                "" if added is None else f"{added:+.3f}",
                what[path],
            )
        console.print(table)
    floor = Table(title="the clients alone: is_server_live, ms", title_justify="left")
    for col in ("client", "p50", "p90", "what it is"):
        floor.add_column(col, justify="left" if col in ("client", "what it is") else "right")
    floor.add_row("http", f"{f['live_http_p50_ms']:.3f}", f"{f['live_http_p90_ms']:.3f}",
                  "GET /v2/health/live: hypercorn, token guard, starlette")  # fmt: skip
    floor.add_row("grpc", f"{f['live_grpc_p50_ms']:.3f}", f"{f['live_grpc_p90_ms']:.3f}",
                  "ServerLive: grpcio, no trio hop")  # fmt: skip
    console.print(floor)
    console.print(targets_table(report["targets"], lambda v: f"{v:.3f}"))
    m = report["machine"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {m['load_average_at_start']}, "
        f"Python {m['python']}, grpcio {m['grpcio']}, tritonclient {m['tritonclient']}, "
        f"hypercorn {m['hypercorn']}, {report['date']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--quick", action="store_true", help="few iterations (< 30 s)")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_child:
        client_main(*args.client_child)
        return
    if args.serve_child:
        trio.run(child_main, args.models)
        return

    started = time.perf_counter()
    ensure_models(args.models)
    plan = Plan.for_mode(args.quick)
    machine = machine_info("grpcio", "tritonclient", "hypercorn", "onnxruntime")
    proc, child = start_child(__file__, args.models, CHILD_START_TIMEOUT)
    try:
        result = trio.run(run, plan, child)
    finally:
        stop_child(proc)
    report = {
        "benchmark": "gateway",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "code": git_state(),
        "network": "127.0.0.1 only",
        "units": {"latency": "ms", "bulk tensor": f"{BULK_MIB} MiB (2^20 bytes) of float32"},
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report)
    print(f"wrote {args.out / 'gateway.json'} in {report['duration_s']} s")


if __name__ == "__main__":
    main()
