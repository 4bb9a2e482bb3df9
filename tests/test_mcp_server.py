"""The MCP server, through the SDK's real client.

Most tests share one server, started as a subprocess over stdio
(``python -m healthsim_state.mcp_server``) and held open in an anyio blocking
portal so the tests themselves stay plain functions. One test runs the server
over streamable HTTP on a loopback port, started by ``healthsim-state mcp``.
Every wait is bounded, and every server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest
from anyio.from_thread import start_blocking_portal
from click.testing import CliRunner
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import oracle
from benchmarks.generate import entity_count, scenario
from healthsim_state import HealthSimError, StoreError, StateManager
from healthsim_state import mcp_server
from healthsim_state.mcp_server import ScenarioTools
from stores import Store

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30  # seconds any one request, start or stop may take

TOOLS = {  # tool: (readOnlyHint, destructiveHint, idempotentHint)
    "save_scenario": (False, True, False),
    "add_entities": (False, True, False),
    "load_scenario": (True, False, True),
    "get_scenario_summary": (True, False, True),
    "get_fhir": (True, False, True),
    "list_scenarios": (True, False, True),
    "delete_scenario": (False, True, True),
    "scenario_history": (True, False, True),
    "diff_scenarios": (True, False, True),
    "restore_scenario": (False, True, False),  # a write; under a history limit it may drop old versions
    "rename_scenario": (False, True, True),
    "update_scenario": (False, True, True),  # a write: under a history limit it may drop old versions
    "delete_entities": (False, True, True),
    "list_entity_types": (True, False, True),
    "query": (True, False, True),
}

ANA = {"id": "p1", "first_name": "Ana", "last_name": "Silva", "birth_date": "1961-04-02"}
ANA_CANONICAL = {"patient_id": "p1", "name": {"given": "Ana", "family": "Silva"}, "birthDate": "1961-04-02",
                 "_provenance": {"source_type": "generated", "source_system": "patientsim"}}


# --- a real client over stdio, shared by the tests of this module -----------------------

class Session:
    """Synchronous calls on an MCP client session that lives in a portal's event loop."""

    def __init__(self, portal: Any, client: Client, store: Store, log: Path):
        self.portal, self.client, self.store, self.log = portal, client, store, log
        self.db = store.target

    def call(self, tool: str, **arguments: Any):
        return self.portal.call(lambda: self.client.call_tool(tool, arguments, read_timeout_seconds=TIMEOUT))

    def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = self.call(tool, **arguments)
        assert not result.is_error, result.content[0].text
        assert json.loads(result.content[0].text) == result.structured_content  # the text says the same
        return result.structured_content

    def error(self, tool: str, **arguments: Any) -> str:
        result = self.call(tool, **arguments)
        assert result.is_error, result.structured_content
        return result.content[0].text

    def tools(self) -> dict[str, Any]:
        listed = self.portal.call(self.client.list_tools)
        return {tool.name: tool for tool in listed.tools}


def stdio_parameters(db: str, home: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "healthsim_state.mcp_server", "--db", str(db)],
                                 env={"HOME": str(home)}, cwd=str(REPO))


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def server(request, tmp_path_factory):
    """One server a backend: on a DuckDB file, or ``--db postgresql://...``."""
    root = tmp_path_factory.mktemp("mcp")
    log = root / "server.log"
    if request.param == "duckdb":
        store = Store("duckdb", str(root / "mcp.duckdb"))
    else:
        cluster = request.getfixturevalue("pg_cluster")
        name = f"mcp_{os.getpid()}"
        store = Store("postgres", cluster.create_database(name))
        request.addfinalizer(lambda: cluster.drop_database(name))
    with open(log, "w") as errlog, start_blocking_portal() as portal:
        client = Client(stdio_client(stdio_parameters(store.target, root), errlog=errlog),
                        read_timeout_seconds=TIMEOUT)
        with portal.wrap_async_context_manager(client):
            yield Session(portal, client, store, log)
    assert "Traceback" not in log.read_text(), log.read_text()  # no crash, even on the error paths


# --- the tools and their schemas ------------------------------------------------------------

def test_every_tool_is_listed_with_a_described_schema_and_annotations(server):
    tools = server.tools()
    assert set(tools) == set(TOOLS)
    for name, (read_only, destructive, idempotent) in TOOLS.items():
        tool = tools[name]
        assert tool.description and tool.title, name
        hints = tool.annotations
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == \
            (read_only, destructive, idempotent), name
        assert hints.open_world_hint is False
        schema = tool.input_schema
        assert schema["type"] == "object"
        for parameter, spec in schema["properties"].items():
            assert spec.get("description"), f"{name}.{parameter} has no description"
        assert tool.output_schema and tool.output_schema["type"] == "object", name
    required = {name: set(tools[name].input_schema.get("required", [])) for name in TOOLS}
    assert required["save_scenario"] == {"name", "entities"}
    assert required["add_entities"] == {"name_or_id", "entities"}
    assert required["delete_scenario"] == {"name_or_id"}
    assert required["query"] == {"sql"}
    assert tools["delete_scenario"].input_schema["properties"]["confirm"]["default"] is False
    assert tools["query"].input_schema["properties"]["limit"]["default"] == 100
    assert tools["list_scenarios"].input_schema["properties"]["limit"]["default"] == 100
    assert {"omitted", "complete", "next_offset", "entities"} <= set(tools["load_scenario"].output_schema["required"])


