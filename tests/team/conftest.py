"""The team stack for the ``team`` tests: one real PostgreSQL and one MLflow server with basic auth
on it, started once per test process by the code ``make team-server`` runs (:class:`TeamServer`),
in a throw-away folder, and stopped at the end. Users: ``admin``; ``editor`` with EDIT and
``reader`` with READ on every experiment and registered model of the suite (which the admin
created), as ``python -m multiloss.team grant`` gives them."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.server
import pytest

from multiloss.team.postgres import free_port
from multiloss.team.server import ADMIN_USER, TeamServer, grant

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


@pytest.fixture(scope="session")
def team():
    # Under /tmp, searchable by others: as root, PostgreSQL runs as nobody and must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="multiloss-team-"))
    folder.chmod(0o711)
    stack = TeamServer(folder / "team")
    passwords = {ADMIN_USER: "admin-" + secrets.token_urlsafe(12)}
    passwords.update({user: f"{user}-" + secrets.token_urlsafe(12) for user in USERS})
    try:
        url = stack.start(passwords[ADMIN_USER], port=free_port(), workers=1, durable=False)
        team = Team(stack, url, passwords)
        with pytest.MonkeyPatch.context() as patch:
            team.use(patch, ADMIN_USER)
            client = team.admin_client()
            for user, permission in USERS.items():
                client.create_user(user, passwords[user])
                grant(user, permission)
        yield team
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def as_user(team, monkeypatch):
    """The test's own process on the team server, as ``editor`` until it calls ``as_user(name)``."""
    def use(user: str | None):
        team.use(monkeypatch, user)
    use("editor")
    return use
