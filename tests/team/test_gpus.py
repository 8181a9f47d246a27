"""One GPU per worker, tested without a GPU: the devices are given, as CUDA_VISIBLE_DEVICES would."""

import os

import pytest

from multiloss.pipeline.workers import Worker
from multiloss.team import gpus
from multiloss.team.gpus import (
    GROWTH_ENV,
    VISIBLE_ENV,
    visible_gpus,
    worker_environments,
)

pytestmark = pytest.mark.team


def test_each_worker_takes_one_gpu_with_memory_growth_and_one_process_keeps_them_all():
    assert worker_environments(2, ["0", "1"]) == [{VISIBLE_ENV: "0", GROWTH_ENV: "true"},
                                                 {VISIBLE_ENV: "1", GROWTH_ENV: "true"}]
    assert worker_environments(2, ["3", "1", "2"]) == [{VISIBLE_ENV: "3", GROWTH_ENV: "true"},
                                                      {VISIBLE_ENV: "1", GROWTH_ENV: "true"}]
    assert worker_environments(1, ["0", "1"]) == [{}]          # strategy=mirrored still sees every GPU
    assert worker_environments(2, []) == [{}, {}]              # no GPU: nothing changes
    with pytest.raises(ValueError, match=r"workers=3 but 2 GPU\(s\) are visible \(0, 1\): .*at most 2"):
        worker_environments(3, ["0", "1"])
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        worker_environments(0, ["0"])


def test_the_visible_gpus_are_cudas_own_reading_of_its_variable(tmp_path, monkeypatch):
    assert visible_gpus({VISIBLE_ENV: "2,3"}) == ["2", "3"]
    assert visible_gpus({VISIBLE_ENV: "GPU-5f3e,MIG-1"}) == ["GPU-5f3e", "MIG-1"]
    assert visible_gpus({VISIBLE_ENV: "0,-1,1"}) == ["0"]      # CUDA stops at the first negative id
    assert visible_gpus({VISIBLE_ENV: "-1"}) == visible_gpus({VISIBLE_ENV: ""}) == []
    monkeypatch.setenv("PATH", str(tmp_path))                  # no nvidia-smi: no driver, no GPU
    assert visible_gpus({}) == []


def read_gpu_variables() -> tuple:
    return os.environ.get(VISIBLE_ENV), os.environ.get(GROWTH_ENV)


def test_a_spawned_worker_starts_with_its_gpu_and_this_process_keeps_its_own(monkeypatch):
    monkeypatch.setenv(VISIBLE_ENV, "0,1")
    monkeypatch.delenv(GROWTH_ENV, raising=False)
    worker = Worker(1, env=worker_environments(2, visible_gpus())[1])
    try:
        assert worker.call(read_gpu_variables) == ("1", "true")
    finally:
        worker.close()
    assert read_gpu_variables() == ("0,1", None)


def test_the_cli_prints_one_sweep_workers_variables(monkeypatch, capsys):
    monkeypatch.setenv(VISIBLE_ENV, "4,5")
    assert gpus.main(["--workers", "2", "--worker", "1"]) == 0
    assert capsys.readouterr().out == f"{VISIBLE_ENV}=5 {GROWTH_ENV}=true\n"
    assert gpus.main(["--workers", "3", "--worker", "0"]) == 2
    assert "gpus: workers=3 but 2 GPU(s) are visible" in capsys.readouterr().err
    assert gpus.main(["--workers", "2", "--worker", "2"]) == 2
    assert "worker must be between 0 and workers - 1 = 1, got 2" in capsys.readouterr().err
    monkeypatch.setenv(VISIBLE_ENV, "-1")
    assert gpus.main(["--workers", "2", "--worker", "1"]) == 0 and capsys.readouterr().out == "\n"
