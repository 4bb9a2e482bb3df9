"""The mapping types, as one table of data (the sqlglot way).

For every type a mapping may declare, :data:`TYPES` (and :func:`column_type`
for ``decimal(P,S)``) gives:

- ``convert(value) -> (column_value, kept)``: the typed copy for the column, and
  the value the entity must keep in its residual because the column cannot
  reproduce it exactly (``MISSING`` when it can). Raises :class:`Unfit`;
- ``render(read_value)``: the JSON value a load puts back at the field's path,
  from the column's *read form*;
- ``fast_test``: a Python expression over ``v``, true when ``v`` is its own
  column value and its own rendering, so compiled flatten code skips the call
  for the common case;
- ``form``: how a column of values in bulk (:mod:`healthsim_state.engine.columns`) holds them, so
  that a backend can take it without per-value Python work: ``value`` (as a
  row holds them), ``iso_text`` (a date as the canonical ISO text
  ``isoformat`` writes, which every engine parses back exactly), ``instant``
  (a timestamp as that text, or as microseconds since 1970-01-01 UTC, an
  int, where it was computed: from an offset, say) or ``unscaled`` (a decimal
  ``12.34`` of scale 2 as the integer ``1234``). :func:`to_form` and
  :func:`from_form` convert.

The *read form* is what every backend hands back for a column (each
:class:`~healthsim_state.backends.base.Dialect` selects it so): the value
itself for text, integers, doubles and booleans; ISO text for dates and
timestamps (as ``isoformat`` writes them); a float for a decimal of up to 15
digits (exact in a double) and its text for a longer one; JSON text for json.
SQL type names live in the dialects, not here.

"Exact values" is the contract: a load returns what was given. So ``convert``
compares ``render(column)`` with the canonical form of the input and keeps the
input whenever they differ ("2024-01-15T10:30Z" stays so; an int given to a
``double`` comes back an int; ``-0.0`` keeps its sign in the residual, so that
a column compares equal exactly when the values are the same). A ``Decimal``
no float holds stays a ``Decimal`` (see :mod:`.values`), so the residual keeps
it, with every digit, in a field of any type; a decimal or json column holds
its digits too, for SQL.

Text: a string holding NUL (which PostgreSQL text cannot store) is kept in the
residual, never in a column, on every backend; a key cannot hold one.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import uuid
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Callable

from .values import (
    MISSING, NotJSON, check_real_date, dump_column_json, dump_exact, is_text, parse_json, to_json,
)


class Unfit(ValueError):
    """A value does not fit a field's type. The message says what was expected."""


@dataclass(frozen=True)
class ColumnType:
    name: str  # as a mapping writes it: "varchar", "decimal(12,2)"
    family: str  # the name without parameters: "varchar", "decimal"
    convert: Callable[[Any], tuple[Any, Any]]
    render: Callable[[Any], Any]
    fast_test: str | None = None
    precision: int = 0  # decimals only
    scale: int = 0
    form: str = "value"


