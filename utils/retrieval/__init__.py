"""Retrieval metrics over binary hash codes: exact, tie-aware and fast.

Every retrieval number of the project goes through this package; import the public names from
here (``from utils.retrieval import retrieval_report``). Conventions (design.md §5):

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
  uniformly random (independently per group); closed form in :mod:`utils.retrieval.tie_aware`.
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

Modules, one job each (no per-query sort of the database in either engine; both return the
histograms of items and relevant items per distance and the index-ordered sums at the cut-offs):

* :mod:`~utils.retrieval.api` -- ``mean_average_precision``, ``retrieval_report``; engine choice
  (``backend="auto"``: numba for CPU inputs, torch for CUDA inputs;
  inputs on other devices, e.g. MPS, are scored on the CPU).
* :mod:`~utils.retrieval.codes` -- ``binarize``, ``pack_codes``, ``unpack_bits``,
  ``hamming_distance``; code validation.
* :mod:`~utils.retrieval.inputs` -- argument and label checks; the engines' input and output.
* :mod:`~utils.retrieval.numba_engine` -- the CPU engine: popcount of packed words, two linear
  passes per query.
* :mod:`~utils.retrieval.torch_engine` -- the engine of CUDA (and ``backend="torch"``): one
  matmul of augmented codes per chunk of queries gives integer keys, a bincount the histograms.
* :mod:`~utils.retrieval.tie_aware` -- the tie-aware expectation from the histograms.

Tested in ``tests/utils/test_retrieval.py`` and ``tests/utils/test_retrieval_packed.py``;
benchmarked by ``scripts/bench_retrieval.py``.
"""

from utils.retrieval.api import mean_average_precision, retrieval_report
from utils.retrieval.codes import binarize, hamming_distance, pack_codes, unpack_bits

__all__ = [
    "binarize",
    "pack_codes",
    "unpack_bits",
    "hamming_distance",
    "mean_average_precision",
    "retrieval_report",
]
