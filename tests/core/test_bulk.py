"""Batched writes (scheduler_core.bulk): what goes in comes back exactly, on both backends."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.bulk import bulk_insert_returning, bulk_update, member_of
from scheduler_core.models import task_runs

_STAMPS = [
    datetime(2026, 11, 23, 11, 48, 58, 999_999, tzinfo=UTC),
    datetime(2026, 11, 23, 11, 48, 59, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
    datetime(2199, 1, 1, 0, 0, 0, 123_457, tzinfo=UTC),
]


def _random_stamps(n: int, seed: int = 4) -> list[datetime]:
    rand = random.Random(seed)
    base = datetime(2000, 1, 1, tzinfo=UTC)
    return [base + timedelta(microseconds=rand.randrange(-(10**16), 10**17)) for _ in range(n)]


def _run_row(i: int, scheduled_for: datetime) -> dict[str, object]:
    return {
        "task_name": f"t{i}",
        "scheduled_for": scheduled_for,
        "attempt": 1,
        "trigger": "schedule",
        "status": "running",
        "started_at": scheduled_for,
        "instance_id": "bulk",
        "thread_name": None,
        "consecutive_failures_at_start": 0,
        "cancel_requested": False,
    }


def test_timestamps_and_values_round_trip_to_the_microsecond(db_engine: sa.Engine) -> None:
    """Timestamps sent in a batch (insert and update) are stored to the exact microsecond,
    None becomes NULL and texts arrive unchanged."""
    stamps = _STAMPS + _random_stamps(300)
    with db_engine.begin() as conn:
        inserted = bulk_insert_returning(
            conn,
            task_runs,
            [_run_row(i, s) for i, s in enumerate(stamps)],
            conflict=("task_name", "scheduled_for", "attempt"),
            returning=("id", "task_name", "scheduled_for"),
        )
        ids = {name: run_id for run_id, name, _when in inserted}
        assert {name: when for _id, name, when in inserted} == {
            f"t{i}": s for i, s in enumerate(stamps)
        }
        finished = {f"t{i}": s + timedelta(microseconds=i * 7 + 1) for i, s in enumerate(stamps)}
        bulk_update(
            conn,
            task_runs,
            [
                {"id": ids[name], "finished": when, "error": 'quote " and ü' if i % 2 else None}
                for i, (name, when) in enumerate(finished.items())
            ],
            types={
                "id": task_runs.c.id.type,
                "finished": task_runs.c.finished_at.type,
                "error": task_runs.c.error_message.type,
            },
            set_={"finished_at": "{finished}", "error_message": "{error}"},
            where="t.id = {id}",
        )
    with db_engine.connect() as conn:
        stored = {
            r.task_name: (r.scheduled_for, r.finished_at, r.error_message)
            for r in conn.execute(sa.select(task_runs))
        }
    assert stored == {
        f"t{i}": (s, finished[f"t{i}"], 'quote " and ü' if i % 2 else None)
        for i, s in enumerate(stamps)
    }


@pytest.mark.postgres
def test_a_naive_timestamp_is_refused_naming_its_column(pg_url: str) -> None:
    """A datetime without a time zone cannot be stored as some other instant by accident."""
    from scheduler_core.db import create_db_engine

    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn, pytest.raises(ValueError, match="scheduled_for"):
            bulk_insert_returning(
                conn,
                task_runs,
                [_run_row(1, datetime(2026, 1, 1))],
                conflict=("task_name", "scheduled_for", "attempt"),
            )
    finally:
        engine.dispose()


#: Names an array literal must carry exactly: quotes, backslashes, separators, braces,
#: spaces, a word PostgreSQL would read as NULL unquoted, and non-ASCII text.
_AWKWARD_NAMES = [
    'say "hi"',
    "back\\slash\\",
    'both \\" mixed',
    "a,b",
    "{braces}",
    "  spaced  ",
    "NULL",
    "null",
    "",
    "élan ✓",
    "tab\there",
]


def test_member_of_matches_exactly_the_values_given(db_engine: sa.Engine) -> None:
    """Set membership by names with awkward characters, and by ids, selects exactly those
    rows: no name is mangled on the way (PostgreSQL gets them as one array literal)."""
    names = [*_AWKWARD_NAMES, *(f"plain-{i}" for i in range(50))]
    when = datetime(2026, 11, 23, tzinfo=UTC)
    with db_engine.begin() as conn:
        inserted = bulk_insert_returning(
            conn,
            task_runs,
            [{**_run_row(0, when), "task_name": name} for name in names],
            conflict=("task_name", "scheduled_for", "attempt"),
            returning=("id", "task_name"),
        )
        dialect = conn.dialect.name
        wanted = [*_AWKWARD_NAMES, "plain-7", "not stored"]
        found = conn.execute(
            sa.select(task_runs.c.task_name).where(
                member_of(dialect, task_runs.c.task_name, wanted)
            )
        ).scalars()
        assert sorted(found) == sorted([*_AWKWARD_NAMES, "plain-7"])
        ids = {name: run_id for run_id, name in inserted}
        some = [ids[n] for n in _AWKWARD_NAMES[:3]] + [10**12]
        by_id = conn.execute(
            sa.select(task_runs.c.task_name).where(member_of(dialect, task_runs.c.id, some))
        ).scalars()
        assert sorted(by_id) == sorted(_AWKWARD_NAMES[:3])
        none = conn.execute(
            sa.select(task_runs.c.id).where(member_of(dialect, task_runs.c.id, []))
        ).all()
        assert none == []


def test_a_prepared_statement_with_an_array_parameter_selects_exactly_those_rows(
    pg_url: str,
) -> None:
    """``PgStatement`` (built and compiled once, run with driver values) with ``pg_any``:
    the awkward names and the ids select exactly their rows, the statement's own literal
    (status 'running') still applies, and an empty array selects nothing."""
    from scheduler_core.bulk import PgStatement, array_literal, pg_any
    from scheduler_core.db import create_db_engine

    by_name = PgStatement.of(
        sa.select(task_runs.c.task_name)
        .where(pg_any(task_runs.c.task_name, "names"))
        .where(task_runs.c.status == "running")
    )
    by_id = PgStatement.of(sa.select(task_runs.c.task_name).where(pg_any(task_runs.c.id, "ids")))
    names = [*_AWKWARD_NAMES, *(f"plain-{i}" for i in range(20))]
    when = datetime(2026, 11, 23, tzinfo=UTC)
    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn:
            inserted = bulk_insert_returning(
                conn,
                task_runs,
                [{**_run_row(0, when), "task_name": name} for name in names]
                + [{**_run_row(0, when), "task_name": "done", "status": "success"}],
                conflict=("task_name", "scheduled_for", "attempt"),
                returning=("id", "task_name"),
            )
            wanted = [*_AWKWARD_NAMES, "plain-3", "done", "not stored"]
            found = by_name.run(conn, names=array_literal(wanted)).scalars()
            assert sorted(found) == sorted([*_AWKWARD_NAMES, "plain-3"])  # not "done"
            ids = {name: run_id for run_id, name in inserted}
            some = [ids["NULL"], ids["done"], 10**12]
            assert sorted(by_id.run(conn, ids=array_literal(some)).scalars()) == ["NULL", "done"]
            assert by_id.run(conn, ids=array_literal([])).all() == []
    finally:
        engine.dispose()
    with pytest.raises(TypeError, match="all ints or all strings"):
        array_literal([1, "two"])  # type: ignore[list-item]


def test_output_rows_keep_awkward_texts_exactly(db_engine: sa.Engine) -> None:
    """Outputs and results with quotes, backslashes, braces, separators, line breaks,
    words PostgreSQL reads as NULL unquoted, non-ASCII text and nothing at all, beside runs
    with only a result or only an output, come back exactly as written (on PostgreSQL
    those texts travel as ``text[]`` literals, the other values as JSON); a run that said
    nothing gets no row."""
    import json

    from scheduler_core.store.outputs import run_output_of, write_outputs
    from scheduler_core.store.records import RunOutcome

    when = datetime(2026, 11, 23, tzinfo=UTC)
    texts = [*_AWKWARD_NAMES, "line 1\nline 2\r\n\n", "x" * 70_000, "NULL,NULL"]
    said: list[tuple[str | None, str | None]] = [
        *((text, json.dumps({"said": text})) for text in texts),
        (None, "[1]"),
        ("only an output", None),
        (None, None),
    ]
    stamps = {"scheduled_for": when, "started_at": when, "finished_at": when}
    outcomes = [
        RunOutcome(
            run_id=i + 1,
            task_name=f"t{i}",
            status="success",
            attempt=1,
            output=output,
            output_bytes=3 * i,
            output_dropped_bytes=i,
            result=result,
            result_note=None if i % 2 else f"n{i}",
            **stamps,
        )
        for i, (output, result) in enumerate(said)
    ]
    with db_engine.begin() as conn:
        write_outputs(conn, outcomes, now=when)
    with db_engine.connect() as conn:
        for o in outcomes:
            row = run_output_of(conn, o.run_id)
            if not o.says_something:
                assert row is None
                continue
            assert row is not None
            kept = (row["task_name"], row["output"], row["output_bytes"])
            assert kept == (o.task_name, o.output, o.output_bytes)
            kept = (row["output_dropped_bytes"], row["result"], row["result_note"])
            assert kept == (o.output_dropped_bytes, o.result, o.result_note)
