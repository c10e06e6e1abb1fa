"""Retrieval metrics over binary hash codes: exact, tie-aware and fast.

Every retrieval number of the project goes through this module. Conventions (design.md §5):

* **Binarisation.** Codes are real-valued ``(N, nbit)`` tensors or arrays; the binary code is
  ``b = +1 where u >= 0 else -1`` (an exact zero becomes ``+1``; ±1 codes pass through).
  Boolean codes are read as bits: ``True -> +1``, ``False -> -1``.
* **Packed codes** are an explicit input (``packed=True, nbit=K``): ``(N, ceil(K / 8))``
  uint8, bit j in byte ``j // 8`` at position ``7 - j % 8`` (``np.packbits``), bit 1 = +1.
  A uint8 array passed as real-valued codes is an error (every bit would read as +1).
* **Distance.** Hamming distance ``d(q, g) = #{j : b_q[j] != b_g[j]} = (nbit - <b_q, b_g>) / 2``,
  an integer in ``0..nbit``.
* **Relevance.** 1-D integer labels: relevant = same class id. 2-D {0,1} multi-hot labels:
  relevant = shares at least one label (a one-hot 2-D matrix therefore means "same class").
* **Ranking.** For each query the database is ranked by ``(Hamming distance, database index)``
  ascending: ties are broken by the database index (stable, deterministic).
* **AP@R.** With ``rel_k`` the relevance of the k-th ranked item, ``L(k) = sum_{j<=k} rel_j`` and
  ``P@k = L(k) / k``::

      AP@R = (1 / L(R)) * sum_{k<=R} rel_k * P@k            (0 when L(R) == 0)

  i.e. normalised by the relevant items retrieved within R (the reference code's definition).
  ``R = -1`` (or ``"all"``) and any ``R > n_db`` mean the whole database. ``mAP@R`` is the mean
  over queries. ``zero_relevant="count"`` (default) keeps a query with ``L(R) == 0`` in the mean
  with AP 0; ``"skip"`` leaves it out (the reference's multi-label behaviour); when every query is
  skipped the result is 0.0.
* **Tie-aware AP** (``ties="average"``; He et al., "Hashing as Tie-Aware Learning to Rank",
  CVPR 2018): the exact expectation of AP@R when the order inside every equal-distance group is
  uniformly random (independently per group). See :func:`_tie_aware_ap` for the closed form.
  With ``zero_relevant="skip"`` a query is left out when no order can bring a relevant item into
  its top R, i.e. it has no relevant item at distance ``<= d_R`` (the distance at rank R).
* **P@k, Recall@k, HitRate@k** (index order): ``L(k)/k``; ``L(k) / (relevant items in the whole
  db)`` (0 for a query without any relevant item in the db); ``1[L(k) >= 1]`` (the reference
  calls this "R@k"). ``k > n_db`` is clipped to ``n_db``. They are averaged over **all** queries
  (``zero_relevant`` only affects mAP).
* **Radius metrics.** Among the items within Hamming radius r (``d <= r``): precision
  ``= relevant within r / items within r`` (**0 when no item lies within r**, the common
  convention) and recall ``= relevant within r / relevant in the db`` (0 when the db holds no
  relevant item); both averaged over all queries. The PR curve evaluates them at r = 0..nbit.

Algorithm (no per-query sort of the database): distances are integers, so per query we only
need the histogram of items and of relevant items per distance, plus the order by index inside
the few groups up to the one that contains rank R. Per chunk of queries one float matmul
computes, for every (query, item) pair, an integer *key* that encodes (query, distance,
relevance). A ``bincount`` of the keys gives both histograms; the pairs with distance ``<= d_T``
(T = the largest cut-off needed, typically ~T items per query) are extracted with a threshold on
the key and stably sorted by (query, distance) only; that gives the exact index-ordered
relevance of the top T items. Everything stays in torch on the input device (NumPy input runs
on the CPU); chunks of queries (and, on the CPU, tiles of the database) keep memory bounded.

CPU fast path (``backend="auto"``, the default, when numba is installed; see
:mod:`utils.retrieval_kernels`): codes packed into uint64 words, labels into class ids or uint64
label bitmasks; per query one pass over the database (popcount of the XOR + relevance ->
histograms) and one pass in index order over the items with distance ``<= d_T`` (rank = items in
lower groups + items of the same group seen so far), i.e. two linear passes, no matmul, no sort,
with the same results as the torch engine (same float64 operations). CUDA inputs, and CPU inputs
when numba is missing, use the torch engine (``backend="torch"`` forces it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "binarize",
    "pack_codes",
    "unpack_bits",
    "unpack_codes",
    "hamming_distance",
    "hamming_distance_packed",
    "mean_average_precision",
    "retrieval_report",
]

try:  # the numba CPU fast path; without numba everything runs on the torch path
    from utils import retrieval_kernels as _kernels

    _HAVE_NUMBA = bool(_kernels.HAVE_NUMBA)
    _numba = _kernels.numba
except Exception:  # noqa: BLE001 - a broken numba install must not break the metrics
    _kernels = _numba = None
    _HAVE_NUMBA = False

_BACKENDS = ("auto", "numba", "torch")
_TIES = ("index", "average")
_ZERO_RELEVANT = ("count", "skip")

#: Default memory budget (bytes) for the per-chunk working set.
_CPU_BUDGET = 256 * 2**20
_CUDA_BUDGET = 1024 * 2**20
#: On the CPU the database is processed in tiles of at most this many (query, item) pairs (a
#: 64 MB float32 key tile). Large tiles mean few, large ops: on a shared machine every
#: multi-threaded op can wait for a time slice, so fewer ops beat a cache-sized tile.
_CPU_TILE_PAIRS = 2**24
#: Smallest database tile on the CPU.
_CPU_MIN_TILE = 1024
#: CPU keys are float32 values 2**23 + key (exact integers below 2**24); the bit pattern of such
#: a float is 0x4B000000 + key, so the int32 key is its low 23 bits: no conversion pass.
_F32_OFFSET = 2**23
_F32_MANTISSA = 0x7FFFFF
#: Queries per block in the per-query post-processing (tie-aware AP, radius metrics).
_ROW_BLOCK = 4096
#: Largest number of histogram bins per query for the "relevance inside the matmul" encoding.
_MAX_BINS_PER_QUERY = 2**16


# --------------------------------------------------------------------------------------------
# Helpers: binarisation, packing, distances
# --------------------------------------------------------------------------------------------


def _as_tensor(x, name: str) -> torch.Tensor:
    """A torch tensor view of ``x`` (torch tensors pass through; NumPy/lists go to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic input
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True)
    return torch.from_numpy(arr)


