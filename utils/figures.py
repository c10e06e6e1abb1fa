"""The figures of a run (``val.py logdir=<run> plots=true``) and of several runs
(``scripts/plot.py``): compute their numbers with :mod:`utils.diagnostics`, draw them with
:mod:`utils.plots`, write PNGs and the numbers behind them to ``<run>/plots/`` (design.md §6).

Files written for one run and checkpoint ``<ckpt>`` (best or last):

- ``pr_curve_<ckpt>.png``: precision-recall within Hamming radius r = 0..K;
- ``precision_at_k_<ckpt>.png``: P@k against k;
- ``distance_histogram_<ckpt>.png``: same-class vs different-class Hamming distances of all
  query-database pairs, each distribution normalised (SDC paper's similarity-distribution view);
- ``training_curves.png``: every loss term and mAP (query, validation) against epoch;
- ``retrieval_grid_<ckpt>.png``: queries (seed 0, one per class where possible) and their
  top-10 database items, marked correct or wrong; skipped with a note for feature datasets;
- ``figure_data_<ckpt>.json``: every number drawn (and the notes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils import diagnostics as dg
from utils.checkpoint import read_json, write_json

log = logging.getLogger(__name__)

GRID_QUERIES = 10  # rows of the retrieval grid (CIFAR-10: one per class)
GRID_TOP = 10  # retrieved items per row
GRID_SEED = 0  # fixed: the same queries for every method and run
THUMBNAIL = 64  # largest side (pixels) of an image in the grid

METHOD_NAMES = {
    "sdc": "SDC",
    "sdc_simclr": "SDC-SimCLR",
    "ugh": "UGH",
    "bihalf": "BiHalf",
    "cibhash": "CIBHash",
    "wch": "WCH",
    "nsh": "NSH",
    "lsh": "LSH",
    "pcah": "PCAH",
    "itq": "ITQ",
}
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "imagenet100": "ImageNet100",
    "nuswide": "NUS-WIDE",
    "coco": "MS-COCO",
}


def run_meta(cfg, checkpoint: str, epoch: int, logdir: str | Path) -> dict[str, Any]:
    """What names a run in titles: dataset, method, bits, checkpoint, epoch, folder."""
    return {
        "dataset": str(cfg.dataset.name),
        "method": str(cfg.model.name),
        "nbit": int(cfg.model.nbit),
        "checkpoint": str(checkpoint),
        "epoch": int(epoch),
        "logdir": str(logdir),
    }


def describe(meta: dict, parts=("dataset", "method", "bits", "checkpoint")) -> str:
    """E.g. 'CIFAR-10 · SDC · 64 bits · best (epoch 90)'."""
    words = {
        "dataset": DATASET_NAMES.get(meta["dataset"], meta["dataset"]),
        "method": METHOD_NAMES.get(meta["method"], meta["method"]),
        "bits": f"{meta['nbit']} bits",
        "checkpoint": f"{meta['checkpoint']} (epoch {meta['epoch']})",
    }
    return " · ".join(words[p] for p in parts)


def compute_figure_data(
    cfg, query, database, query_labels, db_labels, meta: dict, logdir: str | Path
) -> dict[str, Any]:
    """Every number the run's figures show (JSON-serialisable).

    Args:
        query, database: (Q, K) / (N, K) continuous codes of the evaluated checkpoint.
        query_labels, db_labels: their labels.
    """
    logdir = Path(logdir)
    same, diff = dg.pair_distance_histograms(query, database, query_labels, db_labels)
    curves = dg.training_curves(
        read_json(logdir / "train_history.json", []), read_json(logdir / "test_history.json", [])
    )
    rows = dg.retrieval_grid_rows(
        query,
        database,
        query_labels,
        db_labels,
        dg.pick_grid_queries(query_labels, GRID_QUERIES, GRID_SEED),
        GRID_TOP,
    )
    return {
        "meta": meta,
        "main_metric": f"mAP@{'all' if int(cfg.dataset.R) == -1 else int(cfg.dataset.R)}",
        "pr_curve": dg.pr_curve_points(query, database, query_labels, db_labels),
        "precision_at_k": dg.precision_at_k_points(query, database, query_labels, db_labels),
        "distance_histogram": {
            "same": same.tolist(),
            "diff": diff.tolist(),
            "overlap": dg.histogram_overlap(same, diff),
        },
        "training_curves": curves,
        "retrieval_grid": rows,
    }


def thumbnail(image) -> np.ndarray:
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(image)


def class_name(label, class_names=None) -> str:
    """A caption for a label: its class name when the dataset has names, ``labels i,j`` for a
    multi-label row, else ``class i``."""
    label = np.asarray(label)
    if label.ndim:
        return "labels " + ",".join(str(i) for i in np.flatnonzero(label))
    if class_names is not None:
        return str(class_names[int(label)])
    return f"class {int(label)}"


def write_run_plots(
    cfg,
    query,
    database,
    query_labels,
    db_labels,
    checkpoint: str,
    epoch: int,
    logdir: str | Path,
    outdir: str | Path | None = None,
    grid_images: Callable[[list[dict]], tuple[Any, str | None]] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compute and write every figure of one evaluated checkpoint (see the module docstring).

    ``grid_images(rows)`` returns the thumbnails of the retrieval grid's rows as ``((queries,
    retrieved), None)``, or ``(None, why not)``; the composing layer supplies it (this module does
    not read datasets). Without it the grid is skipped with a note.

    Returns the figure data (also ``figure_data_<checkpoint>.json``) with ``"files"``: the
    PNGs written, and ``"notes"``: what was skipped and why.
    """
    from utils import plots

    logdir = Path(logdir)
    outdir = Path(outdir) if outdir is not None else logdir / "plots"
    meta = run_meta(cfg, checkpoint, epoch, logdir)
    data = compute_figure_data(cfg, query, database, query_labels, db_labels, meta, logdir)
    title = describe(meta)
    files, notes = [], []
    files.append(
        plots.save(
            plots.pr_curve([("", data["pr_curve"])], title), outdir / f"pr_curve_{checkpoint}.png"
        )
    )
    files.append(
        plots.save(
            plots.precision_at_k([("", data["precision_at_k"])], title),
            outdir / f"precision_at_k_{checkpoint}.png",
        )
    )
    hist = data["distance_histogram"]
    files.append(
        plots.save(
            plots.distance_histograms([{"label": "query-database pairs", **hist}], title),
            outdir / f"distance_histogram_{checkpoint}.png",
        )
    )
    curves = data["training_curves"]
    if curves["loss"] or curves["map"]:
        files.append(
            plots.save(
                plots.training_curves(
                    [("", curves)], describe(meta, ("dataset", "method", "bits"))
                ),
                outdir / "training_curves.png",
            )
        )
    else:
        notes.append("training curves skipped: the run has no train/test history")
    images, note = (
        grid_images(data["retrieval_grid"])
        if grid_images is not None
        else (None, "retrieval grid skipped: no images were given")
    )
    if images is None:
        notes.append(note or "retrieval grid skipped")
    else:
        names = [
            f"{class_name(np.asarray(query_labels)[r['query']], class_names)}\nquery {r['query']}"
            for r in data["retrieval_grid"]
        ]
        files.append(
            plots.save(
                plots.retrieval_grid(data["retrieval_grid"], images[0], images[1], names, title),
                outdir / f"retrieval_grid_{checkpoint}.png",
            )
        )
    for note in notes:
        log.info(note)
        print(note)
    data["files"] = [str(f) for f in files]
    data["notes"] = notes
    write_json(data, outdir / f"figure_data_{checkpoint}.json")
    print(f"figures written to {outdir}: " + ", ".join(Path(f).name for f in files))
    return data


