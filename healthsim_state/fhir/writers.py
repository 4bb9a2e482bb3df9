"""The export direction: an entity's elements written into R4 resources.

One writer a declared element, made once when an entity type's plan is
compiled (:mod:`.plan`), called for every entity: ``write(entity, made,
context)`` puts the element's value at its path in the resource being made.
A value its element cannot hold goes to the resource's unfit extension
(:data:`.primitives.UNFIT`), so an import gives it back. :func:`to_resources`
makes an entity's resources; :func:`_generated_writer` writes the plain
elements of one resource inline, in one generated function.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterator, Protocol

from ..mapping import fhir_section as d
from ..mapping.model import Field, Mapping
from ..values import MISSING
from .ids import id_prefix as _id_prefix
from .ids import resource_id as _resource_id
from .ids import slot_id as _slot_id
from .paths import (_PADDING, _coding_shape, _compact, _field_and_getter, _getter, _merge, _original_steps, _put,
                    _put_lines, _put_slices_back, _putter, _room_at)
from .primitives import (ABSENT_KEY, _FHIR_CODE, _FHIR_STRING, ORIGINAL_VALUE, REFERENCE_FIELDS, UCUM, UNFIT, _absent,
                         _as_decimal, _backward, _condition, _converted_test, _converter, _day_of, _day_taken,
                         _came_without, _fhir_value_of, _fits, _identifier, _keeps_time, _lookup_system,
                         _primitive_of, _written_time)

RESERVED_KEY = d.RESERVED_KEY


class ExportRefs(Protocol):
    """Where an export finds a reference's target (:class:`.references.ExportRefs`)."""

    def reference(self, entity_type: str, field: str, value: Any) -> str | None: ...


class _Export:
    """What one to_resources call shares with its element writers."""

    __slots__ = ("refs", "scenario_id", "children", "kept", "key", "unfit", "record", "ids", "prefix")

    def __init__(self, refs, scenario_id, children, kept, key):
        self.refs, self.scenario_id, self.children, self.kept, self.key = refs, scenario_id, children, kept, key
        self.unfit: dict[str, Any] = {}  # dotted path -> a value its element cannot hold (see UNFIT)
        self.record: dict | None = None  # what an import kept of the resource being made
        self.ids: dict[str, str] = {}  # slot -> id, made once a call (hasMember names them again)
        self.prefix: str | None = None  # what the entity's ids share (ids.id_prefix), made at its first

    def id_of(self, plan, entity: dict, slot: str) -> str:
        found = self.ids.get(slot)
        if found is None:
            if entity.get(RESERVED_KEY):  # an imported entity keeps the ids it came with
                found = plan.slot_id(entity, slot, self.scenario_id, self.key)
            else:  # what plan.slot_id makes of an entity that kept none
                if self.prefix is None:
                    self.prefix = _id_prefix(self.scenario_id, plan.entity_type, self.key)
                found = _slot_id(self.prefix, slot)
            self.ids[slot] = found
        return found


Writer = Callable[[dict, dict, _Export], None]


# --- an entity's resources --------------------------------------------------------------------

def to_resources(plan, entity: dict, scenario_id: str, refs: ExportRefs,
                 children: dict[str, list[dict]] | None = None) -> list[dict]:
    key = plan.key_of(entity)
    kept = _kept_of(entity)
    context = _Export(refs, scenario_id, children or {}, kept, key)
    out = []
    for resource in plan.resources:
        if _makes(resource, entity, kept):
            out.append(_make(plan, resource, entity, context))
    return out


def _kept_of(entity: dict) -> dict | None:
    """What an entity that came from FHIR kept of its resources (slot -> record), or None."""
    kept = entity.get(RESERVED_KEY)
    return kept if isinstance(kept, dict) else None


def _makes(resource, entity: dict, kept: dict | None) -> bool:
    """Does :func:`to_resources` make ``resource`` of the entity? An entity that
    came from FHIR gets back what came, and the measured values edited in
    since; not a panel it never had."""
    if kept and resource.slot in kept:
        return True
    if kept and not resource.whens:
        return False
    return not (resource.whens and resource.unwanted(entity))


