"""The numbers behind the code diagnostics: per-evaluation statistics (TensorBoard) and the data
of every figure of ``val.py plots=true`` / ``scripts/plot.py`` (drawn by :mod:`utils.plots`).

Conventions are the retrieval engine's (``utils/retrieval/``, design.md §5): binary code
``b = +1 where v >= 0 else -1``; Hamming distance ``d = (K - <b_q, b_g>) / 2`` in 0..K;
relevance = same class (1-D labels) or at least one shared label (2-D multi-hot); ranking by
(distance, database index). Precision-recall and precision@k points come from the engine
itself (:func:`utils.retrieval.retrieval_report`), never from a second implementation.

Why these statistics: SDC (Ng et al., BMVC 2023, Fig. 1) argues that the code similarities of
other unsupervised hashing methods collapse into a narrow band where positive and negative
pairs overlap, and that calibrating them against a Beta distribution spreads them out; the
same-class / different-class Hamming-distance histograms and their overlap show exactly that.
Bit balance and bit correlation are the usual code-quality checks (e.g. BiHalf, Li & van Gemert,
AAAI 2021, maximises bit entropy); labels are used for diagnostics only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from utils.retrieval import binarize, hamming_distance, retrieval_report

log = logging.getLogger(__name__)

#: Queries per block in :func:`pair_distance_histograms` (a (block, N) int32 distance matrix).
_PAIR_BLOCK = 256


# --------------------------------------------------------------------------------------------
# Pair histograms
# --------------------------------------------------------------------------------------------


def _relevance(q_labels: torch.Tensor, db_labels: torch.Tensor) -> torch.Tensor:
    """(b, N) bool: same class (1-D labels) or a shared label (2-D multi-hot), as the engine."""
    if q_labels.ndim == 1:
        return q_labels[:, None] == db_labels[None, :]
    return (q_labels.double() @ db_labels.double().T) > 0


def pair_distance_histograms(
    query_codes, db_codes, query_labels, db_labels
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming-distance histograms of relevant and irrelevant (query, database) pairs.

    Args:
        query_codes: (Q, K) continuous or ±1 codes; db_codes: (N, K).
        query_labels, db_labels: (Q,)/(N,) class ids or (Q, C)/(N, C) multi-hot {0, 1}.
    Returns:
        same, diff: (K + 1,) int64 counts; ``same[d]`` = relevant pairs at distance d,
        ``diff[d]`` = irrelevant pairs at distance d; ``same.sum() + diff.sum() == Q * N``.
    """
    q = binarize(torch.as_tensor(query_codes))
    g = binarize(torch.as_tensor(db_codes))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bits, database codes {g.shape[1]}")
    ql, dl = torch.as_tensor(np.asarray(query_labels)), torch.as_tensor(np.asarray(db_labels))
    if len(ql) != len(q) or len(dl) != len(g):
        raise ValueError("labels and codes must have the same number of rows")
    nbit = q.shape[1]
    counts = torch.zeros(2 * (nbit + 1), dtype=torch.int64)
    for s in range(0, len(q), _PAIR_BLOCK):
        d = hamming_distance(q[s : s + _PAIR_BLOCK], g).to(torch.int64)
        rel = _relevance(ql[s : s + _PAIR_BLOCK], dl)
        counts += torch.bincount((d + rel * (nbit + 1)).reshape(-1), minlength=2 * (nbit + 1))
    counts = counts.numpy()
    return counts[nbit + 1 :].copy(), counts[: nbit + 1].copy()


def normalise(counts: np.ndarray) -> np.ndarray:
    """Counts -> fractions summing to 1 (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def histogram_overlap(same: np.ndarray, diff: np.ndarray) -> float:
    """Overlap coefficient of the two normalised histograms: ``sum_d min(p_same, p_diff)``.

    1 = the same-class and different-class distance distributions coincide (the codes do not
    separate them at all); 0 = disjoint supports. Example: same = [2, 2, 0], diff = [0, 2, 2]
    gives min(.5, 0) + min(.5, .5) + min(0, .5) = 0.5.
    """
    return float(np.minimum(normalise(same), normalise(diff)).sum())


def histogram_mean(counts: np.ndarray) -> float:
    """Mean distance of a histogram over 0..K (nan when it is empty)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float((np.arange(len(counts)) * counts).sum() / total) if total > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Code statistics
