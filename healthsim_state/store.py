"""The store gateway: every read and write of the store's own tables, bound to
one session (one transaction) and the mapping set in force.

Nothing else writes SQL against these tables (the layout and evolution
modules own the DDL). The SQL is the portable subset both backends speak,
with ``?`` placeholders; identifiers come only from validated mappings and are
quoted; values always travel as parameters.

Versions: every write of a scenario makes a version. A type's rows of every
version live in ``<table>__versions`` with ``_since`` (the version that wrote
them) and ``_until`` (the version that replaced them; NULL while current). A
write compares the new rows with the current ones in SQL (``EXCEPT``): a row
that stays is not touched, a row that goes gets its ``_until``, so versions
share every unchanged row and storage grows with what changed.
"""

from __future__ import annotations

import datetime as _dt
import json
import operator
import secrets
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterator, Sequence

from .backends.base import Constant, Session, quote
from .engine.batch import Chunk
from .engine.columns import ColumnBatch
from .engine.compile import Codec
from .engine.registry import Registry
from .errors import Problem, StoreError, ValidationError
from .layout import data_columns, versions_table, write_columns
from .values import dump_exact, is_text, parse_exact

_SCENARIO_COLUMNS = ("scenario_id", "name", "description", "created_at", "updated_at", "entity_count",
                     "entity_counts", "version")
_VERSION_COLUMNS = ("version", "operation", "saved_at", "description", "tags", "entity_count", "entity_counts",
                    "metadata", "changes")
_first = operator.itemgetter(0)


