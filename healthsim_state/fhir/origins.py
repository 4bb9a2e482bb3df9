"""Which input resource an imported entity came from, for error messages.

The store checks an import's entities when it saves them (a required column
empty, a value its type refuses), and names the entity (``claim_line[1] @
line_number``). The person importing FHIR knows resources, not our entities:
:func:`input_error` turns the first such problem into a
:class:`~healthsim_state.errors.FhirInputError` naming the resource type, id,
element and, found by reading the input again (only on this error path: no
memory spent on it while importing), the file and line or Bundle entry.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..errors import FhirInputError, Problem, ValidationError
from ..mapping import fhir_section as d
from .paths import _getter

RESERVED_KEY = d.RESERVED_KEY


def input_error(error: ValidationError, entities: dict[str, list[dict]], mapper: Any,
                read: Callable[[], Iterator[tuple[dict, Any, str]]]) -> FhirInputError | None:
    """A FhirInputError for the first problem inside an entity made from a
    resource, or None (the save's error then stands as it is). ``read``
    yields (resource, fullUrl, source) of the input again."""
    for problem in error.problems:
        found = _origin(problem, entities, mapper)
        if found is None:
            continue
        resource_type, resource_id, element = found
        more = len(error.problems) - 1
        message = f"{problem.message} ({problem.entity_type}[{problem.position}] @ {problem.path})"
        if more:
            message += f"; and {more} more problem{'s' if more > 1 else ''}"
        made = FhirInputError(message, resource_type=resource_type, resource_id=resource_id, element=element)
        source = _source(read, resource_type, resource_id)
        if source is not None:
            made.args = (f"{source}: {made}",)
        made.source = source  # type: ignore[attr-defined]
        return made
    return None


def _origin(problem: Problem, entities: dict[str, list[dict]], mapper: Any) -> tuple[str, str, str | None] | None:
    """(resource type, id, FHIR element) of the resource a problem's entity came from."""
    items = entities.get(problem.entity_type or "")
    if items is None or problem.position is None or not 0 <= problem.position < len(items):
        return None
    entity = items[problem.position]
    folded = mapper.folded_types().get(problem.entity_type)
    if folded is None:
        found = _record(mapper, problem.entity_type, entity)
        if found is None:
            return None
        resource_type, resource_id, decl = found
        element = _element_path(decl.elements, mapper.mapping(problem.entity_type), problem.path)
        return resource_type, resource_id, element
    parent_type, link = folded
    mapping = mapper.mapping(problem.entity_type)
    links = [_getter(mapping.field(c).path) for c in link]
    key = tuple(get(entity) for get in links)
    before = sum(1 for other in items[:problem.position] if tuple(get(other) for get in links) == key)
    parent_keys = [_getter(f.path) for f in mapper.mapping(parent_type).key_fields]
    for parent in entities.get(parent_type, ()):
        if tuple(get(parent) for get in parent_keys) == key:
            found = _record(mapper, parent_type, parent)
            if found is None:
                return None
            resource_type, resource_id, decl = found
            for element in d._walk(decl.elements):
                if element.kind == "children" and element.children.entity_type == problem.entity_type:
                    inner = _element_path(element.children.elements, mapping, problem.path)
                    at = f"{element.path}[{before}]"
                    return resource_type, resource_id, f"{at}.{inner}" if inner else at
            return resource_type, resource_id, None
    return None


def _record(mapper: Any, entity_type: str, entity: dict) -> tuple[str, str, d.ResourceDeclaration] | None:
    """The resource type, id and declaration of the resource an entity was read from."""
    kept = entity.get(RESERVED_KEY)
    if not isinstance(kept, dict):
        return None
    plan = mapper.plan(entity_type)
    for slot, record in kept.items():
        if isinstance(record, dict) and isinstance(record.get("id"), str) and slot in plan.by_slot:
            compiled = plan.by_slot[slot]
            return compiled.resource_type, record["id"], compiled.decl
    return None


def _element_path(elements: Iterable[d.Element], mapping: Any, dotted: str | None) -> str | None:
    """The FHIR path of the element that reads the column at ``dotted``."""
    for element in elements:
        if element.kind == "field" and mapping.field(element.field).dotted == dotted:
            return element.path
    return None


def _source(read: Callable[[], Iterator[tuple[dict, Any, str]]], resource_type: str, resource_id: str) -> str | None:
    try:
        for resource, _, source in read():
            if resource.get("resourceType") == resource_type and resource.get("id") == resource_id:
                return source
    except (FhirInputError, OSError):  # the input changed since: no file named
        return None
    return None