# --------------------------------------------------------------------------------------------


def bit_balance(codes) -> np.ndarray:
    """(K,) fraction of +1 per bit over the N codes (0.5 = balanced)."""
    return (binarize(torch.as_tensor(codes)) > 0).double().mean(0).numpy()


def mean_abs_bit_correlation(codes) -> float:
    """Mean |Pearson correlation| between pairs of bits (i < j) of the binary codes.

    A constant bit has no correlation (zero variance): pairs involving one are left out, and
    the result is nan when fewer than two bits vary. 0 = decorrelated bits, 1 = redundant bits.
    """
    b = binarize(torch.as_tensor(codes)).double()
    varying = b.std(0) > 0
    b = b[:, varying]
    k = b.shape[1]
    if k < 2:
        return float("nan")
    centred = b - b.mean(0)
    cov = centred.T @ centred
    std = cov.diagonal().sqrt()
    corr = cov / (std[:, None] * std[None, :])
    upper = torch.triu_indices(k, k, offset=1)
    return float(corr[upper[0], upper[1]].abs().mean())


def quantisation_gap(codes) -> float:
    """Mean |v - sign(v)| over all entries of the continuous codes (sign: +1 where v >= 0)."""
    v = torch.as_tensor(codes).double()
    return float((v - binarize(v).double()).abs().mean())


def distinct_code_share(codes) -> float:
    """Distinct binary codes / N (1 = every item has its own code)."""
    b = binarize(torch.as_tensor(codes)) > 0
    if len(b) == 0:
        return float("nan")
    return float(len(torch.unique(b, dim=0)) / len(b))


def code_statistics(codes) -> dict[str, float]:
    """Scalar summary of (N, K) continuous codes for TensorBoard."""
    balance = bit_balance(codes)
    return {
        "bit_balance_mean_abs_dev": float(np.abs(balance - 0.5).mean()),
        "bit_balance_max_abs_dev": float(np.abs(balance - 0.5).max()),
        "constant_bits": float(((balance == 0) | (balance == 1)).sum()),
        "bit_correlation_mean_abs": mean_abs_bit_correlation(codes),
        "quantisation_gap": quantisation_gap(codes),
        "distinct_code_share": distinct_code_share(codes),
    }


# --------------------------------------------------------------------------------------------
# Figure data from the retrieval engine
# --------------------------------------------------------------------------------------------


def pr_curve_points(query_codes, db_codes, query_labels, db_labels) -> dict[str, list]:
    """Precision and recall within Hamming radius r = 0..K, from the retrieval engine.

    Returns ``{"radius": [0..K], "precision": [...], "recall": [...]}`` (mean over queries;
    precision 0 for a query with no item within r, the engine's convention).
    """
    report = retrieval_report(
        query_codes, db_codes, query_labels, db_labels, R=1, ks=(1,), radius=0, pr_curve=True
    )
    return report["pr_curve"]


def precision_at_k_points(
    query_codes, db_codes, query_labels, db_labels, ks=None
) -> dict[str, list]:
    """P@k (mean over queries, engine ranking by (distance, index)) for the cut-offs ``ks``.

    Default ks: 1, 5, 10, 20, 50, then every 50 up to 1000 (clipped to the database size).
    """
    n_db = len(db_codes)
    if ks is None:
        ks = [1, 5, 10, 20] + list(range(50, 1001, 50))
    ks = sorted({min(int(k), n_db) for k in ks if int(k) >= 1})
    report = retrieval_report(
        query_codes, db_codes, query_labels, db_labels, R=1, ks=ks, radius=0, pr_curve=False
    )
    return {"k": ks, "precision": [report[f"P@{k}"] for k in ks]}


def rank_database(query_codes, db_codes, top: int) -> np.ndarray:
    """(Q, top) database indices of the top items per query, ranked by (distance, index).

    A stable argsort of the distances keeps index order inside equal-distance groups, the
    retrieval engine's tie-break.
    """
    d = hamming_distance(
        binarize(torch.as_tensor(query_codes)), binarize(torch.as_tensor(db_codes))
    ).to(torch.int64)
    top = min(int(top), d.shape[1])
    return torch.sort(d, dim=1, stable=True).indices[:, :top].numpy()


