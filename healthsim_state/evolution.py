"""Apply a :class:`~healthsim_state.plan.Plan` to a store, inside the caller's
transaction, so that every stored scenario loads as it did before (or, for a
changed path, in the new canonical shape), every version of it included:

- a new type gets its tables;
- a field added gets its column, filled from what rows kept as unmapped data
  at its path (a value that does not fit the type stays unmapped): only the
  rows whose residual names the field's key are read;
- an alias, default or description change needs nothing stored to change;
- a renamed column or table is a rename;
- a field removed, retyped or moved, or a changed key, rewrites the tables the
  one generic way: each stored row is rebuilt with the old mapping's code and
  flattened with the new one (in "stored data" mode: no aliases, no defaults
  but a key's, unfit values kept), scenario by scenario. A value that does not
  fit a changed type, or a duplicate under a changed key, blocks the change:
  nothing changes and :class:`SchemaChangeError` lists what is in the way.

Two stages: :func:`compile_plan` reads the store (and writes nothing) to
turn the plan into the list of operations it takes, DDL as
:class:`Statement` and row rewrites as :class:`RewriteScenario` and
:class:`UpdateRows`, making every check on the way; :func:`execute` runs
such a list. A dry run is the first stage alone: its report holds the list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from .backends.base import Session, quote
from .engine.batch import KeyTracker, no_cyclic_gc
from .engine.compile import Codec, compile_mapping
from .errors import IncompatibleDatabaseError, Problem, SchemaChangeError
from .layout import (
    REWRITE_TABLE, StoreState, data_columns, digest_of, drop_view_ddl, entity_ddl, index_ddl, record, set_meta,
    table_columns, versions_table, view_ddl,
)
from .mapping.model import Mapping
from .plan import Action, MappingDiff, Plan, Step, diff_mappings
from .values import MISSING

BATCH = 10_000


# --- the operations a change compiles to -------------------------------------------------

@dataclass(frozen=True)
class Statement:
    """One SQL statement (DDL); values, if any, as parameters."""

    sql: str
    params: tuple[Any, ...] = ()

    def describe(self) -> str:
        return self.sql

    def run(self, session: Session) -> None:
        session.execute(self.sql, self.params)


@dataclass(frozen=True)
class Conversion:
    """How a rewrite turns a stored row of the old mapping into one of the new:
    compiled once per table, shared by its :class:`RewriteScenario` operations."""

    diff: MappingDiff
    old_codec: Codec
    stored: Codec

    @classmethod
    def of(cls, diff: MappingDiff) -> Conversion:
        return cls(diff, compile_mapping(diff.old), compile_mapping(stored_data_mapping(diff)))

    def scenario(self, session: Session, source: str, scenario_id: Any) -> tuple[list[tuple], list[Problem]]:
        """One scenario's rows of every version, read from the versions table
        ``source`` (in the old mapping's columns) and rebuilt under the new."""
        rows = session.fetchall(_select(session, self.diff.old, source, " WHERE scenario_id = ?"), [scenario_id])
        return _convert(rows, self.diff, self.old_codec, self.stored)


@dataclass(frozen=True)
class RewriteScenario:
    """One scenario's rows, rebuilt under the new mapping, appended to
    ``table`` in bulk. It holds no rows, only what to read: :func:`compile_plan`
    converts each scenario once to check it and count (keeping only the
    counts), and :meth:`run` reads and converts it again from ``source`` (the
    versions table's name at the moment it runs, after any table rename listed
    before it). Converting twice is the price of holding one scenario's rows
    at a time, never the table's, for this rare operation."""

    table: str
    columns: tuple[str, ...]
    source: str
    scenario_id: Any
    row_count: int
    conversion: Conversion = dataclass_field(compare=False)

    def describe(self) -> str:
        return f"append {self.row_count} rebuilt rows to {self.table}"

    def run(self, session: Session) -> None:
        rows, problems = self.conversion.scenario(session, self.source, self.scenario_id)
        if problems:  # the checks ran in this transaction, so only a store changed in between gets here
            raise SchemaChangeError(problems, table=self.conversion.diff.new.table)
        session.append(self.table, self.columns, rows)


@dataclass(frozen=True)
class UpdateRows:
    """Set ``columns`` and ``_residual`` of the rows named by (scenario_id,
    _since, _position), from a staged copy: one statement, not one a row."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple]

    def describe(self) -> str:
        return f"update {len(self.rows)} rows of {self.table}: {', '.join(self.columns)} and _residual"

    def run(self, session: Session) -> None:
        names = ["scenario_id", "_since", "_position", *self.columns, "_residual"]
        staging = session.create_staging("_healthsim_update", self.table, names)
        session.append(staging, names, self.rows)
        table = quote(self.table)
        sets = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in (*self.columns, "_residual"))
        session.execute(f"UPDATE {table} SET {sets} FROM {staging} s WHERE {table}.scenario_id = s.scenario_id "
                        f"AND {table}._since = s._since AND {table}._position = s._position")
        session.execute(f"DROP TABLE {staging}")


Operation = Statement | RewriteScenario | UpdateRows


def _statements(*sql: str) -> list[Operation]:
    return [Statement(text) for text in sql]


# --- reports -------------------------------------------------------------------------------

@dataclass
class TableReport:
    """What applying the plan did (or would do) to one entity type's tables."""

    entity: str
    table: str
    action: Action
    changes: list[str] = dataclass_field(default_factory=list)
    rows: int = 0


@dataclass
class SchemaReport:
    """Every changed table's :class:`TableReport`; ``applied`` is False for a
    dry run; ``pending`` lists, per type, what the local mapping files would
    change that this run left alone; ``operations`` what the change runs (or,
    for a dry run, would run), in order."""

    tables: list[TableReport]
    applied: bool = True
    pending: dict[str, list[str]] = dataclass_field(default_factory=dict)
    operations: list[Operation] = dataclass_field(default_factory=list, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.tables)

    def for_entity(self, entity: str) -> TableReport:
        return next(t for t in self.tables if t.entity == entity)

    def lines(self) -> list[str]:
        out = []
        for table in self.tables:
            rows = f", {table.rows} rows" if table.rows else ""
            out.append(f"{table.entity} ({table.table}): {table.action}{rows}")
            out.extend(f"  - {change}" for change in table.changes)
        return out or ["nothing to change"]


# --- plan -> operations -> executor ----------------------------------------------------------

def compile_plan(session: Session, plan: Plan, *, label: str) -> SchemaReport:
    """The operations that apply every step of ``plan``, in order, and what
    they do to each table, read from the store; writes nothing. Raises what
    applying would raise (a table in the way, stored values that block a
    change). The report's ``applied`` is False."""
    existing = table_columns(session)
    tables, operations = [], []
    for step in plan.steps:
        report = TableReport(step.entity, step.table, step.action, list(step.changes))
        if step.action == Action.CREATED:
            operations += _create(step, existing, label, session)
        else:
            operations += _change(session, step, report)
        tables.append(report)
    return SchemaReport(tables, applied=False, pending=plan.pending, operations=operations)


def execute(session: Session, operations: list[Operation]) -> None:
    """Run ``operations`` in order, in the caller's transaction."""
    for operation in operations:
        operation.run(session)


def apply(session: Session, plan: Plan, state: StoreState, *, label: str) -> SchemaReport:
    """Apply every step of ``plan``, then record the set in force."""
    report = compile_plan(session, plan, label=label)
    execute(session, report.operations)
    if plan.steps:
        record(session, {step.entity: step.new for step in plan.steps}, state)
        state.digest = digest_of(plan.in_force)
        set_meta(session, "mappings_digest", state.digest)
    return dataclasses.replace(report, applied=True)


def _create(step: Step, existing: dict[str, list[str]], label: str, session: Session) -> list[Operation]:
    mapping = step.new
    for table in (mapping.table, versions_table(mapping.table)):
        if table in existing:
            raise IncompatibleDatabaseError(
                f"{label} has a table {table!r} that the store did not make for {mapping.entity!r} "
                f"({mapping.source}); rename that table, or the mapping's table")
    return _statements(entity_ddl(session.dialect, mapping),
                       *index_ddl(session.dialect, versions_table(mapping.table)), *view_ddl(mapping))


def _change(session: Session, step: Step, report: TableReport) -> list[Operation]:
    """Reads come from the old tables (everything is read before anything
    runs); the operations write to the new ones."""
    old, new = step.old, step.new
    assert old is not None
    operations = _statements(drop_view_ddl(old.table))
    if old.table != new.table:
        operations += _statements(f"ALTER TABLE {quote(versions_table(old.table))} RENAME TO "
                                  f"{quote(versions_table(new.table))}")
    diff = diff_mappings(old, new)
    if step.action == Action.REWRITTEN:
        operations += _rewrite(session, diff, report)
    else:
        operations += _statements(*(f"ALTER TABLE {quote(versions_table(new.table))} RENAME COLUMN {quote(before)} "
                                    f"TO {quote(after)}" for before, after in diff.renames.items()))
        if diff.added:
            operations += _add_fields(session, diff, report)
    return operations + _statements(*view_ddl(new))


# --- stored data -----------------------------------------------------------------------

def stored_data_mapping(diff: MappingDiff) -> Mapping:
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


def _select(session: Session, mapping: Mapping, table: str, extra: str = "") -> str:
    """``scenario_id, _since, _until, _position, <columns in read form>, _residual``
    of the type's rows of every version, from the versions table ``table``
    (whose columns are still ``mapping``'s)."""
    dialect = session.dialect
    reads = ", ".join(dialect.read_expression(f.type, f.column) for f in mapping.fields)
    return f"SELECT scenario_id, _since, _until, _position, {reads}, _residual FROM {quote(table)}{extra}"


# --- fields added: a column and a backfill ------------------------------------------------

def _add_fields(session: Session, diff: MappingDiff, report: TableReport) -> list[Operation]:
    """Add the new columns, then move into them the stored values that were
    unmapped data at their paths. Only rows whose residual holds one of the
    new paths' last keys are read."""
    old, new = diff.old, diff.new
    moved = {f.column: 0 for f in diff.added}
    old_codec, stored = compile_mapping(old), compile_mapping(stored_data_mapping(diff))
    slots = {f.column: 1 + [g.column for g in new.fields].index(f.column) for f in diff.added}
    needles = sorted({json.dumps(f.path[-1]) + ":" for f in diff.added})
    where = " WHERE _residual IS NOT NULL AND (" + " OR ".join("strpos(_residual, ?) > 0" for _ in needles) + ")"
    table = versions_table(new.table)
    operations = _statements(*(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(f.column)} "
                               f"{session.dialect.column_type(f.type)}" for f in diff.added))
    updates = []
    for rows in session.stream(_select(session, old, versions_table(old.table), where), needles, BATCH):
        with no_cyclic_gc():
            for scenario_id, since, _, *row in rows:
                flat = stored.flatten(old_codec.rebuild(row), row[0], [])
                values = [flat[slots[f.column]] for f in diff.added]
                if any(v is not None for v in values):
                    updates.append((scenario_id, since, row[0], *values, flat[-1]))
                    for f, value in zip(diff.added, values):
                        moved[f.column] += value is not None
    if updates:
        operations.append(UpdateRows(table, tuple(f.column for f in diff.added), updates))
    report.changes += [f"{f.column}: {moved[f.column]} stored values moved into the new column" for f in diff.added]
    return operations


