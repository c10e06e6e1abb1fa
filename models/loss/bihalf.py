"""BiHalf loss (methods.md §4.4).

Paper: Li & van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy", AAAI 2021.

Only the similarity-preserving term of UGH: mse = mean_k (cos(b_k, b_{k+M/2}) -
stopgrad cos(x_k, x_{k+M/2}))^2 with the same halves pairing and odd-row drop
(:func:`models.loss.ugh.halves_cosine_mse`). There is no quantisation term: BiHalf's pull of h
toward its code lives in the bi-half layer's backward (models.layers.bihalf).
"""

from __future__ import annotations

import torch
from torch import nn

from models.loss.ugh import halves_cosine_mse


class BiHalfLoss(nn.Module):
    """BiHalf loss; term "mse" (= "loss")."""

    def forward(
        self, features: torch.Tensor, codes: torch.Tensor, binary: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """features x (M, D), codes h (M, K; unused), binary b (M, K) -> {"loss", "mse"}."""
        mse = halves_cosine_mse(features, binary)
        return {"loss": mse, "mse": mse}
