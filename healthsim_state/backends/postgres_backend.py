"""The PostgreSQL backend: one database (and schema) on a server, shared by
many clients at once.

Connections. A backend keeps a few idle connections between operations
(connecting costs more than most operations) and hands them to one operation
at a time; :meth:`PostgresBackend.close` releases them. The URL is libpq's:
a password may come from it, from ``PGPASSWORD`` or from ``~/.pgpass``, and
every message names the URL without its password.

Transactions. Every operation is one ``REPEATABLE READ`` transaction (read
sessions are ``READ ONLY``), so a load sees one snapshot. A write that loses
a race (a serialization failure, a deadlock, or a unique key of the store's
own tables another transaction has just committed, such as the same new
scenario name) raises :class:`TransactionConflictError`, and
:meth:`Backend.run` runs it again from the start, with jittered backoff, for
up to ``HEALTHSIM_RETRY_TIMEOUT`` seconds: a second save of one new name then
finds the first and raises ``ScenarioExistsError``. Every write locks its
scenario's row first (``SELECT ... FOR UPDATE``, see :class:`Dialect`):
writers of one scenario queue there before doing any work, and take no
other row of it in another order (the deadlocks of ``delete_entities``); the
one that waited finds the row changed after its snapshot, fails at once
(a serialization failure, before any work) and runs again. Each session's
server process checks that its client is still there every
:data:`CONNECTION_CHECK_MS` while a statement runs, so a client killed
mid-write stops holding that lock within about that time, not when its
statement ends. The transaction's life and the translation of the driver's errors are the base class's template;
this module supplies the hooks.

The layout lock. The tables' layout (the store's creation, additions from a
client's mapping files, ``migrate-schema``) changes only under an exclusive
advisory lock, and every operation holds the same lock in shared mode from
before its snapshot is taken until it ends. So no operation ever sees a
layout changing under it, and two clients never change the layout at once.
An operation that finds it must change the layout (:meth:`Session.lock_layout`)
raises :class:`~.base.LayoutLockNeeded`, giving up its shared hold, and
:meth:`Backend.run` runs it again holding the lock exclusively from the
start: a lock is never upgraded, so two clients cannot deadlock on it.
The key is per database and schema. Waiting for it is bounded by the lock
timeout, after which :class:`DatabaseLockedError` names the holders' PIDs.

Writes in bulk use binary ``COPY`` (no statement per row); reads select each
column in the read form of the :class:`Dialect` (ISO text from ``to_char``
for dates and timestamps, ``float8`` or text for decimals, JSON text, never
``jsonb``, which reorders keys and drops duplicates).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
import zlib
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Iterator, Mapping, Sequence

from ..errors import (
    DatabaseLockedError,
    MissingExtraError,
    ServerConnectionError,
    StoreError,
    TransactionConflictError,
)
from ..column_types import ColumnType
from .base import Backend, Dialect, LayoutLockNeeded, Session, quote, rows_of_columns
from .sqltext import numbered
from .urls import redact, scrub

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import AdaptersMap, Dumper
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import Format, TransactionStatus
    from psycopg.types.string import TextLoader
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised in a subprocess test
    if not (_missing.name or "").startswith("psycopg"):
        raise
    raise MissingExtraError("a postgresql:// URL needs the PostgreSQL driver, an optional extra: "
                            "pip install 'healthsim-state[postgres]'") from None

from . import pg_copy  # after the check above: it needs the driver

# A write retires a row by setting its ``_until``: an UPDATE, which writes a
# new version of the row. No index holds ``_until``, so where the row's page
# has room for that version the update is HOT: no new index entry, and a
# small WAL record. Pages filled only to half keep room for a new version of
# every row on them, so even an overwrite that changes every entity retires
# each row in place (98% of 20,000 patients; 18% at 85%, where the rest moved
# to new pages, each with an index entry beside a dead one, and the index's
# leaves, full at about the same version, paid for cleanup passes and splits
# in one overwrite: its UPDATE took 70-270 ms against 30-100 ms, its WAL 12.3
# MB against 7.7). The cost is room: a saved scenario's table takes 1.5x the
# bytes of 85% (its rows 1.7x the pages), and a page of retired rows stays
# half full, where at 85% vacuum gives the moved rows' room to later writes.
# New tables only (new types', and those ``migrate-schema`` rewrites): an
# existing one keeps its fill (``ALTER TABLE ... SET (fillfactor = 50)`` gives
# its new pages the room).
VERSIONS_FILLFACTOR = 50

DIALECT = Dialect(
    name="postgres",
    types={"varchar": "VARCHAR", "integer": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE PRECISION",
           "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP", "json": "JSON"},
    read={
        "date": "to_char({0}, 'YYYY-MM-DD')",  # four-digit years, zero-padded, as isoformat writes them
        # isoformat: 'T', and six digits of fraction only when there is one (the only '.' in the text)
        "timestamp": "replace(to_char({0}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '')",
        "decimal_short": "{0}::float8",  # correctly rounded, as float(Decimal) is
        "decimal_long": "{0}::text",  # keeps the scale's digits: numeric(38,10) 1.5 -> '1.5000000000'
        "json": "{0}::text",  # the text as written: json keeps key order, duplicates and big numbers
    },
    compare={"json": "{}::text"},  # json has no equality operator; its text compares exactly
    indexed=True,
    lock_rows=" FOR UPDATE",
    versions_storage=f" WITH (fillfactor = {VERSIONS_FILLFACTOR})",
    row_id="ctid",
)

NUMERIC_OID = 1700
APPLICATION_NAME = "healthsim-state"
CONNECT_TIMEOUT = 10  # seconds, unless the URL or PGCONNECT_TIMEOUT says otherwise
POOL_SIZE = 4  # idle connections kept between operations
FETCH_CHUNK = 2000  # rows a fetch receives at a time
ANALYZE_ROWS = 1000  # rows a write must add to a table before it refreshes the table's statistics ...
# How often (ms) a session's server process checks, while it runs a statement,
# that its client is still there (PostgreSQL 14 and later, on Linux): a
# client killed mid-statement otherwise holds its locks, its scenario's row
# among them, until the statement ends, which for a big write is seconds.
CONNECTION_CHECK_MS = 1000
ANALYZE_SHARE = 1.0  # ... and this share of the rows the statistics counted (1: it at least doubled)
_LAYOUT_LOCK_CLASS = 0x48534D53  # 'HSMS': the high 32 bits of the advisory lock key
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP)\b", re.IGNORECASE)


class _NumericDumper(Dumper):
    """A decimal column's value in binary ``COPY``: a ``Decimal``, or a float
    the engine found exact at the column's scale (its shortest repr is the
    decimal, as DuckDB takes it). psycopg's own dumper (C, where built) does
    the packing."""

    oid = NUMERIC_OID
    format = Format.BINARY

    def __init__(self, cls: type, context: Any = None):
        super().__init__(cls, context)
        self._pack = psycopg.adapters.get_dumper_by_oid(NUMERIC_OID, Format.BINARY)(Decimal, context).dump

    def dump(self, obj: Any) -> Any:
        if obj.__class__ is float:
            obj = Decimal(repr(obj))
        return self._pack(obj)


def _adapters() -> AdaptersMap:
    """How values cross the wire: json and jsonb arrive as their text (never
    parsed, so key order, duplicate keys and big numbers are what was
    stored), and a decimal column takes floats in binary ``COPY``."""
    adapters = AdaptersMap(psycopg.adapters)
    for name in ("json", "jsonb"):
        adapters.register_loader(name, TextLoader)
    adapters.register_dumper(None, _NumericDumper)
    return adapters


ADAPTERS = _adapters()
_DECIMAL_DUMPER = psycopg.adapters.get_dumper_by_oid(NUMERIC_OID, Format.BINARY)  # for Decimals only
# The types binary COPY sends a column's value as, by the column's type: the
# binary form of json (and of varchar) is its UTF-8 text.
_COPY_AS = {114: 25, 1043: 25}


class _Connection:
    """A connection and what this backend knows about it."""

    __slots__ = ("con", "lock_key", "__weakref__")

    def __init__(self, con: "psycopg.Connection", lock_key: int):
        self.con = con
        self.lock_key = lock_key


class PostgresBackend(Backend):
    dialect = DIALECT

    def __init__(self, url: str, *, read_only: bool = False, lock_timeout: float = 10.0):
        self.url = url
        self.label = redact(url)
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self._idle: list[_Connection] = []
        self._pid = os.getpid()
        self._pool_lock = threading.Lock()
        self._known_to_exist = False
        self._finalizer = weakref.finalize(self, _close_all, self._idle, self._pid)

    # --- connections -----------------------------------------------------------------------

    def _connect(self) -> _Connection:
        """A new connection, set up: autocommit (transactions are begun by
        hand, after the layout lock), a lock timeout, UTF-8 text."""
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.Error as error:
            raise StoreError(f"{self.label} is not a usable PostgreSQL URL: {_reason(error, self.url)}") from None
        except UnicodeDecodeError:  # psycopg decodes libpq's values as UTF-8; its message quotes the bytes
            raise StoreError(f"{self.label} is not a usable PostgreSQL URL: a percent-escape in it is not UTF-8 "
                             "text") from None
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            extra["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in params and not os.environ.get("PGAPPNAME"):
            extra["application_name"] = APPLICATION_NAME
        try:
            con = psycopg.connect(self.url, autocommit=True, prepare_threshold=None, context=ADAPTERS,
                                  cursor_factory=psycopg.RawCursor, **extra)
        except psycopg.Error as error:
            raise connection_error(error, self.url, self.label) from None
        try:
            encoding = con.info.parameter_status("server_encoding")
            if encoding is not None and encoding.upper() not in ("UTF8", "UTF-8"):
                raise StoreError(f"the database {self.label} stores text as {encoding}; healthsim-state needs a "
                                 "UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')")
            millis = max(1, round(self.lock_timeout * 1000))  # 0 would mean "wait for ever" to PostgreSQL
            con.execute(f"SET lock_timeout = {millis}")
            _check_client_connection(con)
            schema = con.execute("SELECT current_schema()").fetchone()[0]
        except BaseException:
            con.close()
            raise
        return _Connection(con, (_LAYOUT_LOCK_CLASS << 32) | zlib.crc32((schema or "").encode()))

    def _take(self) -> tuple[_Connection, bool]:
        """An idle connection (and True), or a new one (and False)."""
        with self._pool_lock:
            if os.getpid() != self._pid:  # a forked child: the parent's connections are not ours to use
                self._idle.clear()
                self._pid = os.getpid()
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, _close_all, self._idle, self._pid)
            while self._idle:
                held = self._idle.pop()
                if not held.con.closed:
                    return held, True
        return self._connect(), False

    def _give_back(self, held: _Connection) -> None:
        con = held.con
        healthy = not con.closed and con.info.transaction_status == TransactionStatus.IDLE
        if healthy and os.getpid() == self._pid:
            with self._pool_lock:
                if len(self._idle) < POOL_SIZE:
                    self._idle.append(held)
                    return
        _close(con)

    def close(self) -> None:
        with self._pool_lock:
            if os.getpid() == self._pid:
                while self._idle:
                    _close(self._idle.pop().con)
            self._idle.clear()

    @contextmanager
    def connection(self) -> Iterator["psycopg.Connection"]:
        """A new autocommit connection outside any transaction and the pool,
        for the features built on the backend (a user's query: nothing it
        sets outlives it), closed when the block ends."""
        held = self._connect()
        try:
            yield held.con
        finally:
            _close(held.con)

    def exists(self) -> bool:
        """Whether the store's tables are there (the database must exist either way)."""
        if self._known_to_exist:
            return True
        with self.translated():
            for attempt in (0, 1):
                held, pooled = self._take()
                try:
                    found = held.con.execute("SELECT to_regclass('_healthsim_meta') IS NOT NULL").fetchone()[0]
                except psycopg.Error as error:
                    _close(held.con)
                    if pooled and attempt == 0 and isinstance(error, psycopg.OperationalError):
                        continue  # the server closed an idle connection
                    raise
                self._give_back(held)
                self._known_to_exist = bool(found)
                return self._known_to_exist
        raise AssertionError("unreachable")

    # --- transactions ---------------------------------------------------------------------------

    # --- the hooks of the transaction template (see Backend.session) ----------------------------

    driver_errors = (psycopg.Error, UnicodeError)

    @contextmanager
    def _connection(self, writable: bool, exclusive: bool) -> Iterator[Session]:
        """A connection holding the layout lock (shared, or ``exclusive`` for
        a write that asked for it), before the transaction's snapshot; when
        the block ends the lock is released, the statistics of tables a
        committed write grew refreshed, the connection given back."""
        exclusive = exclusive and writable
        held = self._locked(exclusive)
        session = PostgresSession(held.con, writable=writable, label=self.label, backend=self, exclusive=exclusive)
        try:
            try:
                yield session
            finally:
                session.wait_for_writes(quietly=True)  # whatever ended the session: no copy outlives it
                _unlock(held, exclusive)
            _refresh_statistics(held.con, session.grown)
        finally:
            self._give_back(held)

    def _begin(self, session: Session) -> None:
        session.con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" + ("" if session.writable else " READ ONLY"))

    def _commit(self, session: Session) -> None:
        session.wait_for_writes()
        session.close_cursors()
        session.con.execute("COMMIT")

    def _rollback(self, session: Session) -> None:
        session.wait_for_writes(quietly=True)
        session.close_cursors()
        _rollback(session.con)

    def translate(self, error: BaseException) -> Exception:
        if isinstance(error, UnicodeError):  # a value psycopg cannot encode or decode
            return StoreError(f"the database {self.label} could not be used: a value is not valid Unicode text "
                              f"({error.reason})")
        return translate(error, self.label, self.url)

    def _locked(self, exclusive: bool) -> _Connection:
        """A connection holding the layout lock (shared, or ``exclusive``). A
        pooled connection the server has dropped is replaced once."""
        for attempt in (0, 1):
            held, pooled = self._take()
            try:
                self._lock(held, exclusive)
            except psycopg.OperationalError:
                _close(held.con)
                if pooled and attempt == 0:
                    continue  # the server closed an idle connection (restarted, or timed it out)
                raise
            except BaseException:
                _close(held.con)
                raise
            return held
        raise AssertionError("unreachable")

    def _lock(self, held: _Connection, exclusive: bool) -> None:
        """Take the layout lock for this operation, before its snapshot."""
        function = "pg_advisory_lock" if exclusive else "pg_advisory_lock_shared"
        try:
            held.con.execute(f"SELECT {function}($1)", [held.lock_key])
        except pg_errors.LockNotAvailable:
            holders = _lock_holders(held)
            raise DatabaseLockedError(
                f"{self.label}: the store's layout is "
                + ("in use by other clients" if exclusive else "being changed by another client")
                + (f" (PID {', '.join(map(str, holders))})" if holders else "")
                + f" and stayed so for {self.lock_timeout:g} s; wait for it to finish, or raise "
                "HEALTHSIM_LOCK_TIMEOUT", path=self.label, pid=holders[0] if holders else None) from None

class PostgresSession(Session):
    dialect = DIALECT

    def __init__(self, con: "psycopg.Connection", *, writable: bool, label: str, backend: PostgresBackend,
                 exclusive: bool):
        self.con = con
        self.writable = writable
        self.label = label
        self.exclusive = exclusive
        self._translated = backend.translated  # ours at once: a caller inside the transaction may handle it
        self._copy_types: dict[str, dict[str, int]] = {}  # relation -> column -> type oid, this transaction
        self._schema_types_known = False  # whether _copy_types holds every table of the current schema
        self._cursors: list[Any] = []
        self._named = 0
        self._copies = pg_copy.CopyPipe(con)
        self.grown: dict[str, tuple[int, tuple[str, ...]]] = {}  # table -> (rows written, columns planned on)

    def _cursor(self, sql: str, params: Sequence[Any]) -> "psycopg.Cursor":
        self.wait_for_writes()
        cursor = self.con.cursor()
        with self._translated():
            cursor.execute(numbered(sql), list(params) if params else None)
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor(sql, params).close()
        if _DDL.match(sql):
            self._copy_types.clear()  # a table may have changed its columns
            self._schema_types_known = False

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Every row, received in chunks: psycopg turns one chunk into tuples
        while the server sends the next (faster than waiting for all)."""
        self.wait_for_writes()
        cursor = self.con.cursor()
        try:
            with self._translated():
                return list(cursor.stream(numbered(sql), list(params) if params else None, size=FETCH_CHUNK))
        finally:
            cursor.close()

    def stream(self, sql: str, params: Sequence[Any], batch_size: int) -> Iterator[list[tuple]]:
        """Rows from a server-side cursor, ``batch_size`` at a time."""
        self.wait_for_writes()
        self._named += 1
        cursor = psycopg.RawServerCursor(self.con, f"_healthsim_stream_{self._named}")
        self._cursors.append(cursor)
        try:
            with self._translated():
                cursor.execute(numbered(sql), list(params) if params else None)
                rows = cursor.fetchmany(batch_size)
            while rows:
                yield rows
                self.wait_for_writes()  # the caller may have written between two batches
                with self._translated():
                    rows = cursor.fetchmany(batch_size)
        finally:
            self._close_cursor(cursor)

    def _close_cursor(self, cursor: Any) -> None:
        if cursor in self._cursors:
            self._cursors.remove(cursor)
            if not cursor.closed and not self.con.closed \
                    and self.con.info.transaction_status == TransactionStatus.INTRANS:
                cursor.close()

    def close_cursors(self) -> None:
        for cursor in list(self._cursors):
            try:
                self._close_cursor(cursor)
            except psycopg.Error:
                pass

    def append(self, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
        """Binary ``COPY``, each value sent as its column's type; a large one
        is still with the server when this returns (see :mod:`.pg_copy`)."""
        self._copy(table, columns, rows)

    def append_columns(self, table: str, columns: Sequence[str], arrays: Sequence[Any],
                       types: Sequence[ColumnType | None], length: int) -> None:
        """As rows (see :meth:`append`), whose decimals are all ``Decimal``:
        psycopg's own dumper packs them, without the float test of ours."""
        self._copy(table, columns, rows_of_columns(arrays, types, length), (_DECIMAL_DUMPER,))

    def _copy(self, table: str, columns: Sequence[str], rows: Sequence[tuple], dumpers: Sequence[type] = ()) -> None:
        if not rows:
            return
        relation = quote(table)
        types = self._types_of(relation, columns)
        statement = f"COPY {relation} ({', '.join(map(quote, columns))}) FROM STDIN (FORMAT BINARY)"
        with self._translated():
            self._copies.copy(statement, types, rows, dumpers)

    def wait_for_writes(self, quietly: bool = False) -> None:
        """Wait for the copy still with the server, if any; raise its error
        (not ``quietly``: a rollback follows, which needs only the wait)."""
        try:
            with self._translated():
                self._copies.wait()
        except Exception:
            if not quietly:
                raise

    def _types_of(self, relation: str, columns: Sequence[str]) -> list[int]:
        known = self._copy_types.get(relation)
        if known is None:
            self._learn_types(relation)
            known = self._copy_types[relation]
        try:
            return [_COPY_AS.get(known[column], known[column]) for column in columns]
        except KeyError as missing:
            raise StoreError(f"the database {self.label}: table {relation} has no column {missing.args[0]!r}") \
                from None

    def _learn_types(self, relation: str) -> None:
        """The column types of ``relation``: asked for alone the first time
        in a transaction; from the second table on (an operation that writes
        many, such as a save, one table a type), with those of every table
        of the current schema, once. Asking waits for the copy in flight (one
        connection, one statement at a time), and a large save's next type
        would wait with it before its rows are formatted. (The bare name
        finds a table of the current schema unless a temporary table hides
        it, and ours, ``_healthsim...``, never have a store table's name.)"""
        if self._copy_types and not self._schema_types_known:
            self._schema_types_known = True
            for table, column, oid in self.fetchall(
                    "SELECT c.relname, a.attname, a.atttypid FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
                    "AND a.attnum > 0 AND NOT a.attisdropped"):
                self._copy_types.setdefault(quote(table), {})[column] = int(oid)
            if relation in self._copy_types:
                return
        rows = self.fetchall("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = ?::regclass "
                             "AND attnum > 0 AND NOT attisdropped", [relation])
        self._copy_types[relation] = {name: int(oid) for name, oid in rows}

    def create_temp_as(self, name: str, sql: str, params: Sequence[Any] = ()) -> str:
        """A temporary table (in ``pg_temp``, so never one of the store's; the
        bare name finds it, as ``pg_temp`` comes first in the search path),
        dropped at the end of the transaction if its caller has not."""
        self.execute(f"DROP TABLE IF EXISTS pg_temp.{quote(name)}")
        self.execute(f"CREATE TEMP TABLE {quote(name)} ON COMMIT DROP AS {sql}", params)
        return name

    def analyze(self, table: str, columns: Sequence[str]) -> None:
        """Temporary tables get no statistics from autovacuum: without them
        a join of 20,000 rows can be planned as a nested loop (20 s). Only
        the columns plans use: a column's statistics cost time to sample."""
        self.execute(f"ANALYZE {quote(table)} ({', '.join(map(quote, columns))})")

    def grew(self, table: str, rows: int, columns: Sequence[str]) -> None:
        if rows:
            before = self.grown.get(table, (0, ()))[0]
            self.grown[table] = (before + rows, tuple(columns))

    def lock_layout(self) -> None:
        """Hold the layout lock alone. A session that holds it shared runs
        again from the start holding it exclusively (see the module notes)."""
        if not self.exclusive:
            raise LayoutLockNeeded(f"{self.label}: the layout changes; run again holding the layout lock alone")