_UNSIGNED = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)


def _check_codes(codes: torch.Tensor, name: str) -> None:
    if codes.dtype in _UNSIGNED:  # every value >= 0 would binarise to +1: a silent wrong result
        raise ValueError(
            f"{name} is a {codes.dtype} array, which is read as real-valued codes where every "
            "bit becomes +1: pass bit-packed codes with packed=True, nbit=K, or real-valued "
            "codes as float, int8 or bool"
        )
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, nbit), got shape {tuple(codes.shape)}")
    if codes.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {codes.dtype}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} has nbit = 0 (no bits)")
    if codes.is_floating_point() and codes.numel():
        lo, hi = torch.aminmax(codes)  # one reduction pass; NaN propagates
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError(f"{name} contain NaN or inf values")


def _fill_pm1(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Write ``+1 where u >= 0 else -1`` (bool: True -> +1) into the float tensor ``out``."""
    out.copy_(u if u.dtype == torch.bool else u >= 0)
    return out.mul_(2).sub_(1)


def binarize(codes) -> torch.Tensor:
    """±1 float32 codes: ``+1 where u >= 0 else -1`` (exact zeros become +1).

    Args:
        codes: ``(N, nbit)`` real-valued tensor or array (bool is read as bits: True -> +1).
    Returns:
        ``(N, nbit)`` float32 tensor of ±1 on the input's device (NumPy input -> CPU).
    """
    u = _as_tensor(codes, "codes")
    _check_codes(u, "codes")
    return _fill_pm1(torch.empty(u.shape, dtype=torch.float32, device=u.device), u)


def pack_codes(codes) -> torch.Tensor:
    """Pack binarised codes into bits, 8 per byte.

    Bit j of a code (``+1 -> 1``, ``-1 -> 0``) is stored in byte ``j // 8`` at bit position
    ``7 - j % 8`` (most significant bit first, as ``numpy.packbits``); the last byte is padded
    with zeros.

    Args:
        codes: ``(N, nbit)`` real-valued codes (binarised with :func:`binarize`).
    Returns:
        ``(N, ceil(nbit / 8))`` uint8 tensor on the input's device.
    """
    bits = binarize(codes) > 0
    n, nbit = bits.shape
    nbytes = (nbit + 7) // 8
    padded = torch.zeros((n, nbytes * 8), dtype=torch.uint8, device=bits.device)
    padded[:, :nbit] = bits.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (padded.view(n, nbytes, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed, nbit, name: str = "packed") -> torch.Tensor:
    """Bits of packed codes (layout of :func:`pack_codes`): ``(N, nbytes)`` uint8 -> ``(N, nbit)``
    bool, True = +1. The padding bits of the last byte are dropped."""
    p = _as_tensor(packed, name)
    if p.dtype != torch.uint8 or p.ndim != 2:
        raise ValueError(f"{name} must be a 2-D uint8 array of packed codes, got {p.dtype} "
                         f"{tuple(p.shape)}")
    if isinstance(nbit, (bool, np.bool_)) or not isinstance(nbit, (int, np.integer)):
        raise ValueError(f"packed codes need nbit=K (a positive integer), got nbit={nbit!r}")
    if not 8 * p.shape[1] - 8 < nbit <= 8 * p.shape[1]:
        raise ValueError(f"nbit={nbit} does not match {p.shape[1]} bytes per packed code "
                         f"(ceil(nbit / 8) bytes per code)")
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=p.device)
    bits = (p.unsqueeze(2) >> shifts) & 1
    return bits.reshape(p.shape[0], -1)[:, : int(nbit)].bool()


def unpack_codes(packed, nbit: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``(N, nbytes)`` uint8 -> ``(N, nbit)`` float32 ±1."""
    return unpack_bits(packed, nbit).to(torch.float32) * 2 - 1


def _codes_input(codes, name: str, packed: bool, nbit):
    """``codes`` as the engines take them: packed uint8 codes (``packed=True``) are unpacked to
    bool bits (True = +1), which both engines read natively (1 byte per bit; the numba path
    repacks them into uint64 words); anything else passes through unchanged."""
    if not packed:
        if nbit is not None:
            raise ValueError("nbit is only read with packed=True (real-valued codes carry their "
                             "own width)")
        return codes
    return unpack_bits(codes, nbit, name)


def hamming_distance(a, b) -> torch.Tensor:
    """All pairwise Hamming distances between two sets of (real-valued) codes.

    Args:
        a: ``(Na, nbit)`` codes; b: ``(Nb, nbit)`` codes (binarised with :func:`binarize`).
    Returns:
        ``(Na, Nb)`` int32 tensor of distances in ``0..nbit``, ``d = (nbit - <a, b>) / 2``.
    """
    ba, bb = binarize(a), binarize(b)
    if ba.shape[1] != bb.shape[1]:
        raise ValueError(f"nbit mismatch: {ba.shape[1]} bits vs {bb.shape[1]} bits")
    bb = bb.to(ba.device)
    dtype = torch.float64 if ba.is_cuda else torch.float32  # float64: immune to TF32
    nbit = ba.shape[1]
    with torch.autocast(device_type=ba.device.type, enabled=False):
        dot = ba.to(dtype) @ bb.to(dtype).T
    return ((nbit - dot) / 2).round().to(torch.int32)


_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def hamming_distance_packed(a_packed, b_packed, chunk_size: int = 1024) -> torch.Tensor:
    """Pairwise Hamming distances between packed codes (see :func:`pack_codes`).

    Args:
        a_packed: ``(Na, nbytes)`` uint8; b_packed: ``(Nb, nbytes)`` uint8 (same padding).
    Returns:
        ``(Na, Nb)`` int32 distances (XOR + 8-bit popcount table, chunked over ``a``).
    """
    a = _as_tensor(a_packed, "a_packed")
    b = _as_tensor(b_packed, "b_packed").to(a.device)
    if a.dtype != torch.uint8 or b.dtype != torch.uint8 or a.ndim != 2 or b.ndim != 2:
        raise ValueError("packed codes must be 2-D uint8 arrays")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"nbit mismatch: {a.shape[1]} bytes vs {b.shape[1]} bytes per code")
    table = _POPCOUNT8.to(a.device)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=torch.int32, device=a.device)
    for s in range(0, a.shape[0], chunk_size):
        x = a[s : s + chunk_size, None, :] ^ b[None, :, :]
        out[s : s + chunk_size] = table[x.long()].sum(dim=2, dtype=torch.int32)
    return out


