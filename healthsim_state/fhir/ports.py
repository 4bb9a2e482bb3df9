"""What the FHIR modules need of the store, as protocols.

Export and import are handed a :class:`~healthsim_state.StateManager`, but use
only these few of its methods: naming them here keeps the FHIR package a
client of the store's public face (the manager imports ``fhir``; ``fhir``
imports no manager, not even for type names)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Iterable, Protocol

from ..engine.registry import Registry
from ..snapshot import Snapshot


class ScenarioReader(Protocol):
    """The reads an export makes: a consistent snapshot of one version, and
    the difference between two versions (for ``since_version``)."""

    def snapshot(self, name_or_id: str, *, version: int | None = None) -> AbstractContextManager[Snapshot]: ...

    def diff_scenarios(self, a: str, b: str | None = None, *, a_version: int | None = None,
                       b_version: int | None = None, entity_types: Iterable[str] | None = None
                       ) -> dict[str, dict[str, list]]: ...


class ScenarioWriter(Protocol):
    """The store an import saves into: the mappings in force and one save."""

    @property
    def registry(self) -> Registry: ...

    def save_scenario(self, name: str, entities: Any, description: str | None = None,
                      tags: Iterable[str] | None = None, overwrite: bool = False,
                      metadata: dict[str, Any] | None = None, *, created_at: Any = None,
                      progress: Callable[[int, int], None] | None = None) -> str: ...
