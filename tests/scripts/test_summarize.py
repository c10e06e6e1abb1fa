"""scripts/summarize.py on hand-made run folders: means, the best -> last fallback mark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import summarize  # noqa: E402


def fake_run(root: Path, name: str, seed: int, last: float, best: float | None) -> None:
    run = root / name
    run.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "seed": seed,
                "model": {"name": "sdc", "nbit": 16},
                "dataset": {"name": "digits", "crop": 8},
                "backbone": {"_target_": "x.Identity"},
            }
        ),
        run / "config.yaml",
    )
    metrics = {
        "main_metric": "mAP@100",
        "train_seconds": 1.0,
        "last": {"epoch": 5, "mAP@100": last, "mAP_tie@100": last},
        "best": None if best is None else {"epoch": 3, "mAP@100": best, "mAP_tie@100": best},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_best_table_marks_runs_that_fall_back_to_last(tmp_path):
    fake_run(tmp_path, "a", 1, last=0.50, best=0.60)
    fake_run(tmp_path, "b", 2, last=0.70, best=None)  # select_on=last or no evaluation
    text = summarize.main([str(tmp_path), "--checkpoint", "best"])
    row = next(line for line in text.splitlines() if line.startswith("| digits"))
    assert "0.6500 ± 0.0707 †" in row  # mean of best 0.60 and last 0.70, marked
    assert summarize.FALLBACK_NOTE in text
    pivot = summarize.main([str(tmp_path), "--checkpoint", "best", "--pivot"])
    assert "65.0 ± 7.1 †" in pivot and summarize.FALLBACK_NOTE in pivot


def test_no_mark_when_every_run_has_its_best(tmp_path):
    fake_run(tmp_path, "a", 1, last=0.50, best=0.60)
    fake_run(tmp_path, "b", 2, last=0.70, best=0.80)
    text = summarize.main([str(tmp_path), "--checkpoint", "best"])
    assert "0.7000 ± 0.1414 |" in text and "†" not in text
    last = summarize.main([str(tmp_path)])
    assert "0.6000 ± 0.1414 |" in last and "†" not in last
