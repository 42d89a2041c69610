"""``p2pnet simulate SCENARIO``: the sub-command's parser and handler (added to the CLI
by ``p2pnet.cli.build_parser``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["add_simulate_parser", "cmd_simulate"]


def add_simulate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``simulate`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "simulate",
        parents=[common],
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
        "--peers", type=int, metavar="N", help="one run with N initial peers instead of the "
        "scenario's sizes",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write the JSON report and PNG plots here"
    )
    p.add_argument("--no-plots", action="store_true", help="with --out: JSON only")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
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
    scenario = load_scenario(args.scenario)
    if args.verbose < 2:
        logging.getLogger("p2pnet").setLevel(logging.ERROR)  # expected failures under churn
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[figure]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=args.json or not err.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    plain = not err.is_terminal and not args.json  # logs: a line per phase instead of bars
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

    with progress:
        report = run_scenario(
            scenario,
            engine=args.engine,
            seed=args.seed,
            peers=args.peers,
            progress=step,
            log_dir=(args.out / "logs") if args.out else None,
            on_run=(lambda partial: write_json(partial, args.out)) if args.out else None,
        )
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        render(report, out)
    if args.out:
        path = write_json(report, args.out)
        err.print(f"wrote {escape(str(path))}")
        if not args.no_plots:
            try:
                for png in write_plots(report, args.out):
                    err.print(f"wrote {escape(str(png))}")
            except PlotsUnavailableError as exc:
                err.print(f"[yellow]no plots[/]: {escape(str(exc))}")
    forged = sum(r["metrics"]["summary"]["forged_accepted"] for r in report["runs"])
    return 1 if forged else 0
