"""Run main_v2.py and SIGKILL it at a chosen point (the tests of killed runs use it).

    python tests/helpers/kill_at.py POINT N [main_v2 overrides...]

POINT: none (run to the end) | backward (the N-th loss.backward(), mid-epoch) | report (the
N-th retrieval report, during an evaluation) | last_pt (the N-th write of checkpoints/last.pt,
after half of its bytes) | backbone (the N-th batch through the Tiny backbone, during feature
extraction). Feature-cache shards are 256 items here so that a small extraction has several.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import datasets.feature_cache as feature_cache  # noqa: E402
import models.trainers.evaluation as evaluation  # noqa: E402
from models.backbone.simple import Tiny  # noqa: E402

feature_cache.SHARD = 256


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def counting(original, n: int, before=None):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if before is not None:
                before(*args, **kwargs)
            die()
        return original(*args, **kwargs)

    return wrapper


def main() -> None:
    point, n = sys.argv[1], int(sys.argv[2])
    sys.argv = [str(REPO / "main_v2.py"), *sys.argv[3:]]
    if point == "backward":
        torch.Tensor.backward = counting(torch.Tensor.backward, n)
    elif point == "report":
        evaluation.retrieval_report = counting(evaluation.retrieval_report, n)
    elif point == "last_pt":
        original_save = torch.save
        calls = {"n": 0}

        def save(obj, handle, *args, **kwargs):
            if "last.pt" in str(getattr(handle, "name", "")):
                calls["n"] += 1
                if calls["n"] == n:
                    original_save(obj, handle, *args, **kwargs)
                    size = handle.tell()
                    handle.seek(size // 2)
                    handle.truncate()
                    handle.flush()
                    die()
            return original_save(obj, handle, *args, **kwargs)

        torch.save = save
    elif point == "backbone":
        Tiny.forward = counting(Tiny.forward, n)
    elif point != "none":
        raise SystemExit(f"unknown point {point}")
    import runpy

    runpy.run_path(str(REPO / "main_v2.py"), run_name="__main__")


if __name__ == "__main__":
    main()
