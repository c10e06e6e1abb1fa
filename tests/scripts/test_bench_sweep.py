"""Smoke test: scripts/bench_sweep.py --quick runs both sweeps and compares the same runs."""

import re

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_sweep_quick(tmp_path):
    out = run_cli(
        "scripts/bench_sweep.py",
        ["--quick", "--logdir", str(tmp_path / "b")],
        tmp_path,
        timeout=900,
    ).stdout
    assert "sweep: 2 runs" in out
    assert re.search(r"sequential, threads=\d+ num_workers=\d+ \(old defaults\) : +\d+\.\d s", out)
    assert re.search(r"sequential, threads=auto num_workers=auto +: +\d+\.\d s", out)
    assert re.search(r"joblib n_jobs=\d+, threads=auto num_workers=auto +: +\d+\.\d s", out)
    assert re.search(r"ratio joblib / sequential \(old defaults\): \d+\.\d\dx", out)
    for sweep in ("sequential", "sequential_auto", "joblib"):
        assert len(list((tmp_path / "b" / sweep).rglob("metrics.json"))) == 2
    assert re.search(r"one run, 1 process : +\d+\.\d s", out)
    assert re.search(r"torchrun 2 CPU processes \(gloo\): +\d+\.\d s", out)
    assert (tmp_path / "b" / "torchrun_2" / "metrics.json").is_file()
