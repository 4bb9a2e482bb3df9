"""Start-up: importing the package or asking for help imports no heavy module,
and a mapping document is validated against the JSON Schema once, then found
in the cache, which can never make an invalid document pass. Each check runs a
fresh process, where what is imported can be seen. (Timings are in
benchmarks/startup.py, not here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from healthsim_state import MappingError, StateManager
from healthsim_state.mapping import parsed_cache, validation_cache
from healthsim_state.mapping.loader import builtin_mapping_dir, load_mapping_dirs

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("duckdb", "jsonschema", "psycopg", "pandas", "mcp", "yaml", "numpy", "pyarrow")

GOOD = """\
entity: widget
table: widgets
primary_key: widget_id
fields:
  - column: widget_id
    path: widget_id
    type: varchar
  - column: label
    path: info.label
    type: varchar
"""
BAD = GOOD.replace("    type: varchar\n", "    type: varchar\n    colour: red\n", 1)

# Loads one mapping directory; prints whether jsonschema was imported and the error, if any.
LOAD = """\
import json, sys
from healthsim_state import MappingError
from healthsim_state.mapping.loader import load_mapping_dirs
try:
    load_mapping_dirs([sys.argv[1]])
    error = None
except MappingError as caught:
    error = str(caught)
print(json.dumps({"validated": "jsonschema" in sys.modules, "error": error}))
"""

# Runs the command line in this process; prints the heavy modules it imported.
CLI = """\
import json, sys
from healthsim_state.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in %r)))
""" % (HEAVY,)


def python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    environment = {**os.environ, **(env or {}),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def heavy_imported_by(*args: str) -> list[str]:
    return json.loads(python(CLI, *args).splitlines()[-1])


def load_in_fresh_process(directory: Path, env: dict[str, str] | None = None) -> dict:
    return json.loads(python(LOAD, directory, env=env))


def write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "widget.yaml"
    path.write_text(textwrap.dedent(text), "utf-8")
    return path


def cache_lines() -> list[str]:
    path = validation_cache.cache_path()
    return path.read_text().splitlines() if path.exists() else []


# --- lazy imports -------------------------------------------------------------------------

def test_importing_the_package_imports_no_heavy_module():
    imported = python("import json, sys, healthsim_state\n"
                      "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in %r)))" % (HEAVY,))
    assert json.loads(imported) == []


@pytest.mark.parametrize("args", [["--help"], ["list", "--help"], ["export", "--help"], ["--version"]],
                         ids=lambda args: " ".join(args))
def test_help_imports_no_heavy_module(args):
    assert heavy_imported_by(*args) == []


def test_a_second_list_imports_neither_jsonschema_nor_the_extras(tmp_path):
    with StateManager(tmp_path / "small.duckdb") as sm:
        sm.save_scenario("small", {"patients": [{"id": "p1"}]})
    heavy_imported_by("list", "--db", tmp_path / "small.duckdb")  # validates, and fills the cache
    again = heavy_imported_by("list", "--db", tmp_path / "small.duckdb")
    assert "jsonschema" not in again  # the files and the store's copies were all found in the cache
    assert "yaml" not in again  # the files' parsed set was found in the cache
    assert not {"psycopg", "pandas", "mcp"} & {name.split(".")[0] for name in again}


def test_a_list_imports_no_interchange_module_schema_change_code_or_arrow(tmp_path):
    with StateManager(tmp_path / "small.duckdb") as sm:
        sm.save_scenario("small", {"patients": [{"id": "p1"}]})
    listing = CLI.replace('if name.split(".")[0] in %r' % (HEAVY,),
                          "if name.startswith(('healthsim_state.interop', 'healthsim_state.evolution', "
                          "'healthsim_state.backends.arrow_columns', 'nanoarrow', 'yaml'))")
    assert listing != CLI
    python(listing, "list", "--db", tmp_path / "small.duckdb")  # fills the caches
    assert json.loads(python(listing, "list", "--db", tmp_path / "small.duckdb").splitlines()[-1]) == []
    exporting = python(listing, "load", "small", "--db", tmp_path / "small.duckdb").splitlines()[-1]
    assert "healthsim_state.interop.json_io" in json.loads(exporting)  # the check sees what a command imports


def test_listing_compiles_no_generated_function_and_a_save_only_its_types(tmp_path):
    store = tmp_path / "small.duckdb"
    with StateManager(store) as sm:
        sm.save_scenario("small", {"patients": [{"id": "p1"}]})
    compiled = ("import linecache\n"
                "print(sorted(name.split()[1:3] for name in linecache.cache if name.startswith('<healthsim-state ')))")
    listing = CLI.replace("print(json.dumps(sorted(", "%s\nprint(json.dumps(sorted(" % compiled)
    assert python(listing, "list", "--db", store).splitlines()[-2] == "[]"
    save = ("import sys\nfrom healthsim_state import StateManager\n"
            "with StateManager(sys.argv[1]) as sm:\n"
            "    sm.save_scenario('again', {'patients': [{'id': 'p2'}]})\n" + compiled)
    assert python(save, store).splitlines()[-1] == "[['flatten', 'patient']]"


# --- the validation cache ---------------------------------------------------------------------

def test_a_valid_file_is_validated_once_then_found_in_the_cache(tmp_path):
    write(tmp_path / "maps", GOOD)
    assert load_in_fresh_process(tmp_path / "maps") == {"validated": True, "error": None}
    assert len(cache_lines()) == 1
    assert load_in_fresh_process(tmp_path / "maps") == {"validated": False, "error": None}


def test_a_file_edited_to_be_invalid_still_fails_with_the_same_message(tmp_path):
    write(tmp_path / "maps", GOOD)
    load_in_fresh_process(tmp_path / "maps")
    write(tmp_path / "maps", BAD)
    result = load_in_fresh_process(tmp_path / "maps")
    assert result["validated"] is True
    assert "fields[0] (widget_id)" in result["error"] and "unknown key 'colour'" in result["error"]
    uncached = load_in_fresh_process(tmp_path / "maps", env={"XDG_CACHE_HOME": str(tmp_path / "empty")})
    assert result["error"] == uncached["error"]
    assert len(cache_lines()) == 1, "the invalid file was not recorded"
    assert load_in_fresh_process(tmp_path / "maps")["error"] == uncached["error"]


def test_an_invalid_document_is_never_recorded(tmp_path):
    write(tmp_path / "maps", BAD)
    with pytest.raises(MappingError, match="unknown key 'colour'"):
        load_mapping_dirs([tmp_path / "maps"])
    assert cache_lines() == []


@pytest.mark.parametrize("content", [
    b"\x00\xff garbage \xfe",
    b"z" * 64 + b"\n" + b"0123abcd\n",  # not digests, a torn line
    b'{"format": 1, "valid": []}',
], ids=["binary", "torn", "other-format"])
def test_a_corrupt_cache_is_ignored(tmp_path, content):
    path = validation_cache.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    write(tmp_path / "maps", GOOD)
    assert load_in_fresh_process(tmp_path / "maps") == {"validated": True, "error": None}
    assert load_in_fresh_process(tmp_path / "maps") == {"validated": False, "error": None}
    write(tmp_path / "maps", BAD)
    assert "unknown key 'colour'" in load_in_fresh_process(tmp_path / "maps")["error"]


def test_an_unwritable_cache_directory_changes_nothing_but_speed(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {"XDG_CACHE_HOME": str(blocker / "cache")}  # cannot be made, even by root
    write(tmp_path / "maps", GOOD)
    for _ in range(2):
        assert load_in_fresh_process(tmp_path / "maps", env=env) == {"validated": True, "error": None}
    write(tmp_path / "maps", BAD)
    assert "unknown key 'colour'" in load_in_fresh_process(tmp_path / "maps", env=env)["error"]


def test_the_digest_changes_with_the_document_the_schema_and_the_version(monkeypatch):
    import healthsim_state

    document = {"entity": "widget", "n": 1}
    key = validation_cache.digest(document)
    assert key == validation_cache.digest({"n": 1, "entity": "widget"})  # key order is not content
    assert key != validation_cache.digest({"entity": "widget", "n": 1.0})
    assert key != validation_cache.digest({"entity": "widget", "n": True})
    monkeypatch.setattr(healthsim_state, "__version__", "99.0")
    assert validation_cache.digest(document) != key
    monkeypatch.undo()
    monkeypatch.setattr(validation_cache, "_schema_digest_value", b"another schema")
    assert validation_cache.digest(document) != key


@pytest.mark.parametrize("document", [
    {"default": __import__("datetime").date(2020, 1, 1)},
    {"fields": ("a", "b")},
    {1: "x"},
    {"x": float("nan")},
], ids=["date", "tuple", "int-key", "nan"])
def test_a_document_without_exact_json_is_always_validated(document):
    assert validation_cache.digest(document) is None
    validation_cache.VALIDATED.add(None)
    assert None not in validation_cache.VALIDATED and cache_lines() == []


def test_the_cache_file_is_compacted_past_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(validation_cache, "MAX_ENTRIES", 4)
    path = tmp_path / "digests.txt"
    keys = [f"{n:064x}" for n in range(6)]
    path.write_text("".join(key + "\n" for key in keys))
    cache = validation_cache.ValidatedDigests(path)
    assert keys[0] in cache
    assert path.read_text().splitlines() == keys[-2:]  # the newest half kept


def test_the_cache_lives_in_xdg_cache_home_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert validation_cache.cache_path().parent == tmp_path / "xdg" / "healthsim-state"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: absolute paths only
    assert validation_cache.cache_path().parent == Path.home() / ".cache" / "healthsim-state"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert validation_cache.cache_path().parent == Path.home() / ".cache" / "healthsim-state"


def test_the_startup_benchmark_reports_every_figure(tmp_path):
    """benchmarks/startup.py runs without hyperfine and prints each figure (no
    timing is asserted: machines are noisy)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--startup", "--repeat", "1",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    names = ["python_s", "import_s", "click_rich_s", "help_s", "duckdb_s", "duckdb_open_s", "list_s",
             "list_cold_cache_s"]
    assert all(figures[name] > 0 and figures["cpu"][name] > 0 for name in names)
    assert figures["help_vs_click_rich"] == pytest.approx(figures["help_s"] / figures["click_rich_s"], rel=0.01)
    assert figures["list_vs_duckdb_open"] == pytest.approx(figures["list_s"] / figures["duckdb_open_s"], rel=0.01)
    assert set(figures["targets_met"]) == {"help_vs_click_rich", "import_s", "list_s"}
    assert list(tmp_path.iterdir()) == [], "the store and caches went with the temporary directory"


