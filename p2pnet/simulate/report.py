"""Reports of a simulation: a rich summary table, JSON, and PNG plots (matplotlib).

matplotlib is optional: ``write_plots`` raises ``PlotsUnavailableError`` with the command
that installs it, and everything else works without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pnet.errors import UsageError

__all__ = ["PlotsUnavailableError", "json_path", "render", "write_json", "write_plots"]


class PlotsUnavailableError(UsageError):
    """PNG plots were asked for and matplotlib is not installed."""


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return str(value)


def render(report: dict[str, Any], console: Console) -> None:
    """Print the summary table (one row per swarm size) and, for a single run, its
    figures over time."""
    if report["runs"] and "incentives" in report["runs"][0]:
        _render_incentives(report, console)
        return
    if report["runs"] and "trust" in report["runs"][0]:
        _render_trust(report, console)
        return
    scenario = report["scenario"]
    engine = report["engine"]
    clock = "virtual" if engine == "memory" else "wall"
    table = Table(
        title=f"{scenario['name']} on the {engine} engine, seed {report['seed']} "
        f"({scenario['duration_s']:g} s run phase, {clock} time)",
        title_justify="left",
    )
    columns = (
        "peers", "success", "p50 ms", "p95 ms", "p99 ms", "hops", "findable s",
        "forged accepted", "joins/leaves/crashes", "msgs/peer/s", "KB/peer/s",
        "RSS/peer KB", "wall s",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for run in report["runs"]:
        s = run["metrics"]["summary"]
        traffic = run.get("traffic", {})
        rate = s["success_rate"]
        success = "-" if rate is None else f"{rate * 100:.1f}% of {s['queries']}"
        forged = s["forged_accepted"]
        forged_cell = f"[green]{forged}[/]" if forged == 0 else f"[bold red]{forged}[/]"
        bps = traffic.get("run_bytes_per_peer_s")
        table.add_row(
            _fmt(run["n"]),
            success,
            _fmt(s["latency_p50_ms"]),
            _fmt(s["latency_p95_ms"]),
            _fmt(s["latency_p99_ms"]),
            _fmt(s["hops_mean"], 2),
            _fmt(s["findable_p50_s"], 2),
            forged_cell,
            f"{s['joins']}/{s['leaves']}/{s['crashes']}",
            _fmt(traffic.get("run_messages_per_peer_s"), 2),
            "-" if bps is None else _fmt(bps / 1024, 2),
            _fmt(run["resources"].get("rss_per_peer_kb")),
            _fmt(run["resources"].get("wall_s")),
        )
    console.print(table)
    for note in report.get("notes", ()):
        console.print(f"  note: {note}")
    for run in report["runs"]:
        s = run["metrics"]["summary"]
        if "target_task" in s:
            console.print(
                f"  {run['n']:,} peers: sybil target [bold]{s['target_task']}[/]: success "
                f"{_pct(s['target_success_rate'])} of {s['target_queries']}; other tasks "
                f"{_pct(s['other_success_rate'])} of {s['other_queries']}"
            )
        if "pipeline_runs" in s:
            pipe = report["scenario"].get("pipeline", {})
            console.print(
                f"  {run['n']:,} peers: pipeline [bold]{pipe.get('name', '?')}[/] "
                f"({pipe.get('mode', '?')}): success {_pct(s['pipeline_success_rate'])} of "
                f"{s['pipeline_runs']:,}, p50 / p95 {_fmt(s['pipeline_latency_p50_ms'])} / "
                f"{_fmt(s['pipeline_latency_p95_ms'])} ms, wrong results "
                f"{s['pipeline_wrong']}, failovers {s['pipeline_failovers']}"
                + (f", errors {s['pipeline_errors']}" if s["pipeline_errors"] else "")
            )
        if "invocation_calls" in s:
            console.print(
                f"  {run['n']:,} peers: calls between peers: success "
                f"{_pct(s['invocation_success_rate'])} of {s['invocation_calls']:,}, p50 / p95 "
                f"{_fmt(s['invocation_latency_p50_ms'])} / "
                f"{_fmt(s['invocation_latency_p95_ms'])} ms"
                + (f", errors {s['invocation_errors']}" if s["invocation_errors"] else "")
            )
        adv = run.get("adversaries", {})
        if adv.get("forgers"):
            console.print(
                f"  {run['n']:,} peers: {adv['forgers']} forgers: "
                f"{adv['forged_records_rejected']} forged records rejected, "
                f"{adv['forged_records_accepted']} accepted; forged DHT values stored "
                f"{adv['forged_values_stored']} of {adv['forged_values_sent']} sent"
            )
    if len(report["runs"]) == 1:
        run = report["runs"][0]
        over = Table(title="over time", title_justify="left")
        pipelines = "pipeline_runs" in run["metrics"]["summary"]
        for col in ("from s", "to s", "queries", "success", "p50 ms", "p95 ms", "alive",
                    "joins", "leaves", "crashes"):  # fmt: skip
            over.add_column(col, justify="right")
        if pipelines:
            for col in ("pipelines", "pipeline success", "pipeline p50 ms"):
                over.add_column(col, justify="right")
        for row in run["metrics"]["intervals"]:
            extra = (
                (
                    _fmt(row["pipeline_runs"]),
                    _pct(row["pipeline_success_rate"]),
                    _fmt(row["pipeline_latency_p50_ms"]),
                )
                if pipelines
                else ()
            )
            over.add_row(
                _fmt(row["start_s"], 0),
                _fmt(row["end_s"], 0),
                _fmt(row["queries"]),
                _pct(row["success_rate"]),
                _fmt(row["latency_p50_ms"]),
                _fmt(row["latency_p95_ms"]),
                _fmt(row["alive"]),
                _fmt(row["joins"] + row["rejoins"]),
                _fmt(row["leaves"]),
                _fmt(row["crashes"]),
                *extra,
            )
        console.print(over)


def _render_incentives(report: dict[str, Any], console: Console) -> None:
    """Per class of caller: calls, success, latency, units; then the three checks."""
    scenario = report["scenario"]
    for run in report["runs"]:
        inc = run["incentives"]
        table = Table(
            title=f"{scenario['name']} on the {report['engine']} engine, seed {report['seed']}: "
            f"{inc['providers']} providers, {run['n']:,} peers "
            f"({scenario['duration_s']:g} s of calls, virtual time)",
            title_justify="left",
        )
        for col in ("class", "callers", "calls", "success", "p50 ms", "p95 ms", "units",
                    "errors"):  # fmt: skip
            table.add_column(col, justify="right")
        for name, c in inc["classes"].items():
            table.add_row(
                name,
                _fmt(c["callers"]),
                _fmt(c["calls"]),
                _pct(c["success_rate"]),
                _fmt(c["latency_p50_ms"]),
                _fmt(c["latency_p95_ms"]),
                _fmt(c["units_consumed"]),
                ", ".join(f"{k} {v}" for k, v in c["errors"].items()) or "-",
            )
        console.print(table)
        for name, check in inc["checks"].items():
            verdict = "[green]ok[/]" if check["ok"] else "[bold red]FAILED[/]"
            details = ", ".join(f"{k} {v}" for k, v in check.items() if k != "ok")
            console.print(f"  {name}: {verdict} ({details})")


def _render_trust(report: dict[str, Any], console: Console) -> None:
    """Liars marked against calls served, per caller; honest providers marked; the
    checks and their cost; calls and pipelines with and without checks; the targets."""
    scenario = report["scenario"]
    for run in report["runs"]:
        t = run["trust"]
        per_model = "/".join(str(k) for k in t["liars_per_model"])
        console.print(
            f"{scenario['name']} on the {report['engine']} engine, seed {report['seed']}: "
            f"{t['providers']} providers of {t['models']} models, {t['liars']} liars "
            f"({per_model} per model), {t['noisy']} noisy honest; callers: {t['callers']} "
            f"checking at {t['rate'] * 100:g}%, {t['unchecked_callers']} not"
        )
        trials = t["trials"]
        curve = Table(
            title="liars marked by the calls each had served the caller",
            title_justify="left",
        )
        columns = ["calls served", f"{t['liar_pairs']} (caller, liar) pairs"]
        if trials["trials"]:
            columns.append(f"{trials['trials']:,} further trials")
        columns.append("own results checked: 1 - (1 - rate)^n")
        for col in columns:
            curve.add_column(col, justify="right")
        for calls, point in t["marked_after_calls"].items():
            further = [_pct(trials["marked_after_calls"][calls])] if trials["trials"] else []
            curve.add_row(
                calls, _pct(point["marked"]), *further, _pct(point["expected_own_results"])
            )
        console.print(curve)
        callers = Table(title="per caller", title_justify="left")
        within = list(t["marked_after_calls"])
        for col in ("caller", "calls", "wrong results", "liars marked",
                    *(f"within {k}" for k in within), "honest marked", "checks",
                    "extra calls"):  # fmt: skip
            callers.add_column(col, justify="right")
        for row in t["per_caller"]:
            callers.add_row(
                _fmt(row["caller"]),
                _fmt(row["calls"]),
                _fmt(row["wrong_results"]),
                f"{row['liars_marked']}/{t['liars']}",
                *(_fmt(row["liars_marked_within"][k]) for k in within),
                _fmt(row["honest_marked"]),
                _fmt(row["checks"]),
                _fmt(row["extra_calls"]),
            )
        console.print(callers)
        c = t["checks"]
        console.print(
            f"  checks: {c['sampled']:,} of {c['considered']:,} calls drawn: {c['agreed']:,} "
            f"agreed, {c['disagreed']} disagreed, {c['unresolved']} unresolved, "
            f"{c['skipped_busy']} skipped (busy), {c['no_checker']} without a checker; "
            f"comparisons {', '.join(f'{k} {v:,}' for k, v in c['comparisons'].items())}; "
            f"largest difference agreed on {c['agreeing_max_rel_error']:.2g} relative"
        )
        console.print(
            f"  liars marked: {t['liar_pairs_marked']} of {t['liar_pairs']} pairs "
            f"({c['liars_marked_on_own_result']} on their own result, "
            f"{c['liars_marked_as_checker']} as a checker); honest providers marked: "
            f"{t['honest_marked']}; cost: {c['extra_calls']:,} extra calls for "
            f"{c['considered']:,} calls and pipeline steps ({_pct(t['extra_call_share'])})"
        )
        if trials["trials"]:
            console.print(
                f"  further trials: {trials['trials']:,}, {trials['marked']:,} marked, after "
                f"{trials['mean_calls_before_mark']:g} calls on average; {trials['calls']:,} "
                f"calls, {trials['checks']:,} checks, {trials['extra_calls']:,} extra calls"
            )
        for what, key, figure in (
            ("calls through the finder", "finder", "wrong_share"),
            ("pipeline runs", "pipelines", "correct_share"),
        ):
            parts = []
            for group in ("checking", "unchecked"):
                g = t[key][group]
                count = g["calls"] if key == "finder" else g["runs"]
                if count:
                    label = "wrong" if key == "finder" else "correct"
                    part = f"{group} callers {_pct(g[figure])} {label} of {count:,}"
                    if key == "finder":
                        part += (
                            f" ({_pct(g['wrong_share_first_half'])} of the first half, "
                            f"{_pct(g['wrong_share_second_half'])} of the second)"
                        )
                    parts.append(part)
            console.print(f"  {what}: " + "; ".join(parts))
        for name, target in t["targets"].items():
            verdict = "[green]ok[/]" if target["ok"] else "[bold red]FAILED[/]"
            details = ", ".join(f"{k} {v}" for k, v in target.items() if k != "ok")
            console.print(f"  {name}: {verdict} ({details})")


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def json_path(report: dict[str, Any], out: Path) -> Path:
    return out / f"{report['scenario']['name']}-{report['engine']}-seed{report['seed']}.json"


def write_json(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = json_path(report, out)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def _save_fraction_plot(
    plt: Any, fig: Any, ax: Any, *, xlabel: str, ylabel: str, title: str, path: Path, dpi: int
) -> Path:
    """Label ``ax``, whose y is a fraction from 0 to 1, save ``fig`` at ``path`` and
    close it; returns ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out: Path, *, dpi: int = 80) -> list[Path]:
    """Latency CDF, success over time (churn marked) and hops vs swarm size as PNGs in
    ``out`` (for the trust workload: liars marked against calls served).

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailableError(
            "PNG plots need matplotlib: pip install 'p2pnet[plots]' (the JSON report was written)"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{report['scenario']['name']}-{report['engine']}"
    clock = "virtual" if report["engine"] == "memory" else "wall-clock"
    paths = []
    if report["runs"] and "trust" in report["runs"][0]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for run in report["runs"]:
            t = run["trust"]
            served = t["calls_served_before_mark"]
            pairs = t["liar_pairs"]
            top = max(t["pair_calls"], max(served, default=0))
            xs = list(range(top + 1))
            ax.step(xs, [sum(1 for m in served if m <= x) / pairs for x in xs], where="post",
                    label=f"liars marked, {pairs} pairs")  # fmt: skip
            ax.plot(xs, [1 - (1 - t["rate"]) ** x for x in xs], ls="--",
                    label=f"1 - (1 - {t['rate']:g})^n")  # fmt: skip
        return [
            _save_fraction_plot(
                plt, fig, ax,
                xlabel="calls the liar had served the caller",
                ylabel="fraction of (caller, liar) pairs marked",
                title=f"{report['scenario']['name']}: liars marked by calls served",
                path=out / f"{stem}-marked.png",
                dpi=dpi,
            )
        ]  # fmt: skip
    if report["runs"] and "incentives" in report["runs"][0]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for run in report["runs"]:
            for name, lat in run["incentives"]["latencies_ms"].items():
                if lat:
                    ys = [(i + 1) / len(lat) for i in range(len(lat))]
                    ax.step(lat, ys, where="post", label=f"{name}, {run['n']:,} peers")
        return [
            _save_fraction_plot(
                plt, fig, ax,
                xlabel=f"latency of successful calls, ms ({clock})",
                ylabel="fraction of successful calls",
                title=f"{report['scenario']['name']}: latency CDF per class of caller",
                path=out / f"{stem}-latency-cdf.png",
                dpi=dpi,
            )
        ]  # fmt: skip

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in report["runs"]:
        lat = sorted(run["metrics"]["latencies_ms"])
        if lat:
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.step(lat, ys, where="post", label=f"discovery, {run['n']:,} peers")
        runs = sorted(run["metrics"].get("pipeline_latencies_ms", ()))
        if runs:
            ys = [(i + 1) / len(runs) for i in range(len(runs))]
            ax.step(runs, ys, where="post", ls="--", label=f"pipeline, {run['n']:,} peers")
    paths.append(
        _save_fraction_plot(
            plt, fig, ax,
            xlabel=f"latency, ms ({clock})",
            ylabel="fraction of successful ones",
            title=f"{report['scenario']['name']}: latency CDF ({report['engine']} engine)",
            path=out / f"{stem}-latency-cdf.png",
            dpi=dpi,
        )
    )  # fmt: skip

    fig, ax = plt.subplots(figsize=(6, 3.6))
    marks = {"crash": ("tab:red", "crash"), "leave": ("tab:orange", "leave"),
             "join": ("tab:green", "join"), "rejoin": ("tab:blue", "restart")}  # fmt: skip
    for run in report["runs"]:
        rows = [r for r in run["metrics"]["intervals"] if r["success_rate"] is not None]
        xs = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
        ax.plot(xs, [r["success_rate"] * 100 for r in rows], marker="o", ms=3,
                label=f"discovery, {run['n']:,} peers")  # fmt: skip
        piped = [
            r for r in run["metrics"]["intervals"] if r.get("pipeline_success_rate") is not None
        ]
        if piped:
            ax.plot([(r["start_s"] + r["end_s"]) / 2 for r in piped],
                    [r["pipeline_success_rate"] * 100 for r in piped], marker="s", ms=3,
                    ls="--", label=f"pipeline, {run['n']:,} peers")  # fmt: skip
    last = report["runs"][-1]
    events = last["metrics"]["churn_events"]
    rates = [
        r[key] * 100
        for run in report["runs"]
        for r in run["metrics"]["intervals"]
        for key in ("success_rate", "pipeline_success_rate")
        if r.get(key) is not None
    ]
    bottom = max(0.0, min(min(rates, default=0.0), 90.0) - 5)
    if len(events) <= 60:  # few events: a line across the plot each
        seen: set[str] = set()
        for event in events:
            color, label = marks.get(event["kind"], ("grey", event["kind"]))
            legend = None if label in seen else label
            ax.axvline(event["t"], color=color, alpha=0.35, lw=0.8, label=legend)
            seen.add(label)
        ax.set_ylim(bottom, 101)
    else:  # many: a row of ticks per kind, under the curve
        first_row = bottom - len(marks) * 2.5
        for row, (kind, (color, label)) in enumerate(marks.items()):
            ts = [e["t"] for e in events if e["kind"] == kind]
            if ts:
                y = first_row + 1.25 + row * 2.5
                ax.plot(ts, [y] * len(ts), "|", color=color, ms=5, label=f"{label} ({len(ts)})")
        ax.set_ylim(first_row, 101)
    ax.set_xlabel(f"seconds into the run ({clock})")
    ax.set_ylabel("success, %")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left" if len(events) <= 60 else "center left", fontsize=7, ncol=2)
    ax.set_title(f"{report['scenario']['name']}: success over time, churn marked")
    fig.tight_layout()
    path = out / f"{stem}-success.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    paths.append(path)

    sized = [r for r in report["runs"] if r["metrics"]["summary"]["hops_mean"] is not None]
    if sized:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ns = [r["n"] for r in sized]
        summaries = [r["metrics"]["summary"] for r in sized]
        ax.plot(ns, [s["hops_mean"] for s in summaries], marker="o", label="mean")
        ax.plot(ns, [s["hops_p95"] for s in summaries], marker="^", ls="--", label="p95")
        ax.plot(ns, [s["hops_max"] for s in summaries], marker="v", ls=":", label="max")
        if len(ns) > 1:
            ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.set_xlabel("peers")
        ax.set_ylabel("hops per lookup")
        ax.set_ylim(0, max(s["hops_max"] for s in summaries) + 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        ax.set_title(f"{report['scenario']['name']}: hops vs swarm size ({report['engine']})")
        fig.tight_layout()
        path = out / f"{stem}-hops.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths
