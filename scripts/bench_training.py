"""Time per training epoch of SDC with the live frozen backbone and with the feature cache.

    python scripts/bench_training.py [--data-dir DIR] [--live-batches 10] [--cached-epochs 3] [OVERRIDES...]
    python scripts/bench_training.py --quick        # smoke test: backbone=tiny, dataset=digits

Default setting: model=sdc dataset=cifar10 (protocol standard: 5,000 training images)
backbone=efficientnet_lite0, all in one process. The live epoch (images -> frozen backbone ->
head, data loading included) is timed on the first ``--live-batches`` batches and extrapolated
to the full epoch (said so in the output); the cached epoch is timed over ``--cached-epochs``
whole epochs. Also printed: the one-time extraction time (0 when the cache already exists), the
time of one final evaluation from the cache, and the projected time of a 100-epoch run plus its
final evaluation from the cache. Extra Hydra overrides (e.g. dataset.resize=96 dataset.crop=96)
apply to both settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import utils.config  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def time_batches(trainer, optimizer, max_batches: int | None) -> tuple[float, int, int]:
    """Seconds for the first ``max_batches`` training steps (all when None), steps done, steps per epoch."""
    trainer.optimizer = optimizer
    trainer.model.train()
    loader = trainer.train_loader(0)
    total = len(loader)
    steps = total if max_batches is None else min(max_batches, total)
    started = time.perf_counter()
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        loss = trainer.training_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started, steps, total


def bench(overrides: list[str], logdir: Path, live_batches: int, cached_epochs: int) -> dict:
    from utils.compose import build
    from utils.compose.experiment import build_trainer

    results: dict = {}
    # live frozen backbone
    cfg = compose([*overrides, "feature_cache=off", f"logdir={logdir / 'live'}"])
    trainer = build_trainer(cfg, logdir / "live")
    optimizer = build.build_optimizer(cfg, trainer.model)
    time_batches(trainer, optimizer, 1)  # warm-up (allocations, worker start)
    seconds, steps, total = time_batches(trainer, optimizer, live_batches)
    results.update(
        live_steps=steps,
        steps_per_epoch=total,
        live_measured_s=seconds,
        live_epoch_s=seconds / steps * total,
    )
    del trainer, optimizer
    # feature cache
    cfg = compose([*overrides, "feature_cache=on", f"logdir={logdir / 'cached'}"])
    started = time.perf_counter()
    trainer = build_trainer(cfg, logdir / "cached")
    results["cache_build_s"] = time.perf_counter() - started
    optimizer = build.build_optimizer(cfg, trainer.model)
    time_batches(trainer, optimizer, 1)
    epochs = []
    for _ in range(cached_epochs):
        epochs.append(time_batches(trainer, optimizer, None)[0])
    results["cached_epoch_s"] = min(epochs)
    started = time.perf_counter()
    trainer.evaluate()
    results["cached_eval_s"] = time.perf_counter() - started
    results["epochs"] = int(cfg.epochs)
    results["ratio"] = results["live_epoch_s"] / results["cached_epoch_s"]
    return results


def report(r: dict, setting: str) -> str:
    n_epochs = r["epochs"]
    return "\n".join(
        [
            f"setting: {setting}",
            f"live frozen backbone: {r['live_measured_s']:.2f} s for {r['live_steps']} of "
            f"{r['steps_per_epoch']} batches -> {r['live_epoch_s']:.1f} s per epoch "
            "(extrapolated from those batches)",
            f"feature cache:        {r['cached_epoch_s']:.3f} s per epoch (whole epochs, best of "
            f"the measured ones); one-time cache build/load {r['cache_build_s']:.1f} s",
            f"ratio live / cached:  {r['ratio']:.0f}x",
            f"final evaluation from the cache: {r['cached_eval_s']:.1f} s; projected {n_epochs} "
            f"epochs + final evaluation: {n_epochs * r['cached_epoch_s'] + r['cached_eval_s']:.0f} s "
            "(after the one-time extraction)",
        ]
    )


def run_in_scratch(logdir: str | None, run):
    """``run(folder)`` in ``logdir`` or a temporary folder; a UserError ends the script with its
    one sentence on stderr and exit status 2, as main_v2.py does."""
    import tempfile

    from utils.errors import exit_on_user_error

    with tempfile.TemporaryDirectory() as tmp:
        return exit_on_user_error(run, interrupted=None)(Path(logdir or tmp).resolve())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: backbone=tiny dataset=digits, 2 live batches, 1 epoch",
    )
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--logdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--live-batches", type=int, default=10)
    parser.add_argument("--cached-epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both settings")
    args = parser.parse_args(argv)
    if args.quick:
        base = ["model=sdc", "backbone=tiny", "dataset=digits", "model.nbit=16", "num_workers=0"]
        args.live_batches, args.cached_epochs = 2, 1
    else:
        base = ["model=sdc", "model.nbit=64", "dataset=cifar10", "backbone=efficientnet_lite0"]
    overrides = [*base, f"data_dir={args.data_dir}", "progress=false", *args.overrides]
    results = run_in_scratch(
        args.logdir, lambda folder: bench(overrides, folder, args.live_batches, args.cached_epochs)
    )
    print(report(results, " ".join(overrides)) + f"\ntorch threads: {torch.get_num_threads()}")
    return results


if __name__ == "__main__":
    main()
