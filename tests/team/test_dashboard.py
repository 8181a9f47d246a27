"""``make sweep-dashboard``: optuna-dashboard's own loader reads our journal, heartbeats and all, and
the target's command serves it on 127.0.0.1."""

import io
import json
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from optuna_dashboard._storage_url import get_storage

from multiloss.classification.sweeps.storage import (
    HEARTBEAT_ATTR,
    default_journal_path,
    open_storage,
)
from multiloss.team.dashboard import storage_location
from multiloss.team.postgres import free_port
from multiloss.team.server import DB_ROLE

pytestmark = pytest.mark.team

REPO = Path(__file__).resolve().parents[2]
LAMS = [1.0, 10.0, 20.0]


def write_journal(path: Path) -> None:
    """A study in our heartbeat journal: one trial finished, one still running and beating, one queued."""
    storage = open_storage(str(path), heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="cal_cce-live")
    for lam in LAMS:
        study.enqueue_trial({"lam": lam})
    done = study.ask()
    done.suggest_categorical("lam", LAMS)
    storage.record_heartbeat(done._trial_id)
    study.tell(done, 0.42)
    running = study.ask()
    running.suggest_categorical("lam", LAMS)
    storage.record_heartbeat(running._trial_id)


def get(app, path: str) -> dict:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


def test_the_dashboards_loader_reads_our_journal_with_its_heartbeats(tmp_path):
    journal = tmp_path / "journal.log"
    write_journal(journal)
    location = storage_location(str(journal))
    app = optuna_dashboard.wsgi(location)
    (study,) = get(app, "/api/studies")["study_summaries"]
    assert study["study_name"] == "cal_cce-live"
    detail = get(app, f"/api/studies/{study['study_id']}")
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Running", "Waiting"]
    assert detail["trials"][0]["values"] == [0.42]
    # the loader wsgi() and run_server() use sees the heartbeats as the trials' system attributes
    loaded = optuna.load_study(study_name="cal_cce-live", storage=get_storage(location))
    assert [HEARTBEAT_ATTR in t.system_attrs for t in loaded.get_trials()] == [True, True, False]


def test_an_empty_storage_means_our_journal_and_a_missing_one_is_named():
    with pytest.raises(FileNotFoundError, match=f"no sweep journal at {default_journal_path()} yet"):
        storage_location("")
    write_journal(default_journal_path())
    assert storage_location("") == str(default_journal_path())
    assert storage_location("postgresql://u:p@127.0.0.1:5432/optuna") == "postgresql://u:p@127.0.0.1:5432/optuna"


def serve_with_make(storage: str) -> tuple[list, str]:
    """The studies `make sweep-dashboard SWEEP_STORAGE=storage` serves on 127.0.0.1, and its output."""
    port = free_port()
    recipe = subprocess.run(["make", "-s", "-n", "--no-print-directory", "sweep-dashboard",
                             f"SWEEP_STORAGE={storage}", f"DASHBOARD_PORT={port}"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    (command,) = [line for line in recipe.splitlines() if "multiloss.team.dashboard" in line]
    dashboard = subprocess.Popen(shlex.split(command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
                    break
            except (urllib.error.URLError, OSError):
                assert dashboard.poll() is None, dashboard.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "optuna-dashboard never answered"
                time.sleep(0.3)
    finally:
        dashboard.terminate()
        out = dashboard.communicate(timeout=30)[0]
    assert f" at http://127.0.0.1:{port} " in out
    return studies, out


def test_make_sweep_dashboard_serves_the_journal_on_loopback(tmp_path):
    journal = tmp_path / "journal.log"
    write_journal(journal)
    studies, out = serve_with_make(str(journal))
    assert [s["study_name"] for s in studies] == ["cal_cce-live"]
    assert f"sweep dashboard: {journal} at http://127.0.0.1:" in out


def test_make_sweep_dashboard_opens_a_database_no_sweep_has_used_yet(team):
    """A new team stack's Optuna database has no tables until a worker creates them; the dashboard
    (whose loader does not create them) must still start on it."""
    team.stack.postgres.create_database("optuna_unused", owner=DB_ROLE)
    try:
        studies, out = serve_with_make(team.stack.database_url("optuna_unused"))
    finally:                           # the stack's databases are what test_team_server expects again
        with team.stack.postgres.connect() as connection:
            connection.execute("DROP DATABASE optuna_unused WITH (FORCE)")
    assert studies == [] and team.stack.secrets()["db_password"] not in out