# --- happy paths ------------------------------------------------------------------------------

def test_save_then_load_gives_back_the_canonical_shape(server):
    saved = server.ok("save_scenario", name="happy", entities={"patients": [ANA]}, description="one patient",
                      tags=["mcp", "demo"])
    assert saved["name"] == "happy" and saved["entity_counts"] == {"patient": 1} and saved["entity_count"] == 1
    assert saved["tags"] == ["mcp", "demo"] and saved["description"] == "one patient"
    assert saved["created_at"].endswith("+00:00")  # ISO 8601 text, UTC
    loaded = server.ok("load_scenario", name_or_id=saved["scenario_id"])
    assert loaded["entities"] == {"patient": [ANA_CANONICAL]}
    assert (loaded["omitted"], loaded["complete"], loaded["next_offset"]) == ({}, True, None)
    assert server.ok("load_scenario", name_or_id="happy")["scenario_id"] == saved["scenario_id"]

    again = server.ok("save_scenario", name="happy", entities={"patient": [ANA, {**ANA, "id": "p2"}]},
                      overwrite=True)
    assert again["scenario_id"] == saved["scenario_id"] and again["entity_counts"] == {"patient": 2}
    assert again["tags"] == [] and again["created_at"] == saved["created_at"]


def test_add_entities_creates_appends_and_replaces_by_key(server):
    first = server.ok("add_entities", name_or_id="growing", entities={"patients": [ANA]})
    assert first["added"] == {"patient": 1} and first["replaced"] == {"patient": 0}
    second = server.ok("add_entities", name_or_id="growing", create=False, entities={
        "patient": [{**ANA, "first_name": "Anabel"}, {"id": "p2", "first_name": "Bo"}],
        "encounters": [{"encounterId": "e1", "patient_id": "p1", "serviceDate": "2024-01-15"}]})
    assert second["added"] == {"patient": 1, "encounter": 1} and second["replaced"] == {"patient": 1, "encounter": 0}
    assert second["entity_count"] == 3
    summary = server.ok("get_scenario_summary", name_or_id="growing", sample_size=0)
    assert summary["entity_counts"] == {"patient": 2, "encounter": 1}
    patients = server.ok("load_scenario", name_or_id="growing", entity_types=["patients"])["entities"]["patient"]
    assert [(p["patient_id"], p["name"]["given"]) for p in patients] == [("p1", "Anabel"), ("p2", "Bo")]


def test_load_a_slice_and_say_what_was_left_out(server):
    patients = [{"id": f"p{i}", "first_name": f"N{i}"} for i in range(7)]
    encounters = [{"encounter_id": f"e{i}", "patient_id": "p0"} for i in range(3)]
    server.ok("save_scenario", name="sliced", entities={"patients": patients, "encounters": encounters})

    page = server.ok("load_scenario", name_or_id="sliced", entity_types=["patient"], limit_per_type=3, offset=2)
    assert [p["patient_id"] for p in page["entities"]["patient"]] == ["p2", "p3", "p4"]
    assert list(page["entities"]) == ["patient"]
    assert page["omitted"] == {"patient": 4, "encounter": 3} and page["complete"] is False
    assert page["next_offset"] == 5 and page["entity_counts"] == {"patient": 7, "encounter": 3}

    both = server.ok("load_scenario", name_or_id="sliced", limit_per_type=5)
    assert {k: len(v) for k, v in both["entities"].items()} == {"patient": 5, "encounter": 3}
    assert both["omitted"] == {"patient": 2} and both["next_offset"] == 5
    last = server.ok("load_scenario", name_or_id="sliced", limit_per_type=5, offset=5)
    assert {k: len(v) for k, v in last["entities"].items()} == {"patient": 2, "encounter": 0}
    assert last["next_offset"] is None


