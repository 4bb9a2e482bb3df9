"""The store's layout: its own tables, the mapping set it records, its version.

Layout (schema version :data:`SCHEMA_VERSION`), the same on every backend:

- ``_healthsim_meta(key, value)``: ``schema_version``, ``mappings_digest`` (of
  the mapping set in force), ``generation`` (counts layout changes: a client
  that sees it unchanged knows no table was rewritten) and ``history_limit``;
- ``_healthsim_tables(entity, table_name, mapping, created_at)``: the mapping
  set in force, one document a type (:meth:`Mapping.describe`). Every client
  reads and writes with these, whatever its own mapping files say;
- ``scenarios``: one row a scenario, with its current ``version``;
  ``scenario_tags``: its current tags in order; ``scenario_versions``: one row
  a version (operation, time, description, tags, counts, metadata, changes);
- per entity type a table ``<table>__versions``: ``scenario_id``, ``_position``
  (the entity's place in its type's list), one typed column per mapped field,
  ``_residual`` (JSON text of what the columns cannot reproduce; NULL for most
  rows), ``_since`` (the version that wrote the row) and ``_until`` (the
  version that replaced it; NULL while it is current). A row belongs to
  version ``v`` when ``_since <= v`` and ``_until`` is NULL or above ``v``;
- and a view ``<table>``: the current rows, for SQL users.

One table a type (not a second one for replaced rows) keeps what each write
touches small: on DuckDB every table a checkpoint touches costs whole blocks,
so new files also use 16 KB blocks (see the DuckDB backend).

Rows are keyed by scenario, so scenarios are isolated snapshots. Scenario ids
are time-ordered (UUID version 7), so a scenario's rows sit together and
min/max zone maps skip the rest of a big table. Writes name their columns, so
a table's physical column order never matters.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Dialect, Session, quote
from .caches import RECORDED_MAPPINGS
from .errors import IncompatibleDatabaseError, MappingError
from .mapping.loader import VERSIONS_SUFFIX, mapping_from_document
from .mapping.model import Mapping
from .values import parse_json

SCHEMA_VERSION = 2
META = "_healthsim_meta"
TABLES = "_healthsim_tables"
REWRITE_TABLE = "_healthsim_rewrite"

BASE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {META} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {TABLES} (
        entity VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, mapping VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scenarios (
        scenario_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, description VARCHAR,
        created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
        entity_count BIGINT NOT NULL, entity_counts VARCHAR NOT NULL, version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scenario_tags (
        scenario_id VARCHAR NOT NULL, position INTEGER NOT NULL, tag VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scenario_versions (
        scenario_id VARCHAR NOT NULL, version INTEGER NOT NULL, operation VARCHAR NOT NULL,
        saved_at TIMESTAMP NOT NULL, description VARCHAR, tags VARCHAR NOT NULL, entity_count BIGINT NOT NULL,
        entity_counts VARCHAR NOT NULL, metadata VARCHAR, changes VARCHAR NOT NULL,
        PRIMARY KEY (scenario_id, version))""",
)


def versions_table(table: str) -> str:
    """The table holding every version of a type's rows (``table`` is the view of current ones)."""
    return table + VERSIONS_SUFFIX


def data_columns(mapping: Mapping) -> tuple[str, ...]:
    """The columns a row ``(position, col_0, ..., residual)`` fills, in order."""
    return ("_position", *(f.column for f in mapping.fields), "_residual")


def write_columns(mapping: Mapping) -> tuple[str, ...]:
    """What a write of current rows names: ``scenario_id``, the data columns, ``_since``."""
    return ("scenario_id", *data_columns(mapping), "_since")


