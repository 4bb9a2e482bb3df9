"""A whole scenario through the engine: validate and flatten every entity
(collecting every problem), or rebuild stored rows into entities."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping as AnyMapping

from ..errors import Problem, ValidationError, preview
from .compile import Codec
from .registry import Registry


def flatten_scenario(registry: Registry, entities: Any, scenario_id: str) -> dict[str, list[tuple]]:
    """``{entity: [row, ...]}`` ready for the store, in the order given.

    Raises :class:`ValidationError` listing every problem of every entity
    (unknown types, non-list values, non-dict entities, bad fields, duplicate
    keys). Nothing has been written when it does.
    """
    problems: list[Problem] = []
    lists = _entity_lists(registry, entities, problems)
    batches: dict[str, list[tuple]] = {}
    for codec, items in lists:
        flatten = codec.flatten
        rows = [flatten(item, scenario_id, position, problems) for position, item in enumerate(items)]
        _check_duplicate_keys(codec, rows, problems)
        if rows:
            batches[codec.mapping.entity] = rows
    if problems:
        raise ValidationError(problems, summary="scenario not saved")
    return batches


def _entity_lists(registry: Registry, entities: Any, problems: list[Problem]) -> list[tuple[Codec, list]]:
    if entities is None:
        return []
    if not isinstance(entities, AnyMapping):
        problems.append(Problem(f"entities must be a dict of entity type to list, got {type(entities).__name__}",
                                path="entities"))
        return []
    found: dict[str, tuple[str, Codec, list]] = {}
    for key, items in entities.items():
        codec = registry.resolve(key)
        if codec is None:
            known = ", ".join(registry.entity_types)
            problems.append(Problem(f"unknown entity type {preview(key)}; registered types: {known}",
                                    path=f"entities.{key}", value=key))
            continue
        entity = codec.mapping.entity
        if entity in found:
            problems.append(Problem(f"entity type {entity!r} given twice (as {found[entity][0]!r} and {key!r}); "
                                    "merge the two lists", entity_type=entity, path=f"entities.{key}"))
            continue
        if not isinstance(items, list):
            problems.append(Problem(f"expected a list of entities, got {type(items).__name__}",
                                    entity_type=entity, path=f"entities.{key}", value=items))
            continue
        found[entity] = (key, codec, items)
    return [(codec, items) for _, codec, items in found.values()]


def _check_duplicate_keys(codec: Codec, rows: list[tuple | None], problems: list[Problem]) -> None:
    """Two entities of one type may not have equal keys (compared as typed
    column values: ``1`` and ``1.0`` are one ``double`` key)."""
    indexes = codec.key_indexes
    mapping = codec.mapping
    seen: dict[Any, int] = {}
    single = indexes[0] if len(indexes) == 1 else None
    # A decimal column may hold a float (its fast path) or a Decimal; compare as Decimal.
    decimals = [i for i, f in zip(indexes, mapping.key_fields) if f.type.name.startswith("decimal")]
    for position, row in enumerate(rows):
        if row is None:
            continue
        if decimals:
            row = tuple(Decimal(repr(v)) if i in decimals and v.__class__ is float else v for i, v in enumerate(row))
        key = row[single] if single is not None else tuple(row[i] for i in indexes)
        first = seen.setdefault(key, position)
        if first != position:
            shown = key if single is None else (key,)
            label = ", ".join(f"{c}={v!r}" for c, v in zip(mapping.primary_key, shown))
            paths = ", ".join(f.dotted for f in mapping.key_fields)
            problems.append(Problem(f"duplicate key ({label}): positions {first} and {position} have the same key",
                                    mapping.entity, position, paths, key))


def rebuild_rows(codec: Codec, rows: list[tuple]) -> list[dict]:
    rebuild = codec.rebuild
    return [rebuild(row) for row in rows]
