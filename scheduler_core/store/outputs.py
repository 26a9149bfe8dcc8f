"""Run output and results (issue 19): written in their runs' finalize, read with the run.

A run that printed, logged or returned something has one ``scheduler_run_output`` row (the
hot run rows stay narrow); the numeric results of the keys a task declares in
``result_metrics`` are added to ``scheduler_schedules.result_totals``, which, like the run
counters, survives history cleanup and restarts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.bulk import pg_recordset, pg_value_rows, text_array_literal
from scheduler_core.models import run_output, schedules
from scheduler_core.store.base import chunks
from scheduler_core.store.records import RunOutcome

__all__ = ["add_result_totals", "read_result_totals", "run_output_of", "write_outputs"]


#: An output row's values, in the order ``write_outputs`` sends them (``created_at`` is
#: the batch's ``now``, one parameter).
_OUTPUT_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    name: run_output.c[name].type
    for name in (
        "run_id",
        "task_name",
        "output",
        "output_bytes",
        "output_dropped_bytes",
        "result",
        "result_note",
    )
}
_OUTPUT_NAMES = tuple(_OUTPUT_TYPES)
#: PostgreSQL: the long texts, each a ``text[]`` of its own (``pg_recordset``'s ``texts``).
_PG_TEXTS = ("output", "result")
#: PostgreSQL: the other values of a row, in the JSON document.
_PG_ROW_NAMES = tuple(n for n in _OUTPUT_NAMES if n not in _PG_TEXTS)
#: PostgreSQL: the batch's rows in one statement, from one JSON document and the texts'
#: arrays (``bulk``): an ``executemany`` sent a Bind and an Execute per row, ~40 us of
#: psycopg's Python each on the scheduler's loop thread (4 % of a core at 1,000 printing
#: runs a second); a KiB of output in the JSON cost ``json.dumps`` ~4 us more a row.
_PG_INSERT_OUTPUTS = (
    f"INSERT INTO {run_output.name} ({', '.join(_OUTPUT_NAMES)}, created_at) "
    f"SELECT {', '.join(f'v.{n}' for n in _OUTPUT_NAMES)}, %(now)s "
    f"FROM {pg_recordset(_PG_ROW_NAMES, _OUTPUT_TYPES, texts=_PG_TEXTS)}"
)


def write_outputs(conn: sa.Connection, outcomes: Sequence[RunOutcome], *, now: datetime) -> None:
    """Insert the output rows of the ``outcomes`` that said something: one statement on
    PostgreSQL, an ``executemany`` on SQLite (in-process: no round trips to save)."""
    said = [o for o in outcomes if o.output is not None or o.result is not None]
    if not said:
        return
    if conn.dialect.name == "postgresql":
        rows = [
            [o.run_id, o.task_name, o.output_bytes, o.output_dropped_bytes, o.result_note]
            for o in said
        ]
        params = {
            "rows": pg_value_rows(rows, _PG_ROW_NAMES, _OUTPUT_TYPES),
            "output": text_array_literal([o.output for o in said]),
            "result": text_array_literal([o.result for o in said]),
            "now": now,
        }
        conn.exec_driver_sql(_PG_INSERT_OUTPUTS, params)
        return
    conn.execute(
        run_output.insert(),
        [
            {"run_id": o.run_id, "task_name": o.task_name, "output": o.output,
             "output_bytes": o.output_bytes, "output_dropped_bytes": o.output_dropped_bytes,
             "result": o.result, "result_note": o.result_note, "created_at": now}
            for o in said
        ],
    )  # fmt: skip


def add_result_totals(conn: sa.Connection, outcomes: Sequence[RunOutcome]) -> None:
    """Add the ``outcomes``' result values to their tasks' totals (the schedule rows are
    already locked by the finalize on PostgreSQL; SQLite's writer holds the database)."""
    increments: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for o in outcomes:
        for key, value in (o.result_values or {}).items():
            increments[o.task_name][key] += value
    if not increments:
        return
    current = read_result_totals(conn, sorted(increments))
    for name, added in increments.items():
        if name not in current:
            continue  # removed meanwhile: nothing to add to
        totals = dict(current[name])
        for key, value in added.items():
            totals[key] = totals.get(key, 0.0) + value
        conn.execute(
            schedules.update()
            .where(schedules.c.name == name)
            .values(result_totals=json.dumps(totals, sort_keys=True))
        )


def read_result_totals(
    conn: sa.Connection, names: Sequence[str] | None = None
) -> dict[str, Mapping[str, float]]:
    """Per task (of ``names``, or every task): its result totals (empty when none yet)."""
    stmt = sa.select(schedules.c.name, schedules.c.result_totals)
    found: dict[str, Mapping[str, float]] = {}
    for chunk in chunks(list(names), 500) if names is not None else [None]:
        query = stmt if chunk is None else stmt.where(schedules.c.name.in_(chunk))
        for name, totals in conn.execute(query):
            found[name] = json.loads(totals) if totals else {}
    return found


def run_output_of(conn: sa.Connection, run_id: int) -> dict[str, Any] | None:
    """Run ``run_id``'s output row (output, byte counts, result, note), None when it said
    nothing (or its task keeps no output)."""
    row = conn.execute(sa.select(run_output).where(run_output.c.run_id == run_id)).first()
    return dict(row._mapping) if row is not None else None
