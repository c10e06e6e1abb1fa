"""The torch retrieval engine: histograms per distance and the ranked top of every query from
one matmul per chunk of queries, on any torch device.

This is the engine of CUDA inputs (``backend="auto"`` on CUDA) and of ``backend="torch"``; on
the CPU ``auto`` uses :mod:`utils.retrieval.numba_engine`, and the tests run this engine on the
CPU against it and against a brute-force oracle. Conventions (package docstring): the database
is ranked by (Hamming distance, database index); ties are broken by the index, and the
tie-aware expectation (:mod:`utils.retrieval.tie_aware`) needs only the histograms computed
here.

Algorithm (no per-query sort of the database): per chunk of queries one float64 matmul gives,
for every (query, item) pair, an integer *key* that encodes (query, distance, relevance) (see
:class:`Prepared`). A ``bincount`` of the keys gives the histograms of items and of relevant
items per distance; the pairs with distance ``<= d_top`` (``top`` = the largest cut-off needed,
``d_top`` the distance whose group holds rank ``top``) are extracted with a threshold on the
key and stably sorted by (query, distance) only, which keeps database-index order inside every
group: that is the exact index-ordered relevance of the top ``top`` items.

Tested in ``tests/utils/test_retrieval.py`` (oracle cases with ``backend="torch"``, equality
with the numba engine, many classes at the explicit-relevance limit, CUDA against CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from utils.retrieval.codes import fill_pm1
from utils.retrieval.inputs import Inputs, PerQuery

#: Memory budget (bytes) of one chunk's working set, by device type (chunk_size=None).
_CPU_BUDGET = 256 * 2**20
_CUDA_BUDGET = 1024 * 2**20
#: Largest number of (distance, sub-bin) histogram bins per query for the "relevance inside
#: the matmul" encoding; beyond it the relevance bit is added after the matmul (explicit mode).
_MAX_BINS_PER_QUERY = 2**16
#: Keys are int32: the keys of one chunk (< chunk * bins per query) stay below this.
_INT32_LIMIT = 2**31 - 1


@dataclass
class Prepared:
    """Codes and labels turned into the operands of the key matmul.

    The key of a (query b, item i) pair inside a chunk is::

        key = b * n_sub * (nbit + 1) + n_sub * d(b, i) + sub(b, i),      0 <= sub < n_sub

    where ``sub`` encodes the relevance: for single-label ``sub = c_q - c_g + (C - 1)``
    (relevant iff ``sub == C - 1``, so ``n_sub = 2 C``); for multi-label ``sub = #shared
    labels`` (relevant iff ``sub >= 1``). With ``n_sub * d = n_sub * nbit / 2 - (n_sub / 2) *
    <b_q, b_g>`` the whole key is one matmul of augmented operands (the last column carries the
    per-chunk offset)::

        single-label: q_aug = [-(n_sub/2) b_q, -1,   c_q + C - 1 + base_b]
                      db_aug = [b_g,            c_g,  1]
        multi-label:  q_aug = [-(n_sub/2) b_q, y_q,  base_b]
                      db_aug = [b_g,            y_g,  1]
        base_b = b * n_sub * (nbit + 1) + n_sub * nbit / 2   (b = query index inside the chunk)

    All entries and partial sums are integers far below 2**53: float64 is exact whatever the
    TF32 settings. ``explicit`` mode (too many classes or labels for the sub-bins):
    ``n_sub = 2`` and the relevance bit is added after the matmul from an explicit comparison
    of the labels.
    """

    q_aug: torch.Tensor  # (Q, nbit + extra) float64; last column = bias (offset added per chunk)
    db_aug: torch.Tensor  # (N, nbit + extra) float64; last column = 1
    n_sub: int  # sub-bins per distance (even)
    rel_sub: torch.Tensor  # (n_sub,) bool: which sub values are relevant
    explicit: bool
    q_lab: torch.Tensor | None  # explicit mode: (Q,) long ids or (Q, C) float64 multi-hot
    db_lab: torch.Tensor | None  # explicit mode: (N,) long ids or (N, C) float64 multi-hot
    multilabel: bool
    nbit: int
    n_q: int
    n_db: int
    device: torch.device

    @property
    def bins_per_query(self) -> int:
        return self.n_sub * (self.nbit + 1)


def prepare(inputs: Inputs) -> Prepared:
    """The matmul operands of validated inputs (see :class:`Prepared`)."""
    ql, dl, device = inputs.query_labels, inputs.db_labels, inputs.device
    nbit, n_q, n_db = inputs.nbit, inputs.n_q, inputs.n_db
    dtype = torch.float64
    multilabel = inputs.multilabel
    n_cls = 0
    q_id = d_id = None
    if not multilabel:
        all_ids = torch.cat([ql.reshape(-1), dl.reshape(-1)])
        ids, inverse = torch.unique(all_ids, return_inverse=True)
        n_cls = max(int(ids.numel()), 1)
        q_id, d_id = inverse[:n_q], inverse[n_q:]
        n_sub = 2 * n_cls
    else:
        max_labels = int(ql.sum(dim=1).max()) if ql.shape[1] else 0
        n_sub = max(2, max_labels + 1 + (max_labels + 1) % 2)  # even, > max shared labels
    explicit = n_sub * (nbit + 1) > _MAX_BINS_PER_QUERY
    if explicit:
        n_sub = 2
    # Columns: [codes | labels part | bias]; filled in place (no large temporaries).
    n_label_cols = 0 if explicit else (ql.shape[1] if multilabel else 1)
    ncol = nbit + n_label_cols + 1
    q_aug = torch.empty((n_q, ncol), dtype=dtype, device=device)
    db_aug = torch.empty((n_db, ncol), dtype=dtype, device=device)
    fill_pm1(q_aug[:, :nbit], inputs.query_codes).mul_(-(n_sub // 2))
    fill_pm1(db_aug[:, :nbit], inputs.db_codes)
    q_aug[:, -1] = 0.0
    db_aug[:, -1] = 1.0
    q_lab = db_lab = None
    if explicit:
        rel_sub = torch.tensor([False, True], device=device)
        if multilabel:
            q_lab, db_lab = ql.to(dtype), dl.to(dtype)
        else:
            q_lab, db_lab = q_id, d_id
    elif multilabel:
        q_aug[:, nbit:-1] = ql
        db_aug[:, nbit:-1] = dl
        rel_sub = torch.arange(n_sub, device=device) >= 1
    else:
        assert q_id is not None and d_id is not None
        # sub = (c_q + C - 1) * 1 + (-1) * c_g; the query part sits in the bias column.
        q_aug[:, nbit] = -1.0
        db_aug[:, nbit] = d_id
        q_aug[:, -1] = q_id + (n_cls - 1)
        rel_sub = torch.arange(n_sub, device=device) == n_cls - 1
    return Prepared(
        q_aug=q_aug,
        db_aug=db_aug,
        n_sub=n_sub,
        rel_sub=rel_sub,
        explicit=explicit,
        q_lab=q_lab,
        db_lab=db_lab,
        multilabel=multilabel,
        nbit=nbit,
        n_q=n_q,
        n_db=n_db,
        device=device,
    )


def _queries_per_chunk(prep: Prepared, top: int, chunk_size: int | None) -> int:
    """Queries per chunk: from the device's memory budget unless ``chunk_size`` is given,
    capped so that every int32 key of a chunk is exact."""
    if chunk_size is None:
        budget = _CUDA_BUDGET if prep.device.type == "cuda" else _CPU_BUDGET
        # Per query: float64 + int32 keys and the bool mask (13 B per db item), dense top
        # arrays (~40 B per rank, candidates included), the int64 histogram.
        per_query = 13 * prep.n_db + 40 * top + 8 * prep.bins_per_query
        chunk = max(1, budget // per_query)
    else:
        chunk = chunk_size
    chunk = min(chunk, max(1, _INT32_LIMIT // prep.bins_per_query - 1))
    return min(chunk, prep.n_q)


def _chunk_keys(prep: Prepared, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and histogram of queries ``start:stop`` (B of them) against the database.

    Returns:
        keys: ``(B, N)`` int32; hist: ``(B, nbit + 1, n_sub)`` int64 counts of
        ``(distance, sub)`` per query.
    """
    n_chunk = stop - start
    q = prep.q_aug[start:stop].clone()
    base = prep.n_sub * prep.nbit // 2
    q[:, -1] += (
        torch.arange(n_chunk, device=prep.device, dtype=q.dtype) * prep.bins_per_query + base
    )
    keys = (q @ prep.db_aug.T).to(torch.int32)  # exact integers
    if prep.explicit:
        assert prep.q_lab is not None and prep.db_lab is not None
        if prep.multilabel:
            keys += (prep.q_lab[start:stop] @ prep.db_lab.T) > 0
        else:
            keys += prep.q_lab[start:stop, None] == prep.db_lab[None, :]
    hist = torch.bincount(keys.view(-1), minlength=n_chunk * prep.bins_per_query)
    return keys, hist.view(n_chunk, prep.nbit + 1, prep.n_sub)