# --- the parsed-mapping cache -------------------------------------------------------------------

# Loads the mapping directories given; prints whether PyYAML was imported (the
# files were parsed), the error if any, and what each mapping holds.
PARSE = """\
import json, sys
from healthsim_state import MappingError
from healthsim_state.mapping.loader import load_mapping_dirs
try:
    found = load_mapping_dirs(sys.argv[1:])
    error = None
except MappingError as caught:
    found, error = {}, str(caught)
held = {entity: [m.describe(), m.fhir, m.source, [f.type.name for f in m.fields]] for entity, m in found.items()}
print(json.dumps({"parsed": "yaml" in sys.modules, "error": error, "mappings": held}))
"""


def parse_in_fresh_process(*directories: Path, env: dict[str, str] | None = None) -> dict:
    return json.loads(python(PARSE, *directories, env=env))


def entry(*directories: Path) -> Path:
    return parsed_cache.entry_path([Path(d) for d in directories])


def test_a_loaded_set_is_parsed_once_then_taken_from_the_cache_as_it_was():
    builtin = builtin_mapping_dir()
    first = parse_in_fresh_process(builtin)
    assert first["parsed"] and first["error"] is None and entry(builtin).is_file()
    again = parse_in_fresh_process(builtin)
    assert not again["parsed"]
    assert again["mappings"] == first["mappings"] and list(again["mappings"]) == list(first["mappings"])


