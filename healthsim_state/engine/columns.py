"""Column-wise flatten: a chunk of one type's entities into columns, in bulk.

The generated ``flatten`` (:mod:`.compile`) handles one entity at a time and
any input. Real input is regular: a type's entities come in a few *shapes*
(the exact key set at the top and in each object on the way to a mapped
path). For one shape everything the generated code decides per entity is
decided once, in a :class:`Plan`: which key (path or alias) feeds each column,
which keys are left over, which objects are dropped once emptied. A plan then
pulls each column out of the whole group in one C-level pass
(``map(itemgetter(key), ...)``) and checks its values in bulk (the types of
all of them at once, ranges by ``min``/``max``, dates and timestamps by
parsing them all and checking where their separators sit).

Exactness: a value that fails a bulk check goes through the same ``convert``
the generated code calls (an explicit null, a timestamp with an offset, an int
in a ``double`` field, a non-strict field's object all keep their given form
in the residual, exactly as there); an entity that would raise a problem (or
whose shape a plan does not serve: a non-object on a mapped path, a missing
required field, a small group) goes through the generated ``flatten`` itself.
So every entity is stored as the generated code would store it, and bad input
is reported by the same code with the same messages.

Columns come out in each type's *form* (see :mod:`healthsim_state.column_types`), which a backend
takes without per-value Python work: dates and timestamps as their canonical
ISO text, decimals as unscaled integers.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import add, and_, eq, floordiv, is_, is_not, itemgetter, mul, not_, or_, sub, truediv
from typing import Any, Callable

from ..column_types import from_form, to_form
from ..mapping.model import UUID4, Field
from ..values import MAX_DEPTH, MISSING, _dump_residual_fast, dump_column_json, dump_residual_json, is_text, to_json
from .compile import Codec, _Source
from .keys import GENERATED

MIN_GROUP = 32
"""Entities of one shape, in one chunk, below which the generic flatten is
cheaper than making (or finding) a plan."""

MAX_PLANS = 256
"""Plans kept per entity type; beyond that, new shapes go the generic way
(input where nearly every entity has its own shape is not regular)."""

# --- bulk checks ---------------------------------------------------------------------------------
#
# A check takes a fresh list of one column's values and returns ``(odd, nulls)``:
# the indexes of values that are not, as given, their own column value and
# rendering (the generated code's ``fast_test``: those go through ``convert``),
# and of explicit nulls. It may rewrite values into the column's form. The
# common case is a few C-level passes over the column.

_NONE = type(None)


def _odd(values: list, ok: Callable[[Any], bool]) -> list[int]:
    return [j for j, v in enumerate(values) if not ok(v)]


def _of_class(cls: type, check: Callable[[Field, list], list[int]], rewrites: bool = False
              ) -> Callable[[Field, list], tuple[list[int], list[int]]]:
    """A check of values that must be of exactly ``cls``: ``check`` sees a
    list of ``cls`` values only; nulls are set apart, values of any other
    class are odd. A column mixing classes (an object or a null in some rows)
    is split with C-level passes too."""

    def checked(field: Field, values: list) -> tuple[list[int], list[int]]:
        types = set(map(type, values))
        if types == {cls}:
            return check(field, values), []
        n = len(values)
        if types == {_NONE}:  # an explicit null in every entity (legacy-shaped input): no mask to make
            return [], list(range(n))
        classes = list(map(type, values))
        mask = list(map(is_, classes, repeat(cls)))
        inside = list(compress(range(n), mask))
        nulls: list[int] = []
        if _NONE in types:
            nullmask = list(map(is_, classes, repeat(_NONE)))
            nulls = list(compress(range(n), nullmask))
            mask = list(map(or_, mask, nullmask))
        others = list(compress(range(n), map(not_, mask))) if len(inside) + len(nulls) < n else []
        if not inside:
            return others, nulls
        part = list(map(values.__getitem__, inside))
        odd = list(map(inside.__getitem__, check(field, part)))
        if rewrites:  # put the rewritten values back in place
            values[:] = map(dict(zip(inside, part)).get, range(n), values)
        if others:
            odd = sorted(odd + others)
        return odd, nulls

    return checked


def _check_varchar(field: Field, values: list) -> list[int]:
    if "\x00" not in "".join(values):
        return []
    return [j for j, v in enumerate(values) if "\x00" in v]


def _check_integer(low: int, high: int) -> Callable[[Field, list], list[int]]:
    def check(field: Field, values: list) -> list[int]:
        if low <= min(values) and max(values) <= high:
            return []
        return _odd(values, lambda v: low <= v <= high)
    return check


def _check_double(field: Field, values: list) -> list[int]:
    # a sum is finite only when every term is (or it overflowed: then one by one);
    # zero takes the slow path, which keeps the sign of -0.0
    if 0.0 not in values and math.isfinite(sum(values)):
        return []
    return _odd(values, lambda v: v - v == 0.0 and v != 0.0)


def _check_boolean(field: Field, values: list) -> list[int]:
    return []


_DATE_MARKS = itemgetter(4, 7)


def _canonical_date(v: str) -> bool:
    if len(v) != 10 or v[4] != "-" or v[7] != "-":
        return False
    try:
        _dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _check_date(field: Field, values: list) -> list[int]:
    """Canonical dates are ``YYYY-MM-DD`` that parse: ``fromisoformat`` reads
    only ASCII digits, and with dashes at 4 and 7 in ten characters no other
    of the forms it reads (``YYYYMMDD``, week dates) fits."""
    if set(map(len, values)) == {10} and set(map(_DATE_MARKS, values)) == {("-", "-")}:
        try:
            list(map(_dt.date.fromisoformat, values))
            return []
        except ValueError:
            pass
    return _odd(values, _canonical_date)


_TIME_MARKS = itemgetter(4, 7, 10, 13, 16)
_MARKS = ("-", "-", "T", ":", ":")
_MARK_SLICE = itemgetter(slice(4, 17, 3))  # the same characters, as text (short text: fewer)


def _canonical_timestamp(v: str) -> bool:
    if len(v) not in (19, 26) or _TIME_MARKS(v) != _MARKS:
        return False
    try:
        moment = _dt.datetime.fromisoformat(v)
    except ValueError:
        return False
    if len(v) == 19:
        return True
    return v[19] == "." and moment.tzinfo is None and moment.microsecond != 0


def _check_timestamp(field: Field, values: list) -> list[int]:
    """Canonical timestamps are what ``isoformat`` writes for a naive UTC
    value: ``YYYY-MM-DDTHH:MM:SS`` (nothing fits after it in 19 characters),
    or that and ``.ffffff`` with a non-zero fraction (26 characters, naive)."""
    n = len(values)
    shaped = list(map(and_, map(eq, map(len, values), repeat(19)), map(eq, map(_MARK_SLICE, values), repeat("--T::"))))
    candidates = list(compress(range(n), shaped)) if not all(shaped) else None
    try:
        list(map(_dt.datetime.fromisoformat, values if candidates is None else map(values.__getitem__, candidates)))
    except ValueError:
        return _odd(values, _canonical_timestamp)
    if candidates is None:
        return []
    # a column mixing forms (offsets, say): the rest, one by one (19 or 26 characters only can be canonical)
    return [j for j in compress(range(n), map(not_, shaped)) if not _canonical_timestamp(values[j])]


_UTC = _dt.timezone.utc
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_MICRO = _dt.timedelta(microseconds=1)
_INSTANTS = ((_dt.datetime(1, 1, 1, tzinfo=_UTC) - _EPOCH_UTC) // _MICRO,
             (_dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=_UTC) - _EPOCH_UTC) // _MICRO)


def _as_utc(moment: _dt.datetime) -> _dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=_UTC)


def instants(texts: list) -> list[int] | None:
    """Non-canonical timestamp texts as microseconds since 1970 UTC, in bulk
    (an offset applied, a naive value taken as UTC): the instants ``convert``
    would store, each keeping its given text. None if any is not text, does
    not parse, or lies outside the years 1-9999 in UTC (``convert`` decides)."""
    if set(map(type, texts)) != {str}:
        return None
    try:
        parsed = list(map(_dt.datetime.fromisoformat, texts))
    except ValueError:
        return None
    micros = list(map(floordiv, map(sub, map(_as_utc, parsed), repeat(_EPOCH_UTC)), repeat(_MICRO)))
    if not (_INSTANTS[0] <= min(micros) and max(micros) <= _INSTANTS[1]):
        return None
    return micros


def _check_json(field: Field, values: list) -> tuple[list[int], list[int]]:
    """JSON as it stands, rendered in bulk, when all of it is text a json
    column can hold (no lone surrogate); else value by value. Nulls apart."""
    n = len(values)
    nulls = list(compress(range(n), map(is_, values, repeat(None)))) if None in values else []
    inside = list(compress(range(n), map(is_not, values, repeat(None)))) if nulls else range(n)
    part = list(map(values.__getitem__, inside)) if nulls else values
    if plain_json(part, 1):
        texts = list(map("".join, map(_column_chunks, part, repeat(0))))
        if is_text("".join(texts)):
            values[:] = map(dict(zip(inside, texts)).get, range(n)) if nulls else texts
            return [], nulls
    return list(inside), nulls


def _check_decimal(field: Field, values: list) -> list[int]:
    """A float whose shortest repr has at most ``scale`` decimals is stored as
    that decimal: ``k = round(v * 10**scale)`` is it exactly when ``k /
    10**scale == v`` (one correctly rounded division of exact numbers), in
    the range where a float's spacing is finer than ``10**-scale`` (the range
    the generated code's fast test uses). The column holds ``k``."""
    ctype = field.type
    scale = ctype.scale
    if scale > 15:
        return list(range(len(values)))
    safe = min(10.0 ** (ctype.precision - scale), 2.0 ** 52 * 10.0 ** -scale)
    power = 10.0 ** scale
    if 0.0 not in values and math.isfinite(sum(values)) and max(map(abs, values)) < safe:
        unscaled = list(map(round, map(mul, values, repeat(power))))
        if list(map(truediv, unscaled, repeat(power))) == values:
            values[:] = unscaled
            return []
    odd = []
    for j, v in enumerate(values):
        if -safe < v < safe and v != 0.0:
            k = round(v * power)
            if k / power == v:
                values[j] = k
                continue
        odd.append(j)
    return odd


