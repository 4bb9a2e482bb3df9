"""JSON values: the sentinel for "absent", and the canonical rendering of input.

An entity may hold ``datetime.date``, ``datetime.datetime``, ``uuid.UUID`` and
``decimal.Decimal`` objects; they are rendered as the JSON values a load gives
back (ISO strings, strings, numbers). Everything else that is not JSON (a
tuple, a set, bytes, a non-string key, NaN or Infinity, a date or time that is
no date or time such as ``pandas.NaT``) is refused with the path where it was
found.

Numbers no float holds. A ``Decimal`` whose value is a float's (``1.5``,
``Decimal("0.10")``) renders as that float, an integral one written without a
point or exponent as an int; any other (``12345678901234567890.123456789``,
``1E+400``) stays a ``Decimal``, with every digit as given, and is written to
JSON text as those digits. JSON text we wrote that holds such a number starts
with one space (JSON allows it): :func:`parse_json` reads only those texts
number by number (:func:`parse_exact`), so every other text keeps the C
parser's speed, and a load gives the ``Decimal`` back.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
import uuid
from decimal import Decimal
from typing import Any, Callable


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
    if isinstance(value, _dt.date):  # a datetime is a date
        check_real_date(value)
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return render_decimal(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def check_real_date(value: _dt.date) -> None:
    """Raise ``TypeError`` for a subclass of date or datetime that holds no
    date (``pandas.NaT`` is a datetime whose fields are NaN); the classes
    themselves always hold one."""
    if value.__class__ is _dt.datetime or value.__class__ is _dt.date:
        return
    if not all(isinstance(part, int) for part in (value.year, value.month, value.day)):
        name = type(value).__name__
        raise TypeError(f"{name} {value!s} is not a date or date-time (a missing-value marker, such as "
                        "pandas.NaT); give None for an unknown value, or leave the key out")


def render_decimal(value: Decimal) -> int | float | Decimal:
    """A ``Decimal``'s JSON value: an int if written without point or
    exponent, the float whose value it is if there is one, else the
    ``Decimal`` itself (a number no float holds, kept with every digit)."""
    if not value.is_finite():
        raise TypeError("NaN and Infinity are not JSON numbers")
    number = json.loads(str(value))
    if number.__class__ is int:
        return number
    if number - number == 0.0 and Decimal(repr(number)) == value:
        return number
    return value if value.__class__ is Decimal else Decimal(value)


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
    went there). Text with anything after the value is refused. Text that
    starts with a space holds numbers no float holds (see the module
    docstring): it is read with :func:`parse_exact`."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:  # not a value at 0: a leading space, or no JSON (parse_exact says what is wrong)
        return parse_exact(text)
    if end != len(text):
        raise ValueError(f"unexpected data after the JSON value at character {end}")
    return value


def parse_json_many(texts: list[str]) -> list[Any]:
    """:func:`parse_json` of texts we wrote ourselves, read in one pass of the
    C scanner over them all joined as one JSON array (a third less time than
    a call a text).

    Our JSON text is one value and never holds a raw newline, so joined with
    ``"\\n,"`` a text that starts with a space (numbers no float holds) shows
    as ``"\\n, "``; a count of newlines or of values, or an end, that does
    not match says some text is not ours. Either way each text is then read
    on its own, as :func:`parse_json` reads it (with its own error)."""
    if not texts:
        return []
    joined = "\n,".join(texts)
    if texts[0][:1] != " " and "\n, " not in joined and joined.count("\n") == len(texts) - 1:
        try:
            values, end = _scan_once(f"[{joined}]", 0)
        except (StopIteration, ValueError, RecursionError):  # the array is one level deeper
            values, end = None, -1
        if end == len(joined) + 2 and len(values) == len(texts):
            return values
    return [parse_json(text) for text in texts]


def exact_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent: the float whose value it is,
    else a ``Decimal`` with every digit (``parse_float`` of a decoder)."""
    number = float(text)
    if repr(number) == text:  # what we write for a float: no Decimal made
        return number
    exact = Decimal(text)
    if number - number == 0.0 and Decimal(repr(number)) == exact:
        return number
    return exact