def _same(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same JSON scalar, type and sign included."""
    if a.__class__ is not b.__class__ or a != b:
        return False
    return a.__class__ is not float or math.copysign(1.0, a) == math.copysign(1.0, b)


# --- varchar ---------------------------------------------------------------

def _varchar(value: Any) -> tuple[Any, Any]:
    if isinstance(value, (uuid.UUID, str)):  # a UUID, or a str subclass such as a StrEnum member
        text = to_json(value)
        if "\x00" in text:
            raise HeldText(text)
        return text, MISSING
    raise Unfit("expected a string")


class HeldText(Exception):
    """A string no text column stores (it holds NUL): the column stays NULL
    and the residual keeps the string (a key cannot hold one)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


# --- integer / bigint ---------------------------------------------------------

def _integer_converter(bits: int) -> Callable[[Any], tuple[Any, Any]]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return int(value), MISSING
            raise Unfit(f"expected an integer in [{low}, {high}]")
        raise Unfit("expected an integer")

    return convert


# --- double --------------------------------------------------------------------

def _double(value: Any) -> tuple[Any, Any]:
    if isinstance(value, bool):
        raise Unfit("expected a number, not a bool")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unfit("NaN and Infinity are not JSON numbers and are not stored")
        if value == 0.0 and math.copysign(1.0, value) < 0:
            return 0.0, -0.0  # the column holds 0.0, the residual keeps the sign
        return float(value), MISSING
    if isinstance(value, int):
        try:
            return float(value), int(value)  # the column holds a float; keep the int
        except OverflowError:
            raise Unfit("integer too large for a double") from None
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Unfit("NaN and Infinity are not JSON numbers and are not stored")
        kept = to_json(value)  # a Decimal no float holds stays one: the residual keeps every digit
        number = float(value)
        if not math.isfinite(number):
            raise Unfit("the number is out of the range of a double (at most about 1.8e308)")
        number = number or 0.0  # no negative zero in a column
        return number, MISSING if _same(number, kept) else kept
    raise Unfit("expected a number")


# --- decimal(P,S) ---------------------------------------------------------------

def _decimal_converter(precision: int, scale: int) -> Callable[[Any], tuple[Any, Any]]:
    # Python's default decimal context keeps 28 digits; DuckDB's decimals hold 38.
    context = Context(prec=MAX_DECIMAL_PRECISION + 2)
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** (precision - scale)
    # Below this magnitude a float's spacing is finer than 10**-scale, so the
    # nearest ``scale``-digit decimal to the float (what DuckDB stores when
    # handed the float) is exactly its shortest repr: the float can go to the
    # column as it is, with no Decimal made in Python.
    float_safe = min(10.0 ** (precision - scale), 2.0 ** 52 * 10.0 ** -scale)

    def convert(value: Any) -> tuple[Any, Any]:
        if value.__class__ is float and -float_safe < value < float_safe and value != 0.0:
            text = repr(value)
            if "e" not in text and len(text) - text.index(".") - 1 <= scale:
                return value, MISSING
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise Unfit(f"expected a number for decimal({precision},{scale})")
        if isinstance(value, float) and not math.isfinite(value):
            raise Unfit("NaN and Infinity are not JSON numbers and are not stored")
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not exact.is_finite():
            raise Unfit("expected a finite number")
        try:
            column = exact.quantize(quantum, context=context)
        except InvalidOperation:
            column = None
        if column is None or column != exact or column.copy_abs() >= limit:  # copy_abs: no context rounding
            raise Unfit(f"does not fit decimal({precision},{scale}) without losing a digit")
        kept = to_json(value)
        stored = float(column) or 0.0  # a DECIMAL has no negative zero: -0.0 reads back as 0.0
        return column, MISSING if _same(stored, kept) else kept

    return convert


def _render_long_decimal(text: str) -> float:
    """A decimal of more than 15 digits is read as text: ``float`` of it is
    the correctly rounded double, whatever the engine's own cast would give."""
    return float(text)


# --- boolean ---------------------------------------------------------------------

def _boolean(value: Any) -> tuple[Any, Any]:
    if value is True or value is False:
        return value, MISSING
    raise Unfit("expected true or false")


# --- date ------------------------------------------------------------------------

def _date(value: Any) -> tuple[Any, Any]:
    if value.__class__ is str:
        try:
            day = _dt.date.fromisoformat(value)
        except ValueError:
            raise Unfit("expected a full ISO date (YYYY-MM-DD)") from None
        return day, MISSING if day.isoformat() == value else value
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        if value.__class__ is _dt.date:
            return value, MISSING
        day = _plain_date(value)  # a subclass: the column holds a plain date; what it renders as is kept
        kept = value.isoformat()
        return day, MISSING if day.isoformat() == kept else kept
    if isinstance(value, _dt.datetime):
        _plain_date(value)  # one that holds no date (pandas.NaT) says so
    raise Unfit("expected a full ISO date (YYYY-MM-DD) or a datetime.date")


def _checked_real(value: _dt.date) -> None:
    """A date(-time) subclass that holds no date (pandas.NaT) does not fit."""
    try:
        check_real_date(value)
    except TypeError as problem:
        raise Unfit(str(problem)) from None


def _plain_date(value: _dt.date) -> _dt.date:
    _checked_real(value)
    return _dt.date(value.year, value.month, value.day)


# --- timestamp ---------------------------------------------------------------------

def _utc_naive(moment: _dt.datetime) -> _dt.datetime:
    """The instant as a naive UTC datetime. A naive input is taken as UTC: the
    machine's time zone never enters (``astimezone`` is only called on aware
    datetimes)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=None)
    try:
        return moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    except OverflowError:
        raise Unfit("the instant is out of the supported range in UTC") from None


def _timestamp(value: Any) -> tuple[Any, Any]:
    if value.__class__ is str:
        try:
            moment = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise Unfit("expected an ISO date-time (YYYY-MM-DDTHH:MM[:SS][offset])") from None
        column = _utc_naive(moment)
        return column, MISSING if column.isoformat() == value else value
    if isinstance(value, _dt.datetime):
        # A subclass (pandas.Timestamp, ...) goes to the column as a plain
        # datetime, and keeps what it renders as (nanoseconds, say) when that
        # differs; one that holds no date-time (pandas.NaT) is refused.
        column = _utc_naive(value if value.__class__ is _dt.datetime else _plain_datetime(value))
        kept = value.isoformat()
        return column, MISSING if column.isoformat() == kept else kept
    raise Unfit("expected an ISO date-time string or a datetime.datetime")


def _plain_datetime(value: _dt.datetime) -> _dt.datetime:
    _checked_real(value)
    return _dt.datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                        value.microsecond, value.tzinfo, fold=value.fold)


# --- json ---------------------------------------------------------------------

def _json(value: Any) -> tuple[Any, Any]:
    try:
        rendered = to_json(value)
    except NotJSON as problem:
        raise Unfit(str(problem)) from None
    try:
        text, kept = dump_column_json(rendered), MISSING
    except TypeError:  # it holds a number no float holds: the column has its digits for SQL, and the
        # residual keeps the value, so that a load gives the Decimal back on every backend
        text, kept = dump_exact(rendered, allow_nan=False, ensure_ascii=False, separators=(",", ":")), rendered
    if not is_text(text):
        raise Unfit("a string holds a lone surrogate, which a json column cannot store")
    return text, kept


def identity(value: Any) -> Any:
    """The render of types whose column value is already the JSON value."""
    return value


TYPES: dict[str, ColumnType] = {
    "varchar": ColumnType("varchar", "varchar", _varchar, identity, "v.__class__ is str and '\\x00' not in v"),
    "integer": ColumnType(
        "integer", "integer", _integer_converter(32), identity,
        "v.__class__ is int and -2147483648 <= v <= 2147483647",
    ),
    "bigint": ColumnType(
        "bigint", "bigint", _integer_converter(64), identity,
        "v.__class__ is int and -9223372036854775808 <= v <= 9223372036854775807",
    ),
    # ``v - v == 0.0`` is false exactly for NaN and the infinities; zero takes the
    # slow path, which keeps the sign of -0.0.
    "double": ColumnType("double", "double", _double, identity, "v.__class__ is float and v - v == 0.0 and v != 0.0"),
    "boolean": ColumnType("boolean", "boolean", _boolean, identity, "v.__class__ is bool"),
    "date": ColumnType("date", "date", _date, identity, form="iso_text"),
    "timestamp": ColumnType("timestamp", "timestamp", _timestamp, identity, form="instant"),
    "json": ColumnType("json", "json", _json, parse_json),
}

_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
MAX_DECIMAL_PRECISION = 38

TYPE_NAMES = ", ".join([*TYPES, "decimal(P,S)"])
"""Every type a mapping may declare, for messages."""

TYPE_PATTERN = "^(" + "|".join(TYPES) + r"|decimal\(\s*[0-9]+\s*,\s*[0-9]+\s*\))$"
"""The pattern of the mapping JSON Schema's ``type`` (``$defs.type``): the file
must say the same (a test holds it to this), so that it stays whole for editors."""


def column_type(name: str) -> ColumnType:
    """The :class:`ColumnType` for a mapping's ``type`` text.

    Raises ``ValueError`` with a reason for an unknown type or a bad decimal.
    """
    found = TYPES.get(name)
    if found is not None:
        return found
    match = _DECIMAL.match(name)
    if not match:
        raise ValueError(f"unknown type {name!r}")
    precision, scale = int(match[1]), int(match[2])
    if not 1 <= precision <= MAX_DECIMAL_PRECISION or scale > precision:
        raise ValueError(
            f"decimal({precision},{scale}) needs 1 <= P <= {MAX_DECIMAL_PRECISION} and S <= P"
        )
    # Up to 15 digits the unscaled value is exact in a double, so the engines'
    # cast to a double (one correctly rounded division) equals float(Decimal):
    # such a decimal is read as a double. A longer one is read as text.
    return ColumnType(
        f"decimal({precision},{scale})", "decimal",
        _decimal_converter(precision, scale),
        identity if precision <= 15 else _render_long_decimal,
        precision=precision, scale=scale, form="unscaled",
    )


# --- column forms ---------------------------------------------------------------------

_WIDE = Context(prec=2 * MAX_DECIMAL_PRECISION)


EPOCH = _dt.datetime(1970, 1, 1)
MICROSECOND = _dt.timedelta(microseconds=1)


def to_form(ctype: ColumnType, value: Any) -> Any:
    """One column value (as ``convert`` returns it, or None) in the type's form."""
    if value is None or ctype.form == "value":
        return value
    if ctype.form == "iso_text":
        return value.isoformat()
    if ctype.form == "instant":
        return (value - EPOCH) // MICROSECOND
    exact = Decimal(repr(value)) if value.__class__ is float else value
    return int(exact.scaleb(ctype.scale, context=_WIDE))


def from_form(ctype: ColumnType, values: list) -> list:
    """A column's values in the type's form back as a row holds them
    (``date``, naive UTC ``datetime``, ``Decimal``); None stays None."""
    if ctype.form == "value":
        return values
    if ctype.form == "unscaled":
        scale = -ctype.scale
        return [None if v is None else Decimal(v).scaleb(scale, context=_WIDE) for v in values]
    if ctype.form == "instant":
        parse = _dt.datetime.fromisoformat
        return [v if v is None else parse(v) if v.__class__ is str else EPOCH + v * MICROSECOND for v in values]
    parse = _dt.date.fromisoformat
    return [None if v is None else parse(v) for v in values]
