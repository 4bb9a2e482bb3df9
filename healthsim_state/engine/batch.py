"""A whole scenario through the engine: validate and flatten every entity
(collecting every problem), or rebuild stored rows into entities."""

from __future__ import annotations

import gc
import operator
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterator, Mapping as AnyMapping

from ..column_types import from_form
from ..errors import Problem, ValidationError, preview
from .columns import ColumnBatch, flatten_columns
from .compile import Codec
from .keys import KeyMaker, generated_fields
from .registry import Registry


CHUNK = 16_384
COLUMNAR = True
"""Whether batches use the column-wise flatten (:mod:`.columns`) where it
serves; False: the generated ``flatten`` for every entity (the tests compare)."""
_first = operator.itemgetter(0)


@dataclass
class Chunk:
    """Part of one type's list, flattened: the entities the column-wise
    flatten served (``columns``), and the others as rows ``(position, col_0,
    ..., residual)`` from the generated flatten."""

    codec: Codec
    columns: ColumnBatch | None
    rows: list[tuple]

    def __len__(self) -> int:
        return (len(self.columns) if self.columns is not None else 0) + len(self.rows)

    def all_rows(self) -> list[tuple]:
        """Every entity of the chunk as a row, in position order."""
        if self.columns is None:
            return self.rows
        rows = self.columns.rows() + self.rows
        rows.sort(key=_first)
        return rows


class ScenarioBatch:
    """One scenario on its way into the store, a chunk of rows at a time.

    Streaming bounds memory: a million-entity save never holds a million rows.
    Atomicity comes from the store's transaction: :meth:`chunks` stops handing
    out rows at the first problem but validates to the end, then raises
    :class:`ValidationError` listing every problem, so the caller's
    transaction rolls everything back. (An iterator that raises at its end
    cannot be misused: no separate check can be forgotten.)
    """

    def __init__(self, registry: Registry, entities: Any, chunk: int | None = None,
                 progress: Callable[[int, int], None] | None = None, *, columnar: bool | None = None):
        self.problems: list[Problem] = []
        self._chunk = chunk or CHUNK
        self._columnar = COLUMNAR if columnar is None else columnar
        self._lists = _entity_lists(registry, entities, self.problems)
        self.counts = {codec.mapping.entity: len(items) for codec, items in self._lists if items}
        self._progress = progress

    def chunks(self) -> Iterator[tuple[Codec, Chunk]]:
        """``(codec, chunk)`` ready for the store, while no problem has been
        found; then only validation goes on, and the end raises
        :class:`ValidationError`. Entities of a shape met often go the
        column-wise way (:mod:`.columns`), the others through the generated
        ``flatten``: both store the same rows. ``progress(done, total)`` is
        called after each chunk (once written) with the entities handled so far."""
        problems, progress = self.problems, self._progress
        done, total = 0, sum(self.counts.values())
        for codec, items in self._lists:
            flatten = codec.flatten
            keys = KeyTracker(codec, problems)
            maker = KeyMaker(codec.mapping) if generated_fields(codec.mapping) else None
            for start in range(0, len(items), self._chunk):
                part = items[start:start + self._chunk]
                with no_cyclic_gc():
                    if self._columnar:
                        columns, slow = flatten_columns(codec, part, start)
                        rows = [flatten(part[j], start + j, problems) for j in slow]
                    else:
                        columns, rows = None, [flatten(item, position, problems)
                                               for position, item in enumerate(part, start)]
                    if maker is not None:
                        rows = maker.fill_rows(rows)
                        if columns is not None:
                            maker.fill_columns(columns.columns, columns.residuals)
                    keys.check(rows, columns)
                if not problems:
                    yield codec, Chunk(codec, columns, rows)  # resumed once the caller has written it
                done += len(part)
                if progress is not None:
                    progress(done, total)
        if problems:
            raise ValidationError(problems, summary="scenario not saved")

    def validate(self) -> dict[str, int]:
        """Check everything, keep nothing: the counts per type, or raise."""
        for _ in self.chunks():
            pass
        return self.counts


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


def key_function(codec: Codec) -> Callable[[tuple], Any]:
    """The comparable key of a tuple of key-column values (in key order).

    Keys compare as typed column values (``1`` and ``1.0`` are one ``double``
    key). A decimal column may hold a float (its fast path) or a Decimal (from
    the slow path, or read back from DuckDB): both compare as Decimal."""
    decimals = {j for j, f in enumerate(codec.mapping.key_fields) if f.type.name.startswith("decimal")}
    single = len(codec.mapping.primary_key) == 1

    def key(values: tuple) -> Any:
        if decimals:
            values = tuple(Decimal(repr(v)) if j in decimals and v.__class__ is float else v
                           for j, v in enumerate(values))
        return values[0] if single else tuple(values)

    return key


