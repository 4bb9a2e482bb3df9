"""An entity type's ``fhir:`` declarations compiled into a plan: per declared
resource, one writer and one reader an element (:mod:`.writers`,
:mod:`.readers`), compiled once when the type is first used, so a call runs
no interpretation, only the closures (the pattern of
:mod:`healthsim_state.engine.compile`); the writers and the readers of a
resource are then generated as one function each (``write_all``, and
``read_all``: :mod:`.generated`).
"""

from __future__ import annotations

from typing import Any, Callable

from ..mapping import fhir_section as d
from ..mapping.model import Mapping
from ..values import MISSING
from .forms import forms_reader, forms_writer
from .generated import general_reader, generated_reader, readers_in_order
from .ids import resource_id as _resource_id
from .paths import _compile_parent, _getter, _merge, _prune_owned, _set
from .primitives import TIMES_KEY, WITHOUT_KEY
from .readers import ELEMENT_READERS, Reader, _children_reader, _Import, _restore_unfit
from .writers import ELEMENT_WRITERS, Writer, _children_writer, _Export, _generated_writer, _keep_unfit

RESERVED_KEY = d.RESERVED_KEY


def _element(element: d.Element, mapping: Mapping, plan: "_Plan",
             decl: d.ResourceDeclaration, siblings: tuple[d.Element, ...] = ()) -> tuple[Writer, Reader]:
    """The writer and the reader of one declared element (siblings: for
    with:/without:, see :func:`.primitives._condition`)."""
    _compile_parent(element.steps)
    if element.kind == "children":
        child_plan = _ChildPlan(plan.mapper.mapping(element.children.entity_type), element.children, plan, decl)
        return _children_writer(element, child_plan, decl), _children_reader(element, child_plan, plan, decl)
    writer = ELEMENT_WRITERS[element.kind](element, mapping, plan, decl, siblings)
    reader = ELEMENT_READERS[element.kind](element, mapping, plan, decl, siblings)
    if element.also:  # other forms of the value (effectiveInstant): :mod:`.forms` chooses
        return (forms_writer(element, mapping, plan, decl, siblings, writer),
                forms_reader(element, mapping, plan, decl, reader))
    return writer, reader


class _Resource:
    """One declared resource of an entity type, compiled."""

    def __init__(self, decl: d.ResourceDeclaration, writers: list[Writer], readers: list[Reader],
                 whens: list[Callable], field_paths: dict[str, tuple[d.Step, ...]]):
        self.decl, self.writers, self.readers, self.whens = decl, writers, readers, whens
        self.read_all: Reader = general_reader(readers)  # the plan puts the generated one here
        self.slot, self.resource_type = decl.slot, decl.resource
        self.field_paths = field_paths  # column -> the path it is written at (lookups on import)
        self.constants = {e.path: (e.steps, e.value) for e in decl.elements if e.kind == "value"}
        self.paths = [e.path for e in decl.elements]
        self.write_all: Writer = lambda entity, made, context: [w(entity, made, context) for w in writers]
        self.unwanted = _none_of(whens)


def _none_of(whens: list[Callable]) -> Callable[[dict], bool]:
    """Whether none of a resource's ``when:`` columns holds a value (it is not made):
    one test for the usual single column, without a generator a call."""
    if len(whens) == 1:
        only = whens[0]
        return lambda entity: only(entity) is None
    return lambda entity: all(get(entity) is None for get in whens)


