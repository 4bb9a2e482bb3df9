"""The public API: :class:`StateManager` and the module-level shortcuts.

The manager puts the pieces together. Each operation is one transaction on
the backend (run again from the start if it loses a race with another
client). It first reads what the store says about itself: the mapping set in
force (the store's own, plus what this client's files add; see
:mod:`healthsim_state.plan`). The engine then validates and flattens the whole
scenario with those mappings, and the store gateway writes it; a problem
anywhere rolls everything back, so a save either fully happens or does not
happen at all.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import evolution
from .backends import Backend, Session, open_backend
from .caches import LOCAL_MAPPINGS, SYNCED
from .column_types import TYPES, HeldText, Unfit
from .engine.batch import KEPT_RESULT, ScenarioBatch, key_function, no_cyclic_gc, rebuild_columns, rebuild_rows
from .engine.compile import Codec
from .engine.registry import Registry, registry_for
from .errors import (
    EntityNotFoundError,
    IncompatibleDatabaseError,
    MappingDriftWarning,
    Problem,
    ScenarioExistsError,
    ScenarioNotFoundError,
    StoreNotFoundError,
    ValidationError,
    VersionNotFoundError,
    preview,
    warn_caller,
)
from .evolution import SchemaReport
from . import history as history_module
from .history import HeldEntity, ScenarioHistory
from .layout import (
    SCHEMA_VERSION, StoreState, create_base, digest_of, read_documents, read_state, recorded_mappings, set_meta,
    upgrade, utc_now,
)
from .mapping.loader import fingerprint, load_mapping_dirs, mapping_search_path
from .mapping.model import Mapping
from .plan import Plan, plan
from .store import Changes, Gateway, new_scenario_id
from .values import NotJSON, dump_exact, is_text, to_json
from . import diffs

T = TypeVar("T")

MAX_NAME = 200
MAX_TAG = 100
MAX_TAGS = 100
MAX_DESCRIPTION = 10_000
MAX_METADATA = 64_000  # characters of JSON text


class _Unchanged:
    """The default of an argument left out: keep what is stored."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
MISSING_OK_HINT = "pass missing_ok=True to delete the others"

