"""What a front end shows without opening a database: the registered entity
types with their fields. (A scenario's summary is ``StateManager.scenario_info``.)"""

from __future__ import annotations

import os
from typing import Any, Iterable

from ..mapping.loader import load_mappings
from .errors import UnknownEntityTypeError


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
