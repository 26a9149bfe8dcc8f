"""Render a results JSON (from ``python -m bench run``) as the Markdown tables of RESULTS.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The scale benchmark's two sizes of job table.
SIZES = ("small", "large")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _peer_table(intro: str, names: list[str]) -> list[str]:
    """The opening of a table of schedctl beside the peers ``names``."""
    return [
        intro,
        "",
        "| figure | schedctl | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]


def _catch_up_row(r: dict[str, Any]) -> list[str]:
    """The start-up backlog and how long it took to work off (none in older JSON)."""
    if "catch_up_s" not in r:
        return []
    done = "" if r["caught_up"] else " (not caught up: the window opened anyway)"
    return [
        _row(
            "before the window: schedules overdue at start-up, worked off in (s)",
            f"{r['overdue_at_start']}, {r['catch_up_s']}{done}",
        )
    ]


def _steady_peers(r: dict[str, Any]) -> list[str]:
    """schedctl beside the peers that ran the same steady load (none in older JSON)."""
    peers = {name: p for name, p in r.get("peers", {}).items() if "start_delay_call" in p}
    if not peers:
        return [f"{name}: {p}" for name, p in r.get("peers", {}).items()] + [""] * bool(
            r.get("peers")
        )
    names = list(peers)
    delay = r["start_delay_row"]
    rows = [
        *_peer_table(
            "Beside the peers (same tasks, grids, warm-up and window; each on a fresh database "
            "of the same server; a peer's start delay is measured in the callable, schedctl's "
            "on its run row, taken just before the call):",
            names,
        ),
        _row(
            "runs in window (expected)",
            f"{r['runs']['rows']} ({r['expected_runs_in_window']})",
            *(f"{p['runs_in_window']} ({p['expected_runs_in_window']})" for p in peers.values()),
        ),
        _row(
            "start delay p50 / p99 / max (ms)",
            f"{delay['p50_ms']} / {delay['p99_ms']} / {delay['max_ms']}",
            *(
                f"{p['start_delay_call']['p50_ms']} / {p['start_delay_call']['p99_ms']} / "
                f"{p['start_delay_call']['max_ms']}"
                for p in peers.values()
            ),
        ),
        _row(
            "CPU (% of one core)",
            r["scheduler_cpu_percent_of_one_core"],
            *(p["cpu_percent_of_one_core"] for p in peers.values()),
        ),
        _row(
            "peak RSS (MiB)",
            r["scheduler_peak_rss_mib"],
            *(p["peak_rss_mib"] for p in peers.values()),
        ),
        _row(
            "setup: storing the schedules (s)",
            r["sync_s"],
            *(p["setup_s"] for p in peers.values()),
        ),
        "",
    ]
    return rows


def _no_figure(result: dict[str, Any]) -> str | None:
    """Why ``result`` holds no figure (skipped, error), or None when it holds one."""
    if "skipped" in result or "error" in result:
        return str(result.get("skipped") or result.get("error"))
    return None


def _why_or(result: dict[str, Any], cell: Any) -> str:
    """``cell(result)``, or why there is no figure."""
    why = _no_figure(result)
    return why if why is not None else str(cell(result))


def _peer_cells(peers: dict[str, Any], cell: Any) -> list[str]:
    """One cell per peer: ``cell(peer_result)``, or "—" for a peer with no figure at all
    (``_peer_notes`` says why, once, under the table)."""
    return ["—" if _no_figure(p) else str(cell(p)) for p in peers.values()]


def _peer_notes(peers: dict[str, Any]) -> list[str]:
    """Under a peer table: why a peer has no figure, a line each."""
    notes = [f"- {name}: {why}" for name, p in peers.items() if (why := _no_figure(p))]
    return [*notes, ""] if notes else []


def _scale_poll(s: dict[str, Any], key: str) -> str:
    """p50 / p99 of the timings ``key`` of a scale result."""
    got = s.get(key) or {}
    return f"{_fmt(got.get('p50_ms'))} / {_fmt(got.get('p99_ms'))}"


def _scale_sized(p: dict[str, Any], size: str, figure: Any) -> str:
    """``figure`` of a peer's result at ``size``, or why there is none."""
    return _why_or(p.get(size, {}), figure)


def _scale_delay(s: dict[str, Any]) -> str:
    """A peer's p99 start delay in the window, with how many calls it made of those due."""
    got = s.get("start_delay_call") or {}
    if got.get("count") is None:
        return ""
    return (
        f"{_fmt(got.get('p99_ms'))} ({s['runs_in_window']} of {s['expected_runs_in_window']} calls)"
    )


