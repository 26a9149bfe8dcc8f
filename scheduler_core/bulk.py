"""Batched writes and set membership with a fixed SQL text, whatever the batch size.

On PostgreSQL a batch is one statement: ``col = ANY(:ids)`` instead of an ``IN (...)``
list, and ``UPDATE ... FROM (rows of :rows)`` / ``INSERT ... SELECT FROM (rows of :rows)``
instead of one statement per row. The SQL text does not depend on how many rows there are,
so the driver's query cache and prepared statements are reused every cycle (an ``IN`` list
of 250 names is a new text each time, and psycopg re-parses it), and the server plans one
statement, not 250. The rows travel as one JSON document, an array of value arrays
(``jsonb_array_elements``; keys are not repeated per row, which halves what is encoded):
``json.dumps`` is C code, while adapting a Python list to a PostgreSQL array is Python code
per element in psycopg (text arrays escape each element with a regular expression; binary
arrays pack each one) and cost more than the statement itself. On SQLite (in-process, no
round trips) the same templates run as an ``executemany``.

A template names per-row values as ``{name}`` and the target row as ``t``:
``set_={"runs_success_total": "t.runs_success_total + {success}"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

__all__ = [
    "PgStatement",
    "array_literal",
    "bulk_insert_returning",
    "bulk_update",
    "member_of",
    "pg_any",
    "pg_recordset",
    "pg_rows",
    "pg_value_rows",
    "text_array_literal",
]

_PG: sa.Dialect = pg.dialect()  # type: ignore[no-untyped-call]  # psycopg2's, untyped


def member_of(
    dialect: str, column: sa.ColumnElement[Any], values: Sequence[Any]
) -> sa.ColumnElement[bool]:
    """``column IN values``: one array parameter on PostgreSQL, an ``IN`` list elsewhere."""
    if dialect == "postgresql":
        literal = _array_literal(values)
        if literal is not None:
            # Strings as text[] (no varchar length to truncate a longer value to a match).
            # The parameter is untyped (no ``::VARCHAR`` first): the server then reads it
            # as the array itself, a constant, where a cast from text would be evaluated
            # again for every row a scan visits (seconds for 10,000 rows).
            element = sa.Text() if literal.startswith('{"') else column.type
            text = sa.bindparam(None, literal, type_=sa.types.NullType())
            return column == sa.any_(sa.cast(text, pg.ARRAY(element)))
        return column == sa.any_(sa.bindparam(None, list(values), type_=pg.ARRAY(column.type)))
    return column.in_(list(values))


@dataclass(frozen=True)
class PgStatement:
    """A statement built once with SQLAlchemy, kept as PostgreSQL SQL text for
    ``exec_driver_sql``. Building and compiling a select anew costs ~0.5 ms of Python;
    the per-pass statements (claim, running counts, finalize fences, next due time) did
    that several times a pass. ``defaults`` are the values the statement fixed (its
    literals); the named bind parameters are given at each call."""

    sql: str
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, stmt: sa.ClauseElement) -> PgStatement:
        compiled = stmt.compile(dialect=_PG)
        return cls(sql=str(compiled), defaults=dict(compiled.params))

    def run(self, conn: sa.Connection, **params: Any) -> sa.CursorResult[Any]:
        """Execute with ``params`` (driver values: aware datetimes, ``array_literal``s)."""
        return conn.exec_driver_sql(self.sql, {**self.defaults, **params})


def pg_any(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``column = ANY(CAST(%(name)s AS type[]))`` for a ``PgStatement``: the parameter is
    the ``array_literal`` of the values (see ``member_of`` for why a literal)."""
    element = sa.Text() if isinstance(column.type, sa.String) else column.type
    param = sa.bindparam(name, type_=sa.types.NullType())
    return column == sa.any_(sa.cast(param, pg.ARRAY(element)))


def array_literal(values: Sequence[int] | Sequence[str]) -> str:
    """``values`` (all ints, or all strings) as the literal ``pg_any`` reads."""
    literal = _array_literal(values)
    if literal is None:
        raise TypeError(f"an array literal needs all ints or all strings, got {values[:3]!r}")
    return literal


def _array_literal(values: Sequence[Any]) -> str | None:
    """``values`` (all ints, or all strings) as one PostgreSQL array literal, to be cast
    to the column's array type; None for other values. psycopg adapts a list element by
    element in Python (a regular expression per string), which cost more than the query.
    Quoted elements keep every character but ``"`` and ``\\``, which are escaped."""
    kinds = set(map(type, values))
    if not kinds or kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    if kinds == {str}:
        every = "".join(values)
        if '"' in every or "\\" in every:  # rare: escape them element by element
            values = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
        return '{"' + '","'.join(values) + '"}'
    return None


def _pg_type(type_: sa.types.TypeEngine[Any]) -> str:
    """The type's PostgreSQL name, compiled once per type object (~15 us each time, and a
    batch statement names a type per column)."""
    known = _PG_TYPE_NAMES.get(id(type_))
    if known is None or known[0] is not type_:
        known = _PG_TYPE_NAMES[id(type_)] = (type_, str(type_.compile(dialect=_PG)))
    return known[1]


