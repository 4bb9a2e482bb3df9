"""Copy scenarios between stores: a DuckDB file and a PostgreSQL server, in
either direction, or two of either.

Each scenario is read from one snapshot of the source and written to the
target in one transaction (:meth:`StateManager.save_scenario`), so a copy
either fully happens or does not happen at all, and a failure leaves the
scenarios copied before it in place.

What a copy keeps: the name, description, tags, every entity exactly (in
canonical shape, in saved order), the metadata of the newest version, and
``created_at`` (for a new scenario; one it replaces keeps its own). What it
does not: the version history (it stays in the source; the copy is a new
version in the target, version 1 of a new scenario or the next version of
the one it replaces, unless that one holds the same already: then nothing is
written) and the scenario id (the target gives its own). With
``history``, every kept version goes too (numbers, operations, times,
description, tags, metadata, changes), with ``updated_at``, in the same one
transaction, and an overwrite replaces the target's scenario whole.
Entities are written with the target's mappings in force, so a copy is exact
when both stores have the same mappings (a type or field the target lacks
can be added with the target client's mapping files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..errors import HealthSimError, Problem, ScenarioExistsError, StoreError, ValidationError
from ..manager import StateManager
from .json_io import newest_version

Progress = Callable[[str, int, int], None]  # (scenario name, entities done, entities in all)
Store = StateManager | str | os.PathLike


@dataclass
class CopyResult:
    """One scenario's copy: its name, its id in each store, the entities
    copied, whether it replaced a scenario of that name in the target, and
    whether that one was the same already (``unchanged``: nothing was
    written, as a copy of a scenario onto itself). ``error`` is the message
    of a copy that failed (only with ``keep_going``; then ``target_id`` is
    None)."""

    name: str
    source_id: str | None
    target_id: str | None = None
    entity_count: int = 0
    replaced: bool = False
    error: str | None = None
    unchanged: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def copy_scenario(source: StateManager, target: StateManager, name_or_id: str, *, overwrite: bool = False,
                  progress: Progress | None = None, done: int = 0, total: int = 0,
                  history: bool = False) -> CopyResult:
    """Copy one scenario from ``source`` to ``target``. A scenario of the same
    name in the target is refused (:class:`ScenarioExistsError`) unless
    ``overwrite``. With ``history``, every kept version goes too (see
    :func:`_copy_history`)."""
    if history:
        return _copy_history(source, target, name_or_id, overwrite=overwrite, progress=progress, done=done,
                             total=total)
    with source.snapshot(name_or_id) as snapshot:
        info = snapshot.info
        name = info["name"]
        if not overwrite and target.scenario_exists(name):
            raise ScenarioExistsError(f"scenario {name!r} already exists in {target.label}; "
                                      "copy with overwrite (--overwrite) to replace it")
        entities: dict[str, list[dict[str, Any]]] = {}
        for entity in snapshot.entity_types():
            items = entities[entity] = []
            for batch in _batches(snapshot.entities(entity)):
                items.extend(batch)
                done += len(batch)
                if progress is not None:
                    progress(name, done, total)
        metadata = snapshot.metadata
    before = newest_version(target, name) if overwrite else None
    target_id = target.save_scenario(name, entities, description=info["description"], tags=info["tags"],
                                     overwrite=overwrite, metadata=metadata, created_at=info["created_at"])
    unchanged = before is not None and newest_version(target, target_id) == before
    return CopyResult(name, info["scenario_id"], target_id, sum(map(len, entities.values())), before is not None,
                      unchanged=unchanged)


def _copy_history(source: StateManager, target: StateManager, name_or_id: str, *, overwrite: bool,
                  progress: Progress | None, done: int, total: int) -> CopyResult:
    """Every kept version with its number, operation, time, description,
    tags, metadata and changes, and the entities each holds, written in one
    transaction (:meth:`StateManager.save_history`); a scenario of the name
    in the target is replaced whole (its versions too) with ``overwrite``."""
    with source.snapshot(name_or_id) as snapshot:
        info = snapshot.info
        if not overwrite and target.scenario_exists(info["name"]):
            raise ScenarioExistsError(f"scenario {info['name']!r} already exists in {target.label}; "
                                      "copy with overwrite (--overwrite) to replace it")
        history = snapshot.history()
    if progress is not None:
        progress(info["name"], done + info["entity_count"], total)
    replaced = overwrite and target.scenario_exists(info["name"])
    target_id = target.save_history(history, overwrite=overwrite)
    return CopyResult(info["name"], info["scenario_id"], target_id, info["entity_count"], replaced)


def _batches(items: Iterable[dict[str, Any]], size: int = 10_000) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_scenarios(source: Store, target: Store, names: Iterable[str] = (), *, all: bool = False,
                   overwrite: bool = False, keep_going: bool = False, progress: Progress | None = None,
                   mapping_dirs: Iterable[str | os.PathLike] | None = None,
                   history: bool = False) -> list[CopyResult]:
    """Copy scenarios between stores; see :func:`iter_copies`. Returns every result."""
    return list(iter_copies(source, target, names, all=all, overwrite=overwrite, keep_going=keep_going,
                            progress=progress, mapping_dirs=mapping_dirs, history=history))


def iter_copies(source: Store, target: Store, names: Iterable[str] = (), *, all: bool = False,
                overwrite: bool = False, keep_going: bool = False, progress: Progress | None = None,
                mapping_dirs: Iterable[str | os.PathLike] | None = None,
                history: bool = False) -> Iterator[CopyResult]:
    """Copy the scenarios ``names`` (names or ids), or with ``all`` every
    scenario of the source, each in its own transaction on the target.

    ``source`` and ``target`` are managers, file paths or ``postgresql://``
    URLs (the source is then opened read-only; the target is created if it
    does not exist). The first failure raises, unless ``keep_going``: then
    a scenario that cannot be copied (unknown, already in the target,
    invalid there) is a result with its ``error`` and the others go on; a
    store that fails (unreachable, locked, ...) still raises.
    ``progress(name, entities done, entities in all)`` is called as entities
    are read. With ``history``, each scenario goes with every kept version
    (numbers, operations, times, metadata) instead of as one new version.
    Yields each result as its copy is done."""
    names = list(names)
    if all == bool(names):
        raise ValidationError([Problem("name the scenarios to copy, or ask for all of them (not both)",
                                       path="names")], summary="nothing to copy")
    opened: list[StateManager] = []
    try:
        reader = _manager(source, opened, read_only=True, mapping_dirs=mapping_dirs)
        writer = _manager(target, opened, read_only=False, mapping_dirs=mapping_dirs)
        chosen: list[tuple[str | None, str, int, str | None]] = []  # (id, name, entities, why not)
        if all:  # oldest first, so the target lists them in the source's order
            chosen = [(s["scenario_id"], s["name"], s["entity_count"], None)
                      for s in reversed(reader.list_scenarios(limit=None))]
        for name in names:
            try:
                info = reader.scenario_info(name)
            except HealthSimError as error:
                if not keep_going or isinstance(error, StoreError):
                    raise
                chosen.append((None, name, 0, str(error)))
            else:
                chosen.append((info["scenario_id"], info["name"], info["entity_count"], None))
        total, done = sum(count for _, _, count, _ in chosen), 0
        for scenario_id, name, count, failed in chosen:
            if failed is not None:
                yield CopyResult(name, None, error=failed)
                continue
            try:
                result = copy_scenario(reader, writer, scenario_id, overwrite=overwrite, progress=progress,
                                       done=done, total=total, history=history)
            except HealthSimError as error:
                if not keep_going or isinstance(error, StoreError):  # the store itself failed: stop
                    raise
                result = CopyResult(name, scenario_id, error=str(error))
            done += count
            if progress is not None:
                progress(name, done, total)
            yield result
    finally:
        for manager in opened:
            manager.close()


def _manager(store: Store, opened: list[StateManager], *, read_only: bool,
             mapping_dirs: Iterable[str | os.PathLike] | None) -> StateManager:
    if isinstance(store, StateManager):
        return store
    manager = StateManager(store, read_only=read_only, mapping_dirs=mapping_dirs)
    opened.append(manager)
    return manager

