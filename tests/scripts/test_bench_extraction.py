"""scripts/bench_extraction.py --quick runs end to end on a small JPEG folder in CIFAR-10's
layout and reports every installed engine beside eager torch, with features within 1e-4."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, run_cli
from utils.feature_extractor import missing_packages

sys.path.insert(0, str(REPO / "tests" / "datasets"))
from dataset_test_utils import write_image  # noqa: E402


@pytest.mark.slow
def test_bench_extraction_quick(tmp_path):
    for part, count in (("train", 6), ("test", 2)):
        for c, name in enumerate(("airplane", "automobile")):
            for i in range(count):
                write_image(
                    tmp_path / "data" / "cifar10" / part / name / f"{i:04d}.jpg",
                    seed=100 * c + i + (0 if part == "train" else 50),
                )
    out_json = tmp_path / "bench.json"
    result = run_cli(
        "scripts/bench_extraction.py",
        [
            "--quick",
            "--images",
            "16",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(out_json),
        ],
        tmp_path,
        timeout=600,
    )
    assert (
        "16 CIFAR-10 JPEGs" in result.stdout and "decode + resize alone, 1 workers" in result.stdout
    )
    rows = json.loads(out_json.read_text())["results"]
    expected = ["torch"] + [e for e in ("openvino", "onnxruntime") if not missing_packages(e)]
    assert [r["engine"] for r in rows] == expected
    assert rows[0]["ratio"] == 1.0 and rows[0]["max_diff"] == 0.0
    for row in rows:
        assert row["images_per_s"] > 0 and row["max_diff"] <= 1e-4


def test_bench_extraction_without_images_is_one_sentence(tmp_path):
    result = run_cli(
        "scripts/bench_extraction.py",
        ["--quick", "--data-dir", str(tmp_path)],
        tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no CIFAR-10 JPEGs under")
