"""Build a trainer with the feature cache on (no training) and print what it extracted.

    python tests/helpers/build_cached.py ROOT NAME [KILL_AFTER_BATCHES [SECONDS_PER_BATCH]]

Data (and its feature cache) in ROOT/data, the run folder ROOT/NAME.
Prints one JSON line: {"images": images through the Tiny backbone, "sum": checksum of the
database features}. With KILL_AFTER_BATCHES the process SIGKILLs itself at that batch.
Used by the test of processes racing for one cache.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import datasets.feature_cache as feature_cache  # noqa: E402
from conftest import compose_run  # noqa: E402
from models.backbone.simple import Tiny  # noqa: E402

feature_cache.SHARD = 256


def main() -> None:
    root, name = Path(sys.argv[1]), sys.argv[2]
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 and int(sys.argv[3]) > 0 else None
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    counter = {"images": 0, "batches": 0}
    original = Tiny.forward

    def forward(self, images):
        counter["batches"] += 1
        if kill_after is not None and counter["batches"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        counter["images"] += images.shape[0]
        time.sleep(pause)
        return original(self, images)

    Tiny.forward = forward
    from utils.compose.experiment import build_trainer

    cfg = compose_run(
        ["backbone=tiny", "feature_cache=on", "eval_batch_size=64", "dataset.source.train=20"],
        root,
        name,
    )
    trainer = build_trainer(cfg, root / name)
    checksum = float(trainer.data.database.features["eval"].astype("float64").sum())
    print(json.dumps({"images": counter["images"], "sum": checksum}))


if __name__ == "__main__":
    main()