def resource_ids(plan, entity: dict, scenario_id: str) -> Iterator[str]:
    """``Type/id`` of each resource :func:`to_resources` makes of the entity,
    without making them."""
    kept = _kept_of(entity)
    key = plan.key_of(entity)
    for resource in plan.resources:
        if _makes(resource, entity, kept):
            yield f"{resource.resource_type}/{plan.slot_id(entity, resource.slot, scenario_id, key)}"


def _make(plan, resource, entity: dict, context: _Export) -> dict:
    record = context.kept.get(resource.slot) if context.kept else None
    record = record if isinstance(record, dict) else None
    made: dict[str, Any] = {"resourceType": resource.resource_type,
                            "id": context.id_of(plan, entity, resource.slot)}
    if resource.decl.profile and not (record and record.get("profile") is False):
        made["meta"] = {"profile": [resource.decl.profile]}
    if not (record and record.get("keyed_by_id")):
        made["identifier"] = [_identifier(plan.system, context.key)]
    context.unfit = {}
    context.record = record
    holed = _PADDING.holed = []
    omit = record.get("omit") if record else None
    if omit:
        for write, path in zip(resource.writers, resource.paths):
            if path not in omit:
                write(entity, made, context)
    else:
        resource.write_all(entity, made, context)
    if context.unfit:
        _keep_unfit(made, context.unfit)
    moved = bool(record and record.get("order"))
    if moved:  # holes where an unknown item came: filled by the kept one, else dropped
        _put_slices_back(made, record["order"])
    if record and isinstance(record.get("extra"), dict):
        made = _merge(made, record["extra"])  # slices at the places they came: kept items go back to theirs
        if holed or moved:
            made = _compact(made)
    elif moved:
        made = _compact(made)
    else:
        for items in holed:
            items[:] = [item for item in items if item is not None]
    return made


# --- element writers ----------------------------------------------------------------------------

def _field_writer(element, mapping, plan, decl, siblings=()):
    put = _putter(element.steps)
    field = mapping.field(element.field)
    get, steps, dotted = _getter(field.path), element.steps, field.dotted
    loose = not field.strict  # a non-strict field may hold what its type does not: keep that as given
    dense = bool(steps[-1].index)  # a later item of a list of primitives (line[1], given[1])
    strict_twin = dataclasses.replace(field, strict=True)
    primitive = _primitive_of(element, field)
    convert = _converter(primitive, field)
    keeps_time = _keeps_time(primitive, field)  # an imported date-time goes back as written (see TIMES_KEY)
    path = element.path
    forward = dict(element.values)
    backward = _backward(element.values)
    original_steps = _original_steps(steps)
    wanted = _condition(element, mapping, siblings)

    def write(entity: dict, node: dict, context: _Export) -> None:
        value = get(entity)
        if value is None or (wanted is not None and not wanted(entity)):
            return
        if forward:
            mapped = forward.get(value) if isinstance(value, str) else None
            if mapped is None:
                if not isinstance(value, str) or value not in backward:
                    context.unfit[dotted] = value
                    return
                mapped = value
            if backward[mapped] != value and original_steps is not None:
                _put(node, original_steps, {"extension": [{"url": ORIGINAL_VALUE, "valueString": value}]})
            value = mapped
        else:
            written = _written_time(context.record, path, value) if keeps_time else None
            converted = convert(value) if written is None else written
            if converted is None:
                context.unfit[dotted] = value
                return
            if loose and written is None and (converted != value or keeps_time and _day_of(converted) is not None
                                              and _day_taken(context.record, path)) \
                    and _fits(strict_twin, value) is MISSING:
                context.unfit[dotted] = value  # written as FHIR can, kept as given (a time: an import takes its day)
            value = converted
        if dense and not _room_at(node, steps):
            context.unfit[dotted] = get(entity)  # given[1] without given[0] would read back as given[0]
            return
        put(node, value)
    return write


