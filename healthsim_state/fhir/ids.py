"""Stable resource ids: the same scenario, entity and slot give the same id.

An id is a UUID v5 under the project's namespace of the scenario id, the
entity type, the entity's key (as canonical JSON) and the slot (which of the
entity's resources). So re-exporting a scenario version writes the same ids,
and an edited entity keeps its resources' ids: a server updates them in place.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

NAMESPACE = uuid.UUID("5b0c6f3e-2a51-5d8e-9f4c-6e1d2a7b8c90")  # fixed forever: changing it changes every id


def resource_id(scenario_id: str, entity_type: str, key_values: Sequence[Any], slot: str) -> str:
    key = json.dumps(list(key_values), separators=(",", ":"), ensure_ascii=False, default=str)
    return str(uuid.uuid5(NAMESPACE, f"{scenario_id}\x1f{entity_type}\x1f{key}\x1f{slot}"))