# --- helpers -----------------------------------------------------------------------------------

def _refresh_statistics(con: "psycopg.Connection", grown: Mapping[str, tuple[int, Sequence[str]]]) -> None:
    """After a commit, ``ANALYZE`` each table the write grew by at least
    :data:`ANALYZE_ROWS` rows and by :data:`ANALYZE_SHARE` of what its
    statistics last counted (a new table has none: the first big save into
    it qualifies), for the columns plans use. A plan made before a table was
    ever analyzed took a first overwrite of 20,000 entities from 0.4 s to
    minutes; autovacuum would analyze it a minute later. Each refresh at
    least doubles what was counted, so a growing table is sampled a few
    times, not every write. It runs in a transaction of its own, holding no
    lock of the write; a table another client is analyzing (or vacuuming)
    is left to it (``SKIP_LOCKED``). Best effort: an error is ignored."""
    for table, (rows, columns) in grown.items():
        if rows < ANALYZE_ROWS:
            continue
        try:
            counted = con.execute("SELECT reltuples FROM pg_class WHERE oid = $1::regclass",
                                  [quote(table)]).fetchone()
            if counted is not None and rows >= ANALYZE_SHARE * max(counted[0], 0):
                con.execute(f"ANALYZE (SKIP_LOCKED) {quote(table)} ({', '.join(map(quote, columns))})")
        except psycopg.Error:
            if con.info.transaction_status != TransactionStatus.IDLE:
                _rollback(con)
            return


