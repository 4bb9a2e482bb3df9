"""The ``fhir:`` section of a mapping, parsed and checked.

The JSON Schema (``mapping.schema.json``) has checked each section's shape
when its file was loaded; here come the checks a schema cannot make, across
files: that every column named is a field of its mapping, that referenced and
folded entity types exist, that slots, paths and value maps fit. Every problem
of every section is collected and raised together as
:class:`~healthsim_state.errors.FhirMappingError`, each naming the file, the
key (``fhir[2] (Observation heart_rate).elements[4].quantity.value``) and the fix.

The loader keeps the section as JSON text (``Mapping.fhir``), so loading
mappings parses it only when its file is not in the validation cache (or when
FHIR is first used): :func:`declarations_of`. It lives with the mapping files
it reads, not in :mod:`healthsim_state.fhir`, so the loader's checks never
reach up into the FHIR package.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import FhirMappingError, Problem
from .model import Mapping

ENTITY_SYSTEM = "urn:healthsim:"  # + entity type: the identifier that holds an entity's key
RESERVED_KEY = "_fhir"  # the entity key that keeps what an import could not map (see mapper)
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

# Code systems a user may name by their short name; the message gives the URL.
KNOWN_SYSTEMS = {
    "icd-10-cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd-10-pcs": "http://www.cms.gov/Medicare/Coding/ICD10",
    "loinc": "http://loinc.org",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "cpt": "http://www.ama-assn.org/go/cpt",
    "hcpcs": "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "snomed": "http://snomed.info/sct",
    "snomed-ct": "http://snomed.info/sct",
    "ndc": "http://hl7.org/fhir/sid/ndc",
    "ucum": "http://unitsofmeasure.org",
    "npi": "http://hl7.org/fhir/sid/us-npi",
}

# Required bindings a value map must land in (element path -> the allowed codes).
BOUND_CODES = {
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Observation", "status"): frozenset({"registered", "preliminary", "final", "amended", "corrected",
                                          "cancelled", "entered-in-error", "unknown"}),
    ("Encounter", "status"): frozenset({"planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                                        "cancelled", "entered-in-error", "unknown"}),
    ("ResearchSubject", "status"): frozenset({"candidate", "eligible", "follow-up", "ineligible", "not-registered",
                                              "off-study", "on-study", "on-study-intervention", "on-study-observation",
                                              "pending-on-study", "potential-candidate", "screening", "withdrawn"}),
    ("DocumentReference", "status"): frozenset({"current", "superseded", "entered-in-error"}),
}

# FHIR primitive each column type is written as, unless an element says ``as:``.
PRIMITIVE_OF_TYPE = {"varchar": "string", "integer": "integer", "bigint": "integer", "double": "decimal",
                     "decimal": "decimal", "boolean": "boolean", "date": "date", "timestamp": "dateTime",
                     "json": None}

# The FHIR type an ``also:`` form's name says (``effectiveInstant``); a form
# whose name says none (``effectivePeriod.start``, ``authoredOn``) holds the
# declared element's type.
FORM_SUFFIXES = (("Instant", "instant"), ("DateTime", "dateTime"))


def form_primitive(steps: tuple[Step, ...]) -> str | None:
    """The FHIR type an alternative form's last name ends in, or None."""
    key = steps[-1].key
    for suffix, primitive in FORM_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return primitive
    return None


_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[([0-9]+)\])?$")


@dataclass(frozen=True)
class Step:
    """One step of a FHIR path: a key, and a list index when the path gives one."""

    key: str
    index: int | None
    # Import: the list item is the one whose constants at these (relative) paths
    # are equal (a FHIR slice), not the one at ``index``; export writes at ``index``.
    match: tuple = ()


@dataclass(frozen=True)
class Coding:
    code: str                          # column of the code
    system: str | None = None          # a constant system URL ...
    system_field: str | None = None    # ... or a column whose value ``systems`` maps to the URL
    systems: tuple[tuple[str, str], ...] = ()
    display: str | None = None         # column of the display text
    values: tuple[tuple[str, str], ...] = ()  # value map on the code


