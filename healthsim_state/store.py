"""The DuckDB file: its tables, transactions, bulk writes and reads.

Layout (schema version :data:`SCHEMA_VERSION`):

- ``_healthsim_meta(key, value)``: the schema version;
- ``_healthsim_tables(entity, table_name, mapping, created_at)``: the mapping
  each entity table was created from (so a later version can tell what changed);
- ``scenarios``: one row a scenario, ``scenario_tags``: its tags in order;
- one table per entity type: ``scenario_id``, ``_position`` (index in the
  type's list), one typed column per mapped field, ``_residual`` (JSON text of
  what the columns cannot reproduce; NULL for most rows).

Rows are keyed by scenario, so scenarios are isolated snapshots. Scenario ids
are time-ordered (UUID version 7): a scenario's rows sit together and DuckDB's
min/max zone maps skip the rest of a large table on a load, with no index to
maintain on bulk writes. Duplicate keys are caught by the engine before any
write, so entity tables carry no key index either.

Identifiers in SQL come only from validated mappings and are quoted; every
value travels as a parameter.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import operator
import os
import random
import re
import secrets
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb

from .engine.compile import Codec
from .engine.values import is_text
from .errors import DatabaseLockedError, IncompatibleDatabaseError, OrphanedTypesWarning, Problem, StoreError, \
    ValidationError
from .evolution import SchemaReport, reconcile

SCHEMA_VERSION = 1
ENV_DB = "HEALTHSIM_DB"

_SCENARIO_COLUMNS = ("scenario_id", "name", "description", "created_at", "updated_at", "entity_count",
                     "entity_counts")

_BASE_DDL = (
    "CREATE TABLE IF NOT EXISTS _healthsim_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE IF NOT EXISTS _healthsim_tables (
        entity VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, mapping JSON NOT NULL,
        created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scenarios (
        scenario_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, description VARCHAR,
        created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
        entity_count BIGINT NOT NULL, entity_counts JSON NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scenario_tags (
        scenario_id VARCHAR NOT NULL, position INTEGER NOT NULL, tag VARCHAR NOT NULL)""",
)


def default_db_path() -> Path:
    """``$HEALTHSIM_DB`` if set, else ``~/.healthsim/healthsim.duckdb``."""
    value = os.environ.get(ENV_DB)
    return Path(value).expanduser() if value else Path.home() / ".healthsim" / "healthsim.duckdb"


def new_scenario_id() -> str:
    """A UUID version 7 string: 48 bits of Unix milliseconds, then random bits,
    so ids sort by creation time."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def utc_now() -> _dt.datetime:
    """Now, as the naive UTC datetime the store keeps (microsecond resolution)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def quote(identifier: str) -> str:
    """A quoted SQL identifier. Identifiers come from validated mappings only."""
    return '"' + identifier.replace('"', '""') + '"'


def table_ddl(codec: Codec) -> str:
    mapping = codec.mapping
    keys = set(mapping.primary_key)
    columns = ["scenario_id VARCHAR NOT NULL", "_position INTEGER NOT NULL"]
    for field in mapping.fields:
        columns.append(f"{quote(field.column)} {field.type.sql}" + (" NOT NULL" if field.column in keys else ""))
    columns.append("_residual VARCHAR")
    return f"CREATE TABLE {quote(mapping.table)} ({', '.join(columns)})"


def expected_columns(codec: Codec) -> list[tuple[str, str]]:
    fields = [(f.column, f.type.sql) for f in codec.mapping.fields]
    return [("scenario_id", "VARCHAR"), ("_position", "INTEGER"), *fields, ("_residual", "VARCHAR")]


# (file, mappings digest) pairs this process has opened and checked.
_CHECKED: set[tuple[str, str]] = set()


