"""Generated readers: the readers of one declared resource as one function.

The import's readers (:mod:`.readers`) are one closure an element, each
walking its path from the resource's root: a vital sign's seven constants walk
``category[0].coding[0]`` seven times (two slice look-ups each), a claim
line's twenty elements find their ``extension`` slices anew. This module
writes, once a declared resource is compiled (:mod:`.plan`), the source of
one function that runs the same readers in the same order on one resource:

- the ``field`` and ``value`` readers are written inline (what
  :func:`.readers._field_reader` and :func:`.readers._value_reader` do, the
  field's uncommon work -- value maps, base64, JSON, kept date-times -- left to
  its :func:`.readers._field_parts` ``take``);
- a coding, quantity or reference reader's peek is written inline, and what
  it finds passed to the reader's ``take`` (see ``_with_take`` in
  :mod:`.readers`); children and ``also:`` forms readers are called as they are;
- each node on the way (``category[0]``, its ``coding[0]``) is found once and
  held in a local while nothing may have moved it: a reader that takes an
  element out forgets the nodes at and below it (a coding reader: below its
  parent), a reader called as it is forgets them all. Slices are found by
  :func:`.paths._slice`, as the readers find them (its memo and its notes of
  moved slices are the same).

So the general readers and the generated function make the same entities,
leftovers and ``_fhir`` records (tests/test_fhir_generated_readers.py checks
it on every built-in mapping); the errors are the readers' own.
"""

from __future__ import annotations

from typing import Any, Callable

from ..mapping import fhir_section as d
from .paths import _getter, _set
from .paths import _PathSource as _Source
from .primitives import _condition, _converted_test, _fits
from .readers import Reader, _field_parts


def generated_reader(pairs: list[tuple[d.Element, Reader]], mapping, siblings: tuple[d.Element, ...],
                     name: str) -> Reader:
    """One function running ``pairs``' readers (in that order) on a resource."""
    source = _Source(names={"_fits": _fits, "_set": _set})
    for element, reader in pairs:
        if element.kind == "field" and not element.also:
            _field(source, element, mapping, siblings)
        elif element.kind == "field" and hasattr(reader, "other_forms"):
            _field_with_forms(source, element, mapping, siblings, reader)
        elif element.kind == "value":
            _value(source, element, mapping, siblings)
        elif getattr(reader, "inline", False) and not element.also:
            _peek_and_take(source, element, reader)
        else:
            call = source.name("read", reader)
            source.emit(f"{call}(R, E, context)")
            source.held.clear()
    lines = ["def read_all(R, E, context):", *(source.lines or ["    pass"])]
    exec(compile("\n".join(lines), f"<fhir read {name}>", "exec"), source.names)
    read_all = source.names["read_all"]
    read_all.source = "\n".join(lines)  # type: ignore[attr-defined]
    return read_all


def _field(source: _Source, element: d.Element, mapping, siblings: tuple[d.Element, ...]) -> None:
    """:func:`.readers._field_reader`, inline."""
    parts = _field_parts(element, mapping, siblings)
    steps = element.steps
    holder = source.holder(steps)
    value = source.local()
    source.found(steps, holder, value, none_missing=False)
    source.emit(f"if {value} is MISSING or {value} is None:")
    if parts.twinned:
        get, path = source.name("get", parts.get), source.name("path", element.path)
        source.emit(f"if {get}(E) is not None:", f"    context.omitted.append({path})", indent="        ")
    else:
        source.emit("pass", indent="        ")
    source.emit("else:")
    if not parts.plain:
        take = source.name("take", parts.take)
        source.emit(f"{take}(R, E, context, {holder}, {value})", indent="        ")
        if parts.original_steps is not None:
            source.moved(parts.original_steps)  # a value map's original spelling, taken out beside it
    else:
        body = []
        if parts.valid is not None:
            valid, el, primitive = (source.name("valid", parts.valid), source.name("element", element),
                                    source.name("primitive", parts.primitive))
            body += [f"if not {valid}({value}):", f"    raise context.invalid({el}, {value}, {primitive})"]
        field = source.name("field", parts.field)
        last, path = steps[-1], parts.field.path
        fast = parts.field.type.fast_test  # _fits's own first test, over v (column_types): no call when it holds
        if fast:
            body += [f"v = {value}", f"if not ({fast}):", f"    {value} = _fits({field}, {value})"]
        else:
            body.append(f"{value} = _fits({field}, {value})")
        body.append(f"if {value} is not MISSING:")
        take_out = f"{holder}.pop({last.key!r}, None)" if last.index is None else f"{holder}[{last.index}] = None"
        body.append("    " + take_out)
        if len(path) == 1:
            body.append(f"    E[{path[0]!r}] = {value}")
        else:
            body.append(f"    _set(E, {source.name('path', path)}, {value})")
        source.emit(*body, indent="        ")
    source.moved(steps)


