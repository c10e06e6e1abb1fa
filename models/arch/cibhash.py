"""CIBHash head (methods.md §4.5).

Paper: Qiu et al., "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021.

features x (B, D) -> Linear(D, 1024) -> ReLU -> Linear(1024, K) = logits l (B, K);
p = sigmoid(l) (B, K) in (0, 1), the Bernoulli probabilities of the bits.
- training: z = sign(p - 0.5) with a straight-through gradient (so dz/dl = p (1 - p)); values
  in {-1, +1} (0 only when p is exactly 0.5). Deterministic: like the reference and the official
  CIBHash code, no u ~ U(0, 1) is sampled.
- evaluation: z = l, the logits; sign(l) = sign(p - 0.5), so the evaluated codes agree with the
  training-time ones (up to the float rounding of p when |l| < 1e-7).
The retrieval code is z; extra["prob"] = p feeds the KL term of the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch.base import HashHead, HashOutput
from models.layers.sign import sign_ste


class CIBHashHead(HashHead):
    """x (B, D) -> HashOutput(features=x, codes=z (B, K), extra={"prob": p (B, K)}).

    Args:
        hidden: width of the encoder's hidden layer (1024, reference and official code).
    """

    def __init__(self, in_features: int, nbit: int, hidden: int = 1024):
        super().__init__(in_features, nbit)
        self.encoder = nn.Sequential(
            nn.Linear(self.in_features, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), self.nbit),
        )

    def forward(self, features: torch.Tensor) -> HashOutput:
        logits = self.encoder(features)
        prob = torch.sigmoid(logits)
        codes = sign_ste(prob - 0.5) if self.training else logits
        return HashOutput(features=features, codes=codes, extra={"prob": prob})