def _scale_plan(s: dict[str, Any]) -> str:
    """Which of a peer's due queries use its due-time index."""
    used = s.get("plans_use_due_index")
    return "" if used is None else ", ".join(f"{k} {v}" for k, v in used.items())


def _scale_setup(s: dict[str, Any]) -> str:
    """How long a peer took to store its schedules, and what that set-up overran."""
    if "setup_s" not in s:
        return ""
    found = s.get("empty_polls_that_found_due_work")
    return f"{s['setup_s']} s; overran first tick {s['setup_overran_first_tick']}; " + (
        f"polls that found due work {found}"
    )


def _scale_size_rows(s: dict[str, Any], peers: dict[str, Any], size: str) -> list[str]:
    """schedctl's scale result ``s`` at ``size`` beside the peers' at the same size."""
    return [
        _row(
            f"{size} ({s['stored']} stored): empty poll p50 / p99 (ms)",
            _scale_poll(s, "empty_poll_claim"),
            *_peer_cells(
                peers,
                lambda p: _scale_sized(p, size, lambda x: _scale_poll(x, "empty_poll")),
            ),
        ),
        _row(
            f"{size}: next-due query p50 / p99 (ms)",
            _scale_poll(s, "empty_poll_next_due_at"),
            *_peer_cells(
                peers,
                lambda p: _scale_sized(p, size, lambda x: _scale_poll(x, "empty_poll_next_due")),
            ),
        ),
        _row(
            f"{size}: start delay p99 (ms) in the window",
            f"{_fmt(s['start_delay_row']['p99_ms'])} ({s['runs_in_window']} runs)",
            *_peer_cells(peers, lambda p: _scale_sized(p, size, _scale_delay)),
        ),
    ]


def _scale_peers(r: dict[str, Any]) -> list[str]:
    """schedctl (PostgreSQL) beside the peers' own empty polls at both sizes (none in older
    JSON)."""
    peers = r.get("peers") or {}
    if not peers:
        return []
    ours = r["postgresql"]
    rows = _peer_table(
        "Beside the peers (PostgreSQL; the same number of interval schedules on the same "
        "grids, each peer on a fresh database of the same server, stored in bulk as the "
        "rows its own add_job/add_schedule writes, then ANALYZE). A peer's empty poll is "
        "what its scheduler asks the store each wake-up, timed before the first tick: "
        "APScheduler 3.11 `SQLAlchemyJobStore.get_due_jobs(now)` (+ `get_next_run_time()`), "
        "APScheduler 4.0.0a6 `SQLAlchemyDataStore.acquire_schedules(id, 30 s, 100)` "
        "(+ `get_next_schedule_run_time()`); schedctl's is its claim (+ next-due). "
        "Start delays: schedctl's on its run row, a peer's in the callable.",
        list(peers),
    )
    for size in SIZES:
        rows += _scale_size_rows(ours[size], peers, size)
    rows += [
        _row(
            "empty poll p50 ratio, large / small",
            ours["empty_poll_cost_ratio_large_vs_small"],
            *_peer_cells(peers, lambda p: _fmt(p.get("empty_poll_cost_ratio_large_vs_small"))),
        ),
        _row(
            "large: due queries use the due-time index",
            ours["large"]["plans_use_due_at_index"],
            *_peer_cells(peers, lambda p: _scale_sized(p, "large", _scale_plan)),
        ),
        _row(
            "large: storing the schedules (s)",
            ours["large"]["sync_s"],
            *_peer_cells(peers, lambda p: _scale_sized(p, "large", _scale_setup)),
        ),
        "",
        *_peer_notes(peers),
    ]
    for name, p in peers.items():
        for plan_name, lines in (p.get("large", {}).get("plans") or {}).items():
            rows += [f"{name} `{plan_name}` at the large size:", "", "```", *lines, "```", ""]
    return rows


