"""The public retrieval metrics: mAP@R (index-ordered or tie-aware) and the full report.

Checks the arguments (:mod:`utils.retrieval.inputs`), chooses the engine -- ``backend="auto"``:
:mod:`~utils.retrieval.numba_engine` for CPU inputs (NumPy input runs on the CPU),
:mod:`~utils.retrieval.torch_engine` for CUDA inputs (inputs on other devices, e.g. MPS, are
scored on the CPU); ``"numba"`` / ``"torch"`` force one -- and forms every metric from the
per-query histograms and index-ordered sums the engine returns.
Conventions (package docstring): ties ordered by database index for ``mAP@R``, P@k, Recall@k
and HitRate@k; ``mAP_tie@R`` is the tie-aware expectation (:mod:`utils.retrieval.tie_aware`).

Tested in ``tests/utils/test_retrieval.py`` (hand-computed cases, a brute-force oracle,
invariances, report format, bad input, backend choice) and
``tests/utils/test_retrieval_packed.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from utils.retrieval import numba_engine, tie_aware, torch_engine
from utils.retrieval.inputs import (
    PerQuery,
    check_choice,
    check_chunk_size,
    check_cutoff,
    check_cutoffs,
    check_positive_ints,
    codes_input,
    cutoff_name,
    effective_cutoff,
    load_inputs,
)
from utils.retrieval.tie_aware import tie_aware_ap

__all__ = ["mean_average_precision", "retrieval_report"]

_BACKENDS = ("auto", "numba", "torch")
_TIES = ("index", "average")
_ZERO_RELEVANT = ("count", "skip")

#: ``run(hit_cuts, prec_sum_cuts) -> PerQuery`` of the chosen engine.
_Runner = Callable[[Iterable[int], Iterable[int]], PerQuery]


class _Engine:
    """The prepared inputs of one call and the engine that runs on them."""

    def __init__(self, n_q: int, n_db: int, nbit: int, device: torch.device, run: _Runner):
        self.n_q, self.n_db, self.nbit, self.device, self.run = n_q, n_db, nbit, device, run


def _engine(
    query_codes: object,
    db_codes: object,
    query_labels: object,
    db_labels: object,
    backend: object,
    chunk_size: object,
) -> _Engine:
    """Validated, prepared inputs and the ``run`` of the backend: ``"auto"`` = numba for CPU
    inputs, torch for CUDA inputs; ``"numba"`` (CPU only) or ``"torch"`` (CPU or CUDA)."""
    check_choice(backend, _BACKENDS, "backend")
    chunk = check_chunk_size(chunk_size)  # the numba kernel needs no chunks: checked for all
    inputs = load_inputs(query_codes, db_codes, query_labels, db_labels)
    if inputs.device.type not in ("cpu", "cuda"):
        # the torch engine's float64 keys need the CPU or CUDA (MPS has no float64): other
        # devices' inputs are scored on the CPU (the results are Python floats either way)
        inputs = inputs.to(torch.device("cpu"))
    if backend == "numba" or (backend == "auto" and inputs.device.type == "cpu"):
        nprep = numba_engine.prepare(inputs)
        return _Engine(
            inputs.n_q,
            inputs.n_db,
            inputs.nbit,
            inputs.device,
            lambda hit_cuts, prec_sum_cuts: numba_engine.run(nprep, hit_cuts, prec_sum_cuts),
        )
    tprep = torch_engine.prepare(inputs)
    return _Engine(
        inputs.n_q,
        inputs.n_db,
        inputs.nbit,
        inputs.device,
        lambda hit_cuts, prec_sum_cuts: torch_engine.run(tprep, hit_cuts, prec_sum_cuts, chunk),
    )


def _mean(values: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Mean as a Python float over the kept entries (0.0 when none is kept)."""
    if keep is not None:
        values = values[keep]
    if values.numel() == 0:
        return 0.0
    return float(values.to(torch.float64).mean())


