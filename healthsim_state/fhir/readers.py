"""The import direction: R4 resources read back into entities.

One reader a declared element, made with its writer (:mod:`.plan`), called
for every resource: ``read(resource, entity, context)`` takes the element's
value out of a copy of the resource and sets the entity's column; what no
reader takes is kept under ``_fhir`` (:data:`RESERVED_KEY`) and merged back
by an export. :class:`ResourceReader` chooses the declaration that reads a
resource (by resource type, ``match`` constants, ``own`` identifiers) and
looks up the values a reference's target holds.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Protocol

from ..errors import FhirInputError
from ..mapping import fhir_section as d
from ..values import MISSING
from .paths import (_HASHABLE, _PARENTS, _SLICES, _coding_shape, _columns_of, _constants_test, _copy, _drop,
                    _everywhere_function, _field_and_getter, _getter, _original_steps, _peek, _peeker, _prune_owned,
                    _put, _reading, _set, _slice_order)
from .primitives import (ABSENT_KEY, ORIGINAL_VALUE, QUANTITY_PARTS, REFERENCE_FIELDS, TIMES_KEY, UCUM, UNFIT, VALID,
                         WITHOUT_KEY, _absent, _backward,
                         _condition, _day_of, _fits, _from_base64, _from_json, _identifier_rest, _identifier_values,
                         _FAST_TESTS, _fast_test, _keeps_time, _lookup_system, _primitive_of)
from .references import ImportRefs as IndexRefs

RESERVED_KEY = d.RESERVED_KEY
_LOOKUP_CACHE_LIMIT = 200_000



class ImportRefs(Protocol):
    """Where an import finds the resource a reference names (:class:`.references.ImportRefs`)."""

    def target(self, reference: str) -> dict | None: ...


class _Import:
    __slots__ = ("refs", "entity", "children", "drops", "resource", "omitted", "ours", "forms", "times", "absent",
                 "lookup", "held", "without")

    def __init__(self, refs, entity, resource, ours=False, lookup=None):
        self.lookup = lookup  # the reading's lookup of a reference's target (ResourceReader._lookup)
        # The importer's index by Type/id (what its refs.target finds first), or None for other refs.
        self.held = refs.resources if refs.__class__ is IndexRefs else None
        self.refs, self.entity, self.children, self.drops, self.omitted = refs, entity, [], [], []
        self.resource = resource  # the input, for messages
        self.ours = ours  # keyed by our entity identifier: made by our export (see REFERENCE_FIELDS)
        self.forms: dict[str, str] = {}  # declared path -> the other form a value came in (see .forms)
        self.times: dict[str, str] = {}  # path -> a date-time whose day a date column took (see TIMES_KEY)
        self.absent: list[str] = []  # paths that came as a data-absent marker (see ABSENT_KEY)
        self.without: dict[str, list[str]] = {}  # path -> parts a Quantity or Coding came without (see WITHOUT_KEY)

    def day_for(self, path: str, value: Any, field) -> Any:
        """A date-time with a time, read into a date column: its day (as
        written), the text kept under ``path``; else the value as it is."""
        day = _day_of(value)
        if day is None or _fits(field, day) is MISSING:
            return value
        self.times[path] = value
        return day

    def came_absent(self, resource: dict, element: d.Element) -> None:
        """The element came as its data-absent marker: taken out, and its path
        recorded so the export writes the marker again (see ABSENT_KEY)."""
        _drop(resource, element.steps)
        self.absent.append(element.path)

    def invalid(self, element: d.Element, value: Any, primitive: str) -> FhirInputError:
        return FhirInputError(f"{value!r} is not a valid FHIR {primitive}", resource_type=self.resource.get("resourceType"),
                              resource_id=self.resource.get("id"), element=element.path)

    def drop_constants(self) -> None:
        for holder, last in self.drops:
            if last.index is None:
                holder.pop(last.key, None)
            else:
                holder[last.index] = None
        self.drops.clear()




Reader = Callable[[dict, dict, _Import], None]


# --- element readers ---------------------------------------------------------------------------

def _field_reader(element, mapping, plan, decl, siblings=()):
    parts = _field_parts(element, mapping, siblings)
    parent = _PARENTS[id(element.steps)][1]
    last = element.steps[-1]
    key, index = last.key, last.index
    take, twinned, get = parts.take, parts.twinned, parts.get

    def read(resource: dict, entity: dict, context: _Import) -> None:
        holder = parent(resource)  # what peek(resource) looks in: found once for the drop too
        value = MISSING if holder is MISSING else holder.get(key, MISSING) if index is None else holder[index]
        if value is MISSING or value is None:
            if twinned and get(entity) is not None:  # the twin, read before, found it
                context.omitted.append(element.path)
            return
        take(resource, entity, context, holder, value)
    return read


class _FieldParts:
    """What a field element's reader does once its value is found: shared by
    :func:`_field_reader` and the generated readers (:mod:`.generated`)."""

    __slots__ = ("take", "twinned", "get", "field", "valid", "primitive", "plain", "original_steps")


def _field_parts(element, mapping, siblings=()) -> _FieldParts:
    field = mapping.field(element.field)
    steps, path = element.steps, field.path
    primitive = _primitive_of(element, field)
    valid = VALID.get(primitive)
    forward = dict(element.values)
    backward = _backward(element.values)
    original_steps = _original_steps(steps)
    last = steps[-1]
    key, index = last.key, last.index
    keeps_time = _keeps_time(primitive, field)
    parts = _FieldParts()
    parts.field, parts.valid, parts.primitive = field, valid, primitive
    parts.original_steps = original_steps if backward else None  # where a value map's original spelling is
    parts.get = _getter(path)
    # Another element writes the same field (a lab's test_name: code.coding[0].display
    # and code.text): a resource that came with only the other goes out so, and one
    # whose two values differ keeps the second as it came (see take).
    parts.twinned = twinned = any(other is not element and element.field in _columns_of(other) for other in siblings)
    get = parts.get
    # Nothing but the check, the fit and the move: what a generated reader writes inline.
    parts.plain = not backward and primitive not in ("base64Binary", "json") and not keeps_time and not twinned

    def take(resource: dict, entity: dict, context: _Import, holder: Any, value: Any) -> None:
        """The value found (not None) in ``holder``: checked, mapped, moved to the entity."""
        if valid is not None and not valid(value):
            raise context.invalid(element, value, primitive)
        if backward:
            original = _original_value(resource, original_steps)
            if original is not MISSING and forward.get(original) == value:
                _drop(resource, original_steps)
                value = original
            elif value in backward:
                value = backward[value]
        if primitive == "base64Binary":
            value = _from_base64(value)
        elif primitive == "json":
            value = _from_json(value)
        elif keeps_time:
            value = context.day_for(element.path, value, field)
        value = _fits(field, value) if value is not MISSING else MISSING
        if value is MISSING:
            return  # left in the resource: kept as it came
        if twinned and not _same_or_none(get(entity), value):
            return  # its twin read another value (a coding's display, another text): this one stays as it came
        if index is None:  # _drop(resource, steps), its holder known
            holder.pop(key, None)
        else:
            holder[index] = None  # a placeholder: later items keep their positions
        _set(entity, path, value)
    parts.take = take
    return parts


def _value_reader(element, mapping, plan, decl, siblings=()):
    steps, constant = element.steps, element.value
    wanted = _condition(element, mapping, siblings)
    parent = _PARENTS[id(steps)][1]
    last = steps[-1]
    key, index = last.key, last.index

    def read(resource: dict, entity: dict, context: _Import) -> None:
        holder = parent(resource)  # what peek(resource) looks in: found once for the drop too
        if holder is MISSING:
            found = MISSING
        elif index is None:
            found = holder.get(key, MISSING)
        else:
            found = holder[index]
            found = MISSING if found is None else found
        if found == constant and (wanted is None or wanted(entity)):
            # Dropped once every constant was read: constants find their slice.
            # One written only ``with`` a value stays when that value was not
            # read (Synthea's Claim.diagnosis: a sequence beside a reference).
            context.drops.append((holder, last))
        elif found is MISSING:
            context.omitted.append(element.path)  # it came without it: it goes out without it
    return read


def _coding_reader(element, mapping, plan, decl, siblings=()):
    peek = _peeker(element.steps)
    c = element.coding
    steps, absent = element.steps, element.absent
    code_field, _ = _field_and_getter(mapping, c.code)
    code_fast = _fast_test_of(code_field) if code_field is not None else None  # _fits's first test, inline
    display_field, get_display = _field_and_getter(mapping, c.display)
    system_field, get_system = _field_and_getter(mapping, c.system_field)
    system_names = {url: name for name, url in reversed(c.systems)}
    backward = _backward(c.values)
    bare, single, list_steps = _coding_shape(element)
    peek_list = _peeker(list_steps)
    # Another element writes the display's column (a lab's test_name: code.text):
    # a coding that came without a display goes out without one.
    display_twinned = display_field is not None and any(
        other is not element and c.display in _columns_of(other) for other in siblings)

    absent_first = bool(absent) and (bare or not single)  # a marker looked for before the codings

    def read(resource: dict, entity: dict, context: _Import) -> None:
        if absent_first and peek(resource) == _absent(absent):
            context.came_absent(resource, element)
            return
        take(resource, entity, context, peek(resource) if bare else peek_list(resource))

    def take(resource: dict, entity: dict, context: _Import, found: Any) -> None:
        """What is at the path read (the bare Coding, or the list of codings): the code taken."""
        if bare:
            codings = [found] if isinstance(found, dict) else None
        else:
            codings = found
        if not isinstance(codings, list):
            return
        for index, coding in enumerate(codings):
            if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                continue
            system = coding.get("system")
            if get_system is None and system != c.system:
                continue
            if get_system is not None and system not in system_names:
                continue
            code = backward.get(coding["code"], coding["code"])
            if not (code_fast is not None and code_fast(code)) and _fits(code_field, code) is MISSING:
                continue
            _set(entity, code_field.path, code)
            taken = ["system", "code"]
            if system_field is not None:
                _set(entity, system_field.path, system_names[system])
            if display_field is not None and isinstance(coding.get("display"), str):
                if not display_twinned or _same_or_none(get_display(entity), coding["display"]):
                    _set(entity, display_field.path, coding["display"])
                    taken.append("display")  # else its twin read another text: this display stays as it came
            elif display_twinned and "display" not in coding:
                context.without[element.path] = ["display"]  # not written from the twin's value (see WITHOUT_KEY)
            rest = {k: v for k, v in coding.items() if k not in taken}
            if bare:
                if rest:
                    _put(resource, steps, rest)
                else:
                    _drop(resource, steps)
            else:
                codings[index] = rest or None
            return
    return _with_take(read, take, steps if bare else list_steps, inline=not absent_first)


def _same_or_none(held: Any, value: Any) -> bool:
    """Whether a column another element may have filled holds nothing yet, or ``value``."""
    return held is None or held == value


def _with_take(read: Reader, take: Callable, steps: tuple[d.Step, ...], inline: bool = True) -> Reader:
    """A reader that peeks at ``steps`` and passes what it found to ``take``:
    marked so, for the generated readers (:mod:`.generated`) to peek inline
    (unless ``inline`` is false: the reader looks elsewhere first)."""
    read.take, read.peeks, read.inline = take, steps, inline  # type: ignore[attr-defined]
    return read


def _quantity_reader(element, mapping, plan, decl, siblings=()):
    peek = _peeker(element.steps)
    q = element.quantity
    absent = element.absent
    value_field, _ = _field_and_getter(mapping, q.value)
    unit_field, get_unit = _field_and_getter(mapping, q.unit_field)
    value_fast = _fast_test_of(value_field) if value_field is not None else None

    def read(resource: dict, entity: dict, context: _Import) -> None:
        take(resource, entity, context, peek(resource))

    def take(resource: dict, entity: dict, context: _Import, quantity: Any) -> None:
        if not isinstance(quantity, dict):
            return
        if absent and quantity == _absent(absent):
            context.came_absent(resource, element)
            return
        value = quantity.get("value")
        if value is None:
            return
        fitted = value if value_fast is not None and value_fast(value) else _fits(value_field, value)  # _fits, once
        if fitted is MISSING:
            return
        unit = quantity.get("unit", quantity.get("code"))
        if get_unit is None and q.unit is not None and unit is not None and unit != q.unit:
            return  # another unit than the column's: kept as it came, not misread
        value = fitted
        _set(entity, value_field.path, value)
        if "unit" not in quantity or "code" not in quantity or "system" not in quantity:
            context.without[element.path] = [k for k in QUANTITY_PARTS if k not in quantity]  # see WITHOUT_KEY
        quantity.pop("value")
        if unit_field is not None and isinstance(unit, str):
            _set(entity, unit_field.path, unit)
        if unit is not None and quantity.get("code", unit) == unit and quantity.get("system", UCUM) == UCUM \
                and quantity.get("unit", unit) == unit:
            for k in ("unit", "system", "code"):
                quantity.pop(k, None)
    return _with_take(read, take, element.steps)


def _reference_reader(element, mapping, plan, decl, siblings=()):
    r = element.reference
    if r.target is None:
        return _slot_reference_reader(element, plan)
    peek = _peeker(element.steps)
    absent = element.absent
    target_mapping = plan.mapper.mapping(r.target)
    target_key = target_mapping.primary_key
    pairs = [(mapping.field(own), target_mapping.field(theirs)) for own, theirs in r.fields]
    systems = {_lookup_system(r.target, theirs.column, target_key): own for own, theirs in pairs}
    # Per pair what the loop below needs: the own column's fast test (_fits's first, inline) and path.
    steps = [(own, theirs.column, _fast_test_of(own), own.path) for own, theirs in pairs]

    def read(resource: dict, entity: dict, context: _Import) -> None:
        take(resource, entity, context, peek(resource))

    def take(resource: dict, entity: dict, context: _Import, ref: Any) -> None:
        if not isinstance(ref, dict):
            return
        if absent and ref == _absent(absent):
            context.came_absent(resource, element)
            return
        text = ref.get("reference")
        target = None
        if text.__class__ is str:  # resolved: Type/id, the index's own key (else: as refs.target finds it)
            if context.held is not None:
                target = context.held.get(text)
            if target is None:
                target = context.refs.target(text)
        taken = False
        if target is not None:
            values = context.lookup(r.target, target)  # the reading's own cache: plans are shared
            if values is not None:
                named = _reference_fields(ref) if "extension" in ref else None
                for own, column, fast, path in steps:
                    if named is None and taken and not context.ours:
                        break  # a foreign resource without a sign: the first column only
                    if named is not None and own.column not in named:
                        continue
                    value = values.get(column)
                    if value is not None and ((fast is not None and fast(value)) or _fits(own, value) is not MISSING):
                        if len(path) == 1:
                            entity[path[0]] = value
                        else:
                            _set(entity, path, value)
                        taken = True
                if taken:
                    ref.pop("reference")
                    if named is not None:
                        _drop_reference_fields(ref)
        identifier = ref.get("identifier")
        if isinstance(identifier, dict) and identifier.get("system") in systems:
            own = systems[identifier["system"]]
            values = _identifier_values(identifier, (own,))
            if values is not None:
                if _getter(own.path)(entity) is None:
                    _set(entity, own.path, values[0])
                ref.pop("identifier")
    return _with_take(read, take, element.steps)


def _fast_test_of(field) -> Callable[[Any], bool] | None:
    """The function of a field type's ``fast_test`` (:func:`.primitives._fits`'s first test)."""
    test = _FAST_TESTS.get(field.type.fast_test, MISSING)
    return _fast_test(field.type.fast_test) if test is MISSING else test


def _reference_fields(ref: dict) -> tuple[str, ...] | None:
    """The own columns a reference's REFERENCE_FIELDS extension lists, or None."""
    extensions = ref.get("extension")
    if not isinstance(extensions, list):
        return None
    for extension in extensions:
        if isinstance(extension, dict) and extension.get("url") == REFERENCE_FIELDS \
                and isinstance(extension.get("valueString"), str):
            return tuple(extension["valueString"].split())
    return None


