"""What only a server store has to promise: many writers at once, races on one
name, one snapshot a load, the layout lock, connections (bad URLs, passwords,
lost connections, the pool), exactness of what PostgreSQL stores, and the
driver as an optional extra.

Every test gets a fresh database on the session's throwaway server (pg_url);
processes are children of the test with bounded work and timeouts."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from psycopg import errors as psycopg_errors
from psycopg.pq import TransactionStatus

import oracle
from pgserver import PASSWORD_ROLE
from healthsim_state import (
    DatabaseLockedError,
    MissingExtraError,
    ReadOnlyError,
    ScenarioExistsError,
    ServerConnectionError,
    StateManager,
    StoreError,
    StoreNotFoundError,
    ValidationError,
)
from healthsim_state.backends import pg_copy
from healthsim_state.backends.postgres_backend import DIALECT, VERSIONS_FILLFACTOR, PostgresBackend, translate
from healthsim_state.backends.urls import redact
from healthsim_state.store import Scenarios, TypeRows
from stores import Store
from test_processes import python, run_mixed_workers

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_url) -> Store:
    return Store("postgres", pg_url)


def backends_of(url: str) -> list[tuple]:
    """This test's sessions on the server: (pid, state, wait_event_type)."""
    return Store("postgres", url).sql(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'healthsim-state'")


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# --- many writers ---------------------------------------------------------------------------

def test_eight_processes_with_fifty_mixed_operations_each(pg_url):
    StateManager(pg_url).create()
    elapsed = run_mixed_workers(pg_url, 8, 50, timeout=300)
    print(f"\n8 processes x 50 operations on PostgreSQL: {400 / elapsed:.1f} operations/s")


RACER = """
    import sys
    from healthsim_state import StateManager, ScenarioExistsError
    from healthsim_state.store import Scenarios
    url = sys.argv[1]
    original, waited = Scenarios.find_name, []
    def find_then_wait(self, name):
        found = original(self, name)
        if not waited:  # the first attempt: this snapshot sees no scenario; wait until the other has one too
            waited.append(True)
            print("looked", flush=True)
            assert sys.stdin.readline().strip() == "go"
        return found
    Scenarios.find_name = find_then_wait
    with StateManager(url) as sm:
        try:
            sid = sm.save_scenario("one name", {"patient": [{"patient_id": sys.argv[2]}]})
            print("saved", sid, flush=True)
        except ScenarioExistsError as error:
            print("exists", error, flush=True)
"""


def test_two_processes_saving_one_new_name_at_once_one_wins_the_other_is_told(pg_url):
    """Both look for the name in snapshots taken before either saves: neither
    finds it, both insert, the second waits for the first and loses the
    unique key, runs again, finds the first one's scenario and is told."""
    StateManager(pg_url).create()
    racers = [python(RACER, pg_url, who, stdin=subprocess.PIPE) for who in ("first", "second")]
    for racer in racers:
        assert racer.stdout.readline().strip() == "looked", racer.stderr.read()
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        outcomes.append(out.split()[0])
    assert sorted(outcomes) == ["exists", "saved"]
    with StateManager(pg_url) as sm:
        (item,) = sm.list_scenarios()
        assert item["name"] == "one name" and item["entity_count"] == 1


def test_a_race_on_one_name_in_threads_is_run_again_and_refused(pg_url, monkeypatch):
    """The same race, pinned down in one process: the second save's insert
    waits on the first's uncommitted row, the first commits, the second
    raises ScenarioExistsError (not a database error)."""
    StateManager(pg_url).create()
    original = Scenarios.insert
    inserted, release = threading.Event(), threading.Event()

    def insert_then_hold(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if threading.current_thread().name == "first":
            inserted.set()
            assert release.wait(30)

    monkeypatch.setattr(Scenarios, "insert", insert_then_hold)
    results: dict[str, object] = {}

    def save(who: str) -> None:
        try:
            with StateManager(pg_url) as sm:
                results[who] = sm.save_scenario("raced", {"patient": [{"patient_id": who}]})
        except Exception as error:  # noqa: BLE001 - recorded, checked below
            results[who] = error

    first = threading.Thread(target=save, args=("first",), name="first")
    first.start()
    assert inserted.wait(30)
    second = threading.Thread(target=save, args=("second",), name="second")
    second.start()
    wait_until(lambda: any(wait == "Lock" for _, _, wait in backends_of(pg_url)), "the second insert to wait")
    release.set()
    first.join(30)
    second.join(30)
    assert isinstance(results["first"], str)
    assert isinstance(results["second"], ScenarioExistsError), results["second"]
    assert "already exists" in str(results["second"])


# --- one snapshot a load -------------------------------------------------------------------------

def test_a_load_sees_one_snapshot_while_another_client_overwrites(pg_url, monkeypatch):
    old = {"patient": [{"patient_id": f"old{i}"} for i in range(3)], "encounter": [{"encounter_id": "old"}]}
    new = {"patient": [{"patient_id": f"new{i}"} for i in range(5)], "encounter": [{"encounter_id": "new"}]}
    with StateManager(pg_url) as sm:
        sm.save_scenario("moving", old)
    original = TypeRows.fetch_raw  # a load reads each type's rows with it
    first_type_read, overwritten = threading.Event(), threading.Event()

    def fetch_then_pause(self, **options):
        rows = original(self, **options)
        if threading.current_thread().name == "reader" and not first_type_read.is_set():
            first_type_read.set()
            assert overwritten.wait(30)
        return rows

    monkeypatch.setattr(TypeRows, "fetch_raw", fetch_then_pause)
    loaded: dict = {}
    reader = threading.Thread(target=lambda: loaded.update(StateManager(pg_url).load_scenario("moving")),
                              name="reader")
    reader.start()
    assert first_type_read.wait(30)
    with StateManager(pg_url) as writer:  # commits while the load is half done
        writer.save_scenario("moving", new, overwrite=True)
    overwritten.set()
    reader.join(30)
    assert [p["patient_id"] for p in loaded["entities"]["patient"]] == ["old0", "old1", "old2"]
    assert [e["encounter_id"] for e in loaded["entities"]["encounter"]] == ["old"]
    assert loaded["entity_count"] == 4 and loaded["version"] == 1
    with StateManager(pg_url) as sm:
        assert sm.load_scenario("moving")["entity_count"] == 6


# --- the layout lock ------------------------------------------------------------------------------

ADD_FIELD = """
    import sys
    from healthsim_state import StateManager
    with StateManager(sys.argv[1], mapping_dirs=[sys.argv[2]]) as sm:
        sm.create()
        print("applied" if sm.schema_report is not None else "nothing", flush=True)
"""


def test_clients_adding_a_field_at_once_apply_it_once(pg_url, tmp_path):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p", "shoe_size": 44}]})
    ((generation,),) = Store("postgres", pg_url).sql("SELECT value FROM _healthsim_meta WHERE key = 'generation'")
    maps = tmp_path / "maps"
    maps.mkdir()
    patient = (REPO / "mappings" / "patient.yaml").read_text()
    (maps / "patient.yaml").write_text(patient.replace("\nfhir:\n", "\n  - {column: shoe_size, path: shoe_size, type: integer}\nfhir:\n", 1))
    clients = [python(ADD_FIELD, pg_url, maps) for _ in range(4)]
    outcomes = []
    for client in clients:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["applied", "nothing", "nothing", "nothing"]
    store = Store("postgres", pg_url)
    assert store.sql("SELECT value FROM _healthsim_meta WHERE key = 'generation'") == [(str(int(generation) + 1),)]
    assert store.sql("SELECT shoe_size FROM patients") == [(44,)]
    with StateManager(pg_url) as sm:  # a client without the field still reads it, with the store's mapping
        assert sm.load_scenario("s")["entities"]["patient"][0]["shoe_size"] == 44


def test_a_layout_change_waits_for_open_reads_and_a_long_wait_names_them(pg_url, tmp_path):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": f"p{i}", "shoe_size": i} for i in range(3)]})
    maps = tmp_path / "maps"
    maps.mkdir()
    patient = (REPO / "mappings" / "patient.yaml").read_text()
    (maps / "patient.yaml").write_text(patient.replace("\nfhir:\n", "\n  - {column: shoe_size, path: shoe_size, type: integer}\nfhir:\n", 1))
    reader = StateManager(pg_url)
    with reader.snapshot("s") as snap:  # an open read holds the layout (shared)
        rows = snap.entities("patient", batch_size=1)
        assert next(rows)["patient_id"] == "p0"
        with pytest.raises(DatabaseLockedError) as caught:
            StateManager(pg_url, mapping_dirs=[maps], lock_timeout=0.3).create()
        holder = [pid for pid, state, _ in backends_of(pg_url) if state == "idle in transaction"]
        assert f"PID {holder[0]}" in str(caught.value) and "layout" in str(caught.value)
        changed: list = []
        changer = threading.Thread(target=lambda: changed.append(
            StateManager(pg_url, mapping_dirs=[maps], lock_timeout=30).schema_report))
        changer.start()
        wait_until(lambda: any(w == "Lock" for _, _, w in backends_of(pg_url)), "the change to wait for the read")
        assert [p["patient_id"] for p in rows] == ["p1", "p2"]  # the read goes on, unchanged
    reader.close()
    changer.join(30)
    assert changed[0].for_entity("patient").action == "fields added"
    assert Store("postgres", pg_url).sql("SELECT count(*) FROM patients WHERE shoe_size IS NOT NULL") == [(3,)]


# --- connections --------------------------------------------------------------------------------

@pytest.fixture
def password_role(pg_cluster):
    with pg_cluster.admin() as con:
        con.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        con.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-horse-battery'")
    yield PASSWORD_ROLE


def bad_urls(pg_cluster, pg_url) -> dict[str, tuple[str, str]]:
    """name: (URL, what the message must say)."""
    from pgserver import _free_port

    database = pg_url.rsplit("/", 1)[1]
    return {
        "unreachable": (f"postgresql://postgres:pw-unreachable@127.0.0.1:{_free_port()}/{database}",
                        "Connection refused"),
        "unknown host": ("postgresql://postgres:pw-unknown@no-such-host.invalid/db", "host name"),
        "wrong password": (pg_cluster.url(database, PASSWORD_ROLE, "wrong-horse"), "password authentication failed"),
        "no password": (pg_cluster.url(database, PASSWORD_ROLE), "password"),
        "missing database": (pg_cluster.url("no_such_database", "postgres", "pw-missing"),
                             'database "no_such_database" does not exist'),
    }


@pytest.mark.parametrize("case", ["unreachable", "unknown host", "wrong password", "no password",
                                  "missing database"])
def test_bad_urls_are_typed_errors_naming_the_problem_never_the_password(pg_cluster, pg_url, password_role, case,
                                                                         monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url, says = bad_urls(pg_cluster, pg_url)[case]
    password = url.split("://", 1)[1].split("@")[0].partition(":")[2]
    for attempt in (lambda sm: sm.list_scenarios(), lambda sm: sm.save_scenario("s", {}),
                    lambda sm: sm.load_scenario("s")):
        with StateManager(url, lock_timeout=1) as sm:
            with pytest.raises(ServerConnectionError) as caught:
                attempt(sm)
        message = str(caught.value)
        assert says in message and isinstance(caught.value, StoreError) and isinstance(caught.value, ConnectionError)
        assert not password or password not in message
        assert ("***@" in message) == bool(password)
    cli = subprocess.run([sys.executable, "-m", "healthsim_state.cli", "list", "--db", url], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cli.returncode == 1 and cli.stderr.startswith("error: cannot connect to ") and says in cli.stderr
    assert "Traceback" not in cli.stderr and (not password or password not in cli.stderr + cli.stdout)


def test_a_password_can_come_from_the_url_pgpassword_or_pgpass(pg_cluster, pg_url, password_role, monkeypatch,
                                                               tmp_path):
    database = pg_url.rsplit("/", 1)[1]
    with pg_cluster.admin() as con:  # the role may use the database's public schema
        con.execute(f'ALTER DATABASE "{database}" OWNER TO {PASSWORD_ROLE}')
    with StateManager(pg_cluster.url(database, PASSWORD_ROLE, "right-horse-battery")) as sm:
        sm.save_scenario("from the url", {})
    bare = pg_cluster.url(database, PASSWORD_ROLE)
    monkeypatch.setenv("PGPASSWORD", "right-horse-battery")
    with StateManager(bare) as sm:
        assert [s["name"] for s in sm.list_scenarios()] == ["from the url"]
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:{database}:{PASSWORD_ROLE}:right-horse-battery\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # ~/.pgpass, where HOME is this test's
    with StateManager(bare) as sm:
        assert sm.scenario_exists("from the url")
        assert sm.label == bare  # nothing to hide


def test_a_malformed_url_is_a_store_error(monkeypatch):
    with StateManager("postgresql://user:secret-pw@127.0.0.1:notaport/db") as sm:
        with pytest.raises(StoreError) as caught:
            sm.list_scenarios()
    assert "secret-pw" not in str(caught.value)


def test_the_pool_keeps_a_few_connections_and_close_releases_them(pg_url):
    sm = StateManager(pg_url)
    sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    for _ in range(20):
        sm.load_scenario("s")
    assert 1 <= len(backends_of(pg_url)) <= 2  # reused, not one a call
    sm.close()
    wait_until(lambda: not backends_of(pg_url), "the connections to close")


def test_a_connection_the_server_dropped_is_replaced(pg_url, pg_cluster):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {})
        with pg_cluster.admin() as con:  # as a server restart or an idle timeout would
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = 'healthsim-state'", [pg_url.rsplit("/", 1)[1]])
        wait_until(lambda: not backends_of(pg_url), "the connection to go")
        assert sm.scenario_exists("s")
        sm.save_scenario("t", {})


@pytest.mark.parametrize("operation", ["save", "load"])
def test_a_session_the_server_ends_mid_operation_is_a_lost_connection(pg_url, pg_cluster, monkeypatch, operation):
    """A fast shutdown (or pg_terminate_backend) ends the session with
    57P01 while an operation runs: a ServerConnectionError naming the store,
    not a generic StoreError; nothing of the write remains and the next
    operation works on a new connection."""
    database = pg_url.rsplit("/", 1)[1]
    original = Scenarios.tags_of if operation == "load" else Scenarios.replace_tags

    def end_session_then_go_on(self, *args, **kwargs):
        with pg_cluster.admin() as con:
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = 'healthsim-state'", [database])
        wait_until(lambda: not backends_of(pg_url), "the session to end")
        return original(self, *args, **kwargs)

    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "kept"}]})
        monkeypatch.setattr(Scenarios, original.__name__, end_session_then_go_on)
        with pytest.raises(ServerConnectionError) as caught:
            if operation == "save":
                sm.save_scenario("s", {"patient": [{"patient_id": "lost"}]}, overwrite=True)
            else:
                sm.load_scenario("s")
        message = str(caught.value)
        assert message.startswith(f"lost the connection to {redact(pg_url)}: terminating connection due to "
                                  "administrator command"), message
        monkeypatch.undo()
        assert [p["patient_id"] for p in sm.load_scenario("s")["entities"]["patient"]] == ["kept"]