def _field_with_forms(source: _Source, element: d.Element, mapping, siblings: tuple[d.Element, ...],
                      reader: Reader) -> None:
    """:func:`.forms.forms_reader`: the declared form inline, the other forms
    by the reader's ``other_forms`` when the declared was not read."""
    _field(source, element, mapping, siblings)
    steps = element.steps
    found = source.local()
    source.found(steps, source.holder(steps), found, none_missing=True)
    read = _column(source, mapping.field(element.field).path)
    source.emit(f"if not ({read} is not None or {found} not in (MISSING, None)):",
                f"    {source.name('other_forms', reader.other_forms)}(R, E, context)")  # type: ignore[attr-defined]
    for _, other in element.also:
        source.moved(other)


def _peek_and_take(source: _Source, element: d.Element, reader: Reader) -> None:
    """A coding, quantity or reference reader: its peek inline, then its ``take``
    (which changes nothing above the element: held nodes above it stay)."""
    steps = reader.peeks  # type: ignore[attr-defined]
    found = source.local()
    source.found(steps, source.holder(steps), found, none_missing=True)
    source.emit(f"{source.name('take', reader.take)}(R, E, context, {found})")  # type: ignore[attr-defined]
    if element.kind == "coding":  # a coding of the list (any), or the bare Coding, replaced
        source.moved(steps[:-1], below=True)
    else:  # taken out of the reference or quantity, or the marker in its place
        source.moved(element.steps)


def _value(source: _Source, element: d.Element, mapping, siblings: tuple[d.Element, ...]) -> None:
    """:func:`.readers._value_reader`, inline (it takes nothing out: the held nodes stay)."""
    steps = element.steps
    holder = source.holder(steps)
    found = source.local()
    source.found(steps, holder, found, none_missing=True)
    constant, last, path = (source.name("C", element.value), source.name("last", steps[-1]),
                            source.name("path", element.path))
    test = f"{found} == {constant}"
    wanted = _wanted(source, element, mapping, siblings)
    if wanted:
        test += f" and {wanted}"
    source.emit(f"if {test}:", f"    context.drops.append(({holder}, {last}))",
                f"elif {found} is MISSING:", f"    context.omitted.append({path})")


def _wanted(source: _Source, element: d.Element, mapping, siblings: tuple[d.Element, ...]) -> str:
    """The expression of a constant's ``with:``/``without:`` test over ``E``
    (:func:`.primitives._condition`), inline where it is a column's value
    converted as its sibling writes it; "" without a test."""
    wanted = _condition(element, mapping, siblings)
    if wanted is None:
        return ""
    if not element.with_field:  # without: (with: decides when both are given, as in _condition)
        return f"{_column(source, mapping.field(element.without_field).path)} is None"
    convert = _converted_test(element.with_field, mapping, siblings)
    if convert is None:
        return f"{source.name('wanted', wanted)}(E)"
    value = _column(source, mapping.field(element.with_field).path)
    return f"((v := {value}) is not None and {source.name('convert', convert)}(v) is not None)"


def _column(source: _Source, path: tuple[str, ...]) -> str:
    """The expression of a column's value in ``E`` (:func:`.paths._getter`)."""
    if len(path) == 1:
        return f"E.get({path[0]!r})"
    return f"{source.name('get', _getter(path))}(E)"


def readers_in_order(elements: tuple[d.Element, ...], readers: list[Reader]) -> list[tuple[d.Element, Reader]]:
    """Elements with their readers, the constants' last: a slice is found by its
    constants, so they are taken out only once every field of the slice was read."""
    pairs = list(zip(elements, readers))
    return sorted(pairs, key=lambda pair: pair[0].kind == "value")


def general_reader(readers: list[Reader]) -> Callable[[dict, dict, Any], None]:
    """The readers one after the other: what a generated reader does, by the general closures."""
    def read_all(resource: dict, entity: dict, context: Any) -> None:
        for read in readers:
            read(resource, entity, context)
    return read_all
