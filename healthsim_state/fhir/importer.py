"""``import-fhir``: FHIR R4 files into one scenario, in one save.

Reads Bundles (transaction, batch, collection, searchset), NDJSON files of
resources, and directories of either (a Bulk Data output with its
``manifest.json``: the files it lists; otherwise every ``*.json`` and
``*.ndjson`` below it, in name order, as Synthea writes a folder of
per-patient Bundles). The steps, each over every input resource:

1. read and check: JSON (file and line), a resource with a valid ``id`` (one
   from an ``urn:uuid:`` fullUrl when it has none), the dates, dateTimes and
   codes the declarations read (:data:`CHECKS`); an id given twice with two
   different contents is an error (the same resource twice, as per-patient
   Bundles repeat a Practitioner, is read once); on the same walk of each
   resource as it is read, its equal strings are shared and its references found;
2. index (:class:`ImportRefs`) and resolve: every reference to a resource of
   the input (``urn:uuid:``, ``Type/id``, an absolute URL, conditional
   ``Type?identifier=system|value``) becomes ``Type/id``, the form an export
   writes; one to a resource the input does not hold is kept as it came. A
   resource referring to itself, or a cycle of references through one element
   between resources of one type (``Location.partOf``), is an error;
3. map: a resource a declaration maps becomes entities
   (``mapper.map_resource``, which also says when none does; entities with
   equal keys, the several Observations of one vital_sign, merge into one);
   any other is kept whole as a ``fhir_resource`` entity (resource type, id,
   patient, the resource).

Nothing is saved unless every resource passed: a :class:`FhirInputError`
names the file, the resource and the element.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..engine.batch import no_cyclic_gc
from ..errors import FhirInputError, ValidationError
from .export import KEPT_TYPE, MANIFEST, PATIENT_ELEMENTS, provenance_patient
from .origins import input_error
from .references import ImportRefs, reference_texts, shared_references

if TYPE_CHECKING:
    from .ports import ScenarioWriter

BUNDLE_TYPES = ("transaction", "batch", "collection", "searchset")
ID_NAMESPACE = uuid.UUID("7a4b8c1d-2e3f-5a6b-9c0d-6865616c7468")  # ids of resources that came with none
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE = re.compile(r"([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?")
_DATETIME = re.compile(r"([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])"
                       r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?")
_CODE = re.compile(r"[^\s]+( [^\s]+)*")
GENDERS = frozenset({"male", "female", "other", "unknown"})


def _valid_date(text: Any) -> bool:
    if not isinstance(text, str) or not _DATE.fullmatch(text):
        return False
    return len(text) < 10 or _calendar_day(text)


def _valid_datetime(text: Any) -> bool:
    if not isinstance(text, str) or not _DATETIME.fullmatch(text):
        return False
    return len(text) < 10 or _calendar_day(text[:10])


def _calendar_day(text: str) -> bool:
    try:
        _dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _valid_code(text: Any) -> bool:
    return isinstance(text, str) and _CODE.fullmatch(text) is not None


# Top-level elements checked in every resource: (test, what a valid value is).
CHECKS: dict[str, tuple[Any, str]] = {
    "birthDate": (_valid_date, "a date (YYYY, YYYY-MM or YYYY-MM-DD, a real day)"),
    "recordedDate": (_valid_datetime, "a dateTime"),
    "authoredOn": (_valid_datetime, "a dateTime"),
    "issued": (_valid_datetime, "an instant"),
    "created": (_valid_datetime, "a dateTime"),
    "date": (_valid_datetime, "a date or dateTime"),
    "occurrenceDateTime": (_valid_datetime, "a dateTime"),
    "status": (_valid_code, "a code (no leading, trailing or double spaces)"),
    "gender": (lambda value: value in GENDERS, "one of male, female, other, unknown"),
}
PERIODS = ("period", "effectivePeriod", "onsetPeriod", "billablePeriod", "servicedPeriod", "performedPeriod")


@dataclass
class ImportReport:
    """What an import did: resources read per type, entities made per type,
    resources kept as they came per type, and the scenario saved."""

    scenario_id: str
    name: str
    files: int
    read: dict[str, int] = field(default_factory=dict)
    made: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"scenario_id": self.scenario_id, "name": self.name, "files": self.files,
                "resources_read": self.read, "entities_made": self.made, "kept_as_is": self.kept}


@dataclass
class _Input:
    resource: dict[str, Any]
    source: str
    local: str = ""
    holders: list[tuple[str, dict[str, Any]]] | None = None  # its references, found as it was indexed
    texts: list[str] | None = None  # or their texts, found in its NDJSON line (see reference_texts)


def _error(message: str, *, source: str | None = None, resource_type: str | None = None,
           resource_id: str | None = None, element: str | None = None) -> FhirInputError:
    """A :class:`FhirInputError` whose message starts with where the input is
    (the file, and the line of an NDJSON file or the Bundle entry)."""
    if resource_type is None and element is None:
        error = FhirInputError(message)
        error.args = (f"{source}: {message}" if source else message,)
    else:
        error = FhirInputError(message, resource_type=resource_type, resource_id=resource_id, element=element)
        if source:
            error.args = (f"{source}: {error}",)
    error.source = source  # type: ignore[attr-defined]
    return error


# --- reading -------------------------------------------------------------------------------

def input_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files the paths name: files as given, directories expanded."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(_directory_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise _error("no such file or directory", source=str(path))
    return files


def _directory_files(directory: Path) -> list[Path]:
    """A Bulk Data output's files (those its manifest lists), else every
    ``*.json`` and ``*.ndjson`` below the directory, in name order."""
    manifest = directory / MANIFEST
    if manifest.is_file():
        document = _load(manifest.read_bytes(), str(manifest))
        if isinstance(document, dict) and isinstance(document.get("output"), list):
            return [_listed(directory, item, str(manifest)) for item in document["output"]]
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in (".json", ".ndjson")
                  and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def _listed(directory: Path, item: Any, source: str) -> Path:
    """The file of a manifest's output entry: its ``url`` relative to the
    directory (an absolute URL: its last part), never outside it."""
    url = item.get("url") if isinstance(item, dict) else None
    if not isinstance(url, str) or not url:
        raise _error(f"an output entry without a url: {item!r}", source=source)
    path = directory / (url.rsplit("/", 1)[-1] if "://" in url else url)
    if not path.resolve().is_relative_to(directory.resolve()):
        raise _error(f"the output url {url!r} points outside {directory}", source=source)
    if not path.is_file():
        raise _error(f"the output url {url!r} names no file in {directory}", source=source)
    return path


_decode = json.JSONDecoder().decode


def _load(data: bytes | str, source: str) -> Any:
    try:
        return _decode(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as error:
        raise _error(f"not UTF-8 text (byte {error.start})", source=source) from None
    except json.JSONDecodeError as error:
        raise _error(f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                     source=source) from None
    except RecursionError:
        raise _error("not usable JSON: nested too deeply", source=source) from None


def read_resources(files: Iterable[Path]) -> Iterator[tuple[dict[str, Any], str | None, str]]:
    """(resource, fullUrl, source) of every resource in the files."""
    for resource, full_url, source, _ in read_with_text(files):
        yield resource, full_url, source


def read_with_text(files: Iterable[Path]) -> Iterator[tuple[dict[str, Any], str | None, str, str | None]]:
    """:func:`read_resources`, each with the JSON text it was parsed from
    when that is its own (an NDJSON line of one resource), else None."""
    for path in files:
        data = path.read_bytes()
        if path.suffix != ".ndjson":
            for resource, full_url, source in _resources_of(_load(data, str(path)), str(path)):
                yield resource, full_url, source, None
            continue
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise _error(f"not UTF-8 text (byte {error.start})", source=str(path)) from None
        del data  # the text only, from here (an import's peak memory is while it reads its biggest file)
        where = f"{path}, line "  # each line's source: this and its number (no Path formatted a line)
        for number, line in enumerate(_lines(text), start=1):
            if line and not line.isspace():
                try:
                    document = _decode(line)  # the fast path: no per-line source text made
                except (ValueError, RecursionError):
                    document = _load(line, f"{path}, line {number}")
                if document.__class__ is dict and document.get("resourceType").__class__ is str \
                        and document["resourceType"] != "Bundle":  # the usual line: no generator of its own
                    yield document, None, where + str(number), line
                else:
                    for resource, full_url, source in _resources_of(document, f"{path}, line {number}"):
                        yield resource, full_url, source, None


def _lines(text: str) -> Iterator[str]:
    """``text.split("\\n")``, one line at a time: no list of every line held
    beside the text."""
    start, end_of_text = 0, len(text)
    while start <= end_of_text:
        end = text.find("\n", start)
        if end < 0:
            end = end_of_text
        yield text[start:end]
        start = end + 1


def _resources_of(document: Any, source: str) -> Iterator[tuple[dict[str, Any], str | None, str]]:
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise _error("not a FHIR resource (a JSON object with a resourceType)", source=source)
    if document["resourceType"] != "Bundle":
        yield document, None, source
        return
    kind = document.get("type")
    if kind not in BUNDLE_TYPES:
        raise _error(f"a Bundle of type {kind!r} is not read; the types read: {', '.join(BUNDLE_TYPES)}",
                     source=source, resource_type="Bundle", resource_id=document.get("id"), element="type")
    for index, entry in enumerate(document.get("entry") or ()):
        if not isinstance(entry, dict):
            raise _error("a Bundle entry must be an object", source=source, element=f"entry[{index}]")
        method = (entry.get("request") or {}).get("method") if isinstance(entry.get("request"), dict) else None
        resource = entry.get("resource")
        if resource is None and method in ("DELETE", "GET", "HEAD"):
            continue
        at = f"{source} entry[{index}]"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise _error("not a FHIR resource (a JSON object with a resourceType)", source=at,
                         element=f"entry[{index}].resource")
        if resource["resourceType"] == "Bundle":
            yield from _resources_of(resource, at)
        else:
            yield resource, entry.get("fullUrl"), at


# --- checking and indexing -----------------------------------------------------------------

def check_resource(resource: dict[str, Any], full_url: str | None, source: str) -> None:
    """Give ``resource`` an id if it has none (its urn:uuid fullUrl's, else a
    uuid5 of its content), and check the elements of :data:`CHECKS`."""
    kind = resource["resourceType"]
    if "id" not in resource:
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            resource["id"] = full_url[len("urn:uuid:"):]
        else:
            resource["id"] = str(uuid.uuid5(ID_NAMESPACE, json.dumps(resource, sort_keys=True, default=str)))
    rid = resource["id"]
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise _error(f"{rid!r} is not a FHIR id (1 to 64 letters, digits, '-' and '.')", source=source,
                     resource_type=kind, resource_id=str(rid), element="id")
    for name, value in resource.items():
        check = _CHECK_OF.get(name, _UNSEEN)
        if check is _UNSEEN:
            check = _check_of(name)
        if check is None:
            continue
        if check is _PERIOD:
            if not isinstance(value, dict):
                continue
            for end in ("start", "end"):
                if end in value and not _passes(_valid_datetime, value[end]):
                    raise _error(f"{value[end]!r} is not a dateTime", source=source, resource_type=kind,
                                 resource_id=rid, element=f"{name}.{end}")
        elif not _passes(check[0], value):
            raise _error(f"{value!r} is not {check[1]}", source=source, resource_type=kind,
                         resource_id=rid, element=name)


_CHECK_OF: dict[str, Any] = {}  # a top-level name -> its check, _PERIOD or None: found once a name
_UNSEEN, _PERIOD = object(), object()
_PASSED: dict[Any, set[str]] = {}  # a check -> texts it passed (statuses, the times of an encounter's vitals)
_PASSED_LIMIT = 50_000


def _passes(test: Any, value: Any) -> bool:
    """``test(value)``, a text passed once not tested again (the tests are
    pure: the same text passes the same test)."""
    if value.__class__ is not str:
        return test(value)
    passed = _PASSED.get(test)
    if passed is None:
        passed = _PASSED[test] = set()
    if value in passed:
        return True
    if not test(value):
        return False
    if len(passed) >= _PASSED_LIMIT:
        passed.clear()
    passed.add(value)
    return True


def _check_of(name: str) -> Any:
    """The check of a top-level element (:data:`CHECKS`, any ``*DateTime``),
    ``_PERIOD`` for one of :data:`PERIODS`, or None; remembered (up to a
    bound: the names of an input need not be FHIR's)."""
    check: Any = CHECKS.get(name)
    if check is None and name.endswith("DateTime"):
        check = (_valid_datetime, "a dateTime")
    if name in PERIODS:
        check = _PERIOD
    if len(_CHECK_OF) < 10_000:
        _CHECK_OF[name] = check
    return check


def index_inputs(items: Iterable[tuple]) -> tuple[ImportRefs, list[_Input]]:
    """Check every resource and index it; the same resource twice is read
    once, two different ones under one ``Type/id`` are an error. ``items``:
    :func:`read_resources`' (resource, fullUrl, source), or
    :func:`read_with_text`'s (the text too: its references found there)."""
    refs = ImportRefs()
    inputs: list[_Input] = []
    sources: dict[str, str] = {}
    strings: dict[str, str] = {}  # equal strings of the input made one object (see shared_references)
    for item in items:
        resource, full_url, source = item[0], item[1], item[2]
        check_resource(resource, full_url, source)
        local = f"{resource['resourceType']}/{resource['id']}"
        held = refs.resources.get(local)  # refs.holds(local)
        if held is not None:
            if held == resource:
                continue
            raise _error(f"the id is given to two different resources (first in {sources[local]})",
                         source=source, resource_type=resource["resourceType"], resource_id=resource["id"],
                         element="id")
        refs.add(resource, full_url, local)
        sources[local] = source
        texts = reference_texts(item[3]) if len(item) > 3 and item[3] is not None else None
        if texts is not None:  # an NDJSON line: its references' texts found in it, no walk (see resolve_references)
            inputs.append(_Input(resource, source, local, None, texts))
        else:
            inputs.append(_Input(resource, source, local, shared_references(resource, strings)))  # one walk: both
    return refs, inputs


def resolve_references(refs: ImportRefs, inputs: list[_Input]) -> None:
    """Rewrite each reference to an input resource as ``Type/id``; refuse a
    resource referring to itself or a cycle through one element of one type."""
    edges: dict[str, dict[str, list[str]]] = {}
    sources = {item.local: item for item in inputs}
    strings: dict[str, str] = {}  # for inputs not indexed by index_inputs (no holders): shared here
    held = refs.resources
    for item in inputs:
        kind = item.resource["resourceType"]
        texts, item.texts = item.texts, None
        if texts is not None:
            # Its references' texts only (an NDJSON line): each one the Type/id of an input resource of
            # another type (what our export writes) is left as it is and makes no edge: nothing to do.
            prefix = kind + "/"
            for text in texts:
                if text not in held or text.startswith(prefix):
                    break
            else:
                continue
        holders = item.holders if item.holders is not None else shared_references(item.resource, strings)
        item.holders = None
        for where, holder in holders:
            target = refs.canonical(holder["reference"])
            if target is None:
                continue
            holder["reference"] = target
            if target == item.local:
                raise _error(f"a reference cycle: the resource refers to itself ({target})",
                             source=item.source, resource_type=kind, resource_id=item.resource["id"],
                             element=where)
            if target.startswith(kind + "/"):
                edges.setdefault(where, {}).setdefault(item.local, []).append(target)
    for where, graph in edges.items():
        cycle = _cycle(graph)
        if cycle:
            first = sources[cycle[0]]
            raise _error(f"a reference cycle through {where}: {' -> '.join(cycle + [cycle[0]])}",
                         source=first.source, resource_type=first.resource["resourceType"],
                         resource_id=first.resource["id"], element=where)


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> targets) as a node list, or None; an
    explicit stack (a long partOf chain must not hit the recursion limit)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        path: list[str] = [start]
        state[start] = 1
        stack = [iter(graph.get(start, ()))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    return None


# --- mapping -------------------------------------------------------------------------------

def kept_entity(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource no declaration maps, as a ``fhir_resource`` entity."""
    patient = None
    if resource["resourceType"] == "Patient":
        patient = f"Patient/{resource['id']}"
    for element in PATIENT_ELEMENTS:
        value = resource.get(element)
        if patient is None and isinstance(value, dict) and isinstance(value.get("reference"), str):
            patient = value["reference"]
    if patient is None:
        patient = provenance_patient(resource)
    return {"resource_type": resource["resourceType"], "resource_id": resource["id"], "patient_reference": patient,
            "resource": resource, "_provenance": {"source_type": "loaded", "source_system": "fhir"}}


def map_inputs(mapper: Any, registry: Any, refs: ImportRefs, inputs: list[_Input]
               ) -> tuple[dict[str, list[dict[str, Any]]], Counter, Counter]:
    """Entities per type (equal keys merged, in first-seen order), resources
    read per type, and resources kept as they came per type."""
    merged: dict[str, dict[Any, dict[str, Any]]] = {}
    key_paths = {entity: [f.path for f in codec.mapping.key_fields] for entity, codec in registry.codecs.items()}
    read: Counter = Counter()
    kept: Counter = Counter()
    map_resource, read_in_place = mapper.map_resource, mapper.read_in_place  # bound once, not once a resource
    places: dict[str, bool] = {}  # a resource type -> read_in_place's answer (one a type)
    for item in inputs:
        resource = item.resource
        kind = resource["resourceType"]  # before the mapping: a resource read in place loses it
        read[kind] += 1
        try:
            made = map_resource(resource, refs=refs, in_place=True)  # read once: no copy needed
        except FhirInputError as error:
            if getattr(error, "source", None) is None:  # the mapper's: say which file too
                error.source = item.source  # type: ignore[attr-defined]
                error.args = (f"{item.source}: {error}",)
            raise
        if made is None:  # no declaration reads it: kept as it came
            kept[kind] += 1
            _add(merged, KEPT_TYPE, kept_entity(resource), key_paths)
            continue
        in_place = places.get(kind)
        if in_place is None:
            in_place = places[kind] = read_in_place(kind)
        if in_place:  # what is left of it: garbage now
            refs.release(item.local)
            item.resource = None
        for entity_type, entity in made:
            if "_provenance" not in entity:  # else the store's defaults would say "generated" by a HealthSim product
                entity["_provenance"] = {"source_type": "loaded", "source_system": "fhir"}
            _add(merged, entity_type, entity, key_paths)
    entities = {entity_type: list(by_key.values()) for entity_type, by_key in merged.items()}
    return entities, read, kept


def _add(merged: dict[str, dict[Any, dict[str, Any]]], entity_type: str, entity: dict[str, Any],
         key_paths: dict[str, list[tuple[str, ...]]]) -> None:
    by_key = merged.setdefault(entity_type, {})
    paths = key_paths.get(entity_type, ())
    if len(paths) == 1 and len(paths[0]) == 1:  # the usual key: one top-level field
        part = entity.get(paths[0][0])
        key = (part if part is None or part.__class__ in (str, int) else _at(entity, paths[0]),)
    else:
        key = tuple(_at(entity, path) for path in paths)
    if not key or None in key:
        by_key[object()] = entity  # no key to merge by: an entity of its own
    elif key in by_key:
        _merge(by_key[key], entity)
    else:
        by_key[key] = entity


def _at(entity: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = entity
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if value is None or isinstance(value, (str, int, float)) else json.dumps(value, default=str)


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fold ``other`` into ``into``: nested objects merge, other values fill
    what ``into`` leaves empty."""
    for key, value in other.items():
        held = into.get(key)
        if isinstance(held, dict) and isinstance(value, dict):
            _merge(held, value)
        elif held is None:
            into[key] = value


# --- the whole import ----------------------------------------------------------------------

def import_fhir(manager: "ScenarioWriter", paths: Iterable[str | Path], name: str, *, mapper: Any,
                overwrite: bool = False) -> ImportReport:
    """Read, check, resolve and map every resource of ``paths``; save them as
    scenario ``name`` in one save (one transaction). See the module docstring."""
    paths = [str(path) for path in paths]
    if not paths:
        raise _error("no input: give at least one file or directory")
    files = input_files(paths)
    with no_cyclic_gc():  # millions of containers and no cycles: a full collection would walk them all, often
        refs, inputs = index_inputs(read_with_text(files))
        resolve_references(refs, inputs)
        entities, read, kept = map_inputs(mapper, manager.registry, refs, inputs)
        resources = len(inputs)
        del refs, inputs
    try:
        scenario_id = manager.save_scenario(
            name, entities, description=f"imported from FHIR ({resources} resources)", overwrite=overwrite,
            metadata={"import": "fhir", "paths": paths, "files": len(files), "resources": resources})
    except ValidationError as error:  # an entity the store refused: name the resource it came from
        named = input_error(error, entities, mapper, lambda: read_resources(files))
        if named is None:
            raise
        raise named from error
    order = {entity: index for index, entity in enumerate(manager.registry.entity_types)}
    made = {entity: len(items) for entity, items in sorted(entities.items(), key=lambda pair: order.get(pair[0], 0))}
    return ImportReport(scenario_id, name, len(files), dict(sorted(read.items())), made, dict(sorted(kept.items())))
