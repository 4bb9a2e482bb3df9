"""A scenario's whole history as data: every kept version (number,
operation, time, description, tags, metadata, changes) and every entity of
any of them with the versions that held it. What ``copy --history`` carries
between stores and ``export --history`` writes to a file.

An entity is held by versions ``since`` up to (not including) ``until``
(None: it is still current), at ``position`` in its type's list: the store's
own ``_since``/``_until`` (see :mod:`healthsim_state.store`), so a history is
written back row for row, sharing every unchanged entity between versions as
the source did, in bulk.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import groupby
from operator import attrgetter
from typing import Any

from .engine.batch import ScenarioBatch, no_cyclic_gc
from .engine.registry import Registry
from .column_types import TYPES, Unfit
from .errors import Problem, ValidationError, preview
from .store import Scenarios

SUMMARY = "scenario history not saved"


@dataclass
class HeldEntity:
    """One entity and the versions that held it."""

    since: int
    until: int | None
    position: int
    entity: dict[str, Any]


@dataclass
class ScenarioHistory:
    """A scenario with every kept version, oldest first. ``versions`` are
    dicts as :meth:`StateManager.scenario_history` gives them (``at`` a UTC
    datetime); ``entities`` maps an entity type to its held entities."""

    name: str
    description: str | None
    tags: list[str]
    created_at: _dt.datetime
    updated_at: _dt.datetime
    versions: list[dict[str, Any]]
    entities: dict[str, list[HeldEntity]] = field(default_factory=dict)

    @property
    def entity_count(self) -> int:
        """Entities in the newest version."""
        return sum(1 for held in self.entities.values() for item in held if item.until is None)


def by_entity(registry: Registry, history: ScenarioHistory) -> ScenarioHistory:
    """The history with its types by singular name (a file may give plural
    ones), checked (:func:`check_history`): raises :class:`ValidationError`
    listing every problem."""
    problems: list[Problem] = []
    entities: dict[str, list[HeldEntity]] = {}
    for key, held in history.entities.items():
        codec = registry.resolve(key)
        if codec is None:
            problems.append(Problem(f"unknown entity type {preview(key)}; registered types: "
                                    f"{', '.join(registry.entity_types)}", path=f"entities.{key}", value=key))
        elif codec.mapping.entity in entities:
            problems.append(Problem(f"entity type {codec.mapping.entity!r} given twice; merge the two lists",
                                    codec.mapping.entity, path=f"entities.{key}"))
        else:
            entities[codec.mapping.entity] = held
    versions = [dict(version) for version in history.versions]
    checked = replace(history, versions=versions, entities=entities)
    problems += check_history(checked)
    if problems:
        raise ValidationError(problems, summary=SUMMARY)
    return checked


def check_history(history: ScenarioHistory) -> list[Problem]:
    """Every problem of a history from outside (a file): version numbers
    consecutive and ascending, each entity's versions among them, no two
    entities of a type at one position in one version. Fills each version's
    ``entity_counts`` from the entities (what the store counts)."""
    problems: list[Problem] = []
    if not all(isinstance(v, dict) for v in history.versions):
        return [Problem("each version is an object (version, operation, at, ...)", path="versions")]
    numbers = [v.get("version") for v in history.versions]
    if not numbers:
        return [Problem("a history holds at least one version", path="versions")]
    if any(isinstance(n, bool) or not isinstance(n, int) for n in numbers) or numbers[0] < 1 or \
            numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return [Problem(f"version numbers must be consecutive integers of 1 or more, oldest first, got "
                        f"{preview(numbers)}", path="versions")]
    for index, version in enumerate(history.versions):
        _check_version(version, f"versions[{index}]", problems)
    first, newest = numbers[0], numbers[-1]
    steps: Counter[tuple[int, str]] = Counter()  # (version, type): entities coming minus going there
    for entity, held in history.entities.items():
        for index, item in enumerate(held):
            since, until, position = item.since, item.until, item.position
            if since.__class__ is int and 1 <= since <= newest and position.__class__ is int and position >= 0 and \
                    (until is None or until.__class__ is int and max(since, first) < until <= newest):
                steps[max(since, first), entity] += 1  # the common case, checked at once
                if until is not None:
                    steps[until, entity] -= 1
                continue
            path = f"entities.{entity}[{index}]"
            if not _is_count(item.position):
                problems.append(Problem(f"position must be an integer of 0 or more, got {preview(item.position)}",
                                        entity, index, f"{path}.position"))
            if not _is_count(item.since) or not 1 <= item.since <= newest:
                problems.append(Problem(f"since must be a version number up to {newest}, got {preview(item.since)}",
                                        entity, index, f"{path}.since"))
                continue
            if item.until is not None and (not _is_count(item.until) or not max(item.since, first) < item.until
                                           <= newest):
                problems.append(Problem(f"until must be null (still current) or a version after since "
                                        f"({item.since}) and after {first}, up to {newest}, got "
                                        f"{preview(item.until)}", entity, index, f"{path}.until"))
        problems += _overlaps(entity, held)
    running: dict[str, int] = {}
    for version in history.versions:
        for entity in history.entities:
            running[entity] = running.get(entity, 0) + steps[version["version"], entity]
        version["entity_counts"] = {entity: count for entity, count in running.items() if count}
    return problems


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_version(version: dict[str, Any], path: str, problems: list[Problem]) -> None:
    operation = version.get("operation")
    if not isinstance(operation, str) or not operation:
        problems.append(Problem(f"operation must be a non-empty string, got {preview(operation)}",
                                path=f"{path}.operation"))
    try:
        at, _ = TYPES["timestamp"].convert(version.get("at"))
        version["at"] = at.replace(tzinfo=_dt.timezone.utc)
    except Unfit as reason:
        problems.append(Problem(f"at: {reason}, got {preview(version.get('at'))}", path=f"{path}.at"))
    changes = version.get("changes", {})
    if not isinstance(changes, dict) or not all(isinstance(c, dict) for c in changes.values()):
        problems.append(Problem("changes must map an entity type to its counts", path=f"{path}.changes"))


def _overlaps(entity: str, held: list[HeldEntity]) -> list[Problem]:
    """Two entities of one type at one position in a version (a bad file)."""
    problems = []
    valid = [h for h in held if _is_count(h.position) and _is_count(h.since)
             and (h.until is None or _is_count(h.until))]
    for position, group in groupby(sorted(valid, key=attrgetter("position", "since")), key=attrgetter("position")):
        end: int | None = 0
        for item in group:
            if end is None or item.since < end:
                problems.append(Problem(f"two entities hold position {position} in version {item.since}",
                                        entity, position, f"entities.{entity}"))
                break
            end = item.until
    return problems


def write_rows(scenarios: Scenarios, scenario_id: str, history: ScenarioHistory) -> None:
    """Every held entity as a row of the target, through the target's
    mappings: grouped by the versions that hold them (rows written by one
    version have unique keys, so each group validates as one save would),
    each group in bulk (a column batch where the engine makes one). Every
    problem is collected; then :class:`ValidationError`."""
    problems: list[Problem] = []
    for entity, held in history.entities.items():
        groups: dict[tuple[int, int | None], list[HeldEntity]] = {}
        for item in held:
            groups.setdefault((item.since, item.until), []).append(item)
        for (since, until), items in groups.items():
            batch = ScenarioBatch(scenarios.registry, {entity: [item.entity for item in items]})
            try:
                with no_cyclic_gc():
                    for codec, chunk in batch.chunks():
                        if chunk.columns is not None and len(chunk.columns):
                            columns = chunk.columns
                            columns.positions = [items[p].position for p in columns.positions]
                            scenarios.rows(codec, scenario_id).append_history_columns(since, until, columns)
                        rows = [(items[row[0]].position, *row[1:], since, until) for row in chunk.rows]
                        if rows:
                            scenarios.rows(codec, scenario_id).append_history(rows)
            except ValidationError as error:
                problems += [Problem(f"(written in version {since}) {p.message}", p.entity_type, p.position, p.path,
                                     p.value) for p in error.problems]
    if not problems:  # groups validate apart: a key two of them hold in one version is found here
        for entity in history.entities:
            codec = scenarios.registry.codecs[entity]
            for version, *key in scenarios.rows(codec, scenario_id).repeated_keys():
                shown = ", ".join(f"{column}={value!r}" for column, value in zip(codec.mapping.primary_key, key))
                problems.append(Problem(f"version {version} holds two entities with the key ({shown})", entity,
                                        path=f"entities.{entity}"))
    if problems:
        raise ValidationError(problems, summary=SUMMARY)
