"""A throwaway PostgreSQL server on 127.0.0.1, for the tests (and the benchmarks' ``--postgres start``).

``Cluster.start()`` runs ``initdb`` into a new temporary directory and starts
the server on a free port (about 1-2 s), listening on 127.0.0.1 only, its
socket in the same directory; ``stop()`` stops it and removes everything. The
server binaries come from ``$HEALTHSIM_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin``, else ``initdb`` on the ``PATH``. initdb
refuses to run as root, so as root the cluster runs as the ``postgres`` user
(through ``runuser``).

Local connections are trusted, except for the role :data:`PASSWORD_ROLE`,
which must give its password (scram-sha-256): tests of wrong passwords use it.
``durable=False`` (the tests) turns off fsync; the benchmark keeps the
defaults, so its figures are a real server's.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD_ROLE = "healthsim_password_user"
_HBA = f"""\
local all all trust
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


class ClusterUnavailable(RuntimeError):
    """No cluster could be started here; the message says why."""


def find_binaries() -> Path:
    candidates = [os.environ.get("HEALTHSIM_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) were found: install them "
                             "(apt-get install -y postgresql) or set HEALTHSIM_PG_BIN")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, binaries: Path, root: Path, port: int, as_postgres: bool):
        self.binaries, self.root, self.port, self._as_postgres = binaries, root, port, as_postgres
        self.data = root / "data"
        self._stopped = False

    @classmethod
    def start(cls, *, durable: bool = False) -> "Cluster":
        binaries = find_binaries()
        as_postgres = hasattr(os, "geteuid") and os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="healthsim-pg-"))
        if as_postgres:
            try:
                shutil.chown(root, "postgres")
            except (LookupError, OSError) as error:
                shutil.rmtree(root, ignore_errors=True)
                raise ClusterUnavailable(f"running as root, and there is no usable postgres user to run the "
                                         f"server as ({error})") from None
        cluster = cls(binaries, root, 0, as_postgres)
        try:
            cluster._initdb()
            last = ""
            for _ in range(3):  # a free port can be taken between the probe and the start
                cluster.port = _free_port()
                last = cluster._start(durable)
                if not last:
                    atexit.register(cluster.stop)
                    return cluster
            raise ClusterUnavailable(f"the PostgreSQL server did not start: {last}")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def _initdb(self) -> None:
        result = self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        if result.returncode != 0:
            raise ClusterUnavailable(f"initdb failed: {(result.stderr or result.stdout).strip()[-500:]}")
        (self.data / "pg_hba.conf").write_text(_HBA)

    def _start(self, durable: bool) -> str:
        options = [f"-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-k {self.root}",
                   "-c max_connections=200", "-c password_encryption=scram-sha-256"]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        result = self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                           "-w", "-t", "60", "-o", " ".join(options), "start")
        if result.returncode == 0:
            return ""
        log = (self.root / "server.log")
        return (log.read_text()[-500:] if log.exists() else "") or result.stderr.strip()[-500:]

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self):
        """An autocommit connection as the superuser (psycopg needed)."""
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str) -> str:
        with self.admin() as con:
            con.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