def _value_writer(element, mapping, plan, decl, siblings=()):
    put = _putter(element.steps)
    constant = element.value
    wanted = _condition(element, mapping, siblings)

    def write(entity: dict, node: dict, context: _Export) -> None:
        if wanted is None or wanted(entity):
            put(node, constant)
    return write


def _writes_absent(element: d.Element, context: _Export) -> bool:
    """Whether a missing value goes out as the element's data-absent marker:
    always for an entity of ours (no import record); for an imported one only
    where its resource came with the marker (else it came without the element)."""
    record = context.record
    return record is None or element.path in record.get(ABSENT_KEY, ())


def _coding_writer(element, mapping, plan, decl, siblings=()):
    put = _putter(element.steps)
    c = element.coding
    absent = element.absent
    code_field, get_code = _field_and_getter(mapping, c.code)
    display_field, get_display = _field_and_getter(mapping, c.display)
    system_field, get_system = _field_and_getter(mapping, c.system_field)
    systems = dict(c.systems)
    forward = dict(c.values)
    _, single, _ = _coding_shape(element)
    path = element.path

    def keep_companions(entity: dict, context: _Export) -> None:
        """No coding is written: its display and system columns go to the unfit extension."""
        for companion in (display_field, system_field):
            if companion is not None:
                value = _getter(companion.path)(entity)
                if value is not None:
                    context.unfit[companion.dotted] = value

    def write(entity: dict, node: dict, context: _Export) -> None:
        code = get_code(entity)
        if not isinstance(code, str) or not code:
            if code is not None:
                context.unfit[code_field.dotted] = code
            keep_companions(entity, context)
            if absent and _writes_absent(element, context):
                put(node, _absent(absent))
            return
        coding: dict[str, Any] = {}
        system = c.system if get_system is None else systems.get(get_system(entity))
        if system:
            coding["system"] = system
        else:  # a code of a system the map does not know: written without one, kept as given
            context.unfit[code_field.dotted] = get_code(entity)
            keep_companions(entity, context)
        code = forward.get(code, code)
        if not _is_code(code):
            context.unfit[code_field.dotted] = get_code(entity)
            keep_companions(entity, context)
            if absent and _writes_absent(element, context):
                put(node, _absent(absent))
            return
        coding["code"] = code
        if get_display is not None and not (context.record and "display" in _came_without(context.record, path)):
            display = get_display(entity)
            if isinstance(display, str) and (display and display.isprintable() or _FHIR_STRING.match(display)):
                coding["display"] = display
            elif display is not None:
                context.unfit[display_field.dotted] = display
        put(node, coding if single else {"coding": [coding]})
    return write


def _quantity_writer(element, mapping, plan, decl, siblings=()):
    put = _putter(element.steps)
    q = element.quantity
    absent = element.absent
    value_field, get_value = _field_and_getter(mapping, q.value)
    unit_field, get_unit = _field_and_getter(mapping, q.unit_field)
    convert = _as_decimal  # Quantity.value is a decimal whatever the column (as: integer only reads back)
    path = element.path

    def write(entity: dict, node: dict, context: _Export) -> None:
        given = get_value(entity)
        value = given
        if isinstance(value, dict):  # {"value": 92, "unit": "bpm"}, as PatientSim writes some vitals
            value = value.get("value")
        value = convert(value) if value is not None else None
        if given is not None and (value is None or value.__class__ is not given.__class__ or value != given):
            context.unfit[value_field.dotted] = given
        unit = q.unit if get_unit is None else get_unit(entity)
        if value is None:
            if get_unit is not None and unit is not None:
                context.unfit[unit_field.dotted] = unit
            if absent and _writes_absent(element, context):
                put(node, _absent(absent))
            return
        quantity: dict[str, Any] = {"value": value}
        if isinstance(unit, str) and _is_code(unit):
            quantity.update(unit=unit, system=UCUM, code=unit)
            if context.record:
                _leave_out(quantity, _came_without(context.record, path), get_unit is not None)
        elif get_unit is not None and unit is not None:
            context.unfit[unit_field.dotted] = unit
        put(node, quantity)
    return write


