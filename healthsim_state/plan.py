"""Schema changes as data: what a client's mapping files would change in a
store, planned without touching it (:func:`plan`).

The store's recorded mappings are the ones in force. A client's files may
*add* to them (a type, a field, an alias); those additions are applied when
the client opens the store, for everyone. Anything else they say differently
(a field removed, renamed, retyped or moved, a key, default or table changed)
is *pending*: reported, and applied only when asked
(``healthsim-state migrate-schema``, ``StateManager(..., evolve=True)``).

A field or alias the store has and the files lack is not a change the files
*state*: they may simply not know it (another client added it). It is listed
apart (``absent``), never warned about, and removed only by ``evolve``, which
makes the files' mappings the ones in force.

A :class:`Plan` lists the :class:`Step` objects to apply and the changes left
pending; :mod:`healthsim_state.evolution` applies the steps.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field as dataclass_field

from .errors import MappingError
from .mapping.loader import check_mapping_set
from .mapping.model import Field, Mapping

class Action(enum.StrEnum):
    """What a step does to a table; its value is how reports name it.
    ``REWRITTEN`` rebuilds every row; the others are cheap."""

    CREATED = "created"
    FIELDS_ADDED = "fields added"
    RECORDED = "recorded"
    RENAMED_COLUMNS = "renamed columns"
    RENAMED_TABLE = "renamed table"
    REWRITTEN = "rewritten"


@dataclass
class MappingDiff:
    """How ``new`` differs from ``old`` (matched by column, or by path for a rename)."""

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
        return bool(self.removed or self.retyped or self.moved or self.key_changed)


def diff_mappings(old: Mapping, new: Mapping) -> MappingDiff:
    old_by_column = {f.column: f for f in old.fields}
    new_by_column = {f.column: f for f in new.fields}
    old_by_path = {f.path: f for f in old.fields}
    renames = {}
    for f in new.fields:
        before = old_by_path.get(f.path)
        if f.column not in old_by_column and before is not None and before.column not in new_by_column:
            renames[before.column] = f.column
    pairs = [(old_by_column[c], f) for c, f in new_by_column.items() if c in old_by_column]
    pairs += [(old_by_column[o], new_by_column[n]) for o, n in renames.items()]
    renamed_to = set(renames.values())
    old_key = tuple(renames.get(c, c) for c in old.primary_key)
    return MappingDiff(
        old=old, new=new, renames=renames,
        added=[f for f in new.fields if f.column not in old_by_column and f.column not in renamed_to],
        removed=[f for f in old.fields if f.column not in new_by_column and f.column not in renames],
        retyped=[(o, n) for o, n in pairs if o.type.name != n.type.name],
        moved=[(o, n) for o, n in pairs if o.path != n.path],
        key_changed=old_key != new.primary_key or any(
            o.type.name != n.type.name for o, n in pairs if n.column in new.primary_key),
    )


def same_mapping(a: Mapping, b: Mapping) -> bool:
    """Equal but for the order of fields (writes name their columns: order is free)."""
    return _comparable(a) == _comparable(b)


def _comparable(mapping: Mapping) -> dict:
    described = mapping.describe()
    described["fields"] = sorted(described["fields"], key=lambda f: f["column"])
    return described


FIELD_REMOVED, ALIAS_REMOVED = "field removed:", "alias removed:"


def is_absence(line: str) -> bool:
    """Whether a change line only says the new mapping lacks something."""
    return line.startswith((FIELD_REMOVED, ALIAS_REMOVED))


def describe_changes(old: Mapping, new: Mapping) -> list[str]:
    """Every difference, one line each, as a person reads it."""
    diff = diff_mappings(old, new)
    lines = [f"table renamed: {old.table} -> {new.table}"] if old.table != new.table else []
    lines += [f"column renamed: {a} -> {b}" for a, b in diff.renames.items()]
    lines += [f"field added: {f.column} ({f.dotted}, {f.type.name})" for f in diff.added]
    lines += [f"{FIELD_REMOVED} {f.column} ({f.dotted}): its values are kept as unmapped data" for f in diff.removed]
    lines += [f"type changed: {n.column} {o.type.name} -> {n.type.name}" for o, n in diff.retyped]
    lines += [f"path changed: {n.column} {o.dotted} -> {n.dotted}" for o, n in diff.moved]
    if diff.key_changed:
        lines.append(f"key changed: {', '.join(old.primary_key)} -> {', '.join(new.primary_key)}")
    new_by_column = {f.column: f for f in new.fields}
    # a key column is required by being a key: a changed key says that already
    implied = set(old.primary_key) | set(new.primary_key) if diff.key_changed else set()
    for o in old.fields:
        n = new_by_column.get(diff.renames.get(o.column, o.column))
        if n is not None:
            lines += _field_attribute_changes(o, n, skip_required=n.column in implied)
    for label, a, b in (("plural", old.plural, new.plural), ("description", old.description, new.description)):
        if a != b:
            lines.append(f"{label} changed: {a!r} -> {b!r}")
    return lines


def _field_attribute_changes(o: Field, n: Field, *, skip_required: bool = False) -> list[str]:
    lines = []
    dotted = lambda paths: [".".join(p) for p in paths]  # noqa: E731
    for alias in dotted(a for a in n.aliases if a not in o.aliases):
        lines.append(f"alias added: {n.column} <- {alias}")
    for alias in dotted(a for a in o.aliases if a not in n.aliases):
        lines.append(f"{ALIAS_REMOVED} {n.column} <- {alias}")
    for label in ("default", "required", "strict", "description"):
        if label == "required" and skip_required:
            continue
        a, b = getattr(o, label), getattr(n, label)
        if a != b:
            lines.append(f"{label} changed: {n.column} {_show(a)} -> {_show(b)}")
    return lines


def _show(value: object) -> str:
    from .values import MISSING

    return "none" if value is MISSING else repr(value)


# --- additions --------------------------------------------------------------------------

def _occupied(mapping: Mapping) -> set[tuple[str, ...]]:
    return {p for f in mapping.fields for p in (f.path, *f.aliases)}


def _free(path: tuple[str, ...], occupied: set[tuple[str, ...]]) -> bool:
    """No path or alias equals ``path`` or lies inside it or around it."""
    return all(q[:len(path)] != path and path[:len(q)] != q for q in occupied)


def add_only(old: Mapping, new: Mapping) -> Mapping:
    """``old`` plus what ``new`` adds to it without changing anything stored:
    new fields (not keys, not renames) and new aliases whose paths are free.
    New fields go after the old ones."""
    diff = diff_mappings(old, new)
    occupied = _occupied(old)
    fields = list(old.fields)
    index = {f.column: i for i, f in enumerate(fields)}
    for f in new.fields:
        at = index.get(f.column)
        if at is None:
            paths = (f.path, *f.aliases)
            if f in diff.added and f.column not in new.primary_key and all(_free(p, occupied) for p in paths):
                fields.append(f)
                occupied.update(paths)
            continue
        extra = tuple(a for a in f.aliases if a not in fields[at].aliases and _free(a, occupied))
        if extra:
            fields[at] = dataclasses.replace(fields[at], aliases=fields[at].aliases + extra)
            occupied.update(extra)
    return dataclasses.replace(old, fields=tuple(fields))


# --- the plan ---------------------------------------------------------------------------

@dataclass
class Step:
    """One table's change: ``action``, from ``old`` (None for a new type) to
    ``new``, described line by line."""

    action: Action
    entity: str
    old: Mapping | None
    new: Mapping
    changes: list[str] = dataclass_field(default_factory=list)

    @property
    def table(self) -> str:
        return self.new.table


@dataclass
class Plan:
    in_force: dict[str, Mapping]  # the set in force once the steps are applied
    steps: list[Step]
    pending: dict[str, list[str]]  # entity -> changes the local files state that this plan leaves alone
    evolve: bool
    absent: dict[str, list[str]] = dataclass_field(default_factory=dict)  # what the files lack (see above)

    @property
    def pending_lines(self) -> list[str]:
        return [f"{entity}: {line}" for entity, lines in self.pending.items() for line in lines]

    def once_applied(self) -> Plan:
        """This plan after its steps ran: nothing left to apply, the same set
        in force and the same changes pending."""
        return dataclasses.replace(self, steps=[])


def plan(stored: dict[str, Mapping], local: dict[str, Mapping], *, evolve: bool = False) -> Plan:
    """What opening a store holding ``stored`` with the files ``local`` does:
    add what the files add, or (``evolve``) apply everything they say.
    A type the files do not name stays as the store has it."""
    in_force = dict(stored)
    steps: list[Step] = []
    pending: dict[str, list[str]] = {}
    for entity, new in local.items():
        old = stored.get(entity)
        target = new if evolve or old is None else add_only(old, new)
        if target.fhir != new.fhir:  # the store does not record FHIR declarations: the files' are in force
            target = dataclasses.replace(target, fhir=new.fhir)
        if old is None:
            candidate = {**in_force, entity: target}
            problems = check_mapping_set(candidate)
            if problems:
                if evolve:
                    raise MappingError(problems)
                pending[entity] = [f"type not added: {p.message}" for p in problems]
                continue
            steps.append(Step(Action.CREATED, entity, None, target, [f"type added: table {target.table}"]))
        elif not same_mapping(old, target):
            steps.append(_step(old, target))
        in_force[entity] = target
        if not same_mapping(target, new):
            pending[entity] = describe_changes(target, new)
    if evolve:
        problems = check_mapping_set(in_force)
        if problems:
            raise MappingError(problems)
    absent = {entity: [line for line in lines if is_absence(line)] for entity, lines in pending.items()}
    pending = {entity: [line for line in lines if not is_absence(line)] for entity, lines in pending.items()}
    return Plan(in_force, steps, {e: lines for e, lines in pending.items() if lines}, evolve,
                {e: lines for e, lines in absent.items() if lines})


def _step(old: Mapping, new: Mapping) -> Step:
    diff = diff_mappings(old, new)
    changes = describe_changes(old, new)
    if diff.needs_rewrite:
        action = Action.REWRITTEN
    elif diff.added:
        action = Action.FIELDS_ADDED
    elif diff.renames:
        action = Action.RENAMED_COLUMNS
    elif old.table != new.table:
        action = Action.RENAMED_TABLE
    else:
        action = Action.RECORDED
    return Step(action, new.entity, old, new, changes)
