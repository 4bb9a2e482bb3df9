"""The compiled entity types in force, and the input keys that name them."""

from __future__ import annotations

from typing import Iterable

from ..caches import REGISTRIES
from ..errors import Problem, UnknownEntityTypeError, ValidationError
from ..mapping.model import Mapping
from .compile import Codec, compile_mapping


class Registry:
    """Every registered entity type, compiled once.

    A scenario's ``entities`` may name a type by its singular ``entity`` or by
    its ``plural``; :meth:`resolve` accepts both.
    """

    def __init__(self, mappings: Iterable[Mapping]):
        self.codecs: dict[str, Codec] = {m.entity: compile_mapping(m) for m in mappings}
        self._by_key: dict[str, Codec] = {}
        for codec in self.codecs.values():
            self._by_key[codec.mapping.entity] = codec
            self._by_key[codec.mapping.plural] = codec

    @property
    def entity_types(self) -> tuple[str, ...]:
        return tuple(self.codecs)

    def resolve(self, key: str) -> Codec | None:
        return self._by_key.get(key) if isinstance(key, str) else None

    def entity_names(self, names: Iterable[str] | None) -> list[str] | None:
        """Singular type names for names given singular or plural, in order,
        repeats dropped (None for None); an unknown name raises
        :class:`UnknownEntityTypeError` listing the types in force."""
        if names is None:
            return None
        if isinstance(names, str):
            raise ValidationError([Problem("entity_types must be a list of entity type names, not one string",
                                           path="entity_types", value=names)], summary="invalid call")
        result: list[str] = []
        for name in names:
            codec = self.resolve(name)
            if codec is None:
                raise UnknownEntityTypeError(
                    f"unknown entity type {name!r}; the types in force: {', '.join(self.entity_types)}")
            if codec.mapping.entity not in result:
                result.append(codec.mapping.entity)
        return result


def registry_for(mappings: dict[str, Mapping], digest: str) -> Registry:
    """The registry of a mapping set, compiled once a process per set.
    ``digest`` is the set's (:func:`healthsim_state.layout.digest_of`: equal
    digests, equal mappings), which the caller has already computed; the
    cache is keyed by it, so it never goes stale."""
    # The digest leaves out the FHIR declarations (the store does not record
    # them), so they join the key: the same tables with other declarations are
    # another registry.
    key = (digest, tuple(mappings[entity].fhir for entity in sorted(mappings)))
    found = REGISTRIES.get(key)
    if found is None:
        found = REGISTRIES.put(key, Registry(mappings[entity] for entity in sorted(mappings)))
    return found
