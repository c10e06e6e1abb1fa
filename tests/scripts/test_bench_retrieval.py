"""Smoke test: scripts/bench_retrieval.py runs end to end in --quick mode."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load():
    path = os.path.join(ROOT, "scripts", "bench_retrieval.py")
    spec = importlib.util.spec_from_file_location("bench_retrieval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick(capsys):
    res = _load().main(["--quick"])
    out = capsys.readouterr().out
    for tag in ("[1] CIFAR-10", "[2] NUS-WIDE", "[3] large database", "[4] code lengths"):
        assert tag in out
    assert res["cifar"]["agree"]  # ours and the baseline give the same mAP
    assert 0.0 < res["cifar"]["map_ours"] < 1.0  # realistic codes: neither 0 nor 1
    assert 0.0 < res["nus"]["map"] < 1.0
    assert res["million"]["rss_peak"] > 0
    assert set(res["bits"]) == {16, 24, 32, 64, 128}
