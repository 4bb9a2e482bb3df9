"""The compiled entity types in force, and the input keys that name them."""

from __future__ import annotations

from typing import Iterable

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

    def __iter__(self):
        return iter(self.codecs.values())