_CHECKS = {
    "varchar": _of_class(str, _check_varchar),
    "integer": _of_class(int, _check_integer(-2 ** 31, 2 ** 31 - 1)),
    "bigint": _of_class(int, _check_integer(-2 ** 63, 2 ** 63 - 1)),
    "double": _of_class(float, _check_double),
    "boolean": _of_class(bool, _check_boolean),
    "date": _of_class(str, _check_date),
    "timestamp": _of_class(str, _check_timestamp),
    "decimal": _of_class(float, _check_decimal, rewrites=True),
    "json": _check_json,  # any JSON value
}


# --- shapes -------------------------------------------------------------------------------------

def containers(codec: Codec) -> list[tuple[str, ...]]:
    """Every object on the way to a path or an alias, parents first."""
    found: dict[tuple[str, ...], None] = {}
    for f in codec.mapping.fields:
        for keys in (f.path, *f.aliases):
            for depth in range(1, len(keys)):
                found.setdefault(keys[:depth], None)
    return sorted(found, key=len)


def group_by_shape(items: list, nodes: list[tuple[str, ...]]) -> tuple[list[tuple[tuple, list[int], dict]], list[int]]:
    """Split a chunk into groups of one shape: ``[(shape, indexes, objects)]``
    and the indexes that no shape serves (not an object; a non-object, or an
    object of a dict subclass, on the way to a mapped path).

    A shape is ``((container keys, key tuple), ...)``, the root's first;
    ``objects`` maps each present container to its objects, aligned with
    ``indexes``."""
    slow: list[int] = []
    if set(map(type, items)) != {dict}:
        indexes = [j for j, e in enumerate(items) if e.__class__ is dict]
        slow = [j for j, e in enumerate(items) if e.__class__ is not dict]
        items = [items[j] for j in indexes]
    else:
        indexes = list(range(len(items)))
    tops = list(map(tuple, items))
    if len(set(tops)) == 1:
        parts = [(tops[0], indexes, items)] if items else []
    else:
        split: dict[tuple, tuple[list[int], list]] = {}
        for j, keys, e in zip(indexes, tops, items):
            part = split.get(keys)
            if part is None:
                split[keys] = ([j], [e])
            else:
                part[0].append(j)
                part[1].append(e)
        parts = [(keys, idx, ents) for keys, (idx, ents) in split.items()]
    groups: list[tuple[tuple, list[int], dict]] = []
    for keys, idx, ents in parts:
        _refine(nodes, 0, {(): keys}, idx, {(): ents}, groups, slow)
    return groups, slow