def test_summary_list_types_and_query(server):
    server.ok("save_scenario", name="summarized", entities={"patients": [ANA, {"id": "p2"}, {"id": "p3"}]},
              tags=["Summary"], description="three patients")
    summary = server.ok("get_scenario_summary", name_or_id="summarized", sample_size=2)
    assert summary["entity_counts"] == {"patient": 3} and summary["tags"] == ["Summary"]
    assert summary["samples"] == {"patient": [ANA_CANONICAL, {"patient_id": "p2", **_provenance()}]}
    assert server.ok("get_scenario_summary", name_or_id="summarized", sample_size=0)["samples"] == {}

    listed = server.ok("list_scenarios", tag="summary")
    assert [s["name"] for s in listed["scenarios"]] == ["summarized"] and listed["count"] == 1
    assert listed["scenarios"][0]["entity_counts"] == {"patient": 3}
    assert server.ok("list_scenarios", search="THREE", limit=None)["count"] == 1
    assert server.ok("list_scenarios", limit=0)["scenarios"] == []

    types = server.ok("list_entity_types")["entity_types"]
    assert len(types) == 15
    patient = server.ok("list_entity_types", entity_types=["patients"])["entity_types"]
    assert [t["entity"] for t in patient] == ["patient"] and patient[0]["primary_key"] == ["patient_id"]
    given = next(f for f in patient[0]["fields"] if f["path"] == "name.given")
    assert given["type"] == "varchar" and "first_name" in given["aliases"]

    result = server.ok("query", sql="""
        SELECT p.patient_id, p.given_name, p.date_of_birth FROM patients p
        JOIN scenarios s USING (scenario_id) WHERE s.name = 'summarized' ORDER BY p._position""")
    assert result["columns"] == ["patient_id", "given_name", "date_of_birth"]
    assert result["types"] == (["VARCHAR", "VARCHAR", "DATE"] if server.store.kind == "duckdb"
                               else ["varchar", "varchar", "date"])
    assert result["rows"] == [["p1", "Ana", "1961-04-02"], ["p2", None, None], ["p3", None, None]]
    assert result["truncated"] is False and result["row_count"] == 3
    endless = ("SELECT * FROM range(1000000000) t(i)" if server.store.kind == "duckdb"
               else "SELECT generate_series(0, 999999999) AS i")
    capped = server.ok("query", sql=endless, limit=2)
    assert capped["rows"] == [[0], [1]] and capped["truncated"] is True


def test_delete_needs_confirm(server):
    server.ok("save_scenario", name="doomed", entities={"patients": [ANA]})
    message = server.error("delete_scenario", name_or_id="doomed")
    assert "confirm: true" in message and "doomed" in message and "1 entity" in message
    assert server.ok("load_scenario", name_or_id="doomed")["entity_count"] == 1  # still there
    deleted = server.ok("delete_scenario", name_or_id="doomed", confirm=True)
    assert deleted["deleted"] is True and deleted["entity_counts"] == {"patient": 1}
    assert "no scenario has the id or name 'doomed'" in server.error("load_scenario", name_or_id="doomed")


# --- error paths: a tool error with our message; nothing written; the server goes on --------

ERRORS = [
    ("load_scenario", {"name_or_id": "nope"}, "no scenario has the id or name 'nope'"),
    ("get_scenario_summary", {"name_or_id": "nope"}, "no scenario has the id or name 'nope'"),
    ("delete_scenario", {"name_or_id": "nope", "confirm": True}, "no scenario has the id or name 'nope'"),
    ("add_entities", {"name_or_id": "nope", "entities": {"patients": [ANA]}, "create": False},
     "no scenario has the id or name 'nope'"),
    ("save_scenario", {"name": "bad", "entities": {"patients": [{"id": "p1", "birth_date": "2024-13-45"}]}},
     "patient[0] @ birthDate"),
    ("add_entities", {"name_or_id": "bad", "entities": {"patients": [{"id": "p1"}, {"id": "p1"}]}},
     "duplicate key"),
    ("save_scenario", {"name": "bad", "entities": {"spaceships": [{"id": "x"}]}}, "unknown entity type 'spaceships'"),
    ("load_scenario", {"name_or_id": "existing", "entity_types": ["spaceship"]}, "unknown entity type 'spaceship'"),
    ("list_entity_types", {"entity_types": ["spaceship"]}, "unknown entity type 'spaceship'"),
    ("query", {"sql": "DELETE FROM patients"}, "only a read-only query"),
    ("query", {"sql": "CREATE TABLE x AS SELECT 1"}, "only a read-only query"),
    ("query", {"sql": "SELECT 1; SELECT 2"}, "exactly one statement"),
    ("query", {"sql": "ATTACH 'other.duckdb'"}, {"duckdb": "only a read-only query", "postgres": "does not parse"}),
    ("query", {"sql": "SELEC 1"}, "does not parse"),
    ("query", {"sql": "SELECT no_such_column FROM patients"}, "the query failed"),
    ("query", {"sql": "SELECT * FROM read_csv('/etc/passwd')"}, "the query failed"),
    ("save_scenario", {"name": "existing", "entities": {}}, "already exists"),
    ("delete_scenario", {"name_or_id": "existing"}, "confirm: true"),
    ("query", {"sql": "SELECT 1", "limit": -1}, "limit"),  # refused by the input schema
]


@pytest.mark.parametrize("tool, arguments, expected", ERRORS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(ERRORS)])
def test_a_bad_call_is_a_tool_error_with_our_message(server, tool, arguments, expected):
    if not server.ok("list_scenarios", search="existing")["count"]:
        server.ok("save_scenario", name="existing", entities={"patients": [ANA]})
    before = server.ok("list_scenarios", limit=None)
    message = server.error(tool, **arguments)
    expected = expected[server.store.kind] if isinstance(expected, dict) else expected
    assert expected in message, message
    assert server.ok("list_scenarios", limit=None) == before  # nothing written, and the server still answers
    assert server.ok("load_scenario", name_or_id="existing")["entity_count"] == 1