def test_every_builtin_mapping_reads_back_from_an_entry_as_loaded():
    """The entry's writer and reader are each other's inverse on the built-in
    set: every attribute, the fields' types (the same objects for the fixed
    types), defaults with their Python types, the order."""
    builtin = [builtin_mapping_dir()]
    loaded = load_mapping_dirs(builtin)
    back = parsed_cache.load(builtin, parsed_cache.key_of(builtin, builtin[0]))
    assert back is not None and list(back) == list(loaded)
    for entity, mapping in loaded.items():
        copy = back[entity]
        assert (copy.describe(), copy.fhir, copy.source) == (mapping.describe(), mapping.fhir, mapping.source)
        for field, copied in zip(mapping.fields, copy.fields, strict=True):
            assert copied.type.name == field.type.name
            assert copied.type is field.type or field.type.family == "decimal"
            assert type(copied.default) is type(field.default) and copied.default == field.default
            assert (copied.path, copied.aliases) == (field.path, field.aliases)


def test_a_changed_file_is_read_again(tmp_path):
    path = write(tmp_path / "maps", GOOD)
    assert parse_in_fresh_process(tmp_path / "maps")["parsed"]
    path.write_text(path.read_text().replace("path: info.label", "path: info.title"), "utf-8")
    result = parse_in_fresh_process(tmp_path / "maps")
    assert result["parsed"]
    assert result["mappings"]["widget"][0]["fields"][1]["path"] == "info.title"
    assert not parse_in_fresh_process(tmp_path / "maps")["parsed"]  # the new content is kept in its turn