def _refine(nodes: list[tuple[str, ...]], start: int, shape: dict, idx: list[int], objects: dict,
            groups: list, slow: list[int]) -> None:
    for at in range(start, len(nodes)):
        node = nodes[at]
        parent = shape.get(node[:-1])
        if parent is None or node[-1] not in parent:
            continue  # absent
        values = list(map(itemgetter(node[-1]), objects[node[:-1]]))
        if set(map(type, values)) != {dict}:  # a non-object sits on a mapped path: the generic way
            keep = [j for j, v in enumerate(values) if v.__class__ is dict]
            slow.extend(idx[j] for j, v in enumerate(values) if v.__class__ is not dict)
            if not keep:
                return
            idx, values = [idx[j] for j in keep], [values[j] for j in keep]
            objects = {k: [v[j] for j in keep] for k, v in objects.items()}
        subs = list(map(tuple, values))
        distinct = set(subs)
        if len(distinct) == 1:
            shape[node] = subs[0]
            objects[node] = values
            continue
        for keys in distinct:  # split, and refine each part from here on
            keep = [j for j, s in enumerate(subs) if s == keys]
            part_objects = {k: [v[j] for j in keep] for k, v in objects.items()}
            part_objects[node] = [values[j] for j in keep]
            _refine(nodes, at + 1, {**shape, node: keys}, [idx[j] for j in keep], part_objects, groups, slow)
        return
    groups.append((tuple(shape.items()), idx, objects))


