"""``p2pnet simulate SCENARIO``: run a multi-peer simulation (p2pnet/simulate) and report
on it."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from p2pnet.cli.options import Command, ParentParsers, Subparsers

__all__ = ["SimulateOptions", "add_simulate_parser", "simulate"]


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """The options of ``p2pnet simulate``: ``out`` the directory for the JSON report and
    plots (None: none written), ``plots`` whether to draw them there."""

    scenario: Path
    overrides: tuple[str, ...]
    engine: str
    seed: int | None
    peers: int | None
    out: Path | None
    plots: bool
    json: bool
    verbose: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimulateOptions:
        return cls(
            scenario=args.scenario,
            overrides=tuple(args.overrides),
            engine=args.engine,
            seed=args.seed,
            peers=args.peers,
            out=args.out,
            plots=not args.no_plots,
            json=args.json,
            verbose=args.verbose,
        )


def add_simulate_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "simulate",
        parents=[parents.common],
        help="run a multi-peer simulation (scenario file) and report on it",
        description="Run a scenario (simulations/*.toml; format in docs/simulations.md) on "
        "the in-memory network in virtual time, or on real libp2p peers on 127.0.0.1.",
    )
    p.add_argument("scenario", type=Path, metavar="SCENARIO", help="a scenario file (TOML)")
    p.add_argument(
        "--engine",
        choices=("memory", "libp2p"),
        default="memory",
        help="memory: the real DHT and record code on an in-memory network, virtual time "
        "(default); libp2p: real hosts on 127.0.0.1 over several processes",
    )
    p.add_argument("--seed", type=int, help="overrides the scenario's seed")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        help="set one field over the scenario file's (value in TOML: 0, 0.5, true, "
        '"text"), e.g. --set adversaries.sybils=0 --set dht.region=false; repeatable',
    )
    p.add_argument(
        "--peers", type=int, metavar="N", help="one run with N initial peers instead of the "
        "scenario's sizes",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write the JSON report and PNG plots here"
    )
    p.add_argument("--no-plots", action="store_true", help="with --out: JSON only")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    p.set_defaults(handler=Command(SimulateOptions.from_args, simulate))


def simulate(options: SimulateOptions) -> int:
    """Run the scenario with progress on stderr, print the report, write it to ``out``;
    exit status 1 if any forged record was accepted."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from p2pnet.simulate.report import (
        PlotsUnavailableError,
        render,
        write_json,
        write_plots,
    )
    from p2pnet.simulate.runner import run_scenario
    from p2pnet.simulate.scenario import load_scenario

    # Piped output (CI logs, files) gets the width of a wide terminal, not 80 columns.
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    scenario = load_scenario(options.scenario, options.overrides)
    if options.verbose < 2:
        logging.getLogger("p2pnet").setLevel(logging.ERROR)  # expected failures under churn
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[figure]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=options.json or not err.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    plain = not err.is_terminal and not options.json  # logs: a line per phase instead of bars
    started: dict[str, float] = {}

    def step(phase: str, done: float, total: float) -> None:
        if plain:
            if phase not in started:
                started[phase] = time.monotonic()
                err.print(f"{escape(phase)}: started")
            elif done >= total and started[phase] >= 0:
                err.print(f"{escape(phase)}: done in {time.monotonic() - started[phase]:.0f} s")
                started[phase] = -1.0
            return
        task = tasks.get(phase)
        if task is None:
            task = tasks[phase] = progress.add_task(phase, total=max(total, 1e-9), figure="")
        unit = " s" if phase.endswith("run") else ""
        progress.update(task, completed=done, figure=f"{done:,.0f}/{total:,.0f}{unit}")

    report_dir = options.out
    with progress:
        report = run_scenario(
            scenario,
            engine=options.engine,
            seed=options.seed,
            peers=options.peers,
            progress=step,
            log_dir=(report_dir / "logs") if report_dir else None,
            on_run=(lambda partial: write_json(partial, report_dir)) if report_dir else None,
        )
    if options.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        render(report, out)
    if report_dir:
        path = write_json(report, report_dir)
        err.print(f"wrote {escape(str(path))}")
        if options.plots:
            try:
                for png in write_plots(report, report_dir):
                    err.print(f"wrote {escape(str(png))}")
            except PlotsUnavailableError as exc:
                err.print(f"[yellow]no plots[/]: {escape(str(exc))}")
    forged = sum(
        r["metrics"]["summary"]["forged_accepted"] for r in report["runs"] if "metrics" in r
    )
    failed = [
        r
        for r in report["runs"]
        if not r.get("incentives", {}).get("verdict", True)
        or not r.get("trust", {}).get("verdict", True)
    ]
    return 1 if forged or failed else 0