def _leave_out(quantity: dict, parts: Any, unit_column: bool) -> None:
    """The parts an imported Quantity came without taken out of the one written
    (see WITHOUT_KEY), unless that leaves no unit while a column holds one: the
    quantity came without unit and code, so the unit was set since."""
    if unit_column and "unit" in parts and "code" in parts:
        return
    for part in parts:
        quantity.pop(part, None)


def _reference_writer(element, mapping, plan, decl, siblings=()):
    r = element.reference
    if r.target is None:
        return _slot_reference_writer(element, plan)
    put = _putter(element.steps)
    absent = element.absent
    mapper = plan.mapper
    target_mapping = mapper.mapping(r.target)
    target_key = target_mapping.primary_key
    pairs = [(mapping.field(own), target_mapping.field(theirs)) for own, theirs in r.fields]
    own_paths = {theirs.column: own.path for own, theirs in pairs}
    own_columns = {theirs.column: own.column for own, theirs in pairs}
    # Everything a call needs of a pair, made once: (getter, target field, its dotted path,
    # the own column named, the own dotted path an unfit value is kept under).
    lookups = [(_getter(own.path), theirs, theirs.dotted, own_columns[theirs.column],
                ".".join(own_paths[theirs.column])) for own, theirs in pairs]
    every_column = [own.column for own, _ in pairs]
    first_column = every_column[:1]
    target, target_slot = r.target, r.slot
    fhir_string = _FHIR_STRING.match  # after the printable test (the usual), as _as_string

    def write(entity: dict, node: dict, context: _Export) -> None:
        first = None
        found = None
        named = []  # the own columns holding a value, in declared order
        for get, theirs, dotted, column, own_path in lookups:
            value = get(entity)
            if value is None:
                continue
            named.append(column)
            if isinstance(value, str) and not (value and value.isprintable() or fhir_string(value)):
                # No resource holds it (FHIR strings cannot), so no target gives it back.
                context.unfit[own_path] = value
            if first is None:
                first = (theirs, value)
            if not found:
                found = context.refs.reference(target, dotted, value)
                if found and target_slot is not None:
                    found = _slot_reference_of(mapper, context, target, theirs, value, found, target_slot)
        if first is None:
            if absent and _writes_absent(element, context):
                put(node, _absent(absent))
            return
        if found:
            ours = context.record is None or not context.record.get("keyed_by_id")  # as _make's identifier
            put(node, _resolved(found, named, every_column if ours else first_column))
            return
        # Not in the export: a logical reference, which still says what it meant.
        theirs, value = first
        put(node, {"identifier": _identifier(_lookup_system(r.target, theirs.column, target_key), (value,))})
    return write


def _resolved(found: str, named: list[str], unsigned: list[str]) -> dict:
    """A resolved reference; with the columns it was named by when they are not
    ``unsigned``, what an import fills without a sign (see REFERENCE_FIELDS)."""
    if named == unsigned:
        return {"reference": found}
    return {"reference": found, "extension": [{"url": REFERENCE_FIELDS, "valueString": " ".join(named)}]}


def _slot_reference_writer(element, plan):
    put = _putter(element.steps)
    slot = element.reference.slot

    def write(entity: dict, node: dict, context: _Export) -> None:
        target = plan.by_slot[slot]
        if target.whens and target.unwanted(entity):
            return  # that resource is not made for this entity
        put(node, {"reference": f"{target.resource_type}/{context.id_of(plan, entity, slot)}"})
    return write


def _children_writer(element, child_plan, decl):
    """Folded children (claim_line in Claim.item): one item each, in the
    order the export gives them (``context.children``)."""
    put = _putter(element.steps)
    child_type, slot = element.children.entity_type, decl.slot

    def write(entity: dict, node: dict, context: _Export) -> None:
        kids = context.children.get(child_type)
        if not kids:
            return
        items = [child_plan.item(kid, context, slot) for kid in kids]
        put(node, items)
    return write