def entity_ddl(dialect: Dialect, mapping: Mapping, *, table: str | None = None) -> str:
    """``CREATE TABLE`` for a type's rows of every version, under ``table``
    (default: the mapping's versions table), with the engine's storage
    options for it (PostgreSQL: pages with room to retire rows in place)."""
    keys = set(mapping.primary_key)
    columns = ["scenario_id VARCHAR NOT NULL", "_position INTEGER NOT NULL"]
    for f in mapping.fields:
        columns.append(f"{quote(f.column)} {dialect.column_type(f.type)}" + (" NOT NULL" if f.column in keys else ""))
    columns += ["_residual VARCHAR", "_since INTEGER NOT NULL", "_until INTEGER"]
    return (f"CREATE TABLE {quote(table or versions_table(mapping.table))} ({', '.join(columns)})"
            + dialect.versions_storage)


def view_ddl(mapping: Mapping) -> list[str]:
    """The view of a type's current rows, named as the mapping's table (made
    anew whenever the columns change: a view lists them)."""
    names = ", ".join(quote(c) for c in write_columns(mapping))
    return [drop_view_ddl(mapping.table),
            f"CREATE VIEW {quote(mapping.table)} AS SELECT {names} FROM "
            f"{quote(versions_table(mapping.table))} WHERE _until IS NULL"]


def drop_view_ddl(table: str) -> str:
    return f"DROP VIEW IF EXISTS {quote(table)}"


def index_ddl(dialect: Dialect, table: str) -> list[str]:
    """Indexes an entity table gets on an indexed engine (PostgreSQL): one
    scenario's rows, in order, without reading the rest. Unnamed, so the
    engine picks a name that fits its identifier length."""
    if not dialect.indexed:
        return []
    return [f"CREATE INDEX ON {quote(table)} (scenario_id, _position)"]


def digest_of(mappings: dict[str, Mapping]) -> str:
    """A digest of a mapping set: equal digests, equal mappings."""
    documents = sorted(json.dumps(m.describe(), sort_keys=True) for m in mappings.values())
    return hashlib.sha256(json.dumps([SCHEMA_VERSION, documents]).encode()).hexdigest()


def utc_now() -> _dt.datetime:
    """Now, as the naive UTC datetime the store keeps (microsecond resolution)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


@dataclass
class StoreState:
    """What the store says about itself: read at the start of an operation."""

    schema_version: int
    digest: str | None
    generation: int
    history_limit: int | None
    tables: dict[str, str] = field(default_factory=dict)  # entity -> table
    documents: dict[str, Any] = field(default_factory=dict)  # entity -> recorded mapping document


def table_columns(session: Session) -> dict[str, list[str]]:
    """``{table: [column, ...]}`` of the store's schema."""
    rows = session.fetchall(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_catalog = current_database() ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def read_state(session: Session) -> StoreState | None:
    """The store's state, or None for a store without our tables (new)."""
    if not session.table_exists(META):
        return None
    meta = dict(session.fetchall(f"SELECT key, value FROM {META}"))
    version = meta.get("schema_version", "1")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise IncompatibleDatabaseError(
            f"this store was written by a newer healthsim-state (schema version {version}; this version "
            f"reads up to {SCHEMA_VERSION}); upgrade healthsim-state to open it")
    return StoreState(int(version), meta.get("mappings_digest"), int(meta.get("generation", "0")),
                      int(meta["history_limit"]) if meta.get("history_limit") else None)


def read_documents(session: Session, state: StoreState) -> StoreState:
    """Fill ``state`` with the recorded mapping documents (read only when the
    digest says the caller has not seen them)."""
    if session.table_exists(TABLES):
        for entity, table, text in session.fetchall(f"SELECT entity, table_name, mapping FROM {TABLES}"):
            state.tables[entity] = table
            state.documents[entity] = parse_json(text) if isinstance(text, str) else text
    return state


def recorded_mappings(state: StoreState, label: str) -> dict[str, Mapping]:
    """The mapping set in force, read with the one reader of the format."""
    mappings = {}
    for entity, document in sorted(state.documents.items()):
        mappings[entity] = _read_document(entity, document, label)
    return mappings


def _read_document(entity: str, document: Any, label: str) -> Mapping:
    """One recorded mapping, read (and checked against the JSON Schema: the
    slow part, a tenth of a second for the built-in set) once a process per
    document text and store."""
    key = (label, entity, json.dumps(document, sort_keys=True))
    found = RECORDED_MAPPINGS.get(key)
    if found is None:
        try:
            found = mapping_from_document(document, source=f"{label} (the store's mapping of {entity})")
        except MappingError as error:
            raise IncompatibleDatabaseError(f"the store {label} records a mapping this version cannot read: "
                                            f"{error}") from None
        RECORDED_MAPPINGS.put(key, found)
    return found


def set_meta(session: Session, key: str, value: str | None) -> None:
    if value is None:
        session.execute(f"DELETE FROM {META} WHERE key = ?", [key])
        return
    set_metas(session, {key: value})


def set_metas(session: Session, values: dict[str, str]) -> None:
    """Set several meta keys with one statement (each statement costs a
    millisecond or more: a new store's writes are mostly such overhead)."""
    session.execute(f"INSERT INTO {META} VALUES {_rows_of(len(values), 2)} "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [item for pair in values.items() for item in pair])


def _rows_of(rows: int, width: int) -> str:
    """``(?, ?), (?, ?)``: placeholders of a multi-row VALUES list."""
    return ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)