# --- a large scenario in batches ---------------------------------------------------------------

def test_5000_entities_in_batches_load_back_equal(server):
    data = scenario(63, seed=5)  # 63 patients, about 80 entities each, every entity type
    assert entity_count(data) >= 5000
    batches, batch = [], {}
    for kind, items in data.items():
        for start in range(0, len(items), 300):
            part = items[start:start + 300]
            if sum(map(len, batch.values())) + len(part) > 300:
                batches.append(batch)
                batch = {}
            batch.setdefault(kind, []).extend(part)
    batches.append(batch)
    started = time.monotonic()
    for number, batch in enumerate(batches):
        result = server.ok("add_entities", name_or_id="big", entities=batch, create=number == 0)
        assert sum(result["added"].values()) == sum(map(len, batch.values()))
    assert result["entity_count"] == entity_count(data)
    saved = time.monotonic() - started

    started = time.monotonic()
    first = server.ok("load_scenario", name_or_id="big")  # a default page
    assert first["limit_per_type"] == mcp_server.PAGE and not first["complete"]
    assert first["entity_counts"] == {kind: len(items) for kind, items in data.items()}
    pages, offset = {kind: [] for kind in data}, 0
    while offset is not None:
        page = server.ok("load_scenario", name_or_id="big", limit_per_type=400, offset=offset)
        for kind, items in page["entities"].items():
            pages[kind].extend(items)
        offset = page["next_offset"]
    read = time.monotonic() - started
    mappings = oracle.load_mapping_dirs([REPO / "mappings"])
    for kind, items in data.items():
        assert oracle.diff(oracle.expect(mappings[kind], items), pages[kind], f"$.{kind}") is None
        assert first["entities"][kind] == pages[kind][:mcp_server.PAGE]
    print(f"\n{len(batches)} add_entities batches: {saved:.2f} s; paged load of {entity_count(data)}: {read:.2f} s")


# --- the file is free while the server is idle -----------------------------------------------

def test_another_process_writes_while_the_server_is_idle(server):
    server.ok("list_scenarios")  # the server has used the file, and is now idle
    code = ("import sys; from healthsim_state import StateManager\n"
            "with StateManager(sys.argv[1]) as sm:\n"
            "    sm.save_scenario('from-outside', {'patients': [{'id': 'x1', 'first_name': 'Out'}]})\n")
    done = subprocess.run([sys.executable, "-c", code, str(server.db)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert server.store.sql("SELECT count(*) FROM scenarios WHERE name = 'from-outside'") == [(1,)]
    loaded = server.ok("load_scenario", name_or_id="from-outside")
    assert loaded["entities"]["patient"][0]["name"] == {"given": "Out"}


# --- streamable HTTP on a loopback port ------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the server did not listen on {port} within {TIMEOUT} s: {log.read_text()}")


def test_streamable_http_on_loopback(tmp_path, store):
    db, log, port = store.target, tmp_path / "server.log", _free_port()
    if store.kind == "postgres":  # the server trusts this user; a password in the URL must never be shown
        db = db.replace("postgres@", "postgres:never-shown-secret@")
    command = [sys.executable, "-m", "healthsim_state.cli", "mcp", "--transport", "http", "--port", str(port),
               "--db", str(db)]
    with open(log, "w") as errlog:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog, cwd=REPO,
                                   env={**os.environ, "HOME": str(tmp_path)})
    try:
        _wait_for_port(port, process, log)

        async def session() -> None:
            with anyio.fail_after(TIMEOUT * 2):
                async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=TIMEOUT) as client:
                    assert {tool.name for tool in (await client.list_tools()).tools} == set(TOOLS)
                    saved = await client.call_tool("save_scenario", {"name": "over-http", "entities": {
                        "patients": [ANA]}})
                    assert not saved.is_error and saved.structured_content["entity_counts"] == {"patient": 1}
                    loaded = await client.call_tool("load_scenario", {"name_or_id": "over-http"})
                    assert loaded.structured_content["entities"] == {"patient": [ANA_CANONICAL]}
                    refused = await client.call_tool("query", {"sql": "DROP TABLE patients"})
                    assert refused.is_error and "only a read-only query" in refused.content[0].text

        anyio.run(session)
        assert f"http://127.0.0.1:{port}/mcp" in log.read_text()
        assert "never-shown-secret" not in log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in log.read_text(), log.read_text()
    with StateManager(db) as sm:  # the server is gone; what it saved is in the file
        assert sm.load_scenario("over-http")["entities"]["patient"] == [ANA_CANONICAL]


# --- the tool functions themselves (no server) ------------------------------------------------

