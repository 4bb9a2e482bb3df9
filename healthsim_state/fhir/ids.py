"""Stable resource ids: the same scenario, entity and slot give the same id.

An id is a UUID v5 under the project's namespace of the scenario id, the
entity type, the entity's key (as canonical JSON) and the slot (which of the
entity's resources). So re-exporting a scenario version writes the same ids,
and an edited entity keeps its resources' ids: a server updates them in place.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Sequence

NAMESPACE = uuid.UUID("5b0c6f3e-2a51-5d8e-9f4c-6e1d2a7b8c90")  # fixed forever: changing it changes every id


_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f-\U0010ffff]*$')  # JSON writes these strings as they are


def resource_id(scenario_id: str, entity_type: str, key_values: Sequence[Any], slot: str) -> str:
    if len(key_values) == 1 and isinstance(key_values[0], str) and _PLAIN.match(key_values[0]):
        key = f'["{key_values[0]}"]'  # what json.dumps gives, without its cost (the usual key)
    else:
        key = json.dumps(list(key_values), separators=(",", ":"), ensure_ascii=False, default=str)
    return str(uuid.uuid5(NAMESPACE, f"{scenario_id}\x1f{entity_type}\x1f{key}\x1f{slot}"))
