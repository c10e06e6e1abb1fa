"""The bi-half layer (Li & van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit
Entropy", AAAI 2021; methods.md §2 "BiHalf", §4.4, §8 item 10).

Input u (N, K): N rows of a training batch, K bits. Output b (N, K) in {-1, +1}.

Forward in training, per bit (column) j independently: sort u_{.j} in descending order and give
+1 to the top floor(N/2) rows, -1 to the rest, so every bit is +1 for exactly half of the batch
(the maximum-entropy split the paper aims for).
- Odd N: floor(N/2) rows get +1, so the middle (median) row gets -1; e.g. u = (2, 0, 1) ->
  (+1, -1, -1) (methods.md §9).
- Ties: the sort is stable, so among equal values the lower row index ranks higher and gets +1
  first; e.g. a constant column of 4 rows -> (+1, +1, -1, -1). Deterministic on CPU and CUDA.
- Deviation from the SDC reference (kept on purpose): the reference thresholds strictly above the
  lower median, which gives FEWER than half +1 when values tie at the median; we follow the
  original BiHalf code, which sorts and assigns exactly half. Without ties both rules agree.
- N = 1 has no half to assign: ValueError.

Backward: dL/du = dL/db + (gamma / (N K)) (u - b): the straight-through gradient plus the gradient
of gamma / (2 N K) ||u - b||^2 with b held fixed (gamma = 6 in the paper and the reference).

In evaluation mode :class:`BiHalf` is the identity (b = u); the retrieval code is then binarised
by sign at 0 (not by the median), as the reference.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from utils import distributed


def bihalf_codes(u: torch.Tensor) -> torch.Tensor:
    """The bi-half forward (no gradient): (N, K) -> (N, K) of +-1 in u's dtype; see module doc."""
    if u.dim() != 2:
        raise ValueError(f"bi-half expects a (rows, bits) matrix, got shape {tuple(u.shape)}")
    n = u.shape[0]
    if n < 2:
        raise ValueError(
            "bi-half needs at least two rows per bit (a training batch of one has "
            f"no half to set to +1), got shape {tuple(u.shape)}"
        )
    # stable descending sort: among equal values the lower row index comes first (gets +1)
    order = torch.sort(u.detach(), dim=0, descending=True, stable=True).indices
    codes = torch.full_like(u, -1.0)
    codes.scatter_(0, order[: n // 2], 1.0)
    return codes


class BiHalfFunction(torch.autograd.Function):
    """b = bihalf_codes(u); dL/du = dL/db + gamma / (N K) * (u - b).

    gamma is an argument of each call, passed by the owning layer instance. The reference stores
    gamma as a class-level global, so constructing any layer changes it for all of them
    (methods.md §8 item 10); here two layers with different gamma never interfere.
    """

    @staticmethod
    def forward(
        ctx: Any, u: torch.Tensor, gamma: float
    ) -> torch.Tensor:  # ctx: FunctionCtx + gamma
        codes = bihalf_codes(u)
        ctx.save_for_backward(u, codes)
        ctx.gamma = float(gamma)
        return codes

    @staticmethod
    def backward(ctx: Any, grad_codes: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, codes = ctx.saved_tensors
        n, k = u.shape
        grad_u = grad_codes + (ctx.gamma / (n * k)) * (u - codes)
        return grad_u, None  # no gradient for gamma


def bihalf(u: torch.Tensor, gamma: float) -> torch.Tensor:
    """Training-mode bi-half of u (N, K) with weight gamma; see :class:`BiHalfFunction`."""
    return cast(torch.Tensor, BiHalfFunction.apply(u, float(gamma)))  # apply is typed Any in torch


class BiHalf(nn.Module):
    """The bi-half layer: (N, K) -> (N, K); bi-half codes in training, the identity in eval.

    Args:
        gamma: weight of the pull of u toward its code b in the backward pass (6.0: paper and
            reference). Stored per instance (see :class:`BiHalfFunction`).
    """

    def __init__(self, gamma: float = 6.0):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return u
        if distributed.world_size() == 1:
            return bihalf(u, self.gamma)
        # torchrun: the halves are split over the global batch, as in one process; each rank
        # keeps its rows (utils/distributed.py: the gather's backward sums over the ranks)
        return distributed.own_rows(bihalf(distributed.all_gather_rows(u), self.gamma))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
