"""Edit a mapping, keep your data: bring stored tables in line with the mappings.

The database records the mapping each entity table was built from
(``_healthsim_tables``). When the mappings in force differ, :func:`reconcile`
changes the tables, inside the caller's transaction, so that every stored
scenario loads as it did before (or, for a changed path, in the new canonical
shape) and the typed columns hold what the new mapping says:

- a field added gets its column, backfilled from what rows kept as unmapped
  data at its path (a value that does not fit the type stays unmapped);
- a field removed gives its values back to the residual, then its column goes;
- a changed type converts every stored value that fits exactly, or nothing
  changes and :class:`SchemaChangeError` lists what blocks it;
- a renamed column (same path) is a rename; a changed path moves the values;
- a changed key is checked for duplicates within each scenario;
- an alias, default or description change needs nothing stored to change;
- a type whose mapping is gone keeps its table and is reported as orphaned.

Where data must move, a table is rewritten the one generic way: each stored row
is rebuilt with the old mapping's code and flattened with the new one (in
"stored data" mode: no aliases, no defaults but a key's, unfit values kept),
scenario by scenario, into a new table that then replaces the old.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field as dataclass_field

import duckdb

from .engine.batch import KeyTracker, no_cyclic_gc
from .engine.compile import Codec, compile_mapping
from .engine.values import MISSING
from .errors import IncompatibleDatabaseError, Problem, SchemaChangeError
from .mapping.model import Field, Mapping, mapping_from_description

STAGING_PREFIX = "_healthsim_new_"


@dataclass
class TableReport:
    """What reconciliation did (or would do) to one entity type's table."""

    entity: str
    table: str
    action: str  # created | unchanged | recorded | renamed columns | rewritten | orphaned
    changes: list[str] = dataclass_field(default_factory=list)
    rows: int = 0


@dataclass
class SchemaReport:
    """Every table's :class:`TableReport`; ``applied`` is False for a dry run."""

    tables: list[TableReport]
    applied: bool = True

    @property
    def changed(self) -> bool:
        return any(t.action not in ("unchanged",) for t in self.tables)

    def for_entity(self, entity: str) -> TableReport:
        return next(t for t in self.tables if t.entity == entity)

    @property
    def orphaned(self) -> list[str]:
        return [t.entity for t in self.tables if t.action == "orphaned"]

    def lines(self) -> list[str]:
        out = []
        for table in self.tables:
            if table.action == "unchanged":
                continue
            out.append(f"{table.entity} ({table.table}): {table.action}" + (f", {table.rows} rows" if table.rows else ""))
            out.extend(f"  - {change}" for change in table.changes)
        return out or ["nothing to change"]


@dataclass
class _Diff:
    old: Mapping
    new: Mapping
    renames: dict[str, str]  # old column -> new column (same path)
    added: list[Field]
    removed: list[Field]
    retyped: list[tuple[Field, Field]]
    moved: list[tuple[Field, Field]]  # same column, new path
    key_changed: bool

    @property
    def needs_rewrite(self) -> bool:
        return bool(self.added or self.removed or self.retyped or self.moved or self.key_changed)


def diff_mappings(old: Mapping, new: Mapping) -> _Diff:
    old_by_column = {f.column: f for f in old.fields}
    new_by_column = {f.column: f for f in new.fields}
    old_by_path = {f.path: f for f in old.fields}
    renames = {}
    for field in new.fields:
        before = old_by_path.get(field.path)
        if field.column not in old_by_column and before is not None and before.column not in new_by_column:
            renames[before.column] = field.column
    pairs = [(old_by_column[c], f) for c, f in new_by_column.items() if c in old_by_column]
    pairs += [(old_by_column[o], new_by_column[n]) for o, n in renames.items()]
    renamed_to = set(renames.values())
    old_key = tuple(renames.get(c, c) for c in old.primary_key)
    return _Diff(
        old=old, new=new, renames=renames,
        added=[f for f in new.fields if f.column not in old_by_column and f.column not in renamed_to],
        removed=[f for f in old.fields if f.column not in new_by_column and f.column not in renames],
        retyped=[(o, n) for o, n in pairs if o.type.name != n.type.name],
        moved=[(o, n) for o, n in pairs if o.path != n.path],
        key_changed=old_key != new.primary_key or any(
            o.type.name != n.type.name for o, n in pairs if n.column in new.primary_key),
    )


