"""A scenario as FHIR R4: Bulk Data NDJSON with its manifest, or transaction Bundles.

Streamed through the store (:meth:`StateManager.snapshot`): memory holds a batch
of entities, the reference index (keys and ids only) and, for a type folded into
its parent (claim_line into Claim.item), those children grouped by parent.
The same scenario version exports the same bytes: resource ids come from the
scenario and the entity's key, files are written in the mappings' order, and
``transactionTime`` is the version's own time, not the clock's.

``since_version`` (the Bulk Data ``_since`` idea) writes only the resources of
entities added or changed after that version, and lists the resources gone
since in the manifest's ``deleted`` (files of transaction Bundles whose entries
are ``DELETE Type/id``, as the Bulk Data specification says).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..engine.batch import no_cyclic_gc
from ..errors import UnknownEntityTypeError
from ..interop.errors import OutputExistsError
from .paths import _copy
from .references import ExportRefs, NoRefs, field_value, links_to, references_in
from .spool import ChildSpool
from .writers import resource_ids

if TYPE_CHECKING:
    from ..snapshot import Snapshot
    from .ports import ScenarioReader

KEPT_TYPE = "fhir_resource"  # the built-in type of resources kept as they came (see importer)
MANIFEST = "manifest.json"
MARKER = "healthsim-fhir"  # manifest.extension.format: a directory --force may replace
DELETE_BUNDLE_SIZE = 500
BUNDLE_NAMESPACE = uuid.UUID("1c7e3f0a-5b2d-5e8f-a4c6-6865616c7468")  # urn:uuid fullUrls of non-uuid ids
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual")


def dumps(resource: dict[str, Any]) -> str:
    """One resource as one compact NDJSON line (keys in the mapper's order)."""
    return _encode(resource)


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


# A resource is a fresh tree of dicts and lists: no cycle to check for (a fifth of the encoding time).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_number, check_circular=False).encode


# --- rendering ---------------------------------------------------------------------------

@dataclass
class Plan:
    """What an export renders: entity types in order, the folded ones, the
    reference index and, with since_version, the keys to render."""

    mapper: Any
    scenario_id: str
    types: list[str]
    folded: dict[str, tuple[str, tuple[str, ...]]]
    refs: ExportRefs
    eligible: list[str]  # the types an export of this kind renders, held in this version or not
    only: dict[str, set[tuple[str, ...]] | None] | None = None  # type -> keys to render (None: all), since_version
    keep: Any = None  # (entity type, entity) -> bool: render it? (None: every entity)


def make_plan(snapshot: "Snapshot", mapper: Any, entity_types: Iterable[str] | None = None) -> Plan:
    """The plan of a whole-scenario export, or of ``entity_types`` (a folded
    child type asked for alone brings its parent, where it is rendered)."""
    folded = mapper.folded_types()
    held = snapshot.entity_types()
    declared = set(mapper.declared_types())
    wanted = None if entity_types is None else set(snapshot.registry.entity_names(list(entity_types)))
    if wanted is not None:
        wanted |= {folded[t][0] for t in wanted if t in folded}
        for entity_type in wanted:
            if entity_type not in declared and entity_type != KEPT_TYPE:
                raise UnknownEntityTypeError(f"entity type {entity_type!r} declares no FHIR resource; the types "
                                             f"that do: {', '.join(mapper.declared_types())}")
    eligible = [t for t in snapshot.registry.entity_types if (t in declared or t == KEPT_TYPE) and t not in folded
                and (wanted is None or t in wanted)]
    refs = ExportRefs.build(snapshot, mapper)
    return Plan(mapper, snapshot.info["scenario_id"], [t for t in held if t in eligible], folded, refs, eligible)


def iter_resources(snapshot: "Snapshot", plan: Plan) -> Iterator[dict[str, Any]]:
    """Every resource of the plan, type by type in the mappings' order,
    entities in saved order."""
    for entity_type in plan.types:
        if entity_type == KEPT_TYPE:
            yield from _kept(snapshot, plan)
            continue
        only = None if plan.only is None else plan.only.get(entity_type, set())
        if only is not None and not only:
            continue
        spools = _children_of(snapshot, plan, entity_type)
        try:
            yield from _rendered(snapshot, plan, entity_type, only, spools)
        finally:
            for spool in spools.values():
                spool.close()


def _rendered(snapshot: "Snapshot", plan: Plan, entity_type: str, only: set | None,
              spools: dict[str, ChildSpool]) -> Iterator[dict[str, Any]]:
    codec = snapshot.registry.codecs[entity_type]
    key_paths = [f.dotted for f in codec.mapping.key_fields]
    keyed = only is not None or bool(spools)  # the key is needed to choose or to find children: else not made
    for entity in snapshot.entities(entity_type):
        key = _key(entity, key_paths) if keyed else None
        if only is not None and key not in only or plan.keep is not None and not plan.keep(entity_type, entity):
            continue
        kids = {child: spool.children(key) for child, spool in spools.items()} if spools else None
        yield from plan.mapper.to_resources(entity_type, entity, scenario_id=plan.scenario_id, refs=plan.refs,
                                            children=kids)


def _kept(snapshot: "Snapshot", plan: Plan) -> Iterator[dict[str, Any]]:
    only = None if plan.only is None else plan.only.get(KEPT_TYPE, set())
    for entity in snapshot.entities(KEPT_TYPE):
        if only is None or _key(entity, ["resource_type", "resource_id"]) in only:
            yield entity["resource"]


def _children_of(snapshot: "Snapshot", plan: Plan, parent: str) -> dict[str, ChildSpool]:
    """The folded children of ``parent``'s entities, by child type, grouped
    by parent key in saved order (empty when no type folds into it)."""
    spools = {}
    for child, (owner, columns) in plan.folded.items():
        if owner == parent:
            mapping = snapshot.registry.codecs[child].mapping
            paths = [mapping.field(column).dotted for column in columns]
            pairs = ((_key(entity, paths), entity) for entity in snapshot.entities(child)) \
                if snapshot.info["entity_counts"].get(child) else ()
            spools[child] = ChildSpool().extend(pairs)
    return spools


def _key(entity: dict[str, Any], paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(_text(field_value(entity, path)) for path in paths)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


# --- since_version -----------------------------------------------------------------------

def since_plan(manager: "ScenarioReader", snapshot: "Snapshot", plan: Plan, since: int) -> list[str]:
    """Restrict ``plan`` to what changed after version ``since``; return the
    ``Type/id`` of every resource gone since (of entities removed, and those a
    changed entity no longer makes), sorted."""
    info = snapshot.info
    diff = manager.diff_scenarios(info["scenario_id"], a_version=since, b_version=info["version"])
    only: dict[str, set[tuple[str, ...]] | None] = {}
    gone: dict[str, set[tuple[str, ...]] | None] = {}
    whole: set[str] = set()  # parents of a changed child whose key does not name them: all rendered again
    for entity_type, change in diff.items():
        owner = plan.folded.get(entity_type)
        for kind in ("added", "changed", "removed"):
            for key in change[kind]:
                key = _key_tuple(key if kind != "changed" else key["key"])
                if owner is not None:  # a child changed: its parent is rendered again
                    parent_key = _parent_key(snapshot, entity_type, owner[1], key)
                    if parent_key is None:
                        whole.add(owner[0])
                    else:
                        only.setdefault(owner[0], set()).add(parent_key)
                        gone.setdefault(owner[0], set()).add(parent_key)
                elif kind == "removed":
                    gone.setdefault(entity_type, set()).add(key)
                else:
                    only.setdefault(entity_type, set()).add(key)
                    if kind == "changed":
                        gone.setdefault(entity_type, set()).add(key)
    for entity_type in whole:
        only[entity_type] = gone[entity_type] = None
    plan.only = only
    gone = {entity_type: keys for entity_type, keys in gone.items() if entity_type in plan.eligible}  # --type
    before = _resources_of(manager, info["scenario_id"], since, plan, gone)
    now = _resources_of(manager, info["scenario_id"], info["version"], plan, gone)
    return sorted(before - now)


def _key_tuple(key: Any) -> tuple[str, ...]:
    return tuple(_text(part) for part in key) if isinstance(key, list) else (_text(key),)


def _parent_key(snapshot: "Snapshot", child: str, links: tuple[str, ...], key: tuple[str, ...]) -> tuple[str, ...] | None:
    """The parent's key from a child's key (claim_line ``(claim_id, line_number)``
    -> ``(claim_id,)``); None when the child's key does not hold it."""
    columns = snapshot.registry.codecs[child].mapping.primary_key
    if not set(links) <= set(columns):
        return None
    return tuple(key[columns.index(column)] for column in links)


def _resources_of(manager: "ScenarioReader", scenario_id: str, version: int, plan: Plan,
                  keys: dict[str, set[tuple[str, ...]] | None]) -> set[str]:
    """``Type/id`` of the resources the entities with these keys make in ``version``."""
    found: set[str] = set()
    if not keys:
        return found
    with manager.snapshot(scenario_id, version=version) as snapshot:
        sub = Plan(plan.mapper, scenario_id, [t for t in snapshot.entity_types() if t in keys], plan.folded,
                   NoRefs(), plan.eligible, only=keys)  # type: ignore[arg-type]
        for resource in iter_resources(snapshot, sub):
            found.add(f"{resource['resourceType']}/{resource['id']}")
    return found


# --- writing -----------------------------------------------------------------------------

def export_fhir(manager: "ScenarioReader", name_or_id: str, directory: str | os.PathLike, *, mapper: Any,
                bundles: bool = False, since_version: int | None = None, version: int | None = None,
                entity_types: Iterable[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Write the scenario to ``directory`` (made; an existing one only with
    ``force`` and only if a previous FHIR export) and return the manifest."""
    target = Path(directory)
    _check_target(target, force)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with manager.snapshot(name_or_id, version=version) as snapshot:
            plan = make_plan(snapshot, mapper, entity_types)
            deleted = since_plan(manager, snapshot, plan, since_version) if since_version is not None else []
            resources = iter_resources(snapshot, plan)
            with no_cyclic_gc():  # a resource is a fresh tree, freed as written: no cycle to collect
                if bundles:
                    whole = since_version is None and entity_types is None
                    output, unresolved = _write_bundles(resources, work, whole)
                    if not whole:  # what the export left out on purpose a server holds already
                        unresolved = _outside_the_version(snapshot, plan, unresolved)
                else:
                    output, unresolved = _write_ndjson(resources, work), None
            manifest = _manifest(snapshot.info, output, _write_deleted(deleted, work), bundles=bundles,
                                 since=since_version, entity_types=entity_types)
            if unresolved is not None:
                # References a server cannot resolve from these Bundles (see _write_bundle): kept as
                # they came, said here (Bulk Data lets a manifest carry extensions).
                manifest["extension"]["unresolved"] = unresolved
        (work / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
        os.chmod(work, 0o755)
        _replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _check_target(target: Path, force: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        if not target.parent.is_dir():
            raise FileNotFoundError(f"{target.parent} is not a directory")
        return
    if not target.is_dir() or target.is_symlink():
        raise OutputExistsError(f"{target} exists and is not a directory")
    if not any(target.iterdir()):
        return
    if not force:
        raise OutputExistsError(f"{target} already exists; use --force to replace it")
    try:
        manifest = json.loads((target / MANIFEST).read_text("utf-8"))
        ours = manifest.get("extension", {}).get("format") == MARKER
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise OutputExistsError(f"refusing to replace {target}: it is not an empty directory or a "
                                "healthsim-state FHIR export")


def _replace(work: Path, target: Path) -> None:
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / "old")
        os.replace(work, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(work, target)


def _write_ndjson(resources: Iterator[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """One ``<ResourceType>.ndjson`` per type; output entries sorted by type."""
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    try:
        for resource in resources:
            kind = resource["resourceType"]
            out = files.get(kind)
            if out is None:
                out = files[kind] = open(work / f"{kind}.ndjson", "w", encoding="utf-8", newline="\n")
                counts[kind] = 0
            out.write(dumps(resource))
            out.write("\n")
            counts[kind] += 1
    finally:
        for out in files.values():
            out.close()
    return [{"type": kind, "url": f"{kind}.ndjson", "count": counts[kind]} for kind in sorted(counts)]


def _write_deleted(deleted: list[str], work: Path) -> list[dict[str, Any]]:
    """Bulk Data's ``deleted``: transaction Bundles of ``DELETE Type/id`` entries."""
    if not deleted:
        return []
    lines = []
    for start in range(0, len(deleted), DELETE_BUNDLE_SIZE):
        entries = [{"request": {"method": "DELETE", "url": local}} for local in deleted[start:start + DELETE_BUNDLE_SIZE]]
        lines.append(dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    (work / "deleted").mkdir()
    (work / "deleted" / "Bundle.ndjson").write_text("\n".join(lines) + "\n", "utf-8")
    return [{"type": "Bundle", "url": "deleted/Bundle.ndjson", "count": len(lines)}]


def _manifest(info: dict[str, Any], output: list[dict[str, Any]], deleted: list[dict[str, Any]], *, bundles: bool,
              since: int | None, entity_types: Iterable[str] | None) -> dict[str, Any]:
    query = [f"version={info['version']}"]
    if since is not None:
        query.append(f"_since-version={since}")
    if entity_types:
        query.append("entity_types=" + ",".join(entity_types))
    if bundles:
        query.append("_outputFormat=bundle")
    return {
        "transactionTime": info["updated_at"].isoformat(),
        "request": f"urn:healthsim:scenario:{info['scenario_id']}/$export?{'&'.join(query)}",
        "requiresAccessToken": False,
        "output": output,
        "deleted": deleted,
        "error": [],
        "extension": {"format": MARKER, "scenario": info["name"], "scenario_id": info["scenario_id"],
                      "version": info["version"], "since_version": since},
    }


# --- transaction Bundles -------------------------------------------------------------------

def patient_of(resource: dict[str, Any]) -> str | None:
    """The ``Patient/<id>`` a resource belongs to (itself, for a Patient)."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource['id']}"
    for element in PATIENT_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, dict) and str(value.get("reference", "")).startswith("Patient/"):
            return value["reference"]
    return provenance_patient(resource)


def provenance_patient(resource: dict[str, Any]) -> str | None:
    """The first ``Patient/<id>`` a Provenance targets: Synthea writes one per
    patient, targeting every resource of that patient's Bundle (in
    ``shared.json`` its references would name no entry)."""
    if resource.get("resourceType") != "Provenance" or not isinstance(resource.get("target"), list):
        return None
    for target in resource["target"]:
        reference = target.get("reference") if isinstance(target, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference
    return None


def full_url(local: str) -> str:
    """An entry's ``fullUrl``: ``urn:uuid:<id>`` (an id that is not a uuid gets a
    uuid5 of its ``Type/id``), so references in the Bundle name it by that."""
    _, _, rid = local.partition("/")
    try:
        return f"urn:uuid:{uuid.UUID(rid)}" if len(rid) == 36 else f"urn:uuid:{uuid.uuid5(BUNDLE_NAMESPACE, local)}"
    except ValueError:
        return f"urn:uuid:{uuid.uuid5(BUNDLE_NAMESPACE, local)}"


def _write_bundles(resources: Iterator[dict[str, Any]], work: Path, whole: bool = True
                   ) -> tuple[list[dict[str, Any]], list[dict]]:
    """One transaction Bundle per person (``Patient-<id>.json``) and one of the
    resources of no patient of the export (``shared.json``); returns the
    manifest's output and the references no Bundle entry and no resource of
    the export answers (see :func:`_write_bundle`).

    A person is a patient with the Patient resources linked to it
    (``Patient.link``: a member's, a trial subject's): their resources go in
    one Bundle, named after the Patient the others link to. In an export of
    the ``whole`` scenario, a resource whose patient the export does not hold
    (a reference to a patient not in the input) goes to ``shared.json``: a
    Bundle named after a patient holds that Patient. An export limited by
    type or version keeps a patient's resources in that patient's Bundle,
    its Patient loaded before. Resources are spooled to one file per Patient
    first, so memory holds one person's Bundle at a time, plus the resources
    of no patient (copied into each Bundle that refers to them, so that every
    reference resolves inside it)."""
    spool = work / ".spool"
    spool.mkdir()
    shared: dict[str, dict[str, Any]] = {}
    patients: dict[str, str] = {}  # Patient/<id> -> spool file name, in first-seen order
    exported: set[str] = set()  # Type/id of every resource written
    people = _People()
    files = _OpenFiles()
    try:
        for resource in resources:
            local = f"{resource['resourceType']}/{resource['id']}"
            exported.add(local)
            owner = patient_of(resource)
            if owner is None:
                shared[local] = resource
                continue
            people.add(owner)
            for other in _linked_patients(resource):
                people.join(owner, other)
            name = patients.setdefault(owner, f"{len(patients)}.ndjson")
            files.get(spool / name).write(dumps(resource) + "\n")
    finally:
        files.close()
    groups: dict[str, list[str]] = {}
    for owner in patients:
        groups.setdefault(people.root(owner), []).append(owner)
    named: dict[str, str] = {}  # root -> the exported Patient its Bundle is named after
    for root, owners in groups.items():
        held = [owner for owner in owners if owner in exported]
        if held:
            named[root] = root if root in exported else held[0]
        elif not whole:  # the Patient is left out by --type or --since-version: a server holds it already
            named[root] = root
        else:  # no Patient of this person is exported: their resources are of no patient here
            shared.update((f"{r['resourceType']}/{r['id']}", r) for r in _spooled(spool, patients, owners))
    output: list[dict[str, Any]] = []
    unresolved: list[dict] = []
    for root, patient in named.items():  # one person's Bundle in memory at a time
        file = f"Patient-{patient.partition('/')[2]}.json"
        members = _spooled(spool, patients, groups[root])
        output.append(_write_bundle(work / file, members, shared, file, exported, unresolved))
    if shared:
        output.append(_write_bundle(work / "shared.json", list(shared.values()), {}, "shared.json", exported,
                                    unresolved))
    shutil.rmtree(spool)
    unresolved.sort(key=lambda item: item["url"])  # as the output: stable order, whatever the Bundles' order
    return sorted(output, key=lambda item: item["url"]), unresolved


def _outside_the_version(snapshot: "Snapshot", plan: Plan, unresolved: list[dict]) -> list[dict]:
    """Of the references a partial export (``--type``, ``--since-version``)
    could not resolve, those that name no resource a whole export of this
    scenario version writes: a server loaded with the whole export (or the
    earlier ones) resolves the others."""
    if not unresolved:
        return unresolved
    held = _held_of(snapshot, plan, {item["reference"] for item in unresolved})
    return [item for item in unresolved if item["reference"] not in held]


def _held_of(snapshot: "Snapshot", plan: Plan, references: set[str]) -> set[str]:
    """The ``references`` that are the ``Type/id`` of a resource of the
    scenario version: found in the reference index, else among the ids (made,
    not the resources rendered) of the entity types that make resources of
    their types (read only then: a kept type also by its key)."""
    held = references & plan.refs.targets()
    wanted = references - held
    kinds = {reference.partition("/")[0] for reference in wanted if reference.count("/") == 1}  # Type/id only
    declared = set(plan.mapper.declared_types())
    for entity_type in snapshot.entity_types() if kinds else ():
        if entity_type == KEPT_TYPE:
            found = (f"{e['resource_type']}/{e['resource_id']}" for e in snapshot.entities(entity_type))
        elif entity_type in declared and entity_type not in plan.folded \
                and kinds & _resource_types(plan.mapper, entity_type):
            made = plan.mapper.plan(entity_type)
            found = (local for e in snapshot.entities(entity_type)
                     for local in resource_ids(made, e, plan.scenario_id))
        else:
            continue
        held.update(local for local in found if local in wanted)
    return held


def _spooled(spool: Path, patients: dict[str, str], owners: list[str]) -> list[dict[str, Any]]:
    """The resources of ``owners`` (Patient/<id>), read back from their spool files."""
    members = []
    for owner in owners:
        with open(spool / patients[owner], encoding="utf-8") as lines:
            members += [json.loads(line) for line in lines]
    return members


def _linked_patients(resource: dict[str, Any]) -> list[str]:
    """The ``Patient/<id>`` a Patient resource's ``link`` elements name."""
    if resource["resourceType"] != "Patient":
        return []
    found = []
    for link in resource.get("link") or ():
        other = link.get("other") if isinstance(link, dict) else None
        reference = other.get("reference") if isinstance(other, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            found.append(reference)
    return found


class _OpenFiles:
    """Files open for appending, the least recently used closed past ``limit``
    (a scenario's types come one after the other: a patient's file is written
    again once per type)."""

    def __init__(self, limit: int = 256):
        self._open: dict[Path, Any] = {}
        self._limit = limit

    def get(self, path: Path) -> Any:
        out = self._open.pop(path, None)
        if out is None:
            if len(self._open) >= self._limit:
                self._open.pop(next(iter(self._open))).close()
            out = open(path, "a", encoding="utf-8")
        self._open[path] = out  # most recently used last
        return out

    def close(self) -> None:
        for out in self._open.values():
            out.close()
        self._open.clear()


class _People:
    """Patients joined into persons by ``Patient.link`` (union-find on ``Patient/<id>``):
    the root of a person is the Patient the others link to."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def add(self, patient: str) -> None:
        self._parent.setdefault(patient, patient)

    def root(self, patient: str) -> str:
        self.add(patient)
        while self._parent[patient] != patient:
            self._parent[patient] = self._parent[self._parent[patient]]
            patient = self._parent[patient]
        return patient

    def join(self, linking: str, linked: str) -> None:
        self._parent[self.root(linking)] = self.root(linked)


def _write_bundle(path: Path, members: list[dict[str, Any]], shared: dict[str, dict[str, Any]],
                  url: str, exported: set[str], unresolved: list[dict]) -> dict[str, Any]:
    """Write one transaction Bundle of ``members`` with copies of the shared
    resources they refer to (and those refer to, in turn). References to an
    entry become its ``fullUrl``; one that names neither an entry nor any
    resource of the export (``exported``), and is no conditional reference
    (``Type?identifier=``, a server's search resolves it) or contained one
    (``#id``), is kept as it came and added to ``unresolved``."""
    inside = {f"{r['resourceType']}/{r['id']}" for r in members}
    at = 0
    while at < len(members):  # the list grows with the copies, whose own references are followed too
        for _, holder in references_in(members[at]):
            local = holder["reference"]
            if local in shared and local not in inside:
                members.append(_copy(shared[local]))  # a copy: the Bundle rewrites its references
                inside.add(local)
        at += 1
    names = {local: full_url(local) for local in inside}
    entries = []
    for resource in members:
        local = f"{resource['resourceType']}/{resource['id']}"
        for _, holder in references_in(resource):
            text = holder["reference"]
            found = names.get(text)
            if found is not None:
                holder["reference"] = found
            elif text not in exported and "?" not in text and not text.startswith("#"):
                unresolved.append({"url": url, "resource": local, "element": _path_to(resource, holder),
                                   "reference": text})
        entries.append({"fullUrl": names[local], "resource": resource, "request": {"method": "PUT", "url": local}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    path.write_text(json.dumps(bundle, ensure_ascii=False, indent=1, default=_number) + "\n", "utf-8")
    return {"type": "Bundle", "url": url, "count": len(entries)}


def _path_to(node: Any, target: dict[str, Any], path: str = "") -> str | None:
    """The FHIR path (``location[0].location``) of the object ``target``
    inside ``node``: for a report only, so found by a plain walk."""
    if node is target:
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        found = _path_to(child, target, where)
        if found is not None:
            return found
    return None


def stream_resources(manager: "ScenarioReader", name_or_id: str, mapper: Any, *,
                     resource_types: Iterable[str] | None = None, version: int | None = None,
                     patient: str | None = None) -> Iterator[dict[str, Any]]:
    """The scenario's resources one by one (of ``resource_types`` only, if
    given; of one patient only, if ``patient`` names one by its resource id
    or a lookup value such as its patient_id or mrn). Entity types that make
    none of the types asked for are not read; with ``patient``, an entity
    whose references name another patient is not rendered."""
    wanted = None if resource_types is None else set(resource_types)
    with manager.snapshot(name_or_id, version=version) as snapshot:
        plan = make_plan(snapshot, mapper)
        if wanted is not None:
            plan.types = [t for t in plan.types if t == KEPT_TYPE or wanted & _resource_types(mapper, t)]
        owner = None if patient is None else _patient_reference(plan, patient)
        if owner is not None:
            plan.keep = _of_patient(plan, owner)
        for resource in iter_resources(snapshot, plan):
            if wanted is not None and resource["resourceType"] not in wanted:
                continue
            if owner is not None and patient_of(resource) != owner:
                continue
            yield resource


def _resource_types(mapper: Any, entity_type: str) -> set[str]:
    return {resource.resource_type for resource in mapper.plan(entity_type).resources}


def _of_patient(plan: Plan, owner: str) -> Any:
    """A test of (entity type, entity): False when the entity's references to
    a patient name one other than ``owner`` (it would make none of its
    resources); True when they name it, or the type has none to tell by."""
    links = links_to(plan.mapper, "patient")

    def keep(entity_type: str, entity: dict[str, Any]) -> bool:
        pairs = links.get(entity_type)
        if not pairs:
            return True
        named = [plan.refs.reference("patient", theirs, value) for own, theirs in pairs
                 if (value := field_value(entity, own)) is not None]
        return not named or owner in named

    return keep


def _patient_reference(plan: Plan, patient: str) -> str:
    """``Patient/<id>`` for a patient named by a lookup value of a type whose
    primary resource is a Patient, else by its resource id."""
    for entity_type in plan.mapper.declared_types():
        if entity_type in plan.folded or plan.mapper.primary_resource_type(entity_type) != "Patient":
            continue
        for field_name in plan.mapper.lookup_fields(entity_type):
            found = plan.refs.reference(entity_type, field_name, patient)
            if found is not None:
                return found
    return patient if patient.startswith("Patient/") else f"Patient/{patient}"


# --- validation --------------------------------------------------------------------------

SCHEMA_CACHE = Path("~/.cache/healthsim-state")


def validate_export(directory: str | os.PathLike, schema: str | os.PathLike | None = None) -> tuple[int, list[str]]:
    """Check every resource of an export (NDJSON files or Bundles) against the
    R4 JSON Schema: ``schema``, else the copy in ``~/.cache/healthsim-state``
    (fetched there first, sha256 checked). Returns the resources checked and
    the problems, each ``<file>[, line N]: Type/id @ element: message``."""
    from .schema import ResourceValidator, fetch_schema

    path = Path(schema) if schema is not None else fetch_schema(SCHEMA_CACHE.expanduser())
    validator = ResourceValidator(path)
    target = Path(directory)
    manifest = json.loads((target / MANIFEST).read_text("utf-8"))
    checked, problems = 0, []
    for item in manifest["output"]:
        for where, resource in _resources_in(target / item["url"]):
            checked += 1
            for problem in validator.errors(resource):
                problems.append(f"{item['url']}{where}: {resource.get('resourceType')}/{resource.get('id')} @ {problem}")
    return checked, problems


def _resources_in(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".ndjson":
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                yield f", line {number}", json.loads(line)
        return
    bundle = json.loads(path.read_text("utf-8"))  # its entries one by one: the Bundle's oneOf is 40x slower
    for index, entry in enumerate(bundle.get("entry", ())):
        yield f", entry[{index}]", entry["resource"]