def _check_client_connection(con: "psycopg.Connection") -> None:
    """Have the server check the client while a statement runs (see
    :data:`CONNECTION_CHECK_MS`), where it can: a server older than 14 has no
    such setting, and one on a platform that cannot tell a closed socket
    refuses it; both then notice a lost client at the statement's end."""
    if con.info.server_version < 140000:
        return
    try:
        con.execute(f"SET client_connection_check_interval = {CONNECTION_CHECK_MS}")
    except (pg_errors.InvalidParameterValue, pg_errors.UndefinedObject):
        pass


def _unlock(held: _Connection, exclusive: bool) -> None:
    con = held.con
    if con.closed:
        return
    function = "pg_advisory_unlock" if exclusive else "pg_advisory_unlock_shared"
    try:
        if con.info.transaction_status != TransactionStatus.IDLE:
            _rollback(con)
        con.execute(f"SELECT {function}($1)", [held.lock_key])
    except psycopg.Error:
        _close(con)  # closing the connection releases its locks


def _lock_holders(held: _Connection) -> list[int]:
    try:
        rows = held.con.execute(
            "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::oid "
            "AND objid = $2::oid AND pid <> pg_backend_pid() ORDER BY pid",
            [held.lock_key >> 32, held.lock_key & 0xFFFFFFFF]).fetchall()
    except psycopg.Error:
        return []
    return [pid for (pid,) in rows]