def test_a_file_added_to_the_directory_is_read(tmp_path):
    write(tmp_path / "maps", GOOD)
    parse_in_fresh_process(tmp_path / "maps")
    (tmp_path / "maps" / "gadget.yml").write_text(GOOD.replace("widget", "gadget"), "utf-8")
    result = parse_in_fresh_process(tmp_path / "maps")
    assert result["parsed"] and sorted(result["mappings"]) == ["gadget", "widget"]


def test_an_invalid_file_is_still_rejected_with_a_warm_cache(tmp_path):
    write(tmp_path / "maps", GOOD)
    parse_in_fresh_process(tmp_path / "maps")
    kept = entry(tmp_path / "maps").read_bytes()
    write(tmp_path / "maps", BAD)
    warm = parse_in_fresh_process(tmp_path / "maps")
    cold = parse_in_fresh_process(tmp_path / "maps", env={"XDG_CACHE_HOME": str(tmp_path / "empty")})
    assert "unknown key 'colour'" in warm["error"] and warm["error"] == cold["error"]
    assert entry(tmp_path / "maps").read_bytes() == kept, "a set that failed is never stored"
    assert parse_in_fresh_process(tmp_path / "maps")["error"] == cold["error"]


@pytest.mark.parametrize("damage", ["binary", "torn", "foreign", "other format", "another key", "a byte changed",
                                    "no body"])