@pytest.mark.parametrize("state", ["57P01", "57P02", "57P03", "08006", "08003", "08000"])
def test_every_way_of_losing_the_server_is_a_server_connection_error(state):
    """admin_shutdown, crash_shutdown, cannot_connect_now and the connection-
    exception class, as the driver reports them."""
    error = psycopg_errors.lookup(state)("the server went away")
    translated = translate(error, "postgresql://u:***@h/db", "postgresql://u:pw@h/db")
    assert isinstance(translated, ServerConnectionError)
    assert str(translated) == "lost the connection to postgresql://u:***@h/db: the server went away"


def test_read_only_on_a_server(pg_url):
    with StateManager(pg_url, read_only=True) as reader:
        with pytest.raises(StoreNotFoundError, match="holds no healthsim-state store"):
            reader.list_scenarios()
    assert Store("postgres", pg_url).tables() == []  # nothing was created
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    with StateManager(pg_url, read_only=True) as reader:
        assert reader.load_scenario("s")["entity_count"] == 1
        with pytest.raises(ReadOnlyError):
            reader.save_scenario("t", {})


def test_without_psycopg_a_url_says_which_extra_to_install(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["psycopg"] = None  # as if the postgres extra were not installed
        from healthsim_state import StateManager, MissingExtraError
        try:
            StateManager("postgresql://u@localhost/db").list_scenarios()
        except MissingExtraError as error:
            assert isinstance(error, ImportError)
            print(error)
        with StateManager(sys.argv[1]) as sm:  # a file needs no driver
            sm.save_scenario("s", {})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.duckdb")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'healthsim-state[postgres]'" in done.stdout
    assert issubclass(MissingExtraError, StoreError)


# --- what PostgreSQL stores -------------------------------------------------------------------------

EXACT_MAPPING = """
entity: reading
table: readings
primary_key: id
fields:
  - {column: id, path: id, type: varchar}
  - {column: day, path: day, type: date}
  - {column: at, path: at, type: timestamp}
  - {column: big, path: big, type: "decimal(38,0)"}
  - {column: fine, path: fine, type: "decimal(38,10)"}
  - {column: money, path: money, type: "decimal(12,2)"}
  - {column: doc, path: doc, type: json}
  - {column: ratio, path: ratio, type: double}
  - {column: note, path: note, type: varchar}
"""


def test_values_are_exact_at_the_edges_of_their_types(pg_url, tmp_path):
    (tmp_path / "reading.yaml").write_text(EXACT_MAPPING)
    readings = [
        {"id": "first", "day": "0001-01-01", "at": "0001-01-01T00:00:00", "big": 10**37 + 1,
         "fine": decimal.Decimal("1234567890123456789012345678.0123456789"), "money": -0.0,
         "doc": {"b": 1, "a": [2**200, -(2**70), 1.5e300, "\x00"]}, "ratio": -0.0, "note": "a\x00b"},
        {"id": "last", "day": "9999-12-31", "at": "9999-12-31T23:59:59.999999", "big": -(10**38 - 1),
         "fine": 0.1, "money": 12.5, "doc": [{"z": None, "y": {}}], "ratio": 5e-324, "note": "é 🔑"},
        {"id": "tz", "at": "2024-03-10T01:30:00.000001-05:00", "day": dt.date(2024, 2, 29),
         "doc": "just text"},
    ]
    with StateManager(pg_url, mapping_dirs=[tmp_path]) as sm:
        sm.save_scenario("exact", {"reading": readings})
        loaded = sm.load_scenario("exact")["entities"]["reading"]
    expected = oracle.expect(yaml.safe_load(EXACT_MAPPING), readings)
    assert oracle.diff(expected, loaded, "readings") is None
    assert [type(r["big"]) for r in loaded[:2]] == [int, int]
    assert list(loaded[0]["doc"]) == ["b", "a"]  # key order kept
    assert str(loaded[0]["ratio"]) == "-0.0" and str(loaded[0]["money"]) == "-0.0"
    store = Store("postgres", pg_url)
    assert store.sql("SELECT at, big, fine FROM readings WHERE id = 'last'") == [
        (dt.datetime(9999, 12, 31, 23, 59, 59, 999999), decimal.Decimal(-(10**38 - 1)),
         decimal.Decimal("0.1000000000"))]
    assert store.sql("SELECT note, _residual IS NOT NULL FROM readings WHERE id = 'first'") == [(None, True)]


def test_json_columns_keep_their_text_verbatim(pg_url, tmp_path):
    """A json column (never jsonb) keeps what was written: key order,
    duplicate keys, numbers beyond a double's range, as read back in SQL."""
    (tmp_path / "reading.yaml").write_text(EXACT_MAPPING)
    with StateManager(pg_url, mapping_dirs=[tmp_path]) as sm:
        sid = sm.save_scenario("doc", {"reading": [{"id": "r", "doc": {"b": 1, "a": 2}}]})
    store = Store("postgres", pg_url)
    verbatim = '{"b":1,"a":2,"a":3,"n":1e400,"big":123456789012345678901234567890}'
    store.execute("UPDATE readings SET doc = ? WHERE scenario_id = ?", [verbatim, sid])
    read = DIALECT.read_expression(StateManager(pg_url, mapping_dirs=[tmp_path]).registry.codecs["reading"]
                                   .mapping.field("doc").type, "doc")
    assert store.sql(f"SELECT {read} FROM readings") == [(verbatim,)]
    types = store.sql("SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                      "AND data_type IN ('json', 'jsonb') GROUP BY data_type")
    assert types == [("json",)]  # json columns are json; jsonb is never used
    assert ("_residual", "character varying") in store.columns("readings")


def test_nul_characters_are_kept_where_text_cannot_hold_them(pg_url):
    """PostgreSQL text cannot hold NUL: such strings live in the residual (JSON
    text, escaped), never in a column; names, tags and descriptions refuse
    them on both backends (see test_manager), and a search for one finds nothing."""
    with StateManager(pg_url) as sm:
        sm.save_scenario("nul", {"patient": [{"patient_id": "p", "name": {"given": "A\x00na"}, "x\x00": "\x00"}]})
        patient = sm.load_scenario("nul")["entities"]["patient"][0]
        assert patient["name"] == {"given": "A\x00na"} and patient["x\x00"] == "\x00"
        assert sm.list_scenarios(search="\x00") == [] and sm.list_scenarios(tag="a\x00") == []
    assert Store("postgres", pg_url).sql("SELECT given_name FROM patients") == [(None,)]


def test_the_tables_are_plain_typed_tables_with_an_index_on_the_scenario(pg_url):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"claim": [{"claim_id": "c", "total_charge": 10.25}]})
    store = Store("postgres", pg_url)
    columns = dict(store.columns("claims"))
    assert columns["scenario_id"] == "character varying" and columns["total_charge"] == "numeric"
    indexes = store.sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'claims__versions'")
    assert len(indexes) == 1 and all("(scenario_id, _position)" in d for (d,) in indexes)