def create_base(session: Session) -> None:
    """The store's own tables, in a new store."""
    for ddl in BASE_DDL:
        session.execute(ddl)
    if session.dialect.indexed:
        session.execute("CREATE INDEX ON scenario_tags (scenario_id)")
    set_metas(session, {"schema_version": str(SCHEMA_VERSION), "generation": "0"})


def record(session: Session, mappings: dict[str, Mapping], state: StoreState) -> None:
    """Record ``mappings`` as the set in force (entities not named keep their
    record) and bump the generation."""
    now = utc_now()
    documents = {entity: json.dumps(mapping.describe()) for entity, mapping in mappings.items()}
    if documents:  # one statement for all: a new store records 14
        session.execute(
            f"INSERT INTO {TABLES} VALUES {_rows_of(len(documents), 4)} ON CONFLICT (entity) DO UPDATE SET "
            "table_name = excluded.table_name, mapping = excluded.mapping",
            [value for entity, document in documents.items()
             for value in (entity, mappings[entity].table, document, now)])
    for entity, document in documents.items():
        state.tables[entity] = mappings[entity].table
        state.documents[entity] = parse_json(document)
    state.generation += 1
    set_meta(session, "generation", str(state.generation))


def upgrade(session: Session, state: StoreState) -> None:
    """Bring a store written by an earlier version up to :data:`SCHEMA_VERSION`,
    one step at a time, inside the caller's transaction."""
    read_documents(session, state)
    if state.schema_version < 2:
        _upgrade_1_to_2(session, state)
    state.schema_version = SCHEMA_VERSION
    set_meta(session, "schema_version", str(SCHEMA_VERSION))


def _upgrade_1_to_2(session: Session, state: StoreState) -> None:
    """Version 2 adds versions: every scenario's rows become its version 1, each
    type's table becomes ``<table>__versions`` and a view of current rows."""
    session.execute("ALTER TABLE scenarios ADD COLUMN version INTEGER DEFAULT 1")
    session.execute(BASE_DDL[-1])
    session.execute(
        "INSERT INTO scenario_versions SELECT s.scenario_id, 1, 'save', s.updated_at, s.description, "
        "coalesce((SELECT to_json(list(t.tag ORDER BY t.position)) FROM scenario_tags t "
        "WHERE t.scenario_id = s.scenario_id), '[]'), s.entity_count, s.entity_counts, NULL, '{}' FROM scenarios s")
    set_meta(session, "mappings_digest", digest_of(recorded_mappings(state, "(upgrade)")))
    for entity, document in state.documents.items():
        mapping = mapping_from_document(document, source=f"(the store's mapping of {entity})")
        table = state.tables[entity]
        session.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(versions_table(table))}")
        session.execute(f"ALTER TABLE {quote(versions_table(table))} ADD COLUMN _since INTEGER DEFAULT 1")
        session.execute(f"ALTER TABLE {quote(versions_table(table))} ADD COLUMN _until INTEGER")
        for ddl in view_ddl(mapping):
            session.execute(ddl)
