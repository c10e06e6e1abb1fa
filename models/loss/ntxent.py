"""NT-Xent (normalised temperature-scaled cross entropy), SimCLR (Chen et al., ICML 2020).

Used by SDC-SimCLR (on continuous codes) and CIBHash (on straight-through binary codes).
For z_i, z_j of shape (n, d): Z = [z_i; z_j] (2n, d), S_ab = cos(Z_a, Z_b) / tau. Anchor a's
positive is a + n (mod 2n); its candidates are every b != a. The loss is the mean over the 2n
anchors of -S_{a,p(a)} + log sum_{b != a} exp(S_ab) (methods.md §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scalar NT-Xent loss of two views (n, d) and (n, d), paired row by row."""
    if z_i.shape != z_j.shape or z_i.dim() != 2:
        raise ValueError(
            f"nt_xent needs two (n, d) views of equal shape, got "
            f"{tuple(z_i.shape)} and {tuple(z_j.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
    n = z_i.shape[0]
    z = F.normalize(torch.cat([z_i, z_j]), dim=1, eps=1e-8)
    similarity = z @ z.t() / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    positives = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(similarity, positives)
