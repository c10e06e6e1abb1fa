"""BiHalf head (methods.md §4.4).

Paper: Li & van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy", AAAI 2021.

features x (B, D) -> h = Linear(D, K)(x) (B, K) -> b = BiHalf_gamma(h) (B, K):
- training: b in {-1, +1}, exactly half of the batch +1 per bit (models.layers.bihalf);
- evaluation: b = h (the layer is the identity).
The retrieval code is h, binarised by sign at 0 (not at the median), as the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch.base import HashHead, HashOutput
from models.layers.bihalf import BiHalf


class BiHalfHead(HashHead):
    """x (B, D) -> HashOutput(features=x, codes=h (B, K), extra={"binary": BiHalf(h) (B, K)}).

    Args:
        gamma: the bi-half layer's backward weight (6.0, paper and reference).
    """

    def __init__(self, in_features: int, nbit: int, gamma: float = 6.0):
        super().__init__(in_features, nbit)
        self.hash_fc = nn.Linear(self.in_features, self.nbit)  # PyTorch default init
        self.bihalf = BiHalf(gamma)  # follows the head's train()/eval() mode

    def forward(self, features: torch.Tensor) -> HashOutput:
        h = self.hash_fc(features)
        return HashOutput(features=features, codes=h, extra={"binary": self.bihalf(h)})
