"""The opening of a store, for each operation of a manager.

Each operation is one transaction on the backend (run again from the start
if it loses a race with another client). It first reads what the store says
about itself: the mapping set in force (the store's own, plus what this
client's files add; see :mod:`healthsim_state.plan`), known by the store's
digest and generation, so a client that has seen them reads nothing more. A
writable transaction also creates the store, upgrades its layout and applies
what this client's files add (or, with ``evolve``, every change) first.

:class:`OpenStore` keeps what opening learnt (the plan, the compiled
mappings, the store's history limit) and runs operations:
:meth:`OpenStore.read` and :meth:`OpenStore.write` hand each a
:class:`~healthsim_state.store.Scenarios` bound to the transaction.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from .backends import Backend, Session, WriteNeeded, open_backend
from .caches import LOCAL_MAPPINGS, SYNCED
from .engine.registry import Registry, registry_for
from .errors import IncompatibleDatabaseError, MappingDriftWarning, StoreNotFoundError, warn_caller
from .layout import (
    SCHEMA_VERSION,
    StoreState,
    create_base,
    digest_of,
    read_documents,
    read_state,
    recorded_mappings,
    upgrade,
)
from .mapping.loader import fingerprint, load_mapping_dirs, mapping_search_path
from .mapping.model import Mapping
from .plan import Plan, plan
from .store import Scenarios

if TYPE_CHECKING:  # evolution is imported by a change to the store, not by every opening
    from .evolution import SchemaReport

T = TypeVar("T")

# (store, pending changes) pairs this process has warned about: once each.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


class OpenStore:
    """One store as a manager opens it: the backend, this client's mapping
    files, and what the last opening found (see the module notes)."""

    def __init__(self, db_path: str | os.PathLike | None = None, *,
                 mapping_dirs: Iterable[str | os.PathLike] | None = None, lock_timeout: float | None = None,
                 read_only: bool = False, evolve: bool = False, keep_open: float = 0.0):
        if read_only and evolve:
            raise ValueError("evolve=True changes the store; it cannot be combined with read_only=True")
        if isinstance(keep_open, bool) or not isinstance(keep_open, (int, float)) or not 0 <= keep_open <= 3600:
            raise ValueError(f"keep_open is a number of seconds from 0 to 3600, got {keep_open!r}")
        self.backend: Backend = open_backend(db_path, read_only=read_only, lock_timeout=lock_timeout,
                                             keep_open=float(keep_open))
        self.read_only = read_only
        self.evolve = evolve
        self.local, self.local_digest = _local_mappings(mapping_dirs)
        self.registry: Registry | None = None  # the mappings in force, once read
        self.report: SchemaReport | None = None  # what opening changed (None: nothing)
        self.last_plan: Plan | None = None
        self.synced = False
        self._plans: dict[tuple[str | None, int], tuple[Plan, Registry]] = {}
        self._history_limit: int | None = None

    @property
    def label(self) -> str:
        """The store, as messages name it (a URL never shows its password)."""
        return self.backend.label

    def close(self) -> None:
        self.backend.close()

    @property
    def local_registry(self) -> Registry:
        """This client's own mappings (its files), compiled: what a new store would take."""
        return registry_for(self.local, self.local_digest)

    def in_force(self) -> Registry:
        """The compiled mappings in force in the store (for a store not yet
        created: this client's own)."""
        if self.registry is None:
            try:
                self.read(lambda scenarios: None, missing=lambda: None)
            except StoreNotFoundError:
                pass  # a read-only manager of a store not made yet: these would be in force
        return self.registry or self.local_registry

    def mapping_changes(self) -> dict[str, dict[str, list[str]]]:
        """Per type, what this client's mapping files would change in the
        store (see :meth:`StateManager.mapping_changes`)."""
        self.in_force()  # reads the store's state
        changes: dict[str, dict[str, list[str]]] = {}
        if self.last_plan is None:
            return changes

        def entry(entity: str) -> dict[str, list[str]]:
            return changes.setdefault(entity, {"additions": [], "pending": [], "absent": []})

        for step in self.last_plan.steps:
            entry(step.entity)["additions"] += step.changes
        for kind, lines_by_entity in (("pending", self.last_plan.pending), ("absent", self.last_plan.absent)):
            for entity, lines in lines_by_entity.items():
                entry(entity)[kind] += lines
        return changes

    # --- opening --------------------------------------------------------------------------

    def sync(self, session: Session) -> Registry:
        """Read the store's state; in a writable session create the store,
        upgrade its layout and apply this client's additions (or, with
        ``evolve``, every change) first. Returns the mappings in force.

        The mapping set in force is known by the store's digest and
        generation: a client (or another manager of this process, with the
        same mapping files) that has seen them reads nothing more."""
        state = read_state(session)
        self._history_limit = None if state is None else state.history_limit
        if state is None or state.schema_version < SCHEMA_VERSION:
            state = self._create_or_upgrade(session, state)
        key = (state.digest, state.generation)
        cached = self._plans.get(key)
        if cached is None:
            cached = SYNCED.get((self.label, key, self.local_digest, self.evolve))
            if cached is not None:
                self._plans[key] = cached
        if cached is None or (cached[0].steps and session.writable):
            cached = self._follow_files(session, state)
        self.last_plan = cached[0]
        self.registry = cached[1]
        self.synced = True
        return cached[1]

    def _create_or_upgrade(self, session: Session, state: StoreState | None) -> StoreState:
        """A store not made yet, or made by an earlier version: only a
        writable session makes or upgrades it."""
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
        return state

    def _follow_files(self, session: Session, state: StoreState) -> tuple[Plan, Registry]:
        """Plan what this client's files change against the store's mappings;
        in a writable session apply the steps the plan holds. Returns the
        plan left and the mappings in force, cached by the store's state.
        A store that records this client's own set (equal digests, equal
        mappings) needs no plan: its documents are not read."""
        if state.digest is not None and state.digest == self.local_digest:
            return self._keep((state.digest, state.generation), Plan(self.local, [], {}, self.evolve),
                              self.local_registry)
        read_documents(session, state)
        schema_plan = plan(recorded_mappings(state, self.label), self.local, evolve=self.evolve)
        key = (state.digest, state.generation)
        if schema_plan.steps and session.writable:
            from . import evolution

            session.lock_layout()
            self.report = evolution.apply(session, schema_plan, state, label=self.label)
            schema_plan = schema_plan.once_applied()
            key = (state.digest, state.generation)
            registry = registry_for(schema_plan.in_force, state.digest)  # apply set it to the digest of in_force
        else:
            in_force = schema_plan.in_force if not schema_plan.steps else recorded_mappings(state, self.label)
            registry = registry_for(in_force, digest_of(in_force))
        return self._keep(key, schema_plan, registry)

    def _keep(self, key: tuple[str | None, int], schema_plan: Plan, registry: Registry) -> tuple[Plan, Registry]:
        """Remember the plan and the mappings in force for the store's state ``key``."""
        cached = (schema_plan, registry)
        self._plans = {key: cached}
        if not schema_plan.steps:  # nothing left to apply: any manager of these files may reuse it
            SYNCED.put((self.label, key, self.local_digest, self.evolve), cached)
        self._warn_drift(schema_plan)
        return cached

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

    def scenarios(self, session: Session) -> Scenarios:
        """The store's scenarios in ``session``, with the mappings in force."""
        registry = self.sync(session)
        return Scenarios(session, registry, self.label, history_limit=self._history_limit)

    # --- running operations -----------------------------------------------------------

    def create(self) -> None:
        """Create the store now, with the mappings in force; nothing happens to one that exists."""
        self.backend.run(self.sync, write=True)

    def write(self, operation: Callable[[Scenarios], T]) -> T:
        """``operation`` in one writable transaction, with the mappings in force."""
        def run(session: Session) -> T:
            return operation(self.scenarios(session))

        return self.backend.run(run, write=True)

    def read(self, operation: Callable[[Scenarios], T], *, missing: Callable[[], T] | None = None) -> T:
        """``operation`` in one read transaction. A store that does not exist
        yet reads as empty (``missing()``) for a read-write manager."""
        first = not self.synced and not self.read_only

        def run(session: Session) -> T:
            scenarios = self.scenarios(session)
            if first and self.last_plan is not None and self.last_plan.steps:
                raise _WriteFirst  # this client's files add something: applied on open, in a write
            return operation(scenarios)

        def write_first(session: Session) -> Registry:  # add to (or upgrade) the store; the read runs again
            nonlocal first
            first = False
            return self.sync(session)

        try:
            return self.backend.run(run, write=False, write_first=write_first if first else None)
        except StoreNotFoundError:
            if self.read_only or missing is None:
                raise
            self.registry = self.registry or self.local_registry
            return missing()

    @contextmanager
    def reading(self) -> Iterator[Scenarios]:
        """The store's scenarios in one read transaction that lasts as long
        as the ``with`` block (a snapshot)."""
        with self.backend.session(write=False) as session:
            yield self.scenarios(session)

    def planned_changes(self) -> SchemaReport:
        """What ``evolve`` would change in the store to follow this client's
        files, compiled into the operations it would run; nothing is written."""
        from . import evolution

        local = self.local

        def compile_changes(session: Session) -> SchemaReport:
            state = read_state(session)
            if state is None:
                state = StoreState(SCHEMA_VERSION, None, 0, None)
            stored = recorded_mappings(read_documents(session, state), self.label)
            return evolution.compile_plan(session, plan(stored, local, evolve=True), label=self.label)

        return self.backend.run(compile_changes, write=False)


class _WriteFirst(WriteNeeded):
    """A first read found changes to apply to the store: they go first, in a write."""


class _NeedsUpgrade(IncompatibleDatabaseError, WriteNeeded):
    """The store's layout is older than this version's: a write upgrades it
    (a read-only manager, which may not, reports it)."""


def _local_mappings(mapping_dirs: Iterable[str | os.PathLike] | None) -> tuple[dict[str, Mapping], str]:
    """This client's mappings (built-in, ``$HEALTHSIM_MAPPINGS``, ``mapping_dirs``)
    and their digest, reused while no file changes (a process that opens many
    managers parses YAML and computes the digest once)."""
    dirs = mapping_search_path(mapping_dirs)
    key = fingerprint(dirs)
    parsed = LOCAL_MAPPINGS.get(key)
    if parsed is None:
        mappings = load_mapping_dirs(dirs)
        parsed = LOCAL_MAPPINGS.put(key, (mappings, digest_of(mappings)))
    return parsed
