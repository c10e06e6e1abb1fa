"""SoftSort: a continuous relaxation of the permutation matrix that sorts a vector.

Prillo & Eisenschlos, "SoftSort: A Continuous Relaxation for the argsort Operator", ICML 2020;
used by NSH (methods.md §2, §4.7).

For scores S (..., n), each row is sorted in descending order, sigma = sort_desc(S), and

    P[..., r, k] = softmax_k( -|S[..., k] - sigma[..., r]| ** pow / tau )        (..., n, n)

Row r of P is a probability vector over the n positions k that softly selects the position holding
the r-th largest score; as tau -> 0 it tends to the hard permutation matrix (for distinct scores).
The gradient flows through S both directly and through the sorted values (sorting is
differentiable with respect to the values; the permutation itself is piecewise constant), by
ordinary autograd. ``hard=True`` returns the hard permutation matrix in the forward pass with the
soft matrix's gradient (straight-through), as in the paper's code; NSH uses the soft one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_sort(
    scores: torch.Tensor, tau: float = 1.0, pow: float = 1.0, hard: bool = False
) -> torch.Tensor:
    """(..., n) scores -> (..., n, n) soft permutation matrices, rows = ranks, columns = positions."""
    if tau <= 0:
        raise ValueError(f"SoftSort temperature must be > 0, got {tau}")
    ordered = scores.sort(dim=-1, descending=True).values  # sigma, (..., n)
    # distance[..., r, k] = |S_k - sigma_r| ** pow
    distance = (scores.unsqueeze(-2) - ordered.unsqueeze(-1)).abs().pow(pow)
    soft = F.softmax(-distance / tau, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot + (soft - soft.detach())
