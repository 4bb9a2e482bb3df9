"""Stable resource ids: the same scenario, entity and slot give the same id.

An id is a UUID v5 under the project's namespace of the scenario id, the
entity type, the entity's key (as canonical JSON) and the slot (which of the
entity's resources). So re-exporting a scenario version writes the same ids,
and an edited entity keeps its resources' ids: a server updates them in place.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Sequence

NAMESPACE = uuid.UUID("5b0c6f3e-2a51-5d8e-9f4c-6e1d2a7b8c90")  # fixed forever: changing it changes every id
_NAMESPACE_BYTES = NAMESPACE.bytes


_PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f-\U0010ffff]*')  # JSON writes these strings as they are (whole: fullmatch)


def resource_id(scenario_id: str, entity_type: str, key_values: Sequence[Any], slot: str) -> str:
    return slot_id(id_prefix(scenario_id, entity_type, key_values), slot)


def id_prefix(scenario_id: str, entity_type: str, key_values: Sequence[Any]) -> str:
    """What the ids of one entity's resources share: made once an entity, not once a slot."""
    if len(key_values) == 1 and isinstance(key_values[0], str) and _plain(key_values[0]):
        key = f'["{key_values[0]}"]'  # what json.dumps gives, without its cost (the usual key)
    else:
        key = json.dumps(list(key_values), separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{scenario_id}\x1f{entity_type}\x1f{key}\x1f"


def slot_id(prefix: str, slot: str) -> str:
    """The id of the resource ``slot`` of the entity :func:`id_prefix` made ``prefix`` of."""
    return _uuid5(prefix + slot)


def _plain(text: str) -> bool:
    """``_PLAIN`` matches; printable ASCII but a quote or a backslash (the usual key)
    is told by tests first, faster than the expression."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text or bool(_PLAIN.fullmatch(text))


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))``, without building a UUID object (RFC 4122:
    SHA-1 of namespace and name, version 5, variant 10), set in the hex text
    rather than in the bytes (a fifth faster: this runs for every resource)."""
    text = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).hexdigest()
    return f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"


_VARIANT = {digit: format((int(digit, 16) & 0x3) | 0x8, "x") for digit in "0123456789abcdef"}  # 10xx
