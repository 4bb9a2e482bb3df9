"""The FHIR mapper: entities to R4 resources and back, as the ``fhir:`` sections say.

A generic interpreter of the declarations
(:mod:`healthsim_state.mapping.fhir_section`): nothing here knows a patient
from a claim. This module is the front: what is declared, and the calls of
both directions. The work is done below it:

- :mod:`.plan`: an entity type's declarations compiled once, when first used,
  into a plan of small closures, a writer and a reader an element;
- :mod:`.writers`: ``to_resources(entity)``: each declared resource whose
  ``when`` columns hold a value, with ``resourceType``, a stable ``id``
  (:mod:`.ids`), ``meta.profile``, the entity's key in ``identifier[0]``
  (system ``urn:healthsim:<type>``), then the elements in declared order.
  Same entity, same bytes.
- :mod:`.readers`: ``from_resource(resource)``: the declaration that reads it
  (by resource type, ``match`` constants, ``own`` identifiers) takes each
  element it knows out of a copy of the resource; what is left (extensions,
  extra identifiers, ``text``, codings of other systems, references to
  resources not in the input) is kept in the entity under ``_fhir``
  (:data:`RESERVED_KEY`), with the resource's id:
  ``{"_fhir": {"<slot>": {"id": ..., "extra": {...}}}}``. An export merges it
  back, so an imported resource comes out again with every element under its id.
- :mod:`.paths` and :mod:`.primitives`: element paths in resources and
  entities, and values as FHIR primitives, for both.
"""

from __future__ import annotations

import copy

from ..errors import FhirMappingError
from ..mapping import fhir_section as d
from ..mapping.model import Mapping
from . import writers
from .paths import _columns_of
from .plan import _Plan
from .readers import ImportRefs, ResourceReader
from .writers import ExportRefs

RESERVED_KEY = d.RESERVED_KEY
__all__ = ["RESERVED_KEY", "ExportRefs", "FhirMapper", "ImportRefs"]


