"""Where runs, artifacts and registered models live: the only module that knows these paths.

Default store: ``sqlite:///<repo>/mlruns/mlflow.db`` with artifacts under
``<repo>/mlruns/artifacts/<experiment>``, unless the user set ``MLFLOW_TRACKING_URI`` (a team server,
another database), which always wins. ``<repo>`` is ``$MULTILOSS_HOME`` if set, else the checkout
this package was loaded from, else the working directory.

    python -m multiloss.tracking            # print the tracking URI
    python -m multiloss.tracking init       # create the store and the experiments, print their UI addresses
    python -m multiloss.tracking ui-command # the `mlflow ui` command line for this store (the address: stderr)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import mlflow

from multiloss import names
from multiloss.paths import store_dir
from multiloss.tracking import background


def default_tracking_uri() -> str:
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def artifact_root() -> Path:
    return store_dir() / "artifacts"


def uses_default_store() -> bool:
    """True when runs go to our sqlite store, whether by default or because a `make` target
    exported its URI."""
    return tracking_uri() == default_tracking_uri()


def tracking_uri() -> str:
    """The URI every stage logs to: the user's ``MLFLOW_TRACKING_URI`` or our sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def configure() -> str:
    """Point MLflow at :func:`tracking_uri` (creating the store folder if it is ours)."""
    uri = tracking_uri()
    if uses_default_store():
        artifact_root().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def mark_model_training(experiment) -> None:
    """Tag ``experiment`` (an Experiment) with our kind, so the UI opens it on its runs, not on
    GenAI traces; a kind someone chose (not one the UI inferred) is kept."""
    kind = experiment.tags.get(names.EXPERIMENT_KIND_TAG)
    if kind is None or kind in names.INFERRED_EXPERIMENT_KINDS:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, names.EXPERIMENT_KIND_TAG,
                                                 names.EXPERIMENT_KIND)


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created (artifacts under our store, tagged with our kind) if
    missing; an existing one gets the kind tag too (:func:`mark_model_training`)."""
    configure()
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        mark_model_training(found)
        return found.experiment_id
    location = (artifact_root() / name).as_uri() if uses_default_store() else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={names.EXPERIMENT_KIND_TAG: names.EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:
        # Another process created it between our look-up and create: use theirs.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        mark_model_training(found)
        return found.experiment_id


def ensure_experiments() -> dict[str, str]:
    return {name: ensure_experiment(name) for name in names.EXPERIMENTS}


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing): a reused
    pid has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def boot_id() -> str:
    """This machine's boot id ('' where /proc has none): with the host name, which machine a pid is of."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_tags(pid: int | None = None) -> dict[str, str]:
    """What identifies the process that runs a run (host, boot id, pid, its start time): a clean-up
    can then tell a run whose process died unannounced from a live one."""
    pid = os.getpid() if pid is None else pid
    return {names.HOST_TAG: socket.gethostname(), names.BOOT_TAG: boot_id(), names.PID_TAG: str(pid),
            names.PID_START_TAG: process_start(pid)}


def node_id() -> str:
    """``host/main``, ``host/worker 1``: whose system metrics these are, when a pipeline's workers
    on one machine log theirs beside each other (the metrics are then ``system/<node id>/...``)."""
    import multiprocessing

    name = multiprocessing.current_process().name
    return f"{socket.gethostname()}/{'main' if name == 'MainProcess' else name}"


@contextlib.contextmanager
def stage_run(experiment: str, run_name: str | None = None):
    """The MLflow run of one stage.

    Launched by ``mlflow run``, the launcher has already created the run (``MLFLOW_RUN_ID``) in the
    experiment it was told; we log into that one. Run directly, we start a run in ``experiment``.
    Either way the run carries its process, so a clean-up can end it if the process dies unannounced.
    With ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true`` (``main``'s ``system_metrics``) the run also
    logs the machine's CPU, memory and GPU use, under this process's node id (:func:`node_id`).
    """
    configure()
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("true", "1"):
        mlflow.system_metrics.set_system_metrics_node_id(node_id())
    if os.environ.get("MLFLOW_RUN_ID"):
        with mlflow.start_run() as run, background.deferring():
            mlflow.set_tags(process_tags())
            # the launcher may have made the experiment (``mlflow run --experiment-name``)
            mark_model_training(mlflow.MlflowClient().get_experiment(run.info.experiment_id))
            yield run
        return
    experiment_id = ensure_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run, background.deferring():
        mlflow.set_tags(process_tags())
        yield run


def log_params(params: dict[str, object]) -> None:
    """Log a stage's parameters into the active run without clashing with ``mlflow run``.

    The launcher has already logged the MLproject parameters as the user typed them; a stage logs
    what it resolved them to. Equal values are skipped; a different spelling of a logged key (a
    relative path made absolute, an empty value made the loss's default) is kept beside it as
    ``resolved.<key>``, since MLflow refuses to change a logged parameter.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_params needs an active run (use tracking.stage_run)")
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    fresh = {}
    for key, value in params.items():
        text = str(value)
        if key not in existing:
            fresh[key] = text
        elif existing[key] != text:
            fresh[f"resolved.{key}"] = text
    if fresh:
        mlflow.log_params(fresh)


# Where ``mlflow ui`` (ui_command) serves our store; multiloss.tracking.urls links to it.
UI_HOST, UI_PORT = "127.0.0.1", 5000


def ui_command() -> str:
    return (f"mlflow ui --backend-store-uri {tracking_uri()} "
            f"--default-artifact-root {artifact_root().as_uri()} --host {UI_HOST} --port {UI_PORT}")


def main(argv: list[str]) -> int:
    # urls reads this module's URI and UI address: imported here, not at the top
    from multiloss.tracking import urls

    command = argv[0] if argv else "uri"
    if command == "uri":
        print(tracking_uri())
    elif command == "init":
        for name, experiment_id in ensure_experiments().items():
            print(f"experiment {name!r}: id {experiment_id}, {urls.ui_url(experiment_id)}")
        print(f"tracking URI: {tracking_uri()}")
    elif command == "ui-command":
        # stdout is the command (`make ui` runs it); the address to open goes to stderr
        pipeline = ensure_experiment(names.PIPELINE_EXPERIMENT)
        print(f"MLflow UI: open {urls.ui_url(pipeline)} (experiment {names.PIPELINE_EXPERIMENT!r}; "
              "`python -m multiloss.tracking init` lists every experiment's address)", file=sys.stderr)
        print(ui_command())
    else:
        print(f"unknown command {command!r}; use uri, init or ui-command", file=sys.stderr)
        return 2
    return 0

