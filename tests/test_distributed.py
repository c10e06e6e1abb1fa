"""One run on two processes (torchrun, gloo on the CPU) trains the model one process trains with
the same global batch; resume works under torchrun; a global batch that does not split evenly
is one sentence.

Tolerance: the two runs add the same numbers in another order (each rank's gradient is a sum
over its half of the batch, then the halves are summed across ranks), so float32 results agree
to rounding, except where Adam amplifies rounding: the bias of the linear layer in front of the
head's BatchNorm has a gradient that is zero up to rounding (BatchNorm removes any shift), which
Adam rescales to steps of the learning rate, so that bias and the BatchNorm's running mean drift
apart by up to ~1e-3 (measured: 3e-4 after 72 steps; every other weight within 4e-8). In eval
mode that moves the codes by as much, so: weights and codes within 2e-3 absolute, every sign
equal where a code is farther than that from zero, and mAP within 5e-3 at every evaluation
(a code within rounding of zero may flip a bit; measured 1.7e-3).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, val_config

# digits: 1,597 training images, so a global batch of 64 gives 24 steps per epoch
COMMON = [
    "model.nbit=16",
    "batch_size=64",
    "epochs=3",
    "eval_interval=1",
    "progress=false",
    "num_workers=0",
    "threads=1",
]
TOLERANCE = 2e-3
TIMEOUT = 300  # seconds per launch, far above the ~20 s a launch takes here


def launch(
    args: list[str], cwd: Path, processes: int = 1, helper: list[str] | None = None
) -> subprocess.CompletedProcess:
    """main_v2.py (or the kill helper) with ``args``, alone or under torchrun."""
    script = (
        [str(REPO / "tests" / "helpers" / "kill_at.py"), *helper]
        if helper
        else [str(REPO / "main_v2.py")]
    )
    runner = [sys.executable]
    if processes > 1:
        runner += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*runner, *script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def trained(args: list[str], run_dir: Path, processes: int = 1) -> Path:
    result = launch([*args, f"hydra.run.dir={run_dir}"], run_dir.parent, processes)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def database_codes(run_dir: Path) -> np.ndarray:
    """The continuous database codes of last.pt, through val.py's save_codes."""
    from utils.compose.experiment import validate

    validate(val_config(run_dir, "checkpoint=last", "save_codes=true"))
    return np.load(run_dir / "codes" / "last.npz")["database_codes"]


def assert_same_model(one: Path, two: Path) -> None:
    a, b = model_state(one), model_state(two)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=TOLERANCE, rtol=0), (
            key,
            float((a[key] - b[key]).abs().max()),
        )
    codes_a, codes_b = database_codes(one), database_codes(two)
    assert np.abs(codes_a - codes_b).max() <= TOLERANCE
    clear = np.abs(codes_a) > TOLERANCE
    assert np.array_equal(np.sign(codes_a[clear]), np.sign(codes_b[clear]))
    history = [json.loads((d / "test_history.json").read_text()) for d in (one, two)]
    assert [r["epoch"] for r in history[0]] == [r["epoch"] for r in history[1]]
    for row_one, row_two in zip(*history):  # a code within rounding of 0 may flip a bit
        assert row_one["mAP@100"] == pytest.approx(row_two["mAP@100"], abs=5e-3)


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory) -> dict[str, Path]:
    """The one-process reference runs, trained once for the tests of this file."""
    folder = tmp_path_factory.mktemp("one_process")
    return {
        model: trained([f"model={model}", *COMMON, f"data_dir={folder / 'data'}"], folder / model)
        for model in ("sdc", "sdc_simclr", "bihalf")
    }


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sdc", "sdc_simclr", "bihalf"])
def test_two_processes_train_the_model_one_process_trains(tmp_path, model, one_process_runs):
    args = [f"model={model}", *COMMON, f"data_dir={tmp_path / 'data'}"]
    two = trained(args, tmp_path / "two", processes=2)
    assert_same_model(one_process_runs[model], two)
    # only rank 0 wrote: one set of Hydra files, one TensorBoard file
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert (two / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_a_run_killed_in_one_process_resumes_under_torchrun(tmp_path, one_process_runs):
    args = ["model=sdc", *COMMON, f"data_dir={tmp_path / 'data'}"]
    broken = tmp_path / "broken"
    # SIGKILL half-way through the 3rd write of last.pt: epoch 2's checkpoint remains
    result = launch([*args, f"hydra.run.dir={broken}"], tmp_path, helper=["last_pt", "3"])
    assert result.returncode < 0, result.stderr[-2000:]
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    resumed = launch([f"resume={broken}"], tmp_path, processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    assert_same_model(one_process_runs["sdc"], broken)


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_over_the_processes_is_one_sentence(tmp_path):
    result = launch(
        [
            "model=sdc",
            *COMMON,
            "batch_size=63",
            f"data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        processes=2,
    )
    assert result.returncode != 0
    # one sentence per rank (rank 0 plain, the other named, in case it alone failed), then
    # torchrun's own report of the failed processes
    sentence = (
        "error: batch_size=63 is the global batch, split evenly over the 2 processes of "
        "this torchrun launch: use a multiple of 2"
    )
    errors = sorted(line for line in result.stderr.splitlines() if "error:" in line)
    assert errors == [sentence, f"rank 1: {sentence}"]
    # no traceback through the project's code (torchrun's own may pass a venv inside the clone)
    frames = re.findall(r'File "([^"]+)"', result.stderr)
    assert not [f for f in frames if f.startswith(str(REPO)) and "site-packages" not in f]


@pytest.mark.slow
def test_two_processes_extract_the_feature_cache_one_process_extracts(tmp_path):
    # the kill helper with point "none" runs main_v2.py with shards of 256 images (7 shards of
    # the 1,597-image database: each rank extracts some, rank 0 merges); the eager Tiny backbone
    args = [
        "model=sdc",
        *COMMON,
        "epochs=1",
        "backbone=tiny",
        "feature_cache=on",
        "feature_extractor=torch",
        "eval_batch_size=64",
    ]
    for name, processes in (("one", 1), ("two", 2)):
        result = launch(
            [
                *args,
                f"data_dir={tmp_path / name / 'data'}",
                f"hydra.run.dir={tmp_path / name / 'run'}",
            ],
            tmp_path,
            processes,
            helper=["none", "0"],
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (
        sorted((tmp_path / name / "data" / "feature_cache" / "digits").glob("*.npz"))
        for name in ("one", "two")
    )
    assert [p.name for p in one] == [p.name for p in two] and len(one) >= 3
    for a, b in zip(one, two):
        assert np.array_equal(np.load(a)["features"], np.load(b)["features"]), a.name
    assert not list((tmp_path / "two" / "data" / "feature_cache" / "digits").glob("*.partial"))
