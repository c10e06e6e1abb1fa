"""WCH head (Weighted Contrastive Hashing; Yu et al., ACCV 2022), as the SDC reference code runs
it (methods.md §4.6, §8.9). Reads the backbone's patch tokens (B, P, d), CLS excluded.

Hash function H(y): a = tanh(b(GELU(fc(y)))), output sign(a) with a straight-through (identity) gradient to a
(:func:`models.layers.sign.sign_ste`; the reference writes it a + stopgrad(sign(a) - a)), so the
codes are +-1 valued (0 only where a == 0 exactly).
Trainable: fc Linear(d, d), fc_norm LayerNorm(d, eps 1e-6), b Linear(d, K). Initialisation as the
reference: fc.weight, b.weight Kaiming-uniform (mode fan_out, a = 0: bound sqrt(6 / fan_out));
both biases N(0, 1); LayerNorm weight 1, bias 0.

Training (``train_forward``), with the two views' tokens X1, X2 (B, P, d):
1. parameter-free cross-attention (temperature T = 1): S_n[i, j] = cos(X1_n[i], X2_n[j]);
   X1'_n[j] = sum_i softmax_i(S_n[i, j] / T) X1_n[i]; X2'_n[i] = sum_j softmax_j(S_n[i, j] / T) X2_n[j]
   (mixtures of the unnormalised tokens);
2. W0[n, m] = (1 / P) sum_i max_j cos(X1'_n[i], X2'_m[j]) over all image pairs (B, B);
   Pi = softmax_m(W0 / tau_w) row-wise; weighted[n, m] = Pi[n, m] / Pi[m, m];
3. h1 = H(fc_norm(mean_j X1'_n[j])), h2 = H(fc_norm(mean_i X2'_n[i])).
Evaluation (``forward``): H(fc_norm(mean of the patch tokens)), no cross-attention (the train /
test asymmetry of the original WCH code, kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.arch.base import HashHead, HashOutput
from models.layers.sign import sign_ste

_COS_EPS = 1e-8  # as torch.nn.functional.cosine_similarity


def cross_attention(
    x1: torch.Tensor, x2: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free cross-attention between two views' tokens (B, P, d) -> (X1', X2'), each (B, P, d).

    X1'[n, j] mixes view-1 tokens for each view-2 position j; X2'[n, i] mixes view-2 tokens for
    each view-1 position i (weights from cosine similarities, mixtures of the raw tokens).
    """
    similarity = (
        F.normalize(x1, dim=-1, eps=_COS_EPS)
        @ F.normalize(x2, dim=-1, eps=_COS_EPS).transpose(1, 2)
    ) / temperature  # S[n, i, j]
    x1_mixed = (
        F.softmax(similarity, dim=1).transpose(1, 2) @ x1
    )  # [n, j] = sum_i softmax_i * X1[n, i]
    x2_mixed = F.softmax(similarity, dim=2) @ x2  # [n, i] = sum_j softmax_j * X2[n, j]
    return x1_mixed, x2_mixed