# --------------------------------------------------------------------------------------------
# Input validation and preparation
# --------------------------------------------------------------------------------------------


def _check_choice(value, allowed, name):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name}={value!r}; expected one of {', '.join(allowed)}")


def _check_R(R) -> int:
    """Validate one cut-off: a positive int, -1, or the string "all" (= -1)."""
    if isinstance(R, str):
        if R.strip().lower() == "all":
            return -1
        raise ValueError(f"R must be a positive integer, -1 or 'all', got {R!r}")
    if isinstance(R, (bool, np.bool_)) or not isinstance(R, (int, np.integer)):
        raise ValueError(f"R must be a positive integer, -1 or 'all', got {R!r}")
    R = int(R)
    if R == 0:
        raise ValueError("R == 0 is not a valid cut-off (use -1 for the whole database)")
    if R < -1:
        raise ValueError(f"R = {R} < -1 is not a valid cut-off (use -1 for the whole database)")
    return R


def _check_positive_ints(values, name, allow_zero=False) -> list[int]:
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must hold integers, got {v!r}")
        if int(v) < (0 if allow_zero else 1):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {v}")
        out.append(int(v))
    return out


def _clip(R: int, n_db: int) -> int:
    """Effective cut-off: -1 or anything beyond the database means the whole database."""
    return n_db if (R == -1 or R > n_db) else R


def _r_name(R: int) -> str:
    return "all" if R == -1 else str(R)


@dataclass
class _Prepared:
    """Codes and labels turned into the operands of the key matmul.

    The key of a (query b, item i) pair inside a chunk is::

        key = b * S * (nbit + 1) + S * d(b, i) + sub(b, i),      0 <= sub < S

    where ``sub`` encodes the relevance: for single-label ``sub = c_q - c_g + (C - 1)``
    (relevant iff ``sub == C - 1``); for multi-label ``sub = #shared labels`` (relevant iff
    ``sub >= 1``). With ``S * d = S * nbit / 2 - (S / 2) * <b_q, b_g>`` the whole key is one
    matmul of augmented operands (the last column carries the per-chunk offset)::

        single-label: q_aug = [-(S/2) b_q, -1,     c_q + C - 1 + base_b]
                      db_aug = [b_g,        c_g,   1]
        multi-label:  q_aug = [-(S/2) b_q, y_q,   base_b]
                      db_aug = [b_g,        y_g,   1]
        base_b = b * S * (nbit + 1) + S * nbit / 2      (b = query index inside the chunk)

    All entries and partial sums are integers below 2**24, so float32 is exact (the chunk size
    is capped accordingly); CUDA uses float64. On the CPU ``base_b`` also holds ``2**23``: the
    float32 result then has the bit pattern ``0x4B000000 + key`` and the matmul writes straight
    into the int32 key buffer (see :func:`_chunk_keys`). ``explicit`` mode (too many classes or
    labels for the sub-bins): ``S = 2`` and the relevance bit is added after the matmul from an
    explicit comparison of the labels.
    """

    q_aug: torch.Tensor  # (Q, nbit + extra) float; last column = bias (offset added per chunk)
    db_aug: torch.Tensor  # (N, nbit + extra) float; last column = 1
    S: int  # sub-bins per distance (even)
    rel_sub: torch.Tensor  # (S,) bool: which sub values are relevant
    explicit: bool
    q_lab: torch.Tensor | None  # explicit mode: (Q,) long ids or (Q, C) float multi-hot
    db_lab: torch.Tensor | None  # explicit mode: (N,) long ids or (N, C) float multi-hot
    multilabel: bool
    nbit: int
    n_q: int
    n_db: int
    device: torch.device
    dtype: torch.dtype


def _check_labels(lab: torch.Tensor, name: str, n_rows: int, codes_name: str) -> None:
    if lab.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D class ids or 2-D multi-hot, got shape {tuple(lab.shape)}"
        )
    if lab.shape[0] != n_rows:
        raise ValueError(f"{name} has {lab.shape[0]} rows but {codes_name} has {n_rows}")
    if lab.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {lab.dtype}")
    if lab.ndim == 2:
        if lab.numel() and not bool(((lab == 0) | (lab == 1)).all()):
            raise ValueError(f"{name}: multi-hot labels must be 0/1")
    elif lab.is_floating_point():
        if not bool(torch.isfinite(lab).all()) or not bool((lab == lab.round()).all()):
            raise ValueError(f"{name}: 1-D class ids must be integers")


def _load(query_codes, db_codes, query_labels, db_labels):
    """Validated ``(qc, dc, ql, dl, device)`` tensors, all moved to the queries' device (or the
    database's when only it is a tensor; NumPy input -> CPU)."""
    qc = _as_tensor(query_codes, "query_codes")
    dc = _as_tensor(db_codes, "db_codes")
    if isinstance(query_codes, torch.Tensor):
        device = qc.device
    elif isinstance(db_codes, torch.Tensor):
        device = dc.device
    else:
        device = torch.device("cpu")
    _check_codes(qc, "query_codes")
    _check_codes(dc, "db_codes")
    if qc.shape[0] == 0:
        raise ValueError("empty query set: query_codes has 0 rows")
    if dc.shape[0] == 0:
        raise ValueError("empty database: db_codes has 0 rows")
    if qc.shape[1] != dc.shape[1]:
        raise ValueError(
            f"nbit mismatch: query codes have {qc.shape[1]} bits, database codes {dc.shape[1]}"
        )
    ql = _as_tensor(query_labels, "query_labels")
    dl = _as_tensor(db_labels, "db_labels")
    _check_labels(ql, "query_labels", qc.shape[0], "query_codes")
    _check_labels(dl, "db_labels", dc.shape[0], "db_codes")
    if ql.ndim != dl.ndim:
        raise ValueError(
            f"label kinds differ: query_labels is {ql.ndim}-D, db_labels is {dl.ndim}-D"
        )
    if ql.ndim == 2 and ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"multi-hot label widths differ: query_labels has {ql.shape[1]} columns, "
            f"db_labels {dl.shape[1]}"
        )

    return qc.to(device), dc.to(device), ql.to(device), dl.to(device), device


