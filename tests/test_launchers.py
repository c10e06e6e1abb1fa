"""Threads chosen by the engine, and sweeps through Hydra's joblib and submitit launchers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import compose, compose_run, run_cli
from utils import resources
from utils.errors import ConfigError

SWEEP = ["-m", "model.nbit=8,16", "epochs=1", "dataset.source.train=20", "progress=false"]


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_threads_follow_the_work(tmp_path, keep_threads, monkeypatch):
    from utils.compose.experiment import build_trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "available_cores", lambda: 6)
    # a head on precomputed features (digits through the identity backbone): one thread
    build_trainer(compose_run(["dataset.source.train=20"], tmp_path, "a"), tmp_path / "a")
    assert torch.get_num_threads() == 1
    # a live backbone: every core of the job
    build_trainer(
        compose_run(["dataset.source.train=20", "backbone=tiny"], tmp_path, "b"), tmp_path / "b"
    )
    assert torch.get_num_threads() == 6
    # a cached backbone: all cores while extracting, then one for the head
    seen = []
    import datasets.feature_cache as fc

    original = fc.extract
    monkeypatch.setattr(
        fc, "extract", lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k)
    )
    build_trainer(
        compose_run(
            ["dataset.source.train=20", "backbone=tiny", "feature_cache=on"], tmp_path, "c"
        ),
        tmp_path / "c",
    )
    assert seen and set(seen) == {6} and torch.get_num_threads() == 1
    # an explicit number always wins
    build_trainer(
        compose_run(["dataset.source.train=20", "threads=3"], tmp_path, "d"), tmp_path / "d"
    )
    assert torch.get_num_threads() == 3


def test_auto_threads_share_the_cores_of_a_parallel_sweep(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "available_cores", lambda: 8)
    monkeypatch.setattr(resources, "parallel_jobs", lambda: 3)
    assert resources.choose_threads("auto", head_only=False)[0] == 2
    assert resources.choose_threads("auto", head_only=True)[0] == 1
    assert resources.choose_threads(5, head_only=True)[0] == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resources.choose_threads("auto", head_only=False) == (
        1,
        "auto, capped by OMP_NUM_THREADS",
    )
    for bad in (0, -2, "many"):
        with pytest.raises(ConfigError, match="threads must be auto or a positive integer"):
            resources.choose_threads(bad, head_only=False)


def test_auto_workers_follow_the_work(monkeypatch):
    monkeypatch.setattr(resources, "available_cores", lambda: 8)
    monkeypatch.setattr(resources, "parallel_jobs", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    # rows of a tensor in memory: no worker process
    assert resources.choose_workers("auto", head_only=True) == 0
    # images to decode: every core but the one that trains, at most 8
    assert resources.choose_workers("auto", head_only=False) == 7
    monkeypatch.setattr(resources, "available_cores", lambda: 32)
    assert resources.choose_workers("auto", head_only=False) == 8
    # a job's share of the cores: 3 parallel jobs, or 2 torchrun processes on the machine
    monkeypatch.setattr(resources, "available_cores", lambda: 8)
    monkeypatch.setattr(resources, "parallel_jobs", lambda: 3)
    assert resources.choose_workers("auto", head_only=False) == 1
    monkeypatch.setattr(resources, "parallel_jobs", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resources.choose_workers("auto", head_only=False) == 3
    assert resources.choose_threads("auto", head_only=False) == (
        4,
        "auto: 8 cores / 2 parallel jobs",
    )
    # an explicit number always wins; nonsense is one sentence
    assert resources.choose_workers(5, head_only=True) == 5
    assert resources.choose_workers("0", head_only=False) == 0
    for bad in (-1, "many"):
        with pytest.raises(ConfigError, match="num_workers must be auto or a non-negative"):
            resources.choose_workers(bad, head_only=False)


def test_a_head_on_precomputed_features_loads_without_worker_processes(tmp_path):
    from utils.compose.experiment import build_trainer

    auto = ["dataset.source.train=20", "num_workers=auto"]
    head = build_trainer(compose_run(auto, tmp_path, "a"), tmp_path / "a")
    assert head.model.head_only and head.num_workers == 0
    assert head.train_loader(0).num_workers == 0
    live = build_trainer(
        compose_run([*auto, "backbone=tiny", "feature_cache=off"], tmp_path, "b"),
        tmp_path / "b",
    )
    assert not live.model.head_only
    assert live.num_workers == resources.choose_workers("auto", head_only=False)


def _runs(sweep):
    return sorted(p.parent for p in sweep.rglob("metrics.json"))


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_side_by_side_with_a_share_of_the_cores(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "main_v2.py",
        [
            *SWEEP,
            "backbone=tiny",
            "feature_cache=off",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=600,
    )
    runs = _runs(sweep)
    assert [r.name for r in runs] == ["0_digits_sdc8_seed42", "1_digits_sdc16_seed42"]
    for run in runs:
        log = (run / "main_v2.log").read_text()
        cores = resources.available_cores()
        assert f"torch threads: {max(1, cores // 2)} (auto: {cores} cores / 2 parallel jobs)" in log
    table = run_cli("scripts/summarize.py", [str(sweep)], tmp_path).stdout
    assert re.search(r"\| digits \| sdc \| 8 \| 42 \|", table)
    assert re.search(r"\| digits \| sdc \| 16 \| 42 \|", table)


@pytest.mark.slow
def test_submitit_local_sweep_goes_through_submitit(tmp_path):
    # the jobs start in their own processes, from tmp_path: the project must be importable there
    sweep = tmp_path / "sweep"
    run_cli(
        "main_v2.py",
        [
            *SWEEP,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            f"data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=600,
    )
    runs = _runs(sweep)
    assert len(runs) == 2
    assert list((sweep / ".submitit").rglob("*_result.pkl")), "results went through submitit"
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["last"]["epoch"] == 1
    table = run_cli("scripts/summarize.py", [str(sweep)], tmp_path).stdout
    assert table.count("| digits | sdc |") == 2


def test_slurm_launcher_config_composes():
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.timeout_min == 240 and launcher.tasks_per_node == 1