def _index_ap(per_query: PerQuery, cutoff: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q,)`` float64 AP@R in index order and ``(Q,)`` bool ``L(R) > 0``."""
    hits, prec_sum = per_query.hits_at[cutoff], per_query.prec_sum_at[cutoff]
    has_hit = hits > 0
    return torch.where(has_hit, prec_sum / hits.clamp(min=1), 0.0), has_hit


def mean_average_precision(
    query_codes: object,
    db_codes: object,
    query_labels: object,
    db_labels: object,
    R: object = -1,
    ties: str = "index",
    zero_relevant: str = "count",
    chunk_size: int | None = None,
    backend: str = "auto",
    packed: bool = False,
    nbit: int | None = None,
) -> float:
    """mAP@R over binary codes (see the package docstring for every convention).

    Args:
        query_codes: ``(Q, nbit)`` real-valued codes (torch CPU/CUDA or NumPy); binarised at 0.
        db_codes: ``(N, nbit)`` codes of the database.
        query_labels, db_labels: ``(Q,)``/``(N,)`` integer class ids, or ``(Q, C)``/``(N, C)``
            {0,1} multi-hot (relevant = at least one shared label).
        R: cut-off; -1 (or ``"all"``) or ``R > N`` = whole database.
        ties: ``"index"`` ranks by (distance, db index); ``"average"`` is the exact expectation
            over random orders inside equal-distance groups (tie-aware AP).
        zero_relevant: ``"count"`` (a query with no relevant item in its top R scores 0) or
            ``"skip"`` (such a query is left out; 0.0 if all are).
        chunk_size: queries per chunk (default: from a memory budget; torch engine only).
        backend: ``"auto"`` (default: the numba engine for CPU inputs, the torch engine for
            CUDA inputs), ``"numba"`` or ``"torch"``; same results.
        packed, nbit: ``packed=True, nbit=K``: both code sets are ``(N, ceil(K / 8))`` uint8
            bit-packed codes (:func:`pack_codes` / ``np.packbits`` layout, bit 1 = +1). Without
            it a uint8 (or other unsigned) array is refused: read as real-valued codes every
            bit would be +1.
    Returns:
        mAP@R as a Python float.
    Raises:
        ValueError: bad shapes, empty sets, NaN/inf codes, invalid R/ties/zero_relevant, labels.
    """
    check_choice(ties, _TIES, "ties")
    check_choice(zero_relevant, _ZERO_RELEVANT, "zero_relevant")
    cutoff = check_cutoff(R)
    query_codes = codes_input(query_codes, "query_codes", packed, nbit)
    db_codes = codes_input(db_codes, "db_codes", packed, nbit)
    engine = _engine(query_codes, db_codes, query_labels, db_labels, backend, chunk_size)
    cut = effective_cutoff(cutoff, engine.n_db)
    with torch.no_grad(), torch.autocast(device_type=engine.device.type, enabled=False):
        if ties == "index":
            ap, keep = _index_ap(engine.run([cut], [cut]), cut)
        else:
            per_query = engine.run([], [])
            ap, keep, _ = tie_aware_ap(per_query.n_hist, per_query.rel_hist, cut)
        return _mean(ap, keep if zero_relevant == "skip" else None)


def retrieval_report(
    query_codes: object,
    db_codes: object,
    query_labels: object,
    db_labels: object,
    R: object = 1000,
    ks: object = (1, 5, 10, 100, 1000),
    radius: object = 2,
    zero_relevant: str = "count",
    pr_curve: bool = True,
    chunk_size: int | None = None,
    backend: str = "auto",
    packed: bool = False,
    nbit: int | None = None,
) -> dict[str, Any]:
    """All retrieval metrics in one pass over the distances.

    Args:
        query_codes, db_codes, query_labels, db_labels: as :func:`mean_average_precision`.
        R: one cut-off or a list of cut-offs (-1/"all" = whole database) for mAP.
        ks: cut-offs for P@k, Recall@k, HitRate@k (k > N is clipped to N; the key keeps k).
        radius: one Hamming radius or a list (>= 0; r > nbit counts everything).
        zero_relevant: "count" or "skip", for ``mAP@R`` and ``mAP_tie@R`` only.
        pr_curve: add ``pr_curve = {"radius": [0..nbit], "precision": [...], "recall": [...]}``.
        chunk_size: queries per chunk (default: from a memory budget; torch engine only).
        backend: ``"auto"``, ``"numba"`` or ``"torch"``, as :func:`mean_average_precision`.
        packed, nbit: bit-packed uint8 codes, as :func:`mean_average_precision`.
    Returns:
        A flat dict of Python floats (JSON-serialisable): ``mAP@{R}``, ``mAP_tie@{R}``,
        ``tie_group_size@{R}`` per R (R printed as the integer, or ``all`` for -1); ``P@{k}``,
        ``Recall@{k}``, ``HitRate@{k}`` per k; ``P_radius@{r}``, ``R_radius@{r}`` per r;
        ``distinct_distances``, ``num_queries``, ``num_db``, ``nbit``; and ``pr_curve`` (lists)
        when requested.
    """
    check_choice(zero_relevant, _ZERO_RELEVANT, "zero_relevant")
    cutoffs = check_cutoffs(R)
    ks = check_positive_ints(ks, "ks")
    radii = check_positive_ints(radius, "radius", allow_zero=True)
    query_codes = codes_input(query_codes, "query_codes", packed, nbit)
    db_codes = codes_input(db_codes, "db_codes", packed, nbit)
    engine = _engine(query_codes, db_codes, query_labels, db_labels, backend, chunk_size)
    n_q, n_db, code_bits = engine.n_q, engine.n_db, engine.nbit
    cut_of = {c: effective_cutoff(c, n_db) for c in cutoffs}
    k_of = {k: min(k, n_db) for k in ks}
    skip = zero_relevant == "skip"
    with torch.no_grad(), torch.autocast(device_type=engine.device.type, enabled=False):
        pq = engine.run(list(cut_of.values()) + list(k_of.values()), list(cut_of.values()))
        out: dict[str, Any] = {}
        for c in cutoffs:
            name = cutoff_name(c)
            ap, has_hit = _index_ap(pq, cut_of[c])
            out[f"mAP@{name}"] = _mean(ap, has_hit if skip else None)
            ap_tie, possible, group_size = tie_aware_ap(pq.n_hist, pq.rel_hist, cut_of[c])
            out[f"mAP_tie@{name}"] = _mean(ap_tie, possible if skip else None)
            out[f"tie_group_size@{name}"] = _mean(group_size.to(torch.float64))
        total_rel = pq.rel_hist.sum(1).to(torch.float64)
        has_rel = total_rel > 0
        for k in ks:
            hits = pq.hits_at[k_of[k]].to(torch.float64)
            out[f"P@{k}"] = _mean(hits / k_of[k])
            out[f"Recall@{k}"] = _mean(torch.where(has_rel, hits / total_rel.clamp(min=1), 0.0))
            out[f"HitRate@{k}"] = _mean((hits > 0).to(torch.float64))
        # Precision / recall within radius r = 0..nbit, summed over queries block by block.
        prec_total = torch.zeros(code_bits + 1, dtype=torch.float64, device=engine.device)
        rec_total = torch.zeros_like(prec_total)
        block = tie_aware.ROW_BLOCK
        for s in range(0, n_q, block):
            within = pq.n_hist[s : s + block].cumsum(1).to(torch.float64)
            rel_within = pq.rel_hist[s : s + block].cumsum(1).to(torch.float64)
            tot = total_rel[s : s + block, None]
            prec_total += torch.where(within > 0, rel_within / within.clamp(min=1), 0.0).sum(0)
            rec_total += torch.where(tot > 0, rel_within / tot.clamp(min=1), 0.0).sum(0)
        prec_mean: list[float] = (prec_total / n_q).tolist()
        rec_mean: list[float] = (rec_total / n_q).tolist()
        for r in radii:
            within_r = min(r, code_bits)
            out[f"P_radius@{r}"] = float(prec_mean[within_r])
            out[f"R_radius@{r}"] = float(rec_mean[within_r])
        out["distinct_distances"] = _mean((pq.n_hist > 0).sum(1).to(torch.float64))
        out["num_queries"] = float(n_q)
        out["num_db"] = float(n_db)
        out["nbit"] = float(code_bits)
        if pr_curve:
            out["pr_curve"] = {
                "radius": list(range(code_bits + 1)),
                "precision": [float(v) for v in prec_mean],
                "recall": [float(v) for v in rec_mean],
            }
    return out
