"""Unsupervised GreedyHash loss (methods.md §4.3).

Paper: Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN",
NeurIPS 2018 (unsupervised variant), as the SDC reference's ``UnsupGHLoss``.

Inputs: features x (M, D), continuous codes h (M, K), straight-through binary codes b (M, K).
1. An odd last row of x and b is dropped (h is kept: it only enters an elementwise mean).
2. Pair row k with row k + M/2 (two different images of the shuffled batch), k < M/2:
   s_k = cos(b_k, b_{k+M/2}), t_k = cos(x_k, x_{k+M/2}) with t detached.
3. mse  = (1 / (M/2)) sum_k (s_k - t_k)^2
4. quan = mean over all entries of h of | |h| - 1 |^pow
5. loss = mse + alpha * quan
cos(a, b) = a.b / max(|a| |b|, 1e-8), as torch.nn.functional.cosine_similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def halves_cosine_mse(features: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """mean_k (cos(b_k, b_{k+M/2}) - stopgrad cos(x_k, x_{k+M/2}))^2 over M rows (odd last row
    dropped); features (M, D), binary (M, K) -> scalar. Shared by UGH and BiHalf."""
    m = binary.shape[0] - binary.shape[0] % 2
    if m < 2:
        raise ValueError(
            "UGH/BiHalf pair row k with row k + M/2 of a batch, so they need at "
            f"least two rows, got binary codes of shape {tuple(binary.shape)}"
        )
    half = m // 2
    with torch.no_grad():
        target = F.cosine_similarity(features[:half], features[half:m], dim=1, eps=1e-8)
    similarity = F.cosine_similarity(binary[:half], binary[half:m], dim=1, eps=1e-8)
    return (similarity - target.to(similarity.dtype)).pow(2).mean()


class UGHLoss(nn.Module):
    """UnsupGH loss; terms "mse", "quan", total "loss".

    Args:
        alpha: weight of the quantisation term (0.1, reference config; its class default is 1).
        pow: exponent of the quantisation penalty | |h| - 1 |^pow (3.0, reference).
    """

    def __init__(self, alpha: float = 0.1, pow: float = 3.0):  # noqa: A002 (reference's key name)
        super().__init__()
        self.alpha = float(alpha)
        self.pow = float(pow)

    def forward(
        self, features: torch.Tensor, codes: torch.Tensor, binary: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """features x (M, D), codes h (M, K), binary b (M, K) -> {"loss", "mse", "quan"}."""
        mse = halves_cosine_mse(features, binary)
        quan = (codes.abs() - 1).abs().pow(self.pow).mean()
        return {"loss": mse + self.alpha * quan, "mse": mse, "quan": quan}
