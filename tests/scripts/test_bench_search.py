"""Smoke test: scripts/bench_search.py runs end to end in --quick mode, and its checks hold."""

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss-cpu is not installed (requirements.txt)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load():
    path = os.path.join(ROOT, "scripts", "bench_search.py")
    spec = importlib.util.spec_from_file_location("bench_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick(capsys, tmp_path):
    (result,) = _load().main(["--quick", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "IndexBinaryFlat / NumPy popcount" in out
    rows = {r["index"]: r for r in result["rows"]}
    assert rows["numpy popcount"]["same_as_flat"]  # the baseline and faiss agree exactly
    assert rows["IndexBinaryFlat"]["bytes_per_code"] == pytest.approx(8.0, abs=0.01)
    ivf = [r for r in result["rows"] if r["index"].startswith("IndexBinaryIVF")]
    hnsw = [r for r in result["rows"] if r["index"].startswith("IndexBinaryHNSW")]
    assert len(ivf) == 2 and len(hnsw) == 2
    for row in ivf + hnsw:
        # a query with the exact k-th distance has all k results within it: recall >= kth
        assert 0.0 <= row["kth"] <= row["recall"] <= 1.0
        assert row["qps_batch"] > 0 and row["build_s"] >= 0
    # IVF: codes + an 8-byte id each; more lists probed never lose recall on the same index
    assert all(15.9 < r["bytes_per_code"] < 17 for r in ivf)
    assert ivf[1]["kth"] >= ivf[0]["kth"]
    assert (tmp_path / "rows.json").is_file()


def test_clustered_codes_are_clustered():
    bench = _load()
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    codes = bench.clustered_codes(2000, 64, protos, 3, rng)
    from utils.code_index import popcount_distances

    nearest = popcount_distances(codes, protos).min(1)
    assert nearest.mean() == pytest.approx(8, abs=0.3)  # flips with p = 1/8: 8 bits of 64
    assert popcount_distances(protos, protos)[np.triu_indices(4, 1)].min() > 16


def test_numpy_baseline_ranks_by_distance_then_index():
    bench = _load()
    db = np.array([[0b1111], [0b0000], [0b0001], [0b1000], [0b0000]], dtype=np.uint8)
    D, I = bench.numpy_search(db, np.array([[0b0000]], dtype=np.uint8), 3)
    assert I.tolist() == [[1, 4, 2]] and D.tolist() == [[0, 0, 1]]