def _slot_reference_of(mapper, context: _Export, entity_type: str, theirs: Field, value: Any, primary: str,
                       slot: str) -> str | None:
    """A reference to another resource (``slot``) of the entity ``primary`` points at."""
    exact = getattr(context.refs, "slot_reference", None)
    if exact is not None:
        return exact(entity_type, theirs.dotted, value, slot)
    target = mapper.plan(entity_type)
    if target.by_slot[slot] is target.resources[0]:
        return primary
    if tuple(target.mapping.primary_key) != (theirs.column,):
        return None
    return f"{target.by_slot[slot].resource_type}/{_resource_id(context.scenario_id, entity_type, (value,), slot)}"


def _is_code(text: str) -> bool:
    """``_FHIR_CODE`` matches: printable text without a space (the usual code) is one
    token of no whitespace, told by tests before the expression."""
    return bool(text and text.isprintable() and " " not in text or _FHIR_CODE.match(text))


ELEMENT_WRITERS = {"field": _field_writer, "value": _value_writer, "coding": _coding_writer,
                   "quantity": _quantity_writer, "reference": _reference_writer}


# --- conditions, the unfit extension, the generated writer -----------------------------------


def _keep_unfit(node: dict, unfit: dict[str, Any]) -> None:
    text = json.dumps(unfit, sort_keys=True, separators=(",", ":"))  # ASCII: any string is a FHIR string
    node.setdefault("extension", []).append({"url": UNFIT, "valueString": text})


def _generated_writer(elements: tuple[d.Element, ...], writers: list[Writer], mapping: Mapping, name: str) -> Writer:
    """Every element's writer of one resource (or of a folded child's item:
    ``elements`` are the siblings a ``with:`` names) as one generated function: the
    plain elements (a strict field without a value map or condition, a constant
    without a condition) written inline, the others through their closures. The
    same output as calling the closures in order, without a call per element."""
    lines = ["def write_all(entity, made, context):", "    unfit = context.unfit"]
    namespace: dict[str, Any] = {"MISSING": MISSING}
    trees = _constant_trees(elements)
    for i, (element, writer) in enumerate(zip(elements, writers)):
        if i in trees:
            if trees[i] is not None:
                key, literal = trees[i]
                lines.append(f"    made[{key!r}] = {literal}")
            continue
        field = mapping.field(element.field) if element.kind == "field" else None
        plain_field = (field is not None and not element.values and element.with_field is None
                       and element.without_field is None and field.strict and not element.steps[-1].index
                       and not _keeps_time(_primitive_of(element, field), field))  # a kept time: see TIMES_KEY
        plain_constant = element.kind == "value" and element.with_field is None and element.without_field is None
        if plain_constant:
            namespace[f"K{i}"] = element.value
            lines.append(_inline_put(element.steps, f"K{i}", i, namespace, "    "))
        elif element.kind == "value" and element.without_field is None:
            # A slice's constants share one test of their column (made once a call).
            test = f"with_{element.with_field}"
            if test not in namespace:
                convert = _converted_test(element.with_field, mapping, elements)
                if convert is None:
                    namespace[test] = _fhir_value_of(element.with_field, mapping, elements)
                    lines.append(f"    {test}_ = {test}(entity) is not None")
                else:  # _fhir_value_of's test inline: the value, converted
                    namespace[test] = convert
                    lines += _inline_get(mapping.field(element.with_field).path, "v", "    ")
                    lines.append(f"    {test}_ = v is not None and {test}(v) is not None")
            namespace[f"K{i}"] = element.value
            lines += [f"    if {test}_:", _inline_put(element.steps, f"K{i}", i, namespace, "        ")]
        elif plain_field and element.also:
            # Other forms (.forms): one only where the entity's record names it; else as declared.
            namespace[f"W{i}"] = writer
            lines += ["    if not context.record:", *_inline_field(element, mapping, i, namespace, "        "),
                      "    else:", f"        W{i}(entity, made, context)"]
        elif plain_field:
            lines += _inline_field(element, mapping, i, namespace, "    ")
        else:
            namespace[f"W{i}"] = writer
            lines.append(f"    W{i}(entity, made, context)")
    source = "\n".join(lines)
    exec(compile(source, f"<fhir write {mapping.entity} {name}>", "exec"), namespace)
    return namespace["write_all"]


