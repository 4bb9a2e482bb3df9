"""The MCP server: scenario tools for AI assistants.

Start it with ``healthsim-state mcp`` (stdio), ``healthsim-state mcp --transport
http --port P`` (streamable HTTP, on 127.0.0.1 unless told otherwise), or
``python -m healthsim_state.mcp_server``. It needs the ``mcp`` extra
(``pip install 'healthsim-state[mcp]'``).

Each tool is a thin layer over :class:`StateManager` (and the read-only SQL of
:mod:`healthsim_state.interop.query`). Reading tools use a read-only manager,
writing tools a read-write one. A call keeps a DuckDB file open for
``keep_open`` seconds after it returns (``--keep-open``, default
:data:`DEFAULT_KEEP_OPEN`): an assistant calls tools in bursts, and a call in
a burst then skips DuckDB's start and the checkpoint of a
close; once the server is idle that long, the file is closed and other
processes have it (meanwhile they wait, as for a running call). ``0`` closes
the file before each call returns. Calls run one at a time: inside one
process DuckDB cannot open a file read-only while a read-write connection to
it is open.

A call that fails because of its input (unknown scenario, invalid entity,
unknown type, a query that is not a SELECT, ...) comes back as an MCP tool error
carrying our message; the library's writes are atomic, so nothing is half
written, and the server goes on serving.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import inspect
import itertools
import json
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, TypedDict

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from . import __version__
from .backends import describe_target
from .backends.urls import scrub_all
from .config import default_target, is_url
from .errors import EntityNotFoundError, HealthSimError, ScenarioNotFoundError, StoreNotFoundError
from .interop.query import json_rows, jsonable, run_query
from .manager import MISSING_OK_HINT, StateManager

QUERY_TIMEOUT = 30.0
"""Seconds a ``query`` may run before it is interrupted."""

MAX_QUERY_ROWS = 10_000
MAX_SAMPLES = 20
PAGE = 500
"""Entities of each type a load_scenario page holds unless asked otherwise."""
FHIR_PAGE = 100
"""Resources a get_fhir page holds unless asked otherwise."""
MAX_FHIR_PAGE = 1_000
MAX_PAGE_ENTITIES = 5_000
"""Most entities one load_scenario page may hold (over every type it reads)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_KEEP_OPEN = 1.0
"""Seconds the server keeps a DuckDB file open after a call (0: none)."""

INSTRUCTIONS = """\
Scenarios are named sets of synthetic healthcare entities (patients, encounters, claims, \
trial subjects, ...) kept in one store. Call list_entity_types to learn each type's \
canonical shape (field paths, types, input aliases). Save with save_scenario; send a large \
scenario in batches of a few hundred entities with add_entities; pass metadata (generator, \
seed, prompt) to record how the data was made. Read with get_scenario_summary first, then \
load_scenario a page at a time (entity_types, limit_per_type, offset), or with query \
(read-only SQL); get_fhir pages the same data as FHIR R4 resources (one patient, some \
types). Every write makes a version: scenario_history lists them, diff_scenarios says \
what changed, restore_scenario undoes. Change a scenario's name with rename_scenario, \
its description and tags with update_scenario, and remove single entities by key with \
delete_entities. Scenarios are found by id or by name."""


# --- what the tools return (published as output schemas) ------------------------------

class ScenarioInfo(TypedDict):
    """A scenario, without its entities. Times are ISO 8601, UTC; version is the newest version's
    number (or the one asked for)."""
    scenario_id: str
    name: str
    version: int
    description: str | None
    tags: list[str]
    created_at: str
    updated_at: str
    entity_count: int
    entity_counts: dict[str, int]


class AddResult(TypedDict):
    """What add_entities did: per type, entities added and entities replaced by key;
    entity_count is the scenario's new total, version the version this write made."""
    scenario_id: str
    name: str
    added: dict[str, int]
    replaced: dict[str, int]
    entity_count: int
    version: int


class LoadResult(ScenarioInfo):
    """The scenario with the requested slice of its entities (per type, a list of
    objects in canonical shape): omitted counts, per type, the entities not returned;
    next_offset is where the next slice starts. limit_fitted is true when no limit_per_type
    was given and the default was lowered to keep the page within the page's entity cap
    (note then says so in words)."""
    # list, not list[dict]: a client checks the result against this schema, and an item
    # schema would have it walk every entity of the page (a tenth of a 1,000-entity call)
    entities: dict[str, list]
    offset: int
    limit_per_type: int | None
    omitted: dict[str, int]
    complete: bool
    next_offset: int | None
    limit_fitted: bool
    note: str | None