def sparse_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries of a flat bool tensor, ascending (like ``nonzero``).

    Two levels: the mask is scanned 8 entries at a time as int64 words, then only the non-zero
    words are expanded; several times faster than ``nonzero`` when few entries are True.
    """
    n8 = mask.numel() - mask.numel() % 8
    parts = []
    if n8 and mask.storage_offset() % 8 == 0:
        words = mask[:n8].view(torch.int64)
        blocks = words.nonzero().squeeze(1)
        inner = words.index_select(0, blocks).view(torch.bool).nonzero().squeeze(1)
        parts.append(blocks.index_select(0, inner >> 3) * 8 + (inner & 7))
    else:
        n8 = 0
    if n8 < mask.numel() or not parts:
        parts.append(mask[n8:].nonzero().squeeze(1) + n8)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _ranked_relevance(
    prep: Prepared, keys: torch.Tensor, n_hist: torch.Tensor, top: int
) -> torch.Tensor:
    """Relevance of the ``top`` first items of every query of a chunk, in (distance, index)
    order.

    Only the pairs with distance ``<= d_top`` (the distance at rank ``top``) are extracted (a
    threshold on the key); they are stably sorted by (query, distance), which keeps
    database-index order inside every group.

    Args:
        keys: ``(B, N)`` int32 keys of the chunk; n_hist: ``(B, nbit + 1)`` items per distance.
    Returns:
        ``(B, top)`` bool tensor, ``[:, k-1]`` = relevance of the k-th ranked item.
    """
    n_chunk = n_hist.shape[0]
    cum = n_hist.cumsum(dim=1)  # (B, nbit+1)
    d_top = (cum < top).sum(dim=1)  # first distance whose cumulative count reaches top
    n_cand = cum.gather(1, d_top[:, None]).squeeze(1)  # items with distance <= d_top
    row_base = torch.arange(n_chunk, device=prep.device) * prep.bins_per_query
    threshold = (row_base + prep.n_sub * (d_top + 1)).to(torch.int32)[:, None]
    flat_keys = keys.view(-1)
    cand = flat_keys.index_select(0, sparse_nonzero((keys < threshold).view(-1)))
    group = torch.div(cand, prep.n_sub, rounding_mode="floor")  # = query * (nbit+1) + distance
    order = torch.sort(group, stable=True).indices
    rel_sorted = prep.rel_sub.index_select(0, cand.index_select(0, order) % prep.n_sub)
    starts = n_cand.cumsum(0) - n_cand
    pos = starts[:, None] + torch.arange(top, device=prep.device)[None, :]
    return rel_sorted[pos]


def run(
    prep: Prepared, hit_cuts: Iterable[int], prec_sum_cuts: Iterable[int], chunk_size: int | None
) -> PerQuery:
    """Histograms for all queries, and ``L(k)`` for k in ``hit_cuts`` and the precision sums
    at R in ``prec_sum_cuts`` (effective cut-offs ``1..N``; both empty: histograms only).

    Args:
        chunk_size: queries per chunk, ``None`` = from the device's memory budget.
    """
    hit_cuts, prec_sum_cuts = sorted(set(hit_cuts)), sorted(set(prec_sum_cuts))
    top = max(hit_cuts + prec_sum_cuts, default=0)
    chunk = _queries_per_chunk(prep, top, chunk_size)
    n_hists, rel_hists = [], []
    hits_at: dict[int, list[torch.Tensor]] = {k: [] for k in hit_cuts}
    prec_sum_at: dict[int, list[torch.Tensor]] = {r: [] for r in prec_sum_cuts}
    for start in range(0, prep.n_q, chunk):
        stop = min(prep.n_q, start + chunk)
        keys, hist = _chunk_keys(prep, start, stop)
        n_hist = hist.sum(dim=2)
        n_hists.append(n_hist)
        rel_hists.append(hist[:, :, prep.rel_sub].sum(dim=2))
        del hist
        if top:
            rel = _ranked_relevance(prep, keys, n_hist, top)
            hits = rel.cumsum(dim=1, dtype=torch.int64)  # (B, top) L(k)
            for k in hit_cuts:
                hits_at[k].append(hits[:, k - 1])
            if prec_sum_cuts:
                ranks = torch.arange(1, top + 1, device=prep.device, dtype=torch.float64)
                terms = torch.where(rel, hits.to(torch.float64) / ranks, 0.0)
                prec_sums = terms.cumsum(dim=1)
                for r in prec_sum_cuts:
                    prec_sum_at[r].append(prec_sums[:, r - 1])
                del terms, prec_sums
            del rel, hits
        del keys
    return PerQuery(
        n_hist=torch.cat(n_hists),
        rel_hist=torch.cat(rel_hists),
        hits_at={k: torch.cat(v) for k, v in hits_at.items()},
        prec_sum_at={r: torch.cat(v) for r, v in prec_sum_at.items()},
    )