# --- plans -----------------------------------------------------------------------------------------

@dataclass
class _Feed:
    """Where one column comes from in a shape: ``key`` of the object at ``container``."""

    index: int
    field: Field
    container: tuple[str, ...]
    key: str
    check: Callable[[Field, list], tuple[list[int], list[int]]]
    nullable: bool  # an explicit null is a value here (else a problem: a key or a required field)


class Plan:
    """Everything the generated flatten decides per entity, decided once for a shape."""

    def __init__(self, codec: Codec, shape: tuple):
        self.codec = codec
        self.fields = codec.mapping.fields
        self.objects: dict[tuple[str, ...], tuple] = dict(shape)
        # keys that are not strings: the generic code reports them
        self.usable = all(k.__class__ is str for keys in self.objects.values() for k in keys)
        self.constants: dict[int, Any] = {}  # field index -> column value of a default, or UUID4
        self.popped: dict[tuple[str, ...], set[str]] = {}
        feeds: dict[tuple[str, ...], list[_Feed]] = {}
        keys = set(codec.mapping.primary_key)
        for index, f in enumerate(self.fields):
            source = next((s for s in (f.path, *f.aliases)
                           if s[:-1] in self.objects and s[-1] in self.objects[s[:-1]]), None)
            if source is not None:
                feeds.setdefault(source[:-1], []).append(
                    _Feed(index, f, source[:-1], source[-1], _CHECKS[f.type.family],
                          not (f.required or f.column in keys)))
                self.popped.setdefault(source[:-1], set()).add(source[-1])
            elif f.default is not MISSING:
                self.constants[index] = self._default(f)
            elif f.required or f.column in keys:
                self.usable = False  # a problem to report: the generic way
        # each object's mapped keys are read in one pass over the group
        self.feeds = [(container, group, itemgetter(*(feed.key for feed in group)))
                      for container, group in feeds.items()]
        self.builders: dict[tuple, Callable] = {}
        self.static_residual = any(self._left(container) for container in self.objects)
        self.root_left = bool(self._left(()))  # every entity has a residual
        # the unmapped values, as (container, key): what a residual holds as given
        self.leftovers = [(container, k) for container, keys in self.objects.items() for k in keys
                          if k not in self.popped.get(container, ()) and container + (k,) not in self.objects]

    def _default(self, f: Field) -> Any:
        if f.default == UUID4:
            if f.type.family != "varchar":
                self.usable = False
            return UUID4
        scratch: list = []
        values = [f.default]
        odd, nulls = _CHECKS[f.type.family](f, values)
        column, kept = self.codec.convert(f, f.default, 0, scratch) if odd or nulls else (values[0], MISSING)
        if scratch or kept is not MISSING:
            self.usable = False  # a default whose given form the residual keeps: rare, the generic way
            return None
        return to_form(f.type, column) if odd or nulls else column

    def _left(self, container: tuple[str, ...]) -> list[str]:
        """The keys of a container that its residual copy keeps when no value
        is put back: unmapped ones, and objects that keep something."""
        left = []
        for k in self.objects[container]:
            if k in self.popped.get(container, ()):
                continue
            child = container + (k,)
            if child not in self.objects or not self.objects[child] or self._left(child):
                left.append(k)
        return left

    # --- running -------------------------------------------------------------------------

    def run(self, idx: list[int], objects: dict, start: int) -> tuple["ColumnBatch", list[int]]:
        """The group's columns, and the indexes (into the chunk) that must take
        the generic way after all."""
        n = len(idx)
        columns: list[list | None] = [None] * len(self.fields)
        kept: dict[int, dict[int, Any]] = {}  # field index -> {j: the value the residual keeps}
        bad: set[int] = set()
        for index, value in self.constants.items():
            columns[index] = [GENERATED] * n if value is UUID4 else [value] * n  # keys: made later (see .keys)
        for container, feeds, getter in self.feeds:
            given = objects[container]
            if len(feeds) == 1:
                extracted = [list(map(getter, given))]
            else:
                extracted = list(map(list, zip(*map(getter, given))))
            for feed, values in zip(feeds, extracted):
                self._column(feed, values, idx, start, kept, bad)
                columns[feed.index] = values
        nones = [None] * n
        filled = [nones if column is None else column for column in columns]
        residuals = self._residuals(objects, kept, bad)
        positions = list(map(add, idx, repeat(start)))
        if bad:
            keep_at = [j for j in range(n) if j not in bad]
            filled = [list(map(column.__getitem__, keep_at)) for column in filled]
            residuals = list(map(residuals.__getitem__, keep_at))
            positions = list(map(positions.__getitem__, keep_at))
        return ColumnBatch(self.codec, positions, filled, residuals), sorted(idx[j] for j in bad)

    def _column(self, feed: _Feed, values: list, idx: list[int], start: int, kept: dict, bad: set[int]) -> None:
        """Check one column in bulk; the odd values through ``convert``, as
        the generated code would (an explicit null: a NULL column and the
        null kept in the residual; a key or a required field reports it)."""
        f = feed.field
        odd, nulls = feed.check(f, values)
        if nulls:
            if feed.nullable:
                kept[feed.index] = dict.fromkeys(nulls)
            else:
                bad.update(nulls)
        if odd and f.type.family == "timestamp":
            micros = instants(list(map(values.__getitem__, odd)))
            if micros is not None:  # given with an offset, say: the text is kept
                kept.setdefault(feed.index, {}).update(zip(odd, map(values.__getitem__, odd)))
                values[:] = map(dict(zip(odd, micros)).get, range(len(values)), values)
                return
        convert, scratch = self.codec.convert, []
        for j in odd:
            column, keep = convert(f, values[j], start + idx[j], scratch)
            if scratch:
                scratch.clear()
                bad.add(j)
                continue
            values[j] = to_form(f.type, column)
            if keep is not MISSING:
                kept.setdefault(feed.index, {})[j] = keep

    def _residuals(self, objects: dict, kept: dict[int, dict[int, Any]], bad: set[int]) -> list[str | None]:
        entities = objects[()]
        n = len(entities)
        if not kept and not self.static_residual:
            return [None] * n
        # a field null in every entity puts back the same null everywhere: written
        # into the code, not passed (a residual of such nulls alone is one text)
        nulls = tuple(i for i in sorted(kept) if len(kept[i]) == n and list(kept[i].values()).count(None) == n)
        writers = tuple(i for i in sorted(kept) if i not in nulls)
        checked = not all(plain_json(list(map(itemgetter(k), objects[container])), len(container) + 1)
                          for container, k in self.leftovers)
        build = self.builders.get((writers, nulls, checked))
        if build is None:
            build = self.builders[writers, nulls, checked] = residual_builder(self, writers, nulls, checked)
        if not writers and not self.leftovers:  # the same residual for all
            text = dump_residual_json(build(entities[0]))
            return [text] * n
        if self.root_left or nulls:  # every entity keeps something
            indexes: Any = range(n)
            rows = entities
        else:  # only those that put a value back
            indexes = sorted(set().union(*kept.values()))
            rows = list(map(entities.__getitem__, indexes))
        # per writer, its kept values aligned with the rows (MISSING: none)
        puts = [list(map(kept[i].get, indexes, repeat(MISSING))) for i in writers]
        try:
            texts = list(map("".join, map(_chunks, map(build, rows, *puts), repeat(0))))
        except Exception:  # noqa: BLE001 - some entity's unmapped data is not JSON: find which
            texts = []
            for k, j in enumerate(indexes):
                try:
                    texts.append(dump_residual_json(build(rows[k], *(put[k] for put in puts))))
                except Exception:  # noqa: BLE001 - the generic flatten reports it
                    bad.add(j)
                    texts.append(None)
        if self.root_left or nulls:
            return texts
        return list(map(dict(zip(indexes, texts)).get, range(n)))