def _multi_peers(r: dict[str, Any]) -> list[str]:
    """schedctl beside the peers' 1 and 3 processes sharing one store (none in older JSON)."""
    peers = r.get("peers") or {}
    if not peers:
        return []

    def figure(p: dict[str, Any], key: str, cell: Any) -> str:
        s = p.get(key, {})
        return (
            str(s.get("skipped") or s.get("error")) if "skipped" in s or "error" in s else cell(s)
        )

    def throughput(s: dict[str, Any]) -> str:
        return f"{_fmt(s.get('throughput_runs_per_s'))} ({_fmt(s.get('all_finished_s'))} s)"

    def exactness(s: dict[str, Any]) -> str:
        return f"{s['duplicates']} / {s['missing']}"

    def ours_exactness(s: dict[str, Any]) -> str:
        return f"{s['duplicates']} / {s['runs']['tasks_not_exactly_once']}"

    names = list(peers)
    rows = _peer_table(
        "Beside the peers (each on a fresh database of the same server, the same N one-shots "
        "due at one instant; APScheduler 4 processes share one SQLAlchemyDataStore and "
        "an AsyncpgEventBroker; a peer's start delay is measured in the callable):",
        names,
    )
    for key, label in (("one_instance", "1 process"), ("three_instances", "3 processes")):
        s = r[key]
        rows += [
            _row(
                f"{label}: throughput (runs/s; all finished)",
                throughput(s),
                *_peer_cells(peers, lambda p, k=key: figure(p, k, throughput)),
            ),
            _row(
                f"{label}: duplicates / not run exactly once (peer: missing)",
                ours_exactness(s),
                *_peer_cells(peers, lambda p, k=key: figure(p, k, exactness)),
            ),
            _row(
                f"{label}: start delay p99 (ms)",
                s["start_delay_row"]["p99_ms"],
                *_peer_cells(
                    peers,
                    lambda p, k=key: figure(p, k, lambda x: _fmt(x["start_delay_call"]["p99_ms"])),
                ),
            ),
        ]
    return [*rows, "", *_peer_notes(peers)]


def _gzip_rows(r: dict[str, Any]) -> list[str]:
    """The exporter's second phase: scraped as Prometheus does (OpenMetrics, gzip)."""
    lat = r["gzip_metrics_latency"]
    return [
        _row(
            "as Prometheus scrapes (OpenMetrics, gzip): latency p50 / p99 / max (ms)",
            f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']}",
        ),
        _row("as Prometheus scrapes: payload (bytes, gzip)", r["gzip_payload_bytes"]),
        _row(
            "peak RSS (MiB) after the plain phase / after both (both variants rendered ahead)",
            f"{r['exporter_peak_rss_mib_plain_only']} / {r['exporter_peak_rss_mib']}",
        ),
    ]


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_fmt(c) for c in cells) + " |"


def _met(value: Any) -> str:
    return {True: "**met**", False: "**MISSED**", None: "not measured"}[value]


