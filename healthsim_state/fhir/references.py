"""The two reference indexes of the FHIR package.

:class:`ExportRefs` answers the mapper's "which resource is the patient whose
``mrn`` is X?" on the way out: a pre-pass over the lookup fields of every type
other types refer to, ``{(entity type, field, value): "Type/<id>"}``. It holds
keys and ids only, never entities.

:class:`ImportRefs` answers "which input resource does this reference name?" on
the way in: every input resource by ``Type/id``, by its Bundle ``fullUrl``
(``urn:uuid:...``) and by each identifier (the conditional form
``Type?identifier=system|value``). A reference it cannot resolve is kept as it
came by the caller (a Practitioner the Bundle does not hold stays
``Practitioner?identifier=...``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import unquote

if TYPE_CHECKING:
    from ..snapshot import Snapshot

_AMBIGUOUS = ""  # an alias two resources share: it resolves to neither


def field_value(entity: dict[str, Any], dotted: str) -> Any:
    """The value at a canonical dotted path of an entity (None if absent)."""
    value: Any = entity
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class NoRefs:
    """Resolves nothing: for rendering a resource only to learn its type or ids."""

    def reference(self, entity_type: str, field: str, value: Any) -> None:
        return None


class ExportRefs:
    """``(entity type, field, value) -> "Type/<id>"`` for the lookup fields of
    the types other entities refer to; and, for a type that makes several
    resources (a member: Patient + Coverage), the other resources too
    (:meth:`slot_reference`), so that a reference to an imported entity's
    Coverage names the id it came with."""

    def __init__(self) -> None:
        self._index: dict[tuple[str, str, Any], str] = {}
        self._slots: dict[tuple[str, str, Any, str], str] = {}

    def add(self, entity_type: str, field: str, value: Any, reference: str) -> None:
        self._index.setdefault((entity_type, field, _lookup(value)), reference)

    def reference(self, entity_type: str, field: str, value: Any) -> str | None:
        if value is None:
            return None
        return self._index.get((entity_type, field, value if isinstance(value, str) else str(value)))  # _lookup

    def slot_reference(self, entity_type: str, field: str, value: Any, slot: str) -> str | None:
        """The resource ``slot`` of the entity whose ``field`` is ``value``."""
        if value is None:
            return None
        return self._slots.get((entity_type, field, _lookup(value), slot))

    def __len__(self) -> int:
        return len(self._index)

    def targets(self) -> set[str]:
        """Every ``Type/id`` the index answers: resources of the scenario version."""
        return set(self._index.values()) | set(self._slots.values())

    @classmethod
    def build(cls, snapshot: "Snapshot", mapper: Any) -> "ExportRefs":
        """The index of a scenario version: one pass over each type other
        declarations refer to, a batch at a time, keeping only the fields and
        resources (slots) those references name (memory: those keys, not the
        scenario's)."""
        refs = cls()
        scenario_id = snapshot.info["scenario_id"]
        held = set(snapshot.entity_types())
        for entity_type, (fields, slot_names) in referenced(mapper).items():
            if entity_type not in held:
                continue
            resource_type = mapper.primary_resource_type(entity_type)
            slots = [slot for slot in _secondary_slots(mapper, entity_type) if slot[0] in slot_names]
            for entity in snapshot.entities(entity_type):
                target = f"{resource_type}/{mapper.resource_id(entity_type, entity, scenario_id)}"
                others = [(slot, f"{kind}/{plan_id(entity, slot, scenario_id)}") for slot, kind, plan_id, whens
                          in slots if not whens or any(get(entity) is not None for get in whens)]
                for field in fields:
                    value = field_value(entity, field)
                    if value is not None:
                        refs.add(entity_type, field, value, target)
                        for slot, other in others:
                            refs._slots.setdefault((entity_type, field, _lookup(value), slot), other)
        return refs


def _references(mapper: Any) -> Iterator[tuple[str, Any]]:
    """(entity type, reference declaration) of every reference element to another entity type."""
    from ..mapping.fhir_section import _walk, declarations_of

    for entity_type in mapper.declared_types():
        declared = declarations_of(mapper.mapping(entity_type))
        for decl in declared.resources if declared is not None else ():
            for element in _walk(decl.elements):
                if element.kind == "reference" and element.reference is not None and element.reference.target:
                    yield entity_type, element.reference


def referenced(mapper: Any) -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
    """Per entity type other declarations refer to: the fields (canonical
    paths) their references look it up by, and the resources (slots) they name."""
    found: dict[str, tuple[list[str], set[str]]] = {}
    for _, ref in _references(mapper):
        fields, slots = found.setdefault(ref.target, ([], set()))
        target = mapper.mapping(ref.target)
        for _, theirs in ref.fields:
            path = target.field(theirs).dotted
            if path not in fields:
                fields.append(path)
        if ref.slot is not None:
            slots.add(ref.slot)
    return {entity_type: (tuple(fields), frozenset(slots)) for entity_type, (fields, slots) in found.items()
            if entity_type not in mapper.folded_types()}


def links_to(mapper: Any, target: str) -> dict[str, list[tuple[str, str]]]:
    """Per entity type, the (own path, target's path) pairs its references to
    ``target`` are made of: ``{"lab_result": [("patient_id", "patient_id"),
    ("patient_mrn", "mrn")], ...}``."""
    found: dict[str, list[tuple[str, str]]] = {}
    for entity_type, ref in _references(mapper):
        if ref.target != target:
            continue
        own, theirs = mapper.mapping(entity_type), mapper.mapping(target)
        pairs = found.setdefault(entity_type, [])
        for mine, their in ref.fields:
            pair = (own.field(mine).dotted, theirs.field(their).dotted)
            if pair not in pairs:
                pairs.append(pair)
    return found


def _secondary_slots(mapper: Any, entity_type: str) -> list[tuple[str, str, Any, list]]:
    """(slot, resource type, id function, conditions) of an entity type's
    resources after its first (the mapper's compiled plan says them)."""
    plan = mapper.plan(entity_type)
    return [(r.slot, r.resource_type, plan.slot_id, r.whens) for r in plan.resources[1:]]


def _lookup(value: Any) -> Any:
    """Lookup values compare as text: a patient_id 42 and "42" are one patient."""
    return value if isinstance(value, str) else str(value)


# --- import side --------------------------------------------------------------------------

class ImportRefs:
    """Every input resource by ``Type/id``, and the other names a reference
    may give it (``fullUrl``, conditional identifier search)."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self._aliases: dict[Any, str] = {}  # fullUrl, or (type, system or None, identifier value)

    def add(self, resource: dict[str, Any], full_url: str | None = None, local: str | None = None) -> str:
        """Index ``resource``; return its ``Type/id`` (``local``, when the
        caller made it already). The caller checks for duplicates first (:meth:`holds`)."""
        if local is None:
            local = f"{resource['resourceType']}/{resource['id']}"
        self.resources[local] = resource
        if full_url:
            self._alias(full_url, local)
        kind = resource["resourceType"]
        for identifier in resource.get("identifier") or ():
            if identifier.__class__ is dict and identifier.get("value").__class__ is str:
                system = identifier.get("system")
                if system.__class__ is str:
                    self._alias((kind, system, identifier["value"]), local)
                self._alias((kind, None, identifier["value"]), local)
        return local

    def _alias(self, alias: Any, local: str) -> None:
        found = self._aliases.get(alias)
        self._aliases[alias] = local if found in (None, local) else _AMBIGUOUS

    def holds(self, local: str) -> dict[str, Any] | None:
        return self.resources.get(local)

    def release(self, local: str) -> None:
        """Let the resource ``local`` go (it was read in place, and no
        reference's lookup reads one of its type): only its type and id stay,
        so references to it still resolve."""
        kind, _, rid = local.partition("/")
        self.resources[local] = {"resourceType": kind, "id": rid}

    def canonical(self, reference: str) -> str | None:
        """``Type/id`` of the input resource ``reference`` names, or None."""
        if reference in self.resources:
            return reference
        if "?" in reference:
            return self._conditional(reference)
        found = self._aliases.get(reference)
        if found is None and "/" in reference and not reference.startswith("urn:"):
            path = reference.split("/_history/")[0].rstrip("/")  # an absolute URL: [base]/Type/id[/_history/n]
            tail = "/".join(path.split("/")[-2:])
            found = tail if tail in self.resources else None
        return found or None

    def _conditional(self, reference: str) -> str | None:
        """``Type?identifier=[system|]value`` (URL-encoded or not): the one
        input resource of that type with that identifier."""
        kind, _, query = unquote(reference).partition("?")
        name, _, wanted = query.partition("=")
        if name != "identifier" or "&" in wanted:
            return None
        system, bar, value = wanted.rpartition("|")
        found = self._aliases.get((kind, system if bar else None, value))
        return found or None

    def target(self, reference: str) -> dict[str, Any] | None:
        """The referenced input resource, or None when the input does not hold it."""
        local = self.canonical(reference)
        return None if local is None else self.resources[local]

    def __len__(self) -> int:
        return len(self.resources)


def references_in(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``Reference`` inside a resource: (the top-level element it is
    under, the dict holding ``reference``). An explicit stack, not recursion:
    resources nest deeply; and no paths built on the way: this runs for
    every resource of an import."""
    for element, value in resource.items():
        if value.__class__ is not dict and value.__class__ is not list:
            continue
        stack = [value]
        pop, push = stack.pop, stack.append
        while stack:
            node = pop()
            if node.__class__ is dict:
                if node.get("reference").__class__ is str:
                    yield element, node
                for child in node.values():
                    if child.__class__ is dict or child.__class__ is list:
                        push(child)
            else:
                for child in node:
                    if child.__class__ is dict or child.__class__ is list:
                        push(child)


def shared_references(resource: dict[str, Any], strings: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """:func:`references_in` as a list, and on the way each string value of
    the resource becomes the one object of its text in ``strings`` (added
    there when new): what the importer's indexing walks once a resource, as
    it reads it, keeping the holders for the resolving that follows. Parsed
    JSON holds a new string for every value: the per-patient Bundles of
    Synthea repeat their systems, codes and displays (big1000: 600,000
    string values, 30,000 texts, 43 MB of the 45 MB theirs), and what an
    import keeps of them lives until its save is done. (A plain loop: no
    generator resumed a reference.)"""
    share = strings.setdefault
    found: list[tuple[str, dict[str, Any]]] = []
    add = found.append
    for element, value in resource.items():
        kind = value.__class__
        if kind is str:
            resource[element] = share(value, value)
            continue
        if kind is not dict and kind is not list:
            continue
        stack = [value]
        pop, push = stack.pop, stack.append
        while stack:
            node = pop()
            if node.__class__ is dict:
                for key, child in node.items():
                    kind = child.__class__
                    if kind is str:
                        node[key] = share(child, child)
                    elif kind is dict or kind is list:
                        push(child)
                if node.get("reference").__class__ is str:
                    add((element, node))
            else:
                for index, child in enumerate(node):
                    kind = child.__class__
                    if kind is str:
                        node[index] = share(child, child)
                    elif kind is dict or kind is list:
                        push(child)
    return found


_REFERENCE_TEXT = re.compile(r'"reference"\s*:\s*"([^"\\]*)"')


def reference_texts(text: str) -> list[str] | None:
    """The texts of the references in a resource's JSON text (an NDJSON
    line), found in the text: a third of the time of a walk of the parsed
    resource (:func:`shared_references`), which the importer then makes only
    for a resource one of whose references is to be rewritten or checked for
    a cycle. Found as ``"reference": "<text>"``; None (walk it) unless every
    ``"reference"`` of the text is one of these, none with an escape in it
    (a key spelt with ``\\u`` escapes would be missed: none of those either).
    A ``"reference"`` at the top or inside another string may add a text the
    walk does not find, never hide one: the caller skips the walk only when
    every text found needs nothing."""
    if "\\u" in text:
        return None
    found = _REFERENCE_TEXT.findall(text)
    return found if len(found) == text.count('"reference"') else None