class FhirMapper:
    """Entities to FHIR R4 resources and back, for every type with a ``fhir:`` section."""

    def __init__(self, mappings: dict[str, Mapping]):
        self._mappings = dict(mappings)
        self._declared: dict[str, d.Declarations] = {}
        problems: list = []
        for entity, mapping in self._mappings.items():
            decls = d.declarations_of(mapping, problems)
            if decls is not None:
                self._declared[entity] = decls
        if problems:
            raise FhirMappingError(problems)
        d.check(self._mappings, self._declared)
        self._folded = d.folded(self._declared)
        self._plans: dict[str, _Plan] = {}
        self.reading = ResourceReader(self.plan, self._declared)  # the import direction (lookups cached)

    @classmethod
    def from_registry(cls, registry) -> "FhirMapper":
        """The mapper of a :class:`~healthsim_state.engine.registry.Registry` (``sm.registry``),
        made once per registry."""
        found = getattr(registry, "_fhir_mapper", None)
        if found is None:
            found = cls({entity: codec.mapping for entity, codec in registry.codecs.items()})
            registry._fhir_mapper = found
        return found

    def fresh(self) -> "FhirMapper":
        """This mapper with a reading of its own (an empty lookup cache: the
        values of an input's resources are that input's), sharing the compiled
        plans (the generated functions of every type, made once a registry,
        not once an import)."""
        other = copy.copy(self)  # the same _plans dict: plans compiled by either are the other's
        other.reading = ResourceReader(other.plan, other._declared)
        return other

    # --- what is declared ------------------------------------------------------------------

    def declared_types(self) -> tuple[str, ...]:
        return tuple(e for e in self._mappings if e in self._declared)

    def folded_types(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return dict(self._folded)

    def lookup_fields(self, entity_type: str) -> tuple[str, ...]:
        """The canonical paths of ``entity_type`` that references of other types name."""
        mapping = self._mappings[entity_type]
        columns: list[str] = list(mapping.primary_key)
        for decls in self._declared.values():
            for decl in decls.resources:
                for element in d._walk(decl.elements):
                    r = element.reference
                    if r is not None and r.target == entity_type:
                        columns += [theirs for _, theirs in r.fields if theirs not in columns]
        return tuple(mapping.field(c).dotted for c in columns)

    def references(self, entity_type: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """The other entity types ``entity_type`` (or its folded children) refers to,
        each with its (own column, target column) pairs, in declared order."""
        found = []
        for decl in self._declared.get(entity_type, d.Declarations(entity_type, "", ())).resources:
            for element in d._walk(decl.elements):
                r = element.reference
                if r is not None and r.target is not None and (r.target, r.fields) not in found:
                    found.append((r.target, r.fields))
        return tuple(found)

    def mapping(self, entity_type: str) -> Mapping:
        return self._mappings[entity_type]

    def mapped_columns(self, entity_type: str) -> tuple[str, ...]:
        """The columns of ``entity_type`` its declarations (or its parent's, for a
        folded type) write and read: its key, and every column an element names."""
        mapping = self._mappings[entity_type]
        columns = list(mapping.primary_key)
        parent = self._folded.get(entity_type)
        if parent is not None:
            sources = [e.children.elements for decl in self._declared[parent[0]].resources
                       for e in d._walk(decl.elements) if e.kind == "children" and e.children.entity_type == entity_type]
        else:
            sources = [decl.elements for decl in self._declared[entity_type].resources]
        for elements in sources:
            for element in elements:
                columns += [c for c in _columns_of(element) if c not in columns]
        return tuple(columns)

    def plan(self, entity_type: str) -> _Plan:
        found = self._plans.get(entity_type)
        if found is None:
            decls = self._declared.get(entity_type)
            if decls is None:
                raise KeyError(f"entity type {entity_type!r} has no fhir: section; declared: "
                               f"{', '.join(self.declared_types())}")
            found = self._plans[entity_type] = _Plan(self, self._mappings[entity_type], decls)
        return found

    def resource_id(self, entity_type: str, entity: dict, scenario_id: str) -> str:
        plan = self.plan(entity_type)
        return plan.slot_id(entity, plan.resources[0].slot, scenario_id)

    def slot_reference(self, entity_type: str, entity: dict, scenario_id: str, slot: str) -> str:
        """``"<Type>/<id>"`` of one of the entity's resources (``slot``): what an
        ExportRefs' optional ``slot_reference(entity_type, field, value, slot)``
        returns for the entity it finds (a claim's ``insurance.coverage`` -> the
        member's Coverage). Without that method the mapper derives the id from
        the scenario and the key, which misses the ids an imported entity keeps."""
        plan = self.plan(entity_type)
        return f"{plan.by_slot[slot].resource_type}/{plan.slot_id(entity, slot, scenario_id)}"

    def primary_resource_type(self, entity_type: str) -> str:
        return self.plan(entity_type).resources[0].resource_type

    # --- out --------------------------------------------------------------------------------
    def to_resources(self, entity_type: str, entity: dict, *, scenario_id: str, refs: ExportRefs,
                     children: dict[str, list[dict]] | None = None) -> list[dict]:
        return writers.to_resources(self.plan(entity_type), entity, scenario_id, refs, children)

    # --- in ---------------------------------------------------------------------------------

    def entity_types_of(self, resource: dict) -> tuple[str, ...] | None:
        """The entity type(s) a resource becomes (None: no declaration reads it)."""
        return self.reading.entity_types_of(resource)

    def from_resource(self, resource: dict, *, refs: ImportRefs) -> list[tuple[str, dict]]:
        """One resource as entities (its type's, and folded children's), each in
        canonical shape with what the declaration does not read under ``_fhir``."""
        return self.reading.from_resource(resource, refs=refs)

    def map_resource(self, resource: dict, *, refs: ImportRefs, in_place: bool = False
                     ) -> list[tuple[str, dict]] | None:
        """:meth:`from_resource`, or None when no declaration reads the resource
        (the importer's one call that both chooses the declaration and maps;
        ``in_place``: it may take the elements out of ``resource`` itself)."""
        return self.reading.map_resource(resource, refs=refs, in_place=in_place)

    def read_in_place(self, resource_type: str) -> bool:
        """Whether :meth:`map_resource` with ``in_place`` reads a resource of
        this type from itself, not from a copy (no reference's lookup reads one)."""
        return self.reading.read_in_place(resource_type)
