"""WCH loss: soft-target cross-entropy between the views' codes + a bit-balance regulariser
(Weighted Contrastive Hashing, ACCV 2022; methods.md §4.6).

Inputs: h1, h2 (B, K) straight-through +-1 codes of the two views, weighted (B, B) soft targets.
- logits[i, j] = <h1_i, h2_j> / K / temperature;
- ce = -(1/B) sum_i sum_j T_ij log softmax_j(logits_i), with T = weighted as is (unnormalised,
  rows sum to >= 1; PyTorch's cross-entropy with probability targets, as the reference), or T =
  weighted / row sums with ``normalize_w``;
- reg = (1/K) sum_k ((1/B) sum_i h1_ik)^2 - (1/(BK)) sum_ik h1_ik^2: bit balance over h1 only,
  minus a term that is 1 in value for +-1 codes and, through the straight-through sign, pushes
  |tanh| up;
- loss = ce + reg. Terms: "loss", "ce", "reg".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WCHLoss(nn.Module):
    """Args: temperature (0.3), normalize_w (False, as the reference)."""

    def __init__(self, temperature: float = 0.3, normalize_w: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"WCH loss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.normalize_w = bool(normalize_w)

    def forward(
        self, h1: torch.Tensor, h2: torch.Tensor, weighted: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """h1, h2 (B, K), weighted (B, B) -> {"loss", "ce", "reg"} scalars."""
        if h1.shape != h2.shape or weighted.shape != (h1.shape[0], h1.shape[0]):
            raise ValueError(
                f"WCH loss: got h1 {tuple(h1.shape)}, h2 {tuple(h2.shape)}, "
                f"weighted {tuple(weighted.shape)}"
            )
        nbit = h1.shape[1]
        logits = h1 @ h2.t() / nbit / self.temperature
        target = weighted
        if self.normalize_w:
            target = weighted / weighted.sum(dim=1, keepdim=True)
        ce = F.cross_entropy(logits, target)
        reg = h1.mean(dim=0).pow(2).mean() - h1.pow(2).mean()
        return {"loss": ce + reg, "ce": ce, "reg": reg}
