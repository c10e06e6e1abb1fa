"""CIBHash loss (methods.md §4.5).

Paper: Qiu et al., "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021.

Inputs, for B images seen in two augmented views i and j: bit probabilities p_i, p_j (B, K) in
(0, 1) and straight-through codes z_i, z_j (B, K).
- contrast = NT-Xent(z_i, z_j; tau) (models.loss.ntxent; cosine on the codes).
- kl = 1/2 [KL(p_i || sg p_j) + KL(p_j || sg p_i)], with the Bernoulli KL
  KL(p || q) = (1/B) sum_rows sum_bits [p (log(p + eps) - log(q + eps))
                                      + (1 - p) (log(1 - p + eps) - log(1 - q + eps))], eps = 1e-8,
  and sg = stop-gradient (the target side is detached, as the reference).
- loss = contrast + beta * kl.
"""

from __future__ import annotations

import torch
from torch import nn

from models.loss.ntxent import nt_xent


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(p || q) of independent Bernoulli bits, summed over bits, averaged over rows.

    p, q: (B, K) probabilities -> scalar. q is used as given (detach it for a fixed target).
    """
    kl = p * (torch.log(p + eps) - torch.log(q + eps)) + (1 - p) * (
        torch.log(1 - p + eps) - torch.log(1 - q + eps)
    )
    return kl.sum(dim=1).mean()


class CIBHashLoss(nn.Module):
    """CIBHash loss; terms "contrast", "kl", total "loss".

    Args:
        temperature: NT-Xent temperature tau (0.3, reference and official code).
        beta: weight of the KL term (0.001, reference and official code).
        eps: inside the logs of the Bernoulli KL (1e-8, reference).
    """

    def __init__(self, temperature: float = 0.3, beta: float = 0.001, eps: float = 1e-8):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"CIBHash loss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.eps = float(eps)

    def forward(
        self,
        prob_i: torch.Tensor,
        prob_j: torch.Tensor,
        codes_i: torch.Tensor,
        codes_j: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """p_i, p_j, z_i, z_j: (B, K) each -> {"loss", "contrast", "kl"}."""
        contrast = nt_xent(codes_i, codes_j, self.temperature)
        kl = 0.5 * (
            bernoulli_kl(prob_i, prob_j.detach(), self.eps)
            + bernoulli_kl(prob_j, prob_i.detach(), self.eps)
        )
        return {"loss": contrast + self.beta * kl, "contrast": contrast, "kl": kl}