class SummaryResult(ScenarioInfo):
    """The scenario's counts, tags and dates, and the first few entities of each type."""
    samples: dict[str, list[dict[str, Any]]]


class ListResult(TypedDict):
    """Scenario summaries, newest first."""
    scenarios: list[dict[str, Any]]
    count: int


class DeleteResult(ScenarioInfo):
    """The scenario that was deleted."""
    deleted: bool


class HistoryResult(TypedDict):
    """The scenario's versions, newest first: version, operation, at (ISO 8601, UTC), entity_count,
    entity_counts, description, tags, metadata, and changes (per type: added, changed, removed)."""
    versions: list[dict[str, Any]]
    count: int


class DiffResult(TypedDict):
    """Per entity type with differences: {"added": [key, ...], "removed": [key, ...],
    "changed": [{"key": key, "paths": [dotted path, ...]}, ...]}; a key is the key's value, or a
    list of values for a composite key. identical is true when nothing differs."""
    differences: dict[str, dict[str, list[Any]]]
    identical: bool


class DeleteEntitiesResult(TypedDict):
    """What delete_entities did: per type, the entities deleted and the keys not found;
    entity_count is the scenario's new total, version the scenario's version after it."""
    scenario_id: str
    name: str
    deleted: dict[str, int]
    not_found: dict[str, list[Any]]
    entity_count: int
    version: int


class FhirResult(TypedDict):
    """A page of the scenario's FHIR R4 resources (JSON objects, in export order):
    count is how many this page holds; next_offset is the offset of the next
    page (null when there is none); complete is true when this page ends the list."""
    scenario_id: str
    name: str
    version: int
    resources: list
    count: int
    offset: int
    limit: int
    next_offset: int | None
    complete: bool


class EntityTypesResult(TypedDict):
    """Each entity type: entity, plural, table, description, primary_key, and fields
    (column, path, type, aliases, required, strict, default, description)."""
    entity_types: list[dict[str, Any]]


class QueryOutput(TypedDict):
    """The first rows (at most limit); truncated says whether there were more."""
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool


# --- argument types (published as the input schemas) -----------------------------------

NameOrId = Annotated[str, Field(min_length=1, description="The scenario's id or its name (an id is looked up first).")]
Entities = Annotated[dict[str, list[dict[str, Any]]], Field(
    description="Entity type (singular or plural, e.g. 'patient' or 'patients'; see list_entity_types) "
                "to a list of entities. Fields may use the canonical path or any alias the type declares.")]
EntityTypes = Annotated[list[str] | None, Field(
    description="Only these entity types (singular or plural names); default: every type.")]
Metadata = Annotated[dict[str, Any] | None, Field(
    description="A JSON object kept with the version this write makes: generator, its version, seed, prompt, "
                "anything that says how the data was made.")]
Version = Annotated[int | None, Field(
    ge=1, description="A version of the scenario (see scenario_history); default: the newest.")]


