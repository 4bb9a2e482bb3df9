"""The public API: :class:`StateManager` and the module-level shortcuts.

The manager puts the pieces together: the registry (mappings compiled by the
engine) validates and flattens a whole scenario *before* the store is touched,
then the store writes it in one transaction. So a save either fully happens or
does not happen at all, and bad input changes nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import duckdb

from .engine.batch import ScenarioBatch, key_function, rebuild_rows
from .engine.compile import Codec
from .engine.registry import Registry
from .engine.values import is_text
from .errors import (
    Problem,
    ScenarioExistsError,
    ScenarioNotFoundError,
    StoreError,
    ValidationError,
)
from .mapping.loader import fingerprint, load_mapping_dirs, mapping_search_path
from .evolution import SchemaReport
from .store import Store, default_db_path, new_scenario_id, utc_now


class StateManager:
    """Save, load, list and delete scenarios in one DuckDB file.

    ``db_path`` defaults to ``$HEALTHSIM_DB``, else ``~/.healthsim/healthsim.duckdb``.
    ``mapping_dirs`` adds directories of mapping files to the built-in ones (and
    to ``$HEALTHSIM_MAPPINGS``); a file there with a new ``entity`` adds a type,
    one with an existing ``entity`` replaces it.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, db_path: str | os.PathLike | None = None, *,
                 mapping_dirs: Iterable[str | os.PathLike] | None = None,
                 lock_timeout: float | None = None):
        self.registry = _registry(mapping_dirs)
        self.db_path = default_db_path() if db_path is None else db_path
        self._store = Store(self.db_path, self.registry.codecs, lock_timeout=lock_timeout)

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Nothing to release: the file is only open during an operation."""

    def __enter__(self) -> "StateManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def entity_types(self) -> tuple[str, ...]:
        """The registered entity types, by singular name."""
        return self.registry.entity_types

    @property
    def schema_report(self) -> SchemaReport | None:
        """What opening the file changed to follow edited mappings (None when
        the file already matched them)."""
        return self._store.schema_report

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One operation: open the file, one transaction, close the file."""
        store = self._store
        with store.connect() as con, store.transaction(con):
            yield con

    # --- writes ------------------------------------------------------------------------

    def save_scenario(self, name: str, entities: Any, description: str | None = None,
                      tags: Iterable[str] | None = None, overwrite: bool = False) -> str:
        """Save ``entities`` (entity type, singular or plural, to a list of dicts)
        as scenario ``name``; return its id.

        Saving an existing name raises :class:`ScenarioExistsError` unless
        ``overwrite=True``, which replaces entities, tags and description and
        keeps the id and ``created_at``. Invalid input raises
        :class:`ValidationError` listing every problem; nothing is written.
        """
        _check_arguments(name, description)
        tag_list = _check_tags(tags)
        store = self._store
        with self._transaction() as con:
            existing = store.find_scenario(con, name, by_id=False)
            if existing is not None and not overwrite:
                raise ScenarioExistsError(
                    f"scenario {name!r} already exists (id {existing['scenario_id']}); "
                    "pass overwrite=True to replace it")
            scenario_id = existing["scenario_id"] if existing else new_scenario_id()
            batch = ScenarioBatch(self.registry, entities, scenario_id)
            now = utc_now()
            if existing is None:
                store.insert_scenario(con, scenario_id, name, description, batch.counts, now)
            else:
                store.delete_rows(con, scenario_id, list(existing["entity_counts"]))
                store.update_scenario(con, scenario_id, description, batch.counts, now)
            store.replace_tags(con, scenario_id, tag_list)
            for codec, rows in batch.chunks():
                self._append(con, codec, rows)
            batch.raise_if_invalid()  # rolls the transaction back
        return scenario_id

    def _append(self, con: duckdb.DuckDBPyConnection, codec: Codec, rows: list[tuple]) -> None:
        try:
            self._store.append_rows(con, codec, rows)
        except duckdb.Error as error:
            problems = _unstorable_strings(codec, rows)
            if problems:
                raise ValidationError(problems, summary="scenario not saved") from None
            raise StoreError(f"writing {codec.mapping.entity} rows to {self.db_path} failed: {error}") from error

    def add_entities(self, name_or_id: str, entities: Any, create: bool = True) -> dict[str, Any]:
        """Add entities to a scenario, in one transaction.

        An entity whose key is already in the scenario replaces the stored one
        and keeps its place in the list; the others are appended in the order
        given. Validation is as for :meth:`save_scenario`. With ``create`` (the
        default) an unknown ``name_or_id`` becomes a new scenario of that name;
        without it, :class:`ScenarioNotFoundError`. Returns scenario_id, name,
        ``added`` and ``replaced`` counts per type, and the new entity_count.
        """
        store = self._store
        with self._transaction() as con:
            found = store.find_scenario(con, name_or_id)
            if found is None and not create:
                raise ScenarioNotFoundError(
                    f"no scenario has the id or name {name_or_id!r}; pass create=True to make it")
            if found is None:
                _check_arguments(name_or_id, None)
            scenario_id = found["scenario_id"] if found else new_scenario_id()
            batch = ScenarioBatch(self.registry, entities, scenario_id)
            now = utc_now()
            counts = dict(found["entity_counts"]) if found else {}
            if found is None:
                store.insert_scenario(con, scenario_id, name_or_id, None, {}, now)
            added, replaced = self._place_and_append(con, batch, counts)
            batch.raise_if_invalid()  # rolls the transaction back
            store.touch_scenario(con, scenario_id, counts, now)
        return {"scenario_id": scenario_id, "name": found["name"] if found else name_or_id,
                "added": added, "replaced": replaced, "entity_count": sum(counts.values())}

    def _place_and_append(self, con: duckdb.DuckDBPyConnection, batch: ScenarioBatch,
                          counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """Give each new row its position (a stored key's, or the next free one),
        delete the rows it replaces, append. Updates ``counts`` in place."""
        store, scenario_id = self._store, batch.scenario_id
        stored: dict[str, tuple[Any, dict[Any, int]]] = {}  # per type: key function, stored key -> position
        added: dict[str, int] = {}
        replaced: dict[str, int] = {}
        for codec, rows in batch.chunks():
            entity, indexes = codec.mapping.entity, codec.key_indexes
            if entity not in stored:
                key_of = key_function(codec)
                stored[entity] = key_of, {key_of(row[1:]): row[0] for row in store.key_rows(con, codec, scenario_id)}
            key_of, positions = stored[entity]
            placed, reused = [], []
            for row in rows:
                position = positions.get(key_of(tuple(row[i] for i in indexes)))
                if position is None:
                    position = counts.get(entity, 0)
                    counts[entity] = position + 1
                else:
                    reused.append(position)
                placed.append((scenario_id, position) + row[2:])
            if reused:
                store.delete_positions(con, codec, scenario_id, reused)
            self._append(con, codec, placed)
            added[entity] = added.get(entity, 0) + len(placed) - len(reused)
            replaced[entity] = replaced.get(entity, 0) + len(reused)
        return added, replaced

    def delete_scenario(self, name_or_id: str) -> bool:
        """Remove a scenario, its tags and all its entity rows. False if unknown."""
        store = self._store
        with self._transaction() as con:
            found = store.find_scenario(con, name_or_id)
            if found is None:
                return False
            store.delete_rows(con, found["scenario_id"], list(found["entity_counts"]))
            store.delete_scenario_row(con, found["scenario_id"])
        return True

    # --- reads ----------------------------------------------------------------------------

    def load_scenario(self, name_or_id: str) -> dict[str, Any]:
        """The scenario with this id (looked up first) or name.

        Returns ``scenario_id, name, description, created_at, updated_at`` (UTC,
        timezone-aware), ``entity_count``, ``tags`` and ``entities``: every
        registered type (singular) mapped to its list in saved order, each
        entity in canonical shape.
        """
        store = self._store
        with self._transaction() as con:
            found = store.find_scenario(con, name_or_id)
            if found is None:
                raise ScenarioNotFoundError(f"no scenario has the id or name {name_or_id!r}")
            scenario_id = found["scenario_id"]
            entities: dict[str, list[dict]] = {entity: [] for entity in self.entity_types}
            for entity, count in found.pop("entity_counts").items():
                codec = self.registry.codecs.get(entity)
                if codec is not None and count:
                    entities[entity] = rebuild_rows(codec, store.fetch_rows(con, codec, scenario_id))
            found["tags"] = store.tags_of(con, scenario_id)
        found["entities"] = entities
        return found

    def scenario_info(self, name_or_id: str) -> dict[str, Any]:
        """A scenario's summary without its entities: the fields of a
        :meth:`list_scenarios` item (counts per type included). Raises
        :class:`ScenarioNotFoundError` for an unknown id or name."""
        store = self._store
        with self._transaction() as con:
            found = store.find_scenario(con, name_or_id)
            if found is None:
                raise ScenarioNotFoundError(f"no scenario has the id or name {name_or_id!r}")
            found["tags"] = store.tags_of(con, found["scenario_id"])
        return found

    def validate(self, entities: Any) -> dict[str, int]:
        """Check ``entities`` as a save would, writing nothing: the count per
        type, or :class:`ValidationError` listing every problem."""
        batch = ScenarioBatch(self.registry, entities, "validation")
        for _ in batch.chunks():
            pass
        batch.raise_if_invalid()
        return batch.counts

    def orphaned_types(self) -> dict[str, str]:
        """Entity types the database holds but no mapping in force names,
        ``{entity: table}``: their tables and data are kept, and come back
        when their mapping files do."""
        with self._transaction() as con:
            recorded = con.execute("SELECT entity, table_name FROM _healthsim_tables ORDER BY entity").fetchall()
        return {entity: table for entity, table in recorded if entity not in self.registry.codecs}

    def scenario_exists(self, name_or_id: str) -> bool:
        with self._transaction() as con:
            return self._store.find_scenario(con, name_or_id) is not None

    def list_scenarios(self, tag: str | None = None, search: str | None = None,
                       limit: int | None = 100) -> list[dict[str, Any]]:
        """Scenario summaries, newest ``updated_at`` first.

        ``tag`` matches one tag, ``search`` a substring of name or description;
        both case-insensitive, combined with AND. Each item carries scenario_id,
        name, description, created_at, updated_at, entity_count, entity_counts, tags.
        """
        for label, value in (("tag", tag), ("search", search)):
            if value is not None and not isinstance(value, str):
                raise ValidationError([Problem(f"{label} must be a string, got {type(value).__name__}", path=label)],
                                      summary="invalid list_scenarios call")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValidationError([Problem(f"limit must be a non-negative integer or None, got {limit!r}",
                                           path="limit")], summary="invalid list_scenarios call")
        with self._transaction() as con:
            return self._store.list_scenarios(con, tag, search, limit)


# --- mappings, compiled once a process --------------------------------------------

_registries: dict[tuple, Registry] = {}


def _registry(mapping_dirs: Iterable[str | os.PathLike] | None) -> Registry:
    """The compiled mappings for these directories, reused while no mapping
    file changes (a process that opens many managers parses YAML once)."""
    dirs = mapping_search_path(mapping_dirs)
    key = fingerprint(dirs)
    registry = _registries.get(key)
    if registry is None:
        registry = Registry(load_mapping_dirs(dirs).values())
        if len(_registries) > 16:
            _registries.clear()
        _registries[key] = registry
    return registry


# --- argument checks ---------------------------------------------------------------

def _id_of(scenario: dict[str, Any] | None) -> str | None:
    return None if scenario is None else scenario["scenario_id"]


def _check_arguments(name: Any, description: Any) -> None:
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(Problem(f"the scenario name must be a non-empty string, got {name!r}", path="name"))
    elif not is_text(name):
        problems.append(Problem("the scenario name holds a lone surrogate, which is not valid Unicode text",
                                path="name", value=name))
    if description is not None and not isinstance(description, str):
        problems.append(Problem(f"description must be a string or None, got {type(description).__name__}",
                                path="description"))
    elif description is not None and not is_text(description):
        problems.append(Problem("the description holds a lone surrogate, which is not valid Unicode text",
                                path="description"))
    if problems:
        raise ValidationError(problems, summary="scenario not saved")


def _check_tags(tags: Any) -> list[str]:
    """Tags in the order given, exact repeats dropped."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ValidationError([Problem(f"tags must be a list of strings, got {type(tags).__name__}", path="tags")],
                              summary="scenario not saved")
    result: list[str] = []
    problems = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag or not is_text(tag):
            problems.append(Problem(f"a tag must be a non-empty string of valid Unicode text, got {tag!r}",
                                    path=f"tags[{index}]"))
        elif tag not in result:
            result.append(tag)
    if problems:
        raise ValidationError(problems, summary="scenario not saved")
    return result


def _unstorable_strings(codec, rows: list[tuple]) -> list[Problem]:
    """After a failed bulk write: the strings DuckDB cannot store (lone
    surrogates are not Unicode text). Checked only on failure, so the common
    path pays nothing."""
    problems = []
    fields = codec.mapping.fields
    for row in rows:
        for index, value in enumerate(row[2:-1]):
            if value.__class__ is str and not is_text(value):
                problems.append(Problem("the string holds a lone surrogate, which is not valid Unicode text",
                                        codec.mapping.entity, row[1], fields[index].dotted, value))
    return problems


# --- module-level shortcuts on the default database -----------------------------

def plan_schema_changes(db_path: str | os.PathLike | None = None, *,
                        mapping_dirs: Iterable[str | os.PathLike] | None = None) -> SchemaReport:
    """What opening ``db_path`` with these mappings would change to follow
    edited mappings, changing nothing (a dry run). A change that cannot be
    applied raises :class:`SchemaChangeError` listing what blocks it."""
    registry = _registry(mapping_dirs)
    store = Store(default_db_path() if db_path is None else db_path, registry.codecs, check=False)
    return store.plan()



def save_scenario(name: str, entities: Any, **options: Any) -> str:
    """:meth:`StateManager.save_scenario` on the default database."""
    with StateManager() as manager:
        return manager.save_scenario(name, entities, **options)


def load_scenario(name_or_id: str) -> dict[str, Any]:
    """:meth:`StateManager.load_scenario` on the default database."""
    with StateManager() as manager:
        return manager.load_scenario(name_or_id)


def list_scenarios(**options: Any) -> list[dict[str, Any]]:
    """:meth:`StateManager.list_scenarios` on the default database."""
    with StateManager() as manager:
        return manager.list_scenarios(**options)


def delete_scenario(name_or_id: str) -> bool:
    """:meth:`StateManager.delete_scenario` on the default database."""
    with StateManager() as manager:
        return manager.delete_scenario(name_or_id)
