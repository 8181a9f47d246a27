"""Run inputs logged by several processes at once: the pipeline's workers log the same splits
into one experiment at the same moment, and MLflow's store refuses the second insert of a new
dataset (a unique constraint) instead of linking the one just written."""

import multiprocessing

import pandas as pd

from multiloss import names


def _log_at(barrier, experiment: str, digest: str, results) -> None:
    import mlflow

    from multiloss.tracking import metadata, store
    store.configure()
    mlflow.set_experiment(experiment)
    frame = pd.DataFrame({"path": [f"x{i}.png" for i in range(20)], "label": ["normal"] * 20})
    with mlflow.start_run() as run:
        barrier.wait(60)                                 # all at once
        try:
            metadata.log_splits({context: frame for context in names.DATASET_CONTEXTS},
                                source="/data/cropped", digest=digest, name="cropped")
            results.put((run.info.run_id, ""))
        except Exception as err:     # noqa: BLE001  (the test reports it)
            results.put((run.info.run_id, f"{type(err).__name__}: {err}"[:300]))


def test_processes_logging_the_same_new_dataset_at_once_all_succeed():
    import mlflow

    from multiloss.tracking import store
    store.configure()
    mlflow.set_experiment("race")                    # exists before the processes start
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    for round_ in range(4):
        barrier = context.Barrier(4)
        processes = [context.Process(target=_log_at, args=(barrier, "race", f"{round_:02d}" + "d" * 34, results))
                     for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        outcomes = [results.get(timeout=10) for _ in processes]
        assert [error for _, error in outcomes if error] == [], f"round {round_}"
        client = mlflow.MlflowClient()
        for run_id, _ in outcomes:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert sorted(i.tags[0].value for i in inputs) == sorted(names.DATASET_CONTEXTS)