def reconcile(con: duckdb.DuckDBPyConnection, codecs: dict[str, Codec], existing: dict[str, list],
              *, path: object) -> SchemaReport:
    """Create, change or report every entity table, in the caller's transaction."""
    from .store import expected_columns, quote, table_ddl, utc_now  # the store calls us: import late

    recorded = {entity: (table, json.loads(text)) for entity, table, text in
                con.execute("SELECT entity, table_name, mapping FROM _healthsim_tables").fetchall()}
    reports = []
    for entity, codec in codecs.items():
        table = codec.mapping.table
        record = recorded.get(entity)
        if record is None:
            if table in existing and existing[table] != expected_columns(codec):
                raise IncompatibleDatabaseError(
                    f"table {table!r} in {path} does not match the mapping of {entity!r} "
                    f"({codec.mapping.source}) and has no record of the mapping it was made from; "
                    "rename the table or the mapping's table")
            if table not in existing:
                con.execute(table_ddl(codec))
            reports.append(TableReport(entity, table, "created" if table not in existing else "recorded"))
        else:
            old = mapping_from_description(record[1], source=f"{path} (recorded)")
            if record[0] != table:
                con.execute(f"ALTER TABLE {quote(record[0])} RENAME TO {quote(table)}")
            reports.append(_reconcile_table(con, old, codec))
        con.execute("INSERT OR REPLACE INTO _healthsim_tables VALUES (?, ?, ?, ?)",
                    [entity, table, json.dumps(codec.mapping.describe()), utc_now()])
    for entity, (table, _) in recorded.items():
        if entity not in codecs:
            reports.append(TableReport(entity, table, "orphaned", [
                "its mapping file is gone: the table and its data stay, and come back with the mapping"]))
    return SchemaReport(reports)


def _reconcile_table(con, old: Mapping, codec: Codec) -> TableReport:
    from .store import quote

    new = codec.mapping
    diff = diff_mappings(old, new)
    report = TableReport(new.entity, new.table, "unchanged")
    if old.describe() == new.describe():
        return report
    if old.table != new.table:
        report.changes.append(f"table renamed: {old.table} -> {new.table}")
    if {**old.describe(), "table": None} == {**new.describe(), "table": None}:
        report.action = "renamed table"
        return report
    report.changes += _describe_diff(diff, old)
    if diff.needs_rewrite or _reordered(diff):
        report.action = "rewritten"
        report.rows = _rewrite(con, diff, codec, report)
    elif diff.renames:
        report.action = "renamed columns"
        for before, after in diff.renames.items():
            con.execute(f"ALTER TABLE {quote(new.table)} RENAME COLUMN {quote(before)} TO {quote(after)}")
    else:
        report.action = "recorded"  # aliases, defaults, descriptions: nothing stored changes
    return report


def _reordered(diff: _Diff) -> bool:
    """The new mapping lists the same columns in another order (the appender
    writes columns in table order, so the table must follow)."""
    old_order = [diff.renames.get(f.column, f.column) for f in diff.old.fields]
    return old_order != [f.column for f in diff.new.fields]


def _describe_diff(diff: _Diff, old: Mapping) -> list[str]:
    lines = [f"column renamed: {a} -> {b}" for a, b in diff.renames.items()]
    lines += [f"field added: {f.column} ({f.dotted}, {f.type.name})" for f in diff.added]
    lines += [f"field removed: {f.column} ({f.dotted}): its values are kept as unmapped data" for f in diff.removed]
    lines += [f"type changed: {n.column} {o.type.name} -> {n.type.name}" for o, n in diff.retyped]
    lines += [f"path changed: {n.column} {o.dotted} -> {n.dotted}" for o, n in diff.moved]
    if diff.key_changed:
        lines.append(f"key changed: {', '.join(old.primary_key)} -> {', '.join(diff.new.primary_key)}")
    if not lines:
        lines.append("aliases, defaults or descriptions changed: nothing stored changes")
    return lines