def test_an_overwrite_of_every_entity_retires_its_rows_in_place(pg_url):
    """Retiring a row writes a new version of it (its ``_until``): the
    versions tables fill their pages only to VERSIONS_FILLFACTOR (half), so
    even when every entity changes, the rows a save wrote are retired on the
    pages it filled (HOT updates: no new index entry). Filled to 85%, four
    in five moved to new pages, each with an index entry of its own."""
    page = "(ctid::text::point)[0]"
    store = Store("postgres", pg_url)

    def patients(revision):
        return {"patient": [{"patient_id": f"p{i}", "mrn": f"M{revision}-{i}", "name": {"given": f"G{i}"},
                             "birthDate": "1980-01-02"} for i in range(1000)]}

    with StateManager(pg_url) as sm:
        sm.save_scenario("s", patients(1))
        (last_page,), = store.sql(f"SELECT max({page}) FROM patients__versions")
        assert last_page > 2
        sm.save_scenario("s", patients(2), overwrite=True)
    assert store.sql("SELECT reloptions FROM pg_class WHERE relname = 'patients__versions'") == \
        [([f"fillfactor={VERSIONS_FILLFACTOR}"],)]
    moved, retired = store.sql(f"SELECT count(*) FILTER (WHERE {page} > ?), count(*) FROM patients__versions "
                               "WHERE _until = 2", [last_page])[0]
    assert retired == 1000 and moved <= retired // 10


