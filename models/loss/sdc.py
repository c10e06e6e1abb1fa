"""SDC loss: similarity distribution calibration + quantisation (+ optional NT-Xent).

Paper: "Unsupervised Hashing with Similarity Distribution Calibration", BMVC 2023; the
specification of the reference code is methods.md §4.1-4.2.

Given backbone features x (M, D) and continuous codes v (M, K):
1. pair rows (a_k, b_k), k = 1..n (two different images; see ``pairing``);
2. t_k = cos(x_a, x_b) (detached) only fixes an order: sort t ascending -> permutation pi;
3. the code similarities s_k = cos(v_a, v_b), taken in that order, are pulled toward the
   midpoint quantiles of a Beta(alpha, beta) mapped to [-1, 1]:
   c_k = 2 F^-1((2k - 1) / (2n)) - 1;
4. L = rec * mean|s_pi(k) - c_k| + quan * mean_i(1 - cos(v_i, sign v_i)) [+ cont * NT-Xent].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_distribution
from torch import nn

from models.loss.ntxent import nt_xent


@lru_cache(maxsize=64)
def _beta_targets(n: int, alpha: float, beta: float, clamp_at_zero: bool) -> tuple[float, ...]:
    # float64 grid; the reference builds it in float32 (differences below 1e-6)
    grid = (2.0 * np.arange(1, n + 1) - 1.0) / (2.0 * n)
    targets = 2.0 * beta_distribution.ppf(grid, alpha, beta) - 1.0
    if clamp_at_zero:
        targets = np.maximum(targets, 0.0)
    return tuple(float(t) for t in targets)


def calibration_targets(
    n: int, alpha: float = 5.0, beta: float = 5.0, clamp_at_zero: bool = False
) -> torch.Tensor:
    """The n ascending targets c_k = 2 F^-1_{Beta(alpha, beta)}((2k - 1) / 2n) - 1, shape (n,).

    Cached per (n, alpha, beta, clamp) instead of recomputed every step as the reference does.
    Example: n = 32, Beta(5, 5) gives c_1 = -0.620733, c_32 = +0.620733.
    """
    return torch.tensor(
        _beta_targets(int(n), float(alpha), float(beta), bool(clamp_at_zero)), dtype=torch.float64
    )


def pair_indices(m: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (a, b) of the calibration pairs among m rows (m even).

    "halves":      a = [0, m/2),             b = [m/2, m)            (plain SDC, n = m/2)
    "four_blocks": a = [0, q) + [2q, 3q),    b = [q, 2q) + [3q, 4q)  with q = m // 4
                   (SDC-SimCLR: rows are [view 1; view 2], so pairs never cross views)
    """
    if pairing == "halves":
        half = m // 2
        return torch.arange(0, half), torch.arange(half, 2 * half)
    if pairing == "four_blocks":
        q = m // 4
        a = torch.cat([torch.arange(0, q), torch.arange(2 * q, 3 * q)])
        b = torch.cat([torch.arange(q, 2 * q), torch.arange(3 * q, 4 * q)])
        return a, b
    raise ValueError(f"Unknown SDC pairing {pairing!r}: use 'halves' or 'four_blocks'")