def new_scenario_id() -> str:
    """A UUID version 7 string: 48 bits of Unix milliseconds, then random bits,
    so ids sort by creation time."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass
class Changes:
    """What a write changed in one type, matched by key: entities added,
    changed (same key, other content) and removed. ``rewritten`` tells
    whether any stored row was replaced at all: also true of a new order of
    the same entities, which changes no key's content but is a change."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    rewritten: bool = False

    def as_dict(self) -> dict[str, int]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed}

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class Gateway:
    """The store's tables as seen by one transaction."""

    def __init__(self, session: Session, registry: Registry, label: str, *, history_limit: int | None = None):
        self.session = session
        self.registry = registry
        self.label = label
        self.history_limit = history_limit  # versions a scenario keeps (None: all), as the store says

    # --- scenarios ---------------------------------------------------------------------

    def find_scenario(self, name_or_id: str, *, by_id: bool = True) -> dict[str, Any] | None:
        """The scenario whose id or name is ``name_or_id``. Ids and names never
        shadow each other (a save refuses a name that is another scenario's
        id); should both match different scenarios, that is an error naming
        both. A string no scenario can be named finds none."""
        if not isinstance(name_or_id, str):
            raise ValidationError([Problem(f"a scenario id or name is a string, got {type(name_or_id).__name__}",
                                           path="name_or_id", value=name_or_id)], summary="invalid scenario lookup")
        if not is_text(name_or_id) or "\x00" in name_or_id:
            return None
        columns = ", ".join(_SCENARIO_COLUMNS)
        if by_id:
            rows = self.session.fetchall(f"SELECT {columns} FROM scenarios WHERE scenario_id = ? OR name = ?",
                                         [name_or_id, name_or_id])
        else:
            rows = self.session.fetchall(f"SELECT {columns} FROM scenarios WHERE name = ?", [name_or_id])
        if len(rows) > 1:
            from .errors import AmbiguousScenarioError

            by_id_row = next(r for r in rows if r[0] == name_or_id)
            other = next(r for r in rows if r[0] != name_or_id)
            raise AmbiguousScenarioError(
                f"{name_or_id!r} is the id of scenario {by_id_row[1]!r} and the name of scenario {other[0]}; "
                f"rename scenario {other[0]} to use its name")
        return _scenario_dict(rows[0]) if rows else None

    def id_in_use(self, name: str) -> bool:
        return self.session.scalar("SELECT count(*) FROM scenarios WHERE scenario_id = ?", [name]) > 0

    def insert_scenario(self, scenario_id: str, name: str, description: str | None, counts: dict[str, int],
                        now: _dt.datetime, created_at: _dt.datetime | None = None) -> None:
        """A new scenario's row, version 1, updated ``now`` (and created then,
        unless ``created_at`` says otherwise)."""
        self.session.execute("INSERT INTO scenarios (scenario_id, name, description, created_at, updated_at, "
                             "entity_count, entity_counts, version) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                             [scenario_id, name, description, created_at or now, now, sum(counts.values()),
                              json.dumps(counts)])

    def rename_scenario(self, scenario_id: str, name: str) -> None:
        self.session.execute("UPDATE scenarios SET name = ? WHERE scenario_id = ?", [name, scenario_id])

    def update_scenario(self, scenario_id: str, version: int, counts: dict[str, int], now: _dt.datetime,
                        **fields: Any) -> None:
        """New counts, version and ``updated_at``; plus any of ``name`` and
        ``description`` given."""
        sets = ["updated_at = ?", "entity_count = ?", "entity_counts = ?", "version = ?"]
        values: list[Any] = [now, sum(counts.values()), json.dumps(counts), version]
        for column in ("name", "description"):
            if column in fields:
                sets.append(f"{column} = ?")
                values.append(fields[column])
        self.session.execute(f"UPDATE scenarios SET {', '.join(sets)} WHERE scenario_id = ?", values + [scenario_id])

    def delete_scenario(self, scenario_id: str) -> None:
        """The scenario, its tags, every version and every row, in every table
        of the set in force."""
        for codec in self.registry.codecs.values():
            self.session.execute(f"DELETE FROM {_rows(codec)} WHERE scenario_id = ?", [scenario_id])
        for table in ("scenario_versions", "scenario_tags", "scenarios"):
            self.session.execute(f"DELETE FROM {table} WHERE scenario_id = ?", [scenario_id])

    def replace_tags(self, scenario_id: str, tags: list[str]) -> None:
        self.session.execute("DELETE FROM scenario_tags WHERE scenario_id = ?", [scenario_id])
        if tags:
            self.session.append("scenario_tags", ("scenario_id", "position", "tag"),
                                [(scenario_id, i, tag) for i, tag in enumerate(tags)])

    def tags_of(self, scenario_id: str) -> list[str]:
        rows = self.session.fetchall("SELECT tag FROM scenario_tags WHERE scenario_id = ? ORDER BY position",
                                     [scenario_id])
        return [tag for (tag,) in rows]

    def list_scenarios(self, tag: str | None, search: str | None, limit: int | None,
                       offset: int = 0) -> list[dict[str, Any]]:
        """Newest ``updated_at`` first. ``tag`` matches one tag and ``search`` a
        substring of name or description, both case-insensitively (``strpos``,
        not ``LIKE``: a ``%`` in a search is a percent sign)."""
        for text in (tag, search):
            if text is not None and (not is_text(text) or "\x00" in text):
                return []  # no stored name, description or tag can hold it
        columns = ", ".join(f"s.{c}" for c in _SCENARIO_COLUMNS)
        where, params = [], []
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM scenario_tags t WHERE t.scenario_id = s.scenario_id "
                         "AND lower(t.tag) = lower(?))")
            params.append(tag)
        if search is not None:
            where.append("(strpos(lower(s.name), lower(?)) > 0 OR strpos(lower(coalesce(s.description, '')), "
                         "lower(?)) > 0)")
            params += [search, search]
        sql = f"SELECT {columns} FROM scenarios s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.updated_at DESC, s.scenario_id DESC" + _page(params, limit, offset)
        items = [_scenario_dict(row) for row in self.session.fetchall(sql, params)]
        tags = self._tags_of_many([item["scenario_id"] for item in items])
        for item in items:
            item["tags"] = tags.get(item["scenario_id"], [])
        return items

    def _tags_of_many(self, scenario_ids: list[str]) -> dict[str, list[str]]:
        if not scenario_ids:
            return {}
        tags: dict[str, list[str]] = {}
        for start in range(0, len(scenario_ids), 1000):
            part = scenario_ids[start:start + 1000]
            marks = ", ".join("?" * len(part))
            for scenario_id, tag in self.session.fetchall(
                    f"SELECT scenario_id, tag FROM scenario_tags WHERE scenario_id IN ({marks}) "
                    "ORDER BY scenario_id, position", part):
                tags.setdefault(scenario_id, []).append(tag)
        return tags

    # --- versions ------------------------------------------------------------------------

    def insert_version(self, scenario_id: str, version: int, operation: str, at: _dt.datetime,
                       description: str | None, tags: list[str], counts: dict[str, int],
                       metadata: dict[str, Any] | None, changes: dict[str, dict[str, int]]) -> None:
        self.session.execute(
            "INSERT INTO scenario_versions (scenario_id, version, operation, saved_at, description, tags, entity_count, "
            "entity_counts, metadata, changes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [scenario_id, version, operation, at, description, json.dumps(tags), sum(counts.values()),
             json.dumps(counts), None if metadata is None else dump_exact(metadata), json.dumps(changes)])

    def insert_versions(self, scenario_id: str, versions: Sequence[dict[str, Any]]) -> None:
        """Version records as :meth:`versions` gives them (``at`` aware UTC), in
        bulk: what a copy or an import of a whole history writes."""
        rows = [(scenario_id, v["version"], v["operation"], v["at"].astimezone(_dt.timezone.utc).replace(tzinfo=None),
                 v["description"], json.dumps(v["tags"]), sum(v["entity_counts"].values()),
                 json.dumps(v["entity_counts"]), None if v["metadata"] is None else dump_exact(v["metadata"]),
                 json.dumps(v["changes"])) for v in versions]
        self.session.append("scenario_versions", ("scenario_id", *_VERSION_COLUMNS), rows)

    def versions(self, scenario_id: str, version: int | None = None) -> list[dict[str, Any]]:
        """The scenario's versions, newest first (or the one asked for)."""
        columns = ", ".join(_VERSION_COLUMNS)
        sql = f"SELECT {columns} FROM scenario_versions WHERE scenario_id = ?"
        params: list[Any] = [scenario_id]
        if version is not None:
            sql += " AND version = ?"
            params.append(version)
        rows = self.session.fetchall(sql + " ORDER BY version DESC", params)
        return [_version_dict(row) for row in rows]

    def prune(self, scenario_id: str, keep_from: int) -> int:
        """Drop the versions before ``keep_from`` and the rows only they held;
        returns how many versions went."""
        dropped = self.session.scalar("SELECT count(*) FROM scenario_versions WHERE scenario_id = ? AND version < ?",
                                      [scenario_id, keep_from])
        if dropped:
            for codec in self.registry.codecs.values():
                self.session.execute(f"DELETE FROM {_rows(codec)} WHERE scenario_id = ? AND _until <= ?",
                                     [scenario_id, keep_from])
            self.session.execute("DELETE FROM scenario_versions WHERE scenario_id = ? AND version < ?",
                                 [scenario_id, keep_from])
        return dropped

    # --- entity rows ---------------------------------------------------------------------------

    def append_rows(self, codec: Codec, scenario_id: str, version: int, rows: "Sequence[tuple] | Chunk") -> None:
        """Rows ``(position, col_0, ..., residual)`` (or a flattened
        :class:`Chunk`) as current rows of a scenario, in bulk (no SQL per row)."""
        table, columns = versions_table(codec.mapping.table), write_columns(codec.mapping)
        written = 0
        if isinstance(rows, Chunk):
            if rows.columns is not None and len(rows.columns):
                self._append_columns(codec, table, columns, rows.columns, Constant(scenario_id), Constant(version))
                written = len(rows.columns)
            rows = rows.rows
        if rows:
            prefix, suffix = (scenario_id,), (version,)
            self._append(codec, table, columns, [prefix + row + suffix for row in rows])
        self.session.grew(table, written + len(rows or ()), _planned_columns(codec))

    def _append(self, codec: Codec, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        try:
            self.session.append(table, columns, rows)
        except StoreError:
            problems = _unstorable_strings(codec, rows, columns)
            if problems:
                raise ValidationError(problems, summary="scenario not saved") from None
            raise

    def _append_columns(self, codec: Codec, table: str, columns: Sequence[str], batch: ColumnBatch,
                        *around: Constant) -> None:
        """``batch`` under ``columns``: the constants ``around`` it (scenario id
        before, then the versions after) when there are any."""
        fields = codec.mapping.fields
        arrays = [batch.positions, *batch.columns, batch.residuals]
        types = [None, *(f.type for f in fields), None]
        if around:
            arrays, types = [around[0], *arrays, *around[1:]], [None, *types, *[None] * (len(around) - 1)]
        try:
            self.session.append_columns(table, columns, arrays, types, len(batch))
        except StoreError:
            problems = _unstorable_strings(codec, batch.rows(), data_columns(codec.mapping))
            if problems:
                raise ValidationError(problems, summary="scenario not saved") from None
            raise

    def history_rows(self, codec: Codec, scenario_id: str) -> list[tuple]:
        """Every row the scenario's type holds in any kept version, as
        ``(position, col_0, ..., residual, since, until)`` in read form,
        ordered by ``since`` then position: what a copy of a history reads."""
        dialect = self.session.dialect
        reads = ", ".join(f"{dialect.read_expression(f.type, f.column)} AS {quote(f.column)}"
                          for f in codec.mapping.fields)
        return self.session.fetchall(f"SELECT _position, {reads}, _residual, _since, _until FROM {_rows(codec)} "
                                     "WHERE scenario_id = ? ORDER BY _since, _position", [scenario_id])

    def append_history_rows(self, codec: Codec, scenario_id: str, rows: list[tuple]) -> None:
        """Rows ``(position, col_0, ..., residual, since, until)`` of any
        versions, in bulk (no SQL per row)."""
        columns = (*write_columns(codec.mapping), "_until")
        self._append(codec, versions_table(codec.mapping.table), columns, [(scenario_id, *row) for row in rows])

    def append_history_columns(self, codec: Codec, scenario_id: str, since: int, until: int | None,
                               batch: ColumnBatch) -> None:
        """A column batch of rows written in version ``since`` and replaced in
        ``until`` (None: current), in bulk."""
        columns = (*write_columns(codec.mapping), "_until")
        self._append_columns(codec, versions_table(codec.mapping.table), columns, batch, Constant(scenario_id),
                             Constant(since), Constant(until))

    def repeated_keys(self, codec: Codec, scenario_id: str, limit: int = 10) -> list[tuple]:
        """``(version, key_0, ...)`` of keys that two of the type's rows hold in
        one version of the scenario (none, in a store that only this module
        wrote; a history from a file is checked so after it is written)."""
        keys = ", ".join(f"r.{quote(k)}" for k in codec.mapping.primary_key)
        return self.session.fetchall(
            f"SELECT v.version, {keys} FROM {_rows(codec)} r JOIN scenario_versions v "
            "ON v.scenario_id = r.scenario_id AND r._since <= v.version AND (r._until IS NULL OR r._until > v.version) "
            f"WHERE r.scenario_id = ? GROUP BY v.version, {keys} HAVING count(*) > 1 ORDER BY 1 LIMIT ?",
            [scenario_id, limit])

    def fetch_rows(self, codec: Codec, scenario_id: str, *, version: int | None = None,
                   limit: int | None = None, offset: int = 0) -> list[tuple]:
        """A type's rows ``(position, col_0, ..., residual)`` in saved order, of
        the current version or of ``version``; with ``limit``/``offset``, only
        that slice (sorted and cut in SQL)."""
        sql, params = self._live_rows_sql(codec, scenario_id, version)
        if limit is None and not offset:
            rows = self.session.fetchall(sql, params)
            rows.sort(key=_first)  # nearly always stored in order already: one C pass checks it
            return rows
        return self.session.fetchall(sql + " ORDER BY _position" + _page(params, limit, offset), params)

    def fetch_columns(self, codec: Codec, scenario_id: str, *, version: int | None = None) -> list[list]:
        """The same rows as :meth:`fetch_rows` as columns ``(positions,
        col_0, ..., residuals)``, in saved order."""
        sql, params = self._live_rows_sql(codec, scenario_id, version)
        return _in_position_order(self.session.fetch_columns(sql, params, len(codec.mapping.fields) + 2))

    def stream_rows(self, codec: Codec, scenario_id: str, *, version: int | None, batch_size: int,
                    after: int = -1, typed: bool = False, by_columns: bool = False) -> Iterator[list]:
        """A type's rows in saved order, ``batch_size`` at a time, each batch a
        range on ``_position`` (keyset paging, so no batch rereads the ones
        before). Rows are ``(position, col_0, ..., residual)`` in read form,
        or with ``typed`` the columns' own values; with ``by_columns`` each
        batch is the rows' columns (as :meth:`fetch_columns` gives them)."""
        sql, params = self._live_rows_sql(codec, scenario_id, version, typed=typed)
        page = f"SELECT * FROM ({sql}) r WHERE _position > ? ORDER BY _position LIMIT ?"
        width = len(codec.mapping.fields) + 2
        while True:
            args = params + [after, batch_size]
            batch = self.session.fetch_columns(page, args, width) if by_columns else self.session.fetchall(page, args)
            count = len(batch[0]) if by_columns else len(batch)
            if not count:
                return
            yield batch
            if count < batch_size:
                return
            after = batch[0][-1] if by_columns else batch[-1][0]

    def _live_rows_sql(self, codec: Codec, scenario_id: str, version: int | None,
                       typed: bool = False) -> tuple[str, list[Any]]:
        mapping, dialect = codec.mapping, self.session.dialect
        if typed:
            reads = ", ".join(quote(f.column) for f in mapping.fields)
        else:
            reads = ", ".join(f"{dialect.read_expression(f.type, f.column)} AS {quote(f.column)}"
                              for f in mapping.fields)
        where, params = _live(scenario_id, version)
        return f"SELECT _position, {reads}, _residual FROM {_rows(codec)} WHERE {where}", params

    def next_position(self, codec: Codec, scenario_id: str) -> int:
        found = self.session.scalar(f"SELECT max(_position) FROM {_rows(codec)} WHERE scenario_id = ? "
                                    "AND _until IS NULL", [scenario_id])
        return 0 if found is None else found + 1

    # --- replacing rows: overwrite, restore --------------------------------------------------------

    def stage(self, codec: Codec, name: str = "_healthsim_stage") -> str:
        """A temporary table for a type's rows ``(position, col_0, ..., residual)``."""
        return self.session.create_staging(name, versions_table(codec.mapping.table), data_columns(codec.mapping))

    def stage_rows(self, codec: Codec, staging: str, rows: "Sequence[tuple] | Chunk") -> None:
        columns = data_columns(codec.mapping)
        if isinstance(rows, Chunk):
            if rows.columns is not None and len(rows.columns):
                self._append_columns(codec, staging, columns, rows.columns)
            rows = rows.rows
        if rows:
            self._append(codec, staging, columns, list(rows))

    def stage_version(self, codec: Codec, staging: str, scenario_id: str, version: int) -> None:
        """Stage the rows the scenario's type held at ``version``."""
        columns = ", ".join(quote(c) for c in data_columns(codec.mapping))
        where, params = _live(scenario_id, version)
        self.session.execute(f"INSERT INTO {staging} ({columns}) SELECT {columns} FROM {_rows(codec)} WHERE {where}",
                             params)

    def replace_rows(self, codec: Codec, scenario_id: str, version: int, staging: str | None) -> Changes:
        """Make the staged rows (none, for ``staging=None``) the type's current
        rows as of ``version``: rows equal to a staged one (same position,
        same content) stay as they are; the others are retired (their
        ``_until`` set); staged rows not already current are inserted. Returns
        the changes by key (``rewritten`` false: nothing was written)."""
        mapping, session = codec.mapping, self.session
        rows = _rows(codec)
        columns = data_columns(mapping)
        names = ", ".join(quote(c) for c in columns)
        if staging is None:
            removed = self.count_rows(codec, scenario_id)
            if removed:
                self._retire(codec, scenario_id, version, None)
            return Changes(removed=removed, rewritten=bool(removed))
        session.analyze(staging, ("_position", *mapping.primary_key))  # else plans guess its size
        same = " AND ".join(f"{self._compare(codec, c, 'c')} IS NOT DISTINCT FROM {self._compare(codec, c, 's')}"
                            for c in columns if c != "_position")
        # One join on the position tells what stays (same position, same content),
        # what goes and what comes.
        compared = session.create_temp_as(
            "_healthsim_compare",
            f"SELECT c._position AS old_position, s._position AS new_position, ({same}) AS same "
            f"FROM (SELECT * FROM {rows} WHERE scenario_id = ? AND _until IS NULL) c "
            f"FULL OUTER JOIN {staging} s ON c._position = s._position", [scenario_id])
        session.analyze(compared, ("old_position", "new_position", "same"))
        gone = (f"SELECT old_position FROM {compared} WHERE old_position IS NOT NULL "
                "AND (new_position IS NULL OR NOT same)")
        fresh = (f"SELECT new_position FROM {compared} WHERE new_position IS NOT NULL "
                 "AND (old_position IS NULL OR NOT same)")
        changes = self._count_changes(codec, scenario_id, staging, gone, fresh)
        if changes.rewritten:
            self._retire(codec, scenario_id, version, gone)
            session.execute(f"INSERT INTO {rows} (scenario_id, {names}, _since) SELECT ?, {names}, ? "
                            f"FROM {staging} WHERE _position IN ({fresh})", [scenario_id, version])
            session.grew(versions_table(mapping.table), changes.added + changes.changed, _planned_columns(codec))
        for temporary in (compared, staging):
            session.execute(f"DROP TABLE {temporary}")
        return changes

    def _retire(self, codec: Codec, scenario_id: str, version: int, positions: str | None) -> None:
        """Mark current rows (all, or those whose position ``positions`` selects)
        replaced in ``version``."""
        where = "scenario_id = ? AND _until IS NULL"
        if positions is not None:
            where += f" AND _position IN ({positions})"
        self.session.execute(f"UPDATE {_rows(codec)} SET _until = ? WHERE {where}", [version, scenario_id])

    def _compare(self, codec: Codec, column: str, alias: str | None = None) -> str:
        if column in ("_position", "_residual"):
            return quote(column) if alias is None else f"{alias}.{quote(column)}"
        return self.session.dialect.compare_expression(codec.mapping.field(column).type, column, alias)

    def _count_changes(self, codec: Codec, scenario_id: str, staging: str, gone: str, fresh: str) -> Changes:
        """Added, changed and removed by key, from the rows that go and the
        rows that come (every other row is the same on both sides); whether
        any row goes or comes at all."""
        mapping = codec.mapping
        keys = " AND ".join(f"o.{quote(k)} = n.{quote(k)}" for k in mapping.primary_key)
        content = [c for c in data_columns(mapping) if c != "_position"]
        differs = " OR ".join(f"{self._compare(codec, c, 'o')} IS DISTINCT FROM {self._compare(codec, c, 'n')}"
                              for c in content)
        first = quote(mapping.primary_key[0])
        row = self.session.fetchone(
            f"SELECT count(*), count(*) FILTER (WHERE o.{first} IS NULL), "
            f"count(*) FILTER (WHERE n.{first} IS NULL), "
            f"count(*) FILTER (WHERE o.{first} IS NOT NULL AND n.{first} IS NOT NULL AND ({differs})) "
            f"FROM (SELECT * FROM {_rows(codec)} WHERE scenario_id = ? AND _until IS NULL "
            f"AND _position IN ({gone})) o "
            f"FULL OUTER JOIN (SELECT * FROM {staging} WHERE _position IN ({fresh})) n "
            f"ON {keys}", [scenario_id])
        return Changes(added=row[1], removed=row[2], changed=row[3], rewritten=row[0] > 0)

    # --- adding by key ------------------------------------------------------------------------------

    def match_keys(self, codec: Codec, scenario_id: str, staging: str) -> list[tuple[int, int, bool]]:
        """``(staged position, stored position, content differs)`` for each
        staged row whose key is already current in the scenario: a keyed join
        that reads only the key columns of the scenario's rows."""
        mapping = codec.mapping
        keys = " AND ".join(f"c.{quote(k)} = s.{quote(k)}" for k in mapping.primary_key)
        content = [c for c in data_columns(mapping) if c != "_position"]
        differs = " OR ".join(f"{self._compare(codec, c, 'c')} IS DISTINCT FROM {self._compare(codec, c, 's')}"
                              for c in content)
        return self.session.fetchall(
            f"SELECT s._position, c._position, {differs} FROM {staging} s JOIN {_rows(codec)} c ON {keys} "
            "WHERE c.scenario_id = ? AND c._until IS NULL", [scenario_id])

    def find_keys(self, codec: Codec, scenario_id: str, keys: Sequence[tuple]) -> list[tuple]:
        """``(position, key_0, ...)`` of the scenario's current rows whose key
        is one of ``keys`` (tuples of key-column values, in key order): the
        keys are staged and joined, so the cost follows the keys asked for."""
        if not keys:
            return []
        mapping = codec.mapping
        staging = self.session.create_staging("_healthsim_keys", versions_table(mapping.table), mapping.primary_key)
        self.session.append(staging, mapping.primary_key, list(keys))
        on = " AND ".join(f"c.{quote(k)} = s.{quote(k)}" for k in mapping.primary_key)
        picked = ", ".join(f"c.{quote(k)}" for k in mapping.primary_key)
        rows = self.session.fetchall(f"SELECT DISTINCT c._position, {picked} FROM {_rows(codec)} c JOIN {staging} s "
                                     f"ON {on} WHERE c.scenario_id = ? AND c._until IS NULL", [scenario_id])
        self.session.execute(f"DROP TABLE {staging}")
        return rows

    def retire_positions(self, codec: Codec, scenario_id: str, version: int, positions: list[int]) -> None:
        """Retire the current rows at ``positions`` (replaced in ``version``)."""
        if not positions:
            return
        marks = self.session.create_staging("_healthsim_gone", versions_table(codec.mapping.table), ("_position",))
        self.session.append(marks, ("_position",), [(p,) for p in positions])
        self._retire(codec, scenario_id, version, f"SELECT _position FROM {marks}")
        self.session.execute(f"DROP TABLE {marks}")

    # --- diffs ----------------------------------------------------------------------------------------

    def differing_rows(self, codec: Codec, a: tuple[str, int | None], b: tuple[str, int | None]
                       ) -> tuple[list[tuple], list[tuple]]:
        """The entities of ``a`` that ``b`` does not hold exactly (position
        aside), and those of ``b`` that ``a`` does not; each side a (scenario
        id, version or None for current). Rows come as ``(0, col_0, ...,
        residual)``: in read form, ready to rebuild. Read forms compare
        exactly (ISO text, exact doubles, fixed-scale text, JSON text)."""
        mapping, dialect = codec.mapping, self.session.dialect
        reads = ", ".join([dialect.read_expression(f.type, f.column) for f in mapping.fields] + ["_residual"])
        out = []
        for this, other in ((a, b), (b, a)):
            this_sql, this_params = self._live_data_sql(mapping, *this)
            other_sql, other_params = self._live_data_sql(mapping, *other)
            rows = self.session.fetchall(
                f"SELECT {reads} FROM ({this_sql}) x EXCEPT SELECT {reads} FROM ({other_sql}) y",
                this_params + other_params)
            out.append([(0, *row) for row in rows])
        return out[0], out[1]

    def _live_data_sql(self, mapping, scenario_id: str, version: int | None) -> tuple[str, list[Any]]:
        names = ", ".join(quote(c) for c in data_columns(mapping))
        where, params = _live(scenario_id, version)
        return f"SELECT {names} FROM {quote(versions_table(mapping.table))} WHERE {where}", params

    def count_rows(self, codec: Codec, scenario_id: str) -> int:
        return self.session.scalar(f"SELECT count(*) FROM {_rows(codec)} WHERE scenario_id = ? AND _until IS NULL",
                                   [scenario_id])


def _in_position_order(columns: list[list]) -> list[list]:
    """Columns whose first holds positions, reordered by it where it is not
    ascending already (nearly never: rows are stored in order)."""
    positions = columns[0]
    if all(map(operator.lt, positions, islice(positions, 1, None))):
        return columns
    order = sorted(range(len(positions)), key=positions.__getitem__)
    return [[column[i] for i in order] for column in columns]


def _page(params: list[Any], limit: int | None, offset: int) -> str:
    """``LIMIT ? OFFSET ?`` as asked (appending the values to ``params``)."""
    clause = ""
    if limit is not None:
        clause += " LIMIT ?"
        params.append(limit)
    if offset:
        clause += " OFFSET ?"
        params.append(offset)
    return clause


def _planned_columns(codec: Codec) -> tuple[str, ...]:
    """The columns of a type's table that writes find, join and filter rows on."""
    return ("scenario_id", "_position", "_until", *codec.mapping.primary_key)


def _rows(codec: Codec) -> str:
    """The quoted table of a type's rows of every version."""
    return quote(versions_table(codec.mapping.table))


def _live(scenario_id: str, version: int | None) -> tuple[str, list[Any]]:
    """The condition for a scenario's rows at ``version`` (None: the current ones)."""
    if version is None:
        return "scenario_id = ? AND _until IS NULL", [scenario_id]
    return "scenario_id = ? AND _since <= ? AND (_until IS NULL OR _until > ?)", [scenario_id, version, version]


def _unstorable_strings(codec: Codec, rows: list[tuple], columns: Sequence[str]) -> list[Problem]:
    """After a failed bulk write: the strings no text column can store (lone
    surrogates are not Unicode text). Checked only on failure, so the common
    path pays nothing."""
    problems = []
    fields = {f.column: f for f in codec.mapping.fields}
    position_at = list(columns).index("_position")
    for row in rows:
        for column, value in zip(columns, row):
            if column in fields and value.__class__ is str and not is_text(value):
                problems.append(Problem("the string holds a lone surrogate, which is not valid Unicode text",
                                        codec.mapping.entity, row[position_at], fields[column].dotted, value))
    return problems


def _utc(value: _dt.datetime) -> _dt.datetime:
    return value.replace(tzinfo=_dt.timezone.utc)


def _scenario_dict(row: tuple) -> dict[str, Any]:
    item = dict(zip(_SCENARIO_COLUMNS, row))
    item["created_at"] = _utc(item["created_at"])
    item["updated_at"] = _utc(item["updated_at"])
    item["entity_counts"] = _counts(item["entity_counts"])
    return item


def _counts(text: str | dict) -> dict[str, int]:
    return json.loads(text) if isinstance(text, str) else dict(text)


def _version_dict(row: tuple) -> dict[str, Any]:
    item = dict(zip(_VERSION_COLUMNS, row))
    item["at"] = _utc(item.pop("saved_at"))
    item["tags"] = json.loads(item["tags"])
    item["entity_counts"] = _counts(item["entity_counts"])
    item["metadata"] = None if item["metadata"] is None else parse_exact(item["metadata"])
    item["changes"] = json.loads(item["changes"])
    return item
