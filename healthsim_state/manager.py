"""The public API: :class:`StateManager` and the module-level shortcuts.

The manager is a facade: each method checks its arguments
(:mod:`~healthsim_state.arguments`), then runs one transaction through the
opened store (:mod:`~healthsim_state.opening`: the mapping set in force, the
re-run rules), whose :class:`~healthsim_state.store.Scenarios` reads and
writes the tables. The engine validates and flattens the whole scenario with
the mappings in force; a problem anywhere rolls everything back, so a save
either fully happens or does not happen at all.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import arguments, diffs
from . import history as history_module
from .backends import Backend
from .engine.batch import KEPT_RESULT, ScenarioBatch, key_function, no_cyclic_gc
from .engine.compile import Codec
from .engine.registry import Registry
from .errors import EntityNotFoundError, ScenarioExistsError, ScenarioNotFoundError
from .history import ScenarioHistory
from .layout import utc_now
from .opening import OpenStore
from .snapshot import Snapshot
from .store import Changes, Scenarios, new_scenario_id, not_found
from .store.rows import load_types

if TYPE_CHECKING:
    from .evolution import SchemaReport

__all__ = ["StateManager", "Snapshot", "UNCHANGED", "MISSING_OK_HINT", "plan_schema_changes", "save_scenario",
           "load_scenario", "list_scenarios", "delete_scenario"]


class _Unchanged:
    """The default of an argument left out: keep what is stored."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
MISSING_OK_HINT = "pass missing_ok=True to delete the others"