_chunks = _dump_residual_fast.chunks  # type: ignore[attr-defined]  # a Decimal raises: the one-by-one path
_column_chunks = dump_column_json.chunks  # type: ignore[attr-defined]
_PLAIN = {str, int, bool, type(None)}
_JSON = _PLAIN | {float, dict, list}


def plain_json(values: list, depth: int) -> bool:
    """True when every value is JSON as it stands (:func:`to_json` would
    return it unchanged and raise nothing): checked a level at a time, each
    level in a few C-level passes. False means only: not shown here (the
    caller then uses ``to_json``). ``depth`` is how deep the values sit."""
    while values:
        kinds = list(map(type, values))
        types = set(kinds)
        if types <= _PLAIN:
            return True
        if not types <= _JSON or depth > MAX_DEPTH // 2:
            return False
        inner: list = []
        if float in types:
            floats = values if types == {float} else compress(values, map(is_, kinds, repeat(float)))
            if not math.isfinite(sum(floats)):
                return False
        if dict in types:  # (a level of mixed values: picked out by their kinds, in C, not in a loop)
            dicts = values if types == {dict} else list(compress(values, map(is_, kinds, repeat(dict))))
            if not set(map(type, chain.from_iterable(dicts))) <= {str}:
                return False
            inner.extend(chain.from_iterable(map(dict.values, dicts)))
        if list in types:
            inner.extend(chain.from_iterable(values if types == {list} else
                                             compress(values, map(is_, kinds, repeat(list)))))
        values, depth = inner, depth + 1
    return True