def write_comparison_plots(runs: list[dict], outdir: str | Path) -> list[Path]:
    """Several runs' figure data (``figure_data_<ckpt>.json``) on shared figures.

    Writes ``compare_distance_histogram.png`` (one panel per run), ``compare_pr_curve.png``,
    ``compare_precision_at_k.png`` and ``compare_training_curves.png`` (total loss and query
    mAP per run). The title holds what all runs share; panel and line labels the rest.
    """
    from utils import plots

    outdir = Path(outdir)
    metas = [r["meta"] for r in runs]
    parts = ("dataset", "method", "bits", "checkpoint")
    shared = tuple(p for p in parts if len({describe(m, (p,)) for m in metas}) == 1)
    own = tuple(p for p in parts if p not in shared)
    title = describe(metas[0], shared) if shared else "runs"
    labels = [describe(m, own) if own else Path(m["logdir"]).name for m in metas]
    files = [
        plots.save(
            plots.distance_histograms(
                [{"label": label, **r["distance_histogram"]} for label, r in zip(labels, runs)],
                title + " — Hamming distances of query-database pairs",
            ),
            outdir / "compare_distance_histogram.png",
        ),
        plots.save(
            plots.pr_curve([(label, r["pr_curve"]) for label, r in zip(labels, runs)], title),
            outdir / "compare_pr_curve.png",
        ),
        plots.save(
            plots.precision_at_k(
                [(label, r["precision_at_k"]) for label, r in zip(labels, runs)], title
            ),
            outdir / "compare_precision_at_k.png",
        ),
    ]
    curves = []
    run_parts = tuple(p for p in own if p != "checkpoint")  # the curves do not depend on it
    for meta, r in zip(metas, runs):
        label = describe(meta, run_parts) if run_parts else Path(meta["logdir"]).name
        c = r["training_curves"]
        key = r["main_metric"]
        curves.append(
            (
                label,
                {
                    "loss": {k: v for k, v in c["loss"].items() if k == "loss"},
                    "map": {k: v for k, v in c["map"].items() if k == key},
                },
            )
        )
    if any(c["loss"] or c["map"] for _, c in curves):
        files.append(
            plots.save(
                plots.training_curves(
                    curves, describe(metas[0], tuple(p for p in shared if p != "checkpoint"))
                ),
                outdir / "compare_training_curves.png",
            )
        )
    print(f"comparison figures written to {outdir}: " + ", ".join(f.name for f in files))
    return files


def write_map_vs_bits(rows: list[dict], out_dir: str | Path, checkpoint: str) -> list[Path]:
    """``summarize.py --plot``: mAP against code length per method, error bars = sample std
    over seeds; one PNG per (dataset, backbone, input size, R) setting in ``out_dir``.

    rows: summarize.py's ``load_run`` rows (method, dataset, nbit, seed, backbone, input, R, map).
    """
    from collections import defaultdict

    from utils import plots

    settings: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        settings[(row["dataset"], row["backbone"], row["input"], row["R"])].append(row)
    files = []
    for (dataset, backbone, size, r), group in sorted(settings.items(), key=str):
        data = dg.map_by_bits(
            [{**g, "method": METHOD_NAMES.get(g["method"], g["method"])} for g in group]
        )
        title = (
            f"{DATASET_NAMES.get(dataset, dataset)} · {backbone}"
            f"{f' · {size} px' if size else ''} · {checkpoint} checkpoint"
        )
        name = (
            "map_vs_bits.png"
            if len(settings) == 1
            else f"map_vs_bits_{dataset}_{backbone}_{size}_{r}.png"
        )
        files.append(plots.save(plots.map_vs_bits(data, title, f"mAP@{r}"), Path(out_dir) / name))
    print("written: " + ", ".join(map(str, files)))
    return files