def _drop_reference_fields(ref: dict) -> None:
    kept = [e for e in ref["extension"] if not (isinstance(e, dict) and e.get("url") == REFERENCE_FIELDS)]
    if kept:
        ref["extension"] = kept
    else:
        ref.pop("extension")


def _slot_reference_reader(element, plan):
    peek = _peeker(element.steps)
    slot = element.reference.slot

    def read(resource: dict, entity: dict, context: _Import) -> None:
        ref = peek(resource)
        wanted = plan.by_slot[slot].resource_type + "/"
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and ref["reference"].startswith(wanted):
            ref.pop("reference")
    return read


def _children_reader(element, child_plan, plan, decl):
    """Folded children: each item of the list an entity of the child type,
    linked to the parent by its key."""
    peek = _peeker(element.steps)
    child_type, slot = element.children.entity_type, decl.slot
    unique = _item_key_check(element, child_plan)

    def read(resource: dict, entity: dict, context: _Import) -> None:
        items = peek(resource)
        if not isinstance(items, list):
            return
        key = plan.key_of(entity)
        if any(v is None for v in key):
            return
        made = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                try:
                    kid = child_plan.entity(item, key, context, slot)
                except FhirInputError as error:  # an item's element: named with its item
                    raise _in_item(error, f"{element.path}[{index}]") from None
                made.append((index, kid))
                context.children.append((child_type, kid))
                items[index] = None
        if len(made) > 1:
            unique(made, context)
    return read


def _item_key_check(element, child_plan) -> Callable[[list, _Import], None]:
    """A check that no two items of one resource (a Claim's) make children
    with one key (two items of one ``sequence``): they would merge into one
    entity, and an item would be lost. R4 says a sequence identifies its
    item: such a resource is refused, its second item named."""
    link = {field.column for field in child_plan.link}
    own = [field for field in child_plan.mapping.key_fields if field.column not in link]
    getters = [_getter(field.path) for field in own]
    written = {e.field: e.path for e in element.children.elements if e.kind == "field"}
    at = written.get(own[0].column) if own else None

    def check(made: list, context: _Import) -> None:
        seen: dict[tuple, int] = {}
        for index, kid in made:
            key = tuple(get(kid) for get in getters)
            if None in key:
                continue  # no key: the save names what is missing
            first = seen.setdefault(key, index)
            if first != index:
                raise FhirInputError(
                    f"{', '.join(map(str, key))} again ({element.path}[{first}] has it): each item needs its own, "
                    f"else the two are one {child_plan.mapping.entity} ({', '.join(f.column for f in own)}) and one "
                    "is lost", resource_type=context.resource.get("resourceType"),
                    resource_id=context.resource.get("id"), element=f"{element.path}[{index}]" + (f".{at}" if at else ""))
    return check


