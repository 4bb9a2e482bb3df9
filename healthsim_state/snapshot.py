"""One scenario (or one version of it) as one read transaction sees it: what
:meth:`StateManager.snapshot <healthsim_state.manager.StateManager.snapshot>`
yields, for exports and streaming."""

from __future__ import annotations

from typing import Any, Iterator

from .arguments import check_slice
from .engine.batch import no_cyclic_gc, rebuild_columns, rebuild_rows
from .engine.compile import Codec
from .engine.registry import Registry
from .errors import Problem, ValidationError
from .history import HeldEntity, ScenarioHistory
from .store import Scenarios, TypeRows
from .store.rows import by_columns


class Snapshot:
    """A scenario as one transaction sees it (see :meth:`StateManager.snapshot`):
    ``info`` is its summary; :meth:`entities` and :meth:`typed_rows` read a
    type's entities in saved order, ``batch_size`` rows at a time, and
    :meth:`page` a slice of them."""

    def __init__(self, scenarios: Scenarios, info: dict[str, Any], version: int | None):
        self._scenarios, self.info, self._version = scenarios, info, version

    @property
    def registry(self) -> Registry:
        return self._scenarios.registry

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The metadata saved with this version of the scenario (None if none)."""
        rows = self._scenarios.versions(self.info["scenario_id"], self.info["version"])
        return rows[0]["metadata"] if rows else None

    def _rows(self, entity: str) -> TypeRows:
        return self._scenarios.rows(self.registry.codecs[entity], self.info["scenario_id"])

    def history(self) -> ScenarioHistory:
        """The scenario with every kept version and every entity any of them
        holds (see :mod:`healthsim_state.history`), in canonical shape. Only
        for a snapshot of the newest version."""
        if self._version is not None:
            raise ValidationError([Problem("a history holds every version: read it from a snapshot of the "
                                           "scenario, not of one version", path="version")],
                                  summary="history not read")
        info = self.info
        versions = self._scenarios.versions(info["scenario_id"])[::-1]
        entities: dict[str, list[HeldEntity]] = {}
        for entity in self.registry.entity_types:
            codec = self.registry.codecs[entity]
            with no_cyclic_gc(kept=True):  # many objects, none cyclic, all kept
                rows = self._rows(entity).history()
                if rows:
                    rebuilt = rebuild_rows(codec, [row[:-2] for row in rows])
                    entities[entity] = [HeldEntity(row[-2], row[-1], row[0], item)
                                        for row, item in zip(rows, rebuilt)]
        return ScenarioHistory(info["name"], info["description"], list(info["tags"]), info["created_at"],
                               info["updated_at"], versions, entities)

    def entity_types(self) -> list[str]:
        """The types the scenario holds, in the order of the mappings in force."""
        counts = self.info["entity_counts"]
        return [entity for entity in self.registry.entity_types if counts.get(entity)]

    def _batches(self, entity: str, batch_size: int, typed: bool,
                 columns: bool = False) -> Iterator[tuple[Codec, list]]:
        rows = self._rows(entity)
        batches = rows.stream(version=self._version, batch_size=batch_size, typed=typed, by_columns=columns)
        while True:
            with no_cyclic_gc():  # not across the yield: the caller's code runs there
                batch = next(batches, None)  # rows, or with columns their columns
            if batch is None:
                return
            yield rows.codec, batch

    def page(self, entity: str, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The type's entities at positions ``offset`` to ``offset + limit - 1``
        (as :meth:`StateManager.load_scenario` slices), in canonical shape."""
        check_slice(limit, offset)
        if not self.info["entity_counts"].get(entity):
            return []
        rows = self._rows(entity)
        with no_cyclic_gc():
            return rebuild_rows(rows.codec, rows.fetch(version=self._version, limit=limit, offset=offset))

    def entities(self, entity: str, *, batch_size: int = 10_000) -> Iterator[dict[str, Any]]:
        """The type's entities in canonical shape (batches as large as a load's
        types that are read a column at a time are read that way too)."""
        stored = self.info["entity_counts"].get(entity) or 0
        columns = by_columns(self._scenarios.session, min(batch_size, stored))
        rebuild = rebuild_columns if columns else rebuild_rows
        for codec, batch in self._batches(entity, batch_size, typed=False, columns=columns):
            yield from rebuild(codec, batch)

    def typed_rows(self, entity: str, *, batch_size: int = 50_000) -> Iterator[list[tuple]]:
        """Batches of the type's typed column values ``(col_0, ..., col_n)``,
        as the columns hold them (no residual)."""
        for _, rows in self._batches(entity, batch_size, typed=True):
            yield [row[1:-1] for row in rows]