_exact_decode = json.JSONDecoder(parse_float=exact_number).decode


def parse_exact(text: str) -> Any:
    """JSON text to a value, each number no float holds as a ``Decimal``."""
    return _exact_decode(text)


# A string that stands for one Decimal while the C encoder writes the rest; random,
# so no string of the data has it (and a count of the replacements checks it).
_MARK = "healthsim-number-" + secrets.token_hex(12) + "-"


def dump_exact(value: Any, *, default: Callable[[Any], Any] | None = None, **options: Any) -> str:
    """``json.dumps(value, **options)`` that writes each ``Decimal`` as its
    digits (``default`` renders any other object). Only a value that holds
    one pays for the substitution."""
    for attempt in range(3):
        mark = _MARK if attempt == 0 else "healthsim-number-" + secrets.token_hex(12) + "-"
        numbers: list[str] = []

        def hook(obj: Any) -> Any:
            if isinstance(obj, Decimal) and obj.is_finite():
                numbers.append(str(obj))
                return f"{mark}{len(numbers) - 1}"
            if default is not None:
                return default(obj)
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

        text = json.dumps(value, default=hook, **options)
        if not numbers:
            return text
        text, count = re.subn(f'"{re.escape(mark)}(\\d+)"', lambda m: numbers[int(m[1])], text)
        if count == len(numbers):
            return text
    raise ValueError("cannot write the numbers of this value exactly")  # a string matched three random marks


def _encoder(ensure_ascii: bool) -> Any:
    """``json.JSONEncoder(allow_nan=False, ensure_ascii=..., separators=(",",
    ":")).encode``, calling the C encoder it would make, made once: ``encode``
    makes a new one on every call, a third of the time of a small object.
    Values reach it through :func:`to_json` (JSON, finite, not nested deeper
    than :data:`MAX_DEPTH`), so it needs no check for reference cycles. A
    ``Decimal`` raises ``TypeError``, as with ``encode``."""
    from json import encoder

    if encoder.c_make_encoder is None:  # no C accelerator: the plain encoder
        return json.JSONEncoder(allow_nan=False, ensure_ascii=ensure_ascii, separators=(",", ":")).encode
    strings = encoder.encode_basestring_ascii if ensure_ascii else encoder.encode_basestring

    def refuse(value: Any) -> Any:
        raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")

    make = encoder.c_make_encoder(None, refuse, strings, None, ":", ",", False, False, False)
    join = "".join

    def encode(value: Any) -> str:
        return join(make(value, 0))

    encode.chunks = make  # type: ignore[attr-defined]  # for map(): value, 0 -> list of text
    return encode


# How JSON text we write is encoded as UTF-8: a lone surrogate (which a
# residual keeps, and UTF-8 cannot hold) becomes its JSON escape ``\udc80``.
# JSON text holds such a character only inside a string, where that escape
# is exactly what a JSON reader turns back into it; every other character
# encodes, so nothing else changes.
JSON_ENCODE_ERRORS = "backslashreplace"


def json_bytes(text: str) -> bytes:
    """JSON text as UTF-8 bytes (see :data:`JSON_ENCODE_ERRORS`)."""
    return text.encode("utf-8", JSON_ENCODE_ERRORS)


# Compact, ASCII-safe (a lone surrogate survives as an escape), no NaN.
_dump_residual_fast = _encoder(ensure_ascii=True)


def dump_residual_json(value: Any) -> str:
    """A residual's JSON text: compact and ASCII-safe (a lone surrogate
    survives as an escape), no NaN. A value holding a ``Decimal`` (what
    :func:`to_json` leaves of a number no float holds) is written with its
    digits and one leading space, the mark :func:`parse_json` reads it by."""
    try:
        return _dump_residual_fast(value)
    except TypeError:  # a Decimal: the C encoder knows no such number
        return " " + dump_exact(value, allow_nan=False, separators=(",", ":"))


# For json columns, read by DuckDB's JSON functions: real UTF-8 text.
dump_column_json = _encoder(ensure_ascii=False)
