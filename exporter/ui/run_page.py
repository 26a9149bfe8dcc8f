"""The run page (``GET /ui/runs/{id}``): one run's fields, its error and traceback, its result
and its output, every one of them shown as text (escaped; the database password masked as the
JSON API masks it). A run in flight can be cancelled from here by a signed-in admin."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from exporter.ui.layout import Frame, page
from exporter.ui.markup import Markup, html, join
from exporter.ui.parts import run_href, task_href
from exporter.ui.timefmt import duration, time_cell

__all__ = ["render_run_page", "render_unknown_run"]

Scrub = Callable[[str | None], str | None]


def _fields(run: dict[str, Any], now: datetime) -> Markup:
    cancel = "no"
    if run["cancel_requested"]:
        cancel = f"yes: {run['cancel_reason'] or '(no reason)'}"
    rows: list[tuple[str, Markup | str]] = [
        ("Task", html('<a href="{h}" id="run-task">{t}</a>', h=task_href(run["task_name"]),
                      t=run["task_name"])),
        ("Status", html('<span class="status s-{s}" id="run-status">{s}</span>', s=run["status"])),
        ("Trigger", run["trigger"]),
        ("Attempt", str(run["attempt"])),
        ("Scheduled for", time_cell(run["scheduled_for"], now)),
        ("Started", time_cell(run["started_at"], now)),
        ("Finished", time_cell(run["finished_at"], now)),
        ("Duration", duration(run["duration_seconds"])),
        ("Instance", run["instance_id"] or "\u2014"),
        ("Exit code", "\u2014" if run["exit_code"] is None else str(run["exit_code"])),
        ("Trace id", run["trace_id"] or "\u2014"),
        ("Cancel requested", cancel),
    ]  # fmt: skip
    if run["missed_count"]:
        rows.append(("Missed ticks", str(run["missed_count"])))
    body = join(html("<tr><th>{k}</th><td>{v}</td></tr>", k=k, v=v) for k, v in rows)
    return html('<table class="pairs" id="run-fields"><tbody>{b}</tbody></table>', b=body)


def _text_block(title: str, text: str | None, block_id: str) -> Markup:
    if not text:
        return Markup("")
    return html('<h2>{t}</h2><pre id="{id}">{x}</pre>', t=title, id=block_id, x=text)


def _output(run: dict[str, Any], scrub: Scrub, raw_link: bool) -> Markup:
    text = scrub(run["output"]) or ""
    kept, dropped = run["output_bytes"], run["output_dropped_bytes"]
    note = f"{kept} bytes kept" + (f", {dropped} bytes dropped in the middle" if dropped else "")
    link = Markup("")
    if raw_link:
        link = html(' \u00b7 <a href="/api/v1/runs/{id}/output">plain text</a>', id=run["id"])
    if not text:
        return html(
            '<h2>Output</h2><p class="none" id="run-output-none">This run kept no output.</p>'
        )
    return html(
        '<h2>Output</h2><p class="small">{note}{link}</p><pre class="output" id="run-output">'
        "{text}</pre>",
        note=note, link=link, text=text,
    )  # fmt: skip


def render_run_page(
    run: dict[str, Any], frame: Frame, *, scrub: Scrub, may_act: bool, raw_link: bool
) -> str:
    """The whole page of ``run`` (a row of ``Store.get_run``)."""
    cancel = Markup("")
    if may_act and run["status"] == "running" and not run["cancel_requested"]:
        cancel = html('<div class="actions"><a class="button danger" id="action-cancel" '
                      'href="/ui/confirm/cancel?run={id}">Cancel run\u2026</a></div>',
                      id=run["id"])  # fmt: skip
    result = None
    if run["result"] is not None:
        result = json.dumps(run["result"], indent=2, default=str)
    content = html(
        '<p class="crumbs"><a href="/">Tasks</a> / <a href="{task_href}">{task}</a> /</p>'
        '<h1>Run #{id}</h1><div id="run-live" data-live>{cancel}{fields}{error}{traceback}'
        "{result}{output}</div>",
        task_href=task_href(run["task_name"]), task=run["task_name"], id=run["id"],
        cancel=cancel, fields=_fields(run, frame.now),
        error=_text_block("Error", scrub(run["error_message"]), "run-error"),
        traceback=_text_block("Traceback", scrub(run["error_traceback"]), "run-traceback"),
        result=_text_block("Result", scrub(result), "run-result"),
        output=_output(run, scrub, raw_link),
    )  # fmt: skip
    return page(f"Run {run['id']}", content, frame, refresh=run["status"] == "running")


def render_unknown_run(run_id: int, frame: Frame) -> str:
    content = html(
        '<p class="crumbs"><a href="/">Tasks</a> /</p><h1>Run #{id}</h1>'
        '<p class="banner warn" id="unknown-run">No run with this id (it may have been '
        'removed by the retention cleanup). <a href="{h}">Reload</a></p>',
        id=run_id, h=run_href(run_id),
    )  # fmt: skip
    return page(f"Run {run_id}", content, frame, refresh=False)