def _rollback(con: "psycopg.Connection") -> None:
    if con.closed:
        return
    try:
        con.execute("ROLLBACK")
    except psycopg.Error:
        _close(con)


def _close(con: "psycopg.Connection") -> None:
    try:
        con.close()
    except psycopg.Error:
        pass


def _close_all(idle: list[_Connection], pid: int) -> None:
    """At exit, or when a backend is dropped unclosed: release its idle
    connections (never a parent process's, from a forked child)."""
    if os.getpid() != pid:
        return
    while idle:
        _close(idle.pop().con)


def translate(error: "psycopg.Error", label: str, url: str) -> Exception:
    """Our error for a psycopg one: a lost race is a conflict (worth running
    again), a lock held too long names the wait, a lost connection says so,
    anything else names the store. Never a password of ``url``."""
    state = getattr(error, "sqlstate", None)
    text = scrub(_first_line(str(error)), url)
    if state in ("40001", "40P01"):
        return TransactionConflictError(f"{label}: another transaction changed the same data at the same time "
                                        f"and kept doing so ({text})")
    if state == "23505" and getattr(error.diag, "table_name", None) in _RACED_TABLES:
        return TransactionConflictError(f"{label}: another transaction saved the same key at the same time "
                                        f"({text})")
    if state == "55P03":
        return DatabaseLockedError(f"{label}: another client held a lock on the data this operation changes "
                                   f"for longer than the lock timeout ({text}); try again, or raise "
                                   "HEALTHSIM_LOCK_TIMEOUT", path=label)
    if state == "42501":
        return StoreError(f"{label}: permission denied ({text}); the URL's role needs to create tables in the "
                          "schema and to read and write them (see the README on PostgreSQL)")
    if _connection_lost(error, state):
        return ServerConnectionError(f"lost the connection to {label}: {text}")
    return StoreError(f"the database {label} could not be used: {text}")


