"""The team stack for the ``team`` tests: one real PostgreSQL and one MLflow server with basic auth
on it, started once for the test run by the code ``make team-server`` runs (:class:`TeamServer`),
in a throw-away folder, and stopped at the end. Users: ``admin``; ``editor`` with EDIT and
``reader`` with READ on every experiment and registered model of the suite (which the admin
created), given by README's ``python -m multiloss.team grant`` as the admin; stopped by the command of
``make team-server-stop``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.server
import pytest

from multiloss.team.postgres import free_port
from multiloss.team.server import ADMIN_PASSWORD_ENV, ADMIN_USER, TeamServer

REPO = Path(__file__).resolve().parents[2]

USERS = {"editor": "EDIT", "reader": "READ"}      # each user's permission on the suite's experiments and models
CLIENT_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_RUN_ID",
               "MLFLOW_EXPERIMENT_ID")


@dataclass
class Team:
    stack: TeamServer
    url: str
    passwords: dict[str, str]          # user name -> password, admin included

    def client_env(self, user: str | None) -> dict[str, str]:
        """What a client needs: the server, and ``user``'s credentials (none for None)."""
        env = {"MLFLOW_TRACKING_URI": self.url}
        if user is not None:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=self.passwords[user])
        return env

    def env(self, user: str | None) -> dict[str, str]:
        """A child process's environment: ours, on the server as ``user``."""
        env = {key: value for key, value in os.environ.items() if key not in CLIENT_KEYS}
        return {**env, **self.client_env(user)}

    def use(self, patch: pytest.MonkeyPatch, user: str | None) -> None:
        """This process talks to the server as ``user`` until ``patch`` is undone."""
        for key in CLIENT_KEYS:
            patch.delenv(key, raising=False)
        for key, value in self.client_env(user).items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(self.url)

    def admin_client(self):
        return mlflow.server.get_app_client("basic-auth", tracking_uri=self.url)


def _start(folder: Path) -> Team:
    stack = TeamServer(folder / "team")
    passwords = {ADMIN_USER: "admin-" + secrets.token_urlsafe(12)}
    passwords.update({user: f"{user}-" + secrets.token_urlsafe(12) for user in USERS})
    url = stack.start(passwords[ADMIN_USER], port=free_port(), workers=1, durable=False)
    team = Team(stack, url, passwords)
    with pytest.MonkeyPatch.context() as patch:
        team.use(patch, ADMIN_USER)
        client = team.admin_client()
        for user in USERS:
            client.create_user(user, passwords[user])
    # README's grant command, as an admin with MLFLOW_AUTH_ADMIN_PASSWORD set, for both users at once
    # (grant's creation of the experiments and models takes a clash: the other's are used)
    env = {**{k: v for k, v in os.environ.items() if k not in CLIENT_KEYS}, ADMIN_PASSWORD_ENV: passwords[ADMIN_USER]}
    granting = {user: subprocess.Popen([sys.executable, "-m", "multiloss.team", "grant", user, permission, "--folder",
                                        str(stack.folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
                for user, permission in USERS.items()}
    for user, process in granting.items():
        out = process.communicate(timeout=120)[0]
        assert process.returncode == 0 and f"team server: {user} has {USERS[user]} on experiments" in out, out[-3000:]
    return team


def _stop(folder: Path) -> None:
    """What ``make team-server-stop`` runs, on the stack in ``folder``."""
    recipe = subprocess.run(["make", "-s", "-n", "--no-print-directory", "team-server-stop"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    (command,) = [line for line in recipe.splitlines() if "multiloss.team stop" in line]
    stopped = subprocess.run(f"{command} --folder {shlex.quote(str(folder))}", shell=True, cwd=REPO,
                             capture_output=True, text=True)
    assert stopped.returncode == 0 and "team server: " in stopped.stdout, stopped.stdout + stopped.stderr


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def team(worker_id):
    """One stack for the whole run: the test processes of ``pytest -n`` share it (the first to need it
    starts it, the last to finish stops it), a stack start being ~15 s of two cores."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"{os.getpid()}-{secrets.token_hex(4)}"
    # Under /tmp, searchable by others: as root, PostgreSQL runs as nobody and must reach its folder.
    folder = Path(tempfile.gettempdir()) / f"multiloss-team-{run}"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o711)
    lock, users, saved = folder / "lock", folder / "users", folder / "passwords.json"
    with _locked(lock):
        if saved.is_file() and TeamServer(folder / "team").server_pid() is not None:
            team = Team(TeamServer(folder / "team"), "", json.loads(saved.read_text()))
            team.url = team.stack.tracking_uri
        else:
            try:
                team = _start(folder)
            except BaseException:
                TeamServer(folder / "team").stop()
                raise
            saved.touch(mode=0o600)
            saved.write_text(json.dumps(team.passwords))
        users.mkdir(exist_ok=True)
        (users / worker_id).touch()
    try:
        yield team
    finally:
        with _locked(lock):
            (users / worker_id).unlink(missing_ok=True)
            last = not any(users.iterdir())
            if last:
                try:
                    _stop(team.stack.folder)
                finally:
                    team.stack.stop()          # nothing left to stop unless the command failed
                shutil.rmtree(folder / "team", ignore_errors=True)
                shutil.rmtree(users, ignore_errors=True)
                saved.unlink(missing_ok=True)
        if last:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def as_user(team, monkeypatch):
    """The test's own process on the team server, as ``editor`` until it calls ``as_user(name)``."""
    def use(user: str | None):
        team.use(monkeypatch, user)
    use("editor")
    return use
