"""Smoke test: scripts/bench_training.py --quick (backbone=tiny, dataset=digits) runs end to end."""

from conftest import run_cli


def test_bench_training_quick(tmp_path):
    result = run_cli(
        "scripts/bench_training.py",
        ["--quick", "--data-dir", str(tmp_path / "data")],
        tmp_path,
        timeout=600,
    )
    out = result.stdout
    assert "extrapolated" in out and "ratio live / cached" in out
    assert "projected 1 epochs" not in out  # digits trains for the default 100 epochs
    assert (tmp_path / "data" / "feature_cache" / "digits").is_dir()