# --- plans on fresh and growing tables -----------------------------------------------------------

def counted_rows(url: str, table: str) -> float:
    """What the planner's statistics say the table holds (-1: never analyzed)."""
    return Store("postgres", url).sql("SELECT reltuples FROM pg_class WHERE relname = ?", [table])[0][0]


def test_a_big_write_into_a_new_or_much_grown_table_refreshes_its_statistics(pg_url):
    """Plans made before a table was ever analyzed took a first overwrite of
    20,000 entities from 0.4 s to 30 s: a write that grows a table a lot
    analyzes it after its commit; small writes leave it to autovacuum."""
    patients = [{"patient_id": f"p{i}"} for i in range(3000)]
    with StateManager(pg_url) as sm:
        sm.save_scenario("small", {"patient": patients[:10]})
        assert counted_rows(pg_url, "patients__versions") == -1  # 10 rows: not worth a sample
        sm.save_scenario("big", {"patient": patients})
        assert counted_rows(pg_url, "patients__versions") == 3010
        sm.add_entities("small", {"patient": [{"patient_id": f"more{i}"} for i in range(200)]})
        assert counted_rows(pg_url, "patients__versions") == 3010  # grew by a fifteenth: unchanged
        sm.save_scenario("big", {"patient": [dict(p, gender="f") for p in patients]}, overwrite=True)
        assert counted_rows(pg_url, "patients__versions") == 3010  # grew by less than it held: unchanged
        sm.save_scenario("bigger", {"patient": [{"patient_id": f"q{i}"} for i in range(7000)]})
        assert counted_rows(pg_url, "patients__versions") == 210 + 2 * 3000 + 7000  # more than doubled: counted