def _prepare(query_codes, db_codes, query_labels, db_labels, loaded=None) -> _Prepared:
    qc, dc, ql, dl, device = loaded or _load(query_codes, db_codes, query_labels, db_labels)
    nbit, n_q, n_db = qc.shape[1], qc.shape[0], dc.shape[0]
    # CUDA: float64 keys (exact whatever TF32 settings are); CPU: float32 (keys kept < 2**24).
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    multilabel = ql.ndim == 2

    if not multilabel:
        all_ids = torch.cat([ql.reshape(-1), dl.reshape(-1)])
        ids, inverse = torch.unique(all_ids, return_inverse=True)
        n_cls = max(int(ids.numel()), 1)
        q_id, d_id = inverse[:n_q], inverse[n_q:]
        S = 2 * n_cls
    else:
        n_lab = ql.shape[1]
        max_q = int(ql.sum(dim=1).max()) if n_lab else 0
        S = max(2, max_q + 1 + (max_q + 1) % 2)  # even, > max number of shared labels
    explicit = S * (nbit + 1) > _MAX_BINS_PER_QUERY
    if explicit:
        S = 2
    # Columns: [codes | labels part | bias]; filled in place (no large temporaries).
    n_label_cols = 0 if explicit else (ql.shape[1] if multilabel else 1)
    ncol = nbit + n_label_cols + 1
    q_aug = torch.empty((n_q, ncol), dtype=dtype, device=device)
    db_aug = torch.empty((n_db, ncol), dtype=dtype, device=device)
    _fill_pm1(q_aug[:, :nbit], qc).mul_(-(S // 2))
    _fill_pm1(db_aug[:, :nbit], dc)
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
        rel_sub = torch.arange(S, device=device) >= 1
    else:
        # sub = (c_q + C - 1) * 1 + (-1) * c_g; the query part sits in the bias column.
        c1 = n_cls - 1
        q_aug[:, nbit] = -1.0
        db_aug[:, nbit] = d_id
        q_aug[:, -1] = q_id + c1
        rel_sub = torch.arange(S, device=device) == c1
    return _Prepared(
        q_aug=q_aug,
        db_aug=db_aug,
        S=S,
        rel_sub=rel_sub,
        explicit=explicit,
        q_lab=q_lab,
        db_lab=db_lab,
        multilabel=multilabel,
        nbit=nbit,
        n_q=n_q,
        n_db=n_db,
        device=device,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------
# The engine: histograms per distance + index-ordered relevance of the top T
# --------------------------------------------------------------------------------------------


@dataclass
class _ChunkPlan:
    chunk: int  # queries per chunk
    tile: int  # database items per tile


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _plan(p: _Prepared, T: int, chunk_size: int | None) -> _ChunkPlan:
    """Queries per chunk (from a memory budget) and database items per tile."""
    bins_q = p.S * (p.nbit + 1)
    cuda = p.device.type == "cuda"
    budget = _CUDA_BUDGET if cuda else _CPU_BUDGET
    # Per query: int32 keys + bool mask (5 B per db item), dense top-T arrays (~40 B per rank,
    # candidates included), the histogram; on CUDA also the float64 key tile (one tile = db).
    # The CPU writes the matmul straight into the key buffer (float32 bit trick).
    per_query = 5 * p.n_db + 40 * T + 8 * bins_q + (8 * p.n_db if cuda else 0)
    chunk = max(1, budget // per_query)
    if not cuda:
        chunk = min(chunk, 256)
    if chunk_size is not None:
        _check_chunk_size(chunk_size)
        chunk = int(chunk_size)
    if p.dtype == torch.float32:  # 2**23 + keys (and partial sums) must stay below 2**24
        margin = 2 * p.S * (p.nbit + 1) + 4 * p.q_aug.shape[1]
        chunk = min(chunk, max(1, (_F32_OFFSET - margin) // bins_q))
    chunk = min(chunk, p.n_q)
    tile = p.n_db if cuda else max(_CPU_MIN_TILE, _CPU_TILE_PAIRS // chunk)
    return _ChunkPlan(chunk=chunk, tile=min(tile, p.n_db))


class _Workspace:
    """Buffers reused by every chunk (fresh large allocations cost page faults on the CPU).

    ``keys``/``mask`` are flat ``(chunk * n_db,)`` buffers laid out tile by tile: tile
    ``[t0, t1)`` of a chunk of b queries is the contiguous block ``[b*t0, b*t1)`` viewed as
    ``(b, t1 - t0)``. A flat scan therefore visits (tile, query, item) in order, which keeps
    database-index order per query.
    """

    def __init__(self, p: _Prepared, plan: _ChunkPlan, need_mask: bool):
        n = plan.chunk * p.n_db
        self.keys = torch.empty(n, dtype=torch.int32, device=p.device)
        self.mask = torch.empty(n, dtype=torch.bool, device=p.device) if need_mask else None
        # float64 key tile (CUDA); the float32 path writes into ``keys`` directly.
        self.tile = (torch.empty(plan.chunk * plan.tile, dtype=p.dtype, device=p.device)
                     if p.dtype != torch.float32 else None)


def _tiles(p: _Prepared, plan: _ChunkPlan, b: int):
    """(t0, t1, flat slice) of every database tile for a chunk of b queries."""
    for t0 in range(0, p.n_db, plan.tile):
        t1 = min(p.n_db, t0 + plan.tile)
        yield t0, t1, slice(b * t0, b * t1)


def _chunk_keys(p: _Prepared, s: int, e: int, plan: _ChunkPlan, ws: _Workspace):
    """Keys (into ``ws.keys``) and the histogram of queries ``s:e`` against the database.

    Returns:
        ``(b, nbit + 1, S)`` int64 histogram of ``(distance, sub)`` per query.
    """
    b = e - s
    S, nbit = p.S, p.nbit
    bins_q = S * (nbit + 1)
    f32 = p.dtype == torch.float32
    q = p.q_aug[s:e].clone()
    base = S * nbit // 2 + (_F32_OFFSET if f32 else 0)
    q[:, -1] += torch.arange(b, device=p.device, dtype=p.dtype) * bins_q + base
    keys = ws.keys[: b * p.n_db]
    for t0, t1, flat in _tiles(p, plan, b):
        key = keys[flat].view(b, t1 - t0)
        if f32:  # float32 2**23 + key, written into the int32 buffer; low 23 bits = key
            torch.mm(q, p.db_aug[t0:t1].T, out=key.view(torch.float32))
        else:
            key_f = ws.tile[: b * (t1 - t0)].view(b, t1 - t0)
            torch.mm(q, p.db_aug[t0:t1].T, out=key_f)
            key.copy_(key_f)  # exact integers -> int32
    if f32:
        keys.bitwise_and_(_F32_MANTISSA)
    if p.explicit:
        for t0, t1, flat in _tiles(p, plan, b):
            key = keys[flat].view(b, t1 - t0)
            if p.multilabel:
                key += (p.q_lab[s:e] @ p.db_lab[t0:t1].T) > 0
            else:
                key += p.q_lab[s:e, None] == p.db_lab[None, t0:t1]
    hist = torch.bincount(keys, minlength=b * bins_q)
    return hist.view(b, nbit + 1, S)


def _sparse_nonzero(mask: torch.Tensor) -> torch.Tensor:
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


def _ranked_relevance(p: _Prepared, plan: _ChunkPlan, ws: _Workspace, n_hist, T: int):
    """Relevance of the top-T items of every query of a chunk, in (distance, index) order.

    Only the pairs with distance ``<= d_T`` (the distance at rank T) are extracted (a
    threshold on the key); they are stably sorted by (query, distance), which keeps
    database-index order inside every group.

    Args:
        n_hist: ``(b, nbit + 1)`` item counts per distance of the chunk's queries.
    Returns:
        ``(b, T)`` bool tensor, ``[:, k-1]`` = relevance of the k-th ranked item.
    """
    b = n_hist.shape[0]
    S, nbit = p.S, p.nbit
    bins_q = S * (nbit + 1)
    cum = n_hist.cumsum(dim=1)  # (b, nbit+1)
    d_T = (cum < T).sum(dim=1)  # first distance whose cumulative count reaches T
    n_cand = cum.gather(1, d_T[:, None]).squeeze(1)  # items with distance <= d_T
    thr = (torch.arange(b, device=p.device) * bins_q + S * (d_T + 1)).to(torch.int32)[:, None]
    keys, mask = ws.keys[: b * p.n_db], ws.mask[: b * p.n_db]
    # Full tiles as one (n_full, b, tile) block, then the last partial tile: two ops.
    n_full = p.n_db // plan.tile
    split = b * plan.tile * n_full
    if n_full:
        torch.lt(keys[:split].view(n_full, b, plan.tile), thr[None],
                 out=mask[:split].view(n_full, b, plan.tile))
    if split < keys.numel():
        rest = p.n_db - plan.tile * n_full
        torch.lt(keys[split:].view(b, rest), thr, out=mask[split:].view(b, rest))
    cand = keys.index_select(0, _sparse_nonzero(mask))  # (tile, query, item) order
    group = torch.div(cand, S, rounding_mode="floor")  # = query * (nbit+1) + distance
    order = torch.sort(group, stable=True).indices
    rel_sorted = p.rel_sub.index_select(0, cand.index_select(0, order) % S)
    starts = n_cand.cumsum(0) - n_cand
    pos = starts[:, None] + torch.arange(T, device=p.device)[None, :]
    return rel_sorted[pos]


@dataclass
class _PerQuery:
    n_hist: torch.Tensor  # (Q, nbit+1) int64 items per distance
    r_hist: torch.Tensor  # (Q, nbit+1) int64 relevant items per distance
    L_at: dict  # cut-off k -> (Q,) int64 relevant items in the index-ordered top k
    S_at: dict  # cut-off R -> (Q,) float64 sum_{k<=R} rel_k * P@k (index order)


def _run(p: _Prepared, L_cols: Iterable[int], S_cols: Iterable[int], chunk_size) -> _PerQuery:
    """Histograms for all queries, and the index-ordered quantities at the requested cut-offs.

    ``L_cols``/``S_cols`` are effective cut-offs (1..n_db); when both are empty no candidate is
    extracted (histograms only).
    """
    L_cols, S_cols = sorted(set(L_cols)), sorted(set(S_cols))
    T = max(L_cols + S_cols, default=0)
    plan = _plan(p, T, chunk_size)
    ws = _Workspace(p, plan, need_mask=T > 0)
    n_hists, r_hists = [], []
    L_at = {k: [] for k in L_cols}
    S_at = {R: [] for R in S_cols}
    for s in range(0, p.n_q, plan.chunk):
        e = min(p.n_q, s + plan.chunk)
        hist = _chunk_keys(p, s, e, plan, ws)
        n_hist = hist.sum(dim=2)
        n_hists.append(n_hist)
        r_hists.append(hist[:, :, p.rel_sub].sum(dim=2))
        del hist
        if T:
            rel = _ranked_relevance(p, plan, ws, n_hist, T)
            L = rel.cumsum(dim=1, dtype=torch.int64)  # (b, T)
            for k in L_cols:
                L_at[k].append(L[:, k - 1])
            if S_cols:
                ranks = torch.arange(1, T + 1, device=p.device, dtype=torch.float64)
                terms = torch.where(rel, L.to(torch.float64) / ranks, 0.0)
                Ssum = terms.cumsum(dim=1)
                for R in S_cols:
                    S_at[R].append(Ssum[:, R - 1])
                del terms, Ssum
            del rel, L
    return _PerQuery(
        n_hist=torch.cat(n_hists),
        r_hist=torch.cat(r_hists),
        L_at={k: torch.cat(v) for k, v in L_at.items()},
        S_at={R: torch.cat(v) for R, v in S_at.items()},
    )


# --------------------------------------------------------------------------------------------
# The numba CPU fast path (utils/retrieval_kernels.py): two linear passes per query, no matmul
# --------------------------------------------------------------------------------------------


@dataclass
class _NumbaPrepared:
    """Packed operands of the numba kernels (see :mod:`utils.retrieval_kernels`)."""

    qw: np.ndarray  # (Q, nw) uint64 packed codes
    dw: np.ndarray  # (N, nw) uint64
    q_lab: np.ndarray  # (Q,) int64 class ids or (Q, nl) uint64 label bitmasks
    db_lab: np.ndarray  # (N,) int64 or (N, nl) uint64
    multilabel: bool
    nbit: int
    n_q: int
    n_db: int
    device: torch.device


def _code_bits(codes: torch.Tensor) -> np.ndarray:
    return (codes if codes.dtype == torch.bool else codes >= 0).numpy()


def _prepare_numba(loaded) -> _NumbaPrepared:
    qc, dc, ql, dl, device = loaded
    n_q, n_db = qc.shape[0], dc.shape[0]
    pack = _kernels.pack_bits_u64
    multilabel = ql.ndim == 2
    if multilabel:
        q_lab, db_lab = pack((ql != 0).numpy()), pack((dl != 0).numpy())
    elif ql.is_floating_point():  # integral floats (checked): compare dense ids
        _, inverse = torch.unique(torch.cat([ql, dl]), return_inverse=True)
        inverse = inverse.to(torch.int64)
        q_lab, db_lab = inverse[:n_q].numpy(), inverse[n_q:].numpy()
    else:
        q_lab, db_lab = ql.to(torch.int64).numpy(), dl.to(torch.int64).numpy()
    return _NumbaPrepared(
        qw=pack(_code_bits(qc)),
        dw=pack(_code_bits(dc)),
        q_lab=np.ascontiguousarray(q_lab),
        db_lab=np.ascontiguousarray(db_lab),
        multilabel=multilabel,
        nbit=qc.shape[1],
        n_q=n_q,
        n_db=n_db,
        device=device,
    )


def _run_numba(p: _NumbaPrepared, L_cols: Iterable[int], S_cols: Iterable[int]) -> _PerQuery:
    """:func:`_run` with the numba kernels (same outputs, same float64 operations)."""
    L_cols, S_cols = sorted(set(L_cols)), sorted(set(S_cols))
    T = max(L_cols + S_cols, default=0)
    nb = p.nbit + 1
    n_hist = np.empty((p.n_q, nb), dtype=np.int64)
    r_hist = np.empty((p.n_q, nb), dtype=np.int64)
    L_out = np.zeros((p.n_q, len(L_cols)), dtype=np.int64)
    S_out = np.zeros((p.n_q, len(S_cols)), dtype=np.float64)
    # As many threads as torch uses (torch.set_num_threads is the engine's one knob).
    torch_threads = torch.get_num_threads()  # read first: numba's first call may change it
    threads = max(1, min(torch_threads, _numba.config.NUMBA_NUM_THREADS))
    n_blocks = max(1, min(p.n_q, 4 * threads))
    old = _numba.get_num_threads()
    _numba.set_num_threads(threads)
    try:
        if p.multilabel:
            labels = (np.zeros(p.n_q, np.int64), np.zeros(p.n_db, np.int64), p.q_lab, p.db_lab)
        else:
            labels = (p.q_lab, p.db_lab, np.zeros((p.n_q, 1), np.uint64),
                      np.zeros((p.n_db, 1), np.uint64))
        _kernels.engine(p.qw, p.dw, *labels, p.multilabel, p.nbit, T,
                        np.asarray(L_cols, dtype=np.int64), np.asarray(S_cols, dtype=np.int64),
                        n_blocks, n_hist, r_hist, L_out, S_out)
    finally:
        _numba.set_num_threads(old)
        # With numba's OpenMP layer that call also sets torch's OpenMP thread count (the symbols
        # resolve to one runtime): left alone, torch ran on 2 threads after one evaluation despite
        # OMP_NUM_THREADS=1 and small training steps became 5-14x slower on a busy CPU.
        torch.set_num_threads(torch_threads)
    return _PerQuery(
        n_hist=torch.from_numpy(n_hist),
        r_hist=torch.from_numpy(r_hist),
        L_at={k: torch.from_numpy(L_out[:, c].copy()) for c, k in enumerate(L_cols)},
        S_at={R: torch.from_numpy(S_out[:, c].copy()) for c, R in enumerate(S_cols)},
    )


def _engine(query_codes, db_codes, query_labels, db_labels, backend, chunk_size):
    """Validated, prepared inputs and a ``run(L_cols, S_cols) -> _PerQuery`` for the backend.

    ``backend``: ``"auto"`` (numba for CPU inputs when numba imports, else torch), ``"numba"``
    or ``"torch"`` (the matmul/bincount engine; the only one for CUDA tensors).
    """
    _check_choice(backend, _BACKENDS, "backend")
    loaded = _load(query_codes, db_codes, query_labels, db_labels)
    device = loaded[4]
    if backend == "numba":
        if not _HAVE_NUMBA:
            raise ValueError("backend='numba' needs the numba package, which is not importable")
        if device.type != "cpu":
            raise ValueError(f"backend='numba' runs on the CPU only, the inputs are on {device}")
    if backend == "numba" or (backend == "auto" and _HAVE_NUMBA and device.type == "cpu"):
        _check_chunk_size(chunk_size)  # validated for a uniform API; the kernels need no chunks
        p = _prepare_numba(loaded)
        return p, lambda L_cols, S_cols: _run_numba(p, L_cols, S_cols)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, loaded=loaded)
    return p, lambda L_cols, S_cols: _run(p, L_cols, S_cols, chunk_size)


# --------------------------------------------------------------------------------------------
# Tie-aware AP
# --------------------------------------------------------------------------------------------


def _tie_aware_ap(n_hist: torch.Tensor, r_hist: torch.Tensor, R: int, grid_budget: int = 2**20):
    """Exact expected AP@R under uniformly random orders inside equal-distance groups.

    Notation for one query: group d holds ``n_d`` items, ``r_d`` of them relevant; ``a_d`` items
    and ``b_d`` relevant items lie in groups before d. ``d*`` is the group containing rank R,
    ``m = R - a_{d*}`` of its items fall inside the cut-off, ``X`` = relevant among those m.

    *Full group* (d < d*), positions ``a+1..a+n``: ``P(rel at a+j) = r/n`` and, given that,
    the relevant items before it inside the group number ``(j-1)(r-1)/(n-1)`` on average, so::

        E_d = (r/n) * sum_{j=1..n} (b + 1 + (j-1)(r-1)/(n-1)) / (a+j)
            = (r/n) * [ (b+1) h1 + (r-1)/(n-1) * h2 ],
        h1 = H(a+n) - H(a),   h2 = sum_j (j-1)/(a+j) = n - (a+1) h1,

    with H the harmonic numbers ((r-1)/(n-1) := 0 for n = 1). These groups' orders are
    independent of X.

    *Straddling group* d*: X is hypergeometric,
    ``P(X=x) = C(r, x) C(n-r, m-x) / C(n, m)``, and given X = x the x relevant items are placed
    uniformly among the m positions, so their contribution is ``E(a, b, m, x)`` (the full-group
    formula with n -> m, r -> x). Since ``L(R) = b_{d*} + X``::

        E[AP@R] = sum_x P(X=x) * (sum_{d<d*} E_d + E(a, b, m, x)) / (b + x)   (0 when b + x = 0)

    Args:
        n_hist, r_hist: ``(Q, nbit+1)`` int64 counts per distance; R: effective cut-off.
    Returns:
        ap: ``(Q,)`` float64 expected AP@R; possible: ``(Q,)`` bool, some relevant item lies at
        distance ``<= d*`` (used by ``zero_relevant="skip"``); group_size: ``(Q,)`` ``n_{d*}``.
    """
    device = n_hist.device
    n_db = int(n_hist[0].sum())
    k = torch.arange(1, n_db + 1, dtype=torch.float64, device=device)
    H = torch.cat([k.new_zeros(1), torch.cumsum(1.0 / k, 0)])  # H[i] = 1 + 1/2 + ... + 1/i
    lg = torch.lgamma(torch.cat([k.new_ones(1), k + 1]))  # lg[i] = log(i!)
    del k
    parts = [_tie_aware_block(n_hist[s : s + _ROW_BLOCK], r_hist[s : s + _ROW_BLOCK], R, H, lg,
                              grid_budget)
             for s in range(0, n_hist.shape[0], _ROW_BLOCK)]
    return tuple(torch.cat(x) for x in zip(*parts))


def _tie_aware_block(n_hist, r_hist, R: int, H, lg, grid_budget: int):
    """:func:`_tie_aware_ap` for a block of queries (H: harmonic numbers, lg: log factorials)."""
    device = n_hist.device
    nf, rf = n_hist.to(torch.float64), r_hist.to(torch.float64)
    cum = n_hist.cumsum(1)
    a_d = cum - n_hist  # items before group d
    b_d = (r_hist.cumsum(1) - r_hist).to(torch.float64)  # relevant items before group d
    d_star = (cum < R).sum(1)  # (B,) the group containing rank R

    # Full groups before d*.
    h1 = H[a_d + n_hist] - H[a_d]
    h2 = nf - (a_d.to(torch.float64) + 1) * h1
    coef = torch.where(nf > 1, (rf - 1) / (nf - 1).clamp(min=1), 0.0)
    E = rf / nf.clamp(min=1) * ((b_d + 1) * h1 + coef * h2)
    dist = torch.arange(n_hist.shape[1], device=device)[None, :]
    S_full = torch.where(dist < d_star[:, None], E, 0.0).sum(1)
    del h1, h2, coef, E

    # Straddling group: a items and b relevant before it, n items, r relevant, m inside R.
    sel = d_star[:, None]
    a = a_d.gather(1, sel).squeeze(1)
    b = b_d.gather(1, sel).squeeze(1)
    n = n_hist.gather(1, sel).squeeze(1)
    r = r_hist.gather(1, sel).squeeze(1)
    m = R - a
    x_lo = (m - (n - r)).clamp(min=0)  # support of the hypergeometric X
    x_hi = torch.minimum(m, r)
    width = int((x_hi - x_lo).max()) + 1

    def log_comb(nn, kk):
        return lg[nn] - lg[kk] - lg[nn - kk]

    ap = torch.empty(n_hist.shape[0], dtype=torch.float64, device=device)
    rows = max(1, grid_budget // width)
    offs = torch.arange(width, device=device)[None, :]
    for s in range(0, n_hist.shape[0], rows):
        sl = slice(s, s + rows)
        x = x_lo[sl, None] + offs  # (rows, width)
        valid = x <= x_hi[sl, None]
        x = torch.where(valid, x, x_lo[sl, None])
        ns, rs, ms = n[sl, None], r[sl, None], m[sl, None]
        logp = log_comb(rs, x) + log_comb(ns - rs, ms - x) - log_comb(ns, ms)
        pmf = torch.where(valid, torch.exp(logp), 0.0)
        pmf = pmf / pmf.sum(1, keepdim=True)
        a_s = a[sl, None]
        h1s = H[a_s + ms] - H[a_s]
        mf = ms.to(torch.float64)
        h2s = mf - (a_s.to(torch.float64) + 1) * h1s
        xf = x.to(torch.float64)
        coef = torch.where(ms > 1, (xf - 1) / (mf - 1).clamp(min=1), 0.0)
        bs = b[sl, None]
        g = xf / mf * ((bs + 1) * h1s + coef * h2s)  # E(a, b, m, x)
        denom = bs + xf
        val = torch.where(denom > 0, (S_full[sl, None] + g) / denom.clamp(min=1), 0.0)
        ap[sl] = (pmf * val).sum(1)
    possible = (b + r.to(torch.float64)) > 0
    return ap, possible, n


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _mean(values: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    if keep is not None:
        values = values[keep]
    if values.numel() == 0:
        return 0.0
    return float(values.to(torch.float64).mean())


def mean_average_precision(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    R=-1,
    ties="index",
    zero_relevant="count",
    chunk_size=None,
    backend="auto",
    packed=False,
    nbit=None,
) -> float:
    """mAP@R over binary codes (see the module docstring for every convention).

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
        chunk_size: queries per chunk (default: from a memory budget; torch path only).
        backend: ``"auto"`` (default: the numba kernels for CPU inputs when numba is
            installed, else the torch engine), ``"numba"`` or ``"torch"``; same results.
        packed, nbit: ``packed=True, nbit=K``: both code sets are ``(N, ceil(K / 8))`` uint8
            bit-packed codes (:func:`pack_codes` / ``np.packbits`` layout, bit 1 = +1). Without
            it a uint8 (or other unsigned) array is refused: read as real-valued codes every
            bit would be +1.
    Returns:
        mAP@R as a Python float.
    Raises:
        ValueError: bad shapes, empty sets, NaN/inf codes, invalid R/ties/zero_relevant, labels.
    """
    _check_choice(ties, _TIES, "ties")
    _check_choice(zero_relevant, _ZERO_RELEVANT, "zero_relevant")
    R = _check_R(R)
    query_codes = _codes_input(query_codes, "query_codes", packed, nbit)
    db_codes = _codes_input(db_codes, "db_codes", packed, nbit)
    p, run = _engine(query_codes, db_codes, query_labels, db_labels, backend, chunk_size)
    Rc = _clip(R, p.n_db)
    with torch.no_grad(), torch.autocast(device_type=p.device.type, enabled=False):
        if ties == "index":
            pq = run([Rc], [Rc])
            L, S = pq.L_at[Rc], pq.S_at[Rc]
            ap = torch.where(L > 0, S / L.clamp(min=1), 0.0)
            keep = (L > 0) if zero_relevant == "skip" else None
        else:
            pq = run([], [])
            ap, possible, _ = _tie_aware_ap(pq.n_hist, pq.r_hist, Rc)
            keep = possible if zero_relevant == "skip" else None
        return _mean(ap, keep)


def retrieval_report(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    R=1000,
    ks=(1, 5, 10, 100, 1000),
    radius=2,
    zero_relevant="count",
    pr_curve=True,
    chunk_size=None,
    backend="auto",
    packed=False,
    nbit=None,
) -> dict:
    """All retrieval metrics in one pass over the distances.

    Args:
        query_codes, db_codes, query_labels, db_labels: as :func:`mean_average_precision`.
        R: one cut-off or a list of cut-offs (-1/"all" = whole database) for mAP.
        ks: cut-offs for P@k, Recall@k, HitRate@k (k > N is clipped to N; the key keeps k).
        radius: one Hamming radius or a list (>= 0; r > nbit counts everything).
        zero_relevant: "count" or "skip", for ``mAP@R`` and ``mAP_tie@R`` only.
        pr_curve: add ``pr_curve = {"radius": [0..nbit], "precision": [...], "recall": [...]}``.
        chunk_size: queries per chunk (default: from a memory budget; torch path only).
        backend: ``"auto"``, ``"numba"`` or ``"torch"``, as :func:`mean_average_precision`.
        packed, nbit: bit-packed uint8 codes, as :func:`mean_average_precision`.
    Returns:
        A flat dict of Python floats (JSON-serialisable): ``mAP@{R}``, ``mAP_tie@{R}``,
        ``tie_group_size@{R}`` per R (R printed as the integer, or ``all`` for -1); ``P@{k}``,
        ``Recall@{k}``, ``HitRate@{k}`` per k; ``P_radius@{r}``, ``R_radius@{r}`` per r;
        ``distinct_distances``, ``num_queries``, ``num_db``, ``nbit``; and ``pr_curve`` (lists)
        when requested.
    """
    _check_choice(zero_relevant, _ZERO_RELEVANT, "zero_relevant")
    if isinstance(R, np.ndarray):
        R = R.tolist()
    Rs = [_check_R(r) for r in (R if isinstance(R, (list, tuple, range)) else [R])]
    if not Rs:
        raise ValueError("R must hold at least one cut-off")
    ks = _check_positive_ints(ks, "ks")
    radii = _check_positive_ints(radius, "radius", allow_zero=True)
    query_codes = _codes_input(query_codes, "query_codes", packed, nbit)
    db_codes = _codes_input(db_codes, "db_codes", packed, nbit)
    p, run = _engine(query_codes, db_codes, query_labels, db_labels, backend, chunk_size)
    Rc = {r: _clip(r, p.n_db) for r in Rs}
    kc = {k: min(k, p.n_db) for k in ks}
    with torch.no_grad(), torch.autocast(device_type=p.device.type, enabled=False):
        pq = run(list(Rc.values()) + list(kc.values()), list(Rc.values()))
        out: dict = {}
        for r in Rs:
            L, S = pq.L_at[Rc[r]], pq.S_at[Rc[r]]
            ap = torch.where(L > 0, S / L.clamp(min=1), 0.0)
            out[f"mAP@{_r_name(r)}"] = _mean(ap, (L > 0) if zero_relevant == "skip" else None)
            ap_t, possible, gsize = _tie_aware_ap(pq.n_hist, pq.r_hist, Rc[r])
            out[f"mAP_tie@{_r_name(r)}"] = _mean(
                ap_t, possible if zero_relevant == "skip" else None
            )
            out[f"tie_group_size@{_r_name(r)}"] = _mean(gsize.to(torch.float64))
        total_rel = pq.r_hist.sum(1).to(torch.float64)
        has_rel = total_rel > 0
        for k in ks:
            L = pq.L_at[kc[k]].to(torch.float64)
            out[f"P@{k}"] = _mean(L / kc[k])
            out[f"Recall@{k}"] = _mean(torch.where(has_rel, L / total_rel.clamp(min=1), 0.0))
            out[f"HitRate@{k}"] = _mean((L > 0).to(torch.float64))
        # Precision / recall within radius r = 0..nbit, summed over queries block by block.
        prec_sum = torch.zeros(p.nbit + 1, dtype=torch.float64, device=p.device)
        rec_sum = torch.zeros_like(prec_sum)
        for s in range(0, p.n_q, _ROW_BLOCK):
            within = pq.n_hist[s : s + _ROW_BLOCK].cumsum(1).to(torch.float64)
            rel_within = pq.r_hist[s : s + _ROW_BLOCK].cumsum(1).to(torch.float64)
            tot = total_rel[s : s + _ROW_BLOCK, None]
            prec_sum += torch.where(within > 0, rel_within / within.clamp(min=1), 0.0).sum(0)
            rec_sum += torch.where(tot > 0, rel_within / tot.clamp(min=1), 0.0).sum(0)
        prec_m, rec_m = (prec_sum / p.n_q).tolist(), (rec_sum / p.n_q).tolist()
        for r in radii:
            rr = min(r, p.nbit)
            out[f"P_radius@{r}"] = float(prec_m[rr])
            out[f"R_radius@{r}"] = float(rec_m[rr])
        out["distinct_distances"] = _mean((pq.n_hist > 0).sum(1).to(torch.float64))
        out["num_queries"] = float(p.n_q)
        out["num_db"] = float(p.n_db)
        out["nbit"] = float(p.nbit)
        if pr_curve:
            out["pr_curve"] = {
                "radius": list(range(p.nbit + 1)),
                "precision": [float(v) for v in prec_m],
                "recall": [float(v) for v in rec_m],
            }
    return out
