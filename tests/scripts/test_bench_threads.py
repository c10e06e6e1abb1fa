"""Smoke test: scripts/bench_threads.py --quick times every setting quiet and under load."""

import re

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_threads_quick(tmp_path):
    out = run_cli("scripts/bench_threads.py", ["--quick"], tmp_path, timeout=900).stdout
    assert re.search(r"quiet: threads=1 [\d.]+, .*threads=auto [\d.]+ +auto / best fixed = ", out)
    assert re.search(
        r"beside 1 busy process\(es\): threads=\d+ \(old default\) [\d.]+, auto [\d.]+", out
    )