def test_an_overwrite_plans_with_statistics_of_its_temporary_tables(pg_url, monkeypatch):
    """Autovacuum never analyzes temporary tables: the overwrite's compared
    rows (what its retiring and inserting join on) are analyzed as soon as
    they are filled; the staged rows meet the stored ones in a full join
    only, which no statistics can turn into a nested loop."""
    from healthsim_state.backends.postgres_backend import PostgresSession

    statements = []
    original = PostgresSession.execute

    def spy(self, sql, params=()):
        statements.append(sql)
        return original(self, sql, params)

    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "a"}]})
        monkeypatch.setattr(PostgresSession, "execute", spy)
        sm.save_scenario("s", {"patient": [{"patient_id": "b"}]}, overwrite=True)
    analyzed = [sql for sql in statements if sql.startswith("ANALYZE")]
    assert analyzed == ['ANALYZE "_healthsim_compare" ("old_position", "new_position")']


def test_an_overwrite_retires_the_rows_it_compared_by_their_place(pg_url, monkeypatch):
    """The rows an overwrite retires are the current ones its comparison
    read: fetched again by their place (a TID scan), so the retiring UPDATE
    reads none of the scenario's older versions (before: a second scan of
    every version, 25 -> 70-100 ms over 10 overwrites of 20,000 entities)."""
    from healthsim_state.backends.postgres_backend import PostgresSession

    plans = []
    original = PostgresSession.execute

    def explained(self, sql, params=()):
        if sql.startswith('UPDATE "patients__versions" SET _until'):
            plans.append("\n".join(row[0] for row in self.fetchall("EXPLAIN " + sql, params)))
        return original(self, sql, params)

    def patients(revision):
        return {"patient": [{"patient_id": f"p{i}", "mrn": f"M{revision}-{i}"} for i in range(2000)]}

    with StateManager(pg_url) as sm:
        for revision in range(3):
            sm.save_scenario("s", patients(revision), overwrite=revision > 0)
        monkeypatch.setattr(PostgresSession, "execute", explained)
        sm.save_scenario("s", patients(3), overwrite=True)
        assert sm.scenario_info("s")["version"] == 4
    assert len(plans) == 1 and "Tid Scan on patients__versions" in plans[0] and "Seq Scan on patients" not in plans[0]
    store = Store("postgres", pg_url)
    assert store.sql("SELECT count(*), count(DISTINCT patient_id) FROM patients") == [(2000, 2000)]
    assert store.sql("SELECT count(*) FROM patients__versions WHERE _until = 4") == [(2000,)]


