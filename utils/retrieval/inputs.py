"""What the retrieval engines take and give: validated inputs in, per-query quantities out.

Every check of the metric arguments lives here (codes: :mod:`utils.retrieval.codes`): cut-offs
(a positive int, -1 or "all"), choices, labels (1-D class ids or 2-D {0,1} multi-hot, one kind
for both sets), and shapes. :func:`load_inputs` returns the four tensors on one device (the
queries', else the database's when only it is a tensor, else the CPU), and both engines answer
with a :class:`PerQuery`. The ranking conventions (ties ordered by database index; the
tie-aware expectation) are the package docstring's.

Tested through the public API in ``tests/utils/test_retrieval.py`` (the bad-input tables) and
``tests/utils/test_retrieval_packed.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from utils.retrieval.codes import as_tensor, check_codes, unpack_bits


@dataclass
class Inputs:
    """Validated metric inputs, all on ``device``."""

    query_codes: torch.Tensor  # (Q, nbit) real-valued or bool codes
    db_codes: torch.Tensor  # (N, nbit)
    query_labels: torch.Tensor  # (Q,) class ids or (Q, C) multi-hot {0,1}
    db_labels: torch.Tensor  # (N,) or (N, C), the same kind as query_labels
    device: torch.device

    def to(self, device: torch.device) -> Inputs:
        """The same inputs on ``device``."""
        return Inputs(
            self.query_codes.to(device),
            self.db_codes.to(device),
            self.query_labels.to(device),
            self.db_labels.to(device),
            device,
        )

    @property
    def multilabel(self) -> bool:
        return self.query_labels.ndim == 2

    @property
    def nbit(self) -> int:
        return int(self.query_codes.shape[1])

    @property
    def n_q(self) -> int:
        return int(self.query_codes.shape[0])

    @property
    def n_db(self) -> int:
        return int(self.db_codes.shape[0])


@dataclass
class PerQuery:
    """What an engine computes for every query; the metrics are formed from it.

    ``hits_at[k]`` is ``L(k)``, the relevant items among the top k in (distance, index) order;
    ``prec_sum_at[R]`` is ``sum_{k<=R} rel_k * L(k) / k`` (AP@R before dividing by ``L(R)``).
    Cut-offs are effective ones (``1..N``).
    """

    n_hist: torch.Tensor  # (Q, nbit + 1) int64 items per distance
    rel_hist: torch.Tensor  # (Q, nbit + 1) int64 relevant items per distance
    hits_at: dict[int, torch.Tensor]  # cut-off k -> (Q,) int64
    prec_sum_at: dict[int, torch.Tensor]  # cut-off R -> (Q,) float64


def check_choice(value: object, allowed: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name}={value!r}; expected one of {', '.join(allowed)}")
    return value


def check_cutoff(cutoff: object) -> int:
    """One mAP cut-off: a positive int, -1, or the string "all" (= -1)."""
    if isinstance(cutoff, str):
        if cutoff.strip().lower() == "all":
            return -1
        raise ValueError(f"R must be a positive integer, -1 or 'all', got {cutoff!r}")
    if isinstance(cutoff, (bool, np.bool_)) or not isinstance(cutoff, (int, np.integer)):
        raise ValueError(f"R must be a positive integer, -1 or 'all', got {cutoff!r}")
    value = int(cutoff)
    if value == 0:
        raise ValueError("R == 0 is not a valid cut-off (use -1 for the whole database)")
    if value < -1:
        raise ValueError(f"R = {value} < -1 is not a valid cut-off (use -1 for the whole database)")
    return value


def check_cutoffs(cutoffs: object) -> list[int]:
    """One cut-off or a list/tuple/range/array of them (see :func:`check_cutoff`)."""
    if isinstance(cutoffs, np.ndarray):
        cutoffs = cutoffs.tolist()
    items = cutoffs if isinstance(cutoffs, (list, tuple, range)) else [cutoffs]
    checked = [check_cutoff(c) for c in items]
    if not checked:
        raise ValueError("R must hold at least one cut-off")
    return checked


def check_positive_ints(values: object, name: str, allow_zero: bool = False) -> list[int]:
    """One integer or an iterable of integers, each ``>= 1`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, Iterable):
        raise ValueError(f"{name} must hold integers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must hold integers, got {v!r}")
        if int(v) < (0 if allow_zero else 1):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {v}")
        out.append(int(v))
    return out


def check_chunk_size(chunk_size: object) -> int | None:
    """``None`` (chosen from a memory budget) or a positive integer."""
    if chunk_size is None:
        return None
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def effective_cutoff(cutoff: int, n_db: int) -> int:
    """-1 or anything beyond the database means the whole database."""
    return n_db if (cutoff == -1 or cutoff > n_db) else cutoff


def cutoff_name(cutoff: int) -> str:
    """The cut-off as it appears in report keys: the integer, or ``all`` for -1."""
    return "all" if cutoff == -1 else str(cutoff)


def codes_input(codes: object, name: str, packed: bool, nbit: object) -> object:
    """``codes`` as the engines take them: packed uint8 codes (``packed=True``) are unpacked to
    bool bits (True = +1), which both engines read natively; anything else passes through."""
    if not packed:
        if nbit is not None:
            raise ValueError(
                "nbit is only read with packed=True (real-valued codes carry their own width)"
            )
        return codes
    return unpack_bits(codes, nbit, name)


def _check_labels(labels: torch.Tensor, name: str, n_rows: int, codes_name: str) -> None:
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D class ids or 2-D multi-hot, got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but {codes_name} has {n_rows}")
    if labels.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {labels.dtype}")
    if labels.ndim == 2:
        if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"{name}: multi-hot labels must be 0/1")
    elif labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()) or not bool((labels == labels.round()).all()):
            raise ValueError(f"{name}: 1-D class ids must be integers")


def load_inputs(
    query_codes: object, db_codes: object, query_labels: object, db_labels: object
) -> Inputs:
    """Validated tensors, all moved to the queries' device (or the database's when only it is
    a tensor; NumPy input -> CPU)."""
    qc = as_tensor(query_codes, "query_codes")
    dc = as_tensor(db_codes, "db_codes")
    if isinstance(query_codes, torch.Tensor):
        device = qc.device
    elif isinstance(db_codes, torch.Tensor):
        device = dc.device
    else:
        device = torch.device("cpu")
    check_codes(qc, "query_codes")
    check_codes(dc, "db_codes")
    if qc.shape[0] == 0:
        raise ValueError("empty query set: query_codes has 0 rows")
    if dc.shape[0] == 0:
        raise ValueError("empty database: db_codes has 0 rows")
    if qc.shape[1] != dc.shape[1]:
        raise ValueError(
            f"nbit mismatch: query codes have {qc.shape[1]} bits, database codes {dc.shape[1]}"
        )
    ql = as_tensor(query_labels, "query_labels")
    dl = as_tensor(db_labels, "db_labels")
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
    return Inputs(qc.to(device), dc.to(device), ql.to(device), dl.to(device), device)