class ScenarioTools:
    """The tool functions, on one database file. Each returns a JSON-ready dict
    and raises our errors (or ValueError) for input it cannot use."""

    def __init__(self, db_path: str | Path, *, keep_open: float = DEFAULT_KEEP_OPEN):
        self.db_path = db_path
        self.keep_open = keep_open
        self._lock = threading.Lock()
        self._writer: StateManager | None = None
        self._reader: StateManager | None = None

    @contextmanager
    def _manager(self) -> Iterator[StateManager]:
        """The server's read-write manager, one call at a time. A manager holds
        a file only while one of its methods runs and ``keep_open`` seconds
        after, so keeping it costs other processes nothing."""
        with self._lock:
            if self._writer is None:
                self._writer = StateManager(self.db_path, keep_open=self.keep_open)
            yield self._writer

    @contextmanager
    def _read_manager(self) -> Iterator[StateManager]:
        """The server's read-only manager (nothing is created or evolved). A
        store not made yet reads as empty."""
        with self._lock:
            if self._reader is None:
                self._reader = StateManager(self.db_path, read_only=True, keep_open=self.keep_open)
            try:
                yield self._reader
            except StoreNotFoundError as error:
                raise ScenarioNotFoundError(f"{error}; nothing has been saved yet") from None

    # --- writes -----------------------------------------------------------------------

    def save_scenario(
        self,
        name: Annotated[str, Field(min_length=1, description="The scenario's name (unique in the database).")],
        entities: Entities,
        description: Annotated[str | None, Field(description="What the scenario is for.")] = None,
        tags: Annotated[list[str] | None, Field(description="Tags to find it by (list_scenarios tag=...).")] = None,
        overwrite: Annotated[bool, Field(
            description="Replace an existing scenario of this name with a new version of it (keeps its id, "
                        "created_at and earlier versions).")] = False,
        metadata: Metadata = None,
    ) -> ScenarioInfo:
        """Save entities as a new scenario (or, with overwrite, replace one) in one transaction.

        Every entity is validated first; if any is invalid nothing is saved and the error lists
        each problem with its entity type, position and field. For more than a few hundred
        entities, call add_entities in batches instead. Returns the scenario's id, name and
        entity counts per type."""
        with self._manager() as manager:
            scenario_id = manager.save_scenario(name, entities, description=description, tags=tags,
                                                 overwrite=overwrite, metadata=metadata)
            return _info(manager.scenario_info(scenario_id))

    def add_entities(
        self,
        name_or_id: NameOrId,
        entities: Entities,
        create: Annotated[bool, Field(
            description="Create the scenario (named name_or_id) if there is none; else an unknown "
                        "scenario is an error.")] = True,
        metadata: Metadata = None,
    ) -> AddResult:
        """Add entities to a scenario, in one transaction: send a large scenario in batches of a
        few hundred entities.

        An entity whose key (see primary_key in list_entity_types) is already in the scenario
        replaces the stored one and keeps its place; the others are appended in the order given.
        Validation is as for save_scenario: an invalid batch changes nothing. Returns the counts
        added and replaced per type, and the scenario's new entity_count (get_scenario_summary
        with sample_size 0 gives the counts per type)."""
        with self._manager() as manager:
            return manager.add_entities(name_or_id, entities, create=create, metadata=metadata)

    def delete_scenario(
        self,
        name_or_id: NameOrId,
        confirm: Annotated[bool, Field(strict=True, description=(
            "Must be the boolean true: deleting removes the scenario, all its entities and its history "
            "for good."))] = False,
    ) -> DeleteResult:
        """Delete a scenario, its tags and all its entities. Refused unless confirm is true;
        this cannot be undone."""
        with self._manager() as manager:
            info = manager.scenario_info(name_or_id)
            if confirm is not True:
                raise ValueError(
                    f"scenario {info['name']!r} (id {info['scenario_id']}, {_entities(info['entity_count'])}) "
                    "was not deleted: deleting cannot be undone; call delete_scenario again with confirm: true")
            if not manager.delete_scenario(info["scenario_id"]):
                raise ScenarioNotFoundError(f"no scenario has the id or name {name_or_id!r}")
        return {**_info(info), "deleted": True}

    def rename_scenario(
        self,
        name_or_id: NameOrId,
        new_name: Annotated[str, Field(min_length=1, description="The new name (unique in the database).")],
    ) -> ScenarioInfo:
        """Rename a scenario. Its id, entities, tags and versions stay as they are (a rename is not
        a new version). Refused if another scenario has that name."""
        with self._manager() as manager:
            return _info(manager.rename_scenario(name_or_id, new_name))

    def update_scenario(
        self,
        name_or_id: NameOrId,
        description: Annotated[str | None, Field(
            description="The new description; an empty string removes it; leave out to keep it.")] = None,
        tags: Annotated[list[str] | None, Field(
            description="Replace the tags with these (an empty list removes them all); leave out to keep them.")]
        = None,
        add_tags: Annotated[list[str] | None, Field(description="Tags to add.")] = None,
        remove_tags: Annotated[list[str] | None, Field(description="Tags to remove.")] = None,
    ) -> ScenarioInfo:
        """Change a scenario's description and tags without resending its entities. A change makes
        a new version with the same entities; a call that changes nothing writes nothing."""
        changes: dict[str, Any] = {"add_tags": add_tags or [], "remove_tags": remove_tags or []}
        if description is not None:
            changes["description"] = description or None
        if tags is not None:
            changes["tags"] = tags
        with self._manager() as manager:
            return _info(manager.update_scenario(name_or_id, **changes))

    def delete_entities(
        self,
        name_or_id: NameOrId,
        keys: Annotated[dict[str, list[Any]], Field(description=(
            "Entity type (singular or plural) to a list of keys: for a one-column primary key (see "
            "primary_key in list_entity_types) the key's value, for a composite one a list of its values."))],
        missing_ok: Annotated[bool, Field(description=(
            "Delete the keys found even if some are not; else a key the scenario does not hold is an error "
            "and nothing is deleted."))] = False,
    ) -> DeleteEntitiesResult:
        """Delete single entities of a scenario by key, in one transaction: a new version without
        them (an earlier version still holds them: restore it to undo). Returns the count deleted
        per type, the keys not found (with missing_ok), and the scenario's new entity_count."""
        with self._manager() as manager:
            try:
                return jsonable(manager.delete_entities(name_or_id, keys, missing_ok=missing_ok))
            except EntityNotFoundError as error:
                raise ValueError(str(error).replace(MISSING_OK_HINT, "pass missing_ok: true to delete the others")) \
                    from None

    # --- reads --------------------------------------------------------------------------

    def load_scenario(
        self,
        name_or_id: NameOrId,
        entity_types: EntityTypes = None,
        limit_per_type: Annotated[int | None, Field(
            ge=1, le=MAX_PAGE_ENTITIES, description=(
                f"At most this many entities of each type. Default: {PAGE}, lowered if needed so that the page "
                f"holds at most {MAX_PAGE_ENTITIES} entities (the result's limit_fitted says so)."))
        ] = None,
        offset: Annotated[int, Field(
            ge=0, description="Skip this many entities of each type: the next_offset of the page before.")] = 0,
        version: Version = None,
    ) -> LoadResult:
        """Load a scenario, a page at a time: its entities in canonical shape, in saved order,
        with its metadata.

        A page holds at most limit_per_type entities of each type, from offset on (both
        positions in each type's list); entity_types picks types. The result says what was
        left out: omitted counts, per type, the entities not returned; complete is true when
        nothing was; next_offset is the offset of the next page (null when there is none). A
        page holds at most 5000 entities in all: left out, limit_per_type is fitted to that
        (limit_fitted and note say so); given, one that does not fit is an error naming the
        largest that does. Call get_scenario_summary first to see the counts."""
        if limit_per_type is not None and (isinstance(limit_per_type, bool) or not isinstance(limit_per_type, int)
                                           or limit_per_type < 1):
            raise ValueError(f"limit_per_type must be a whole number of at least 1, got {limit_per_type!r}")
        with self._read_manager() as manager, manager.snapshot(name_or_id, version=version) as snap:  # one transaction
            info = snap.info
            counts = {entity: count for entity, count in info["entity_counts"].items() if count}
            wanted = snap.registry.entity_names(entity_types)
            chosen = wanted if wanted is not None else list(counts)
            remaining = [max(0, counts.get(entity, 0) - offset) for entity in chosen]
            limit, fitted = _page_limit(limit_per_type, remaining, counts)
            entities = {entity: snap.page(entity, limit=limit, offset=offset) for entity in chosen}
        page = _page({**info, "entities": entities}, counts, chosen, limit, offset)
        note = None
        if fitted:
            note = (f"limit_per_type was lowered from {PAGE} to {limit} so that the page holds at most "
                    f"{MAX_PAGE_ENTITIES} entities; page with offset (next_offset) for the rest")
        return {**page, "limit_fitted": fitted, "note": note}

    def get_fhir(
        self,
        name_or_id: NameOrId,
        resource_types: Annotated[list[str] | None, Field(
            description="Only resources of these FHIR types (e.g. ['Patient', 'Condition']); default: all.")] = None,
        patient: Annotated[str | None, Field(
            description="Only this patient's resources: its patient_id, mrn or Patient resource id.")] = None,
        limit: Annotated[int, Field(ge=1, le=MAX_FHIR_PAGE, description="At most this many resources.")] = FHIR_PAGE,
        offset: Annotated[int, Field(
            ge=0, description="Skip this many resources: the next_offset of the page before.")] = 0,
        version: Version = None,
    ) -> FhirResult:
        """The scenario as FHIR R4 resources, a page at a time (as export --format fhir
        writes them: stable ids, references as Type/id). Use patient to show one patient
        as FHIR, resource_types to pick types."""
        if isinstance(resource_types, str):
            raise ValueError("resource_types must be a list of FHIR resource type names, not one string")
        with self._read_manager() as manager:
            info = manager.scenario_info(name_or_id, version=version)
            stream = manager.iter_fhir(info["scenario_id"], resource_types=resource_types, version=version,
                                       patient=patient)
            try:
                page = list(itertools.islice(stream, offset, offset + limit + 1))
            finally:
                stream.close()
        more = len(page) > limit
        resources = page[:limit]
        return {"scenario_id": info["scenario_id"], "name": info["name"], "version": info["version"],
                "resources": resources, "count": len(resources), "offset": offset, "limit": limit,
                "next_offset": offset + limit if more else None, "complete": not more}

    def get_scenario_summary(
        self,
        name_or_id: NameOrId,
        sample_size: Annotated[int, Field(
            ge=0, le=MAX_SAMPLES, description="How many entities of each type to show (the first ones).")] = 3,
    ) -> SummaryResult:
        """A scenario at a glance: entity counts per type, tags, description, dates, and the
        first few entities of each type as samples. Cheaper to read than load_scenario."""
        with self._read_manager() as manager:
            info = manager.scenario_info(name_or_id)
            samples = {}
            if sample_size:
                types = [entity for entity, count in info["entity_counts"].items() if count]
                loaded = manager.load_scenario(info["scenario_id"], entity_types=types, limit=sample_size)
                samples = {entity: items for entity, items in loaded["entities"].items() if items}
        return {**_info(info), "samples": samples}

    def list_scenarios(
        self,
        tag: Annotated[str | None, Field(description="Only scenarios with this tag (case-insensitive).")] = None,
        search: Annotated[str | None, Field(
            description="Only scenarios whose name or description contains this text (case-insensitive).")] = None,
        limit: Annotated[int | None, Field(ge=0, description="At most this many; null for all.")] = 100,
        offset: Annotated[int, Field(ge=0, description="Skip this many first (to page through a long list).")] = 0,
    ) -> ListResult:
        """List scenarios, most recently updated first: id, name, description, tags, dates,
        entity counts per type. No entities are read."""
        with self._lock:
            try:
                items = self._read_manager_unlocked().list_scenarios(tag=tag, search=search, limit=limit,
                                                                     offset=offset)
            except StoreNotFoundError:
                items = []
        scenarios = [_info(item) for item in items]
        return {"scenarios": scenarios, "count": len(scenarios)}

    def scenario_history(self, name_or_id: NameOrId) -> HistoryResult:
        """The versions of a scenario, newest first: every write (save, overwrite, add, restore,
        update, delete_entities) made one. Each has its number, operation, time (UTC), entity
        counts, the metadata given with it (generator, seed, prompt, ...) and what it changed
        against the version before (per type: entities added, changed, removed). Use it to say
        what a change did and to pick a version to load, compare or restore."""
        with self._read_manager() as manager:
            versions = manager.scenario_history(name_or_id)
        return {"versions": jsonable(versions), "count": len(versions)}

    def diff_scenarios(
        self,
        a: NameOrId,
        b: Annotated[str | None, Field(description="Another scenario (id or name); default: a itself.")] = None,
        a_version: Version = None,
        b_version: Version = None,
        entity_types: EntityTypes = None,
    ) -> DiffResult:
        """What changed from scenario a to scenario b, or between two versions of one scenario
        (leave b out, give a_version and/or b_version; a version left out is the newest).
        Entities are matched by their primary key. The result holds, per entity type with
        differences, the keys added and removed, and for each changed entity its key and the
        canonical paths that differ (name.given, address.postalCode, ...)."""
        with self._read_manager() as manager:
            differences = manager.diff_scenarios(a, b, a_version=a_version, b_version=b_version,
                                                 entity_types=entity_types)
        return {"differences": jsonable(differences), "identical": not differences}

    def restore_scenario(
        self,
        name_or_id: NameOrId,
        version: Annotated[int, Field(ge=1, description="The version to bring back (see scenario_history).")],
    ) -> ScenarioInfo:
        """Undo: make an earlier version the scenario's newest again (its entities, description
        and tags). This writes a new version equal to the one asked for; the history is kept,
        so a restore can itself be undone with another restore."""
        with self._manager() as manager:
            return _info(manager.restore_scenario(name_or_id, version))

    def list_entity_types(self, entity_types: EntityTypes = None) -> EntityTypesResult:
        """The entity types a scenario may hold, each with its table and fields: the canonical
        path of each field (where it is in a loaded entity), its type, the aliases accepted on
        input, its default, and the type's primary key. Fields no mapping names are kept too."""
        with self._lock:
            manager = self._read_manager_unlocked()
            try:
                registry = manager.registry
            except HealthSimError:  # a bad store: the mapping files, which a new store would take
                registry = manager.local_registry
            names = list(registry.entity_types) if entity_types is None else registry.entity_names(entity_types)
            described = [registry.codecs[name].mapping.describe() for name in names]
        return {"entity_types": jsonable(described)}

    def query(
        self,
        sql: Annotated[str, Field(min_length=1, description=(
            "One read-only SELECT statement (WITH, VALUES, and on DuckDB FROM-first, DESCRIBE, SHOW TABLES "
            "and SUMMARIZE are selects too). Tables: scenarios (scenario_id, name, description, created_at, updated_at, "
            "entity_count, entity_counts), scenario_tags (scenario_id, position, tag), and one table per "
            "entity type (see list_entity_types: table, and each field's column) with scenario_id and "
            "_position. Filter by scenario_id to stay inside one scenario."))],
        limit: Annotated[int, Field(ge=0, le=MAX_QUERY_ROWS, description="Return at most this many rows.")] = 100,
    ) -> QueryOutput:
        """Run read-only SQL over the scenario tables and return the first rows.

        The SQL dialect is the store's: DuckDB's for a file, PostgreSQL's for a server (where
        parameters are $1, ...). The database is opened read-only (a DuckDB file with no access
        to other files; on PostgreSQL a read-only transaction); exactly one SELECT statement is
        accepted. Values come back as JSON: dates and times as ISO text, decimals
        as numbers. truncated is true when the query had more rows than limit."""
        with self._lock:
            try:
                result = run_query(self.db_path, sql, limit=limit, timeout=QUERY_TIMEOUT)
            except StoreNotFoundError:  # a new store: make its tables, so the query can see them
                self._writer = self._writer or StateManager(self.db_path, keep_open=self.keep_open)
                self._writer.create()
                result = run_query(self.db_path, sql, limit=limit, timeout=QUERY_TIMEOUT)
        return {"columns": result.columns, "types": result.types, "rows": json_rows(result),
                "row_count": len(result.rows), "truncated": result.truncated}

    def _read_manager_unlocked(self) -> StateManager:
        if self._reader is None:
            self._reader = StateManager(self.db_path, read_only=True, keep_open=self.keep_open)
        return self._reader


