"""NSH head (Naturally Sort Hash), as the SDC reference code implements it (methods.md §4.7).

Two heads on the backbone features x (B, D):
- hash encoder:   Linear(D, K) -> tanh           -> b in (-1, 1)^K, the retrieval code;
- latent encoder: Linear(D, latent_dim) -> L2Norm -> z with ||z|| = 1 (latent_dim 1024).
The reference comments out a BatchNorm between Linear and tanh, and builds a SoftSort it never
uses; neither is here (the loss owns its SoftSort).
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch.base import HashHead, HashOutput
from models.layers.l2norm import L2Norm


class NSHHead(HashHead):
    """features (B, D) -> HashOutput(features, codes=b (B, K) in (-1, 1), extra={"latent": z (B, L)})."""

    def __init__(self, in_features: int, nbit: int, latent_dim: int = 1024):
        super().__init__(in_features, nbit)
        self.latent_dim = int(latent_dim)
        self.hash_encoder = nn.Sequential(nn.Linear(self.in_features, self.nbit), nn.Tanh())
        self.latent_encoder = nn.Sequential(nn.Linear(self.in_features, self.latent_dim), L2Norm())

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(
            features=features,
            codes=self.hash_encoder(features),
            extra={"latent": self.latent_encoder(features)},
        )