def pick_grid_queries(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Query indices for the retrieval grid: one per class (the first ``count`` classes in
    sorted order, a seeded random member of each) when labels are 1-D, otherwise (or when there
    are fewer classes than ``count``) filled up with seeded random queries. Sorted by class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    if labels.ndim == 1:
        for cls in np.unique(labels)[:count]:
            chosen.append(int(rng.choice(np.flatnonzero(labels == cls))))
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    extra = max(0, min(count, len(labels)) - len(chosen))
    chosen += [int(i) for i in rng.choice(rest, size=extra, replace=False)]
    return np.asarray(chosen, dtype=np.int64)


def retrieval_grid_rows(
    query_codes, db_codes, query_labels, db_labels, queries, top: int = 10
) -> list[dict[str, Any]]:
    """One row per chosen query: its top-``top`` database items and whether each is relevant.

    Returns ``[{"query": i, "retrieved": [db index, ...], "correct": [bool, ...],
    "distance": [int, ...]}, ...]``.
    """
    queries = np.asarray(queries, dtype=np.int64)
    qc = torch.as_tensor(query_codes)[torch.as_tensor(queries)]
    ranked = rank_database(qc, db_codes, top)
    d = hamming_distance(binarize(qc), binarize(torch.as_tensor(db_codes)))
    ql = torch.as_tensor(np.asarray(query_labels)[queries])
    dl = torch.as_tensor(np.asarray(db_labels))
    rows = []
    for row, (qi, items) in enumerate(zip(queries, ranked)):
        items_t = torch.as_tensor(items)
        rel = _relevance(ql[row : row + 1], dl[items_t])[0]
        rows.append(
            {
                "query": int(qi),
                "retrieved": [int(i) for i in items],
                "correct": [bool(x) for x in rel],
                "distance": [int(x) for x in d[row, items_t]],
            }
        )
    return rows


def training_curves(train_history: list[dict], test_history: list[dict]) -> dict[str, Any]:
    """Per-epoch series from train_history.json / test_history.json.

    Returns ``{"loss": {term: (epochs, values)}, "map": {name: (epochs, values)}}``: every
    ``train_<term>`` column (learning rates and timing columns left out) and every mAP column
    of the evaluations (query ``mAP@R``, ``mAP_tie@R`` and validation ``val_mAP@R``).
    """
    loss: dict[str, tuple[list, list]] = {}
    for row in train_history:
        for name, value in row.items():
            if (
                name.startswith("train_")
                and name != "train_items"
                and isinstance(value, (int, float))
            ):
                epochs, values = loss.setdefault(name[len("train_") :], ([], []))
                epochs.append(row["epoch"])
                values.append(float(value))
    maps: dict[str, tuple[list, list]] = {}
    for row in test_history:
        for name, value in row.items():
            if "mAP" in name and isinstance(value, (int, float)):
                epochs, values = maps.setdefault(name, ([], []))
                epochs.append(row["epoch"])
                values.append(float(value))
    return {"loss": loss, "map": maps}


def map_by_bits(rows: list[dict]) -> dict[str, dict[str, list]]:
    """mAP against code length per method, mean and sample std (ddof = 1) over seeds.

    Args:
        rows: ``[{"method", "nbit", "seed", "map"}, ...]`` (one per run; e.g. summarize.py's).
    Returns:
        ``{method: {"nbit": [...], "mean": [...], "std": [...], "seeds": [...]}}`` sorted by
        nbit; std is 0 for a single seed (no error bar).
    """
    grouped: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        grouped.setdefault(row["method"], {}).setdefault(int(row["nbit"]), []).append(
            float(row["map"])
        )
    out = {}
    for method, by_bits in sorted(grouped.items()):
        bits = sorted(by_bits)
        values = [np.asarray(by_bits[b]) for b in bits]
        out[method] = {
            "nbit": bits,
            "mean": [float(v.mean()) for v in values],
            "std": [float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in values],
            "seeds": [len(v) for v in values],
        }
    return out


# --------------------------------------------------------------------------------------------
# TensorBoard: one call per evaluation from the training engine
# --------------------------------------------------------------------------------------------


def _add_count_histogram(writer, tag: str, counts: np.ndarray, step: int) -> None:
    """An exact integer histogram (one bucket per distance 0..K) in TensorBoard."""
    counts = np.asarray(counts, dtype=np.float64)
    values = np.arange(len(counts), dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return
    present = np.flatnonzero(counts)
    writer.add_histogram_raw(
        tag,
        min=float(values[present[0]]),
        max=float(values[present[-1]]),
        num=int(total),
        sum=float((values * counts).sum()),
        sum_squares=float((values**2 * counts).sum()),
        bucket_limits=(values + 0.5).tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


@torch.no_grad()
def calibration_pairs(
    trainer, split, batches: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The quantity a calibration loss pulls together, on fixed batches of ``split``.

    Generic hook: a criterion with ``calibration_pairs(features (M, D), codes (M, K)) ->
    (similarities (n,), targets (n,))`` (SDC: code similarities in feature-similarity order
    and the Beta quantile targets) is evaluated on up to ``batches`` training-size batches of
    a fixed seeded permutation of ``split`` in eval mode. Returns the concatenated
    (similarities, targets), or None when the criterion has no such hook.
    """
    hook = getattr(trainer.criterion, "calibration_pairs", None)
    if hook is None:
        return None
    n = len(split)
    size = min(trainer.batch_size, n - n % 2)
    if size < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    subset = split.subset(np.sort(order[: size * max(1, min(batches, n // size))]))
    trainer.model.eval()
    sims, targets = [], []
    loader = torch.utils.data.DataLoader(
        trainer.transformed(subset, trainer.eval_transform),
        batch_size=size,
        shuffle=False,
        drop_last=True,
    )
    for images, _, _ in loader:
        output = trainer.model(trainer.to_device(images))
        s, t = hook(output.features, output.codes)
        sims.append(s.float().cpu())
        targets.append(t.float().cpu())
    return torch.cat(sims), torch.cat(targets)


def log_diagnostics(trainer, writer, epoch: int, codes=None) -> dict[str, float]:
    """Write the code diagnostics of one evaluation to TensorBoard (tags ``diag/...``).

    Uses the validation split (validation queries against the rest of the training split):
    the same-class / different-class Hamming-distance histograms and their overlap, bit
    balance (histogram of the per-bit fraction of +1 and scalars), mean |bit correlation|,
    quantisation gap, share of distinct codes, and, where the criterion exposes
    ``calibration_pairs`` (SDC), histograms of the code similarities and their Beta targets
    plus their mean absolute gap. Size per call: a few hundred bytes of histograms
    (K + 1 buckets each) and scalars.

    Args:
        trainer: a models.trainers.base.Trainer; its ``validation`` split is used (nothing is
            logged without one, or with ``diagnostics=false`` in the config).
        codes: optional (validation query codes, validation database codes) already computed.
    Returns:
        the scalars written (empty when skipped).
    """
    if not trainer.cfg.get("diagnostics", True) or trainer.validation is None:
        return {}
    val_queries, val_database = trainer.validation
    if codes is None:
        codes = (
            trainer.encode(val_queries, "encode validation"),
            trainer.encode(val_database, "encode validation db"),
        )
    query, database = codes
    same, diff = pair_distance_histograms(query, database, val_queries.labels, val_database.labels)
    all_codes = torch.cat([query, database])
    scalars = {
        "hamming_overlap": histogram_overlap(same, diff),
        "hamming_mean_same_class": histogram_mean(same),
        "hamming_mean_diff_class": histogram_mean(diff),
        **code_statistics(all_codes),
    }
    _add_count_histogram(writer, "diag/hamming_same_class", same, epoch)
    _add_count_histogram(writer, "diag/hamming_diff_class", diff, epoch)
    writer.add_histogram(
        "diag/bit_balance", bit_balance(all_codes), epoch, bins=np.linspace(0, 1, 21)
    )
    pairs = calibration_pairs(trainer, val_queries)
    if pairs is not None:
        sims, targets = pairs
        edges = np.linspace(-1, 1, 41)
        writer.add_histogram("diag/calibration_code_similarity", sims.numpy(), epoch, bins=edges)
        writer.add_histogram("diag/calibration_target", targets.numpy(), epoch, bins=edges)
        scalars["calibration_gap"] = float((sims - targets).abs().mean())
    for name, value in scalars.items():
        writer.add_scalar(f"diag/{name}", value, epoch)
    return scalars
