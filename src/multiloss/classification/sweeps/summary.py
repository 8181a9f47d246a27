"""A finished sweep's summary on its parent run: the best trial's parameters and value, the table
of all trials, the plots, and the best trial's model registered."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # optuna's matplotlib plots use pyplot; never a display

import mlflow  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from multiloss import names  # noqa: E402
from multiloss.classification.sweeps.storage import RETRY_ATTR, RUN_ID_ATTR  # noqa: E402
from multiloss.classification.sweeps.study import (  # noqa: E402
    CARD_ATTR,
    MODEL_URI_ATTR,
    OBJECTIVE,
    TAGS_ATTR,
    SweepSettings,
)
from multiloss.plots import save_figure  # noqa: E402
from multiloss.report.tables import write_table  # noqa: E402


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, parameters, value, epochs run, retry origin, MLflow run id."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name, **t.params, OBJECTIVE: t.value,
                     "epochs": len(t.intermediate_values), "retry_of": t.system_attrs.get(RETRY_ATTR, ""),
                     "run_id": t.user_attrs.get(RUN_ID_ATTR, "")})
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def _save_plot(axes, path: Path) -> None:
    """Save the figure of optuna's axes (one, or an array of them) and close it: optuna draws
    through pyplot, which keeps every figure until it is closed."""
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    save_figure(figure, path)
    import matplotlib.pyplot as plt
    plt.close(figure)


def sweep_plots(study: optuna.Study, space: dict[str, list[float]], folder: Path) -> list[Path]:
    """Optimization history, per-epoch values (what the pruner saw) and, for two or more
    parameters, parameter importances."""
    from optuna.visualization import matplotlib as plots

    folder = Path(folder)
    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            _save_plot(plots.plot_optimization_history(study), folder / "optimization_history.png")
            written.append(folder / "optimization_history.png")
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            _save_plot(plots.plot_intermediate_values(study), folder / "intermediate_values.png")
            written.append(folder / "intermediate_values.png")
        varied = [name for name in space if len({t.params.get(name) for t in complete}) > 1]
        if len(space) >= 2 and len(complete) >= 2 and varied:
            _save_plot(plots.plot_param_importances(study), folder / "param_importances.png")
            written.append(folder / "param_importances.png")
    return written


def summarise(study: optuna.Study, settings: SweepSettings, parent_run_id: str) -> dict[str, object]:
    """Log onto the parent run: best parameters and value (tags ``best.*``, metric ``best_value``),
    counts, epochs spent, the table of all trials (CSV and Markdown) and the plots."""
    client = mlflow.MlflowClient()
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    epochs = sum(len(t.intermediate_values) for t in trials)
    summary: dict[str, object] = {**{f"n_{k}": v for k, v in counts.items()}, "epochs_spent": epochs}
    tags = {f"sweep.{k}": str(v) for k, v in summary.items()}
    if counts["complete"]:
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                        "best_run_id": best.user_attrs.get(RUN_ID_ATTR, "")})
        tags.update({"best.trial": str(best.number), "best.value": f"{best.value:.6g}",
                     "best.run_id": summary["best_run_id"], "best.objective": OBJECTIVE,
                     **{f"best.{name}": str(v) for name, v in best.params.items()}})
        client.log_metric(parent_run_id, "best_value", best.value)
    client.log_metric(parent_run_id, "epochs_spent", epochs)
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        table = trials_table(study)
        write_table(table, tmp, "trials")
        sweep_plots(study, settings.space, Path(tmp))
        client.log_artifacts(parent_run_id, tmp, artifact_path="sweep")
    print(f"sweep: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed; "
          f"{epochs} epochs" + (f"; best trial {summary['best_trial']} {OBJECTIVE} {summary['best_value']:.4f} "
                                f"{summary['best_params']}" if counts["complete"] else ""), flush=True)
    return summary


def register_best(study: optuna.Study, parent_run_id: str) -> str | None:
    """Register the best trial's model as a ``cxr-classifier`` version tagged with the sweep, study
    and trial (once: a version already tagged with this study and trial is returned as is)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    model_uri = best.user_attrs.get(MODEL_URI_ATTR)
    if not model_uri:
        return None
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name='{names.CLASSIFIER_MODEL}'"):
        if version.tags.get("sweep_study") == study.study_name and version.tags.get("sweep_trial") == str(best.number):
            return str(version.version)
    from multiloss.classification.train import register_logged

    version = register_logged(model_uri, {**best.user_attrs.get(TAGS_ATTR, {}), "sweep_study": study.study_name,
                                          "sweep_trial": best.number, "sweep_run_id": parent_run_id,
                                          "sweep_objective": OBJECTIVE, "sweep_value": f"{best.value:.6g}"},
                             card=best.user_attrs.get(CARD_ATTR))
    print(f"sweep: registered {names.CLASSIFIER_MODEL} version {version.version} (trial {best.number})", flush=True)
    return str(version.version)
