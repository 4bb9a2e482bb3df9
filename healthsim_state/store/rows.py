"""The rows of one entity type in one scenario, every version of them.

A type's rows of every version live in ``<table>__versions`` with ``_since``
(the version that wrote them) and ``_until`` (the version that replaced them;
NULL while current). A write compares the new rows with the current ones in
SQL: a row that stays is not touched, a row that goes gets its ``_until``, so
versions share every unchanged row and storage grows with what changed.

:class:`TypeRows` is bound once to a session, a codec and a scenario; a
:class:`Staged` table (a temporary table of the type's rows) drops itself when
its ``with`` block ends. Table names travel bare; they are quoted here, where
the SQL text is written.
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby, islice
from typing import Any, Iterable, Iterator, Sequence

from ..backends.base import Constant, Dialect, Session, quote
from ..column_types import ColumnType
from ..engine.batch import Chunk, rebuild_columns, rebuild_rows
from ..engine.columns import ColumnBatch
from ..engine.compile import Codec
from ..errors import Problem, StoreError, ValidationError
from ..layout import data_columns, versions_table, write_columns
from ..values import is_text

_first = operator.itemgetter(0)

# A type of at least this many entities is read a column at a time where the
# backend hands results over by columns (DuckDB, with NumPy installed). Below
# it, a tuple a row costs less: each column read that way has a fixed cost.
COLUMNWISE_READ = 1_000


def by_columns(session: Session, rows: int) -> bool:
    """Whether a read of ``rows`` rows of one type goes a column at a time."""
    return rows >= COLUMNWISE_READ and session.reads_columns


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


class TypeRows:
    """One type's rows of one scenario, as one transaction sees them."""

    def __init__(self, session: Session, codec: Codec, scenario_id: str):
        self.session = session
        self.codec = codec
        self.mapping = codec.mapping
        self.scenario_id = scenario_id
        self.table = versions_table(codec.mapping.table)  # bare; quoted where SQL is written

    # --- reading ------------------------------------------------------------------------------

    def count(self) -> int:
        """How many rows are current."""
        return self.session.scalar(f"SELECT count(*) FROM {quote(self.table)} WHERE scenario_id = ? "
                                   "AND _until IS NULL", [self.scenario_id])

    def fetch(self, *, version: int | None = None, limit: int | None = None, offset: int = 0) -> list[tuple]:
        """Rows ``(position, col_0, ..., residual)`` in saved order, of the
        current version or of ``version``; with ``limit``/``offset``, only
        that slice (sorted and cut in SQL)."""
        return self.read_form(self.fetch_raw(version=version, limit=limit, offset=offset),
                              ordered=limit is not None or bool(offset))

    def fetch_raw(self, *, version: int | None = None, limit: int | None = None, offset: int = 0) -> list[tuple]:
        """The rows of :meth:`fetch` as the query gives them: not yet in read
        form (see :meth:`read_form`), and without ``limit`` or ``offset`` not
        yet sorted."""
        sql, params = self._live_rows_sql(version, after=True)
        if limit is not None or offset:
            sql += " ORDER BY _position" + limit_offset(params, limit, offset)
        return self.session.fetchall(sql, params)

    def read_form(self, rows: list[tuple], *, ordered: bool) -> list[tuple]:
        """Rows of :meth:`fetch_raw` in read form, sorted by position unless
        the query ``ordered`` them."""
        return self._in_read_form(_in_saved_order(rows, ordered))

    def fetch_columns(self, *, version: int | None = None) -> list[list]:
        """The same rows as :meth:`fetch` as columns ``(positions, col_0,
        ..., residuals)``, in saved order."""
        sql, params = self._live_rows_sql(version)
        return _in_position_order(self.session.fetch_columns(sql, params, len(self.mapping.fields) + 2))

    def load(self, count: int, *, version: int | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        """The entities of a load, rebuilt, in saved order (``count`` of them
        stored): a whole large type is read a column at a time."""
        if limit is None and not offset and by_columns(self.session, count):
            return rebuild_columns(self.codec, self.fetch_columns(version=version))
        return rebuild_rows(self.codec, self.fetch(version=version, limit=limit, offset=offset))

    def stream(self, *, version: int | None, batch_size: int, after: int = -1, typed: bool = False,
               by_columns: bool = False) -> Iterator[list]:
        """Rows in saved order, ``batch_size`` at a time, each batch a range on
        ``_position`` (keyset paging, so no batch rereads the ones before).
        Rows are ``(position, col_0, ..., residual)`` in read form, or with
        ``typed`` the columns' own values; with ``by_columns`` each batch is
        the rows' columns (as :meth:`fetch_columns` gives them)."""
        sql, params = self._live_rows_sql(version, typed=typed)
        page = f"SELECT * FROM ({sql}) r WHERE _position > ? ORDER BY _position LIMIT ?"
        width = len(self.mapping.fields) + 2
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

    def history(self) -> list[tuple]:
        """Every row of any kept version, as ``(position, col_0, ...,
        residual, since, until)`` in read form, ordered by ``since`` then
        position: what a copy of a history reads."""
        dialect = self.session.dialect
        reads = ", ".join(f"{dialect.read_expression(f.type, f.column)} AS {quote(f.column)}"
                          for f in self.mapping.fields)
        return self.session.fetchall(f"SELECT _position, {reads}, _residual, _since, _until FROM {quote(self.table)} "
                                     "WHERE scenario_id = ? ORDER BY _since, _position", [self.scenario_id])

    def repeated_keys(self, limit: int = 10) -> list[tuple]:
        """``(version, key_0, ...)`` of keys that two rows hold in one version
        of the scenario (none, in a store that only this package wrote; a
        history from a file is checked so after it is written)."""
        keys = ", ".join(f"r.{quote(k)}" for k in self.mapping.primary_key)
        return self.session.fetchall(
            f"SELECT v.version, {keys} FROM {quote(self.table)} r JOIN scenario_versions v "
            "ON v.scenario_id = r.scenario_id AND r._since <= v.version AND (r._until IS NULL OR r._until > v.version) "
            f"WHERE r.scenario_id = ? GROUP BY v.version, {keys} HAVING count(*) > 1 ORDER BY 1 LIMIT ?",
            [self.scenario_id, limit])

    def find_keys(self, keys: Sequence[tuple]) -> list[tuple]:
        """``(position, key_0, ...)`` of the current rows whose key is one of
        ``keys`` (tuples of key-column values, in key order): the keys are
        staged and joined, so the cost follows the keys asked for."""
        if not keys:
            return []
        primary_key = self.mapping.primary_key
        with self.staged("_healthsim_keys", primary_key) as staged:
            self.session.append(staged.name, primary_key, list(keys))
            on = " AND ".join(f"c.{quote(k)} = s.{quote(k)}" for k in primary_key)
            picked = ", ".join(f"c.{quote(k)}" for k in primary_key)
            return self.session.fetchall(
                f"SELECT DISTINCT c._position, {picked} FROM {quote(self.table)} c JOIN {quote(staged.name)} s "
                f"ON {on} WHERE c.scenario_id = ? AND c._until IS NULL", [self.scenario_id])

    def differing_rows(self, version: int | None, other: "TypeRows", other_version: int | None
                       ) -> tuple[list[tuple], list[tuple]]:
        """The entities of these rows (at ``version``, None: current) that
        ``other``'s do not hold exactly (position aside), and those of
        ``other`` that these do not. Rows come as ``(0, col_0, ...,
        residual)``: in read form, ready to rebuild. Read forms compare
        exactly (ISO text, exact doubles, fixed-scale text, JSON text)."""
        dialect = self.session.dialect
        reads = ", ".join([dialect.read_expression(f.type, f.column) for f in self.mapping.fields] + ["_residual"])
        out = []
        for (this, this_version), (that, that_version) in (((self, version), (other, other_version)),
                                                           ((other, other_version), (self, version))):
            this_sql, this_params = this._live_data_sql(this_version)
            that_sql, that_params = that._live_data_sql(that_version)
            rows = self.session.fetchall(
                f"SELECT {reads} FROM ({this_sql}) x EXCEPT SELECT {reads} FROM ({that_sql}) y",
                this_params + that_params)
            out.append([(0, *row) for row in rows])
        return out[0], out[1]

    def next_position(self) -> int:
        """The position after the last current row."""
        last = self.session.scalar(f"SELECT max(_position) FROM {quote(self.table)} WHERE scenario_id = ? "
                                   "AND _until IS NULL", [self.scenario_id])
        return 0 if last is None else last + 1

    # --- writing -------------------------------------------------------------------------------

    def append(self, version: int, rows: "Sequence[tuple] | Chunk") -> None:
        """Rows ``(position, col_0, ..., residual)`` (or a flattened
        :class:`Chunk`) as current rows written in ``version``, in bulk (no
        SQL per row)."""
        columns = write_columns(self.mapping)
        written = 0
        if isinstance(rows, Chunk):
            if rows.columns is not None and len(rows.columns):
                self._append_columns(self.table, columns, rows.columns, Constant(self.scenario_id), Constant(version))
                written = len(rows.columns)
            rows = rows.rows
        if rows:
            prefix, suffix = (self.scenario_id,), (version,)
            self._append(self.table, columns, [prefix + row + suffix for row in rows])
        self.session.grew(self.table, written + len(rows or ()), self._planned_columns())

    def append_history(self, rows: list[tuple]) -> None:
        """Rows ``(position, col_0, ..., residual, since, until)`` of any
        versions, in bulk (no SQL per row)."""
        columns = (*write_columns(self.mapping), "_until")
        self._append(self.table, columns, [(self.scenario_id, *row) for row in rows])

    def append_history_columns(self, since: int, until: int | None, batch: ColumnBatch) -> None:
        """A column batch of rows written in version ``since`` and replaced in
        ``until`` (None: current), in bulk."""
        columns = (*write_columns(self.mapping), "_until")
        self._append_columns(self.table, columns, batch, Constant(self.scenario_id), Constant(since),
                             Constant(until))

    def overwrite(self, chunks: Iterable[Chunk], version: int) -> Changes:
        """Make ``chunks`` the current rows as of ``version`` (see :meth:`replace_with`)."""
        with self.staged() as staged:
            for chunk in chunks:
                staged.add(chunk)
            return self.replace_with(staged, version)

    def restore(self, from_version: int, version: int) -> Changes:
        """Make the rows of ``from_version`` the current rows as of ``version``."""
        with self.staged() as staged:
            staged.add_version(from_version)
            return self.replace_with(staged, version)

    def clear(self, version: int) -> Changes:
        """Retire every current row (replaced in ``version``)."""
        removed = self.count()
        if removed:
            self._retire(version, None)
        return Changes(removed=removed, rewritten=bool(removed))

    def replace_with(self, staged: "Staged", version: int) -> Changes:
        """Make the staged rows the current rows as of ``version``: rows equal
        to a staged one (same position, same content) stay as they are; the
        others are retired (their ``_until`` set); staged rows not already
        current are inserted. Returns the changes by key.

        One join on the position reads both sides once and keeps only the
        rows that differ (with their keys), so what follows (counting by
        key, retiring, inserting) costs what changed, not what is stored:
        an overwrite of 1% touches 1% of the rows."""
        mapping, session = self.mapping, self.session
        staging = quote(staged.name)
        columns = data_columns(mapping)
        names = ", ".join(quote(c) for c in columns)
        same = " AND ".join(f"{self._compare(c, 'c')} IS NOT DISTINCT FROM {self._compare(c, 's')}"
                            for c in columns if c != "_position")
        keys = [f"c.{quote(k)} AS {quote(f'_old_{i}')}, s.{quote(k)} AS {quote(f'_new_{i}')}"
                for i, k in enumerate(mapping.primary_key)]
        row_id = session.dialect.row_id
        # A full join is planned as a hash or merge join only (never a nested
        # loop), so it needs no statistics of the staged rows.
        compared = session.create_temp_as(
            "_healthsim_compare",
            f"SELECT c._position AS old_position, s._position AS new_position, {', '.join(keys)}"
            + (f", c.{row_id} AS old_row" if row_id else "") +
            f" FROM (SELECT {row_id + ', ' if row_id else ''}* FROM {quote(self.table)} "
            f"WHERE scenario_id = ? AND _until IS NULL) c FULL OUTER JOIN {staging} s ON c._position = s._position "
            f"WHERE c._position IS NULL OR s._position IS NULL OR NOT ({same})", [self.scenario_id])
        session.analyze(compared, ("old_position", "new_position"))
        changes = self._count_changes(staging, compared)
        if changes.rewritten:
            gone = f"FROM {quote(compared)} WHERE old_position IS NOT NULL"
            if row_id:  # fetched by place: no second pass over every version of the scenario's rows
                self._retire(version, None, rows=f"{row_id} = ANY(ARRAY(SELECT old_row {gone}))")
            else:
                self._retire(version, f"SELECT old_position {gone}")
            session.execute(f"INSERT INTO {quote(self.table)} (scenario_id, {names}, _since) SELECT ?, {names}, ? "
                            f"FROM {staging} WHERE _position IN "
                            f"(SELECT new_position FROM {quote(compared)} WHERE new_position IS NOT NULL)",
                            [self.scenario_id, version])
            session.grew(self.table, changes.added + changes.changed, self._planned_columns())
        session.execute(f"DROP TABLE {quote(compared)}")
        return changes

    def add_by_key(self, chunks: Iterable[Chunk], version: int) -> tuple[Changes, int]:
        """Give each new row its position (a stored key's, or the next free
        one); retire the rows it replaces (replaced in ``version``); append.
        Returns the changes and how many rows given had a stored key."""
        change, matched, next_free = Changes(), 0, None
        for chunk in chunks:
            with self.staged() as staged:
                staged.add(chunk)
                rows = chunk.all_rows()
                matches = {given: (stored, differs) for given, stored, differs in self._match_keys(staged)}
            if next_free is None:
                next_free = self.next_position()
            placed, retired = [], []
            for row in rows:
                match = matches.get(row[0])
                if match is None:
                    placed.append((next_free,) + row[1:])
                    next_free += 1
                    change.added += 1
                elif match[1]:  # same key, other content: the stored row goes to history
                    placed.append((match[0],) + row[1:])
                    retired.append(match[0])
                    change.changed += 1
            self.retire(retired, version)
            self.append(version, placed)
            matched += len(matches)
        return change, matched

    def retire(self, positions: list[int], version: int) -> None:
        """Retire the current rows at ``positions`` (replaced in ``version``)."""
        if not positions:
            return
        with self.staged("_healthsim_gone", ("_position",)) as marks:
            self.session.append(marks.name, ("_position",), [(p,) for p in positions])
            self._retire(version, f"SELECT _position FROM {quote(marks.name)}")

    def delete(self, *, replaced_by: int | None = None) -> None:
        """Delete the scenario's rows: all of them, or only those replaced
        by version ``replaced_by`` or an earlier one (what a prune drops)."""
        if replaced_by is None:
            self.session.execute(f"DELETE FROM {quote(self.table)} WHERE scenario_id = ?", [self.scenario_id])
        else:
            self.session.execute(f"DELETE FROM {quote(self.table)} WHERE scenario_id = ? AND _until <= ?",
                                 [self.scenario_id, replaced_by])

    @contextmanager
    def staged(self, name: str = "_healthsim_stage", columns: Sequence[str] | None = None) -> Iterator["Staged"]:
        """A temporary table of the type's rows (``columns``, default every
        data column), dropped when the block ends (on an error the rollback
        drops it: a statement in a failed transaction would only fail again)."""
        created = self.session.create_staging(name, self.table, data_columns(self.mapping) if columns is None
                                              else columns)
        yield Staged(self, created)
        self.session.execute(f"DROP TABLE {quote(created)}")

    # --- inside ----------------------------------------------------------------------------------

    def _append(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        try:
            self.session.append(table, columns, rows)
        except StoreError:
            problems = _unstorable_strings(self.codec, rows, columns)
            if problems:
                raise ValidationError(problems, summary="scenario not saved") from None
            raise

    def _append_columns(self, table: str, columns: Sequence[str], batch: ColumnBatch, *around: Constant) -> None:
        """``batch`` under ``columns``: the constants ``around`` it (scenario id
        before, then the versions after) when there are any."""
        fields = self.mapping.fields
        arrays = [batch.positions, *batch.columns, batch.residuals]
        types = [None, *(f.type for f in fields), None]
        if around:
            arrays, types = [around[0], *arrays, *around[1:]], [None, *types, *[None] * (len(around) - 1)]
        try:
            self.session.append_columns(table, columns, arrays, types, len(batch))
        except StoreError:
            problems = _unstorable_strings(self.codec, batch.rows(), data_columns(self.mapping))
            if problems:
                raise ValidationError(problems, summary="scenario not saved") from None
            raise

    def _retire(self, version: int, positions: str | None, *, rows: str | None = None) -> None:
        """Mark current rows (all, or those whose position the query
        ``positions`` selects, or those the condition ``rows`` picks)
        replaced in ``version``."""
        where = "scenario_id = ? AND _until IS NULL"
        if positions is not None:
            where += f" AND _position IN ({positions})"
        if rows is not None:
            where += f" AND {rows}"
        self.session.execute(f"UPDATE {quote(self.table)} SET _until = ? WHERE {where}", [version, self.scenario_id])

    def _compare(self, column: str, alias: str | None = None) -> str:
        if column in ("_position", "_residual"):
            return quote(column) if alias is None else f"{alias}.{quote(column)}"
        return self.session.dialect.compare_expression(self.mapping.field(column).type, column, alias)

    def _count_changes(self, staging: str, compared: str) -> Changes:
        """Added, changed and removed by key, from the rows that differ
        (``compared``: the rows that go and the rows that come; every other
        row is the same on both sides); whether any row goes or comes at all.
        A key that goes and comes at one position changed (its row differs):
        counted as it is read, so an overwrite that keeps each entity in its
        place joins nothing more. The other keys are matched by key; one that
        moved to another position is compared by content (rare: a new order
        of the same entities)."""
        count = len(self.mapping.primary_key)
        table = quote(compared)
        in_place = ("COALESCE(old_position IS NOT NULL AND new_position IS NOT NULL AND "
                    + " AND ".join(f"{quote(f'_old_{i}')} = {quote(f'_new_{i}')}" for i in range(count))
                    + ", false)")
        keys = " AND ".join(f"o.{quote(f'_old_{i}')} = n.{quote(f'_new_{i}')}" for i in range(count))
        old = ", ".join(quote(f"_old_{i}") for i in range(count))
        new = ", ".join(quote(f"_new_{i}") for i in range(count))
        pairs = (f"FROM (SELECT old_position, {old} FROM {table} WHERE old_position IS NOT NULL "
                 f"AND NOT {in_place}) o "
                 f"FULL OUTER JOIN (SELECT new_position, {new} FROM {table} WHERE new_position IS NOT NULL "
                 f"AND NOT {in_place}) n ON {keys}")
        both = "o.old_position IS NOT NULL AND n.new_position IS NOT NULL"
        total, changed = self.session.fetchone(f"SELECT count(*), count(*) FILTER (WHERE {in_place}) FROM {table}")
        if total == changed:
            return Changes(changed=changed, rewritten=total > 0)
        added, removed, moved = self.session.fetchone(
            f"SELECT count(*) FILTER (WHERE o.old_position IS NULL), count(*) FILTER (WHERE n.new_position IS NULL), "
            f"count(*) FILTER (WHERE {both}) {pairs}")
        if moved:
            changed += self._moved_and_changed(staging, pairs, both)
        return Changes(added=added, removed=removed, changed=changed, rewritten=True)

    def _moved_and_changed(self, staging: str, pairs: str, both: str) -> int:
        """How many keys that moved to another position also changed content.
        The moved pairs are a table of their own, analyzed, so the joins with
        the stored and staged rows are planned for their real number."""
        session = self.session
        content = [c for c in data_columns(self.mapping) if c != "_position"]
        differs = " OR ".join(f"{self._compare(c, 'c')} IS DISTINCT FROM {self._compare(c, 's')}" for c in content)
        moved = session.create_temp_as("_healthsim_moved", f"SELECT o.old_position, n.new_position {pairs} "
                                                           f"WHERE {both}")
        session.analyze(moved, ("old_position", "new_position"))
        count = session.scalar(
            f"SELECT count(*) FROM {quote(moved)} m JOIN {quote(self.table)} c ON c.scenario_id = ? "
            f"AND c._until IS NULL AND c._position = m.old_position "
            f"JOIN {staging} s ON s._position = m.new_position WHERE {differs}", [self.scenario_id])
        session.execute(f"DROP TABLE {quote(moved)}")
        return count

    def _match_keys(self, staged: "Staged") -> list[tuple[int, int, bool]]:
        """``(staged position, stored position, content differs)`` for each
        staged row whose key is already current: a keyed join that reads
        only the key columns of the scenario's rows."""
        mapping = self.mapping
        keys = " AND ".join(f"c.{quote(k)} = s.{quote(k)}" for k in mapping.primary_key)
        content = [c for c in data_columns(mapping) if c != "_position"]
        differs = " OR ".join(f"{self._compare(c, 'c')} IS DISTINCT FROM {self._compare(c, 's')}" for c in content)
        return self.session.fetchall(
            f"SELECT s._position, c._position, {differs} FROM {quote(staged.name)} s JOIN {quote(self.table)} c "
            f"ON {keys} WHERE c.scenario_id = ? AND c._until IS NULL", [self.scenario_id])

    def _live_rows_sql(self, version: int | None, typed: bool = False, after: bool = False) -> tuple[str, list[Any]]:
        """The live rows' query: each column in its read form; with
        ``typed``, as it is; with ``after``, as it is where the dialect turns
        it into its read form in Python (:meth:`_in_read_form`)."""
        dialect = self.session.dialect
        key = ("store.live_rows", dialect.name, typed, after, version is None)
        sql = self.codec.cache.get(key)  # the same text for every scenario: made once a type
        if sql is None:
            if typed:
                reads = ", ".join(quote(f.column) for f in self.mapping.fields)
            else:
                reads = ", ".join(_read_as(dialect, f.type, f.column, after) for f in self.mapping.fields)
            sql = self.codec.cache[key] = (f"SELECT _position, {reads}, _residual FROM {quote(self.table)} "
                                           f"WHERE {self._live(version)[0]}")
        return sql, self._live(version)[1]

    def _in_read_form(self, rows: list[tuple]) -> list[tuple]:
        """Rows read with ``_live_rows_sql(after=True)``, each column in its
        read form: the dialect's conversions made on the non-null values of
        the columns it read as they are, a column at a time."""
        if not self._conversions() or not rows:
            return rows
        return list(zip(*self.read_form_columns(rows)))

    def read_form_columns(self, rows: list[tuple]) -> list[Sequence[Any]]:
        """The columns of rows read with ``_live_rows_sql(after=True)``
        (at least one), each in its read form (see :meth:`_in_read_form`):
        what :func:`~healthsim_state.engine.batch.rebuild_columns` takes,
        without turning them back into rows."""
        columns: list[Sequence[Any]] = list(zip(*rows))
        for index, convert in self._conversions():
            columns[index] = [None if value is None else convert(value) for value in columns[index]]
        return columns

    def _conversions(self) -> list[tuple[int, Any]]:
        """``(column index in a row, conversion)`` of the columns the dialect
        reads as they are and turns into their read form in Python."""
        dialect = self.session.dialect
        key = ("store.read_after", dialect.name)
        after = self.codec.cache.get(key)
        if after is None:
            after = self.codec.cache[key] = [
                (index, convert) for index, convert in
                enumerate((dialect.to_read_form(f.type) for f in self.mapping.fields), start=1)
                if convert is not None]
        return after

    def _live_data_sql(self, version: int | None) -> tuple[str, list[Any]]:
        names = ", ".join(quote(c) for c in data_columns(self.mapping))
        where, params = self._live(version)
        return f"SELECT {names} FROM {quote(self.table)} WHERE {where}", params

    def _live(self, version: int | None) -> tuple[str, list[Any]]:
        """The condition for the rows at ``version`` (None: the current ones)."""
        if version is None:
            return "scenario_id = ? AND _until IS NULL", [self.scenario_id]
        return ("scenario_id = ? AND _since <= ? AND (_until IS NULL OR _until > ?)",
                [self.scenario_id, version, version])

    def _planned_columns(self) -> tuple[str, ...]:
        """The columns of the table that writes find, join and filter rows on."""
        return ("scenario_id", "_position", "_until", *self.mapping.primary_key)


class Staged:
    """A temporary table of one type's rows (see :meth:`TypeRows.staged`)."""

    def __init__(self, rows: TypeRows, name: str):
        self._rows = rows
        self.name = name  # bare

    def add(self, rows: "Sequence[tuple] | Chunk") -> None:
        """Rows ``(position, col_0, ..., residual)``, or a flattened chunk."""
        columns = data_columns(self._rows.mapping)
        if isinstance(rows, Chunk):
            if rows.columns is not None and len(rows.columns):
                self._rows._append_columns(self.name, columns, rows.columns)
            rows = rows.rows
        if rows:
            self._rows._append(self.name, columns, list(rows))

    def add_version(self, version: int) -> None:
        """The rows the scenario's type held at ``version``."""
        source = self._rows
        columns = ", ".join(quote(c) for c in data_columns(source.mapping))
        where, params = source._live(version)
        source.session.execute(f"INSERT INTO {quote(self.name)} ({columns}) SELECT {columns} "
                               f"FROM {quote(source.table)} WHERE {where}", params)


# --- every type of a scenario at once ------------------------------------------------------------

def load_types(types: Sequence[tuple[TypeRows, int]], *, version: int | None = None, limit: int | None = None,
               offset: int = 0) -> list[list[dict]]:
    """The entities of each type of a load (its rows and the count stored),
    rebuilt, in saved order, as :meth:`TypeRows.load` gives them. The small
    types (under :data:`COLUMNWISE_READ` rows) are all fetched first, their
    queries one after the other, then all rebuilt: DuckDB's statements and
    our Python each run with their own code and data still in the CPU's
    caches (taking turns a type at a time, a small load's Python cost twice
    its own time, and its statements a little more). A large type is loaded
    alone, where it comes."""
    loaded: list[list[dict] | None] = [None] * len(types)
    fetched = []
    for index, (rows, count) in enumerate(types):
        if count >= COLUMNWISE_READ:  # its raw rows are not held beside the others'
            loaded[index] = rows.load(count, version=version, limit=limit, offset=offset)
        else:
            fetched.append((index, rows, rows.fetch_raw(version=version, limit=limit, offset=offset)))
    ordered = limit is not None or bool(offset)
    for index, rows, raw in fetched:
        raw = _in_saved_order(raw, ordered)
        loaded[index] = rebuild_columns(rows.codec, rows.read_form_columns(raw)) if raw else []
    return loaded  # type: ignore[return-value]


def by_type(chunks: Iterable[tuple[Codec, Chunk]]) -> Iterator[tuple[Codec, Iterator[Chunk]]]:
    """A batch's ``(codec, chunk)`` pairs (a type's chunks come together) as
    ``(codec, its chunks)``, still streamed."""
    for codec, pairs in groupby(chunks, key=_first):
        yield codec, map(operator.itemgetter(1), pairs)


# --- helpers ------------------------------------------------------------------------------------

def _in_saved_order(rows: list[tuple], ordered: bool) -> list[tuple]:
    """Rows ``(position, ...)`` sorted by position, in place, unless the
    query ``ordered`` them (nearly always stored in order already: one C
    pass checks it)."""
    if not ordered:
        rows.sort(key=_first)
    return rows


def _in_position_order(columns: list[list]) -> list[list]:
    """Columns whose first holds positions, reordered by it where it is not
    ascending already (nearly never: rows are stored in order)."""
    positions = columns[0]
    if all(map(operator.lt, positions, islice(positions, 1, None))):
        return columns
    order = sorted(range(len(positions)), key=positions.__getitem__)
    return [[column[i] for i in order] for column in columns]


def _read_as(dialect: Dialect, ctype: ColumnType, column: str, after: bool) -> str:
    """A column as a read selects it, named as it is: in its read form, or
    as it is where ``after`` lets the dialect make that form in Python.
    (Every selected expression costs DuckDB planning time: no alias where
    none is needed.)"""
    name = quote(column)
    expression = name if after and dialect.to_read_form(ctype) is not None else dialect.read_expression(ctype, column)
    return name if expression == name else f"{expression} AS {name}"


def limit_offset(params: list[Any], limit: int | None, offset: int) -> str:
    """``LIMIT ? OFFSET ?`` as asked (appending the values to ``params``)."""
    clause = ""
    if limit is not None:
        clause += " LIMIT ?"
        params.append(limit)
    if offset:
        clause += " OFFSET ?"
        params.append(offset)
    return clause


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
