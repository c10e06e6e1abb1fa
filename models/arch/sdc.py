"""SDC hashing head (Unsupervised Hashing with Similarity Distribution Calibration, BMVC 2023).

Linear(D, H) -> GELU -> Linear(H, K) -> BatchNorm1d(K); the BN output v is the continuous code.
methods.md §4.1: the reference uses H = D (the backbone width); the supplement says 4096, which
is the same for VGG16. There is no tanh or sign in the model.
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch.base import HashHead, HashOutput


class SDCHead(HashHead):
    """features (B, D) -> HashOutput(features, codes=v (B, K))."""

    def __init__(self, in_features: int, nbit: int, hidden: int | None = None):
        super().__init__(in_features, nbit)
        hidden = int(hidden) if hidden else self.in_features  # reference: hidden width = D
        self.hash_fc = nn.Sequential(
            nn.Linear(self.in_features, hidden),
            nn.GELU(),  # exact (erf) GELU, as the reference
            nn.Linear(hidden, self.nbit),
            nn.BatchNorm1d(self.nbit),  # affine, eps 1e-5, momentum 0.1 (PyTorch defaults)
        )

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(features=features, codes=self.hash_fc(features))
