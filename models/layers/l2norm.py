"""L2Norm: x / max(||x||_2, eps) along the last dimension (methods.md §2; NSH's latent head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class L2Norm(nn.Module):
    """(..., d) -> (..., d) with unit Euclidean norm (rows of norm below ``eps`` are divided by eps)."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=-1, eps=self.eps)