def test_query_values_are_json_ready(db_path):
    tools = ScenarioTools(db_path)  # a new file: the query still sees the (empty) tables
    assert tools.query("SELECT count(*) AS n FROM patients")["rows"] == [[0]]
    result = tools.query("""SELECT DATE '2024-01-15' AS d, TIMESTAMP '2024-01-15 10:30:00' AS ts,
        1.50::DECIMAL(10, 2) AS dec, 'nan'::DOUBLE AS nan, [1, 2] AS list, {'a': 1} AS struct,
        '00000000-0000-0000-0000-000000000001'::UUID AS id, TIME '10:30' AS t""")
    assert result["rows"] == [["2024-01-15", "2024-01-15T10:30:00", 1.5, None, [1, 2], {"a": 1},
                               "00000000-0000-0000-0000-000000000001", "10:30:00"]]
    json.dumps(result, allow_nan=False)
    assert tools.query("SELECT 1 AS one", limit=0) == {"columns": ["one"], "types": ["INTEGER"], "rows": [],
                                                       "row_count": 0, "truncated": True}
    for sql in ("DESCRIBE patients", "FROM scenarios", "WITH x AS (SELECT 1) SELECT * FROM x", "SHOW TABLES"):
        tools.query(sql)


def test_query_values_are_json_ready_on_postgres(pg_url):
    tools = ScenarioTools(pg_url)  # a new database: the query still sees the (empty) tables
    assert tools.query("SELECT count(*) AS n FROM patients")["rows"] == [[0]]
    result = tools.query("""SELECT DATE '2024-01-15' AS d, TIMESTAMP '2024-01-15 10:30:00' AS ts,
        1.50::numeric(10, 2) AS dec, 'NaN'::float8 AS nan, ARRAY[1, 2] AS list, '{"b": 1, "a": [2]}'::json AS doc,
        '{"b": 1, "a": 2}'::jsonb AS jb, '00000000-0000-0000-0000-000000000001'::uuid AS id, TIME '10:30' AS t""")
    assert result["rows"] == [["2024-01-15", "2024-01-15T10:30:00", 1.5, None, [1, 2], {"b": 1, "a": [2]},
                               {"a": 2, "b": 1}, "00000000-0000-0000-0000-000000000001", "10:30:00"]]
    assert list(result["rows"][0][5]) == ["b", "a"]  # json keeps the key order
    json.dumps(result, allow_nan=False)
    assert tools.query("SELECT 1 AS one", limit=0) == {"columns": ["one"], "types": ["int4"], "rows": [],
                                                       "row_count": 0, "truncated": True}
    for sql in ("WITH x AS (SELECT 1) SELECT * FROM x", "VALUES (1)", "TABLE scenarios", "EXPLAIN SELECT 1"):
        tools.query(sql)


@pytest.mark.parametrize("sql, message", [
    ("DELETE FROM patients", "only a read-only query"),
    ("WITH gone AS (DELETE FROM scenarios RETURNING 1) SELECT * FROM gone", "queries are read-only"),
    ("SELECT 1; DROP TABLE patients", "exactly one statement"),
    ("SELECT * INTO stolen FROM scenarios", "the server does not read this as one"),
    ("EXPLAIN ANALYZE DELETE FROM scenarios", "the server does not read this as one"),
    ("SELECT nextval('no_such_sequence')", "the query failed"),
    ("SELECT set_config('transaction_read_only', 'off', false)", "the query failed"),
    ("SELEC 1", "does not parse"),
])
def test_postgres_queries_cannot_write(pg_url, sql, message):
    tools = ScenarioTools(pg_url)
    tools.save_scenario("kept", {"patients": [ANA]})
    with pytest.raises(ValueError, match=message):
        tools.query(sql)
    assert tools.query("SELECT name FROM scenarios")["rows"] == [["kept"]]
    assert tools.query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'stolen'")["rows"] == [[0]]


def test_a_long_postgres_query_is_interrupted(pg_url, monkeypatch):
    monkeypatch.setattr(mcp_server, "QUERY_TIMEOUT", 0.3)
    with pytest.raises(ValueError, match="ran for more than 0.3 s and was stopped"):
        ScenarioTools(pg_url).query("SELECT pg_sleep(30)")


def test_a_long_query_is_interrupted(db_path, monkeypatch):
    monkeypatch.setattr(mcp_server, "QUERY_TIMEOUT", 0.3)
    started = time.monotonic()
    with pytest.raises(ValueError, match="was stopped"):
        ScenarioTools(db_path).query("SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000000) b")
    assert time.monotonic() - started < 10


def test_slices_at_the_edges(store):
    tools = ScenarioTools(store.target)
    tools.save_scenario("edges", {"patients": [{"id": f"p{i}"} for i in range(3)]})
    beyond = tools.load_scenario("edges", limit_per_type=2, offset=10)
    assert beyond["entities"] == {"patient": []} and beyond["omitted"] == {"patient": 3}
    assert beyond["next_offset"] is None
    none = tools.load_scenario("edges", entity_types=[])
    assert none["entities"] == {} and none["omitted"] == {"patient": 3} and not none["complete"]
    repeated = tools.load_scenario("edges", entity_types=["patients", "patient", "claims"], limit_per_type=1)
    assert repeated["entities"] == {"patient": [{"patient_id": "p0", **_provenance()}], "claim": []}
    assert repeated["next_offset"] == 1
    with pytest.raises(ValueError, match="limit_per_type must be a whole number of at least 1, got 0"):
        tools.load_scenario("edges", limit_per_type=0)  # a page of nothing would say to start again where it was


