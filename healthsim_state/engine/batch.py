"""A whole scenario through the engine: validate and flatten every entity
(collecting every problem), or rebuild stored rows into entities."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Iterator, Mapping as AnyMapping

from ..errors import Problem, ValidationError, preview
from .compile import Codec
from .registry import Registry


CHUNK = 16_384


class ScenarioBatch:
    """One scenario on its way into the store, a chunk of rows at a time.

    Streaming bounds memory: a million-entity save never holds a million rows.
    Atomicity comes from the store's transaction: :meth:`chunks` stops handing
    out rows at the first problem but validates to the end, so the caller's
    :meth:`raise_if_invalid` can list every problem and roll everything back.
    """

    def __init__(self, registry: Registry, entities: Any, scenario_id: str, chunk: int | None = None):
        self.problems: list[Problem] = []
        self.scenario_id = scenario_id
        self._chunk = chunk or CHUNK
        self._lists = _entity_lists(registry, entities, self.problems)
        self.counts = {codec.mapping.entity: len(items) for codec, items in self._lists if items}

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise ValidationError(self.problems, summary="scenario not saved")

    def chunks(self) -> Iterator[tuple[Codec, list[tuple]]]:
        """``(codec, rows)`` ready for the store, in the order given, while no
        problem has been found; then only validation goes on."""
        problems, scenario_id = self.problems, self.scenario_id
        for codec, items in self._lists:
            flatten = codec.flatten
            keys = _KeyTracker(codec, problems)
            for start in range(0, len(items), self._chunk):
                with no_cyclic_gc():
                    rows = [flatten(item, scenario_id, position, problems)
                            for position, item in enumerate(items[start:start + self._chunk], start)]
                keys.check(rows)
                if not problems:
                    yield codec, rows


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


class _KeyTracker:
    """Two entities of one type may not have equal keys (compared as typed
    column values: ``1`` and ``1.0`` are one ``double`` key)."""

    def __init__(self, codec: Codec, problems: list[Problem]):
        self.mapping = codec.mapping
        self.problems = problems
        self.indexes = codec.key_indexes
        self.seen: dict[Any, int] = {}
        # A decimal column may hold a float (its fast path) or a Decimal; compare as Decimal.
        self.decimals = [i for i, f in zip(self.indexes, self.mapping.key_fields) if f.type.name.startswith("decimal")]

    def check(self, rows: list[tuple | None]) -> None:
        indexes, seen, decimals = self.indexes, self.seen, self.decimals
        single = indexes[0] if len(indexes) == 1 and not decimals else None
        for row in rows:
            if row is None:
                continue
            if single is not None:
                key = row[single]
            else:
                key = tuple(Decimal(repr(row[i])) if i in decimals and row[i].__class__ is float else row[i]
                            for i in indexes)
            position = row[1]
            first = seen.setdefault(key, position)
            if first != position:
                self._report(key, first, position, single is not None)

    def _report(self, key: Any, first: int, position: int, single: bool) -> None:
        mapping = self.mapping
        shown = (key,) if single else key
        label = ", ".join(f"{c}={v!r}" for c, v in zip(mapping.primary_key, shown))
        paths = ", ".join(f.dotted for f in mapping.key_fields)
        self.problems.append(Problem(f"duplicate key ({label}): positions {first} and {position} have the same key",
                                     mapping.entity, position, paths, key))


def rebuild_rows(codec: Codec, rows: list[tuple]) -> list[dict]:
    rebuild = codec.rebuild
    with no_cyclic_gc():
        return [rebuild(row) for row in rows]


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector around a hot loop.

    Flatten and rebuild make millions of containers and no reference cycles;
    each full collection would walk every live object (the caller's whole
    input too), which made the cost per entity grow with the size of a save."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