@dataclass(frozen=True)
class Quantity:
    value: str                         # column of the number
    unit: str | None = None            # a UCUM unit (constant) ...
    unit_field: str | None = None      # ... or a column holding it
    primitive: str = "decimal"


@dataclass(frozen=True)
class Reference:
    target: str | None = None                  # entity type referred to ...
    fields: tuple[tuple[str, str], ...] = ()   # (this entity's column, the target's column), in order
    slot: str | None = None                    # ... or another resource of the same entity / of the target


@dataclass(frozen=True)
class Element:
    where: str                     # the declaration key, for messages
    path: str
    steps: tuple[Step, ...]
    kind: str                      # field | value | coding | quantity | reference | children
    field: str | None = None
    value: Any = None
    primitive: str | None = None   # ``as:``
    values: tuple[tuple[str, str], ...] = ()
    coding: Coding | None = None
    quantity: Quantity | None = None
    reference: Reference | None = None
    children: "Children | None" = None
    absent: str | None = None      # data-absent-reason code written when there is no value
    with_field: str | None = None     # written only when this column has a value
    without_field: str | None = None  # written only when this column has none
    # field: other forms the value may come in (FHIR choice types: effective[x]),
    # (path, steps) each, read on import when the declared form is absent.
    also: tuple[tuple[str, tuple[Step, ...]], ...] = ()


@dataclass(frozen=True)
class Children:
    entity_type: str
    link: tuple[str, ...]          # the child's columns holding the parent's key, in key order
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class ResourceDeclaration:
    where: str
    resource: str
    slot: str
    profile: str | None
    when: tuple[str, ...]
    match: tuple[str, ...]
    own: bool
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class Declarations:
    entity_type: str
    source: str
    resources: tuple[ResourceDeclaration, ...]


def parse_path(path: str) -> tuple[Step, ...]:
    steps = []
    for part in path.split("."):
        found = _STEP.match(part)
        if found is None:
            raise ValueError(f"{path!r} is not a FHIR path (names joined by dots, each with an optional [index])")
        steps.append(Step(found[1], int(found[2]) if found[2] is not None else None))
    return tuple(steps)


def declarations_of(mapping: Mapping, problems: list[Problem] | None = None) -> Declarations | None:
    """The parsed ``fhir:`` section of ``mapping`` (None: it has none, or it is
    not valid: then its problems are added to ``problems``, or raised)."""
    if mapping.fhir is None:
        return None
    found: list[Problem] = []
    section = _section(mapping, found)
    if found:
        if problems is None:
            raise FhirMappingError(found)
        problems.extend(found)
        return None
    resources = []
    for index, raw in enumerate(section):
        slot = raw.get("slot", raw["resource"].lower())
        where = f"fhir[{index}] ({raw['resource']} {slot})"
        resources.append(ResourceDeclaration(
            where=where, resource=raw["resource"], slot=slot, profile=raw.get("profile"),
            when=tuple(raw.get("when", ())), match=tuple(raw.get("match", ())), own=raw.get("own", False),
            elements=_elements(raw["elements"], f"{where}.elements")))
    return Declarations(mapping.entity, mapping.source, tuple(resources))