def test_an_unexpected_failure_is_a_tool_error_and_the_server_goes_on(db_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    async def calls() -> tuple[Any, Any, Any]:
        with anyio.fail_after(TIMEOUT):
            async with Client(mcp_server.build_server(db_path)) as client:  # in process
                with monkeypatch.context() as patch:
                    patch.setattr(StateManager, "list_scenarios", broken)
                    crashed = await client.call_tool("list_scenarios", {})
                    patch.setattr(StateManager, "list_scenarios", lambda *a, **k: (_ for _ in ()).throw(
                        StoreError("the database x could not be used: IO Error: disk on fire")))
                    failed = await client.call_tool("list_scenarios", {})
                return crashed, failed, await client.call_tool("list_scenarios", {})

    crashed, failed, fine = anyio.run(calls)
    assert crashed.is_error and crashed.content[0].text == "Error executing tool list_scenarios"  # no internals
    assert failed.is_error and failed.content[0].text.endswith("could not be used: IO Error: disk on fire")
    assert not fine.is_error and fine.structured_content == {"scenarios": [], "count": 0}


def test_the_cli_command_is_documented():
    from healthsim_state.cli import cli

    result = CliRunner().invoke(cli, ["mcp", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--transport", "--host", "--port", "--keep-open", "--db", "stdio", "http"):
        assert option in result.output


def _provenance() -> dict[str, Any]:
    return {"_provenance": ANA_CANONICAL["_provenance"]}


# --- issue 11: nothing lost at the edges ---------------------------------------------------------

def test_a_name_may_not_shadow_an_id(server):
    first = server.ok("save_scenario", name="shadowed", entities={"patients": [ANA]})["scenario_id"]
    message = server.error("save_scenario", name=first, entities={})
    assert f"'{first}' is the id of another scenario; a name may not be a scenario's id" in message
    assert server.ok("load_scenario", name_or_id=first)["name"] == "shadowed"


def test_an_ambiguous_lookup_names_both_scenarios(tmp_path):
    db = tmp_path / "a.duckdb"
    first = StateManager(db).save_scenario("s", {})
    con = duckdb.connect(str(db))  # written around the library, as an older version could have
    con.execute("INSERT INTO scenarios SELECT 'other-id', ?, NULL, created_at, updated_at, 0, '{}', 1 "
                "FROM scenarios", [first])
    con.close()
    tools = ScenarioTools(db)
    for call in (lambda: tools.load_scenario(first), lambda: tools.delete_scenario(first, confirm=True),
                 lambda: tools.get_scenario_summary(first)):
        with pytest.raises(ValueError, match=f"'{first}' is the id of scenario 's' and the name of scenario "
                                             "other-id; rename scenario other-id"):
            call()
    assert tools.rename_scenario("other-id", "fixed")["name"] == "fixed"
    assert tools.load_scenario(first)["name"] == "s"


@pytest.mark.parametrize("arguments, expected", [
    ({"name_or_id": "edgy", "limit_per_type": 0}, "limit_per_type"),
    ({"name_or_id": "edgy", "limit_per_type": 5001}, "limit_per_type"),
])
def test_a_page_size_out_of_range_is_refused(server, arguments, expected):
    server.ok("save_scenario", name="edgy", entities={"patients": [ANA]}, overwrite=True)
    assert expected in server.error("load_scenario", **arguments)


@pytest.mark.parametrize("confirm", ["true", 1, "yes"])
def test_only_the_boolean_true_confirms_a_delete(server, confirm):
    server.ok("save_scenario", name="kept", entities={"patients": [ANA]}, overwrite=True)
    server.error("delete_scenario", name_or_id="kept", confirm=confirm)
    assert server.ok("load_scenario", name_or_id="kept")["entity_count"] == 1


def test_limits_come_back_as_tool_errors_with_our_message(server):
    assert "name: the scenario name is 201 characters long; at most 200 are allowed" in \
        server.error("save_scenario", name="n" * 201, entities={})
    assert "tags[0]: the tag is 101 characters long; at most 100 are allowed" in \
        server.error("save_scenario", name="t", entities={}, tags=["x" * 101])
    assert "description: the description holds a NUL character" in \
        server.error("save_scenario", name="t", entities={}, description="a\x00b")
    assert not server.ok("list_scenarios", search="n" * 201)["count"]  # nothing was saved


def test_rename_update_and_delete_entities_over_mcp(server):
    server.ok("save_scenario", name="editable", entities={"patients": [ANA, {"id": "p2"}, {"id": "p3"}],
                                                          "claim_lines": [{"claim_id": "C", "line_number": 1}]},
              tags=["a"], description="before")
    renamed = server.ok("rename_scenario", name_or_id="editable", new_name="edited")
    assert renamed["name"] == "edited" and renamed["entity_count"] == 4
    server.ok("save_scenario", name="taken", entities={}, overwrite=True)
    assert "scenario 'taken' already exists" in server.error("rename_scenario", name_or_id="edited", new_name="taken")
    updated = server.ok("update_scenario", name_or_id="edited", description="", add_tags=["b"], remove_tags=["a"])
    assert (updated["description"], updated["tags"]) == (None, ["b"])
    assert server.ok("update_scenario", name_or_id="edited", tags=[])["tags"] == []
    deleted = server.ok("delete_entities", name_or_id="edited", keys={"patients": ["p2"], "claim_line": [["C", 1]]})
    assert deleted["deleted"] == {"patient": 1, "claim_line": 1} and deleted["entity_count"] == 2
    message = server.error("delete_entities", name_or_id="edited", keys={"patient": ["p2", "p3"]})
    assert "holds no entity with these keys (patient: 'p2')" in message and "pass missing_ok: true" in message
    again = server.ok("delete_entities", name_or_id="edited", keys={"patient": ["p2", "p3"]}, missing_ok=True)
    assert again["deleted"] == {"patient": 1} and again["not_found"] == {"patient": ["p2"]}
    loaded = server.ok("load_scenario", name_or_id="edited")
    assert [p["patient_id"] for p in loaded["entities"]["patient"]] == ["p1"]


def test_list_scenarios_pages_with_offset(db_path):
    tools = ScenarioTools(db_path)
    for name in ("a", "b", "c"):
        tools.save_scenario(name, {})
    names = [s["name"] for s in tools.list_scenarios()["scenarios"]]
    assert [s["name"] for s in tools.list_scenarios(limit=1, offset=1)["scenarios"]] == names[1:2]
    assert tools.list_scenarios(offset=3) == {"scenarios": [], "count": 0}


def test_a_big_page_is_refused_telling_how_to_page_and_a_page_reads_only_itself(db_path, monkeypatch):
    with StateManager(db_path) as sm:
        sm.save_scenario("big", {"patients": [{"patient_id": f"p{i}"} for i in range(3000)],
                                 "claims": [{"claim_id": f"c{i}"} for i in range(3000)]})
    tools = ScenarioTools(db_path)
    with pytest.raises(ValueError) as caught:
        tools.load_scenario("big", limit_per_type=5000)
    assert str(caught.value) == ("this page would hold 6000 entities (3000 patient, 3000 claim in all); a page holds "
                                 "at most 5000: ask for fewer entity_types, or a limit_per_type of at most 2500, "
                                 "and page with offset")
    from healthsim_state.store import TypeRows

    reads = []
    real = TypeRows.fetch
    monkeypatch.setattr(TypeRows, "fetch", lambda self, **kw: reads.append(kw) or real(self, **kw))
    page = tools.load_scenario("big")  # the default page: 500 of each type, read in SQL
    assert {k: len(v) for k, v in page["entities"].items()} == {"claim": 500, "patient": 500}
    assert page["next_offset"] == 500 and reads == [{"version": None, "limit": 500, "offset": 0}] * 2


def test_list_entity_types_needs_no_usable_store(tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database at all" * 50)
    tools = ScenarioTools(bad)
    assert len(tools.list_entity_types()["entity_types"]) == 15
    with pytest.raises(HealthSimError, match="bad.duckdb"):
        tools.list_scenarios()


def test_query_and_load_give_json_numbers(db_path):
    from decimal import Decimal

    tools = ScenarioTools(db_path)
    tools.save_scenario("n", {"claims": [{"claim_id": "c", "other_diagnoses": [{"rank": 2}]}]})
    with StateManager(db_path) as sm:
        sm.add_entities("n", {"patients": [{"patient_id": "p", "x": Decimal("0.10000000000000001"),
                                            "y": Decimal("1E+400")}]})
    result = tools.query("SELECT other_diagnoses FROM claims")
    assert result["rows"] == [[[{"rank": 2}]]] and result["types"] == ["JSON"]
    assert tools.query("EXPLAIN SELECT * FROM claims")["rows"]
    payload = mcp_server._payload(tools.load_scenario("n", entity_types=["patient"]))
    patient = payload.structured_content["entities"]["patient"][0]
    assert (patient["x"], patient["y"]) == (0.1, 10**400)  # the nearest JSON numbers (an integral one exact)
    assert json.loads(payload.content[0].text) == payload.structured_content


# --- a default page always answers; an explicit limit that cannot fit names the exact maximum --------------

def _keyed(sm: StateManager, counts: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """``counts`` entities of each type, each only its (one-column) key."""
    entities = {}
    for kind, count in counts.items():
        (field,) = sm.registry.codecs[sm.registry.entity_names([kind])[0]].mapping.key_fields
        entities[kind] = [{field.dotted: f"{kind}-{i}"} for i in range(count)]
    return entities


def test_a_default_page_is_fitted_to_the_cap_and_says_so(db_path):
    # 10 types of 600 and one of 40: 500 of each would be 5040; the largest limit that fits is
    # 496 (10 x 496 + 40 = 5000), where dividing the cap by 11 types would say 454
    counts = {kind: 600 for kind in ("patients", "claims", "encounters", "diagnoses", "procedures", "medications",
                                     "prescriptions", "lab_results", "vital_signs", "clinical_notes")}
    counts["members"] = 40
    with StateManager(db_path) as sm:
        sm.save_scenario("wide", _keyed(sm, counts))
    tools = ScenarioTools(db_path)
    page = tools.load_scenario("wide")
    assert page["limit_per_type"] == 496 and page["limit_fitted"] is True
    assert sum(map(len, page["entities"].values())) == mcp_server.MAX_PAGE_ENTITIES
    assert page["note"] == ("limit_per_type was lowered from 500 to 496 so that the page holds at most 5000 "
                            "entities; page with offset (next_offset) for the rest")
    assert page["next_offset"] == 496 and page["omitted"]["patient"] == 104 and "member" not in page["omitted"]
    rest = tools.load_scenario("wide", offset=496)  # what is left fits at the default
    assert rest["limit_per_type"] == 500 and rest["limit_fitted"] is False and rest["note"] is None
    assert rest["complete"] is False and rest["next_offset"] is None
    with pytest.raises(ValueError) as caught:
        tools.load_scenario("wide", limit_per_type=500)  # asked for: not lowered, refused with the exact maximum
    assert str(caught.value).endswith("ask for fewer entity_types, or a limit_per_type of at most 496, "
                                      "and page with offset")
    assert tools.load_scenario("wide", limit_per_type=496)["limit_fitted"] is False


def test_the_suggested_limit_is_the_largest_that_fits(db_path):
    # 3000, 3000 and 1666: 1667 fits exactly (1667 + 1667 + 1666 = 5000), though 5000 // 3 = 1666
    with StateManager(db_path) as sm:
        sm.save_scenario("uneven", _keyed(sm, {"patients": 3000, "claims": 3000, "encounters": 1666}))
    tools = ScenarioTools(db_path)
    with pytest.raises(ValueError) as caught:
        tools.load_scenario("uneven", limit_per_type=5000)
    assert str(caught.value) == ("this page would hold 7666 entities (3000 patient, 3000 claim, 1666 encounter in "
                                 "all); a page holds at most 5000: ask for fewer entity_types, or a limit_per_type "
                                 "of at most 1667, and page with offset")
    page = tools.load_scenario("uneven", limit_per_type=1667)
    assert sum(map(len, page["entities"].values())) == 5000 and page["limit_fitted"] is False
    with pytest.raises(ValueError, match="would hold 5002 entities .* at most 1667,"):
        tools.load_scenario("uneven", limit_per_type=1668)
    with pytest.raises(ValueError, match="limit_per_type of at most 1917,"):  # from an offset: what is left
        tools.load_scenario("uneven", limit_per_type=5000, offset=500)  # (2 x 1917 + 1166 = 5000)


# --- the server keeps the file open between calls (keep_open) ----------------------------------

HOLDS = "import sys, duckdb\ntry:\n    duckdb.connect(sys.argv[1], read_only=True).close()\nexcept duckdb.IOException:\n" \
        "    sys.exit(3)\n"  # exit 3: another process holds the file


@pytest.mark.parametrize("argv, expected", [([], mcp_server.DEFAULT_KEEP_OPEN), (["--keep-open", "0"], 0.0),
                                            (["--keep-open", "45"], 45.0)])
def test_the_server_keeps_the_file_open_as_configured(tmp_path, monkeypatch, argv, expected):
    """``--keep-open S`` (default 1 s) reaches every manager the server makes;
    with S > 0 the file stays held after a call, with 0 it is free at once."""
    served: dict[str, Any] = {}
    monkeypatch.setattr(mcp_server, "serve", lambda *args: served.setdefault("args", args))
    db = tmp_path / "kept.duckdb"
    assert mcp_server.main(["--db", str(db), *argv]) == 0
    keep_open = served["args"][4]
    assert keep_open == expected
    made: list[float] = []

    class Recording(StateManager):
        def __init__(self, *args: Any, **kwargs: Any):
            made.append(kwargs.get("keep_open", 0.0))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(mcp_server, "StateManager", Recording)
    tools = ScenarioTools(str(db), keep_open=keep_open)
    tools.save_scenario("kept", {"patients": [ANA]})  # the read-write manager
    if expected == 45.0:  # long enough that no machine's delay lets it lapse: the file is still held
        held = subprocess.run([sys.executable, "-c", HOLDS, str(db)], timeout=TIMEOUT, cwd=REPO)
        assert held.returncode == 3
    assert tools.load_scenario("kept")["entities"]["patient"][0]["patient_id"] == "p1"  # the read-only one
    assert made == [expected, expected]
    if expected == 0.0:  # nothing kept: another process opens the file at once
        free = subprocess.run([sys.executable, "-c", HOLDS, str(db)], timeout=TIMEOUT, cwd=REPO)
        assert free.returncode == 0
    from healthsim_state.backends.duckdb_backend import WARM

    WARM.release(db)  # let the file go now rather than in 45 s


def test_keep_open_out_of_range_is_refused(capsys):
    with pytest.raises(SystemExit):
        mcp_server.main(["--keep-open", "-1"])
    assert "give seconds from 0 to 3600, not '-1'" in capsys.readouterr().err