class _Plan:
    """An entity type's compiled declarations."""

    def __init__(self, mapper, mapping: Mapping, decls: d.Declarations):
        self.mapping, self.mapper = mapping, mapper
        self.entity_type = mapping.entity
        self.system = d.ENTITY_SYSTEM + mapping.entity
        self.key_fields = mapping.key_fields
        self.key_getters = [_getter(f.path) for f in self.key_fields]
        self.fields = {f.column: f for f in mapping.fields}
        self.child_plans: list[_ChildPlan] = []  # folded types' (claim_line in Claim.item)
        self.resources = [self._compile(decl) for decl in decls.resources]
        self.by_slot = {r.slot: r for r in self.resources}

    def _compile(self, decl: d.ResourceDeclaration) -> _Resource:
        writers, readers = [], []
        field_paths: dict[str, tuple[d.Step, ...]] = {}
        for element in decl.elements:
            writer, reader = _element(element, self.mapping, self, decl, decl.elements)
            writers.append(writer)
            readers.append(reader)
            if element.kind == "field":
                field_paths[element.field] = element.steps
        whens = [_getter(self.fields[c].path) for c in decl.when]
        pairs = readers_in_order(decl.elements, readers)
        compiled = _Resource(decl, writers, [reader for _, reader in pairs], whens, field_paths)
        compiled.write_all = _generated_writer(decl.elements, writers, self.mapping, decl.slot)
        # One function reads the resource (see .generated); compiled.readers stay the general way.
        compiled.read_all = generated_reader(pairs, self.mapping, decl.elements, f"{self.entity_type} {decl.slot}")
        return compiled

    def key_of(self, entity: dict) -> tuple:
        return tuple(get(entity) for get in self.key_getters)

    def slot_id(self, entity: dict, slot: str, scenario_id: str, key: tuple | None = None) -> str:
        kept = entity.get(RESERVED_KEY)
        if isinstance(kept, dict):
            record = kept.get(slot)
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                return record["id"]
        return _resource_id(scenario_id, self.entity_type, key if key is not None else self.key_of(entity), slot)


class _ChildPlan:
    """The elements of a folded child type (claim_line in Claim.item), compiled."""

    def __init__(self, mapping: Mapping, children: d.Children, parent: _Plan, decl: d.ResourceDeclaration):
        self.mapping = mapping
        self.link = [mapping.field(c) for c in children.link]
        pairs = [_element(e, mapping, parent, decl, children.elements) for e in children.elements]
        self.writers = [w for w, _ in pairs]
        self.write_all = _generated_writer(children.elements, self.writers, mapping, f"{decl.slot} item")
        ordered = readers_in_order(children.elements, [r for _, r in pairs])
        self.readers = [reader for _, reader in ordered]
        self.read_all = generated_reader(ordered, mapping, children.elements, f"{decl.slot} item {mapping.entity}")
        parent.child_plans.append(self)

    def item(self, kid: dict, context: _Export, slot: str) -> dict:
        item: dict[str, Any] = {}
        kept = kid.get(RESERVED_KEY)
        record = kept.get(slot) if isinstance(kept, dict) else None
        parents, context.unfit = context.unfit, {}
        parent_record = context.record
        if isinstance(record, dict) and TIMES_KEY in record and parent_record is not None:
            context.record = {**parent_record, TIMES_KEY: record[TIMES_KEY]}  # the item's kept date-times
        without = record.get(WITHOUT_KEY) if isinstance(record, dict) else None
        if context.record and (without or WITHOUT_KEY in context.record):
            context.record = {**context.record, WITHOUT_KEY: without}  # the item's own, not its parent's
        self.write_all(kid, item, context)
        if context.unfit:
            _keep_unfit(item, context.unfit)
        context.unfit, context.record = parents, parent_record
        if isinstance(record, dict) and isinstance(record.get("extra"), dict):
            item = _merge(item, record["extra"])
        return item

    def entity(self, item: dict, parent_key: tuple, context: _Import, slot: str) -> dict:
        kid: dict[str, Any] = {}
        for field, value in zip(self.link, parent_key):
            _set(kid, field.path, value)
        parents, context.drops = context.drops, []  # the parent's constants are dropped after all its elements
        parent_times, context.times = context.times, {}
        parent_without, context.without = context.without, {}
        self.read_all(item, kid, context)
        context.drop_constants()
        context.drops = parents
        times, context.times = context.times, parent_times
        without, context.without = context.without, parent_without
        _restore_unfit(item, kid)
        extra = _prune_owned(item)  # the item is the reading's: its parent's list lets it go
        record = {"extra": extra} if extra is not MISSING else {}
        if times:
            record[TIMES_KEY] = times
        if without:
            record[WITHOUT_KEY] = without
        if record:
            kid[RESERVED_KEY] = {slot: record}
        return kid