class Store:
    """One DuckDB file holding scenarios of the given entity types.

    The store holds no connection between operations: :meth:`connect` opens one
    for an operation (or a short burst of them) and closes it, so the file's
    lock is free for other processes whenever this one is idle. A lock held by
    another process is waited for, with backoff, up to ``lock_timeout`` seconds.
    """

    def __init__(self, path: str | os.PathLike, codecs: dict[str, Codec], *, lock_timeout: float | None = None,
                 check: bool = True):
        self.path = Path(path).expanduser()
        self.codecs = codecs
        self.lock_timeout = default_lock_timeout() if lock_timeout is None else float(lock_timeout)
        self._digest = self._layout_digest()
        self.schema_report: SchemaReport | None = None  # what the last reconciliation did
        key = (str(self.path.resolve()), self._digest)
        if check and key not in _CHECKED:
            # Fail early: a bad file or a newer version is reported, an edited mapping
            # applied, at once; once a process, as every operation checks again anyway.
            with self.connect():
                pass
            _CHECKED.add(key)

    @contextmanager
    def connect(self, *, prepare: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation, with the layout checked; closed after."""
        con = self._open_connection()
        try:
            if prepare:
                self._prepare(con)
            yield con
        except duckdb.Error as error:  # damaged file, full disk, ...: ours to name, not DuckDB's to leak
            raise StoreError(f"the database {self.path} could not be used: {error}") from error
        finally:
            try:
                con.close()
            except duckdb.Error:
                pass  # already failing, or nothing left to release

    def _open_connection(self) -> duckdb.DuckDBPyConnection:
        return connect_with_retry(self.path, self.lock_timeout)

    @staticmethod
    @contextmanager
    def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
        """All of it or none of it: commit on success, roll back on any error."""
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # --- layout --------------------------------------------------------------------

    def _prepare(self, con: duckdb.DuckDBPyConnection) -> None:
        """Check the schema version; create what is missing and apply edited
        mappings (:mod:`healthsim_state.evolution`), in one transaction.

        What the current mappings need is summed up in a digest kept in
        ``_healthsim_meta``; when the file already carries this digest, opening
        costs one small query instead of DDL and catalog introspection."""
        meta = self._read_meta(con)  # outside a transaction: a missing table must not abort one
        if meta is not None:
            self._check_version(meta.get("schema_version"))
            if meta.get("layout") == self._digest:
                return
        with self.transaction(con):
            self.schema_report = self._reconcile(con, meta)
        if self.schema_report.orphaned:
            warnings.warn(OrphanedTypesWarning(
                f"{self.path} holds entity types with no mapping: {', '.join(self.schema_report.orphaned)}; "
                "their tables and data are kept, and come back when their mapping files do"), stacklevel=4)

    def _reconcile(self, con: duckdb.DuckDBPyConnection, meta: dict[str, str] | None) -> SchemaReport:
        for ddl in _BASE_DDL:
            con.execute(ddl)
        if meta is None or "schema_version" not in meta:
            con.execute("INSERT OR REPLACE INTO _healthsim_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        report = reconcile(con, self.codecs, self._table_columns(con), path=self.path)
        con.execute("INSERT OR REPLACE INTO _healthsim_meta VALUES ('layout', ?)", [self._digest])
        return report

    def plan(self) -> SchemaReport:
        """What opening the file with these mappings would change, changing
        nothing: the reconciliation runs in a transaction that is rolled back."""
        with self.connect(prepare=False) as con:
            meta = self._read_meta(con)
            if meta is not None:
                self._check_version(meta.get("schema_version"))
            con.execute("BEGIN TRANSACTION")
            try:
                report = self._reconcile(con, meta)
            finally:
                con.execute("ROLLBACK")
        report.applied = False
        return report

    def _layout_digest(self) -> str:
        mappings = sorted(json.dumps(c.mapping.describe(), sort_keys=True) for c in self.codecs.values())
        return hashlib.sha256(json.dumps([SCHEMA_VERSION, mappings]).encode()).hexdigest()

    @staticmethod
    def _read_meta(con: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
        """The meta table's rows, or None for a file without one (a new file)."""
        try:
            return dict(con.execute("SELECT key, value FROM _healthsim_meta").fetchall())
        except duckdb.CatalogException:
            return None

    def _check_version(self, version: str | None) -> None:
        if version is not None and (not version.isdigit() or int(version) > SCHEMA_VERSION):
            raise IncompatibleDatabaseError(
                f"{self.path} was written by a newer healthsim-state (schema version {version}; this version "
                f"reads up to {SCHEMA_VERSION}); upgrade healthsim-state to open it")

    @staticmethod
    def _table_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND database_name = current_database() "
            "ORDER BY table_name, column_index").fetchall()
        tables: dict[str, list[tuple[str, str]]] = {}
        for table, column, sql_type in rows:
            tables.setdefault(table, []).append((column, sql_type))
        return tables

    # --- scenarios ------------------------------------------------------------------

    def find_scenario(self, con: duckdb.DuckDBPyConnection, name_or_id: str, *,
                      by_id: bool = True) -> dict[str, Any] | None:
        """The scenario row whose id (first) or name is ``name_or_id``.

        A string no scenario can be named (not valid Unicode text) finds none."""
        if not isinstance(name_or_id, str):
            raise ValidationError([Problem(f"a scenario id or name is a string, got {type(name_or_id).__name__}",
                                           path="name_or_id", value=name_or_id)], summary="invalid scenario lookup")
        if not is_text(name_or_id):
            return None
        columns = ", ".join(_SCENARIO_COLUMNS)
        if by_id:
            sql = (f"SELECT {columns} FROM (SELECT *, 0 AS rank FROM scenarios WHERE scenario_id = $1 "
                   f"UNION ALL SELECT *, 1 AS rank FROM scenarios WHERE name = $1) ORDER BY rank LIMIT 1")
        else:
            sql = f"SELECT {columns} FROM scenarios WHERE name = $1"
        row = con.execute(sql, [name_or_id]).fetchone()
        return None if row is None else _scenario_dict(row)

    def insert_scenario(self, con, scenario_id: str, name: str, description: str | None,
                        counts: dict[str, int], now: _dt.datetime) -> None:
        con.execute("INSERT INTO scenarios VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [scenario_id, name, description, now, now, sum(counts.values()), json.dumps(counts)])

    def update_scenario(self, con, scenario_id: str, description: str | None,
                        counts: dict[str, int], now: _dt.datetime) -> None:
        con.execute("UPDATE scenarios SET description = ?, updated_at = ?, entity_count = ?, entity_counts = ? "
                    "WHERE scenario_id = ?",
                    [description, now, sum(counts.values()), json.dumps(counts), scenario_id])

    def touch_scenario(self, con, scenario_id: str, counts: dict[str, int], now: _dt.datetime) -> None:
        """New entity counts and ``updated_at``, description unchanged."""
        con.execute("UPDATE scenarios SET updated_at = ?, entity_count = ?, entity_counts = ? WHERE scenario_id = ?",
                    [now, sum(counts.values()), json.dumps(counts), scenario_id])

    def delete_scenario_row(self, con, scenario_id: str) -> None:
        con.execute("DELETE FROM scenario_tags WHERE scenario_id = ?", [scenario_id])
        con.execute("DELETE FROM scenarios WHERE scenario_id = ?", [scenario_id])

    def replace_tags(self, con, scenario_id: str, tags: list[str]) -> None:
        con.execute("DELETE FROM scenario_tags WHERE scenario_id = ?", [scenario_id])
        if tags:
            with con.appender("scenario_tags") as appender:
                appender.append_rows([(scenario_id, i, tag) for i, tag in enumerate(tags)])

    def tags_of(self, con, scenario_id: str) -> list[str]:
        rows = con.execute("SELECT tag FROM scenario_tags WHERE scenario_id = ? ORDER BY position",
                           [scenario_id]).fetchall()
        return [tag for (tag,) in rows]

    def list_scenarios(self, con, tag: str | None, search: str | None, limit: int | None) -> list[dict[str, Any]]:
        """Newest ``updated_at`` first. ``tag`` matches one tag and ``search`` a
        substring of name or description, both case-insensitively (``contains``,
        not ``LIKE``: a ``%`` in a search is a percent sign)."""
        columns = ", ".join(f"s.{c}" for c in _SCENARIO_COLUMNS)
        sql = f"""
            SELECT {columns},
                   (SELECT list(t.tag ORDER BY t.position) FROM scenario_tags t
                     WHERE t.scenario_id = s.scenario_id) AS tags
            FROM scenarios s
            WHERE ($tag IS NULL OR EXISTS (SELECT 1 FROM scenario_tags t
                                           WHERE t.scenario_id = s.scenario_id AND lower(t.tag) = lower($tag)))
              AND ($search IS NULL OR contains(lower(s.name), lower($search))
                   OR contains(lower(coalesce(s.description, '')), lower($search)))
            ORDER BY s.updated_at DESC, s.scenario_id DESC
            LIMIT $limit"""
        rows = con.execute(sql, {"tag": tag, "search": search, "limit": limit}).fetchall()
        result = []
        for row in rows:
            item = _scenario_dict(row[:-1])
            item["tags"] = list(row[-1] or [])
            result.append(item)
        return result

    # --- entity rows -------------------------------------------------------------------

    def append_rows(self, con, codec: Codec, rows: list[tuple]) -> None:
        """One bulk write of a type's rows (DuckDB's appender: no SQL per row)."""
        with con.appender(codec.mapping.table) as appender:
            appender.append_rows(rows)

    def delete_rows(self, con, scenario_id: str, entities: list[str]) -> None:
        for entity in entities:
            codec = self.codecs.get(entity)
            if codec is not None:
                con.execute(f"DELETE FROM {quote(codec.mapping.table)} WHERE scenario_id = ?", [scenario_id])

    def key_rows(self, con, codec: Codec, scenario_id: str) -> list[tuple]:
        """``(position, key values...)`` of a type's stored rows in one scenario."""
        keys = ", ".join(quote(column) for column in codec.mapping.primary_key)
        return con.execute(f"SELECT _position, {keys} FROM {quote(codec.mapping.table)} WHERE scenario_id = ?",
                           [scenario_id]).fetchall()

    def delete_positions(self, con, codec: Codec, scenario_id: str, positions: list[int]) -> None:
        """Delete the rows at these positions, in one statement."""
        con.execute(f"DELETE FROM {quote(codec.mapping.table)} WHERE scenario_id = ? "
                    "AND list_contains(?::INTEGER[], _position)", [scenario_id, positions])

    @staticmethod
    def fetch_rows(con, codec: Codec, scenario_id: str) -> list[tuple]:
        """A type's rows of one scenario, in saved order, in one query:
        ``(position, col_0, ..., col_n, residual)``.

        Sorted here rather than by ``ORDER BY``: rows are nearly always stored
        in position order already, Python's sort checks that in one C pass, and
        DuckDB's sort setup cost more than the rest of a small query."""
        columns = ", ".join(f.type.select.format(quote(f.column)) for f in codec.mapping.fields)
        sql = f"SELECT _position, {columns}, _residual FROM {quote(codec.mapping.table)} WHERE scenario_id = ?"
        rows = con.execute(sql, [scenario_id]).fetchall()
        rows.sort(key=_first)
        return rows


ENV_LOCK_TIMEOUT = "HEALTHSIM_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 10.0
_PID = re.compile(r"PID (\d+)")


def default_lock_timeout() -> float:
    """``$HEALTHSIM_LOCK_TIMEOUT`` seconds if set, else 10."""
    value = os.environ.get(ENV_LOCK_TIMEOUT)
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise StoreError(f"{ENV_LOCK_TIMEOUT}={value!r} is not a number of seconds") from None


def _is_lock_conflict(error: duckdb.Error) -> bool:
    text = str(error)
    return "Could not set lock" in text or "Conflicting lock" in text


def connect_with_retry(path: Path, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open ``path`` read-write. While another process holds the file's lock,
    retry with jittered exponential backoff (5 ms doubling to 250 ms) until
    ``timeout`` seconds have passed, then raise :class:`DatabaseLockedError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the directory for the database {path}: {error.strerror or error}") from None
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.Error as error:
            if not _is_lock_conflict(error):
                raise StoreError(f"cannot open {path} as a healthsim-state database: {error}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = _PID.search(str(error))
                raise DatabaseLockedError(
                    f"{path} is locked by another process"
                    + (f" (PID {holder[1]})" if holder else "")
                    + f" and stayed locked for {timeout:g} s; wait for it to finish, stop it, or raise "
                    f"{ENV_LOCK_TIMEOUT}", path=path, pid=int(holder[1]) if holder else None) from None
            time.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 2, 0.25)


_first = operator.itemgetter(0)


def _scenario_dict(row: tuple) -> dict[str, Any]:
    item = dict(zip(_SCENARIO_COLUMNS, row))
    item["created_at"] = item["created_at"].replace(tzinfo=_dt.timezone.utc)
    item["updated_at"] = item["updated_at"].replace(tzinfo=_dt.timezone.utc)
    item["entity_counts"] = json.loads(item["entity_counts"])
    return item
