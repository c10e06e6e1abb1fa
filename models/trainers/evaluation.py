"""The one evaluation of the project: encode a query split and a database split, score them.

Training (the test queries at each evaluation epoch), model selection (the validation split:
validation queries against the rest of the training split), ``val.py`` and the feature-cache
benchmarks all call :func:`evaluate_retrieval`; only the splits and the settings differ.
Conventions of the scores (binarisation, tie order, tie-aware mAP): ``utils/retrieval``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from utils.retrieval import retrieval_report


def map_key(R: int) -> str:
    """The name of mAP at cut-off ``R`` in the reports: mAP@1000, or mAP@all for R = -1."""
    return f"mAP@{'all' if int(R) == -1 else int(R)}"


@dataclass(frozen=True)
class RetrievalSettings:
    """What a report computes (arguments of ``utils.retrieval.retrieval_report``).

    R: mAP cut-off (-1 = all); ks: P@k and HitRate@k cut-offs; radius: Hamming radius of
    P/R_radius; zero_relevant: "count" (a query without relevant items scores 0) or "skip";
    pr_curve: also the precision-recall curve over all radii.
    """

    R: int
    ks: tuple[int, ...] = (1,)
    radius: int = 0
    zero_relevant: str = "count"
    pr_curve: bool = False

    @classmethod
    def from_config(cls, cfg: Any, **changes: Any) -> RetrievalSettings:
        """The run's settings (dataset.R, ks, radius, zero_relevant), with ``changes``."""
        settings = cls(
            R=int(cfg.dataset.R),
            ks=tuple(int(k) for k in cfg.ks),
            radius=int(cfg.radius),
            zero_relevant=str(cfg.get("zero_relevant", "count")),
        )
        return replace(settings, **changes)

    @property
    def main_key(self) -> str:
        return map_key(self.R)


@dataclass
class Evaluation:
    """metrics: the report; query_codes (Q, K) and database_codes (N, K): the continuous codes
    (on the CPU) the report scored."""

    metrics: dict[str, Any]
    query_codes: torch.Tensor
    database_codes: torch.Tensor


def evaluate_retrieval(
    encode: Callable[[Any, str], torch.Tensor],
    queries: Any,
    database: Any,
    settings: RetrievalSettings,
    device: torch.device | None = None,
    names: tuple[str, str] = ("queries", "database"),
) -> Evaluation:
    """Encode ``queries`` and ``database`` (splits with ``.labels``) with ``encode(split,
    description) -> (n, K) codes`` and score them with the retrieval engine. On a CUDA
    ``device`` the codes go back to the GPU, where the engine's torch backend scores them
    (the numba kernels score them on the CPU)."""
    query_codes = encode(queries, f"encode {names[0]}")
    database_codes = encode(database, f"encode {names[1]}")
    scored = (query_codes, database_codes)
    if device is not None and device.type == "cuda":
        scored = (query_codes.to(device), database_codes.to(device))
    metrics = retrieval_report(
        *scored,
        queries.labels,
        database.labels,
        R=settings.R,
        ks=settings.ks,
        radius=settings.radius,
        pr_curve=settings.pr_curve,
        zero_relevant=settings.zero_relevant,
    )
    return Evaluation(metrics, query_codes, database_codes)