def mean_max_cosine(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """W0[n, m] = (1 / P) sum_i max_j cos(a[n, i], b[m, j]) for a (Na, P, d), b (Nb, Q, d) -> (Na, Nb).

    The full computation holds Na x Nb x P x Q cosines (64 x 64 x 196 x 196 = 157 M floats,
    0.63 GB fp32, in the reference). Here the rows n are processed ``chunk_size`` at a time, so at
    most chunk_size x Nb x P x Q cosines exist at once. When gradients are recorded, ``max(dim)``
    keeps only its argmax indices (chunk x Nb x P) for the backward pass, not the cosines (``amax``
    would keep them), so the bound holds for a trainable backbone too. ``chunk_size=None`` = all
    rows at once.
    """
    a = F.normalize(a, dim=-1, eps=_COS_EPS)
    b = F.normalize(b, dim=-1, eps=_COS_EPS)
    step = a.shape[0] if not chunk_size else max(1, int(chunk_size))
    rows = []
    for start in range(0, a.shape[0], step):
        cosines = torch.einsum("nid,mjd->nmij", a[start : start + step], b)  # (c, Nb, P, Q)
        rows.append(cosines.max(dim=3).values.mean(dim=2))  # (c, Nb)
    return torch.cat(rows)


def weight_matrix(w0: torch.Tensor, tau_w: float) -> torch.Tensor:
    """Soft pair weights from W0 (B, B): Pi = softmax over each row of W0 / tau_w, then
    weighted[n, m] = Pi[n, m] / Pi[m, m].

    Reference quirk, reproduced (methods.md §4.6, §8.9; the original WCH code does the same): the
    division broadcasts the diagonal vector over the last dimension, so *column* m is divided by
    row m's diagonal entry Pi[m, m], not by row n's own Pi[n, n]. The diagonal is exactly 1; the
    rows do not sum to 1. Not detached (as the reference); with a frozen backbone it has no
    trainable ancestors anyway.
    """
    pi = F.softmax(w0 / tau_w, dim=1)
    return pi / pi.diagonal()  # (B, B) / (B,): divides column m by pi[m, m]


class WCHHead(HashHead):
    """Token head: ``forward(tokens (B, P, d)) -> HashOutput(features=mean token (B, d),
    codes=+-1 (B, K))``; ``train_forward(tokens1, tokens2) -> (h1, h2, weighted)``.

    Args:
        in_features: backbone.features_size (= the token width d for ViT-B/16: 768).
        nbit: K.
        tau_w: temperature of the pair weights (0.2).
        attention_temperature: T of the cross-attention (1).
        token_dim: the token width d when it differs from ``in_features`` (the tiny test backbone);
            None = in_features.
        max_chunk_elements: bound on the cosines held at once by :func:`mean_max_cosine`
            (2**25 = 128 MiB fp32: 13 images per chunk at B = 64, P = 196).
    """

    input_kind = "tokens"

    def __init__(
        self,
        in_features: int,
        nbit: int,
        tau_w: float = 0.2,
        attention_temperature: float = 1.0,
        token_dim: int | None = None,
        max_chunk_elements: int = 2**25,
    ):
        super().__init__(in_features, nbit)
        if tau_w <= 0 or attention_temperature <= 0:
            raise ValueError(
                f"WCH: tau_w and attention_temperature must be > 0, got {tau_w} "
                f"and {attention_temperature}"
            )
        self.token_dim = int(token_dim) if token_dim else self.in_features
        self.tau_w = float(tau_w)
        self.attention_temperature = float(attention_temperature)
        self.max_chunk_elements = int(max_chunk_elements)
        d = self.token_dim
        self.fc = nn.Linear(d, d)
        self.fc_norm = nn.LayerNorm(d, eps=1e-6)
        self.b = nn.Linear(d, self.nbit)
        for layer in (self.fc, self.b):  # reference initialisation
            nn.init.kaiming_uniform_(layer.weight, a=0, mode="fan_out")
            nn.init.normal_(layer.bias, 0.0, 1.0)

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"WCH expects patch tokens (B, P, token_dim={self.token_dim}) but "
                f"got shape {tuple(tokens.shape)}"
            )

    def hash(self, pooled: torch.Tensor) -> torch.Tensor:
        """H(y) for y = fc_norm(pooled tokens) (B, d) -> +-1 codes (B, K), straight-through to tanh."""
        a = torch.tanh(self.b(F.gelu(self.fc(self.fc_norm(pooled)))))
        return sign_ste(a)

    def forward(self, tokens: torch.Tensor) -> HashOutput:
        self._check(tokens)
        pooled = tokens.mean(dim=1)
        return HashOutput(features=pooled, codes=self.hash(pooled))

    def chunk_size(self, batch: int, p: int, q: int) -> int:
        return max(1, self.max_chunk_elements // max(1, batch * p * q))

    def weights(self, x1_mixed: torch.Tensor, x2_mixed: torch.Tensor) -> torch.Tensor:
        """The (B, B) soft targets from the cross-attended tokens."""
        chunk = self.chunk_size(x2_mixed.shape[0], x1_mixed.shape[1], x2_mixed.shape[1])
        return weight_matrix(mean_max_cosine(x1_mixed, x2_mixed, chunk), self.tau_w)

    def train_forward(
        self, tokens1: torch.Tensor, tokens2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two views' tokens (B, P, d) -> h1, h2 (B, K) +-1 codes and the weights (B, B)."""
        self._check(tokens1)
        self._check(tokens2)
        if tokens1.shape != tokens2.shape:
            raise ValueError(
                f"WCH views differ in shape: {tuple(tokens1.shape)} vs {tuple(tokens2.shape)}"
            )
        x1_mixed, x2_mixed = cross_attention(tokens1, tokens2, self.attention_temperature)
        weighted = self.weights(x1_mixed, x2_mixed)
        h1 = self.hash(x1_mixed.mean(dim=1))
        h2 = self.hash(x2_mixed.mean(dim=1))
        return h1, h2, weighted