# --- helpers ---------------------------------------------------------------------------

def _info(item: dict[str, Any]) -> dict[str, Any]:
    """A scenario's metadata, JSON-ready (times as ISO 8601 text)."""
    return {
        "scenario_id": item["scenario_id"],
        "name": item["name"],
        "description": item.get("description"),
        "tags": list(item.get("tags") or []),
        "created_at": jsonable(item["created_at"]),
        "updated_at": jsonable(item["updated_at"]),
        "entity_count": item["entity_count"],
        "entity_counts": dict(item.get("entity_counts") or {}),
        "version": item["version"],
    }


def _page(scenario: dict[str, Any], counts: dict[str, int], chosen: list[str], limit: int,
          offset: int) -> dict[str, Any]:
    """A loaded page with what it left out: per type the entities not
    returned, and where the next page starts."""
    entities = {entity: scenario["entities"].get(entity, []) for entity in chosen}
    omitted = {entity: total - len(entities.get(entity, ())) for entity, total in counts.items()
               if total - len(entities.get(entity, ()))}
    end = offset + limit
    more = any(counts.get(entity, 0) > end for entity in chosen)
    return {**_info(scenario), "entities": entities, "offset": offset, "limit_per_type": limit,
            "omitted": omitted, "complete": not omitted, "next_offset": end if more else None}