class SDCLoss(nn.Module):
    """SDC's loss. Defaults are the reference's *config* values (methods.md §4.1).

    Args:
        rec: weight of the calibration term (1).
        rec_type: "l1" (default), "l2", or "hinge" (one-sided max(s - c, 0)).
        quan: weight of the quantisation term (1).
        quan_type: "cs" = mean(1 - cos(v, sign v)) (default), "l1", "l2", "p3".
        beta_ab: shape of the symmetric Beta target (5); beta_a / beta_b override it when both
            are set (-1 = unset, as the reference).
        ortho_constraint: clamp the targets at 0 (True only in SDC-SimCLR).
        pairing: "halves" (SDC) or "four_blocks" (SDC-SimCLR).
        cont: weight of the NT-Xent term; used when ``temperature`` is not None.
        temperature: NT-Xent temperature (0.3 in SDC-SimCLR), None = no contrastive term.
    """

    def __init__(
        self,
        rec: float = 1.0,
        rec_type: str = "l1",
        quan: float = 1.0,
        quan_type: str = "cs",
        beta_ab: float = 5.0,
        beta_a: float = -1.0,
        beta_b: float = -1.0,
        ortho_constraint: bool = False,
        pairing: str = "halves",
        cont: float = 1.0,
        temperature: float | None = None,
    ):
        super().__init__()
        if (beta_a == -1) != (beta_b == -1):
            raise ValueError("SDC loss: set both beta_a and beta_b, or neither (use beta_ab)")
        if rec_type not in ("l1", "l2", "hinge"):
            raise ValueError(f"SDC loss: rec_type {rec_type!r} is not one of l1, l2, hinge")
        if quan_type not in ("cs", "l1", "l2", "p3"):
            raise ValueError(f"SDC loss: quan_type {quan_type!r} is not one of cs, l1, l2, p3")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"SDC loss: temperature must be > 0 (or None), got {temperature}")
        pair_indices(4, pairing)  # validates the name
        self.rec, self.rec_type = float(rec), rec_type
        self.quan, self.quan_type = float(quan), quan_type
        self.alpha, self.beta = (beta_ab, beta_ab) if beta_a == -1 else (beta_a, beta_b)
        self.ortho_constraint = bool(ortho_constraint)
        self.pairing = pairing
        self.cont = float(cont)
        self.temperature = temperature

    def calibration_pairs(
        self, features: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sequences the calibration term pulls together (steps 1-3 above).

        features (M, D), codes (M, K) -> (s_pi(k), c_k), both (n,): the code similarities of
        the n pairs in ascending feature-similarity order, and the ascending Beta targets.
        Also read by the training diagnostics (utils/diagnostics.py) to show the calibration.
        """
        m = codes.shape[0] - codes.shape[0] % 2  # an odd last row is dropped, as the reference
        if m < 2:
            raise ValueError(
                "SDC needs at least two rows per batch to form a pair, got codes of "
                f"shape {tuple(codes.shape)}"
            )
        x, v = features[:m], codes[:m]
        a, b = pair_indices(m, self.pairing)
        a, b = a.to(v.device), b.to(v.device)
        with torch.no_grad():
            feature_similarity = F.cosine_similarity(x[a].float(), x[b].float(), dim=1, eps=1e-8)
            # stable sort for determinism; the reference's torch.sort is not stable
            order = torch.sort(feature_similarity, stable=True).indices
        code_similarity = F.cosine_similarity(v[a], v[b], dim=1, eps=1e-8)[order]
        targets = calibration_targets(len(a), self.alpha, self.beta, self.ortho_constraint)
        return code_similarity, targets.to(device=v.device, dtype=v.dtype)

    def forward(self, features: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (M, D), codes (M, K) -> {"loss", "rec", "quan"[, "cont"]} scalars."""
        code_similarity, targets = self.calibration_pairs(features, codes)
        m = codes.shape[0] - codes.shape[0] % 2
        v = codes[:m]
        gap = code_similarity - targets
        if self.rec_type == "l1":
            rec = gap.abs().mean()
        elif self.rec_type == "l2":
            rec = gap.pow(2).mean()
        else:
            rec = gap.clamp(min=0).mean()

        target_sign = torch.sign(v).detach()
        if self.quan_type == "cs":
            quan = (1 - F.cosine_similarity(v, target_sign, dim=1, eps=1e-8)).mean()
        elif self.quan_type == "l1":
            quan = (v - target_sign).abs().mean()
        elif self.quan_type == "l2":
            quan = (v - target_sign).pow(2).mean()
        else:
            quan = (v - target_sign).abs().pow(3).mean()

        terms = {"rec": rec, "quan": quan}
        loss = self.rec * rec + self.quan * quan
        if self.temperature is not None and self.cont != 0:
            half = m // 2
            cont = nt_xent(v[:half], v[half:], float(self.temperature))
            terms["cont"] = cont
            loss = loss + self.cont * cont
        return {"loss": loss, **terms}
