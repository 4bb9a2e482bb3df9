"""JSON values: the sentinel for "absent", and the canonical rendering of input.

An entity may hold ``datetime.date``, ``datetime.datetime``, ``uuid.UUID`` and
``decimal.Decimal`` objects; they are rendered as the JSON values a load gives
back (ISO strings, strings, numbers). Everything else that is not JSON (a
tuple, a set, bytes, a non-string key, NaN or Infinity) is refused with the
path where it was found.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from decimal import Decimal
from typing import Any


class _Missing:
    """The one "absent" marker: a key that is not there (``None`` is a value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

_SCALARS = (str, int, bool, type(None))

# Deeper than this is refused, clearly, before any recursion limit of Python's
# or of a JSON codec is met. Real HealthSim data nests a handful of levels.
MAX_DEPTH = 200


class NotJSON(ValueError):
    """A value that is not JSON and has no canonical rendering.

    ``path`` is a list of the keys and indexes leading to it.
    """

    def __init__(self, reason: str, path: list[Any]):
        self.reason = reason
        self.path = path
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
        super().__init__(f"{reason} at {where.lstrip('.')}" if path else reason)


def render_object(value: Any) -> Any:
    """The JSON rendering of one non-JSON scalar object, or raise ``TypeError``.

    Subclasses of str, int and float (``StrEnum``, ``IntEnum`` members) are
    rendered as their plain value, as ``json.dumps`` writes them."""
    if isinstance(value, str):
        return value[:]  # slicing a str subclass gives a plain str
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return to_json(float(value))
    if isinstance(value, _dt.datetime) or isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("NaN and Infinity are not JSON numbers")
        return json.loads(str(value))
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def to_json(value: Any, path: list[Any] | None = None) -> Any:
    """``value`` in canonical JSON form; the same object when nothing changes.

    Raises :class:`NotJSON` naming the path of the first offending value.
    """
    cls = value.__class__
    if cls in _SCALARS:
        return value
    if cls is float:
        if value - value == 0.0:
            return value
        raise NotJSON("NaN and Infinity are not JSON numbers", path or [])
    if cls is dict:
        return _dict_to_json(value, path or [])
    if cls is list:
        return _list_to_json(value, path or [])
    try:
        return render_object(value)
    except TypeError as problem:
        raise NotJSON(str(problem), path or []) from None


def _check_depth(path: list[Any]) -> None:
    if len(path) >= MAX_DEPTH:
        raise NotJSON(f"nested deeper than {MAX_DEPTH} levels, which is not supported", path[:3] + ["..."])


def _dict_to_json(value: dict, path: list[Any]) -> dict:
    _check_depth(path)
    changed = None
    for key, item in value.items():
        if key.__class__ is not str:
            raise NotJSON(f"key {key!r} is not a string", path)
        rendered = to_json(item, path + [key]) if item.__class__ not in _SCALARS else item
        if rendered is not item:
            if changed is None:
                changed = dict(value)
            changed[key] = rendered
    return value if changed is None else changed


def _list_to_json(value: list, path: list[Any]) -> list:
    _check_depth(path)
    changed = None
    for index, item in enumerate(value):
        rendered = to_json(item, path + [index]) if item.__class__ not in _SCALARS else item
        if rendered is not item:
            if changed is None:
                changed = list(value)
            changed[index] = rendered
    return value if changed is None else changed


def is_text(value: str) -> bool:
    """True when ``value`` can be stored as text (UTF-8): no lone surrogates."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


_scan_once = json.JSONDecoder().scan_once


def parse_json(text: str) -> Any:
    """``json.loads`` for text we wrote ourselves: straight to the C scanner,
    skipping the whitespace regex and wrapper work (a third of a load's time
    went there). Text with anything after the value is refused."""
    value, end = _scan_once(text, 0)
    if end != len(text):
        raise ValueError(f"unexpected data after the JSON value at character {end}")
    return value


# Compact, ASCII-safe (a lone surrogate survives as an escape), no NaN.
dump_residual_json = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
# For json columns, read by DuckDB's JSON functions: real UTF-8 text.
dump_column_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode
