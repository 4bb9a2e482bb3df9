"""A field's other element forms (``also:``), read on import and written back.

FHIR's choice elements let one value come in several forms: an Observation's
time as ``effectiveDateTime``, ``effectiveInstant`` or ``effectivePeriod``; a
Procedure's as ``performedDateTime`` or ``performedPeriod``. A ``field``
element declares the form an export writes (its ``path``) and may list others
(``also:``). On import, when the declared form is absent, the first other form
present is read into the column (converted as the column needs: an instant or
a Period's start to the timestamp) and the form is recorded in the entity's
``_fhir`` record (``"forms": {declared path: form}``); an export writes the
value in that form again, so a resource imported and exported is unchanged (a
Period's ``end``, not read, stays in the kept extra and is merged back). An
entity that did not come in another form goes out in the declared one.

The declared element's own reader and writer (:mod:`.readers`,
:mod:`.writers`) do the work for each form: this module chooses the form.
"""

from __future__ import annotations

import dataclasses

from ..errors import FhirInputError
from ..mapping import fhir_section as d
from ..values import MISSING
from .paths import _PARENTS, _compile_parent, _getter, _peeker, _set
from .primitives import VALID, _fits, _keeps_time, _primitive_of
from .readers import Reader
from .writers import Writer, _field_writer

FORMS_KEY = "forms"  # in a resource's _fhir record: declared path -> the form the value came in


def _form_element(element: d.Element, path: str, steps: tuple[d.Step, ...]) -> d.Element:
    """The element as if declared at another form's path, with that form's FHIR type."""
    return dataclasses.replace(element, path=path, steps=steps, also=(),
                               primitive=d.form_primitive(steps) or element.primitive)


def forms_writer(element: d.Element, mapping, plan, decl, siblings, declared: Writer) -> Writer:
    """Write the value in the form the entity's record names, else as declared."""
    writers = {}
    for path, steps in element.also:
        _compile_parent(steps)
        writers[path] = _field_writer(_form_element(element, path, steps), mapping, plan, decl, siblings)
    declared_path = element.path

    def write(entity: dict, node: dict, context) -> None:
        record = context.record
        forms = record.get(FORMS_KEY) if record else None
        form = writers.get(forms.get(declared_path)) if isinstance(forms, dict) else None
        (form or declared)(entity, node, context)
    return write


def forms_reader(element: d.Element, mapping, plan, decl, declared: Reader) -> Reader:
    """Read the declared form; when it is absent, the first other form present."""
    field = mapping.field(element.field)
    get, path = _getter(field.path), field.path
    peek_declared = _peeker(element.steps)
    alternatives = []
    for form, steps in element.also:
        formed = _form_element(element, form, steps)
        primitive = _primitive_of(formed, field)
        alternatives.append((form, steps, _peeker(steps), VALID.get(primitive), primitive,
                             _keeps_time(primitive, field)))
    declared_path = element.path

    def read(resource: dict, entity: dict, context) -> None:
        declared(resource, entity, context)
        if get(entity) is not None or peek_declared(resource) not in (MISSING, None):
            return  # read as declared (or there, and kept as it came)
        other_forms(resource, entity, context)

    def other_forms(resource: dict, entity: dict, context) -> None:
        """The declared form was not read: the first other form present (the
        generated readers call this after their inline read of the declared)."""
        for form, steps, peek, valid, primitive, keeps_time in alternatives:
            value = peek(resource)
            if value is MISSING or value is None:
                continue
            if valid is not None and not valid(value):
                raise FhirInputError(f"{value!r} is not a valid FHIR {primitive}",
                                     resource_type=context.resource.get("resourceType"),
                                     resource_id=context.resource.get("id"), element=form)
            day = context.day_for(form, value, field) if keeps_time else value  # a time: its day, kept
            value = _fits(field, day)
            if value is MISSING:
                continue  # left in the resource: kept as it came
            _take(resource, steps)
            _set(entity, path, value)
            context.forms[declared_path] = form
            return
    read.other_forms = other_forms  # type: ignore[attr-defined]
    return read


def _take(resource: dict, steps: tuple[d.Step, ...]) -> None:
    """Take a form's value out of the resource: a key removed, a list item left
    as a placeholder (later items keep their positions)."""
    holder = _PARENTS[id(steps)][1](resource)
    last = steps[-1]
    if last.index is None:
        holder.pop(last.key, None)
    else:
        holder[last.index] = None