def _in_item(error: FhirInputError, item: str) -> FhirInputError:
    """``error`` of an element of a folded item, its element named inside ``item`` (``item[1].servicedDate``)."""
    message = str(error).partition(": ")[2]  # after "Type/id @ element" (ids and paths hold no ": ")
    element = f"{item}.{error.element}" if error.element else item
    return FhirInputError(message, resource_type=error.resource_type, resource_id=error.resource_id, element=element)


def _key_of_id(plan, rid: Any) -> tuple | None:
    """A declaration's key taken from a resource's id, where an identifier
    gives none: only for a key of one text column."""
    key_fields = plan.key_fields
    if len(key_fields) == 1 and key_fields[0].type.family == "varchar" and isinstance(rid, str):
        return (rid,)
    return None


ELEMENT_READERS = {"field": _field_reader, "value": _value_reader, "coding": _coding_reader,
                   "quantity": _quantity_reader, "reference": _reference_reader}


# --- what the elements leave ---------------------------------------------------------------------


def _restore_unfit(node: dict, entity: dict) -> None:
    """Put back the values :func:`_keep_unfit` kept (they win over what the
    elements read: the element held a stand-in, the extension the original)."""
    extensions = node.get("extension")
    if not isinstance(extensions, list):
        return
    for index, extension in enumerate(extensions):
        if isinstance(extension, dict) and extension.get("url") == UNFIT and isinstance(extension.get("valueString"), str):
            try:
                values = json.loads(extension["valueString"])
            except ValueError:
                return
            if not isinstance(values, dict):
                return
            for dotted, value in values.items():
                _set(entity, tuple(dotted.split(".")), value)
            extensions[index] = None
            return