def _page_limit(asked: int | None, remaining: list[int], counts: dict[str, int]) -> tuple[int, bool]:
    """The per-type limit of a page, and whether it was fitted: the one asked
    for if the page keeps within MAX_PAGE_ENTITIES (else an error naming the
    largest that does); none asked, PAGE lowered to the largest that does."""
    largest = _largest_fitting_limit(remaining)
    if asked is None:
        if largest < 1:
            raise ValueError(_too_big(remaining, 1, counts) + "ask for fewer entity_types")
        return min(PAGE, largest), largest < PAGE
    if _page_size(remaining, asked) > MAX_PAGE_ENTITIES:
        hint = f"or a limit_per_type of at most {largest}, " if largest >= 1 else ""
        raise ValueError(_too_big(remaining, asked, counts) + f"ask for fewer entity_types, {hint}and page with offset")
    return asked, False


def _page_size(remaining: list[int], limit: int) -> int:
    """How many entities a page holds at ``limit`` a type, given what each type has from the offset on."""
    return sum(min(limit, left) for left in remaining)


def _largest_fitting_limit(remaining: list[int]) -> int:
    """The largest per-type limit (0 if none) keeping the page within
    MAX_PAGE_ENTITIES: exact, since a type with fewer left than the limit
    takes only what it has (3000, 3000 and 1666 left: 1667, not 5000 // 3)."""
    return bisect.bisect_right(range(MAX_PAGE_ENTITIES + 1), MAX_PAGE_ENTITIES,
                               key=lambda limit: _page_size(remaining, limit)) - 1


