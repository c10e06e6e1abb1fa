"""NSH loss: a ranking-based InfoNCE over soft-sorted latents + a quantisation term
(methods.md §4.7, steps 1-8).

Inputs: codes b (M, K) in (-1, 1) and unit latents z (M, L), rows [view 1; view 2], n = M / 2.

1. b1, b2 = b[:n], b[n:]; z1, z2 = z[:n], z[n:].
2. S = b1 b2^T / (2K) + 1/2, (n, n) in [0, 1] (= 1 - Hamming / K for +-1 codes).
3. P = SoftSort_{softsort_tau}(S), (n, n, n): P[i, r, k] softly selects the candidate k whose
   S_ik is the r-th largest of row i.
4. E[i, r] = sum_k P[i, r, k] z1_k, the soft "r-th nearest" latent (candidates are ranked by
   b1_i vs b2_k but the latent taken is z1_k, as the reference).
5. C[i, r] = <E[i, r], z2_i>. Computed as C[i, r] = sum_k P[i, r, k] G[i, k] with
   G = z2 z1^T, which is the same sum without materialising E (n x n x L).
6. For r = 0 .. m-1: logits_i = [C[i, r], C[i, m], ..., C[i, n-1]] / tau, target index 0;
   nce += mean_i CE(logits_i, 0) / m: each of the top-m ranks is a positive against the
   ranks m .. n-1 as negatives.
   ``double_softmax=True`` reproduces the reference, which applies softmax first and then
   cross-entropy to those probabilities (a second softmax inside CE), see methods.md §8.8.
   The default (False) is the InfoNCE the method intends: cross-entropy on the logits C / tau.
7. quan = mean over all M x K entries of (b - sign b)^2 (sign b is a constant target).
8. loss = nce + quan_weight * quan. Terms: "loss", "nce", "quan".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.softsort import soft_sort


class NSHLoss(nn.Module):
    """NSH loss. Defaults are the reference's *config* values.

    Args:
        m: number of top ranks used as positives (2); needs n > m rows per view.
        quan: weight of the quantisation term (1).
        tau: InfoNCE temperature (0.3).
        softsort_tau: SoftSort temperature; None = 1 / K from the codes (the config sets 1 / nbit).
        double_softmax: True reproduces the reference's softmax-then-cross-entropy (see above).
    """

    def __init__(
        self,
        m: int = 2,
        quan: float = 1.0,
        tau: float = 0.3,
        softsort_tau: float | None = None,
        double_softmax: bool = False,
    ):
        super().__init__()
        if int(m) < 1:
            raise ValueError(f"NSH loss: m (number of positive ranks) must be >= 1, got {m}")
        if tau <= 0:
            raise ValueError(f"NSH loss: tau must be > 0, got {tau}")
        if softsort_tau is not None and softsort_tau <= 0:
            raise ValueError(f"NSH loss: softsort_tau must be > 0, got {softsort_tau}")
        self.m = int(m)
        self.quan = float(quan)
        self.tau = float(tau)
        self.softsort_tau = None if softsort_tau is None else float(softsort_tau)
        self.double_softmax = bool(double_softmax)

    def forward(self, codes: torch.Tensor, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """codes (M, K), latent (M, L), rows [view 1; view 2] -> {"loss", "nce", "quan"}."""
        if codes.shape[0] % 2 or codes.shape[0] != latent.shape[0]:
            raise ValueError(
                f"NSH loss needs [view 1; view 2] rows: got codes {tuple(codes.shape)}"
                f" and latent {tuple(latent.shape)}"
            )
        n, nbit = codes.shape[0] // 2, codes.shape[1]
        if n <= self.m:
            raise ValueError(
                f"NSH ranks each image against the other images of the batch and "
                f"takes the top m={self.m} as positives, so it needs more than "
                f"{self.m} images per view (batch_size); got codes of shape "
                f"{tuple(codes.shape)}, {n} per view"
            )
        b1, b2 = codes[:n], codes[n:]
        z1, z2 = latent[:n], latent[n:]
        similarity = b1 @ b2.t() / (2 * nbit) + 0.5  # S (n, n)
        tau_s = self.softsort_tau if self.softsort_tau is not None else 1.0 / nbit
        permutation = soft_sort(similarity, tau_s)  # P (n, n, n)
        latent_dot = z2 @ z1.t()  # G[i, k] = <z1_k, z2_i>
        ranked = torch.einsum("irk,ik->ir", permutation, latent_dot)  # C (n, n)

        negatives = ranked[:, self.m :]
        target = torch.zeros(n, dtype=torch.long, device=codes.device)
        nce = codes.new_zeros(())
        for r in range(self.m):
            logits = torch.cat([ranked[:, r : r + 1], negatives], dim=1) / self.tau
            if self.double_softmax:  # reference: cross-entropy of the softmax probabilities
                logits = F.softmax(logits, dim=1)
            nce = nce + F.cross_entropy(logits, target) / self.m

        quan = (codes - torch.sign(codes).detach()).pow(2).mean()
        return {"loss": nce + self.quan * quan, "nce": nce, "quan": quan}
