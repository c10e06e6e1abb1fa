"""Tie-aware AP: the exact expectation of AP@R over random orders inside equal-distance groups.

He et al., "Hashing as Tie-Aware Learning to Rank", CVPR 2018. The ranking of the index-ordered
metrics breaks ties by database index; this one averages over every order of the items inside
each group of equal Hamming distance (uniformly random, independently per group), in closed
form from the per-distance histograms an engine returns (:class:`~utils.retrieval.inputs.PerQuery`).

Tested in ``tests/utils/test_retrieval.py`` against exhaustive enumeration of the orders inside
tied groups, exact fractions and a Monte-Carlo estimate.
"""

from __future__ import annotations

import torch

#: Queries per block of the per-query post-processing (bounds the (block, nbit + 1) temporaries).
ROW_BLOCK = 4096


def tie_aware_ap(
    n_hist: torch.Tensor, rel_hist: torch.Tensor, cutoff: int, grid_budget: int = 2**20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact expected AP@R under uniformly random orders inside equal-distance groups.

    Notation for one query: group d holds ``n_d`` items, ``r_d`` of them relevant; ``a_d`` items
    and ``b_d`` relevant items lie in groups before d. ``d*`` is the group containing rank R,
    ``m = R - a_{d*}`` of its items fall inside the cut-off, ``X`` = relevant among those m.

    *Full group* (d < d*), positions ``a+1..a+n``: ``P(rel at a+j) = r/n`` and, given that,
    the relevant items before it inside the group number ``(j-1)(r-1)/(n-1)`` on average, so::

        E_d = (r/n) * sum_{j=1..n} (b + 1 + (j-1)(r-1)/(n-1)) / (a+j)
            = (r/n) * [ (b+1) h1 + (r-1)/(n-1) * h2 ],
        h1 = H(a+n) - H(a),   h2 = sum_j (j-1)/(a+j) = n - (a+1) h1,

    with H the harmonic numbers ((r-1)/(n-1) := 0 for n = 1). These groups' orders are
    independent of X.

    *Straddling group* d*: X is hypergeometric,
    ``P(X=x) = C(r, x) C(n-r, m-x) / C(n, m)``, and given X = x the x relevant items are placed
    uniformly among the m positions, so their contribution is ``E(a, b, m, x)`` (the full-group
    formula with n -> m, r -> x). Since ``L(R) = b_{d*} + X``::

        E[AP@R] = sum_x P(X=x) * (sum_{d<d*} E_d + E(a, b, m, x)) / (b + x)   (0 when b + x = 0)

    Args:
        n_hist, rel_hist: ``(Q, nbit + 1)`` int64 items / relevant items per distance.
        cutoff: the effective cut-off R (``1..N``).
        grid_budget: most (query, x) cells of the hypergeometric grid held at once.
    Returns:
        ap: ``(Q,)`` float64 expected AP@R; possible: ``(Q,)`` bool, some relevant item lies at
        distance ``<= d*`` (used by ``zero_relevant="skip"``); group_size: ``(Q,)`` int64
        ``n_{d*}``.
    """
    device = n_hist.device
    n_db = int(n_hist[0].sum())
    k = torch.arange(1, n_db + 1, dtype=torch.float64, device=device)
    harmonic = torch.cat([k.new_zeros(1), torch.cumsum(1.0 / k, 0)])  # [i] = 1 + ... + 1/i
    log_fact = torch.lgamma(torch.cat([k.new_ones(1), k + 1]))  # [i] = log(i!)
    del k
    parts = [
        _tie_aware_block(
            n_hist[s : s + ROW_BLOCK],
            rel_hist[s : s + ROW_BLOCK],
            cutoff,
            harmonic,
            log_fact,
            grid_budget,
        )
        for s in range(0, n_hist.shape[0], ROW_BLOCK)
    ]
    ap, possible, group_size = zip(*parts)
    return torch.cat(ap), torch.cat(possible), torch.cat(group_size)


def _tie_aware_block(
    n_hist: torch.Tensor,
    rel_hist: torch.Tensor,
    cutoff: int,
    harmonic: torch.Tensor,
    log_fact: torch.Tensor,
    grid_budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`tie_aware_ap` for a block of B queries (``harmonic``, ``log_fact``: ``(N + 1,)``
    harmonic numbers and log factorials)."""
    device = n_hist.device
    n_f, r_f = n_hist.to(torch.float64), rel_hist.to(torch.float64)
    cum = n_hist.cumsum(1)
    before = cum - n_hist  # (B, nbit+1) a_d: items before group d
    rel_before = (rel_hist.cumsum(1) - rel_hist).to(torch.float64)  # b_d
    d_star = (cum < cutoff).sum(1)  # (B,) the group containing rank R

    # Full groups before d*.
    h1 = harmonic[before + n_hist] - harmonic[before]
    h2 = n_f - (before.to(torch.float64) + 1) * h1
    coef = torch.where(n_f > 1, (r_f - 1) / (n_f - 1).clamp(min=1), 0.0)
    expected = r_f / n_f.clamp(min=1) * ((rel_before + 1) * h1 + coef * h2)  # E_d
    dist = torch.arange(n_hist.shape[1], device=device)[None, :]
    full_sum = torch.where(dist < d_star[:, None], expected, 0.0).sum(1)  # (B,)
    del h1, h2, coef, expected

    # Straddling group: a items and b relevant before it, n items, r relevant, m inside R.
    sel = d_star[:, None]
    a = before.gather(1, sel).squeeze(1)
    b = rel_before.gather(1, sel).squeeze(1)
    n = n_hist.gather(1, sel).squeeze(1)
    r = rel_hist.gather(1, sel).squeeze(1)
    m = cutoff - a
    x_lo = (m - (n - r)).clamp(min=0)  # support of the hypergeometric X
    x_hi = torch.minimum(m, r)
    width = int((x_hi - x_lo).max()) + 1

    def log_comb(top: torch.Tensor, choose: torch.Tensor) -> torch.Tensor:
        return log_fact[top] - log_fact[choose] - log_fact[top - choose]

    ap = torch.empty(n_hist.shape[0], dtype=torch.float64, device=device)
    rows = max(1, grid_budget // width)
    offsets = torch.arange(width, device=device)[None, :]
    for s in range(0, n_hist.shape[0], rows):
        sl = slice(s, s + rows)
        x = x_lo[sl, None] + offsets  # (rows, width)
        valid = x <= x_hi[sl, None]
        x = torch.where(valid, x, x_lo[sl, None])
        n_s, r_s, m_s = n[sl, None], r[sl, None], m[sl, None]
        logp = log_comb(r_s, x) + log_comb(n_s - r_s, m_s - x) - log_comb(n_s, m_s)
        pmf = torch.where(valid, torch.exp(logp), 0.0)
        pmf = pmf / pmf.sum(1, keepdim=True)
        a_s = a[sl, None]
        h1_s = harmonic[a_s + m_s] - harmonic[a_s]
        m_f = m_s.to(torch.float64)
        h2_s = m_f - (a_s.to(torch.float64) + 1) * h1_s
        x_f = x.to(torch.float64)
        coef_s = torch.where(m_s > 1, (x_f - 1) / (m_f - 1).clamp(min=1), 0.0)
        b_s = b[sl, None]
        straddle = x_f / m_f * ((b_s + 1) * h1_s + coef_s * h2_s)  # E(a, b, m, x)
        denom = b_s + x_f
        val = torch.where(denom > 0, (full_sum[sl, None] + straddle) / denom.clamp(min=1), 0.0)
        ap[sl] = (pmf * val).sum(1)
    possible = (b + r.to(torch.float64)) > 0
    return ap, possible, n