class StateManager:
    """Save, load, list, version and delete scenarios in one store.

    ``db_path`` is a DuckDB file (default ``$HEALTHSIM_DB``, else
    ``~/.healthsim/healthsim.duckdb``), ``:memory:``, or a ``postgresql://``
    URL. ``mapping_dirs`` adds directories of mapping files to the built-in
    ones (and to ``$HEALTHSIM_MAPPINGS``).

    The store's own mappings are in force: what this client's files add (a
    type, a field, an alias) is applied to the store on open, for every
    client; anything else they change waits, with a
    :class:`MappingDriftWarning`, until ``evolve=True`` (or ``healthsim-state
    migrate-schema``) applies it. ``read_only=True`` never creates, evolves or
    writes anything. No file is created until the first write.

    A DuckDB file is open only while an operation runs (so an idle manager
    never keeps another process out), which costs each operation the
    opening of the file and, after a write, a checkpoint.
    ``keep_open=S`` keeps the file open for S seconds after this process's
    last operation on it, for every manager of the file (a burst of small
    operations then skips both); another process waits for the file in that
    time as it would for an operation.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, db_path: str | os.PathLike | None = None, *,
                 mapping_dirs: Iterable[str | os.PathLike] | None = None,
                 lock_timeout: float | None = None, read_only: bool = False, evolve: bool = False,
                 keep_open: float = 0.0):
        self._store = OpenStore(db_path, mapping_dirs=mapping_dirs, lock_timeout=lock_timeout, read_only=read_only,
                                evolve=evolve, keep_open=keep_open)
        self._backend: Backend = self._store.backend
        self.db_path = self._backend.label if db_path is None else db_path
        self.read_only = read_only
        self.evolve = evolve

    # --- lifecycle ---------------------------------------------------------------

    @property
    def label(self) -> str:
        """The store, as messages name it (a URL never shows its password)."""
        return self._store.label

    def close(self) -> None:
        """Release what the backend keeps between operations (a DuckDB file is
        only open while an operation runs)."""
        self._store.close()

    def __enter__(self) -> "StateManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create the store now, with the mappings in force (it is otherwise
        created by its first write); nothing happens to one that exists."""
        self._store.create()

    # --- the mapping set in force ---------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The compiled mappings in force in the store (for a store not yet
        created: this client's own)."""
        return self._store.in_force()

    @property
    def local_registry(self) -> Registry:
        """This client's own mappings (its files), compiled: what a new store would take."""
        return self._store.local_registry

    @property
    def entity_types(self) -> tuple[str, ...]:
        """The entity types in force, by singular name."""
        return self.registry.entity_types

    @property
    def schema_report(self) -> SchemaReport | None:
        """What opening the store changed to follow this client's mapping
        files (None when it changed nothing)."""
        if not self._store.synced:
            self._store.read(lambda scenarios: None, missing=lambda: None)
        return self._store.report

    def mapping_changes(self) -> dict[str, dict[str, list[str]]]:
        """Per type, what this client's mapping files would change in the
        store: ``additions`` (applied when the store is opened for writing),
        ``pending`` (changes the files state, applied only by ``evolve=True``
        or ``migrate-schema``) and ``absent`` (fields and aliases the store has
        and the files lack: kept, unless ``evolve`` makes the files' mappings
        the ones in force)."""
        return self._store.mapping_changes()

    # --- writes ------------------------------------------------------------------------

    def save_scenario(self, name: str, entities: Any, description: str | None = None,
                      tags: Iterable[str] | None = None, overwrite: bool = False,
                      metadata: dict[str, Any] | None = None, *, created_at: Any = None,
                      progress: Callable[[int, int], None] | None = None) -> str:
        """Save ``entities`` (entity type, singular or plural, to a list of dicts)
        as scenario ``name``; return its id.

        Saving an existing name raises :class:`ScenarioExistsError` unless
        ``overwrite=True``, which makes a new version of it (keeping the id,
        ``created_at`` and the earlier versions); an overwrite that would
        change nothing (the same entities in the same order, description and
        tags) writes nothing and makes no version, whatever its metadata.
        ``metadata`` (a JSON object: generator, seed, prompt, ...) is kept
        with the version. ``created_at``
        (a datetime, naive taken as UTC, or ISO text) dates a *new* scenario
        (an import or a copy from another store keeps its date); an overwrite
        keeps the stored one. ``progress(done, total)`` is called as the
        entities are written, a chunk at a time. Invalid input raises
        :class:`ValidationError` listing every problem; nothing is written.
        """
        arguments.check_arguments(name, description)
        tag_list = arguments.check_tags(tags)
        meta = arguments.check_metadata(metadata)
        created = arguments.check_created_at(created_at)

        def save(scenarios: Scenarios) -> str:
            existing, name_is_an_id = scenarios.find_name(name)
            if existing is not None and not overwrite:
                raise ScenarioExistsError(
                    f"scenario {name!r} already exists (id {existing['scenario_id']}); "
                    "pass overwrite=True to replace it")
            if existing is None and name_is_an_id:
                arguments.refuse_id_as_name(name)
            batch = ScenarioBatch(scenarios.registry, entities, progress=progress)
            now = utc_now()
            if existing is None:
                scenario_id, version = new_scenario_id(), 1
                scenarios.insert(scenario_id, name, description, batch.counts, now, created_at=created)
                with no_cyclic_gc():  # the columns handed to the store are many objects, none cyclic
                    for codec, chunk in batch.chunks():
                        scenarios.rows(codec, scenario_id).append(version, chunk)
                changes = {entity: Changes(added=count) for entity, count in batch.counts.items()}
            else:
                scenario_id, version = existing["scenario_id"], existing["version"] + 1
                with no_cyclic_gc():
                    changes = scenarios.overwrite_all(scenario_id, version, batch.chunks(), existing["entity_counts"])
                if _unchanged(scenarios, existing, changes, description, tag_list):
                    return scenario_id  # the same entities, in the same order, description and tags
                scenarios.update(scenario_id, version, batch.counts, now, description=description)
            scenarios.replace_tags(scenario_id, tag_list, new=existing is None)
            scenarios.record_version(scenario_id, version, "save" if existing is None else "overwrite", now,
                                     description, tag_list, batch.counts, meta, changes)
            return scenario_id

        return self._store.write(save)

    def save_history(self, history: "ScenarioHistory", *, name: str | None = None, overwrite: bool = False) -> str:
        """Save a scenario with its whole history (see
        :mod:`healthsim_state.history`: what :meth:`Snapshot.history` reads
        and ``export --history`` writes) as scenario ``name`` (default: the
        history's), in one transaction; return its id.

        Every version keeps its number, operation, time, description, tags,
        metadata and changes, and loads the same entities as in the source;
        the scenario keeps ``created_at`` and ``updated_at``. A scenario of
        that name is refused (:class:`ScenarioExistsError`) unless
        ``overwrite``, which replaces it whole, its versions too (it keeps its
        id). Entities are validated with the mappings in force; any problem
        raises :class:`ValidationError` and nothing is written."""
        name = history.name if name is None else name
        arguments.check_arguments(name, history.description, summary=history_module.SUMMARY)
        tags = arguments.check_tags(history.tags, summary=history_module.SUMMARY)
        arguments.check_history_versions(history.versions, summary=history_module.SUMMARY)
        created = arguments.check_created_at(history.created_at)
        updated = arguments.check_created_at(history.updated_at)

        def save(scenarios: Scenarios) -> str:
            with no_cyclic_gc():
                held = history_module.by_entity(scenarios.registry, history)  # checked, counted, by singular type name
            newest = held.versions[-1]
            existing = scenarios.find(name, by_id=False)
            if existing is not None and not overwrite:
                raise ScenarioExistsError(f"scenario {name!r} already exists (id {existing['scenario_id']}); "
                                          "pass overwrite=True to replace it and its history")
            if existing is None:
                arguments.check_not_an_id(scenarios, name, summary=history_module.SUMMARY)
                scenario_id = new_scenario_id()
            else:
                scenario_id = existing["scenario_id"]
                scenarios.delete(scenario_id)
            counts = newest["entity_counts"]
            at = updated or newest["at"].replace(tzinfo=None)
            scenarios.insert(scenario_id, name, history.description, counts, at, created_at=created)
            scenarios.update(scenario_id, newest["version"], counts, at)
            scenarios.replace_tags(scenario_id, tags)
            scenarios.insert_versions(scenario_id, held.versions)
            history_module.write_rows(scenarios, scenario_id, held)
            return scenario_id

        return self._store.write(save)

    def add_entities(self, name_or_id: str, entities: Any, create: bool = True,
                     metadata: dict[str, Any] | None = None, *,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Add entities to a scenario, in one transaction (a new version).

        An entity whose key is already in the scenario replaces the stored one
        and keeps its place in the list; the others are appended in the order
        given. Validation (and ``progress``) is as for :meth:`save_scenario`.
        With ``create`` (the default) an unknown ``name_or_id`` becomes a new
        scenario of that name; without it, :class:`ScenarioNotFoundError`.
        Returns scenario_id, name,
        ``added`` and ``replaced`` counts per type, the new entity_count and
        version (the same version when every entity given is stored already,
        as given: then nothing is written). The cost depends on the batch,
        not on what is stored.
        """
        meta = arguments.check_metadata(metadata)

        def add(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.find(name_or_id)
            if scenario is None and not create:
                raise ScenarioNotFoundError(
                    f"no scenario has the id or name {name_or_id!r}; pass create=True to make it")
            now = utc_now()
            if scenario is None:
                arguments.check_arguments(name_or_id, None)
                arguments.check_not_an_id(scenarios, name_or_id)
                scenario_id, version, counts, tags, description = new_scenario_id(), 1, {}, [], None
                scenarios.insert(scenario_id, name_or_id, None, {}, now)
            else:
                scenario_id, version = scenario["scenario_id"], scenario["version"] + 1
                counts, description = dict(scenario["entity_counts"]), scenario["description"]
                tags = scenarios.tags_of(scenario_id)
            batch = ScenarioBatch(scenarios.registry, entities, progress=progress)
            added, replaced, changes = scenarios.add_all_by_key(scenario_id, version, batch.chunks(), counts)
            if scenario is not None and not any(changes.values()):
                version -= 1  # every entity is stored already, as given: nothing written
            else:
                scenarios.update(scenario_id, version, counts, now)
                scenarios.record_version(scenario_id, version, "add", now, description, tags, counts, meta, changes)
            return {"scenario_id": scenario_id, "name": scenario["name"] if scenario else name_or_id, "added": added,
                    "replaced": replaced, "entity_count": sum(counts.values()), "version": version}

        return self._store.write(add)

    def rename_scenario(self, name_or_id: str, new_name: str) -> dict[str, Any]:
        """Give a scenario a new name; returns its summary.

        A rename is not a change of content: it makes no version and keeps
        ``updated_at``; the versions go with the scenario (they belong to its
        id). The new name is checked as a saved one is, may not be another
        scenario's name (:class:`ScenarioExistsError`) or any scenario's id;
        renaming to the current name changes nothing."""
        arguments.check_arguments(new_name, None, summary="scenario not renamed")

        def rename(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            if scenario["name"] != new_name:
                other = scenarios.find(new_name, by_id=False)
                if other is not None:
                    raise ScenarioExistsError(f"scenario {new_name!r} already exists (id {other['scenario_id']}); "
                                              f"scenario {scenario['name']!r} was not renamed")
                arguments.check_not_an_id(scenarios, new_name, summary="scenario not renamed",
                                          own_id=scenario["scenario_id"])
                scenarios.rename(scenario["scenario_id"], new_name)
            return scenarios.summary(scenarios.find(scenario["scenario_id"]))

        return self._store.write(rename)

    def update_scenario(self, name_or_id: str, *, description: Any = UNCHANGED, tags: Any = UNCHANGED,
                        add_tags: Iterable[str] = (), remove_tags: Iterable[str] = ()) -> dict[str, Any]:
        """Change a scenario's description and tags without resending its
        entities; returns its summary.

        ``description`` replaces it (None removes it); ``tags`` replaces the
        list; then ``add_tags`` appends those not there and ``remove_tags``
        drops those there (exact match). Leave an argument out to keep what
        is stored. A change is a write of the scenario: a new version
        (operation ``update``) with the same entities; when the result equals
        what is stored, nothing is written (so a repeated call changes
        nothing). Arguments are checked as :meth:`save_scenario` checks them."""
        if description is not UNCHANGED:
            arguments.check_arguments(None, description, summary="scenario not updated", check_name=False)
        replaced = None if tags is UNCHANGED else arguments.check_tags(tags, summary="scenario not updated")
        added = arguments.check_tags(add_tags, path="add_tags", summary="scenario not updated")
        removed = set(arguments.check_tags(remove_tags, path="remove_tags", summary="scenario not updated"))

        def update(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            scenario_id = scenario["scenario_id"]
            current = scenarios.tags_of(scenario_id)
            wanted = list(current if replaced is None else replaced)
            wanted += [tag for tag in added if tag not in wanted]
            final = arguments.check_tags([tag for tag in wanted if tag not in removed],
                                         summary="scenario not updated")
            text = scenario["description"] if description is UNCHANGED else description
            if text == scenario["description"] and final == current:
                return scenarios.summary(scenario)
            version, now, counts = scenario["version"] + 1, utc_now(), scenario["entity_counts"]
            scenarios.update(scenario_id, version, counts, now, description=text)
            scenarios.replace_tags(scenario_id, final)
            scenarios.record_version(scenario_id, version, "update", now, text, final, counts, None, {})
            return scenarios.summary(scenarios.find(scenario_id))

        return self._store.write(update)

    def delete_entities(self, name_or_id: str, keys: Any, *, missing_ok: bool = False,
                        metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete single entities by key, in one transaction (a new version,
        operation ``delete_entities``: the entities stay in the history until
        it is pruned, so :meth:`restore_scenario` brings them back).

        ``keys`` maps an entity type (singular or plural) to a list of keys:
        a key's value for a one-column primary key, a list of values for a
        composite one (as :meth:`diff_scenarios` gives them), each value as a
        save accepts it (``"2024-01-15"`` or a date for a date column). A key
        the scenario does not hold raises :class:`EntityNotFoundError` naming
        every such key, and nothing is deleted; with ``missing_ok`` the others
        are deleted and those are reported. Returns scenario_id, name,
        ``deleted`` (count per type), ``not_found`` (keys per type),
        entity_count and version (unchanged when nothing was deleted)."""
        meta = arguments.check_metadata(metadata, summary="nothing deleted")

        def delete(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            scenario_id = scenario["scenario_id"]
            retire, missing = _stored_positions(scenarios, scenario_id, keys)
            if missing and not missing_ok:
                shown = "; ".join(f"{entity}: {', '.join(map(arguments.key_text, given[:10]))}"
                                  + (f" and {len(given) - 10} more" if len(given) > 10 else "")
                                  for entity, given in missing.items())
                raise EntityNotFoundError(f"scenario {scenario['name']!r} holds no entity with these keys ({shown}); "
                                          f"nothing was deleted ({MISSING_OK_HINT})", missing=missing)
            counts, version = dict(scenario["entity_counts"]), scenario["version"]
            if retire:
                version, now = version + 1, utc_now()
                for entity, (codec, positions) in retire.items():
                    scenarios.rows(codec, scenario_id).retire(positions, version)
                    counts[entity] -= len(positions)
                counts = {entity: count for entity, count in counts.items() if count}
                scenarios.update(scenario_id, version, counts, now)
                changes = {entity: Changes(removed=len(positions)) for entity, (_, positions) in retire.items()}
                scenarios.record_version(scenario_id, version, "delete_entities", now, scenario["description"],
                                         scenarios.tags_of(scenario_id), counts, meta, changes)
            return {"scenario_id": scenario_id, "name": scenario["name"],
                    "deleted": {entity: len(positions) for entity, (_, positions) in retire.items()},
                    "not_found": missing, "entity_count": sum(counts.values()), "version": version}

        return self._store.write(delete)

    def delete_scenario(self, name_or_id: str) -> bool:
        """Remove a scenario with every version, tag and entity row. False if unknown."""
        def delete(scenarios: Scenarios) -> bool:
            scenario = scenarios.find(name_or_id)
            if scenario is None:
                return False
            scenarios.delete(scenario["scenario_id"])
            return True

        if not self._backend.exists():
            return False
        return self._store.write(delete)

    def restore_scenario(self, name_or_id: str, version: int) -> dict[str, Any]:
        """Make a new version equal to ``version`` (its entities, description
        and tags); the history is kept, so a restore can itself be undone.
        Returns the scenario's summary. When the scenario already is what
        ``version`` holds (it is the newest, or equal to it), nothing is
        written: the summary keeps the current version number."""
        arguments.check_version_number(version, "version")

        def restore(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            scenario_id, current = scenario["scenario_id"], scenario["version"]
            target = scenarios.version_row(scenario, version)
            new_version, now = current + 1, utc_now()
            changes = {}
            for entity in _union(target["entity_counts"], scenario["entity_counts"]):
                rows = scenarios.rows(scenarios.registry.codecs[entity], scenario_id)
                held = target["entity_counts"].get(entity)
                changes[entity] = rows.restore(version, new_version) if held else rows.clear(new_version)
            if _unchanged(scenarios, scenario, changes, target["description"], target["tags"]):
                return scenarios.summary(scenario)  # that version is the content already
            counts = target["entity_counts"]
            scenarios.update(scenario_id, new_version, counts, now, description=target["description"])
            scenarios.replace_tags(scenario_id, target["tags"])
            scenarios.record_version(scenario_id, new_version, "restore", now, target["description"],
                                     target["tags"], counts, {"restored_version": version}, changes)
            return scenarios.summary(scenarios.find(scenario_id))

        return self._store.write(restore)

    def prune_history(self, name_or_id: str, keep: int) -> int:
        """Keep the ``keep`` newest versions of a scenario (at least 1) and
        drop the older ones with the rows only they held; returns how many
        versions were dropped."""
        arguments.check_version_number(keep, "keep")

        def prune(scenarios: Scenarios) -> int:
            scenario = scenarios.get(name_or_id)
            return scenarios.prune(scenario["scenario_id"], scenario["version"] - keep + 1)

        return self._store.write(prune)

    @property
    def history_limit(self) -> int | None:
        """The store-wide number of versions a scenario keeps (None: all)."""
        return self._store.read(lambda scenarios: scenarios.history_limit, missing=lambda: None)

    def set_history_limit(self, keep: int | None) -> None:
        """Keep at most ``keep`` versions of every scenario from now on (each
        write prunes its scenario's older ones); None keeps every version."""
        if keep is not None:
            arguments.check_version_number(keep, "keep")

        def limit(scenarios: Scenarios) -> None:
            scenarios.set_history_limit(keep)

        self._store.write(limit)

    def compact(self) -> dict[str, int]:
        """Give back unused space: a DuckDB file keeps the space of replaced rows
        and pruned versions for reuse, and never shrinks by itself; this
        rewrites it compactly (every version kept). Returns ``bytes_before``
        and ``bytes_after``."""
        from .compact import compact as compact_store  # a rare maintenance call: not on every start

        before, after = compact_store(self._backend)
        return {"bytes_before": before, "bytes_after": after}

    # --- reads ----------------------------------------------------------------------------

    def load_scenario(self, name_or_id: str, *, entity_types: Iterable[str] | None = None,
                      limit: int | None = None, offset: int = 0, version: int | None = None) -> dict[str, Any]:
        """The scenario with this id or name, newest version (or ``version``).

        Returns ``scenario_id, name, description, created_at, updated_at`` (UTC,
        timezone-aware), ``entity_count``, ``entity_counts``, ``version``,
        ``tags`` and ``entities``: each type asked for (default: every type in
        force), singular, mapped to its list in saved order, each entity in
        canonical shape. ``limit`` and ``offset`` read only the entities at
        positions ``offset`` to ``offset + limit - 1`` of each type's list.
        """
        arguments.check_slice(limit, offset)
        if version is not None:
            arguments.check_version_number(version, "version")

        def load(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            wanted = scenarios.registry.entity_names(entity_types)
            info = scenarios.summary(scenario, version)
            chosen = list(scenarios.registry.entity_types) if wanted is None else wanted
            entities: dict[str, list[dict]] = {entity: [] for entity in chosen}
            counts = info["entity_counts"]
            expected = sum(counts.get(entity) or 0 for entity in chosen)
            if limit is not None:
                expected = min(expected, limit * len(chosen))
            stored = [entity for entity in chosen if counts.get(entity)]
            types = [(scenarios.rows(scenarios.registry.codecs[entity], scenario["scenario_id"]), counts[entity])
                     for entity in stored]
            with no_cyclic_gc(kept=expected >= KEPT_RESULT):  # the fetch makes as many objects as the rebuild
                entities.update(zip(stored, load_types(types, version=version, limit=limit, offset=offset)))
            info["entities"] = entities
            return info

        return self._store.read(load, missing=lambda: not_found(name_or_id))

    def iter_entities(self, name_or_id: str, entity_type: str, *, batch_size: int = 10_000,
                      version: int | None = None) -> Iterator[dict[str, Any]]:
        """A type's entities one by one in saved order, read ``batch_size`` rows
        at a time (memory bounded by the batch), all from one consistent
        snapshot: the store stays open until the iterator is exhausted or
        closed."""
        arguments.check_batch_size(batch_size)
        self.scenario_info(name_or_id, version=version)  # fail now, not at the first next()
        (entity,) = self.registry.entity_names([entity_type])
        return self._iterate(name_or_id, entity, batch_size, version)

    def _iterate(self, name_or_id: str, entity: str, batch_size: int, version: int | None) -> Iterator[dict]:
        with self.snapshot(name_or_id, version=version) as snap:
            yield from snap.entities(entity, batch_size=batch_size)

    @contextmanager
    def snapshot(self, name_or_id: str, *, version: int | None = None) -> Iterator["Snapshot"]:
        """One scenario (or one version of it) read from one consistent
        snapshot, type by type, in batches: for exports and streaming. The
        store stays open while the ``with`` block runs."""
        if not self._backend.exists() and not self.read_only:
            not_found(name_or_id)
        with self._store.reading() as scenarios:
            scenario = scenarios.get(name_or_id)
            info = scenarios.summary(scenario, version)
            yield Snapshot(scenarios, info, version)

    def scenario_info(self, name_or_id: str, version: int | None = None) -> dict[str, Any]:
        """A scenario's summary without its entities: the fields of a
        :meth:`list_scenarios` item (counts per type, version, tags). Raises
        :class:`ScenarioNotFoundError` for an unknown id or name."""
        def info(scenarios: Scenarios) -> dict[str, Any]:
            scenario = scenarios.get(name_or_id)
            return scenarios.summary(scenario, version)

        return self._store.read(info, missing=lambda: not_found(name_or_id))

    def scenario_history(self, name_or_id: str) -> list[dict[str, Any]]:
        """The scenario's versions, newest first: ``version``, ``operation``
        (save, overwrite, add, restore, update, delete_entities), ``at`` (UTC),
        ``entity_count``, ``entity_counts``, ``description``, ``tags``,
        ``metadata`` and ``changes`` (per type, entities added, changed and
        removed against the version before)."""
        def history(scenarios: Scenarios) -> list[dict[str, Any]]:
            return scenarios.versions(scenarios.get(name_or_id)["scenario_id"])

        return self._store.read(history, missing=lambda: not_found(name_or_id))

    def diff_scenarios(self, a: str, b: str | None = None, *, a_version: int | None = None,
                       b_version: int | None = None, entity_types: Iterable[str] | None = None
                       ) -> dict[str, dict[str, list]]:
        """What differs between two scenarios, or two versions of one (``b``
        defaults to ``a``; a version left out is the newest). Returns, per
        entity type with differences, ``{"added": [key, ...], "removed": [key,
        ...], "changed": [{"key": key, "paths": [path, ...]}, ...]}``: entities
        matched by their primary key (its value, or a list of values for a
        composite key), paths dotted and canonical. Only the rows that differ
        are read."""
        for label, value in (("a_version", a_version), ("b_version", b_version)):
            if value is not None:
                arguments.check_version_number(value, label)

        def diff(scenarios: Scenarios) -> dict[str, dict[str, list]]:
            left = scenarios.get(a)
            right = left if b is None else scenarios.get(b)
            sides = []
            for scenario, version in ((left, a_version), (right, b_version)):
                counts = (scenario if version is None else scenarios.version_row(scenario, version))["entity_counts"]
                sides.append((scenario["scenario_id"], version, counts))
            wanted = scenarios.registry.entity_names(entity_types)
            result = {}
            for entity in _union(sides[0][2], sides[1][2]):
                if wanted is not None and entity not in wanted:
                    continue
                codec = scenarios.registry.codecs[entity]
                (a_id, a_at, _), (b_id, b_at, _) = sides
                rows_a, rows_b = scenarios.rows(codec, a_id).differing_rows(a_at, scenarios.rows(codec, b_id), b_at)
                differences = diffs.compare(codec, rows_a, rows_b)
                if differences:
                    result[entity] = differences
            return result

        return self._store.read(diff, missing=lambda: not_found(a))

    def validate(self, entities: Any) -> dict[str, int]:
        """Check ``entities`` as a save would, writing nothing: the count per
        type, or :class:`ValidationError` listing every problem."""
        return ScenarioBatch(self.registry, entities).validate()

    def scenario_exists(self, name_or_id: str) -> bool:
        return self._store.read(lambda scenarios: scenarios.find(name_or_id) is not None,
                                missing=lambda: False)

    def list_scenarios(self, tag: str | None = None, search: str | None = None,
                       limit: int | None = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Scenario summaries, newest ``updated_at`` first.

        ``tag`` matches one tag, ``search`` a substring of name or description;
        both case-insensitive, combined with AND. ``offset`` skips that many.
        Each item carries scenario_id, name, description, created_at,
        updated_at, entity_count, entity_counts, version and tags.
        """
        arguments.check_filters(tag, search)
        arguments.check_slice(limit, offset, what="list_scenarios")
        return self._store.read(lambda scenarios: scenarios.listing(tag, search, limit, offset), missing=list)

    # --- FHIR R4 (healthsim_state.fhir; thin delegations) ------------------------------

    def export_fhir(self, name_or_id: str, directory: str | os.PathLike, *, bundles: bool = False,
                    since_version: int | None = None, version: int | None = None,
                    entity_types: Iterable[str] | None = None, force: bool = False) -> dict[str, Any]:
        """Write the scenario as FHIR R4 Bulk Data NDJSON (or, with ``bundles``,
        one transaction Bundle per patient) to ``directory``; return the manifest."""
        from .fhir.export import export_fhir
        from .fhir.mapper import FhirMapper
        return export_fhir(self, name_or_id, directory, mapper=FhirMapper.from_registry(self.registry),
                           bundles=bundles, since_version=since_version, version=version,
                           entity_types=entity_types, force=force)

    def iter_fhir(self, name_or_id: str, *, resource_types: Iterable[str] | None = None,
                  version: int | None = None, patient: str | None = None) -> Iterator[dict[str, Any]]:
        """The scenario's FHIR R4 resources one by one, streamed a batch at a time
        (``patient``: only those of the patient with this id, patient_id or mrn)."""
        from .fhir.export import stream_resources
        from .fhir.mapper import FhirMapper
        self.scenario_info(name_or_id, version=version)  # fail now, not at the first next()
        return stream_resources(self, name_or_id, FhirMapper.from_registry(self.registry),
                                resource_types=resource_types, version=version, patient=patient)

    def import_fhir(self, paths: Iterable[str | os.PathLike], name: str, *, overwrite: bool = False) -> Any:
        """Save FHIR R4 Bundles, NDJSON files and directories of them as scenario
        ``name`` in one transaction; return the import's report."""
        from .fhir.importer import import_fhir
        from .fhir.mapper import FhirMapper
        # a fresh mapper: its lookup cache (by resource type and id) is this input's only
        mapper = FhirMapper.from_registry(self.registry).fresh()
        return import_fhir(self, paths, name, mapper=mapper, overwrite=overwrite)


# --- small helpers -----------------------------------------------------------------------

def _unchanged(scenarios: Scenarios, scenario: dict[str, Any], changes: dict[str, Changes],
               description: str | None, tags: list[str]) -> bool:
    """Whether a write that replaced the rows with ``changes`` and would set
    ``description`` and ``tags`` leaves the scenario as it was: then it is
    not written (no version), as git makes no empty commit."""
    return (not any(change.rewritten for change in changes.values()) and description == scenario["description"]
            and tags == scenarios.tags_of(scenario["scenario_id"]))


def _stored_positions(scenarios: Scenarios, scenario_id: str, keys: Any
                      ) -> tuple[dict[str, tuple[Codec, list[int]]], dict[str, list]]:
    """For a :meth:`StateManager.delete_entities` call: per type, the codec
    and the positions of the keys the scenario holds, and the keys (as
    given) it does not hold."""
    retire: dict[str, tuple[Codec, list[int]]] = {}
    missing: dict[str, list] = {}
    for codec, requests in arguments.key_requests(scenarios.registry, keys):
        key_of = key_function(codec)
        held = scenarios.rows(codec, scenario_id).find_keys([values for _, values in requests])
        stored = {key_of(row[1:]): row[0] for row in held}
        entity = codec.mapping.entity
        positions = [stored[key_of(values)] for _, values in requests if key_of(values) in stored]
        absent = [given for given, values in requests if key_of(values) not in stored]
        if positions:
            retire[entity] = (codec, positions)
        if absent:
            missing[entity] = absent
    return retire, missing


def _union(*counts: dict[str, int]) -> list[str]:
    out: list[str] = []
    for part in counts:
        out += [entity for entity, count in part.items() if count and entity not in out]
    return out


# --- module-level shortcuts on the default store -----------------------------

def plan_schema_changes(db_path: str | os.PathLike | None = None, *,
                        mapping_dirs: Iterable[str | os.PathLike] | None = None) -> SchemaReport:
    """What ``migrate-schema`` would change to bring the store in line with
    these mapping files, changing nothing (a dry run: every check is made,
    nothing is written); the report's ``operations`` are the statements and
    row rewrites that applying would run. A change that cannot be applied
    raises :class:`SchemaChangeError` listing what blocks it."""
    store = OpenStore(db_path, mapping_dirs=mapping_dirs, read_only=True)
    try:
        return store.planned_changes()
    finally:
        store.close()


def save_scenario(name: str, entities: Any, **options: Any) -> str:
    """:meth:`StateManager.save_scenario` on the default store."""
    with StateManager() as manager:
        return manager.save_scenario(name, entities, **options)


def load_scenario(name_or_id: str, **options: Any) -> dict[str, Any]:
    """:meth:`StateManager.load_scenario` on the default store."""
    with StateManager() as manager:
        return manager.load_scenario(name_or_id, **options)


def list_scenarios(**options: Any) -> list[dict[str, Any]]:
    """:meth:`StateManager.list_scenarios` on the default store."""
    with StateManager() as manager:
        return manager.list_scenarios(**options)


def delete_scenario(name_or_id: str) -> bool:
    """:meth:`StateManager.delete_scenario` on the default store."""
    with StateManager() as manager:
        return manager.delete_scenario(name_or_id)


