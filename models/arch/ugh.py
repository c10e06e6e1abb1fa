"""Unsupervised GreedyHash head (methods.md §4.3).

Paper: Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN",
NeurIPS 2018 (its unsupervised variant), as the SDC reference's ``ugh``.

features x (B, D) -> h = Linear(D, K)(x) (B, K) -> b = sign(h) with a straight-through gradient,
in training AND evaluation (as the reference). The retrieval code is h (its sign equals b up to
exact zeros, which the engine maps to +1).
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch.base import HashHead, HashOutput
from models.layers.sign import sign_ste


class UGHHead(HashHead):
    """x (B, D) -> HashOutput(features=x, codes=h (B, K), extra={"binary": sign_ste(h) (B, K)})."""

    def __init__(self, in_features: int, nbit: int):
        super().__init__(in_features, nbit)
        self.hash_fc = nn.Linear(self.in_features, self.nbit)  # PyTorch default init

    def forward(self, features: torch.Tensor) -> HashOutput:
        h = self.hash_fc(features)
        return HashOutput(features=features, codes=h, extra={"binary": sign_ste(h)})