def _section(mapping: Mapping, problems: list[Problem]) -> Any:
    """The section's list: JSON text the loader made from the parsed file, or
    the file's YAML block, parsed and checked against the mapping schema now."""
    if mapping.fhir.startswith("["):
        return json.loads(mapping.fhir)
    from . import validation_cache
    from .problems import explain, key_of, problem
    from .yaml_files import yaml_parser

    yaml, yaml_loader = yaml_parser()
    try:
        document = yaml.load(mapping.fhir, Loader=yaml_loader)
    except yaml.YAMLError as error:
        problems.append(problem(mapping.source, mapping.entity, "fhir",
                                        f"not valid YAML ({getattr(error, 'problem', error)}); fix the syntax"))
        return None
    key = validation_cache.digest(document)
    if key is not None and key in validation_cache.VALIDATED:
        return document["fhir"]
    errors = sorted(_section_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    problems.extend(problem(mapping.source, mapping.entity, key_of(e, document), explain(e))
                    for e in errors)
    if not errors:
        validation_cache.VALIDATED.add(key)
    return document["fhir"] if not errors else None


@lru_cache(maxsize=1)
def _section_validator():
    """The mapping schema's ``fhir`` property as a schema of its own: ``{"fhir": [...]}``."""
    import jsonschema

    from . import validation_cache

    schema = json.loads(validation_cache.schema_bytes())
    section = {"$schema": schema["$schema"], "$defs": schema["$defs"], "type": "object", "required": ["fhir"],
               "additionalProperties": False, "properties": {"fhir": schema["properties"]["fhir"]}}
    return jsonschema.validators.validator_for(section)(section)


def _elements(raws: list[dict], where: str) -> tuple[Element, ...]:
    return _sliced(tuple(_element(raw, f"{where}[{i}]") for i, raw in enumerate(raws)))


def _sliced(elements: tuple[Element, ...]) -> tuple[Element, ...]:
    """Elements whose first list index has constants below it (``telecom[1].system:
    phone``, ``telecom[1].use: mobile``) find their item on import by those
    constants, as FHIR slices do: a list written without an absent item, or
    written by another system in another order, is still read right."""
    discriminators: dict[tuple[Step, ...], list[tuple[tuple[Step, ...], Any]]] = {}
    for element in elements:
        prefix = _slice_prefix(element.steps)
        if prefix is not None and element.kind == "value" and len(element.steps) > len(prefix) \
                and element.steps[-1].key != "display":  # another system's wording must not hide an item
            discriminators.setdefault(prefix, []).append((element.steps[len(prefix):], element.value))
    if not discriminators:
        return elements
    out = []
    for element in elements:
        prefix = _slice_prefix(element.steps)
        found = discriminators.get(prefix) if prefix is not None else None
        if found:
            last = prefix[-1]
            match = _MATCHES.setdefault(tuple(found), tuple(found))  # one object per match: the mapper keys on it
            steps = prefix[:-1] + (Step(last.key, last.index, match),) + element.steps[len(prefix):]
            element = dataclasses.replace(element, steps=steps)
        out.append(element)
    return tuple(out)


_MATCHES: dict[tuple, tuple] = {}


def _slice_prefix(steps: tuple[Step, ...]) -> tuple[Step, ...] | None:
    for position, step in enumerate(steps):
        if step.index is not None:
            return steps[:position + 1]
    return None


def _element(raw: dict, where: str) -> Element:
    kind = next(k for k in ("field", "value", "coding", "quantity", "reference", "children") if k in raw)
    common = dict(where=where, path=raw["path"], steps=parse_path(raw["path"]), kind=kind,
                  primitive=raw.get("as"), absent=raw.get("absent"))
    if kind == "field":
        return Element(**common, field=raw["field"], values=tuple(raw.get("values", {}).items()),
                       with_field=raw.get("with"), without_field=raw.get("without"),
                       also=tuple((path, parse_path(path)) for path in raw.get("also", ())))
    if "also" in raw:
        common["also"] = tuple((path, parse_path(path)) for path in raw["also"])  # the checker says it is misplaced
    if kind == "value":
        return Element(**common, value=raw["value"], with_field=raw.get("with"), without_field=raw.get("without"))
    if kind == "coding":
        c = raw["coding"]
        return Element(**common, coding=Coding(code=c["code"], system=c.get("system"),
                                               system_field=c.get("system_field"),
                                               systems=tuple(c.get("systems", {}).items()),
                                               display=c.get("display"), values=tuple(c.get("values", {}).items())))
    if kind == "quantity":
        q = raw["quantity"]
        return Element(**common, quantity=Quantity(q["value"], q.get("unit"), q.get("unit_field"),
                                                   q.get("as", "decimal")))
    if kind == "reference":
        r = raw["reference"]
        return Element(**common, reference=Reference(r.get("type"), tuple(r.get("fields", {}).items()), r.get("slot")))
    c = raw["children"]
    return Element(**common, children=Children(c["type"], tuple(c["link"]), _elements(c["elements"], f"{where}.children.elements")))


# --- checks ---------------------------------------------------------------------------------

def check(mappings: dict[str, Mapping], declared: dict[str, Declarations],
          only: Iterable[str] | None = None) -> None:
    """Raise :class:`FhirMappingError` listing every problem of every section
    (of the entity types ``only`` names, when given)."""
    problems: list[Problem] = []
    chosen = set(declared) if only is None else set(only)
    for entity, decls in declared.items():
        if entity in chosen:
            _Checker(mappings, declared, decls, problems).run()
    if problems:
        raise FhirMappingError(problems)


class _Checker:
    def __init__(self, mappings: dict[str, Mapping], declared: dict[str, Declarations], decls: Declarations,
                 problems: list[Problem]):
        self.mappings, self.declared, self.decls, self.problems = mappings, declared, decls, problems
        self.mapping = mappings[decls.entity_type]

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(message=message, path=f"{self.decls.source} (entity {self.decls.entity_type}): {key}"))

    def run(self) -> None:
        slots: dict[str, str] = {}
        for decl in self.decls.resources:
            if decl.slot in slots:
                self.problem(f"{decl.where}.slot", f"slot {decl.slot!r} is also {slots[decl.slot]}; give each "
                                                   "resource of an entity its own slot")
            slots.setdefault(decl.slot, decl.where)
        for decl in self.decls.resources:
            self.resource(decl, slots)

    def resource(self, decl: ResourceDeclaration, slots: dict[str, str]) -> None:
        for i, column in enumerate(decl.when):
            self.column(self.mapping, column, f"{decl.where}.when[{i}]")
        constants = {e.path for e in decl.elements if e.kind == "value"}
        for i, path in enumerate(decl.match):
            if path not in constants:
                self.problem(f"{decl.where}.match[{i}]", f"{path!r} is not the path of a constant (value:) element "
                                                         f"of this resource; use one of {sorted(constants) or 'none'}")
        self.elements(decl, decl.elements, self.mapping, slots, top=True)

    def elements(self, decl, elements, mapping: Mapping, slots, top: bool) -> None:
        seen: dict[str, str] = {}
        for element in elements:
            if element.path in seen:
                self.problem(f"{element.where}.path", f"{element.path!r} is also written by {seen[element.path]}; "
                                                      "each element path may appear once")
            seen.setdefault(element.path, element.where)
            if top and element.steps[0].key == "identifier" and element.steps[0].index in (0, None):
                self.problem(f"{element.where}.path", "identifier[0] holds the entity's key "
                                                      f"({ENTITY_SYSTEM}{self.decls.entity_type}); use identifier[1] and on")
            if top and element.steps[0].key in ("resourceType", "id", "meta"):
                self.problem(f"{element.where}.path", f"{element.steps[0].key} is written by the mapper; remove this element")
            if element.also and not top:
                self.problem(f"{element.where}.also", "also is read in a resource's own elements, not in children:; "
                                                      "remove it")
            self.element(decl, element, mapping, slots)
        paths = set(seen)
        for element in elements:
            for i, (path, _) in enumerate(element.also):
                if path in paths:
                    self.problem(f"{element.where}.also[{i}]", f"{path!r} is the path of an element of this resource "
                                                               f"({seen.get(path, 'an also: form')}); name another form")
                paths.add(path)

    def element(self, decl, element: Element, mapping: Mapping, slots) -> None:
        where, kind = element.where, element.kind
        if element.absent is not None and kind not in ("coding", "quantity", "reference"):
            self.problem(f"{where}.absent", "absent goes with coding:, quantity: or reference: (FHIR complex types); remove it")
        for key, column in (("with", element.with_field), ("without", element.without_field)):
            if column is None:
                continue
            if kind not in ("value", "field"):
                self.problem(f"{where}.{key}", f"{key} goes with value: or field:; remove it")
            else:
                self.column(mapping, column, f"{where}.{key}")
        if element.values and kind != "field":
            self.problem(f"{where}.values", "values (a value map) goes with field:; remove it")
        if element.primitive == "Coding" and kind != "coding":
            self.problem(f"{where}.as", "as: Coding goes with coding: (an element of type Coding, not CodeableConcept)")
        elif element.primitive and element.primitive != "Coding" and kind not in ("field", "value"):
            self.problem(f"{where}.as", "as goes with field: or value:; remove it")
        if element.also and kind != "field":
            self.problem(f"{where}.also", "also (other forms of the value) goes with field:; remove it")
        if element.also and element.values:
            self.problem(f"{where}.also", "also does not go with values (a value map); remove one of them")
        if kind == "field":
            field = self.column(mapping, element.field, f"{where}.field")
            if field is not None:
                self.primitive(element, field)
                self.forms(element, field)
            self.value_map(decl, element, element.values, f"{where}.values")
        elif kind == "coding":
            self.coding(element.coding, mapping, where)
        elif kind == "quantity":
            q = element.quantity
            self.column(mapping, q.value, f"{where}.quantity.value")
            if q.unit_field:
                self.column(mapping, q.unit_field, f"{where}.quantity.unit_field")
            if q.unit and q.unit_field:
                self.problem(f"{where}.quantity", "give unit (a UCUM constant) or unit_field (a column), not both")
        elif kind == "reference":
            self.reference(element.reference, mapping, where, slots, decl)
        elif kind == "children":
            self.children(decl, element, mapping, slots)

    def column(self, mapping: Mapping, column: str, key: str):
        for field in mapping.fields:
            if field.column == column:
                return field
        self.problem(key, f"{column!r} is not a column of entity {mapping.entity} ({mapping.source}); "
                          f"use one of: {', '.join(f.column for f in mapping.fields)}")
        return None

    def primitive(self, element: Element, field) -> None:
        family = field.type.family
        if element.primitive in ("date",) and family == "timestamp":
            self.problem(f"{element.where}.as", f"column {field.column!r} is a timestamp, which FHIR's date cannot "
                                                "hold; use as: dateTime (or instant)")
        if element.primitive in ("integer", "positiveInt", "unsignedInt") and family not in ("integer", "bigint"):
            self.problem(f"{element.where}.as", f"column {field.column!r} has type {field.type.name}; "
                                                f"{element.primitive} needs an integer column, use as: decimal")
        if element.primitive == "json" and family != "json":
            self.problem(f"{element.where}.as", f"as: json is for json columns; {field.column!r} has type "
                                                f"{field.type.name}, drop as: or pick a FHIR type")
        if element.primitive is None and family == "json":
            self.problem(f"{element.where}.field", f"column {field.column!r} has type json: say which FHIR type the "
                                                   "element holds with as:, or map a scalar column")

    def forms(self, element: Element, field) -> None:
        """An ``also:`` form whose name says a FHIR type must suit the column."""
        family = field.type.family
        for i, (path, steps) in enumerate(element.also):
            primitive = form_primitive(steps)
            if primitive is None:
                continue
            if family not in ("date", "timestamp"):
                self.problem(f"{element.where}.also[{i}]", f"{path!r} holds a FHIR {primitive}, and column "
                                                           f"{field.column!r} has type {field.type.name}; name a form "
                                                           "of the column's type")
            elif primitive == "instant" and family == "date":
                self.problem(f"{element.where}.also[{i}]", f"{path!r} holds a FHIR instant (a time to the second), "
                                                           f"which date column {field.column!r} cannot give back; "
                                                           "remove it")

    def value_map(self, decl, element: Element, values, key: str) -> None:
        bound = BOUND_CODES.get((decl.resource, element.path))
        for source, target in values:
            if not _CODE.match(target):
                self.problem(f"{key}.{source}", f"{target!r} is not a FHIR code (no leading, trailing or double "
                                                "spaces); fix the target")
            elif bound is not None and target not in bound:
                self.problem(f"{key}.{source}", f"{target!r} is not a code {decl.resource}.{element.path} allows; "
                                                f"use one of {', '.join(sorted(bound))}")

    def coding(self, c: Coding, mapping: Mapping, where: str) -> None:
        self.column(mapping, c.code, f"{where}.coding.code")
        if c.display:
            self.column(mapping, c.display, f"{where}.coding.display")
        if (c.system is None) == (c.system_field is None):
            self.problem(f"{where}.coding", "give system (a URL) or system_field (a column, with systems), one of them")
        if c.system is not None:
            self.system(c.system, f"{where}.coding.system")
        if c.system_field is not None:
            self.column(mapping, c.system_field, f"{where}.coding.system_field")
            if not c.systems:
                self.problem(f"{where}.coding.systems", "system_field needs systems: a map from the column's values "
                                                        "to code system URLs; add it")
        elif c.systems:
            self.problem(f"{where}.coding.systems", "systems goes with system_field; remove it or add system_field")
        for name, url in c.systems:
            self.system(url, f"{where}.coding.systems.{name}")
        for source, target in c.values:
            if not _CODE.match(target):
                self.problem(f"{where}.coding.values.{source}", f"{target!r} is not a FHIR code; fix the target")

    def system(self, url: str, key: str) -> None:
        if not re.match(r"^(https?://\S+|urn:\S+)$", url):
            known = KNOWN_SYSTEMS.get(url.strip().lower())
            fix = f"write {known!r}" if known else "write the code system's URI (http://..., urn:...)"
            self.problem(key, f"{url!r} is not a code system URI; {fix}")

    def reference(self, r: Reference, mapping: Mapping, where: str, slots, decl) -> None:
        if r.target is None:
            if r.slot not in slots:
                self.problem(f"{where}.reference.slot", f"slot {r.slot!r} is no resource of this entity; use one of "
                                                        f"{', '.join(sorted(slots))}")
            elif r.slot == decl.slot:
                self.problem(f"{where}.reference.slot", "a resource cannot refer to itself; name another slot")
            return
        target = self.mappings.get(r.target)
        if target is None:
            self.problem(f"{where}.reference.type", f"entity type {r.target!r} has no mapping; use one of: "
                                                    f"{', '.join(sorted(self.mappings))}")
            return
        if r.target not in self.declared:
            self.problem(f"{where}.reference.type", f"entity type {r.target!r} has no fhir: section, so it has no "
                                                    "resources to refer to; add one or remove this element")
        elif r.slot is not None and r.slot not in {d.slot for d in self.declared[r.target].resources}:
            self.problem(f"{where}.reference.slot", f"entity type {r.target!r} has no resource in slot {r.slot!r}")
        for own, theirs in r.fields:
            self.column(mapping, own, f"{where}.reference.fields.{own}")
            self.column(target, theirs, f"{where}.reference.fields.{own}")

    def children(self, decl, element: Element, mapping: Mapping, slots) -> None:
        c = element.children
        child = self.mappings.get(c.entity_type)
        if child is None:
            self.problem(f"{element.where}.children.type", f"entity type {c.entity_type!r} has no mapping; use one of: "
                                                           f"{', '.join(sorted(self.mappings))}")
            return
        if len(c.link) != len(mapping.primary_key):
            self.problem(f"{element.where}.children.link", f"{mapping.entity}'s key has {len(mapping.primary_key)} "
                                                           f"column(s) ({', '.join(mapping.primary_key)}); list as many "
                                                           f"columns of {c.entity_type} that hold it")
        for i, column in enumerate(c.link):
            self.column(child, column, f"{element.where}.children.link[{i}]")
        self.elements(decl, c.elements, child, slots, top=False)


def folded(declared: dict[str, Declarations]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """child type -> (parent type, the child's columns that hold the parent's key)."""
    found = {}
    for decls in declared.values():
        for decl in decls.resources:
            for element in _walk(decl.elements):
                if element.kind == "children":
                    found[element.children.entity_type] = (decls.entity_type, element.children.link)
    return found


def _walk(elements: Iterable[Element]):
    for element in elements:
        yield element
        if element.kind == "children":
            yield from _walk(element.children.elements)