# --- the rewrite ---------------------------------------------------------------------

def _stored_data_mapping(diff: _Diff) -> Mapping:
    """The new mapping as it applies to data already stored: no aliases (stored
    entities are canonical; a new alias must not reshape them), no defaults and
    no required fields but a key's, and a value that does not fit kept as
    unmapped data, except where a field's type changed (that must convert)."""
    retyped = {n.column for _, n in diff.retyped}
    keys = set(diff.new.primary_key)
    fields = tuple(dataclasses.replace(
        f, aliases=(), default=f.default if f.column in keys else MISSING,
        required=f.required and f.column in keys,
        strict=True if f.column in keys else (f.strict if f.column in retyped else False),
    ) for f in diff.new.fields)
    return dataclasses.replace(diff.new, fields=fields)


def _rewrite(con, diff: _Diff, codec: Codec, report: TableReport) -> int:
    from .store import Store, quote, table_ddl

    table, staging = diff.new.table, STAGING_PREFIX + diff.new.table
    old_codec = compile_mapping(diff.old)
    stored = compile_mapping(_stored_data_mapping(diff))
    con.execute(f"DROP TABLE IF EXISTS {quote(staging)}")
    con.execute(table_ddl(codec).replace(f"CREATE TABLE {quote(table)}", f"CREATE TABLE {quote(staging)}", 1))
    names = dict(con.execute("SELECT scenario_id, name FROM scenarios").fetchall())
    scenario_ids = [sid for (sid,) in con.execute(
        f"SELECT DISTINCT scenario_id FROM {quote(table)} ORDER BY scenario_id").fetchall()]
    blockers: list[Problem] = []
    rows_done, filled = 0, {f.column: 0 for f in diff.added}
    new_columns = [g.column for g in diff.new.fields]
    added_slots = {f.column: 2 + new_columns.index(f.column) for f in diff.added}  # where each sits in a row
    for scenario_id in scenario_ids:
        rows = Store.fetch_rows(con, old_codec, scenario_id)
        with no_cyclic_gc():
            entities = [old_codec.rebuild(row) for row in rows]
            for old_field, new_field in diff.moved:
                for entity in entities:
                    _move(entity, old_field.path, new_field.path)
            problems: list[Problem] = []
            new_rows = [stored.flatten(entity, scenario_id, row[0], problems) for row, entity in zip(rows, entities)]
        KeyTracker(stored, problems).check(new_rows)
        if problems:
            label = names.get(scenario_id, scenario_id)
            blockers += [dataclasses.replace(p, message=f"scenario {label!r}: {p.message}") for p in problems]
            continue
        if blockers:
            continue  # keep checking, but write nothing more
        with con.appender(staging) as appender:
            appender.append_rows(new_rows)
        rows_done += len(new_rows)
        for column, slot in added_slots.items():
            filled[column] += sum(row[slot] is not None for row in new_rows)
    if blockers:
        raise SchemaChangeError(blockers, table=table)
    con.execute(f"DROP TABLE {quote(table)}")
    con.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
    report.changes += [f"{f.column}: {filled[f.column]} stored values moved into the new column" for f in diff.added]
    return rows_done


def _move(entity: dict, old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Move the value at ``old`` to ``new`` (a changed path), as an alias move
    would: only when ``new`` is free, dropping an object the move empties."""
    parents, node = [], entity
    for key in old[:-1]:
        child = node.get(key, MISSING) if isinstance(node, dict) else MISSING
        if not isinstance(child, dict):
            return
        parents.append((node, key))
        node = child
    if old[-1] not in node:
        return
    target = entity
    for key in new[:-1]:
        child = target.get(key, MISSING)
        if child is MISSING:
            child = {}
        elif not isinstance(child, dict):
            return  # blocked: the value stays where it is
        target = child
    if new[-1] in target:
        return
    value = node.pop(old[-1])
    for node_, key in reversed(parents):  # drop objects the move left empty
        if node_[key] == {}:
            del node_[key]
    target = entity
    for key in new[:-1]:
        target = target.setdefault(key, {})
    target[new[-1]] = value