def residual_builder(plan: Plan, writers: tuple[int, ...], nulls: tuple[int, ...], checked: bool) -> Callable:
    """``build(entity, *kept) -> the residual object`` for one shape, the
    fields ``writers`` that put kept values back (``kept``: one value per
    writer, MISSING for none) and the fields ``nulls`` that put back a null
    in every entity: straight-line code doing what the generated
    flatten does to the copy it keeps (pop the mapped keys, put kept values
    back at their canonical paths in field order, making absent objects on the
    way, drop objects emptied of mapped values), so keys come in its order.
    With ``checked``, the object goes through :func:`to_json` (the unmapped
    values were not shown to be JSON as they stand)."""
    objects, fields = plan.objects, plan.fields
    names: dict[tuple[str, ...], str] = {}
    for container in sorted(objects, key=len):  # the present objects
        names[container] = f"n{len(names)}"
    order = sorted(writers + nulls)  # kept values go back in field order
    made: list[tuple[str, ...]] = []  # absent objects a kept value may need
    for i in order:
        path = fields[i].path
        for depth in range(1, len(path)):
            if path[:depth] not in names:
                names[path[:depth]] = f"n{len(names)}"
                made.append(path[:depth])
    # a present object matters if something may stay in it: unmapped data, an
    # object empty from the start, or a value put back below it
    written = {fields[i].path[:depth] for i in order for depth in range(len(fields[i].path))}
    needed = [c for c in sorted(objects, key=len) if not c or c in written or c[-1] in plan._left(c[:-1])]
    out = _Source()
    out(f"def build(e{''.join(f', k{i}' for i in writers)}):")
    out.indent()
    for container in needed[1:]:  # the given objects, parents first
        parent = "e" if len(container) == 1 else "x" + names[container[:-1]][1:]
        out(f"x{names[container][1:]} = {parent}[{container[-1]!r}]")
    for container in reversed(needed):  # their copies, children first
        given = "e" if not container else "x" + names[container][1:]
        items = []
        for k in objects[container]:
            if k in plan.popped.get(container, ()):
                continue
            child = container + (k,)
            if child not in objects:
                items.append(f"{k!r}: {given}[{k!r}]")
            elif child in needed:
                items.append(f"{k!r}: {names[child]}")
            # else: an object only mapped values were in: emptied, so dropped
        out(f"{names[container]} = {{{', '.join(items)}}}")
    for node in made:
        out(f"{names[node]} = MISSING")
    for i in order:
        path = fields[i].path
        out(f"if k{i} is not MISSING:" if i in writers else "if True:  # null everywhere")
        out.indent()
        for depth in range(1, len(path)):
            node = path[:depth]
            if node not in objects:
                out(f"if {names[node]} is MISSING:")
                out(f"    {names[node]} = {names[node[:-1]]}[{node[-1]!r}] = {{}}")
        out(f"{names[path[:-1]]}[{path[-1]!r}] = {f'k{i}' if i in writers else 'None'}")
        out.dedent()
    for container in reversed(needed):  # deepest first
        if container and objects[container] and not plan._left(container):
            out(f"if not {names[container]}:")
            out(f"    del {names[container[:-1]]}[{container[-1]!r}]")
    out("return TO_JSON(n0)" if checked else "return n0")
    source = out.text()
    scope = {"MISSING": MISSING, "TO_JSON": to_json}
    exec(compile(source, f"<healthsim-state residual {plan.codec.mapping.entity}>", "exec"), scope)
    build = scope["build"]
    build.source = source  # type: ignore[attr-defined]
    return build