#: id(type) -> (the type, kept so the id stays its own; its PostgreSQL name).
_PG_TYPE_NAMES: dict[int, tuple[sa.types.TypeEngine[Any], str]] = {}


def _render(template: str, names: Sequence[str], consts: Sequence[str], style: str) -> str:
    if style == "pg":
        refs = {n: f"v.{n}" for n in names} | {c: f"%({c})s" for c in consts}
    else:
        refs = {n: f":{n}" for n in (*names, *consts)}
    return template.format_map(refs)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _is_timestamp(type_: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(getattr(type_, "impl", type_), sa.DateTime)


def pg_recordset(
    names: Sequence[str],
    types: Mapping[str, sa.types.TypeEngine[Any]],
    *,
    texts: Sequence[str] = (),
) -> str:
    """The batch as one parameter: a JSON array of rows, each an array of values in
    ``names`` order (no key repeated per row: half the bytes to encode), typed by column.
    Timestamps travel as integer microseconds since the Unix epoch (see ``pg_rows``),
    turned back into whole seconds plus microseconds: exact for any date.

    ``jsonb``, not ``json``: the server parses the document once, and ``e->>i`` is then an
    array lookup. On ``json`` every ``e->>i`` parses the row's text again, and a statement
    reads a column once per use: the finalize tally, ~40 ``FILTER`` aggregates over a few
    columns, spent 16 ms on 157 rows that way (2.5 ms on ``jsonb``).

    ``texts`` are text columns that travel apart, each as a ``text[]`` parameter of its
    own name (``text_array_literal``), its n-th element the n-th row's: long texts (a
    run's output) cost ``json.dumps`` ~4 us a KiB, as it looks at every character, where
    an array literal is a copy (see ``text_array_literal``)."""

    def column(i: int, name: str) -> str:
        if not _is_timestamp(types[name]):
            return f"CAST(e->>{i} AS {_pg_type(types[name])}) AS {name}"
        us = f"CAST(e->>{i} AS bigint)"
        return (
            f"TIMESTAMPTZ '1970-01-01 00:00:00+00' + {us} / 1000000 * INTERVAL '1 second' "
            f"+ mod({us}, 1000000) * INTERVAL '1 microsecond' AS {name}"
        )

    columns = ", ".join(column(i, n) for i, n in enumerate(names))
    rows = "jsonb_array_elements(CAST(%(rows)s AS jsonb))"
    if not texts:
        return f"(SELECT {columns} FROM {rows} AS e) AS v"
    arrays = ", ".join(f"unnest(CAST(%({n})s AS text[]))" for n in texts)
    # ROWS FROM zips the functions' rows by position: row n with each array's element n.
    return (
        f"(SELECT {columns}, {', '.join(texts)} "
        f"FROM ROWS FROM ({rows}, {arrays}) AS x(e, {', '.join(texts)})) AS v"
    )


def text_array_literal(values: Sequence[str | None]) -> str:
    """``values`` as the literal of a PostgreSQL ``text[]`` (None as NULL), for the
    ``texts`` of ``pg_recordset``: every element quoted, so only ``"`` and ``\\`` are
    escaped (rare in output: two ``str.__contains__`` an element tell), and the elements
    are copied as they are, where ``json.dumps`` looks at each character. PostgreSQL's
    text cannot hold NUL: the values must not either."""
    pieces = ["{"]
    for value in values:
        if value is None:
            pieces.append("NULL,")
            continue
        if '"' in value or "\\" in value:
            value = value.replace("\\", "\\\\").replace('"', '\\"')
        pieces += ('"', value, '",')
    if len(pieces) == 1:
        return "{}"
    pieces[-1] = pieces[-1][:-1] + "}"  # the last element's comma closes the array
    return "".join(pieces)


def pg_rows(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    types: Mapping[str, sa.types.TypeEngine[Any]],
) -> str:
    """``rows`` (mappings with every name of ``names``) as the JSON ``pg_recordset`` reads;
    see ``pg_value_rows``."""
    return pg_value_rows([[row[n] for n in names] for row in rows], names, types)


def pg_value_rows(
    rows: Sequence[list[Any]],
    names: Sequence[str],
    types: Mapping[str, sa.types.TypeEngine[Any]],
) -> str:
    """``rows``, each a list of values in ``names`` order (changed in place), as the JSON
    ``pg_recordset`` reads. A timestamp is sent as integer microseconds since the Unix
    epoch: exact (a float of seconds is not beyond 2255), and half the cost of an ISO text
    through ``json.dumps``'s ``default`` hook."""
    stamps = [i for i, n in enumerate(names) if _is_timestamp(types[n])]
    for values in rows:
        for i in stamps:
            value = values[i]
            if value is not None:
                if value.tzinfo is None:
                    raise ValueError(
                        f"naive datetime {value!r} given for {names[i]!r}, where an aware "
                        "UTC one is needed"
                    )
                values[i] = (value - _EPOCH) // _US  # exact: timedelta // timedelta is an int
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


def bulk_update(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    types: Mapping[str, sa.types.TypeEngine[Any]],
    set_: Mapping[str, str],
    where: str,
    consts: Mapping[str, tuple[Any, sa.types.TypeEngine[Any]]] | None = None,
) -> None:
    """Run ``UPDATE table AS t SET set_ WHERE where`` once per row of ``rows``, as one
    statement on PostgreSQL. Each row maps every name of ``types`` to its value; ``consts``
    are the values (and types) shared by every row.

    Callers give at most one row per target row: PostgreSQL applies only one of several
    source rows that match the same target.
    """
    if not rows:
        return
    names = list(types)
    fixed = dict(consts or {})
    if conn.dialect.name == "postgresql":
        sets = ", ".join(
            f"{col} = {_render(expr, names, list(fixed), 'pg')}" for col, expr in set_.items()
        )
        sql = (
            f"UPDATE {table.name} AS t SET {sets} "
            f"FROM {pg_recordset(names, types)} "
            f"WHERE {_render(where, names, list(fixed), 'pg')}"
        )
        params = {"rows": pg_rows(rows, names, types)}
        params.update({c: value for c, (value, _type) in fixed.items()})
        conn.exec_driver_sql(sql, params)
        return
    sets = ", ".join(
        f"{col} = {_render(expr, names, list(fixed), 'sqlite')}" for col, expr in set_.items()
    )
    where_sql = _render(where, names, list(fixed), "sqlite")
    stmt = sa.text(f"UPDATE {table.name} AS t SET {sets} WHERE {where_sql}")
    stmt = stmt.bindparams(
        *(sa.bindparam(n, type_=types[n]) for n in names),
        *(sa.bindparam(c, type_=type_) for c, (_value, type_) in fixed.items()),
    )
    shared = {c: value for c, (value, _type) in fixed.items()}
    conn.execute(stmt, [{**row, **shared} for row in rows])


# long: one statement built for both backends, side by side, so they stay the same
def bulk_insert_returning(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict: Sequence[str],
    returning: Sequence[str] = (),
    update: Sequence[str] = (),
    latest: Sequence[str] = (),
    consts: Mapping[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (all with the same keys), each with the column values ``consts``
    shared by all. A row that hits the unique key ``conflict`` is skipped, or, with
    ``update``, sets those columns of the existing row (an upsert; at most one row per
    key); the ``latest`` columns (timestamps) keep the later of the stored and the new
    value, so a write that arrives out of order never moves them back. Returns the
    ``returning`` columns of the rows written (any order), with each column's Python
    type."""
    if not rows:
        return []
    columns = list(rows[0])
    fixed = dict(consts or {})
    if conn.dialect.name == "postgresql":
        types = {c: table.c[c].type for c in columns}
        sets = [f"{c} = EXCLUDED.{c}" for c in update]
        # GREATEST ignores NULLs: NULL only when both are.
        sets += [f"{c} = GREATEST(t.{c}, EXCLUDED.{c})" for c in latest]
        action = "DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING"
        values = [f"v.{c}" for c in columns] + [
            f"CAST(%(c_{c})s AS {_pg_type(table.c[c].type)})" for c in fixed
        ]
        sql = (
            f"INSERT INTO {table.name} AS t ({', '.join([*columns, *fixed])}) "
            f"SELECT {', '.join(values)} FROM {pg_recordset(columns, types)} "
            f"ON CONFLICT ({', '.join(conflict)}) {action}"
        )
        params = {"rows": pg_rows(rows, columns, types)}
        params.update({f"c_{c}": value for c, value in fixed.items()})
        if not returning:
            conn.exec_driver_sql(sql, params)
            return []
        sql += f" RETURNING {', '.join(f't.{c}' for c in returning)}"
        # Values as the driver returns them: timestamps are aware and in UTC (every
        # session's time zone, see ``create_db_engine``), what the column types would give.
        return [tuple(row) for row in conn.exec_driver_sql(sql, params).all()]
    from sqlalchemy.dialects import sqlite

    base = sqlite.insert(table)
    sqlite_sets: dict[str, Any] = {c: base.excluded[c] for c in update}
    for c in latest:
        # SQLite's two-argument max() is NULL if either is: each side falls back to the other.
        # Its stored timestamps are fixed-width text, so they compare in time order.
        stored, new = table.c[c], base.excluded[c]
        sqlite_sets[c] = sa.func.max(sa.func.coalesce(stored, new), sa.func.coalesce(new, stored))
    insert = (
        base.on_conflict_do_update(index_elements=list(conflict), set_=sqlite_sets)
        if sqlite_sets
        else base.on_conflict_do_nothing(index_elements=list(conflict))
    )
    full = [{**row, **fixed} for row in rows]
    if not returning:
        conn.execute(insert, full)
        return []
    stmt = insert.returning(*(table.c[c] for c in returning), sort_by_parameter_order=True)
    return [tuple(row) for row in conn.execute(stmt, full)]
