"""FHIR R4 out of and into the store, as the mappings' ``fhir:`` sections declare.

Not imported by ``import healthsim_state``: the first use of FHIR imports it.

- (the parsed ``fhir:`` section of a mapping and its checks across files: :mod:`healthsim_state.mapping.fhir_section`)
- :mod:`.mapper`        :class:`~.mapper.FhirMapper`: one entity -> its resources, one resource -> entities (the front)
- :mod:`.plan`          an entity type's declarations compiled once: a writer and a reader an element
- :mod:`.writers`       the export direction: element writers, an entity's resources
- :mod:`.readers`       the import direction: element readers, which declaration reads a resource
- :mod:`.paths`         element paths in resources and entities (generated code), JSON tree helpers
- :mod:`.primitives`    column values as R4 primitives and back, identifiers that carry keys
- :mod:`.ids`           stable resource ids (UUID v5 of scenario, entity type, key, slot)
- :mod:`.schema`        HL7's R4 JSON Schema: fetch (sha256 checked), load, validate one resource by type
- :mod:`.references`    the reference indexes: export (lookup value -> Type/id), import (id, fullUrl, identifier)
- :mod:`.export`        Bulk Data NDJSON + manifest, --since-version, one transaction Bundle per patient
- :mod:`.spool`         folded children grouped by parent key (in memory, or a temporary SQLite file)
- :mod:`.importer`      import-fhir: read Bundles / NDJSON / directories, check, resolve, map, one save
"""