# --- bulk writes not waited for (pg_copy) -----------------------------------------------------------

@pytest.fixture
def deferred_copies(monkeypatch) -> list[str]:
    """Copies of more than 50 rows are not waited for (small data stands for
    big); the list gets each such copy's statement as it is sent."""
    monkeypatch.setattr(pg_copy, "DEFERRED_ROWS", 50)
    sent, start = [], pg_copy.CopyPipe._start

    def recorded(self, statement):
        sent.append(statement)
        start(self, statement)

    monkeypatch.setattr(pg_copy.CopyPipe, "_start", recorded)
    return sent


def pooled_and_idle(sm) -> bool:
    """Every connection the manager's pool kept is outside a transaction,
    with no result left unread."""
    idle = sm._backend._idle
    return bool(idle) and all(held.con.info.transaction_status == TransactionStatus.IDLE
                              and held.con.pgconn.get_result() is None for held in idle)


def people(count: int, prefix: str = "p") -> dict[str, list[dict]]:
    return {"patient": [{"patient_id": f"{prefix}{i}", "birth_date": f"19{i % 100:02d}-01-0{1 + i % 9}",
                         "name": {"given": f"G{i}"}, "extra": {"n": i}} for i in range(count)],
            "encounter": [{"encounter_id": f"e{i}", "patient_id": f"{prefix}{i}", "class_code": "AMB",
                           "admission_time": f"2024-03-0{1 + i % 9}T08:{i % 60:02d}:00"} for i in range(count)]}


def test_a_save_whose_copies_are_not_waited_for_stores_what_a_file_stores(pg_url, tmp_path, deferred_copies):
    """A type's copy is with the server while the next type is flattened;
    what loads is what DuckDB loads."""
    data = people(300)
    with StateManager(pg_url) as server, StateManager(tmp_path / "file.duckdb") as file:
        server.save_scenario("s", data)
        file.save_scenario("s", data)
        assert server.load_scenario("s")["entities"] == file.load_scenario("s")["entities"]
        assert pooled_and_idle(server)
    assert [statement.split()[1] for statement in deferred_copies] == ['"patients__versions"',
                                                                          '"encounters__versions"']


