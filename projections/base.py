"""What a projection is: a name, its tables, and how one delivered event changes them."""

from __future__ import annotations

import functools
import itertools
import re
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg import abc as pg_abc
from psycopg import pq
from psycopg.abc import PQGen
from psycopg.adapt import PyFormat, Transformer
from psycopg.waiting import Ready, Wait

from streams.envelope import Envelope

CHECKPOINTS_DDL = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    stream_seq bigint NOT NULL,
    log_position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Moves a checkpoint only from the value its runner last wrote; otherwise fails the
-- transaction (SQLSTATE ERPCK), so the batch sent with it in one round trip is not applied.
CREATE OR REPLACE FUNCTION erp_move_checkpoint(projection text, previous bigint, stream_seq bigint,
    log_position bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE projection_checkpoints AS c SET stream_seq = erp_move_checkpoint.stream_seq,
        log_position = erp_move_checkpoint.log_position, updated_at = now()
    WHERE c.name = projection AND c.stream_seq = previous;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the checkpoint of % is no longer %', projection, previous USING ERRCODE = 'ERPCK';
    END IF;
END $$;
"""
CHECKPOINT_MOVED = "ERPCK"

POSITIONS_CHANNEL = "erp_read_models"  # NOTIFY '[=]<projection>[,<projection>…]:<log position>'
REPLACED = "="  # the read models were replaced (a rebuild): they are at the position, not past it


def positions_payload(projections: list[str], position: int, *, replaced: bool = False) -> str:
    """What a NOTIFY on POSITIONS_CHANNEL says: these read models have reached `position`;
    with `replaced`, their tables were swapped for rebuilt ones that are at `position`, even
    if the tables before them had got further (the live runner applies the rest again)."""
    return f"{REPLACED if replaced else ''}{','.join(projections)}:{position}"


def read_positions(payload: str) -> dict[str, int]:
    names, _, position = payload.removeprefix(REPLACED).rpartition(":")
    return dict.fromkeys(names.split(","), int(position))


@dataclass(frozen=True)
class Delivered:
    """An event as a projector receives it from the stream."""

    subject: str
    stream_seq: int
    log_position: int
    aggregate_version: int
    envelope: Envelope[Any] | None  # None: a subject this projection does not read


class Statements:
    """The statements of one transaction, sent in one round trip: each as a prepared statement
    (prepared once per connection), all in one libpq pipeline.

    Measured against binding them on the client and sending one query text, for a live
    one-event batch (four statements): client CPU 0.38 → 0.20 ms, PostgreSQL's 0.41 → 0.25 ms;
    against psycopg's own pipeline, for a rebuild: ~40 → ~10 µs of client CPU per statement.

    A projection may also give rows to a *row-set statement* (`add_row`): one that applies a
    JSON array of rows, `%(rows)s`, in one execution. The rows of one key (an aggregate) run in
    the order given: its first row in the first execution of the batch, its second in the
    next, and so on; rows of different keys share executions, so such a statement's effect on
    one key must not depend on another key's rows. Measured on 90,000 opportunity events in
    batches of 5,000: client CPU 21-22 → 3 µs per event, PostgreSQL's 38-41 → 23-25 µs."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._queued: list[tuple[str, Any]] = []
        self._rounds: list[dict[str, list[Any]]] = []  # per round: row-set statement -> rows
        self._used: dict[Any, int] = {}  # key -> rounds it has a row in

    def add(self, query: str, params: Any = None) -> None:
        self._queue_rows()  # after every row given before it
        self._queued.append((query, params))

    def add_many(self, query: str, params: Iterable[Any]) -> None:
        for one in params:
            self.add(query, one)

    def add_row(self, query: str, key: Any, row: dict[str, Any]) -> None:
        """A row for `query`, which reads its rows from `%(rows)s` (a JSON array), after
        every row of `key` given before it."""
        used = self._used.get(key, 0)
        self._used[key] = used + 1
        if used == len(self._rounds):
            self._rounds.append({})
        self._rounds[used].setdefault(query, []).append(row)

    def __len__(self) -> int:
        """Statements to run (a row-set statement once per round it has rows in)."""
        return len(self._queued) + sum(len(statements) for statements in self._rounds)

    async def send(self) -> None:
        """Runs them in one transaction (the connection in autocommit mode, no transaction open)."""
        self._queue_rows()
        queued, self._queued = self._queued, []
        if queued:
            await _pipelined(self._conn, queued)

    def _queue_rows(self) -> None:
        for statements in self._rounds:
            for query, rows in statements.items():
                self._queued.append((query, {"rows": to_json(rows)}))
        self._rounds.clear()
        self._used.clear()


_json = msgspec.json.Encoder(decimal_format="number")


def to_json(value: Any) -> str:
    """`value` (rows, payload Structs) as JSON text for a `::jsonb` parameter; amounts as JSON
    numbers, which PostgreSQL reads exactly into numeric columns."""
    return _json.encode(value).decode()


# The row-set statements join their rows to the read model by its primary key. The planner
# guesses 100 rows for any JSON row set and, for that many, would hash-join them against a
# scan of the whole table; a connection applying projections plans nested loops instead (an
# index lookup per row), whatever the batch.
def unbounded_numeric(*tables: str) -> str:
    """DDL: the numeric columns of `tables` take any amount the domain accepted (a column of
    bounded precision would refuse one, and the projection would stop there for every tenant
    until the amount fitted). Tables made with a bounded one are altered in place: no rewrite,
    their values already fit."""
    listed = ", ".join(f"'{table}'::regclass" for table in tables)
    return f"""
DO $$ DECLARE c record; BEGIN
    FOR c IN SELECT attrelid::regclass AS t, attname FROM pg_attribute
             WHERE attrelid IN ({listed}) AND atttypid = 'numeric'::regtype AND atttypmod <> -1
                   AND NOT attisdropped
    LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE numeric', c.t, c.attname);
    END LOOP;
END $$;
"""


FOR_ROW_SETS = "SET enable_hashjoin = off; SET enable_mergejoin = off"


def rows_of(columns: str) -> str:
    """The rows of a row-set statement, `r`, with these columns (`name type, …`)."""
    return f"jsonb_to_recordset(%(rows)s::jsonb) AS r({columns})"


STEP = "id uuid, v integer, pos bigint, at timestamptz"  # the columns of every versioned change


def versioned_change(table: str, key: str, columns: str, assignments: str) -> str:
    """A row-set statement: each row changes `table`'s row `t` of key `r.id` (`STEP` and
    `columns`) only on top of the version before it, so a replayed event changes nothing."""
    return f"""
UPDATE {table} t SET {assignments}, version = r.v, log_position = r.pos, updated_at = r.at
FROM {rows_of(f"{STEP}, {columns}" if columns else STEP)}
WHERE t.{key} = r.id AND t.version = r.v - 1"""


# -- statements in one libpq pipeline ----------------------------------------------------------
#
# psycopg's own pipeline takes a generator step and an event-loop wait for each statement;
# here each statement's parameters are bound in C (psycopg's Transformer) and the statement
# queued on the libpq connection, which is then flushed once and its results read once. The
# statements run in the pipeline's implicit transaction, which ends at its Sync: committed if
# all succeeded, otherwise rolled back and the first error raised.

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@functools.cache
def _numbered(query: str) -> tuple[bytes, tuple[str, ...] | None, int]:
    """The query with $1… placeholders, the names they take their values from (None:
    positional), and how many there are."""
    names: list[str] = []
    count = itertools.count(1)

    def number(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        names.append(match[1])
        return f"${next(count)}"

    text = _PLACEHOLDER.sub(number, query)
    named = tuple(names) if names and names[0] is not None else None
    return text.encode(), named, len(names)


_MAX_PREPARED = 200  # per connection; statements beyond these (the API's reads) are parsed each time


@dataclass
class _Prepared:
    """A connection's prepared statements, per query text and parameter types."""

    transformer: pg_abc.Transformer
    names: dict[tuple[str, tuple[int, ...]], bytes] = field(default_factory=dict)
    # never reused: a statement prepared in a pipeline that then failed still exists
    numbers: Iterator[int] = field(default_factory=itertools.count)


_PREPARED: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Prepared] = weakref.WeakKeyDictionary()


async def _pipelined(conn: psycopg.AsyncConnection[Any], queued: list[tuple[str, Any]],
                     rows: list[pq.abc.PGresult] | None = None) -> None:
    """Runs `queued` in one round trip; appends the results of those returning rows to `rows`."""
    prepared = _PREPARED.get(conn)
    if prepared is None:
        prepared = _PREPARED[conn] = _Prepared(Transformer(conn))
    tx, names = prepared.transformer, prepared.names
    new: list[tuple[str, tuple[int, ...]]] = []
    # Bound first: a value that cannot be adapted fails here, with nothing sent.
    # (name, text to prepare, values, formats); name None: an unnamed statement of that text
    bound: list[tuple[bytes | None, bytes | None, Any, Any]] = []
    try:
        for query, params in queued:
            text, named, count = _numbered(query)
            values = tx.dump_sequence([params[name] for name in named] if named else params or (),
                                      [PyFormat.AUTO] * count)
            key = (query, tuple(tx.types or ()))
            name = names.get(key)
            if name is None and len(names) >= _MAX_PREPARED:
                bound.append((None, text, values, (key[1], tx.formats)))
                continue
            if name is None:
                name = names[key] = b"erp_%d" % next(prepared.numbers)
                new.append(key)
                bound.append((name, text, key[1], None))
            bound.append((name, None, values, tx.formats))
    except BaseException:
        for key in new:
            del names[key]
        raise
    pgconn = conn.pgconn
    async with conn.lock:
        pgconn.enter_pipeline_mode()
        try:
            for statement, sql, values, formats in bound:
                if statement is None:
                    assert sql is not None
                    pgconn.send_query_params(sql, values, param_types=formats[0], param_formats=formats[1])
                elif sql is None:
                    pgconn.send_query_prepared(statement, values, param_formats=formats)
                else:
                    pgconn.send_prepare(statement, sql, param_types=values)
            pgconn.pipeline_sync()
            failed = await conn.wait(_results(pgconn, rows))
        except BaseException:
            pgconn.finish()  # results left unread: the connection cannot be used again
            raise
        pgconn.exit_pipeline_mode()
    if failed is not None:
        for key in new:  # their preparing may have been skipped after the error
            names.pop(key, None)
        raise psycopg.errors.error_from_result(failed, encoding=conn.info.encoding)


async def pipelined_rows(conn: psycopg.AsyncConnection[Any], queued: list[tuple[str, Any]],
                         ) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
    """Column names and rows of each statement of `queued` that returns rows, in order: all
    sent in one round trip and run in one implicit transaction (so a `set_config(…, true)`
    among them holds for those after it, and for nothing after the last)."""
    results: list[pq.abc.PGresult] = []
    await _pipelined(conn, queued, results)
    encoding = conn.info.encoding
    out = []
    for result in results:
        tx = Transformer(conn)
        tx.set_pgresult(result)
        columns = [(result.fname(i) or b"").decode(encoding) for i in range(result.nfields)]
        out.append((columns, tx.load_rows(0, result.ntuples, tuple)))
    return out


def _results(pgconn: pq.abc.PGconn, rows: list[pq.abc.PGresult] | None) -> PQGen[pq.abc.PGresult | None]:
    """Sends what is queued, then reads every result up to the Sync: the first error, if any;
    those with rows are appended to `rows` unless it is None."""
    while pgconn.flush() != 0:
        if (yield Wait.RW) & Ready.R:
            pgconn.consume_input()
    failed = None
    while True:
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one statement's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return failed
            if result.status == pq.ExecStatus.FATAL_ERROR and failed is None:
                failed = result
            elif result.status == pq.ExecStatus.TUPLES_OK and rows is not None:
                rows.append(result)
        yield Wait.R
        pgconn.consume_input()


class Projection(Protocol):
    name: str
    ddl: str

    def reads(self, subject: str) -> type[Any] | None:
        """The payload type of `subject` if this projection reads it."""

    def apply(self, out: Statements, event: Delivered) -> None:
        """Adds the statements that change the read model for one event to the batch's transaction."""
