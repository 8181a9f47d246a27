"""The team stack on one machine, for a small lab: PostgreSQL holding the runs, the registry, the
users and the sweeps' Optuna studies, and an MLflow tracking server with basic authentication
that proxies the artifacts, both bound to 127.0.0.1.

    python -m multiloss.team start [--port 5000] [--folder DIR]   # make team-server
    python -m multiloss.team status                                # the URIs, what runs
    python -m multiloss.team storage-url                           # the sweeps' Optuna storage
    python -m multiloss.team grant alice EDIT                      # on every experiment and model
    python -m multiloss.team stop                                  # make team-server-stop

Everything lives in one folder, ``<home>/mlruns/team`` by default (git-ignored with the local
store): ``postgres/`` (the cluster), ``artifacts/``, ``basic_auth.ini`` and ``secrets.json``
(database password, Flask secret key, the ports; readable by the owner only), ``mlflow.log``.
The tests start the stack with :class:`TeamServer` too, so the README's commands are the ones run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from multiloss import names, paths
from multiloss.files import write_private_json
from multiloss.team.postgres import HOST, Postgres

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"     # MLflow's own: the admin's password on first start
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"     # MLflow's own: signs the UI's CSRF tokens
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"       # MLflow's own
ADMIN_USER = "admin"
MIN_PASSWORD = 12                                     # MLflow's auth store refuses shorter passwords
DB_ROLE = "multiloss"
TRACKING_DB, AUTH_DB, OPTUNA_DB = "mlflow", "mlflow_auth", "optuna"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 2
HEALTH_TIMEOUT_S = 180
AUTH_CACHE_TTL_S = 60
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
MODELS = (names.SEGMENTATION_MODEL, names.CLASSIFIER_MODEL, names.ENSEMBLE_MODEL)


def default_folder() -> Path:
    return paths.store_dir() / "team"


def _http_status(url: str, user: str | None = None, password: str | None = None) -> int | None:
    """The HTTP status of a GET (None if nothing answers)."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _is_our_server(pid: int) -> bool:
    """The pid is alive and still an ``mlflow server`` (not a pid reused since)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in command and b"server" in command


class TeamServer:
    """The stack whose files are under ``folder``."""

    def __init__(self, folder: Path | str | None = None):
        self.folder = Path(folder or default_folder()).resolve()
        self.postgres = Postgres(self.folder / "postgres")
        self.artifacts = self.folder / "artifacts"
        self.auth_config = self.folder / "basic_auth.ini"
        self.secrets_file = self.folder / "secrets.json"
        self.log = self.folder / "mlflow.log"
        self.pid_file = self.folder / "mlflow.pid"

    # --- what is stored -----------------------------------------------------------------------------

    def secrets(self) -> dict:
        if not self.secrets_file.is_file():
            raise FileNotFoundError(f"no team server set up in {self.folder} (start it: make team-server)")
        return json.loads(self.secrets_file.read_text())

    def _save_secrets(self, values: dict) -> None:
        write_private_json(self.secrets_file, values)

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.secrets()['mlflow_port']}"

    def database_url(self, database: str) -> str:
        return self.postgres.url(database, user=DB_ROLE, password=self.secrets()["db_password"])

    def storage_url(self) -> str:
        """The Optuna storage every sweep worker of the lab passes as ``-P storage=...``."""
        return self.database_url(OPTUNA_DB)

    def server_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _is_our_server(pid) else None

    # --- start and stop -----------------------------------------------------------------------------

    def start(self, admin_password: str | None, port: int | None = None, workers: int = DEFAULT_WORKERS,
              durable: bool = True) -> str:
        """Start PostgreSQL and the MLflow server (each unless running) and return the tracking URI.

        ``admin_password`` is the ``admin`` user's, created on the first start (MLflow ships no
        default); it is refused when missing or shorter than MLflow accepts, before anything starts.
        ``port``: the MLflow server's (default: the previous start's, else 5000). ``durable=False``
        (throw-away stacks: tests) runs PostgreSQL without fsync."""
        if not admin_password:
            raise ValueError(f"{ADMIN_PASSWORD_ENV} is not set: the admin user's password, which MLflow needs "
                             "to create that user on the first start (it ships no default); export it and retry")
        if len(admin_password) < MIN_PASSWORD:
            raise ValueError(f"{ADMIN_PASSWORD_ENV} must be at least {MIN_PASSWORD} characters "
                             f"(MLflow refuses shorter passwords), got {len(admin_password)}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = self.secrets() if self.secrets_file.is_file() else {
            "db_password": secrets.token_urlsafe(24), "flask_secret_key": secrets.token_hex(32)}
        running = self.server_pid() is not None
        if running and port is not None and port != stored["mlflow_port"]:
            raise ValueError(f"the team server already runs on port {stored['mlflow_port']}, not {port}; stop it "
                             "first (make team-server-stop) to move it")
        stored["mlflow_port"] = port or stored.get("mlflow_port") or DEFAULT_PORT
        self._save_secrets(stored)

        self.postgres.init(durable=durable).start()
        self.postgres.create_role(DB_ROLE, stored["db_password"])
        for database in (TRACKING_DB, AUTH_DB, OPTUNA_DB):
            self.postgres.create_database(database, owner=DB_ROLE)
        if not running:
            self._start_mlflow(admin_password, stored, workers)
        self._check_admin(admin_password)
        return self.tracking_uri

    def _write_auth_config(self) -> None:
        text = "\n".join([
            "[mlflow]",
            "# written by multiloss.team.server; MLflow's own keys (mlflow/server/auth/basic_auth.ini)",
            "default_permission = READ",
            f"database_uri = {self.database_url(AUTH_DB)}",
            f"admin_username = {ADMIN_USER}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "# Each request's password is checked with a slow hash (on 2 cores ~0.1-1 s); a checked one is",
            "# remembered for a minute per server worker, so a password change or a deleted user reaches",
            "# the other workers within that minute.",
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
            ""])
        self.auth_config.touch(mode=0o600)
        self.auth_config.chmod(0o600)
        self.auth_config.write_text(text)

    def _start_mlflow(self, admin_password: str, stored: dict, workers: int) -> None:
        port = int(stored["mlflow_port"])
        if _http_status(f"http://{HOST}:{port}/health") is not None:
            raise RuntimeError(f"port {port} on {HOST} is taken by another server; choose another (--port, "
                               "TEAM_PORT= for make)")
        self._write_auth_config()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                   "--default-artifact-root", "mlflow-artifacts:/", "--artifacts-destination", str(self.artifacts),
                   "--host", HOST, "--port", str(port), "--workers", str(workers)]
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_TRACKING_", "MLFLOW_RUN_", "MLFLOW_EXPERIMENT_"))}
        env.update({
            # = --backend-store-uri, kept out of the command line (ps shows that to every user)
            "MLFLOW_BACKEND_STORE_URI": self.database_url(TRACKING_DB),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
            ADMIN_PASSWORD_ENV: admin_password,
            SECRET_KEY_ENV: os.environ.get(SECRET_KEY_ENV) or stored["flask_secret_key"],
            # MLflow's job runner (GenAI scorers, trace roll-ups: nothing this suite uses) is eight more
            # processes, each importing MLflow; off unless the caller turns it on
            JOBS_ENV: os.environ.get(JOBS_ENV, "false"),
        })
        with open(self.log, "ab") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder)
        self.pid_file.write_text(str(server.pid))
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while _http_status(f"http://{HOST}:{port}/health") != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                self._stop_mlflow(server.pid)
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"the MLflow server did not come up on {HOST}:{port} "
                                   f"(exit code {server.poll()}); last lines of {self.log}:\n{tail}")
            time.sleep(0.5)

    def _check_admin(self, admin_password: str) -> None:
        status = _http_status(f"{self.tracking_uri}/api/2.0/mlflow/users/get?username={ADMIN_USER}",
                              ADMIN_USER, admin_password)
        if status != 200:
            print(f"team server: warning: {ADMIN_PASSWORD_ENV} is not the {ADMIN_USER!r} user's password on this "
                  f"server (HTTP {status}); MLflow keeps the one of the first start: change it with "
                  "/api/2.0/mlflow/users/update-password", file=sys.stderr)

    def _stop_mlflow(self, pid: int) -> None:
        """SIGTERM to the server's process group (uvicorn and its workers), SIGKILL after 30 s."""
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while _is_our_server(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)           # reap it if it is our child
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if _is_our_server(pid):
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> list[str]:
        """Stop the MLflow server, then PostgreSQL; returns what was running."""
        stopped = []
        pid = self.server_pid()
        if pid is not None:
            self._stop_mlflow(pid)
            stopped.append(f"MLflow server (process {pid})")
        if self.postgres.running():
            self.postgres.stop()
            stopped.append("PostgreSQL")
        return stopped

    def status(self) -> dict[str, str]:
        pid = self.server_pid()
        running = pid is not None and _http_status(f"{self.tracking_uri}/health") == 200
        return {"folder": str(self.folder),
                "mlflow": f"{self.tracking_uri} (process {pid})" if running else "stopped",
                "postgres": f"{HOST}:{self.postgres.port}" if self.postgres.running() else "stopped"}


