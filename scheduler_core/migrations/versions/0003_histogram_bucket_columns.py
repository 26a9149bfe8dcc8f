"""histograms as columns: a count column per bucket and a sum, so finalize adds to them in SQL

Replaces ``duration_histogram`` / ``start_delay_histogram`` (JSON text
``{"buckets": [...], "sum": s, "count": n}``) on ``scheduler_schedules`` with
``<prefix>_bucket_NN`` (non-cumulative, the last is +Inf) and ``<prefix>_sum_seconds``.
Stored counts are carried over; an empty (``{}``) or malformed value becomes zeros.
Downgrade writes the JSON back from the columns.

Created 2026-11-30.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_TABLE = "scheduler_schedules"
#: (old JSON column, new column prefix, buckets including +Inf) as of this revision; fixed
#: here rather than read from scheduler_core.histograms, which may change after it.
_HISTOGRAMS = (("duration_histogram", "duration", 21), ("start_delay_histogram", "start_delay", 16))

#: PostgreSQL has no "is this valid JSON" test before 16: parse in a session-local function
#: that turns any error into NULL, so one bad value cannot stop the migration.
_PG_PARSE = """
CREATE FUNCTION pg_temp.schedctl_0003_histogram(stored text, size int) RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    parsed json;
BEGIN
    parsed := stored::json;
    IF json_typeof(parsed) <> 'object' OR json_typeof(parsed -> 'buckets') <> 'array'
       OR json_array_length(parsed -> 'buckets') <> size THEN
        RETURN NULL;
    END IF;
    PERFORM (e::numeric)::bigint FROM json_array_elements_text(parsed -> 'buckets') AS e;
    PERFORM (parsed ->> 'sum')::float8;
    RETURN parsed;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$
"""


def _buckets(prefix: str, size: int) -> list[str]:
    return [f"{prefix}_bucket_{i:02d}" for i in range(size)]


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    with op.batch_alter_table(_TABLE) as batch:
        for _old, prefix, size in _HISTOGRAMS:
            for column in _buckets(prefix, size):
                batch.add_column(
                    sa.Column(column, big, nullable=False, server_default=sa.text("0"))
                )
            batch.add_column(
                sa.Column(
                    f"{prefix}_sum_seconds", sa.Float(), nullable=False, server_default=sa.text("0")
                )
            )
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(_PG_PARSE)
    for old, prefix, size in _HISTOGRAMS:
        op.execute(
            _backfill_pg(old, prefix, size) if postgres else _backfill_sqlite(old, prefix, size)
        )
    if postgres:
        op.execute("DROP FUNCTION pg_temp.schedctl_0003_histogram(text, int)")
    with op.batch_alter_table(_TABLE) as batch:
        for old, _prefix, _size in _HISTOGRAMS:
            batch.drop_column(old)


def _backfill_pg(old: str, prefix: str, size: int) -> str:
    sets = [
        f"{c} = COALESCE(((p.h -> 'buckets' ->> {i})::numeric)::bigint, 0)"
        for i, c in enumerate(_buckets(prefix, size))
    ]
    sets.append(f"{prefix}_sum_seconds = COALESCE((p.h ->> 'sum')::float8, 0)")
    return (
        f"UPDATE {_TABLE} AS t SET {', '.join(sets)} "
        f"FROM (SELECT name, pg_temp.schedctl_0003_histogram({old}, {size}) AS h "
        f"FROM {_TABLE}) AS p WHERE t.name = p.name AND p.h IS NOT NULL"
    )


def _backfill_sqlite(old: str, prefix: str, size: int) -> str:
    sets = [
        f"{c} = COALESCE(CAST(json_extract({old}, '$.buckets[{i}]') AS INTEGER), 0)"
        for i, c in enumerate(_buckets(prefix, size))
    ]
    sets.append(f"{prefix}_sum_seconds = COALESCE(CAST(json_extract({old}, '$.sum') AS REAL), 0)")
    # CASE, not AND: json_type() raises on malformed text, so it runs only after json_valid().
    valid = (
        f"CASE WHEN json_valid({old}) THEN json_type({old}, '$.buckets') = 'array' "
        f"AND json_array_length({old}, '$.buckets') = {size} ELSE 0 END"
    )
    return f"UPDATE {_TABLE} SET {', '.join(sets)} WHERE {valid}"


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        for old, _prefix, _size in _HISTOGRAMS:
            batch.add_column(sa.Column(old, sa.Text(), nullable=False, server_default="{}"))
    text = "text" if op.get_bind().dialect.name == "postgresql" else "TEXT"
    for old, prefix, size in _HISTOGRAMS:
        buckets = _buckets(prefix, size)
        listed = " || ',' || ".join(f"CAST({c} AS {text})" for c in buckets)
        # The form the JSON columns held: {"buckets":[...],"sum":s,"count":n}.
        op.execute(
            f"UPDATE {_TABLE} SET {old} = '{{\"buckets\":[' || {listed} || '],\"sum\":' "
            f"|| CAST({prefix}_sum_seconds AS {text}) || ',\"count\":' "
            f"|| CAST({' + '.join(buckets)} AS {text}) || '}}'"
        )
    with op.batch_alter_table(_TABLE) as batch:
        for old, prefix, size in _HISTOGRAMS:
            batch.alter_column(old, existing_type=sa.Text(), server_default=None)
            for column in _buckets(prefix, size):
                batch.drop_column(column)
            batch.drop_column(f"{prefix}_sum_seconds")
