"""``make sweep-dashboard``: optuna-dashboard, live, on the sweeps' Optuna storage, bound to 127.0.0.1.

    python -m multiloss.team.dashboard [--storage SPEC] [--port 8080]

``SPEC`` is what ``sweep``'s ``storage`` parameter takes (empty: the journal file under the
tracking store; a journal file path; an RDB URL), or ``team`` for the team server's database
(:mod:`multiloss.team.server`). The dashboard opens it with its own loader, which reads our
journal as it is, heartbeats included (they are trial system attributes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multiloss.classification.sweeps.storage import (
    default_journal_path,
    open_rdb_storage,
    redact,
)
from multiloss.team.postgres import HOST

DEFAULT_PORT = 8080
TEAM = "team"


def storage_location(spec: str, team_folder: Path | str | None = None) -> str:
    """The storage string optuna-dashboard takes for ``spec``; a journal that is not there yet is
    refused, naming the path (the dashboard would only say it cannot guess the storage)."""
    if spec == TEAM:
        from multiloss.team.server import TeamServer

        return TeamServer(team_folder).storage_url()
    if "://" in spec:
        return spec
    path = Path(spec) if spec else default_journal_path()
    if not path.is_file():
        raise FileNotFoundError(f"no sweep journal at {path} yet: run a sweep first, or name the storage "
                                f"(SWEEP_STORAGE= a journal file, an RDB URL or {TEAM!r})")
    return str(path.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiloss.team.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="", help="the sweeps' storage: empty (our journal), a path, a URL, 'team'")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--team-folder", help="the team stack's folder, for --storage team")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"sweep dashboard: port must be between 1 and 65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        location = storage_location(args.storage, args.team_folder)
    except FileNotFoundError as err:
        print(f"sweep dashboard: {err}", file=sys.stderr)
        return 2
    import optuna_dashboard

    if "://" in location:
        # optuna-dashboard opens an RDB without creating Optuna's tables: on a database no sweep has
        # used yet (a new team stack) it fails (no relation "version_info"); create them as a worker does
        open_rdb_storage(location, heartbeat=60)
    print(f"sweep dashboard: {redact(location)} at http://{HOST}:{args.port} (Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(location, host=HOST, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
