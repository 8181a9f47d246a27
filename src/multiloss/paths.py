"""Where the project's files are: the checkout (MLproject, the configs in experiments/) and the home
(the data and the tracking store a pipeline writes)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parents[1]
PROJECT_FILE = CHECKOUT / "MLproject"
CONFIG_DIR = CHECKOUT / "experiments"          # profiles, sweep grids, the paper's tables
SWEEP_GRIDS = CONFIG_DIR / "sweep_grids.yaml"
PAPER_RESULTS = CONFIG_DIR / "paper_results.yaml"
HOME_ENV = "MULTILOSS_HOME"


def project_root() -> Path:
    """The home: ``$MULTILOSS_HOME`` if set, else the checkout this package was loaded from, else the
    working directory. Relative data paths and the default store live under it."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).resolve()
    if PROJECT_FILE.is_file():
        return CHECKOUT
    return Path.cwd().resolve()


def store_dir() -> Path:
    return project_root() / "mlruns"