class KeyTracker:
    """Two entities of one type in one call may not have equal keys.

    While no key has come twice, the keys met are a set, and each chunk's
    keys and positions are put aside (the positions packed in an array): one
    set insert a key, and the set's growth says whether all were new (a
    probe and an insert into a map of first positions took 0.4 s at 1M
    entities; this, 0.15 s). The first chunk that does not grow the set by
    its count turns what was put aside into that map, and from then on each
    key is looked up there, so that a duplicate is named with both its
    positions, in position order."""

    def __init__(self, codec: Codec, problems: list[Problem]):
        self.mapping = codec.mapping
        self.problems = problems
        self.indexes = codec.key_indexes
        self.key = key_function(codec)
        # a key is its one value as it stands (no decimal to normalise)
        self.decimals = any(f.type.family == "decimal" for f in codec.mapping.key_fields)
        self.plain = len(codec.mapping.primary_key) == 1 and not self.decimals  # the value is the key
        self.met: set[Any] = set()
        self.put_aside: list[tuple[list, array]] = []
        self.first: dict[Any, int] | None = None  # once some key has come twice

    def check(self, rows: list[tuple | None], columns: ColumnBatch | None = None) -> None:
        """The keys of one chunk: its rows (None for an entity with problems)
        and its column-wise part, in any order; duplicates are reported in
        position order."""
        keys, positions = self._keys(rows, columns)
        if self.first is None:
            before = len(self.met)
            self.met.update(keys)
            if len(self.met) - before == len(keys):  # all new: the common case
                self.put_aside.append((keys, array("q", positions)))
                return
            self.first = {}
            for earlier, at in self.put_aside:  # no key came twice there
                self.first.update(zip(earlier, at))
            self.met, self.put_aside = set(), []
        first = self.first
        for position, key in sorted(zip(positions, keys), key=_first):
            found = first.setdefault(key, position)
            if found != position:
                self._report(key, found, position)

    def _keys(self, rows: list[tuple | None], columns: ColumnBatch | None) -> tuple[list, list[int]]:
        """The chunk's keys and their positions, aligned (in no set order)."""
        indexes, key_of = self.indexes, self.key
        entries = [(row[0], key_of(tuple(row[i] for i in indexes))) for row in rows if row is not None]
        if columns is None or not len(columns):
            return [key for _, key in entries], [position for position, _ in entries]
        fields = self.mapping.fields
        values = [from_form(fields[i - 1].type, columns.columns[i - 1]) for i in indexes]
        keys = values[0] if self.plain else list(zip(*values)) if not self.decimals else \
            list(map(key_of, zip(*values)))
        if not entries:
            return keys, columns.positions
        return list(keys) + [key for _, key in entries], list(columns.positions) + [p for p, _ in entries]

    def _report(self, key: Any, first: int, position: int) -> None:
        mapping = self.mapping
        shown = (key,) if len(mapping.primary_key) == 1 else key
        label = ", ".join(f"{c}={v!r}" for c, v in zip(mapping.primary_key, shown))
        paths = ", ".join(f.dotted for f in mapping.key_fields)
        self.problems.append(Problem(f"duplicate key ({label}): positions {first} and {position} have the same key",
                                     mapping.entity, position, paths, key))


def rebuild_rows(codec: Codec, rows: list[tuple]) -> list[dict]:
    with no_cyclic_gc():
        return codec.rebuild_rows(rows)


def rebuild_columns(codec: Codec, columns: list[list]) -> list[dict]:
    with no_cyclic_gc():
        return codec.rebuild_columns(columns)


# A result of at least this many entities is kept out of the young generations
# when the collector resumes (see no_cyclic_gc).
KEPT_RESULT = 50_000


@contextmanager
def no_cyclic_gc(*, kept: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector around a hot loop.

    Flatten and rebuild make millions of containers and no reference cycles;
    each full collection would walk every live object (the caller's whole
    input too), which made the cost per entity grow with the size of a save.

    ``kept``: the block makes a large result that the caller keeps (a loaded
    scenario). Every container made while the collector was paused sits in
    the youngest generation, so the first collection after it resumes walks
    them all, and a later one walks them again on their way to the oldest.
    With ``kept`` they move to the oldest generation at once
    (``gc.freeze()`` then ``gc.unfreeze()``, which moves lists, not objects);
    the young objects the caller already had move with them and are looked
    at by the next full collection instead. Skipped if the caller froze
    objects itself (unfreezing would undo that). Measured on a load of 1M
    entities: 4.08 -> 3.61 s, and the caller's next 200,000 lists made
    1.44 -> 0.91 s."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if kept and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