def test_a_damaged_entry_is_ignored_and_replaced(tmp_path, damage):
    write(tmp_path / "maps", GOOD)
    expected = parse_in_fresh_process(tmp_path / "maps")["mappings"]
    path = entry(tmp_path / "maps")
    whole = path.read_bytes()
    header, _, body = whole.partition(b"\n")
    head = json.loads(header)
    damaged = {
        "binary": b"\x00\xff garbage \xfe",
        "torn": whole[: len(whole) // 2],
        "foreign": json.dumps({"format": 1, "valid": []}).encode(),
        "other format": json.dumps({**head, "format": 2}).encode() + b"\n" + body,
        "another key": json.dumps({**head, "key": "0" * 64}).encode() + b"\n" + body,
        "a byte changed": header + b"\n" + body.replace(b"info", b"infx", 1),
        "no body": header + b"\n",
    }[damage]
    assert damaged != whole
    path.write_bytes(damaged)
    result = parse_in_fresh_process(tmp_path / "maps")
    assert result["parsed"] and result["mappings"] == expected
    assert path.read_bytes() == whole, "the entry is written anew"


def test_an_entry_of_another_version_schema_reader_code_or_package_place_is_a_miss(tmp_path, monkeypatch):
    import healthsim_state

    write(tmp_path / "maps", GOOD)
    dirs = [tmp_path / "maps"]

    def key() -> str | None:
        return parsed_cache.key_of(dirs, builtin_mapping_dir())

    load_mapping_dirs(dirs)
    first = key()
    assert parsed_cache.load(dirs, first) is not None
    monkeypatch.setattr(healthsim_state, "__version__", "99.0")
    assert key() != first and parsed_cache.load(dirs, key()) is None
    monkeypatch.undo()
    monkeypatch.setattr(validation_cache, "_schema_digest_value", b"another schema")
    assert key() != first
    monkeypatch.undo()
    assert parsed_cache.key_of(dirs, tmp_path / "elsewhere") != first
    reader = tmp_path / "reader.py"
    reader.write_text("x = 1\n")
    monkeypatch.setattr(parsed_cache, "READERS", (*parsed_cache.READERS, str(reader)))
    before = key()
    reader.write_text("x = 2\n")
    assert key() != before


def test_a_search_path_that_cannot_be_read_is_not_cached(tmp_path):
    assert parsed_cache.key_of([tmp_path / "missing"], builtin_mapping_dir()) is None
    with pytest.raises(MappingError, match="does not exist"):
        load_mapping_dirs([tmp_path / "missing"])
    assert not entry(tmp_path / "missing").exists()


def test_entries_past_the_limit_go_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(parsed_cache, "MAX_FILES", 2)
    for index in range(3):
        write(tmp_path / f"maps{index}", GOOD)
        load_mapping_dirs([tmp_path / f"maps{index}"])
        os.utime(entry(tmp_path / f"maps{index}"), ns=(index * 10**9, index * 10**9))
    assert not entry(tmp_path / "maps0").exists()
    assert entry(tmp_path / "maps1").exists() and entry(tmp_path / "maps2").exists()


# --- opening a store that records these very files --------------------------------------------

def test_a_store_recording_the_files_own_set_is_read_without_its_mapping_documents(tmp_path, monkeypatch):
    from healthsim_state import opening
    from healthsim_state.caches import BoundedCache

    store = tmp_path / "small.duckdb"
    with StateManager(store) as sm:
        sm.save_scenario("small", {"patients": [{"id": "p1"}]})
    reads = []
    real = opening.read_documents
    monkeypatch.setattr(opening, "read_documents", lambda *args: reads.append(args) or real(*args))
    monkeypatch.setattr(opening, "SYNCED", BoundedCache(4))  # as a new process: nothing seen yet
    with StateManager(store, read_only=True) as sm:
        assert [item["name"] for item in sm.list_scenarios()] == ["small"]
        assert sm.mapping_changes() == {}
    assert reads == []  # equal digests, equal mappings: nothing to plan
    write(tmp_path / "maps", GOOD)  # another set (a type added): the store's documents are read and planned
    with StateManager(store, read_only=True, mapping_dirs=[tmp_path / "maps"]) as sm:
        assert [item["name"] for item in sm.list_scenarios()] == ["small"]
        assert sm.mapping_changes()["widget"]["additions"] == ["type added: table widgets"]
    assert len(reads) == 1


# --- the end of the program -------------------------------------------------------------------

# The program as the console script runs it; at exit, says whether the objects were frozen.
PROGRAM = """\
import atexit, gc, sys
atexit.register(lambda: sys.stderr.write(f"frozen={gc.get_freeze_count() > 0}\\n"))
from healthsim_state.cli import main
sys.argv[0] = "healthsim-state"
main()
"""


def test_the_program_skips_the_last_collections_and_still_says_everything(tmp_path):
    with StateManager(tmp_path / "small.duckdb") as sm:
        sm.save_scenario("small", {"patients": [{"id": "p1"}]}, tags=["t"])
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    listed = subprocess.run([sys.executable, "-c", PROGRAM, "list", "--db", str(tmp_path / "small.duckdb")],
                            capture_output=True, text=True, env=environment, timeout=120)
    assert listed.returncode == 0 and listed.stderr == "frozen=True\n"
    assert listed.stdout.splitlines()[1].startswith("small\t1\tt\t")
    failed = subprocess.run([sys.executable, "-c", PROGRAM, "show", "nothing", "--db", str(tmp_path / "small.duckdb")],
                            capture_output=True, text=True, env=environment, timeout=120)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr == "error: no scenario has the id or name 'nothing'\nfrozen=True\n"


def test_main_called_with_arguments_leaves_the_collector_alone():
    code = ("import gc\nfrom healthsim_state.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit:\n    pass\nprint(gc.get_freeze_count())")
    assert python(code).splitlines()[-1] == "0"


def test_a_mapping_directory_is_listed_again_when_a_file_comes_or_goes(tmp_path, monkeypatch):
    """The files a manager checks: a directory's listing is reused while its
    own times stay (and only once they are older than a clock tick could
    hide), so a file added, renamed or removed is seen by the next check."""
    import os
    import time

    from healthsim_state.mapping import loader

    monkeypatch.setattr(loader, "_RACY", 0.05)
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(loader.os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    (tmp_path / "a.yaml").write_text("a")
    (tmp_path / "notes.txt").write_text("not a mapping")

    def files() -> list[str]:
        ((_, held),) = loader.fingerprint([tmp_path])
        return [os.path.basename(path) for path, _, _ in held]

    time.sleep(0.1)
    assert files() == ["a.yaml"] and files() == ["a.yaml"]
    assert len(listings) == 1  # the second check stat'ed the directory and the file only
    (tmp_path / "b.yml").write_text("b")
    assert files() == ["a.yaml", "b.yml"]
    time.sleep(0.1)
    (tmp_path / "a.yaml").rename(tmp_path / "c.yaml")
    assert files() == ["b.yml", "c.yaml"]
    time.sleep(0.1)
    (tmp_path / "b.yml").unlink()
    assert files() == ["c.yaml"]
    (tmp_path / "c.yaml").write_text("changed in place, longer")  # the file's own stat says it
    ((_, ((_, size, _),)),) = loader.fingerprint([tmp_path])
    assert size == len("changed in place, longer")
