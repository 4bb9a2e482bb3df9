"""A chunk of columns as Arrow arrays, lent to DuckDB for one ``INSERT``.

Python lists become Arrow buffers in C (nanoarrow); the insert reads them
with one ``SELECT`` over the registered view, casting dates and timestamps
sent as ISO text. Imported by the first write only: a command that only
reads never pays for nanoarrow's import.
"""

from __future__ import annotations

import array
from itertools import chain, repeat
from operator import and_, rshift
from typing import Any, Sequence

import nanoarrow as na

from ..column_types import ColumnType
from ..values import is_text
from .base import Constant


def lent_columns(columns: Sequence[str], arrays: Sequence[Any], types: Sequence[ColumnType | None],
                 length: int) -> tuple[_Lent, list[str], list[Any]]:
    """The columns as one struct array to register, the expression that
    selects each column from it (``?`` for a :class:`Constant`, whose value
    goes in the parameters) and those parameters."""
    children, names, selected, params = [], {}, [], []
    for column, values, ctype in zip(columns, arrays, types):
        if isinstance(values, Constant):
            selected.append("?")
            params.append(values.value)
            continue
        if CONSTANTS and _one_value(values):  # no column to build or scan: the value is a parameter
            selected.append(_read_of(ctype).format("?"))
            params.append(values[0])
            continue
        arrows, read = arrow_arrays(values, ctype)
        inputs = []
        for arrow in arrows:
            inputs.append(f"c{len(children)}")
            children.append(arrow)
            names[inputs[-1]] = arrow.schema
        selected.append(read.format(*inputs))
    view = _Lent(na.Array(na.c_array_from_buffers(na.struct(names), length, [None], children=children)))
    return view, selected, params


class _Lent:
    """An Arrow array lent to DuckDB for one statement. DuckDB keeps a
    registered object alive until the transaction ends; this one lets go of
    the array (and its copy of every value) once the statement has run, so
    a save's memory does not grow with each chunk it wrote."""

    def __init__(self, array: Any):
        self.array = array

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.array.__arrow_c_stream__(requested_schema)


CONSTANTS = True
"""Whether a column holding one value in every row goes as a parameter
(False: every column as an Arrow array; comparisons set it)."""


def _one_value(values: list) -> bool:
    """Whether every row holds the same value, and it is NULL or text a
    parameter carries exactly as an Arrow string would: more than half the
    columns of a typical chunk (fields no entity has, a source system, a
    unit). Text only: equal numbers may differ as stored (``0.0`` and
    ``-0.0`` are equal; so are ``1`` and ``True``), equal strings do not.
    Strings compare by identity first, so a column of one object is one
    quick pass."""
    if not values:
        return False
    first = values[0]
    if first is not None and (first.__class__ is not str or "\x00" in first or not is_text(first)):
        return False
    return values.count(first) == len(values)


def _read_of(ctype: ColumnType | None) -> str:
    """The expression a column of ISO text, JSON text or NULL is read with."""
    if ctype is None:
        return "{0}"
    return _TEXT_READS.get(ctype.family, "{0}")


_TEXT_READS = {"date": "CAST({0} AS DATE)", "timestamp": "CAST({0} AS TIMESTAMP)", "json": "CAST({0} AS JSON)"}


def arrow_arrays(values: list, ctype: ColumnType | None) -> tuple[list[Any], str]:
    """One column as nanoarrow arrays (Python lists become Arrow buffers in C),
    and the expression the insert reads it with (``{0}``, ``{1}``: the arrays)."""
    if ctype is None:  # _position (ints), _residual (text or None)
        if values and values[0].__class__ is int:
            return [na.c_array(array.array("q", values), na.int64())], "{0}"
        return [na.c_array(values, na.string())], "{0}"
    family = ctype.family
    if family == "decimal":
        return [_decimal_array(values, ctype)], "{0}"
    if family in ("date", "json"):  # ISO or JSON text
        return [na.c_array(values, na.string())], _TEXT_READS[family]
    if family == "timestamp":  # ISO text, or microseconds (from an offset) where computed
        kinds = set(map(type, values))
        if int not in kinds:
            return [na.c_array(values, na.string())], _TEXT_READS[family]
        if str not in kinds:
            return [na.c_array(values, _MICROS)], "{0}"
        texts = [v if v.__class__ is str else None for v in values]
        micros = [v if v.__class__ is int else None for v in values]
        return [na.c_array(texts, na.string()), na.c_array(micros, _MICROS)], \
            "coalesce(CAST({0} AS TIMESTAMP), {1})"
    kind = _ARROW[family]
    if family in _TYPECODE and None not in values:
        return [na.c_array(array.array(_TYPECODE[family], values), kind)], "{0}"
    return [na.c_array(values, kind)], "{0}"


_MICROS = na.timestamp("us")
_ARROW = {"varchar": na.string(), "integer": na.int32(), "bigint": na.int64(), "double": na.float64(),
          "boolean": na.bool_()}
_TYPECODE = {"integer": "i", "bigint": "q", "double": "d"}
_LOW64 = (1 << 64) - 1


def _decimal_array(values: list, ctype: ColumnType) -> Any:
    """Unscaled integers as Arrow decimal128(P, S): two 64-bit words a value,
    low then high (two's complement), and a validity bitmap for nulls."""
    validity = None
    if None in values:
        validity = na.c_array([v is not None for v in values], na.bool_()).view().buffer(1)
        values = [0 if v is None else v for v in values]
    if ctype.precision <= 18:  # fits 64 bits: the high word is the sign
        words = array.array("q", chain.from_iterable(zip(values, map(rshift, values, repeat(63)))))
    else:
        words = array.array("Q", chain.from_iterable(zip(map(and_, values, repeat(_LOW64)),
                                                         map(and_, map(rshift, values, repeat(64)), repeat(_LOW64)))))
    return na.c_array_from_buffers(na.decimal128(ctype.precision, ctype.scale), len(values), [validity, words],
                                   null_count=-1 if validity is not None else 0)