# --- batches ------------------------------------------------------------------------------------------

@dataclass
class ColumnBatch:
    """Entities of one type as columns: ``positions``, one list per field (in
    the field's form, see :data:`FORMS`) and ``residuals``."""

    codec: Codec
    positions: list[int]
    columns: list[list]
    residuals: list[str | None]

    def __len__(self) -> int:
        return len(self.positions)

    def rows(self) -> list[tuple]:
        """The same entities as rows ``(position, col_0, ..., residual)``."""
        fields = self.codec.mapping.fields
        series = [from_form(f.type, column) for f, column in zip(fields, self.columns)]
        return list(zip(self.positions, *series, self.residuals))

    @staticmethod
    def concat(codec: Codec, batches: list["ColumnBatch"]) -> "ColumnBatch | None":
        if not batches:
            return None
        if len(batches) == 1:
            return batches[0]
        positions = [p for b in batches for p in b.positions]
        columns = [[v for b in batches for v in b.columns[i]] for i in range(len(codec.mapping.fields))]
        residuals = [r for b in batches for r in b.residuals]
        return ColumnBatch(codec, positions, columns, residuals)


def plan_for(codec: Codec, shape: tuple) -> Plan | None:
    """The type's plan for a shape (made on first use), or None where the
    generic flatten must serve it."""
    plans = codec.cache.setdefault("plans", {})
    plan = plans.get(shape)
    if plan is None:
        if len(plans) >= MAX_PLANS:
            return None
        plan = plans[shape] = Plan(codec, shape)
    return plan if plan.usable else None


def flatten_columns(codec: Codec, items: list, start: int, *, min_group: int | None = None
                    ) -> tuple[ColumnBatch | None, list[int]]:
    """The chunk ``items`` (positions from ``start``) as columns, and the
    indexes into ``items`` that must go through the generated flatten
    (groups smaller than ``min_group``, default :data:`MIN_GROUP`, among them)."""
    min_group = MIN_GROUP if min_group is None else min_group
    nodes = codec.cache.get("containers")
    if nodes is None:
        nodes = codec.cache["containers"] = containers(codec)
    groups, slow = group_by_shape(items, nodes)
    batches = []
    for shape, idx, objects in groups:
        plan = plan_for(codec, shape) if len(idx) >= min_group else None
        if plan is None:
            slow.extend(idx)
            continue
        batch, bad = plan.run(idx, objects, start)
        slow.extend(bad)
        if len(batch):
            batches.append(batch)
    slow.sort()
    return ColumnBatch.concat(codec, batches), slow
