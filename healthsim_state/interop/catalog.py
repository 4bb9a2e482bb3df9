"""What a front end shows without loading entities: one scenario's summary,
and the registered entity types with their fields."""

from __future__ import annotations

import os
from typing import Any, Iterable

from ..manager import StateManager
from ..mapping.loader import load_mappings
from .errors import UnknownEntityTypeError


def scenario_summary(manager: StateManager, name_or_id: str) -> dict[str, Any]:
    """The scenario's list item (id, name, description, dates, entity_count,
    entity_counts, tags), found by id first, then by name, as ``load_scenario``
    does, but without reading any entity row."""
    return manager.scenario_info(name_or_id)


def describe_types(mapping_dirs: Iterable[str | os.PathLike] | None = None) -> list[dict[str, Any]]:
    """Every registered entity type, as its mapping's JSON-ready description."""
    return [mapping.describe() for mapping in load_mappings(mapping_dirs).values()]


def describe_type(entity: str, mapping_dirs: Iterable[str | os.PathLike] | None = None) -> dict[str, Any]:
    """One entity type (singular or plural name) with its fields."""
    described = describe_types(mapping_dirs)
    for item in described:
        if entity in (item["entity"], item["plural"]):
            return item
    known = ", ".join(item["entity"] for item in described)
    raise UnknownEntityTypeError(f"unknown entity type {entity!r}; registered types: {known}")