def _too_big(remaining: list[int], limit: int, counts: dict[str, int]) -> str:
    return (f"this page would hold {_page_size(remaining, limit)} entities ({_count_text(counts)} in all); "
            f"a page holds at most {MAX_PAGE_ENTITIES}: ")


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {entity}" for entity, count in counts.items()) or "no entities"


def _entities(count: int) -> str:
    return f"{count} entit{'y' if count == 1 else 'ies'}"


def _payload(value: dict[str, Any]) -> CallToolResult:
    """The tool result: the structured value, and the same as compact JSON text
    for clients that read only text (the SDK's default text is indented: for a
    large scenario that is a lot of whitespace). A value JSON has no literal
    for (a Decimal no float holds, from unmapped data) is given as
    :func:`jsonable` renders it (the nearest float; an integral one as an
    int), in both: JSON-RPC clients read numbers as doubles anyway."""
    rendered: list[bool] = []

    def default(obj: Any) -> Any:
        rendered.append(True)
        return jsonable(obj)

    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)
    if rendered:
        value = json.loads(text)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=value)


def _as_tool(function: Callable[..., dict[str, Any]], db_path: str) -> Callable[..., CallToolResult]:
    """``function`` as the SDK calls it: errors a caller can cause become tool
    errors with our message (never with a password of ``db_path``); its
    return annotation stays the output schema."""
    urls = [db_path] if is_url(db_path) else []

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> CallToolResult:
        try:
            return _payload(function(*args, **kwargs))
        except (HealthSimError, ValueError) as error:
            raise ToolError(scrub_all(str(error), urls)) from None

    signature = inspect.signature(function, eval_str=True)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=Annotated[CallToolResult, signature.return_annotation])
    return call