def grant(user: str, permission: str) -> dict[str, list[str]]:
    """Give ``user`` ``permission`` on every experiment and registered model of the suite, creating
    those missing first, on the server of ``MLFLOW_TRACKING_URI`` as the user of
    ``MLFLOW_TRACKING_USERNAME`` (an admin). A user's earlier grant on one is replaced. Returns
    what was granted: experiment ids and model names."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from multiloss.tracking import store

    if permission not in PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}, got {permission!r}")
    experiments = store.ensure_experiments()
    client = mlflow.MlflowClient()
    for model in MODELS:
        try:
            client.create_registered_model(model)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    auth = get_app_client("basic-auth", tracking_uri=store.tracking_uri())
    resources = [("experiment", e) for e in experiments.values()] + [("registered_model", m) for m in MODELS]
    for kind, resource in resources:
        try:
            auth.grant_user_permission(user, kind, resource, permission)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(user, kind, resource)
            auth.grant_user_permission(user, kind, resource, permission)
    return {"experiments": list(experiments.values()), "registered_models": list(MODELS)}


def _announce(team: TeamServer) -> None:
    uri = team.tracking_uri
    print(f"team server: MLflow with basic auth at {uri} (users: {ADMIN_USER} and those you create), "
          f"runs, models and users in PostgreSQL on {HOST}:{team.postgres.port}, artifacts in {team.artifacts}")
    print(f"  export MLFLOW_TRACKING_URI={uri} MLFLOW_TRACKING_USERNAME={ADMIN_USER} "
          f"MLFLOW_TRACKING_PASSWORD=\"${ADMIN_PASSWORD_ENV}\"")
    print("  sweep workers' Optuna storage: -P storage=\"$(python -m multiloss.team storage-url)\"")
    print(f"  its log: {team.log}; stop it: make team-server-stop (python -m multiloss.team stop)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiloss.team", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "storage-url", "grant"))
    parser.add_argument("user", nargs="?", help="grant: the user (created by an admin beforehand)")
    parser.add_argument("permission", nargs="?", help=f"grant: one of {', '.join(PERMISSIONS)}")
    parser.add_argument("--folder", help=f"the stack's folder (default: {default_folder()})")
    parser.add_argument("--port", type=int, help=f"the MLflow server's port (default: the last start's, else {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="the MLflow server's worker processes")
    args = parser.parse_args(argv)
    team = TeamServer(args.folder)
    try:
        if args.command == "start":
            team.start(os.environ.get(ADMIN_PASSWORD_ENV), port=args.port, workers=args.workers)
            _announce(team)
        elif args.command == "stop":
            stopped = team.stop()
            print(f"team server: stopped {' and '.join(stopped)}" if stopped else "team server: nothing was running")
        elif args.command == "status":
            for key, value in team.status().items():
                print(f"{key}: {value}")
        elif args.command == "storage-url":
            print(team.storage_url())
        else:
            if not args.user or not args.permission:
                raise ValueError("grant needs a user and a permission, e.g. grant alice EDIT")
            os.environ.setdefault("MLFLOW_TRACKING_URI", team.tracking_uri)
            if not os.environ.get("MLFLOW_TRACKING_USERNAME"):
                if not os.environ.get(ADMIN_PASSWORD_ENV):
                    raise ValueError(f"grant acts as an admin: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                                     f"or {ADMIN_PASSWORD_ENV} for the {ADMIN_USER!r} user")
                os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=os.environ[ADMIN_PASSWORD_ENV])
            from mlflow.exceptions import MlflowException

            try:
                granted = grant(args.user, args.permission)
            except MlflowException as err:
                raise RuntimeError(f"grant {args.user} {args.permission} failed: {err.message}") from None
            print(f"team server: {args.user} has {args.permission} on experiments {', '.join(granted['experiments'])} "
                  f"and models {', '.join(granted['registered_models'])} of {os.environ['MLFLOW_TRACKING_URI']}")
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as err:
        print(f"team server: {err}", file=sys.stderr)
        return 2
    return 0