# A unique key of these tables taken by another transaction's commit is a
# lost race (two saves of one new name, say), worth running again.
_RACED_TABLES = ("scenarios", "scenario_versions", "_healthsim_meta", "_healthsim_tables")

# The server ended the session (a fast or crash shutdown, pg_terminate_backend,
# a server still starting) or the connection broke (class 08).
_SESSION_ENDED = ("57P01", "57P02", "57P03")


def _connection_lost(error: "psycopg.Error", state: str | None) -> bool:
    if state is None:
        return isinstance(error, psycopg.OperationalError)
    return state in _SESSION_ENDED or state.startswith("08")


_HINTS = (
    ("password authentication failed", "check the user and password (in the URL, PGPASSWORD or ~/.pgpass)"),
    ("no password supplied", "give a password in the URL, PGPASSWORD or ~/.pgpass"),
    ("does not exist", "create the database first (createdb, or CREATE DATABASE); healthsim-state creates its "
                       "tables, not the database"),
    ("Connection refused", "is the server running, and accepting TCP/IP connections on that host and port?"),
    ("could not translate host name", "check the host name in the URL"),
    ("failed to resolve host", "check the host name in the URL"),
    ("timeout expired", "the server did not answer; check the host and port, and that it is reachable"),
)


def connection_error(error: "psycopg.Error", url: str, label: str) -> StoreError:
    """A connection failure as our typed error: what went wrong, what to do,
    the URL without its password."""
    reason = _reason(error, url)
    hint = next((h for needle, h in _HINTS if needle in reason), None)
    if isinstance(error, psycopg.ProgrammingError) and "invalid" in reason:
        return StoreError(f"{label} is not a usable PostgreSQL URL: {reason}")
    return ServerConnectionError(f"cannot connect to {label}: {reason}" + (f"; {hint}" if hint else ""))


def _reason(error: BaseException, url: str) -> str:
    """libpq's words, without its framing, and never a password."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[-1] if lines and "FATAL" in lines[-1] else (lines[0] if lines else "unknown error")
    text = re.sub(r"^connection (?:failed|is bad): ", "", text)
    text = re.sub(r'^connection to server (?:at|on) .*? failed: ', "", text)
    text = re.sub(r"^(?:FATAL|ERROR):\s+", "", text)
    return scrub(text, url)


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"
