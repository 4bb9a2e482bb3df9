"""The process-wide caches: one bound and one eviction rule for all, and the
digest of this client's mapping set computed once a process per set of files."""

from __future__ import annotations

from healthsim_state import StateManager, opening
from healthsim_state.caches import BoundedCache

WIDGET = """\
entity: widget
table: widgets
primary_key: widget_id
fields:
  - column: widget_id
    path: widget_id
    type: varchar
"""


def test_a_full_cache_drops_the_entry_used_least_recently():
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the one used least recently
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


def test_put_returns_the_value_and_a_key_put_again_is_replaced():
    cache = BoundedCache(2)
    assert cache.put("a", [1]) == [1]
    cache.put("a", [2])
    assert (cache.get("a"), len(cache)) == ([2], 1)


def test_managers_of_the_same_files_compute_the_mapping_digest_once(tmp_path, monkeypatch, db_path):
    files = tmp_path / "mappings"  # a set of files no earlier test has cached
    files.mkdir()
    (files / "widget.yaml").write_text(WIDGET, "utf-8")
    calls = []
    real = opening.digest_of
    monkeypatch.setattr(opening, "digest_of", lambda mappings: calls.append(1) or real(mappings))
    first = StateManager(db_path, mapping_dirs=[files])
    second = StateManager(db_path, mapping_dirs=[files])
    assert len(calls) == 1
    assert first.local_registry is second.local_registry