# --- the server --------------------------------------------------------------------------

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

# (tool, title, annotations). save_scenario and add_entities are not idempotent: a repeated
# save without overwrite fails, and entities without a key get a new generated one each time.
# Writes keep earlier versions, but are marked destructive: under a store's history limit a
# write drops the oldest versions, and a delete removes every version.
TOOLS: tuple[tuple[str, str, ToolAnnotations], ...] = (
    ("save_scenario", "Save a scenario",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)),
    ("add_entities", "Add entities to a scenario",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)),
    ("load_scenario", "Load a scenario", READ),
    ("get_scenario_summary", "Summarize a scenario", READ),
    ("get_fhir", "Show a scenario as FHIR R4", READ),
    ("list_scenarios", "List scenarios", READ),
    ("delete_scenario", "Delete a scenario",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)),
    ("scenario_history", "Show a scenario's versions", READ),
    ("diff_scenarios", "Compare scenarios or versions", READ),
    ("restore_scenario", "Restore an earlier version",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)),
    # A rename replaces the name (no version keeps the old one); repeating it changes nothing.
    ("rename_scenario", "Rename a scenario",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)),
    # A write (under a history limit it may drop old versions, as restore_scenario may); repeating a
    # call changes nothing.
    ("update_scenario", "Change a scenario's description or tags",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)),
    # Removes entities from the scenario (they stay in its history until pruned); repeating deletes nothing more.
    ("delete_entities", "Delete entities by key",
     ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)),
    ("list_entity_types", "List entity types", READ),
    ("query", "Query scenarios with SQL", READ),
)