def _bench(results: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    entry = results["benchmarks"].get(name, {})
    return entry, entry.get("result", {})


def _load(entry: dict[str, Any]) -> str:
    before = entry.get("load_average_before")
    after = entry.get("load_average_after")
    return f"load average before {before}, after {after}; took {entry.get('seconds')} s"


#: (benchmark, target) pairs, gathered from the sections for the closing table.
Targets = list[tuple[str, dict[str, Any]]]


def _head(*columns: str) -> list[str]:
    """A Markdown table's header row and its separator."""
    return [_row(*columns), _row(*("---" for _ in columns))]


def _figures(results: dict[str, Any]) -> list[str]:
    """How, when and where the benchmarks ran."""
    m = results["machine"]
    return [
        "## Figures",
        "",
        f"- Command: `{results['command']}` (sizes: {results['sizes']})",
        f"- Run: {results['started_at']} → {results['finished_at']} (UTC), "
        f"commit {results.get('git_commit')} at start, {results.get('git_commit_at_end')} at end; "
        f"scheduler_core/exporter uncommitted changes at start: "
        f"{results.get('scheduler_core_uncommitted_at_start')}, at end: "
        f"{results.get('scheduler_core_uncommitted_at_end')}",
        f"- Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"PostgreSQL {m['postgresql']}, Python {m['python']}, kernel {m['kernel']}",
        f"- PostgreSQL: {results['postgresql_settings']}",
        "",
    ]


def _burst_row(backend: str, who: str, res: dict[str, Any]) -> str:
    """One contender's median burst on ``backend``."""
    if "skipped" in res or "error" in res:
        return f"| {backend} | {who} | {res.get('skipped') or res.get('error')} | | | |"
    call = res.get("start_delay_call", {})
    row = res.get("start_delay_row")
    recorded = (
        f"{res['runs']['rows']} rows, {res['runs']['duplicate_ticks']} dup"
        if "runs" in res
        else "no run history (peer keeps none)"
    )
    return (
        f"| {backend} | {who} | {_fmt(res.get('all_finished_s'))} | "
        f"{_fmt(call.get('p50_ms'))} / {_fmt(call.get('p99_ms'))} | "
        + (f"{_fmt(row['p50_ms'])} / {_fmt(row['p99_ms'])}" if row else "—")
        + f" | {recorded} | {res.get('all_finished_s_samples')} |"
    )


def _burst(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    out = [
        "### 1. Burst",
        "",
        f"N = {r.get('n')}, pool = {r.get('workers')}, median of {r.get('repeats')} "
        f"interleaved runs per contender (samples in the last column). {_load(entry)}",
        "",
        *_head(
            "backend",
            "contender",
            "all finished (s)",
            "start delay p50 / p99 (ms, in the callable)",
            "start delay p50 / p99 (ms, run row)",
            "runs recorded",
            "all finished, every run (s)",
        ),
    ]
    targets: Targets = []
    for backend in ("postgresql", "sqlite"):
        section = r.get(backend, {})
        out += [_burst_row(backend, who, res) for who, res in section.items() if who != "targets"]
        targets += [("burst " + backend, t) for t in section.get("targets", [])]
    out.append("")
    return out, targets


def _steady(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    if "error" in r:
        return ["### 2. Steady", "", f"error: {r['error']}", ""], []
    delay = r["start_delay_row"]
    by_thread = r.get("scheduler_cpu_percent_by_thread", {})
    out = [
        "### 2. Steady",
        "",
        f"{r['tasks']} tasks every {r['every_s']} s (grids offset: "
        f"{r['runs_per_second']} runs/s), {r['window_s']} s measured. {_load(entry)}",
        "",
        *_head("figure", "schedctl"),
        f"| runs in window (expected) | {r['runs']['rows']} ({r['expected_runs_in_window']}) |",
        f"| start delay p50 / p99 / max (ms, run row) | {delay['p50_ms']} / "
        f"{delay['p99_ms']} / {delay['max_ms']} |",
        f"| scheduler CPU (% of one core) | {r['scheduler_cpu_percent_of_one_core']} |",
        _row(
            "scheduler CPU by thread (% of one core)",
            ", ".join(f"{role} {pct}" for role, pct in by_thread.items()) or "—",
        ),
        f"| PostgreSQL CPU (% of one core) | {r['postgres_cpu_percent_of_one_core']} |",
        _row(
            "scheduler RSS / peak (MiB)",
            f"{r['scheduler_rss_mib']} / {r['scheduler_peak_rss_mib']}",
        ),
        *_catch_up_row(r),
        "",
        *_steady_peers(r),
    ]
    return out, [("steady", t) for t in r.get("targets", [])]


def _scale_row(backend: str, s: dict[str, Any]) -> str:
    """The scale benchmark at one size on ``backend``."""
    inrun = s.get("in_run_claim") or {}
    empty = s["empty_poll_claim"]
    delay = s["start_delay_row"]
    return _row(
        backend,
        s["stored"],
        f"{empty['p50_ms']} / {empty['p99_ms']}",
        s["empty_poll_next_due_at"]["p50_ms"],
        f"{_fmt(inrun.get('p50_ms'))} / {_fmt(inrun.get('p99_ms'))}",
        f"{delay['p50_ms']} / {delay['p99_ms']}",
        s["plans_use_due_at_index"],
    )


def _scale(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    backends = ("postgresql", "sqlite")
    out = [
        "### 3. Scale",
        "",
        f"~{r['due_per_second']} due per second. {_load(entry)}",
        "",
        *_head(
            "backend",
            "stored",
            "empty poll: claim p50 / p99 (ms)",
            "empty poll: next-due p50 (ms)",
            "in-run claim p50 / p99 (ms)",
            "start delay p50 / p99 (ms)",
            "due index used",
        ),
        *(_scale_row(backend, r[backend][size]) for backend in backends for size in SIZES),
        "",
        "Due-query plans at the large size:",
        "",
    ]
    for backend in backends:
        for name, plan in r[backend]["large"]["plans"].items():
            out += [f"{backend} `{name}`:", "", "```", *plan, "```", ""]
    out += _scale_peers(r)
    targets = [("scale " + b, t) for b in backends for t in r[b].get("targets", [])]
    return out, targets


def _multi(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    out = [
        "### 4. Multi-instance (PostgreSQL)",
        "",
        _load(entry),
        "",
        *_head(
            "instances",
            "N",
            "all finished (s)",
            "throughput (runs/s)",
            "start delay p99 (ms)",
            "duplicates",
            "tasks not run exactly once",
            "runs per instance",
        ),
    ]
    for s in (r["one_instance"], r["three_instances"]):
        out.append(
            _row(
                s["instances"],
                s["n"],
                s["all_finished_s"],
                s["throughput_runs_per_s"],
                s["start_delay_row"]["p99_ms"],
                s["duplicates"],
                s["runs"]["tasks_not_exactly_once"],
                s["runs"]["per_instance"],
            )
        )
    out += ["", *_multi_peers(r)]
    return out, [("multi", t) for t in r.get("targets", [])]


def _exporter_rows(r: dict[str, Any]) -> list[str]:
    """The exporter's figures, a row each."""
    lat = r["metrics_latency"]
    return [
        *_head("figure", "value"),
        _row("tasks x instances", f"{r['tasks']} x {r['instances']}"),
        _row(
            "/metrics latency p50 / p99 / max (ms)",
            f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']}",
        ),
        f"| payload (bytes) / series | {r['payload_bytes']} / {r['series']} |",
        _row(
            "exporter RSS / peak (MiB)",
            f"{r['exporter_rss_mib']} / {r['exporter_peak_rss_mib']}",
        ),
        # Older JSON has neither the MB figure nor the gzip phase.
        *(
            [_row("exporter peak RSS (MB, 10^6 bytes)", r["exporter_peak_rss_mb"])]
            if "exporter_peak_rss_mb" in r
            else []
        ),
        *(_gzip_rows(r) if "gzip_metrics_latency" in r else []),
        f"| SQL refresh p50 / max (ms, scheduler_exporter_refresh_duration_seconds) | "
        f"{r['sql_refresh']['p50_ms']} / {r['sql_refresh']['max_ms']} |",
        "",
    ]


def _exporter(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    out = ["### 5. Exporter", "", _load(entry), ""]
    if "skipped" in r or "error" in r:
        return [*out, f"not measured: {r.get('skipped') or r.get('error')}", ""], []
    return [*out, *_exporter_rows(r)], [("exporter", t) for t in r.get("targets", [])]


def _on_off(s: dict[str, Any], figure: str) -> str:
    """``figure`` with telemetry on / off."""
    return f"{s[f'{figure}_on']} / {s[f'{figure}_off']}"


def _telemetry(entry: dict[str, Any], r: dict[str, Any]) -> tuple[list[str], Targets]:
    out = [
        "### 6. Telemetry overhead",
        "",
        f"Burst N = {r['n']}, median of {r['repeats']} alternated runs each. {_load(entry)}",
        "",
        *_head(
            "backend",
            "all finished on / off (s)",
            "overhead per run, wall (ms)",
            "CPU per run on / off (ms)",
            "overhead per run, CPU (ms)",
        ),
    ]
    for backend in ("postgresql", "sqlite"):
        s = r[backend]
        out.append(
            _row(
                backend,
                _on_off(s, "all_finished_s"),
                s["overhead_wall_ms_per_run"],
                _on_off(s, "cpu_ms_per_run"),
                s["overhead_cpu_ms_per_run"],
            )
        )
    out.append("")
    return out, [("telemetry", t) for t in r.get("targets", [])]


Section = Callable[[dict[str, Any], dict[str, Any]], tuple[list[str], Targets]]

#: A section a benchmark, in order: the benchmark's name in the results, the function that
#: renders its entry and result, and whether a failed run is left out rather than rendered.
SECTIONS: tuple[tuple[str, Section, bool], ...] = (
    ("burst", _burst, False),
    ("steady", _steady, False),
    ("scale", _scale, True),
    ("multi", _multi, True),
    ("exporter", _exporter, False),
    ("telemetry", _telemetry, True),
)


def render(results: dict[str, Any]) -> str:
    """The Markdown of ``results``: how they were taken, a section a benchmark, the targets."""
    out = _figures(results)
    targets: Targets = []
    for name, section, errors_left_out in SECTIONS:
        entry, r = _bench(results, name)
        if not r or (errors_left_out and "error" in r):
            continue
        lines, found = section(entry, r)
        out += lines
        targets += found
    out += [
        "### Targets",
        "",
        *_head("benchmark", "target", "measured", "verdict"),
        *(
            f"| {bench} | {t['target']} | {_fmt(t['measured'])} | {_met(t['met'])} |"
            for bench, t in targets
        ),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    source = Path(args[0]) if args else Path(__file__).parent / "out" / "results.json"
    print(render(json.loads(source.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