@pytest.mark.parametrize("table, column, value", [("patients__versions", "patient_id", "p299"),
                                                  ("encounters__versions", "encounter_id", "e299")])
def test_a_background_copy_the_server_refuses_rolls_the_whole_save_back(pg_url, deferred_copies, table, column,
                                                                         value):
    """The server refuses a row of a copy not waited for: the error surfaces
    at the session's next statement (the next type's copy, or the
    bookkeeping after the last), the transaction rolls back, nothing of the
    save is kept, and the connection goes back to the pool clean."""
    with StateManager(pg_url) as sm:
        sm.save_scenario("kept", people(3, "k"))
        kept = sm.load_scenario("kept")
        Store("postgres", pg_url).execute(f'ALTER TABLE {table} ADD CONSTRAINT "refused" CHECK ({column} <> '
                                          f"'{value}')")
        with pytest.raises(StoreError, match='"refused"') as caught:
            sm.save_scenario("lost", people(300))
        assert "could not be used" in str(caught.value)
        assert [s["name"] for s in sm.list_scenarios()] == ["kept"]
        assert sm.load_scenario("kept") == kept
        assert pooled_and_idle(sm)
    assert Store("postgres", pg_url).sql("SELECT (SELECT count(*) FROM patients__versions), "
                                         "(SELECT count(*) FROM encounters__versions)") == [(3, 3)]
    assert deferred_copies[0].startswith('COPY "patients__versions"')


def test_a_copy_the_server_refuses_to_start_after_one_not_waited_for(pg_cluster, pg_url, deferred_copies):
    """The second type's ``COPY`` is refused as it starts (no right to
    insert) while the first's result is unread: that result is read first,
    then the refusal raised, and nothing of the save is kept."""
    StateManager(pg_url).create()
    with pg_cluster.admin() as con:
        con.execute("DROP ROLE IF EXISTS healthsim_writer")
        con.execute("CREATE ROLE healthsim_writer LOGIN")
    store = Store("postgres", pg_url)
    store.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO healthsim_writer")
    store.execute("REVOKE INSERT ON encounters__versions FROM healthsim_writer")
    with StateManager(pg_url.replace("postgres@", "healthsim_writer@")) as sm:
        with pytest.raises(StoreError, match="permission denied"):
            sm.save_scenario("lost", people(300))
        assert sm.list_scenarios() == []
        assert pooled_and_idle(sm)
    assert store.sql("SELECT count(*) FROM patients__versions") == [(0,)]
    assert [statement.split()[1] for statement in deferred_copies] == ['"patients__versions"',
                                                                          '"encounters__versions"']


def test_a_save_found_invalid_after_a_background_copy_keeps_nothing(pg_url, deferred_copies):
    """A problem in a later type is found while the first type's copy is
    with the server: the save is refused whole, and the copy is waited for
    before the rollback (one connection, one statement at a time)."""
    data = people(300)
    data["encounter"][-1]["admission_time"] = "not a time"
    with StateManager(pg_url) as sm:
        with pytest.raises(ValidationError, match=r"encounter\[299\] @ period.start"):
            sm.save_scenario("lost", data)
        assert sm.list_scenarios() == []
        sm.save_scenario("after", people(2))  # the connection went back to the pool usable
        assert [p["patient_id"] for p in sm.load_scenario("after")["entities"]["patient"]] == ["p0", "p1"]
    assert len(deferred_copies) == 1 and deferred_copies[0].startswith('COPY "patients__versions"')


def test_a_value_the_driver_cannot_encode_fails_at_its_own_write(pg_url, deferred_copies):
    """Rows are formatted before anything is sent: a lone surrogate fails
    at its own write, named as a problem of its entity."""
    data = people(300)
    data["patient"][7]["name"]["given"] = "A\ud800"
    with StateManager(pg_url) as sm:
        with pytest.raises(ValidationError, match=r"patient\[7\] @ name.given: the string holds a lone surrogate"):
            sm.save_scenario("lost", data)
        assert sm.list_scenarios() == []
        assert pooled_and_idle(sm)
    assert deferred_copies == []


def test_the_backend_label_never_shows_the_password():
    backend = PostgresBackend("postgresql://me:s3cr%40t@db.example:5433/team?sslmode=require&password=other")
    assert "s3cr" not in backend.label and "other" not in backend.label and "db.example:5433/team" in backend.label


def test_a_role_that_may_only_select_can_read_and_is_told_it_cannot_write(pg_cluster, pg_url):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "p"}]})
    with pg_cluster.admin() as con:
        con.execute("DROP ROLE IF EXISTS healthsim_reader")
        con.execute("CREATE ROLE healthsim_reader LOGIN")
    Store("postgres", pg_url).execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO healthsim_reader")
    reader_url = pg_url.replace("postgres@", "healthsim_reader@")
    with StateManager(reader_url, read_only=True) as reader:
        assert reader.load_scenario("s")["entity_count"] == 1
    with StateManager(reader_url) as writer:
        with pytest.raises(StoreError, match="permission denied") as caught:
            writer.save_scenario("t", {})
    assert "the URL's role needs" in str(caught.value)