def build_server(db_path: str | Path | None = None, *, log_level: str = "WARNING",
                 keep_open: float = DEFAULT_KEEP_OPEN) -> MCPServer:
    """An MCP server with the scenario tools on ``db_path`` (default:
    ``$HEALTHSIM_DB``, else ``~/.healthsim/healthsim.duckdb``), keeping a
    DuckDB file open ``keep_open`` seconds after each call."""
    path = resolve_db_path(db_path)
    tools = ScenarioTools(path, keep_open=keep_open)
    server = MCPServer("healthsim-state", title="HealthSim scenarios", version=__version__,
                       instructions=INSTRUCTIONS, log_level=log_level)  # type: ignore[arg-type]
    for name, title, hints in TOOLS:
        function = getattr(tools, name)
        server.add_tool(_as_tool(function, path), name=name, title=title,
                        description=inspect.cleandoc(function.__doc__),
                        annotations=hints.model_copy(update={"title": title}), structured_output=True)
    return server


def resolve_db_path(db_path: str | Path | None) -> str:
    """The store: a URL as given, a path made absolute (an MCP client may start
    the server in any directory)."""
    target = default_target() if db_path is None else str(db_path)
    return target if is_url(target) else str(Path(target).expanduser().absolute())


def serve(db_path: str | Path | None = None, transport: str = "stdio", host: str = "127.0.0.1",
          port: int = 8000, keep_open: float = DEFAULT_KEEP_OPEN) -> None:
    """Run the server until the client goes away (stdio) or it is stopped (http)."""
    path = resolve_db_path(db_path)
    server = build_server(path, keep_open=keep_open)
    try:  # report a bad store at once; the server still starts, and each call reports it
        with StateManager(path, read_only=True) as probe:
            probe.scenario_exists("")
    except StoreNotFoundError:
        pass  # a new store: made by the first save
    except HealthSimError as error:
        print(f"healthsim-state mcp: warning: {scrub_all(str(error), [path] if is_url(path) else [])}",
              file=sys.stderr)
    if transport == "stdio":
        server.run("stdio")
        return
    if transport != "http":
        raise ValueError(f"unknown transport {transport!r}; use stdio or http")
    if host not in LOOPBACK:
        print(f"healthsim-state mcp: warning: listening on {host}, not on loopback; the server has no "
              "authentication, so anyone who can reach this port can read and change every scenario",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"healthsim-state mcp: serving {describe_target(path)} at http://{shown}:{port}/mcp", file=sys.stderr,
          flush=True)
    server.run("streamable-http", host=host, port=port)


def keep_open_seconds(text: str) -> float:
    """``--keep-open``'s value: seconds from 0 to 3600, as a manager takes."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"give seconds from 0 to 3600, not {text!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m healthsim_state.mcp_server",
                                     description="The healthsim-state MCP server.")
    parser.add_argument("--db", help="The store: a DuckDB file or a postgresql:// URL (default: $HEALTHSIM_DB, "
                                     "else ~/.healthsim/healthsim.duckdb).")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (http; default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (http; default 8000).")
    parser.add_argument("--keep-open", type=keep_open_seconds, default=DEFAULT_KEEP_OPEN, metavar="S",
                        help=f"Keep a DuckDB file open S seconds after a call, so a burst of calls skips "
                             f"DuckDB's start; other processes wait for the file meanwhile. 0 closes it after "
                             f"each call (default {DEFAULT_KEEP_OPEN:g}).")
    args = parser.parse_args(argv)
    serve(args.db, args.transport, args.host, args.port, args.keep_open)
    return 0


if __name__ == "__main__":
    sys.exit(main())
