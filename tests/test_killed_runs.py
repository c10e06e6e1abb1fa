"""Runs killed with SIGKILL at several points, then resumed with resume=<run>, end with the
same model, checkpoints, histories and metrics as an uninterrupted run (bit-identical on CPU),
and nothing half-written is ever read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

COMMON = [
    "dataset.source.train=20",
    "batch_size=40",
    "model.nbit=16",
    "epochs=4",
    "eval_interval=1",
    "progress=false",
    "num_workers=0",
]  # 5 steps per epoch
TIMES = ("train_seconds", "wall_seconds")


def run(point: str, n: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers" / "kill_at.py"), point, str(n), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def killed(point: str, n: int, args: list[str], cwd: Path) -> None:
    result = run(point, n, args, cwd)
    assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])


def finished(args: list[str], cwd: Path) -> None:
    result = run("none", 0, args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        sa = torch.load(a / "checkpoints" / name, weights_only=True)
        sb = torch.load(b / "checkpoints" / name, weights_only=True)
        assert sa["epoch"] == sb["epoch"], name
        assert sa["model"].keys() == sb["model"].keys()
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"]), name
    for name in ("train_history.json", "test_history.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in TIMES:
        ma.pop(key), mb.pop(key)
    assert ma == mb
    assert not list((b / "checkpoints").glob(".*")), "a temporary file was left behind"


@pytest.mark.slow
def test_killed_mid_epoch_then_in_evaluation_then_in_a_checkpoint_write(tmp_path):
    args = [*COMMON, f"data_dir={tmp_path / 'data'}"]
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    finished([*args, f"hydra.run.dir={reference}"], tmp_path)

    killed("backward", 7, [*args, f"hydra.run.dir={broken}"], tmp_path)  # epoch 2, step 2
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    # resumed at epoch 1; the reports of epoch 2's evaluation are calls 1-2, epoch 3's query
    # report call 3: killed inside the evaluation of epoch 3
    killed("report", 3, [f"resume={broken}"], tmp_path)
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    # resumed at epoch 2: killed half-way through writing last.pt of epoch 3
    killed("last_pt", 1, [f"resume={broken}"], tmp_path)
    assert list((broken / "checkpoints").glob(".last.pt.tmp-*")), "the half-written file"
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    finished([f"resume={broken}"], tmp_path)
    assert_same_run(reference, broken)


@pytest.mark.slow
def test_killed_during_feature_extraction(tmp_path):
    # feature_extractor=torch: the kill point counts batches through the eager Tiny backbone
    args = [
        *COMMON,
        "backbone=tiny",
        "feature_cache=on",
        "eval_batch_size=64",
        "feature_extractor=torch",
    ]
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    finished([*args, f"data_dir={tmp_path / 'data_ref'}", f"hydra.run.dir={reference}"], tmp_path)
    # query: 200 items = batches 1-4; database shard 1 (256 items) = batches 5-8; killed in
    # shard 2, before any checkpoint
    data = tmp_path / "data"
    killed("backbone", 10, [*args, f"data_dir={data}", f"hydra.run.dir={broken}"], tmp_path)
    assert not (broken / "checkpoints" / "last.pt").exists()
    cache = data / "feature_cache" / "digits"
    assert not list(cache.glob("database-*.npz")), "no incomplete entry may look complete"
    assert len(list(next(cache.glob("database-*.partial")).glob("*.npy"))) == 1
    finished([f"resume={broken}"], tmp_path)
    assert_same_run(reference, broken)