def test_a_client_killed_mid_write_leaves_nothing_of_it(pg_url):
    """SIGKILL a client while it saves, overwrites or deletes 40,000-entity
    scenarios: the server rolls its transaction back; what was committed
    before is intact, and no row of the interrupted write remains."""
    import random
    import signal

    from test_processes import CRASH_WORKER, VICTIM, keeper_entities, victim

    with StateManager(pg_url) as sm:
        sm.save_scenario("keeper", keeper_entities(), tags=["keep"])
        expected_keeper = sm.load_scenario("keeper")
    code = textwrap.dedent(VICTIM) + textwrap.dedent(CRASH_WORKER)
    probe = python(code, pg_url, "save", 40_000)
    assert probe.stdout.readline().strip() == "ready", probe.stderr.read()
    out, err = probe.communicate(timeout=120)
    assert probe.returncode == 0, err
    duration = float(out.strip())
    with StateManager(pg_url) as sm:
        sm.delete_scenario("victim")
    rng, kills = random.Random(12), 0
    for action in ("save", "overwrite", "delete", "save"):
        if action != "save":
            with StateManager(pg_url) as sm:
                sm.save_scenario("victim", victim(40_000, "old"), overwrite=True)
        worker = python(code, pg_url, action, 40_000)
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        time.sleep(rng.uniform(0.1, 0.9) * duration)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        kills += worker.returncode == -signal.SIGKILL
        with StateManager(pg_url, lock_timeout=30) as sm:
            assert sm.load_scenario("keeper") == expected_keeper
            if sm.scenario_exists("victim"):
                loaded = sm.load_scenario("victim")
                tag = loaded["entities"]["patient"][0]["patient_id"][:3]
                assert len(loaded["entities"]["patient"]) == 40_000 and loaded["entity_count"] == 80_000
                assert {p["patient_id"][:3] for p in loaded["entities"]["patient"]} == {tag}
            counted = sum(s["entity_counts"].get("patient", 0) for s in sm.list_scenarios(limit=None))
        assert Store("postgres", pg_url).sql("SELECT count(*) FROM patients") == [(counted,)]
        with StateManager(pg_url) as sm:
            sm.delete_scenario("victim")
    assert kills >= 1, "no kill landed before the operation ended"


HOLDER = """
    import sys
    from healthsim_state import StateManager
    from healthsim_state.store import Scenarios
    original = Scenarios.find_name  # a save's look-up of its scenario
    def find_then_hold(self, name):
        found = original(self, name)
        if self.session.writable:  # the scenario's row is locked now
            print("locked", flush=True)
            if sys.argv[2] == "sleep":
                self.session.execute("SELECT pg_sleep(60)")  # a long statement, as a big write's joins are
            else:
                assert sys.stdin.readline().strip() == "go"
        return found
    Scenarios.find_name = find_then_hold
    with StateManager(sys.argv[1]) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "held"}]}, overwrite=True)
    print("done", flush=True)
"""


def test_a_write_locks_its_scenario_first_and_a_second_writer_queues_there(pg_url):
    """Lock order: the second overwrite waits on the scenario's row before it
    does any work, then runs (again, its snapshot being older) and wins."""
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "first"}]})
    holder = python(HOLDER, pg_url, "hold", stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    second = python("""
        import sys
        from healthsim_state import StateManager
        with StateManager(sys.argv[1]) as sm:
            sm.save_scenario("s", {"patient": [{"patient_id": "second"}]}, overwrite=True)
    """, pg_url)
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               "AND query LIKE '%FROM scenarios WHERE%FOR UPDATE'")
    wait_until(lambda: Store("postgres", pg_url).sql(waiting) == [(1,)], "the second writer to wait on the "
               "scenario's row", timeout=30)
    holder.stdin.write("go\n")
    holder.stdin.flush()
    for process in (holder, second):
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    with StateManager(pg_url) as sm:
        assert sm.load_scenario("s")["entities"]["patient"][0]["patient_id"] == "second"
        assert [v["version"] for v in sm.scenario_history("s")] == [3, 2, 1]


def test_a_client_killed_mid_statement_stops_holding_its_scenario_within_seconds(pg_url):
    """The server process of a killed client finishes its statement before it
    reads the closed socket: without checking for its client while a
    statement runs, it held the scenario's row for the whole statement (here
    60 s), and the next writer timed out waiting."""
    import signal

    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {"patient": [{"patient_id": "first"}]})
    holder = python(HOLDER, pg_url, "sleep")
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    time.sleep(0.3)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    started = time.monotonic()
    with StateManager(pg_url, lock_timeout=20) as sm:
        sm.delete_scenario("s")
    assert time.monotonic() - started < 10


def test_compact_is_for_files(pg_url):
    with StateManager(pg_url) as sm:
        sm.save_scenario("s", {})
        with pytest.raises(StoreError, match="autovacuum"):
            sm.compact()