# --- the rewrite ----------------------------------------------------------------------------

def _rewrite(session: Session, diff: MappingDiff, report: TableReport) -> list[Operation]:
    """Rebuild every row of every version with the new mapping (see the module
    docstring) into a new table that then takes the old one's place. Each
    scenario is converted here to check it and count, one at a time, keeping
    only counts and problems; its :class:`RewriteScenario` converts it again
    when it runs."""
    new = diff.new
    conversion = Conversion.of(diff)
    names = dict(session.fetchall("SELECT scenario_id, name FROM scenarios"))
    blockers: list[Problem] = []
    filled = {f.column: 0 for f in diff.added}
    slots = {f.column: 1 + [g.column for g in new.fields].index(f.column) for f in diff.added}
    table, source = versions_table(new.table), versions_table(diff.old.table)
    operations = _statements(f"DROP TABLE IF EXISTS {quote(REWRITE_TABLE)}",
                             entity_ddl(session.dialect, new, table=REWRITE_TABLE))
    columns = ("scenario_id", *data_columns(new), "_since", "_until")
    scenario_ids = [s for (s,) in session.fetchall(f"SELECT DISTINCT scenario_id FROM {quote(source)} ORDER BY 1")]
    for scenario_id in scenario_ids:
        new_rows, problems = conversion.scenario(session, source, scenario_id)  # read now: nothing has run yet
        if problems:
            where = names.get(scenario_id, scenario_id)
            blockers += [dataclasses.replace(p, message=f"scenario {where!r}: {p.message}") for p in problems]
        if blockers:
            continue
        # Runs after the table rename (if any) listed before it: it reads the new name.
        operations.append(RewriteScenario(REWRITE_TABLE, columns, table, scenario_id, len(new_rows), conversion))
        report.rows += len(new_rows)
        for column, slot in slots.items():
            filled[column] += sum(row[1 + slot] is not None for row in new_rows)
    if blockers:
        raise SchemaChangeError(blockers, table=new.table)
    operations += _statements(f"DROP TABLE {quote(table)}",
                              f"ALTER TABLE {quote(REWRITE_TABLE)} RENAME TO {quote(table)}",
                              *index_ddl(session.dialect, table))
    report.changes += [f"{f.column}: {filled[f.column]} stored values moved into the new column" for f in diff.added]
    return operations


def _convert(rows: list[tuple], diff: MappingDiff, old_codec: Codec, stored: Codec
             ) -> tuple[list[tuple], list[Problem]]:
    """Rows ``(scenario_id, since, until, position, cols..., residual)`` of the
    old mapping, sorted by version and position, as rows of the new one. A
    changed key is checked for duplicates among the current rows."""
    rows.sort(key=lambda row: (row[1], row[3]))
    problems: list[Problem] = []
    out, current = [], []
    with no_cyclic_gc():
        for scenario_id, since, until, *row in rows:
            entity = old_codec.rebuild(row)
            for old_field, new_field in diff.moved:
                _move(entity, old_field.path, new_field.path)
            flat = stored.flatten(entity, row[0], problems)
            if flat is not None:
                out.append((scenario_id, *flat, since, until))
                if until is None:
                    current.append(flat)
    KeyTracker(stored, problems).check(current)  # it names duplicates in position order
    return out, problems


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

