"""The process-wide caches, all in one place and under one policy.

Each holds work a process would otherwise repeat for every manager it opens
(parsing YAML, checking documents against the JSON Schema, compiling code),
keyed by the content it was computed from, so that an entry never goes stale:
it can only stop being asked for. Each is bounded; when one is full, the entry
used least recently makes room.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable


class BoundedCache:
    """A mapping of at most ``size`` entries; a ``put`` into a full one drops
    the entry used least recently. Safe to share between threads."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value kept for ``key``, or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` for ``key`` (not None) and return it."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


# The mapping files a directory holds: directory -> (its device, inode, mtime and ctime
# when listed, the files' paths). The exception to "never stale": checked against the
# directory's own times, which every file added, removed or renamed in it moves.
MAPPING_DIRECTORIES = BoundedCache(16)
# This client's mapping files, parsed: fingerprint of the files -> {entity: Mapping}.
LOCAL_MAPPINGS = BoundedCache(16)
# A store's recorded mapping documents, read and checked: (store, entity, document) -> Mapping.
RECORDED_MAPPINGS = BoundedCache(512)
# Compiled registries: the mapping set's digest -> Registry.
REGISTRIES = BoundedCache(32)
# A store whose mapping set needs nothing applied: (store, (digest, generation),
# local mappings' digest, evolve) -> (plan, registry), what a fresh manager of the
# same files would compute again.
SYNCED = BoundedCache(64)
