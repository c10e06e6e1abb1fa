"""What the feature cache's view bank costs in mAP: one two-view method trained side by side with
fresh augmentation through the live frozen backbone and from banks of V cached views per image.

    python scripts/bench_view_bank.py [--views 2 4 8] [--no-live] [--data-dir DIR] [OVERRIDES...]
    python scripts/bench_view_bank.py --quick     # smoke test: backbone=tiny, dataset=digits

Default setting: model=cibhash model.nbit=64 dataset=cifar10 backbone=efficientnet_lite0 seed=1;
Hydra overrides (epochs=10, dataset.resize=96 ...) apply to every setting. Every setting trains
the same head with the same seed and schedule; only where the two views of a training image come
from differs: ``V=<n>`` draws two different views of the n cached ones (docs/feature_cache.md),
``fresh`` augments anew at every step and runs the live backbone (the exact method; the slow
one). All are evaluated the same way: query and database features from the cache, which equal
the live frozen backbone's (deterministic eval transform; tests/datasets/test_feature_cache.py),
so the live run does not pay for pushing 60,000 database images through the backbone again.
Printed: mAP@R and tie-aware mAP@R of the final model per setting, the difference to ``fresh``,
and the training seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_training import compose, run_in_scratch  # noqa: E402


def train_head(trainer, cfg) -> float:
    """Run the engine's epochs (no evaluation, no checkpoints); returns the seconds spent."""
    from utils.compose import build

    trainer.optimizer = build.build_optimizer(cfg, trainer.model)
    trainer.scheduler = build.build_scheduler(cfg, trainer.optimizer)
    started = time.perf_counter()
    for epoch in range(trainer.epochs):
        trainer.train_one_epoch(epoch)
        trainer.scheduler.step()
    return time.perf_counter() - started


def scores(trainer) -> tuple[float, float]:
    metrics = trainer.evaluate()
    R = trainer.settings.R
    return metrics[f"mAP@{R}"], metrics[f"mAP_tie@{R}"]


def bench(overrides: list[str], logdir: Path, views: list[int], live: bool) -> list[dict]:
    from models.trainers.base import load_model_state
    from utils.compose.experiment import build_trainer

    rows: list[dict] = []

    def show(row: dict) -> None:
        rows.append(row)
        print(
            f"{row['setting']:>6}: mAP {row['map']:.4f}  tie-aware {row['map_tie']:.4f}  "
            f"train {row['seconds']:.0f} s",
            flush=True,
        )

    evaluator = None
    for n in views:
        cfg = compose(
            [
                *overrides,
                "feature_cache=on",
                f"feature_cache_views={n}",
                f"logdir={logdir / f'V{n}'}",
            ]
        )
        trainer = build_trainer(cfg, logdir / f"V{n}")
        seconds = train_head(trainer, cfg)
        show(
            {
                "setting": f"V={n}",
                "seconds": seconds,
                **dict(zip(("map", "map_tie"), scores(trainer))),
            }
        )
        evaluator = trainer
    if live:
        cfg = compose([*overrides, "feature_cache=off", f"logdir={logdir / 'fresh'}"])
        trainer = build_trainer(cfg, logdir / "fresh")
        seconds = train_head(trainer, cfg)
        if evaluator is None:  # evaluate from the cache all the same (any V: eval features only)
            evaluator = build_trainer(
                compose([*overrides, "feature_cache=on", f"logdir={logdir / 'eval'}"]),
                logdir / "eval",
            )
        load_model_state(evaluator.model, trainer.model.trainable_state_dict())
        show(
            {
                "setting": "fresh",
                "seconds": seconds,
                **dict(zip(("map", "map_tie"), scores(evaluator))),
            }
        )
    return rows


def report(rows: list[dict], setting: str) -> str:
    fresh = next((r for r in rows if r["setting"] == "fresh"), None)
    lines = [
        f"setting: {setting}",
        "| views | mAP | tie-aware mAP | mAP - fresh | train seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "–" if fresh is None else f"{r['map'] - fresh['map']:+.4f}"
        lines.append(
            f"| {r['setting']} | {r['map']:.4f} | {r['map_tie']:.4f} | {delta} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: backbone=tiny dataset=digits, 1 epoch, V=2 and fresh",
    )
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--logdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--views",
        type=int,
        nargs="*",
        default=[2, 4, 8],
        help="bank sizes V to compare (each >= 2)",
    )
    parser.add_argument("--no-live", action="store_true", help="skip the fresh-augmentation run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every setting")
    args = parser.parse_args(argv)
    if args.quick:
        base = [
            "model=cibhash",
            "backbone=tiny",
            "dataset=digits",
            "model.nbit=16",
            "num_workers=0",
            "epochs=1",
            "dataset.source.train=20",
            "batch_size=32",
        ]
        args.views = [2]
    else:
        base = [
            "model=cibhash",
            "model.nbit=64",
            "dataset=cifar10",
            "backbone=efficientnet_lite0",
            "seed=1",
        ]
    overrides = [*base, f"data_dir={args.data_dir}", "progress=false", *args.overrides]
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # extraction times, cache use
    rows = run_in_scratch(
        args.logdir, lambda folder: bench(overrides, folder, sorted(args.views), not args.no_live)
    )
    print(report(rows, " ".join(overrides)) + f"\ntorch threads: {torch.get_num_threads()}")
    return rows


if __name__ == "__main__":
    main()
