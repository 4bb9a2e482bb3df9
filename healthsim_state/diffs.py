"""What differs between two sets of one type's entities, matched by key.

The store hands over only the rows that differ (see
:meth:`~healthsim_state.store.TypeRows.differing_rows`); here they are rebuilt
into canonical entities and compared path by path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .engine.batch import rebuild_rows
from .engine.compile import Codec


def compare(codec: Codec, rows_a: list[tuple], rows_b: list[tuple]) -> dict[str, list]:
    """``{"added": [key, ...], "removed": [key, ...], "changed": [{"key": key,
    "paths": [...]}, ...]}`` from ``a`` to ``b``, keys sorted; ``{}`` when the
    rows hold the same entities."""
    if not rows_a and not rows_b:
        return {}
    before = _by_key(codec, rows_a)
    after = _by_key(codec, rows_b)
    added = [after[k][0] for k in _sorted(k for k in after if k not in before)]
    removed = [before[k][0] for k in _sorted(k for k in before if k not in after)]
    changed = []
    for k in _sorted(k for k in after if k in before):
        paths = changed_paths(before[k][1], after[k][1])
        if paths:
            changed.append({"key": after[k][0], "paths": paths})
    if not (added or removed or changed):
        return {}
    return {"added": added, "removed": removed, "changed": changed}


def _by_key(codec: Codec, rows: list[tuple]) -> dict[Any, tuple[Any, dict]]:
    """``{comparable key: (key as shown, entity)}``."""
    fields = codec.mapping.fields
    slots = [1 + [f.column for f in fields].index(column) for column in codec.mapping.primary_key]
    renders = [codec.mapping.field(column).type.render for column in codec.mapping.primary_key]
    entities = rebuild_rows(codec, rows)
    out = {}
    for row, entity in zip(rows, entities):
        values = [render(row[slot]) for slot, render in zip(slots, renders)]
        shown = values[0] if len(values) == 1 else values
        out[tuple(values)] = (shown, entity)
    return out


def _sorted(keys: Any) -> list:
    keys = list(keys)
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def changed_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which ``a`` and ``b`` differ: into objects on both
    sides; anything else (a list, a value of another JSON type, ``1`` and
    ``1.0``) is compared whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        paths = []
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{prefix}.{key}" if prefix else key
            if key not in a or key not in b:
                paths.append(where)
            else:
                paths += changed_paths(a[key], b[key], where)
        return paths
    return [] if _same(a, b) else [prefix]


def _same(a: Any, b: Any) -> bool:
    if a.__class__ is not b.__class__:
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (float, Decimal)):
        return a == b and str(a) == str(b)  # -0.0 is not 0.0; Decimal("1.0") is not Decimal("1.00")
    return a == b