# (store, pending changes) pairs this process has warned about: once each.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


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
    opening of the file (about 15 ms) and, after a write, a checkpoint.
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
        if read_only and evolve:
            raise ValueError("evolve=True changes the store; it cannot be combined with read_only=True")
        if isinstance(keep_open, bool) or not isinstance(keep_open, (int, float)) or not 0 <= keep_open <= 3600:
            raise ValueError(f"keep_open is a number of seconds from 0 to 3600, got {keep_open!r}")
        self._backend: Backend = open_backend(db_path, read_only=read_only, lock_timeout=lock_timeout,
                                              keep_open=float(keep_open))
        self.db_path = self._backend.label if db_path is None else db_path
        self.read_only = read_only
        self.evolve = evolve
        self._local, self._local_digest = _local_mappings(mapping_dirs)
        self._plans: dict[tuple[str | None, int], tuple[Plan, Registry]] = {}
        self._registry: Registry | None = None
        self._report: SchemaReport | None = None
        self._last_plan: Plan | None = None
        self._history_limit: int | None = None
        self._synced = False

    # --- lifecycle ---------------------------------------------------------------

    @property
    def label(self) -> str:
        """The store, as messages name it (a URL never shows its password)."""
        return self._backend.label

    def close(self) -> None:
        """Release what the backend keeps between operations (a DuckDB file is
        only open while an operation runs)."""
        self._backend.close()

    def __enter__(self) -> "StateManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create the store now, with the mappings in force (it is otherwise
        created by its first write); nothing happens to one that exists."""
        self._backend.run(self._sync, write=True)

    # --- the mapping set in force ---------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The compiled mappings in force in the store (for a store not yet
        created: this client's own)."""
        if self._registry is None:
            try:
                self._read(lambda g: None, missing=lambda: None)
            except StoreNotFoundError:
                pass  # a read-only manager of a store not made yet: these would be in force
        return self._registry or registry_for(self._local, self._local_digest)

    @property
    def local_registry(self) -> Registry:
        """This client's own mappings (its files), compiled: what a new store would take."""
        return registry_for(self._local, self._local_digest)

    @property
    def entity_types(self) -> tuple[str, ...]:
        """The entity types in force, by singular name."""
        return self.registry.entity_types

    @property
    def schema_report(self) -> SchemaReport | None:
        """What opening the store changed to follow this client's mapping
        files (None when it changed nothing)."""
        if not self._synced:
            self._read(lambda g: None, missing=lambda: None)
        return self._report

    def mapping_changes(self) -> dict[str, dict[str, list[str]]]:
        """Per type, what this client's mapping files would change in the
        store: ``additions`` (applied when the store is opened for writing),
        ``pending`` (changes the files state, applied only by ``evolve=True``
        or ``migrate-schema``) and ``absent`` (fields and aliases the store has
        and the files lack: kept, unless ``evolve`` makes the files' mappings
        the ones in force)."""
        self.registry  # noqa: B018 - reads the store's state
        found: dict[str, dict[str, list[str]]] = {}
        if self._last_plan is None:
            return found

        def entry(entity: str) -> dict[str, list[str]]:
            return found.setdefault(entity, {"additions": [], "pending": [], "absent": []})

        for step in self._last_plan.steps:
            entry(step.entity)["additions"] += step.changes
        for kind, lines_by_entity in (("pending", self._last_plan.pending), ("absent", self._last_plan.absent)):
            for entity, lines in lines_by_entity.items():
                entry(entity)[kind] += lines
        return found

    def _sync(self, session: Session) -> Registry:
        """Read the store's state; in a writable session create the store,
        upgrade its layout and apply this client's additions (or, with
        ``evolve``, every change) first. Returns the mappings in force.

        The mapping set in force is known by the store's digest and
        generation: a client (or another manager of this process, with the
        same mapping files) that has seen them reads nothing more."""
        state = read_state(session)
        self._history_limit = None if state is None else state.history_limit
        if state is None or state.schema_version < SCHEMA_VERSION:
            if not session.writable:
                if state is None:
                    raise StoreNotFoundError(f"{self.label} holds no healthsim-state store (nothing has been saved "
                                             "there yet)")
                raise _NeedsUpgrade(
                    f"{self.label} was written by an earlier healthsim-state (schema version "
                    f"{state.schema_version}); open it once for writing (any write, or healthsim-state "
                    "migrate-schema) to bring it up to this version")
            session.lock_layout()
            state = read_state(session)
            if state is None:
                create_base(session)
                state = StoreState(SCHEMA_VERSION, None, 0, None)
            elif state.schema_version < SCHEMA_VERSION:
                upgrade(session, state)
        key = (state.digest, state.generation)
        cached = self._plans.get(key)
        shared_key = (self.label, key, self._local_digest, self.evolve)
        if cached is None:
            cached = SYNCED.get(shared_key)
            if cached is not None:
                self._plans[key] = cached
        if cached is None or (cached[0].steps and session.writable):
            read_documents(session, state)
            schema_plan = plan(recorded_mappings(state, self.label), self._local, evolve=self.evolve)
            if schema_plan.steps and session.writable:
                session.lock_layout()
                self._report = evolution.apply(session, schema_plan, state, label=self.label)
                schema_plan = schema_plan.once_applied()
                key = (state.digest, state.generation)
                registry = registry_for(schema_plan.in_force, state.digest)  # apply set it to the digest of in_force
            else:
                in_force = schema_plan.in_force if not schema_plan.steps else recorded_mappings(state, self.label)
                registry = registry_for(in_force, digest_of(in_force))
            cached = (schema_plan, registry)
            self._plans = {key: cached}
            if not schema_plan.steps:  # nothing left to apply: any manager of these files may reuse it
                SYNCED.put((self.label, key, self._local_digest, self.evolve), cached)
            self._warn_drift(schema_plan)
        self._last_plan = cached[0]
        self._registry = cached[1]
        self._synced = True
        return cached[1]

    def _gateway(self, session: Session) -> Gateway:
        registry = self._sync(session)
        return Gateway(session, registry, self.label, history_limit=self._history_limit)

    def _warn_drift(self, schema_plan: Plan) -> None:
        lines = tuple(schema_plan.pending_lines)
        if not lines or (self.label, lines) in _WARNED:
            return
        _WARNED.add((self.label, lines))
        shown = "; ".join(lines[:10]) + (f"; and {len(lines) - 10} more" if len(lines) > 10 else "")
        warn_caller(MappingDriftWarning(
            f"the mapping files differ from the mappings in force in {self.label}, which stay in force (nothing "
            f"was rewritten): {shown}. To apply these changes, run healthsim-state migrate-schema (see "
            "--dry-run first), or open the store with StateManager(..., evolve=True)"))

    # --- running operations -----------------------------------------------------------

    def _write(self, operation: Callable[[Gateway], T]) -> T:
        """``operation`` in one writable transaction, with the mappings in force."""
        def run(session: Session) -> T:
            return operation(self._gateway(session))

        return self._backend.run(run, write=True)

    def _read(self, operation: Callable[[Gateway], T], *, missing: Callable[[], T] | None = None) -> T:
        """``operation`` in one read transaction. A store that does not exist
        yet reads as empty (``missing()``) for a read-write manager."""
        first = not self._synced and not self.read_only

        def run(session: Session) -> T:
            gateway = self._gateway(session)
            if first and self._last_plan is not None and self._last_plan.steps:
                raise _WriteFirst  # this client's files add something: applied on open, in a write
            return operation(gateway)

        try:
            try:
                return self._backend.run(run, write=False)
            except (_WriteFirst, _NeedsUpgrade):
                if not first:
                    raise
                self._backend.run(self._sync, write=True)  # add to (or upgrade) the store, then read
                first = False
                return self._backend.run(run, write=False)
        except StoreNotFoundError:
            if self.read_only or missing is None:
                raise
            self._registry = self._registry or registry_for(self._local, self._local_digest)
            return missing()

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
        _check_arguments(name, description)
        tag_list = _check_tags(tags)
        meta = _check_metadata(metadata)
        created = _check_created_at(created_at)

        def save(g: Gateway) -> str:
            existing = g.find_scenario(name, by_id=False)
            if existing is not None and not overwrite:
                raise ScenarioExistsError(
                    f"scenario {name!r} already exists (id {existing['scenario_id']}); "
                    "pass overwrite=True to replace it")
            if existing is None:
                _check_not_an_id(g, name)
            batch = ScenarioBatch(g.registry, entities, progress=progress)
            now = utc_now()
            if existing is None:
                scenario_id, version = new_scenario_id(), 1
                g.insert_scenario(scenario_id, name, description, batch.counts, now, created_at=created)
                with no_cyclic_gc():  # the columns handed to the store are many objects, none cyclic
                    for codec, chunk in batch.chunks():
                        g.append_rows(codec, scenario_id, version, chunk)
                changes = {entity: Changes(added=count) for entity, count in batch.counts.items()}
            else:
                scenario_id, version = existing["scenario_id"], existing["version"] + 1
                with no_cyclic_gc():
                    changes = _replace_all(g, scenario_id, version, batch, existing["entity_counts"])
                if _unchanged(g, existing, changes, description, tag_list):
                    return scenario_id  # the same entities, in the same order, description and tags
                g.update_scenario(scenario_id, version, batch.counts, now, description=description)
            g.replace_tags(scenario_id, tag_list)
            self._record_version(g, scenario_id, version, "save" if existing is None else "overwrite", now,
                                 description, tag_list, batch.counts, meta, changes)
            return scenario_id

        return self._write(save)

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
        _check_arguments(name, history.description, summary=history_module.SUMMARY)
        tags = _check_tags(history.tags, summary=history_module.SUMMARY)
        problems: list[Problem] = []
        for index, version in enumerate(history.versions):
            try:
                _check_arguments(None, version.get("description"), summary=history_module.SUMMARY, check_name=False)
                version["tags"] = _check_tags(version.get("tags"), path=f"versions[{index}].tags",
                                              summary=history_module.SUMMARY)
                version["metadata"] = _check_metadata(version.get("metadata"), summary=history_module.SUMMARY)
            except ValidationError as error:
                problems += [Problem(f"versions[{index}]: {p.message}", path=p.path) for p in error.problems]
        if problems:
            raise ValidationError(problems, summary=history_module.SUMMARY)
        created, updated = _check_created_at(history.created_at), _check_created_at(history.updated_at)

        def save(g: Gateway) -> str:
            with no_cyclic_gc():
                held = history_module.by_entity(g.registry, history)  # checked, counted, by singular type name
            newest = held.versions[-1]
            existing = g.find_scenario(name, by_id=False)
            if existing is not None and not overwrite:
                raise ScenarioExistsError(f"scenario {name!r} already exists (id {existing['scenario_id']}); "
                                          "pass overwrite=True to replace it and its history")
            if existing is None:
                _check_not_an_id(g, name, summary=history_module.SUMMARY)
                scenario_id = new_scenario_id()
            else:
                scenario_id = existing["scenario_id"]
                g.delete_scenario(scenario_id)
            counts = newest["entity_counts"]
            at = updated or newest["at"].replace(tzinfo=None)
            g.insert_scenario(scenario_id, name, history.description, counts, at, created_at=created)
            g.update_scenario(scenario_id, newest["version"], counts, at)
            g.replace_tags(scenario_id, tags)
            g.insert_versions(scenario_id, held.versions)
            history_module.write_rows(g, scenario_id, held)
            return scenario_id

        return self._write(save)

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
        meta = _check_metadata(metadata)

        def add(g: Gateway) -> dict[str, Any]:
            found = g.find_scenario(name_or_id)
            if found is None and not create:
                raise ScenarioNotFoundError(
                    f"no scenario has the id or name {name_or_id!r}; pass create=True to make it")
            now = utc_now()
            if found is None:
                _check_arguments(name_or_id, None)
                _check_not_an_id(g, name_or_id)
                scenario_id, version, counts, tags, description = new_scenario_id(), 1, {}, [], None
                g.insert_scenario(scenario_id, name_or_id, None, {}, now)
            else:
                scenario_id, version = found["scenario_id"], found["version"] + 1
                counts, description = dict(found["entity_counts"]), found["description"]
                tags = g.tags_of(scenario_id)
            batch = ScenarioBatch(g.registry, entities, progress=progress)
            added, replaced, changes = _add_by_key(g, scenario_id, version, batch, counts)
            if found is not None and not any(changes.values()):
                version -= 1  # every entity is stored already, as given: nothing written
            else:
                g.update_scenario(scenario_id, version, counts, now)
                self._record_version(g, scenario_id, version, "add", now, description, tags, counts, meta, changes)
            return {"scenario_id": scenario_id, "name": found["name"] if found else name_or_id, "added": added,
                    "replaced": replaced, "entity_count": sum(counts.values()), "version": version}

        return self._write(add)

    def rename_scenario(self, name_or_id: str, new_name: str) -> dict[str, Any]:
        """Give a scenario a new name; returns its summary.

        A rename is not a change of content: it makes no version and keeps
        ``updated_at``; the versions go with the scenario (they belong to its
        id). The new name is checked as a saved one is, may not be another
        scenario's name (:class:`ScenarioExistsError`) or any scenario's id;
        renaming to the current name changes nothing."""
        _check_arguments(new_name, None, summary="scenario not renamed")

        def rename(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            if found["name"] != new_name:
                other = g.find_scenario(new_name, by_id=False)
                if other is not None:
                    raise ScenarioExistsError(f"scenario {new_name!r} already exists (id {other['scenario_id']}); "
                                              f"scenario {found['name']!r} was not renamed")
                _check_not_an_id(g, new_name, summary="scenario not renamed", own_id=found["scenario_id"])
                g.rename_scenario(found["scenario_id"], new_name)
            return _summary(g, g.find_scenario(found["scenario_id"]))

        return self._write(rename)

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
            _check_arguments(None, description, summary="scenario not updated", check_name=False)
        replaced = None if tags is UNCHANGED else _check_tags(tags, summary="scenario not updated")
        added = _check_tags(add_tags, path="add_tags", summary="scenario not updated")
        removed = set(_check_tags(remove_tags, path="remove_tags", summary="scenario not updated"))

        def update(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            scenario_id = found["scenario_id"]
            current = g.tags_of(scenario_id)
            wanted = list(current if replaced is None else replaced)
            wanted += [tag for tag in added if tag not in wanted]
            final = _check_tags([tag for tag in wanted if tag not in removed], summary="scenario not updated")
            text = found["description"] if description is UNCHANGED else description
            if text == found["description"] and final == current:
                return _summary(g, found)
            version, now, counts = found["version"] + 1, utc_now(), found["entity_counts"]
            g.update_scenario(scenario_id, version, counts, now, description=text)
            g.replace_tags(scenario_id, final)
            self._record_version(g, scenario_id, version, "update", now, text, final, counts, None, {})
            return _summary(g, g.find_scenario(scenario_id))

        return self._write(update)

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
        meta = _check_metadata(metadata, summary="nothing deleted")

        def delete(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            scenario_id = found["scenario_id"]
            retire: dict[str, tuple[Codec, list[int]]] = {}
            missing: dict[str, list] = {}
            for codec, requests in _key_requests(g.registry, keys):
                key_of = key_function(codec)
                stored = {key_of(row[1:]): row[0] for row in g.find_keys(codec, scenario_id,
                                                                          [values for _, values in requests])}
                entity = codec.mapping.entity
                positions = [stored[key_of(values)] for _, values in requests if key_of(values) in stored]
                absent = [given for given, values in requests if key_of(values) not in stored]
                if positions:
                    retire[entity] = (codec, positions)
                if absent:
                    missing[entity] = absent
            if missing and not missing_ok:
                shown = "; ".join(f"{entity}: {', '.join(map(_key_text, given[:10]))}"
                                  + (f" and {len(given) - 10} more" if len(given) > 10 else "")
                                  for entity, given in missing.items())
                raise EntityNotFoundError(f"scenario {found['name']!r} holds no entity with these keys ({shown}); "
                                          f"nothing was deleted ({MISSING_OK_HINT})", missing=missing)
            counts, version = dict(found["entity_counts"]), found["version"]
            if retire:
                version, now = version + 1, utc_now()
                for entity, (codec, positions) in retire.items():
                    g.retire_positions(codec, scenario_id, version, positions)
                    counts[entity] -= len(positions)
                counts = {entity: count for entity, count in counts.items() if count}
                g.update_scenario(scenario_id, version, counts, now)
                changes = {entity: Changes(removed=len(positions)) for entity, (_, positions) in retire.items()}
                self._record_version(g, scenario_id, version, "delete_entities", now, found["description"],
                                     g.tags_of(scenario_id), counts, meta, changes)
            return {"scenario_id": scenario_id, "name": found["name"],
                    "deleted": {entity: len(positions) for entity, (_, positions) in retire.items()},
                    "not_found": missing, "entity_count": sum(counts.values()), "version": version}

        return self._write(delete)

    def delete_scenario(self, name_or_id: str) -> bool:
        """Remove a scenario with every version, tag and entity row. False if unknown."""
        def delete(g: Gateway) -> bool:
            found = g.find_scenario(name_or_id)
            if found is None:
                return False
            g.delete_scenario(found["scenario_id"])
            return True

        if not self._backend.exists():
            return False
        return self._write(delete)

    def restore_scenario(self, name_or_id: str, version: int) -> dict[str, Any]:
        """Make a new version equal to ``version`` (its entities, description
        and tags); the history is kept, so a restore can itself be undone.
        Returns the scenario's summary. When the scenario already is what
        ``version`` holds (it is the newest, or equal to it), nothing is
        written: the summary keeps the current version number."""
        _check_version_number(version, "version")

        def restore(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            scenario_id, current = found["scenario_id"], found["version"]
            target = _version_row(g, found, version)
            new_version, now = current + 1, utc_now()
            changes = {}
            for entity in _union(target["entity_counts"], found["entity_counts"]):
                codec = g.registry.codecs[entity]
                staging = None
                if target["entity_counts"].get(entity):
                    staging = g.stage(codec)
                    g.stage_version(codec, staging, scenario_id, version)
                changes[entity] = g.replace_rows(codec, scenario_id, new_version, staging)
            if _unchanged(g, found, changes, target["description"], target["tags"]):
                return _summary(g, found)  # that version is the content already
            counts = target["entity_counts"]
            g.update_scenario(scenario_id, new_version, counts, now, description=target["description"])
            g.replace_tags(scenario_id, target["tags"])
            self._record_version(g, scenario_id, new_version, "restore", now, target["description"], target["tags"],
                                 counts, {"restored_version": version}, changes)
            return _summary(g, g.find_scenario(scenario_id))

        return self._write(restore)

    def prune_history(self, name_or_id: str, keep: int) -> int:
        """Keep the ``keep`` newest versions of a scenario (at least 1) and
        drop the older ones with the rows only they held; returns how many
        versions were dropped."""
        _check_version_number(keep, "keep")

        def prune(g: Gateway) -> int:
            found = _found(g, name_or_id)
            return g.prune(found["scenario_id"], found["version"] - keep + 1)

        return self._write(prune)

    @property
    def history_limit(self) -> int | None:
        """The store-wide number of versions a scenario keeps (None: all)."""
        return self._read(lambda g: g.history_limit, missing=lambda: None)

    def set_history_limit(self, keep: int | None) -> None:
        """Keep at most ``keep`` versions of every scenario from now on (each
        write prunes its scenario's older ones); None keeps every version."""
        if keep is not None:
            _check_version_number(keep, "keep")

        def limit(g: Gateway) -> None:
            set_meta(g.session, "history_limit", None if keep is None else str(keep))

        self._write(limit)

    def compact(self) -> dict[str, int]:
        """Give back unused space: a DuckDB file keeps the space of replaced rows
        and pruned versions for reuse, and never shrinks by itself; this
        rewrites it compactly (every version kept). Returns ``bytes_before``
        and ``bytes_after``."""
        before, after = self._backend.compact()
        return {"bytes_before": before, "bytes_after": after}

    def _record_version(self, g: Gateway, scenario_id: str, version: int, operation: str, now: Any,
                        description: str | None, tags: list[str], counts: dict[str, int],
                        metadata: dict[str, Any] | None, changes: dict[str, Changes]) -> None:
        g.insert_version(scenario_id, version, operation, now, description, tags, counts, metadata,
                         {entity: change.as_dict() for entity, change in changes.items() if change})
        limit = g.history_limit
        if limit is not None and version - limit >= 1:
            g.prune(scenario_id, version - limit + 1)

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
        _check_slice(limit, offset)
        if version is not None:
            _check_version_number(version, "version")

        def load(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            wanted = g.registry.entity_names(entity_types)
            info = _summary(g, found) if version is None else _version_summary(g, found, version)
            chosen = list(g.registry.entity_types) if wanted is None else wanted
            entities: dict[str, list[dict]] = {entity: [] for entity in chosen}
            counts = info["entity_counts"]
            expected = sum(counts.get(entity) or 0 for entity in chosen)
            if limit is not None:
                expected = min(expected, limit * len(chosen))
            with no_cyclic_gc(kept=expected >= KEPT_RESULT):  # the fetch makes as many objects as the rebuild
                for entity in chosen:
                    if counts.get(entity):
                        entities[entity] = _load_type(g, g.registry.codecs[entity], found["scenario_id"],
                                                      counts[entity], version, limit, offset)
            info["entities"] = entities
            return info

        return self._read(load, missing=lambda: _not_found(name_or_id))

    def iter_entities(self, name_or_id: str, entity_type: str, *, batch_size: int = 10_000,
                      version: int | None = None) -> Iterator[dict[str, Any]]:
        """A type's entities one by one in saved order, read ``batch_size`` rows
        at a time (memory bounded by the batch), all from one consistent
        snapshot: the store stays open until the iterator is exhausted or
        closed."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError([Problem(f"batch_size must be a positive integer, got {batch_size!r}",
                                           path="batch_size")], summary="invalid iter_entities call")
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
            _not_found(name_or_id)
        with self._backend.session(write=False) as session:
            g = self._gateway(session)
            found = _found(g, name_or_id)
            info = _summary(g, found) if version is None else _version_summary(g, found, version)
            yield Snapshot(g, info, version)

    def scenario_info(self, name_or_id: str, version: int | None = None) -> dict[str, Any]:
        """A scenario's summary without its entities: the fields of a
        :meth:`list_scenarios` item (counts per type, version, tags). Raises
        :class:`ScenarioNotFoundError` for an unknown id or name."""
        def info(g: Gateway) -> dict[str, Any]:
            found = _found(g, name_or_id)
            return _summary(g, found) if version is None else _version_summary(g, found, version)

        return self._read(info, missing=lambda: _not_found(name_or_id))

    def scenario_history(self, name_or_id: str) -> list[dict[str, Any]]:
        """The scenario's versions, newest first: ``version``, ``operation``
        (save, overwrite, add, restore, update, delete_entities), ``at`` (UTC),
        ``entity_count``, ``entity_counts``, ``description``, ``tags``,
        ``metadata`` and ``changes`` (per type, entities added, changed and
        removed against the version before)."""
        def history(g: Gateway) -> list[dict[str, Any]]:
            return g.versions(_found(g, name_or_id)["scenario_id"])

        return self._read(history, missing=lambda: _not_found(name_or_id))

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
                _check_version_number(value, label)

        def diff(g: Gateway) -> dict[str, dict[str, list]]:
            left = _found(g, a)
            right = left if b is None else _found(g, b)
            sides = []
            for found, version in ((left, a_version), (right, b_version)):
                counts = found["entity_counts"] if version is None else _version_row(g, found, version)["entity_counts"]
                sides.append((found["scenario_id"], version, counts))
            wanted = g.registry.entity_names(entity_types)
            result = {}
            for entity in _union(sides[0][2], sides[1][2]):
                if wanted is not None and entity not in wanted:
                    continue
                codec = g.registry.codecs[entity]
                rows_a, rows_b = g.differing_rows(codec, sides[0][:2], sides[1][:2])
                found_diff = diffs.compare(codec, rows_a, rows_b)
                if found_diff:
                    result[entity] = found_diff
            return result

        return self._read(diff, missing=lambda: _not_found(a))

    def validate(self, entities: Any) -> dict[str, int]:
        """Check ``entities`` as a save would, writing nothing: the count per
        type, or :class:`ValidationError` listing every problem."""
        return ScenarioBatch(self.registry, entities).validate()

    def scenario_exists(self, name_or_id: str) -> bool:
        return self._read(lambda g: g.find_scenario(name_or_id) is not None, missing=lambda: False)

    def list_scenarios(self, tag: str | None = None, search: str | None = None,
                       limit: int | None = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Scenario summaries, newest ``updated_at`` first.

        ``tag`` matches one tag, ``search`` a substring of name or description;
        both case-insensitive, combined with AND. ``offset`` skips that many.
        Each item carries scenario_id, name, description, created_at,
        updated_at, entity_count, entity_counts, version and tags.
        """
        for label, value in (("tag", tag), ("search", search)):
            if value is not None and not isinstance(value, str):
                raise ValidationError([Problem(f"{label} must be a string, got {type(value).__name__}", path=label)],
                                      summary="invalid list_scenarios call")
        _check_slice(limit, offset, what="list_scenarios")
        return self._read(lambda g: g.list_scenarios(tag, search, limit, offset), missing=list)

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
        mapper = FhirMapper({entity: codec.mapping for entity, codec in self.registry.codecs.items()})
        return import_fhir(self, paths, name, mapper=mapper, overwrite=overwrite)

class Snapshot:
    """A scenario as one transaction sees it (see :meth:`StateManager.snapshot`):
    ``info`` is its summary; :meth:`entities` and :meth:`typed_rows` read a
    type's entities in saved order, ``batch_size`` rows at a time, and
    :meth:`page` a slice of them."""

    def __init__(self, gateway: Gateway, info: dict[str, Any], version: int | None):
        self._gateway, self.info, self._version = gateway, info, version

    @property
    def registry(self) -> Registry:
        return self._gateway.registry

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The metadata saved with this version of the scenario (None if none)."""
        rows = self._gateway.versions(self.info["scenario_id"], self.info["version"])
        return rows[0]["metadata"] if rows else None

    def history(self) -> ScenarioHistory:
        """The scenario with every kept version and every entity any of them
        holds (see :mod:`healthsim_state.history`), in canonical shape. Only
        for a snapshot of the newest version."""
        if self._version is not None:
            raise ValidationError([Problem("a history holds every version: read it from a snapshot of the "
                                           "scenario, not of one version", path="version")],
                                  summary="history not read")
        g, info = self._gateway, self.info
        versions = g.versions(info["scenario_id"])[::-1]
        entities: dict[str, list[HeldEntity]] = {}
        for entity in self.registry.entity_types:
            codec = self.registry.codecs[entity]
            with no_cyclic_gc(kept=True):  # many objects, none cyclic, all kept
                rows = g.history_rows(codec, info["scenario_id"])
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
                 by_columns: bool = False) -> Iterator[tuple[Codec, list]]:
        codec = self.registry.codecs[entity]
        batches = self._gateway.stream_rows(codec, self.info["scenario_id"], version=self._version,
                                            batch_size=batch_size, typed=typed, by_columns=by_columns)
        while True:
            with no_cyclic_gc():  # not across the yield: the caller's code runs there
                batch = next(batches, None)  # rows, or with by_columns their columns
            if batch is None:
                return
            yield codec, batch

    def page(self, entity: str, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The type's entities at positions ``offset`` to ``offset + limit - 1``
        (as :meth:`StateManager.load_scenario` slices), in canonical shape."""
        _check_slice(limit, offset)
        if not self.info["entity_counts"].get(entity):
            return []
        codec = self.registry.codecs[entity]
        with no_cyclic_gc():
            rows = self._gateway.fetch_rows(codec, self.info["scenario_id"], version=self._version, limit=limit,
                                            offset=offset)
            return rebuild_rows(codec, rows)

    def entities(self, entity: str, *, batch_size: int = 10_000) -> Iterator[dict[str, Any]]:
        """The type's entities in canonical shape (batches as large as a load's
        types that are read a column at a time are read that way too)."""
        stored = self.info["entity_counts"].get(entity) or 0
        by_columns = _by_columns(self._gateway.session, min(batch_size, stored))
        rebuild = rebuild_columns if by_columns else rebuild_rows
        for codec, batch in self._batches(entity, batch_size, typed=False, by_columns=by_columns):
            yield from rebuild(codec, batch)

    def typed_rows(self, entity: str, *, batch_size: int = 50_000) -> Iterator[list[tuple]]:
        """Batches of the type's typed column values ``(col_0, ..., col_n)``,
        as the columns hold them (no residual)."""
        for _, rows in self._batches(entity, batch_size, typed=True):
            yield [row[1:-1] for row in rows]


class _WriteFirst(Exception):
    """A first read found changes to apply to the store: they go first, in a write."""


class _NeedsUpgrade(IncompatibleDatabaseError):
    """The store's layout is older than this version's: a write upgrades it."""


# --- writes, type by type ---------------------------------------------------------------

def _replace_all(g: Gateway, scenario_id: str, version: int, batch: ScenarioBatch,
                 before: dict[str, int]) -> dict[str, Changes]:
    """Overwrite: every type's staged rows become its current rows (unchanged
    rows stay where they are); a type the batch lacks loses its rows."""
    changes: dict[str, Changes] = {}
    staged: tuple[Codec, str] | None = None
    for codec, chunk in batch.chunks():
        if staged is None or staged[0] is not codec:
            if staged is not None:
                changes[staged[0].mapping.entity] = g.replace_rows(staged[0], scenario_id, version, staged[1])
            staged = (codec, g.stage(codec))
        g.stage_rows(codec, staged[1], chunk)
    if staged is not None:
        changes[staged[0].mapping.entity] = g.replace_rows(staged[0], scenario_id, version, staged[1])
    for entity in before:
        if entity not in changes and before[entity]:
            changes[entity] = g.replace_rows(g.registry.codecs[entity], scenario_id, version, None)
    return changes


def _unchanged(g: Gateway, found: dict[str, Any], changes: dict[str, Changes], description: str | None,
               tags: list[str]) -> bool:
    """Whether a write that replaced the rows with ``changes`` and would set
    ``description`` and ``tags`` leaves the scenario as it was: then it is
    not written (no version), as git makes no empty commit."""
    return (not any(change.rewritten for change in changes.values()) and description == found["description"]
            and tags == g.tags_of(found["scenario_id"]))


def _add_by_key(g: Gateway, scenario_id: str, version: int, batch: ScenarioBatch,
                counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int], dict[str, Changes]]:
    """Give each new row its position (a stored key's, or the next free one);
    move the rows it replaces to history; append. Updates ``counts``."""
    added: dict[str, int] = {}
    replaced: dict[str, int] = {}
    changes: dict[str, Changes] = {}
    next_free: dict[str, int] = {}
    for codec, chunk in batch.chunks():
        entity = codec.mapping.entity
        staging = g.stage(codec)
        g.stage_rows(codec, staging, chunk)
        rows = chunk.all_rows()
        matches = {staged: (stored, differs) for staged, stored, differs in g.match_keys(codec, scenario_id, staging)}
        g.session.execute(f"DROP TABLE {staging}")
        if entity not in next_free:
            next_free[entity] = g.next_position(codec, scenario_id)
        placed, retired = [], []
        change = changes.setdefault(entity, Changes())
        for row in rows:
            match = matches.get(row[0])
            if match is None:
                placed.append((next_free[entity],) + row[1:])
                next_free[entity] += 1
                change.added += 1
            elif match[1]:  # same key, other content: the stored row goes to history
                placed.append((match[0],) + row[1:])
                retired.append(match[0])
                change.changed += 1
        g.retire_positions(codec, scenario_id, version, retired)
        g.append_rows(codec, scenario_id, version, placed)
        counts[entity] = counts.get(entity, 0) + len(placed) - len(retired)
        added[entity] = change.added
        replaced[entity] = replaced.get(entity, 0) + len(matches)
    return added, replaced, changes


# --- small helpers -----------------------------------------------------------------------

# A type of at least this many entities is read a column at a time where the
# backend hands results over by columns (DuckDB, with NumPy installed). Below
# it, a tuple a row costs less: each column read that way has a fixed cost.
COLUMNWISE_READ = 1_000


def _by_columns(session: Session, rows: int) -> bool:
    """Whether a read of ``rows`` rows of one type goes a column at a time."""
    return rows >= COLUMNWISE_READ and session.reads_columns


def _load_type(g: Gateway, codec: Codec, scenario_id: str, count: int, version: int | None,
               limit: int | None, offset: int) -> list[dict]:
    """One type's entities of a load, in saved order (``count`` of them stored)."""
    if limit is None and not offset and _by_columns(g.session, count):
        return rebuild_columns(codec, g.fetch_columns(codec, scenario_id, version=version))
    return rebuild_rows(codec, g.fetch_rows(codec, scenario_id, version=version, limit=limit, offset=offset))


def _found(g: Gateway, name_or_id: str) -> dict[str, Any]:
    found = g.find_scenario(name_or_id)
    if found is None:
        _not_found(name_or_id)
    return found


def _not_found(name_or_id: str) -> Any:
    if not isinstance(name_or_id, str):
        raise ValidationError([Problem(f"a scenario id or name is a string, got {type(name_or_id).__name__}",
                                       path="name_or_id", value=name_or_id)], summary="invalid scenario lookup")
    raise ScenarioNotFoundError(f"no scenario has the id or name {name_or_id!r}")


def _summary(g: Gateway, found: dict[str, Any]) -> dict[str, Any]:
    found["tags"] = g.tags_of(found["scenario_id"])
    return found


def _version_row(g: Gateway, found: dict[str, Any], version: int) -> dict[str, Any]:
    rows = g.versions(found["scenario_id"], version)
    if not rows:
        kept = [v["version"] for v in g.versions(found["scenario_id"])]
        raise VersionNotFoundError(
            f"scenario {found['name']!r} has no version {version} (its versions: "
            f"{', '.join(map(str, sorted(kept)))}; older ones may have been pruned)")
    return rows[0]


def _version_summary(g: Gateway, found: dict[str, Any], version: int) -> dict[str, Any]:
    row = _version_row(g, found, version)
    return {**found, "description": row["description"], "tags": row["tags"], "updated_at": row["at"],
            "entity_count": row["entity_count"], "entity_counts": row["entity_counts"], "version": version}


def _union(*counts: dict[str, int]) -> list[str]:
    out: list[str] = []
    for part in counts:
        out += [entity for entity, count in part.items() if count and entity not in out]
    return out


# --- mappings: this client's files, parsed once a process --------------------------------

def _local_mappings(mapping_dirs: Iterable[str | os.PathLike] | None) -> tuple[dict[str, Mapping], str]:
    """This client's mappings (built-in, ``$HEALTHSIM_MAPPINGS``, ``mapping_dirs``)
    and their digest, reused while no file changes (a process that opens many
    managers parses YAML and computes the digest once)."""
    dirs = mapping_search_path(mapping_dirs)
    key = fingerprint(dirs)
    found = LOCAL_MAPPINGS.get(key)
    if found is None:
        mappings = load_mapping_dirs(dirs)
        found = LOCAL_MAPPINGS.put(key, (mappings, digest_of(mappings)))
    return found


# --- argument checks ---------------------------------------------------------------

def _check_text(value: Any, label: str, path: str, *, limit: int, problems: list[Problem]) -> None:
    if not is_text(value):
        problems.append(Problem(f"the {label} holds a lone surrogate, which is not valid Unicode text",
                                path=path, value=value))
    elif "\x00" in value:
        problems.append(Problem(f"the {label} holds a NUL character, which no store keeps in text", path=path,
                                value=value))
    elif len(value) > limit:
        problems.append(Problem(f"the {label} is {len(value)} characters long; at most {limit} are allowed",
                                path=path))


def _check_arguments(name: Any, description: Any, summary: str = "scenario not saved", *,
                     check_name: bool = True) -> None:
    problems: list[Problem] = []
    if not check_name:
        pass
    elif not isinstance(name, str) or not name:
        problems.append(Problem(f"the scenario name must be a non-empty string, got {name!r}", path="name"))
    else:
        _check_text(name, "scenario name", "name", limit=MAX_NAME, problems=problems)
    if description is not None and not isinstance(description, str):
        problems.append(Problem(f"description must be a string or None, got {type(description).__name__}",
                                path="description"))
    elif description is not None:
        _check_text(description, "description", "description", limit=MAX_DESCRIPTION, problems=problems)
    if problems:
        raise ValidationError(problems, summary=summary)


def _check_not_an_id(g: Gateway, name: str, summary: str = "scenario not saved", own_id: str | None = None) -> None:
    """A name may not be a scenario's id: lookups could not tell them apart."""
    if g.id_in_use(name):
        whose = "this scenario's own id" if name == own_id else "the id of another scenario"
        raise ValidationError([Problem(f"{name!r} is {whose}; a name may not be a scenario's id",
                                       path="name", value=name)], summary=summary)


def _check_tags(tags: Any, *, path: str = "tags", summary: str = "scenario not saved") -> list[str]:
    """Tags in the order given, exact repeats dropped."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ValidationError([Problem(f"{path} must be a list of strings, got {type(tags).__name__}", path=path)],
                              summary=summary)
    result: list[str] = []
    problems: list[Problem] = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag:
            problems.append(Problem(f"a tag must be a non-empty string, got {tag!r}", path=f"{path}[{index}]"))
            continue
        _check_text(tag, "tag", f"{path}[{index}]", limit=MAX_TAG, problems=problems)
        if tag not in result:
            result.append(tag)
    if len(result) > MAX_TAGS:
        problems.append(Problem(f"{len(result)} tags; at most {MAX_TAGS} are allowed", path=path))
    if problems:
        raise ValidationError(problems, summary=summary)
    return result


def _check_metadata(metadata: Any, summary: str = "scenario not saved") -> dict[str, Any] | None:
    """A JSON object, at most :data:`MAX_METADATA` characters as JSON."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ValidationError([Problem(f"metadata must be a JSON object (a dict), got {type(metadata).__name__}",
                                       path="metadata")], summary=summary)
    try:
        rendered = to_json(metadata)
    except NotJSON as error:
        raise ValidationError([Problem(str(error), path="metadata")], summary=summary) from None
    if len(dump_exact(rendered)) > MAX_METADATA:
        raise ValidationError([Problem(f"metadata is larger than {MAX_METADATA} characters of JSON", path="metadata")],
                              summary=summary)
    return rendered


def _check_created_at(value: Any) -> Any:
    """``created_at`` as the store keeps it (naive UTC), or None."""
    if value is None:
        return None
    try:
        column, _ = TYPES["timestamp"].convert(value)
    except Unfit as reason:
        raise ValidationError([Problem(f"created_at: {reason}, got {preview(value)}", path="created_at",
                                       value=value)], summary="scenario not saved") from None
    return column


def _key_requests(registry: Registry, keys: Any) -> list[tuple[Codec, list[tuple[Any, tuple]]]]:
    """Per type, ``(key as given, key-column values)`` for each distinct key
    of a :meth:`StateManager.delete_entities` call; every problem at once."""
    problems: list[Problem] = []
    if not isinstance(keys, dict):
        raise ValidationError([Problem(f"keys must map an entity type to a list of keys, got {type(keys).__name__}",
                                       path="keys")], summary="nothing deleted")
    out: dict[str, tuple[Codec, list[tuple[Any, tuple]], set]] = {}
    for name, given in keys.items():
        codec = registry.resolve(name)
        if codec is None:
            problems.append(Problem(f"unknown entity type {preview(name)}; the types in force: "
                                    f"{', '.join(registry.entity_types)}", path=f"keys.{name}", value=name))
            continue
        if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
            problems.append(Problem(f"expected a list of keys, got {type(given).__name__}", path=f"keys.{name}"))
            continue
        entity, fields = codec.mapping.entity, codec.mapping.key_fields
        _, requests, seen = out.setdefault(entity, (codec, [], set()))
        key_of = key_function(codec)
        for index, key in enumerate(given):
            values = _key_values(fields, key, f"keys.{name}[{index}]", problems)
            if values is not None and key_of(values) not in seen:
                seen.add(key_of(values))
                requests.append((key, values))
    if problems:
        raise ValidationError(problems, summary="nothing deleted")
    return [(codec, requests) for codec, requests, _ in out.values()]


def _key_values(fields: tuple, key: Any, path: str, problems: list[Problem]) -> tuple | None:
    """The key-column values of one key, or None after adding a problem."""
    if len(fields) == 1:
        parts = [key]
    elif isinstance(key, (list, tuple)) and len(key) == len(fields):
        parts = list(key)
    else:
        names = ", ".join(f.dotted for f in fields)
        problems.append(Problem(f"the key has {len(fields)} parts ({names}): give a list of {len(fields)} values, "
                                f"got {preview(key)}", path=path, value=key))
        return None
    values = []
    for f, part in zip(fields, parts):
        try:
            if part is None:
                raise Unfit("a key may not be null")
            column, _ = f.type.convert(part)
        except (Unfit, HeldText) as reason:
            text = "a key cannot hold a NUL character" if isinstance(reason, HeldText) else str(reason)
            problems.append(Problem(f"{f.dotted}: {text}, got {preview(part)} (type {f.type.name})", path=path,
                                    value=part))
            return None
        values.append(column)
    return tuple(values)


def _key_text(key: Any) -> str:
    return repr(key) if not isinstance(key, (list, tuple)) else "[" + ", ".join(map(repr, key)) + "]"


def _check_version_number(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError([Problem(f"{label} must be a positive integer, got {value!r}", path=label)],
                              summary="invalid call")


def _check_slice(limit: Any, offset: Any, what: str = "load_scenario") -> None:
    problems = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        problems.append(Problem(f"limit must be a non-negative integer or None, got {limit!r}", path="limit"))
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        problems.append(Problem(f"offset must be a non-negative integer, got {offset!r}", path="offset"))
    if problems:
        raise ValidationError(problems, summary=f"invalid {what} call")


# --- module-level shortcuts on the default store -----------------------------

def plan_schema_changes(db_path: str | os.PathLike | None = None, *,
                        mapping_dirs: Iterable[str | os.PathLike] | None = None) -> SchemaReport:
    """What ``migrate-schema`` would change to bring the store in line with
    these mapping files, changing nothing (a dry run: every check is made,
    nothing is written); the report's ``operations`` are the statements and
    row rewrites that applying would run. A change that cannot be applied
    raises :class:`SchemaChangeError` listing what blocks it."""
    manager = StateManager(db_path, mapping_dirs=mapping_dirs, read_only=True)
    local = manager._local

    def compile_changes(session: Session) -> SchemaReport:
        state = read_state(session)
        if state is None:
            state = StoreState(SCHEMA_VERSION, None, 0, None)
        stored = recorded_mappings(read_documents(session, state), manager.label)
        return evolution.compile_plan(session, plan(stored, local, evolve=True), label=manager.label)

    try:
        return manager._backend.run(compile_changes, write=False)
    finally:
        manager.close()


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

