"""The numba CPU retrieval engine: two linear passes over the database per query, no matmul,
no sort; the engine of CPU inputs (``backend="auto"`` on the CPU, or ``backend="numba"``).

Codes are packed into uint64 words (``n_words = ceil(nbit / 64)``, padding bits 0 on both
sides), labels into int64 class ids (single-label) or uint64 label bitmasks (multi-label,
``ceil(C / 64)`` words). Per query (``prange`` over blocks of queries):

1. one pass over the database: ``d = popcount(q xor g)`` and the relevance give the key
   ``2 d + rel`` (kept in a per-thread uint16 buffer) and the histogram of keys, i.e. the items
   and the relevant items per distance;
2. when index-ordered quantities are needed (``top`` = the largest cut-off > 0): ``d_top`` = the
   distance whose group contains rank ``top``; a second pass over the key buffer in index order
   gives every item with ``d <= d_top`` its rank ``(items in lower groups) + (items of its group
   seen so far)`` -- ties ordered by database index -- and writes its relevance at that rank
   (stopping once ranks ``1..top`` are filled); one sequential scan of the ranked relevances
   then gives ``L(k)`` and ``sum_{k<=R} rel_k L(k) / k`` with the same float64 operations, in
   the same order, as :mod:`utils.retrieval.torch_engine` (equal results, not just close).

The tie-aware expectation needs only the histograms (:mod:`utils.retrieval.tie_aware`).
Tested in ``tests/utils/test_retrieval.py`` (oracle cases with ``backend="numba"``, equality
with the torch engine, label and code dtypes, torch's thread count left alone) and
``tests/utils/test_retrieval_packed.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic

from utils.retrieval.codes import code_bits
from utils.retrieval.inputs import Inputs, PerQuery


def _popcount_typing(typingctx: Any, x: Any) -> Any:
    """Typing of :data:`_popcount`: LLVM ``ctpop`` of a uint64 (one ``popcnt`` instruction),
    as int64."""
    if not (isinstance(x, types.Integer) and getattr(x, "bitwidth", None) == 64):
        return None
    sig = types.int64(x)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


# Any: jitted code calls it with one argument; numba's stub types the call like the typing
# function (typing context first).
_popcount: Any = intrinsic(_popcount_typing)


@njit(cache=True, fastmath=False)
def _keys_single(
    q_words: np.ndarray,
    i: int,
    db_words: np.ndarray,
    q_ids: np.ndarray,
    db_ids: np.ndarray,
    keys: np.ndarray,
    key_hist: np.ndarray,
) -> None:
    """Keys ``2 d + rel`` of query i against the database (single-label) into ``keys`` (N,),
    and their counts added to ``key_hist`` (2 (nbit + 1),)."""
    n_words = q_words.shape[1]
    n_db = db_words.shape[0]
    cls = q_ids[i]
    if n_words == 1:
        q0 = q_words[i, 0]
        # four interleaved histograms break the store-to-load dependency of hist[key] += 1
        n_bins = key_hist.shape[0]
        hist4 = np.zeros((4, n_bins), np.int64)
        head = n_db - n_db % 4
        for j in range(0, head, 4):
            k0 = 2 * _popcount(q0 ^ db_words[j, 0]) + (db_ids[j] == cls)
            k1 = 2 * _popcount(q0 ^ db_words[j + 1, 0]) + (db_ids[j + 1] == cls)
            k2 = 2 * _popcount(q0 ^ db_words[j + 2, 0]) + (db_ids[j + 2] == cls)
            k3 = 2 * _popcount(q0 ^ db_words[j + 3, 0]) + (db_ids[j + 3] == cls)
            keys[j] = k0
            keys[j + 1] = k1
            keys[j + 2] = k2
            keys[j + 3] = k3
            hist4[0, k0] += 1
            hist4[1, k1] += 1
            hist4[2, k2] += 1
            hist4[3, k3] += 1
        for j in range(head, n_db):
            key = 2 * _popcount(q0 ^ db_words[j, 0]) + (db_ids[j] == cls)
            keys[j] = key
            hist4[0, key] += 1
        for b in range(n_bins):
            key_hist[b] += hist4[0, b] + hist4[1, b] + hist4[2, b] + hist4[3, b]
    else:
        for j in range(n_db):
            dist = 0
            for w in range(n_words):
                dist += _popcount(q_words[i, w] ^ db_words[j, w])
            key = 2 * dist + (db_ids[j] == cls)
            keys[j] = key
            key_hist[key] += 1


@njit(cache=True, fastmath=False)
def _keys_multi(
    q_words: np.ndarray,
    i: int,
    db_words: np.ndarray,
    q_masks: np.ndarray,
    db_masks: np.ndarray,
    keys: np.ndarray,
    key_hist: np.ndarray,
) -> None:
    """Keys ``2 d + rel`` of query i against the database (multi-label bitmasks)."""
    n_words = q_words.shape[1]
    n_mask_words = q_masks.shape[1]
    n_db = db_words.shape[0]
    zero = np.uint64(0)
    if n_words == 1 and n_mask_words == 1:
        q0 = q_words[i, 0]
        m0 = q_masks[i, 0]
        for j in range(n_db):
            key = 2 * _popcount(q0 ^ db_words[j, 0]) + ((m0 & db_masks[j, 0]) != zero)
            keys[j] = key
            key_hist[key] += 1
    else:
        for j in range(n_db):
            dist = 0
            for w in range(n_words):
                dist += _popcount(q_words[i, w] ^ db_words[j, w])
            rel = 0
            for w in range(n_mask_words):
                if (q_masks[i, w] & db_masks[j, w]) != zero:
                    rel = 1
                    break
            key = 2 * dist + rel
            keys[j] = key
            key_hist[key] += 1


@njit(parallel=True, cache=True, fastmath=False)
def _kernel(
    q_words: np.ndarray,
    db_words: np.ndarray,
    q_ids: np.ndarray,
    db_ids: np.ndarray,
    q_masks: np.ndarray,
    db_masks: np.ndarray,
    multilabel: bool,
    nbit: int,
    top: int,
    hit_cuts: np.ndarray,
    prec_sum_cuts: np.ndarray,
    n_blocks: int,
    n_hist: np.ndarray,
    rel_hist: np.ndarray,
    hits_out: np.ndarray,
    prec_sum_out: np.ndarray,
) -> None:
    """Histograms for every query and, when ``top > 0``, ``L(k)`` for ``k in hit_cuts`` and
    ``sum_{k<=R} rel_k L(k) / k`` for ``R in prec_sum_cuts`` (both int64, sorted ascending,
    effective cut-offs ``1..top``).

    Args:
        q_words, db_words: ``(Q, n_words)``/``(N, n_words)`` uint64 packed codes.
        q_ids, db_ids: ``(Q,)``/``(N,)`` int64 class ids (used unless ``multilabel``);
        q_masks, db_masks: ``(Q, n_mask_words)``/``(N, n_mask_words)`` uint64 label bitmasks
            (used when ``multilabel``).
        n_blocks: blocks of consecutive queries shared out among the threads.
        n_hist, rel_hist: ``(Q, nbit + 1)`` int64 outputs; hits_out ``(Q, len(hit_cuts))``
            int64 and prec_sum_out ``(Q, len(prec_sum_cuts))`` float64 outputs.
    """
    n_q = q_words.shape[0]
    n_db = db_words.shape[0]
    n_dist = nbit + 1
    n_hit_cuts = hit_cuts.shape[0]
    n_prec_cuts = prec_sum_cuts.shape[0]
    per_block = (n_q + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        first = blk * per_block
        end = min(n_q, first + per_block)
        if first < end:
            keys = np.empty(n_db, np.uint16)
            key_hist = np.empty(2 * n_dist, np.int64)
            before = np.empty(n_dist, np.int64)  # items in lower distance groups
            seen = np.empty(n_dist, np.int64)  # items of the group met so far in index order
            ranked_rel = np.empty(max(top, 1), np.uint8)
            for i in range(first, end):
                key_hist[:] = 0
                if multilabel:
                    _keys_multi(q_words, i, db_words, q_masks, db_masks, keys, key_hist)
                else:
                    _keys_single(q_words, i, db_words, q_ids, db_ids, keys, key_hist)
                for d in range(n_dist):
                    n_hist[i, d] = key_hist[2 * d] + key_hist[2 * d + 1]
                    rel_hist[i, d] = key_hist[2 * d + 1]
                if top > 0:
                    cum = 0
                    d_top = -1
                    for d in range(n_dist):
                        before[d] = cum
                        seen[d] = 0
                        cum += n_hist[i, d]
                        if d_top < 0 and cum >= top:
                            d_top = d
                    key_limit = 2 * d_top + 1
                    filled = 0
                    for j in range(n_db):
                        key = np.int64(keys[j])
                        if key <= key_limit:
                            group = key >> 1
                            rank0 = before[group] + seen[group]
                            seen[group] += 1
                            if rank0 < top:
                                ranked_rel[rank0] = key & 1
                                filled += 1
                                if filled == top:
                                    break
                    hits = 0
                    prec_sum = 0.0
                    next_hit = 0
                    next_prec = 0
                    for rank0 in range(top):
                        if ranked_rel[rank0]:
                            hits += 1
                            prec_sum += hits / (rank0 + 1)
                        while next_hit < n_hit_cuts and hit_cuts[next_hit] == rank0 + 1:
                            hits_out[i, next_hit] = hits
                            next_hit += 1
                        while next_prec < n_prec_cuts and prec_sum_cuts[next_prec] == rank0 + 1:
                            prec_sum_out[i, next_prec] = prec_sum
                            next_prec += 1


def _pack_bits_u64(bits: np.ndarray) -> np.ndarray:
    """``(N, n)`` bool -> ``(N, ceil(n / 64))`` uint64 words (zero padding; any fixed bit
    order, the same for queries and database)."""
    n_rows, width = bits.shape
    n_words = max(1, (width + 63) // 64)
    packed = np.packbits(bits, axis=1)
    out = np.zeros((n_rows, n_words * 8), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)


@dataclass
class Prepared:
    """Packed operands of the kernel."""

    q_words: np.ndarray  # (Q, n_words) uint64 packed codes
    db_words: np.ndarray  # (N, n_words) uint64
    q_lab: np.ndarray  # (Q,) int64 class ids or (Q, n_mask_words) uint64 label bitmasks
    db_lab: np.ndarray  # (N,) int64 or (N, n_mask_words) uint64
    multilabel: bool
    nbit: int
    n_q: int
    n_db: int


def prepare(inputs: Inputs) -> Prepared:
    """Packed codes and labels of validated CPU inputs."""
    if inputs.device.type != "cpu":
        raise ValueError(f"backend='numba' runs on the CPU only, the inputs are on {inputs.device}")
    ql, dl, n_q = inputs.query_labels, inputs.db_labels, inputs.n_q
    if inputs.multilabel:
        q_lab, db_lab = _pack_bits_u64((ql != 0).numpy()), _pack_bits_u64((dl != 0).numpy())
    elif ql.is_floating_point():  # integral floats (checked): compare dense ids
        _, inverse = torch.unique(torch.cat([ql, dl]), return_inverse=True)
        inverse = inverse.to(torch.int64)
        q_lab, db_lab = inverse[:n_q].numpy(), inverse[n_q:].numpy()
    else:
        q_lab, db_lab = ql.to(torch.int64).numpy(), dl.to(torch.int64).numpy()
    return Prepared(
        q_words=_pack_bits_u64(code_bits(inputs.query_codes).numpy()),
        db_words=_pack_bits_u64(code_bits(inputs.db_codes).numpy()),
        q_lab=np.ascontiguousarray(q_lab),
        db_lab=np.ascontiguousarray(db_lab),
        multilabel=inputs.multilabel,
        nbit=inputs.nbit,
        n_q=n_q,
        n_db=inputs.n_db,
    )


def run(prep: Prepared, hit_cuts: Iterable[int], prec_sum_cuts: Iterable[int]) -> PerQuery:
    """The torch engine's ``run`` with the numba kernel (same outputs, same float64
    operations); threads: as many as torch uses (``torch.set_num_threads`` is the one knob)."""
    hit_cuts, prec_sum_cuts = sorted(set(hit_cuts)), sorted(set(prec_sum_cuts))
    top = max(hit_cuts + prec_sum_cuts, default=0)
    n_dist = prep.nbit + 1
    n_hist = np.empty((prep.n_q, n_dist), dtype=np.int64)
    rel_hist = np.empty((prep.n_q, n_dist), dtype=np.int64)
    hits_out = np.zeros((prep.n_q, len(hit_cuts)), dtype=np.int64)
    prec_sum_out = np.zeros((prep.n_q, len(prec_sum_cuts)), dtype=np.float64)
    torch_threads = torch.get_num_threads()  # read first: numba's first call may change it
    # set by numba at import from the environment; numba's stub does not list it
    numba_max: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    threads = max(1, min(torch_threads, numba_max))
    n_blocks = max(1, min(prep.n_q, 4 * threads))
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        if prep.multilabel:
            q_ids, db_ids = np.zeros(prep.n_q, np.int64), np.zeros(prep.n_db, np.int64)
            q_masks, db_masks = prep.q_lab, prep.db_lab
        else:
            q_ids, db_ids = prep.q_lab, prep.db_lab
            q_masks = np.zeros((prep.n_q, 1), np.uint64)
            db_masks = np.zeros((prep.n_db, 1), np.uint64)
        _kernel(
            prep.q_words,
            prep.db_words,
            q_ids,
            db_ids,
            q_masks,
            db_masks,
            prep.multilabel,
            prep.nbit,
            top,
            np.asarray(hit_cuts, dtype=np.int64),
            np.asarray(prec_sum_cuts, dtype=np.int64),
            n_blocks,
            n_hist,
            rel_hist,
            hits_out,
            prec_sum_out,
        )
    finally:
        numba.set_num_threads(old)
        # With numba's OpenMP layer that call also sets torch's OpenMP thread count (the symbols
        # resolve to one runtime): left alone, torch ran on 2 threads after one evaluation despite
        # OMP_NUM_THREADS=1 and small training steps became 5-14x slower on a busy CPU.
        torch.set_num_threads(torch_threads)
    return PerQuery(
        n_hist=torch.from_numpy(n_hist),
        rel_hist=torch.from_numpy(rel_hist),
        hits_at={k: torch.from_numpy(hits_out[:, c].copy()) for c, k in enumerate(hit_cuts)},
        prec_sum_at={
            r: torch.from_numpy(prec_sum_out[:, c].copy()) for c, r in enumerate(prec_sum_cuts)
        },
    )
