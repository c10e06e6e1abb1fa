"""Frozen-backbone feature extraction through each engine, side by side in one process.

    python scripts/bench_extraction.py [--data-dir data] [--images 1024] [--batch 64]
        [--backbone efficientnet_lite0] [--size 224] [--threads auto] [--workers auto]
        [--engines torch,openvino,onnxruntime] [--grid]
    python scripts/bench_extraction.py --quick      # smoke test: 64 images, backbone=tiny

What is timed, for each available engine (utils/feature_extractor.py), on the same real CIFAR-10
JPEGs (``<data-dir>/cifar10/{train,test}/<class>/*.jpg``, a seeded random ``--images`` of the
60,000): the feature cache's own extraction (``datasets.feature_cache.extract`` into a temporary
folder): JPEG decode, bicubic resize to ``--size``, centre crop and [0, 1] float conversion in
``--workers`` DataLoader processes, then the backbone (normalise, network, global pool) through
the engine, and the shard and file writes. The engine's one-time conversion is timed apart.
Printed per engine: images/s end to end, the ratio to eager torch, and the max |difference| of
its features to eager torch's on the same images. Also printed: decoding and resizing alone
(the data loader with no backbone) with 0, 1 and 2 workers, to show it keeps up with the engine.

``--grid`` adds OpenVINO with every (threads, workers) pair of 1..cores x 0..cores, the
measurement behind the defaults: on 2 cores the engine's threads and the decode workers compete.
The goal of issue 14: >= 5x eager torch end to end for EfficientNet-Lite0 at 224 px on the
2-core machine, and the whole CIFAR-10 (60,000 images) in under 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def jpeg_split(data_dir: Path, count: int, seed: int = 0):
    """A seeded random ``count`` of the CIFAR-10 JPEGs as a FileImageSplit."""
    from datasets.cifar import read_image_folder_pool
    from utils.errors import DataError

    root = data_dir / "cifar10"
    if not (root / "train").is_dir():
        raise DataError(
            f"no CIFAR-10 JPEGs under {root}/train: extract ../shared/data/"
            f"cifar10-jpg.tar.gz to {root} (tar -xzf ... -C {root})"
        )
    pool, _, _ = read_image_folder_pool(root)
    picks = np.sort(
        np.random.RandomState(seed).choice(len(pool), min(count, len(pool)), replace=False)
    )
    return pool.subset(picks)


def decode_rate(split, transform, workers: int, batch: int) -> float:
    """Images/s of decoding + resizing alone (the data loader, no backbone)."""
    from torch.utils.data import DataLoader

    from datasets.feature_cache import _Items

    loader = DataLoader(
        _Items(split, transform, 0, len(split), None), batch_size=batch, num_workers=workers
    )
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as the extraction with an engine does (workers use 1 anyway)
    started = time.perf_counter()
    for _ in loader:
        pass
    seconds = time.perf_counter() - started
    torch.set_num_threads(saved)
    return len(split) / seconds


def run_engine(
    name: str, backbone, split, transform, threads: int, workers: int, batch: int, folder: Path
) -> dict:
    """Build the engine's extractor (timed: conversion) and extract ``split`` end to end."""
    from datasets.feature_cache import extract
    from utils.feature_extractor import build_extractor

    torch.set_num_threads(threads)
    example = torch.stack([transform(split.load(i)) for i in range(2)])
    started = time.perf_counter()
    extractor = build_extractor(backbone, name, torch.device("cpu"), example, threads=threads)
    convert_s = time.perf_counter() - started
    parts = {
        "items": len(split),
        "dtype": "float32",
        "engine": name,
        "threads": threads,
        "workers": workers,
    }
    path = folder / f"{name}-t{threads}-w{workers}.npz"
    extractor(example[:1])  # first-call allocations out of the timing
    started = time.perf_counter()
    features = extract(
        split,
        extractor,
        transform,
        path,
        parts,
        torch.device("cpu"),
        batch,
        workers,
        progress=False,
        desc=name,
    )
    seconds = time.perf_counter() - started
    return {
        "engine": extractor.name,
        "threads": threads,
        "workers": workers,
        "convert_s": convert_s,
        "seconds": seconds,
        "images_per_s": len(split) / seconds,
        "features": features,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--images", type=int, default=None, help="default 1024 (--quick: 64)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--pretrained", default="true", choices=("true", "false"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--threads", default="auto", help="engine threads (auto: utils/resources.py)"
    )
    parser.add_argument(
        "--workers", default="auto", help="decode workers (auto: utils/resources.py)"
    )
    parser.add_argument("--engines", default="torch,openvino,onnxruntime")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 images, tiny backbone")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.pretrained, args.size = "tiny", "false", 32
    args.images = args.images or (64 if args.quick else 1024)

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from datasets.transforms import eval_transform
    from utils.checkpoint import write_json
    from utils.feature_extractor import missing_packages
    from utils.resources import available_cores, choose_threads, choose_workers

    threads = choose_threads(args.threads, head_only=False)[0]
    workers = choose_workers(args.workers, head_only=False)
    cfg = OmegaConf.load(REPO / "configs" / "backbone" / f"{args.backbone}.yaml")
    if "pretrained" in cfg:
        cfg.pretrained = args.pretrained == "true"
    if "features_size" in cfg and OmegaConf.is_missing(cfg, "features_size"):
        cfg.features_size = 32
    backbone = instantiate(cfg).eval().requires_grad_(False)
    split = jpeg_split(Path(args.data_dir), args.images)
    transform = eval_transform(args.size, args.size)
    engines = [e for e in args.engines.split(",") if e == "torch" or not missing_packages(e)]
    skipped = sorted(set(args.engines.split(",")) - set(engines))
    load = os.getloadavg()
    print(
        f"bench_extraction: {args.backbone} (pretrained={args.pretrained}) at {args.size} px, "
        f"{len(split)} CIFAR-10 JPEGs, batch {args.batch}, {threads} engine threads, {workers} "
        f"decode workers; {available_cores()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} before the run; torch {torch.__version__}"
        + (f"; not installed: {', '.join(skipped)}" if skipped else "")
    )
    for w in sorted({0, 1, min(2, available_cores())}):
        print(
            f"decode + resize alone, {w} workers: {decode_rate(split, transform, w, args.batch):.0f} images/s"
        )

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in engines:
            results.append(
                run_engine(
                    name, backbone, split, transform, threads, workers, args.batch, Path(folder)
                )
            )
        if args.grid and "openvino" in engines:
            for t in range(1, available_cores() + 1):
                for w in range(0, available_cores() + 1):
                    if (t, w) != (threads, workers):
                        results.append(
                            run_engine(
                                "openvino",
                                backbone,
                                split,
                                transform,
                                t,
                                w,
                                args.batch,
                                Path(folder),
                            )
                        )
    reference = next((r for r in results if r["engine"] == "torch"), None)
    rows = []
    print(
        f"{'engine':<12} {'threads':>7} {'workers':>7} {'images/s':>9} {'x torch':>8} "
        f"{'max |diff|':>10} {'convert s':>9}"
    )
    for r in results:
        ratio = r["images_per_s"] / reference["images_per_s"] if reference else float("nan")
        diff = (
            float(np.abs(r["features"] - reference["features"]).max())
            if reference
            else float("nan")
        )
        print(
            f"{r['engine']:<12} {r['threads']:>7} {r['workers']:>7} {r['images_per_s']:>9.1f} "
            f"{ratio:>8.2f} {diff:>10.2g} {r['convert_s']:>9.1f}"
        )
        rows.append(
            {k: v for k, v in r.items() if k != "features"} | {"ratio": ratio, "max_diff": diff}
        )
    best = max(
        (r for r in rows if r["engine"] != "torch"), key=lambda r: r["images_per_s"], default=None
    )
    if best is not None:
        print(
            f"whole CIFAR-10 (60,000 images) at {best['engine']}'s rate: "
            f"{60000 / best['images_per_s'] / 60:.1f} min"
        )
    if args.json:
        write_json({"args": vars(args), "load_average": load, "results": rows}, Path(args.json))


if __name__ == "__main__":
    from utils.errors import exit_on_user_error

    exit_on_user_error(main)()
    sys.exit(0)