def _identifier_systems(resource: dict) -> set:
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return set()
    return {i.get("system") for i in identifiers if isinstance(i, dict)}


def _original_value(resource: dict, steps) -> Any:
    if steps is None:
        return MISSING
    holder = _peek(resource, steps)
    if not isinstance(holder, dict):
        return MISSING
    for extension in holder.get("extension", ()):
        if isinstance(extension, dict) and extension.get("url") == ORIGINAL_VALUE:
            return extension.get("valueString", MISSING)
    return MISSING


# --- choosing the declaration, reading a resource ------------------------------------------------

class ResourceReader:
    """Resources into entities, for a :class:`~.mapper.FhirMapper`: which
    declaration reads a resource (made once a resource type), the lookup
    values of a reference's target (cached), and the reading itself. (Plans
    and compiled resources are :mod:`.plan`'s ``_Plan`` and ``_Resource``,
    passed in: this module is below that one.)"""

    def __init__(self, plan_of: Callable[[str], Any], declared: dict[str, d.Declarations]):
        self.plan = plan_of  # entity type -> its compiled plan (FhirMapper.plan: compiled once)
        self._by_resource: dict[str, list[tuple[str, d.ResourceDeclaration]]] = {}
        for entity, decls in declared.items():
            for decl in decls.resources:
                self._by_resource.setdefault(decl.resource, []).append((entity, decl))
        self._options: dict[str, tuple[list, tuple, frozenset, list | None]] = {}  # see _options_of
        self._lookup_cache: dict[tuple, dict] = {}
        self._taken: dict[str, set[str]] = {}  # a type references name -> the columns they take from it
        for decls in declared.values():
            for decl in decls.resources:
                for element in d._walk(decl.elements):
                    r = element.reference
                    if r is not None and r.target is not None:
                        self._taken.setdefault(r.target, set()).update(theirs for _, theirs in r.fields)
        self._lookup_columns: dict[str, frozenset[str]] = {}  # the same, as the target's column names
        targets = set(self._taken)
        # The resource types a reference's lookup may read (one of their
        # declarations maps a type references name): only these are read from a
        # copy when mapped in place (see map_resource).
        self._looked_up = frozenset(resource_type for resource_type, options in self._by_resource.items()
                                    if any(entity in targets for entity, _ in options))

    def _lookup(self, entity_type: str, resource: dict) -> dict | None:
        """The values of ``entity_type``'s lookup columns (its key, and the
        columns references take from it) that a resource (a reference's
        target) holds, cached by resource type and id."""
        cache_key = (entity_type, resource.get("resourceType"), resource.get("id"))
        found = self._lookup_cache.get(cache_key)
        if found is not None:
            return found
        picked = self._declaration_for(resource, (entity_type,))
        if picked is None:
            return None
        plan, compiled = picked
        values: dict[str, Any] = {}
        key = self._key_from(plan, resource)
        if key is not None:
            values.update(zip(plan.mapping.primary_key, key))
        wanted = self._lookup_columns.get(entity_type)
        if wanted is None:  # only what a reference takes: a Synthea Patient holds twenty columns, sliced deep
            wanted = self._lookup_columns[entity_type] = frozenset(
                plan.mapping.field(column).column for column in self._taken.get(entity_type, ()))
        for column, steps in compiled.field_paths.items():
            if column in wanted and column not in values:
                value = _peek(resource, steps)
                if value is not MISSING:
                    values[column] = value
        if len(self._lookup_cache) >= _LOOKUP_CACHE_LIMIT:
            self._lookup_cache.clear()
        self._lookup_cache[cache_key] = values
        return values

    def entity_types_of(self, resource: dict) -> tuple[str, ...] | None:
        """The entity type(s) a resource becomes (None: no declaration reads it)."""
        picked = self._candidates(resource)
        return tuple(dict.fromkeys(plan.entity_type for plan, _ in picked)) or None

    def _candidates(self, resource: dict) -> list[tuple[Any, Any]]:
        resource_type = resource.get("resourceType")
        compiled_options = self._options.get(resource_type)
        if compiled_options is None:
            compiled_options = self._options_of(resource_type)
        options, index, always, only = compiled_options
        if only is not None:  # one declaration, chosen by nothing: it reads every resource of the type
            return only
        if not options:
            return []
        # A quick no first: a declaration whose last match constant is nowhere at
        # its path (ignoring list positions) is passed over (the other vital signs'
        # LOINC codes) without looking for its slice.
        chosen = always
        if index:
            chosen = set(always)
            for everywhere, by_constant in index:
                for value in everywhere(resource):
                    if isinstance(value, _HASHABLE):
                        chosen.update(by_constant.get(value, ()))
        # The identifier systems the resource carries: looked at only when a
        # declaration is chosen by them (``own``), or to prefer among several.
        systems = None
        found = []
        for position in sorted(chosen) if len(chosen) < len(options) else range(len(options)):
            plan, compiled, matches, own = options[position]
            if own:
                if systems is None:
                    systems = _identifier_systems(resource)
                if plan.system not in systems:
                    continue
            if matches is None or matches(resource):
                found.append((plan, compiled))
        if len(found) < 2:
            return found
        if systems is None:
            systems = _identifier_systems(resource)
        return [pair for pair in found if pair[0].system in systems] or found

    def _options_of(self, resource_type: Any) -> tuple[list, tuple, frozenset, list | None]:
        """The compiled declarations of a resource type, each with the test of
        its match constants (None: it has none) and whether it is chosen by
        its ``own`` identifier; an index of their last match constants
        (:func:`_everywhere` of each path, generated, constant -> positions);
        the positions of the declarations not in the index; and, for a type
        of one declaration chosen by nothing (a Claim), the candidates of
        every resource of the type (one list, never changed). Made once a type."""
        options = []
        by_path: dict[str, tuple[tuple, dict]] = {}
        always = set()
        for entity, decl in self._by_resource.get(resource_type, ()) if isinstance(resource_type, str) else ():
            plan = self.plan(entity)
            compiled = plan.by_slot[decl.slot]
            position = len(options)
            matches = _constants_test(tuple(compiled.constants[path] for path in decl.match)) if decl.match else None
            options.append((plan, compiled, matches, bool(decl.own)))
            last = decl.match[-1] if decl.match else None
            constant = compiled.constants[last][1] if last is not None else None
            if last is None or not isinstance(constant, _HASHABLE):
                always.add(position)
                continue
            keys = tuple((step.key, step.index is not None) for step in compiled.constants[last][0])
            by_path.setdefault(last, (_everywhere_function(keys), {}))[1].setdefault(constant, set()).add(position)
        only = None
        if len(options) == 1 and options[0][2] is None and not options[0][3]:
            only = [options[0][:2]]
        found = (options, tuple(by_path.values()), frozenset(always), only)
        if isinstance(resource_type, str):
            self._options[resource_type] = found
        return found

    def _declaration_for(self, resource: dict, types: Iterable[str]) -> tuple[Any, Any] | None:
        for plan, compiled in self._candidates(resource):
            if plan.entity_type in types:
                return plan, compiled
        return None

    def _key_from(self, plan, resource: dict) -> tuple | None:
        identifiers = resource.get("identifier")
        if isinstance(identifiers, list):
            for identifier in identifiers:
                if isinstance(identifier, dict) and identifier.get("system") == plan.system:
                    return _identifier_values(identifier, plan.key_fields)
        return _key_of_id(plan, resource.get("id"))

    def read_in_place(self, resource_type: str) -> bool:
        """Whether :meth:`map_resource` with ``in_place`` takes the elements
        out of a resource of this type itself (no reference's lookup reads one)."""
        return resource_type not in self._looked_up

    def from_resource(self, resource: dict, *, refs: ImportRefs) -> list[tuple[str, dict]]:
        """One resource as entities (its type's, and folded children's), each in
        canonical shape with what the declaration does not read under ``_fhir``."""
        with _reading():
            return self._from_resource(resource, refs)

    def map_resource(self, resource: dict, *, refs: ImportRefs, in_place: bool = False
                     ) -> list[tuple[str, dict]] | None:
        """:meth:`from_resource`, or None when no declaration reads the resource:
        the importer's one call that both chooses the declaration and maps (the
        choice made once a resource, not once for :meth:`entity_types_of` and
        again here). With ``in_place`` the elements read are taken out of the
        resource itself, not of a copy (a deep copy is a fifth of the mapping's
        time), unless a reference's lookup may read it later (a Patient, an
        Encounter: see ``_looked_up``); the caller gives up the resource."""
        candidates = self._candidates(resource)
        if not candidates:
            return None
        outer = getattr(_SLICES, "memo", None)  # what _reading does, without its object and calls
        try:
            return self._from_resource(resource, refs, candidates,
                                       from_copy=not (in_place and resource["resourceType"] not in self._looked_up))
        finally:
            _SLICES.memo = outer

    def _from_resource(self, resource: dict, refs: ImportRefs, candidates: list[tuple[Any, Any]] | None = None,
                       from_copy: bool = True) -> list[tuple[str, dict]]:
        resource_type, rid = resource.get("resourceType"), resource.get("id")
        if candidates is None:
            candidates = self._candidates(resource)
        if not candidates:
            raise FhirInputError("no mapping declares this resource (see entity_types_of)",
                                 resource_type=resource_type, resource_id=rid)
        plan, compiled = candidates[0]
        copy = _copy(resource) if from_copy else resource
        entity: dict[str, Any] = {}
        record: dict[str, Any] = {}
        if isinstance(rid, str):
            record["id"] = rid
        keyed_by_id = self._take_key(plan, copy, entity)
        if keyed_by_id is None:
            raise FhirInputError(f"no key: the resource has no identifier of system {plan.system} and its id "
                                 f"cannot be {plan.entity_type}'s key ({', '.join(plan.mapping.primary_key)})",
                                 resource_type=resource_type, resource_id=rid, element="identifier")
        if keyed_by_id:
            record["keyed_by_id"] = True
        context = _Import(refs, entity, resource, ours=not keyed_by_id, lookup=self._lookup)
        profile = compiled.decl.profile
        meta = copy.get("meta")
        if profile and isinstance(meta, dict) and isinstance(meta.get("profile"), list) and profile in meta["profile"]:
            first = meta["profile"].index(profile)  # only it: a copy listed again stays (Synthea repeats some)
            meta["profile"] = [None if i == first else p for i, p in enumerate(meta["profile"])]
        elif profile:
            record["profile"] = False  # it came without our profile: it goes out without it
        _SLICES.memo = {}  # the copy's lists: new objects (ids of another resource's may be reused)
        _SLICES.moved = []
        compiled.read_all(copy, entity, context)  # the readers, generated as one function (see .generated)
        moved, _SLICES.moved = _SLICES.moved, None
        memo, _SLICES.memo = _SLICES.memo, None  # dropping constants changes the lists; children read their items anew
        context.drop_constants()
        order = _slice_order(copy, moved, memo) if moved else None
        if order:
            record["order"] = order
        if context.omitted:
            record["omit"] = sorted(set(context.omitted))
        if context.forms:
            record["forms"] = context.forms  # written back in those forms (see .forms)
        if context.absent:
            record[ABSENT_KEY] = context.absent  # a marker goes out again where it came (see _writes_absent)
        if context.times:
            record[TIMES_KEY] = context.times  # written back as they came while the column keeps their day
        if context.without:
            record[WITHOUT_KEY] = context.without  # parts of a Quantity or Coding not added on export
        _restore_unfit(copy, entity)
        copy.pop("resourceType", None)
        copy.pop("id", None)
        extra = _prune_owned(copy)
        if extra is not MISSING:
            record["extra"] = extra
        entity[RESERVED_KEY] = {compiled.slot: record}
        return [(plan.entity_type, entity), *context.children]

    def _take_key(self, plan, resource: dict, entity: dict) -> bool | None:
        """Set the entity's key from its identifier (False) or the resource id
        (True); None when neither gives one."""
        identifiers = resource.get("identifier")
        if isinstance(identifiers, list):
            system = plan.system
            for index, identifier in enumerate(identifiers):
                if isinstance(identifier, dict) and identifier.get("system") == system:
                    key = _identifier_values(identifier, plan.key_fields)
                    if key is not None:
                        for field, value in zip(plan.key_fields, key):
                            _set(entity, field.path, value)
                        # system and value only (the usual): nothing is left of it
                        identifiers[index] = None if len(identifier) == 2 else _identifier_rest(identifier)
                        return False
        key = _key_of_id(plan, resource.get("id"))
        if key is None:
            return None
        _set(entity, plan.key_fields[0].path, key[0])
        return True