_PREWRITTEN = frozenset({"resourceType", "id", "meta", "identifier"})  # _make writes these before the elements


def _constant_trees(elements: tuple[d.Element, ...]) -> dict[int, tuple[str, str] | None]:
    """The top-level elements only unconditional constants write (an
    Observation's ``category``, ``code``), each as one literal: a fresh tree
    an evaluation, built at once rather than by a put a constant. Returns
    element index -> (key, literal) at the first constant of each such key,
    None at its others; a key anything else may write (a field, an ``also:``
    form, an original spelling ``_key``), a tree with a hole, or a value
    without a literal are left to the element writers."""
    groups: dict[str, list[int]] = {}
    others: set[str] = set()
    for i, element in enumerate(elements):
        top = element.steps[0].key
        if element.kind == "value" and element.with_field is None and element.without_field is None:
            groups.setdefault(top, []).append(i)
        else:
            others.update({top, "_" + top}, (steps[0].key for _, steps in element.also))
    found: dict[int, tuple[str, str] | None] = {}
    for top, indexes in groups.items():
        if top in others or top in _PREWRITTEN or top.startswith("_") or (
                len(indexes) == 1 and len(elements[indexes[0]].steps) == 1):
            continue
        literal = _tree_literal(top, [elements[i] for i in indexes])
        if literal is not None:
            found.update(dict.fromkeys(indexes[1:]))
            found[indexes[0]] = (top, literal)
    return found


def _tree_literal(top: str, constants: list[d.Element]) -> str | None:
    """Python source making the tree the constants put at ``top`` (None: no literal says it)."""
    saved = getattr(_PADDING, "holed", None)
    _PADDING.holed = []
    try:
        node: dict[str, Any] = {}
        for element in constants:
            _put(node, element.steps, element.value)
        holed = _PADDING.holed
    finally:
        _PADDING.holed = saved
    return None if holed else _literal(node[top])


def _literal(value: Any) -> str | None:
    """Source evaluating to a fresh copy of ``value`` (JSON-like constants only)."""
    if value is None or value.__class__ in (str, int, bool) or (value.__class__ is float and math.isfinite(value)):
        return None if value is None else repr(value)  # None: a hole, or no value
    if value.__class__ is dict and all(key.__class__ is str for key in value):
        parts = [(repr(key), _literal(item)) for key, item in value.items()]
        return None if any(text is None for _, text in parts) else "{" + ", ".join(f"{k}: {v}" for k, v in parts) + "}"
    if value.__class__ is list:
        parts = [_literal(item) for item in value]
        return None if any(text is None for text in parts) else "[" + ", ".join(parts) + "]"
    return None


def _inline_field(element: d.Element, mapping: Mapping, i: int, namespace: dict, indent: str) -> list[str]:
    """A plain field's writer inline: its value converted, else kept in the unfit extension."""
    field = mapping.field(element.field)
    namespace[f"C{i}"] = _converter(_primitive_of(element, field), field)
    return [*_inline_get(field.path, "v", indent),
            f"{indent}if v is not None:",
            f"{indent}    c = C{i}(v)",
            f"{indent}    if c is None:",
            f"{indent}        unfit[{field.dotted!r}] = v",
            f"{indent}    else:",
            _inline_put(element.steps, "c", i, namespace, indent + "        ")]


def _inline_get(path: tuple[str, ...], name: str, indent: str) -> list[str]:
    lines = [f"{indent}{name} = entity.get({path[0]!r})"]
    for key in path[1:]:
        lines.append(f"{indent}{name} = {name}.get({key!r}) if isinstance({name}, dict) else None")
    return lines


def _inline_put(steps: tuple[d.Step, ...], value: str, i: int, namespace: dict, indent: str) -> str:
    """``_put(made, steps, value)`` inline (the putter's straight-line code, without its call)."""
    if len(steps) == 1 and steps[0].index is None:
        return f"{indent}made[{steps[0].key!r}] = {value}"
    namespace["_PADDING"] = _PADDING
    return "\n".join([f"{indent}n = made", *_put_lines(steps, "n", value, indent)])

