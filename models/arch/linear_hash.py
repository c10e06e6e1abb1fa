"""The classic non-deep baselines LSH, PCAH and ITQ: a fixed linear projection of backbone features.

Every head computes codes = (x - mean) @ projection for features x (B, D), with two buffers
``mean`` (D,) and ``projection`` (D, K) and no trainable parameter; the binary code is the
engine's sign (+1 where the code is >= 0). The buffers are fitted in closed form on the training
split's features by :meth:`LinearHashHead.fit` (called by ``models.trainers.closed_form``) and are
part of the state dict, so checkpoints and val.py restore them.

- LSH:  random Gaussian hyperplanes (Charikar, "Similarity estimation techniques from rounding
        algorithms", STOC 2002 -- SimHash; the LSH baseline of every hashing paper).
- PCAH: the top-K principal directions of the centred training features (the PCAH baseline of
        Wang, Kumar & Chang, CVPR 2010 and of Gong & Lazebnik, CVPR 2011).
- ITQ:  Iterative Quantization (Gong & Lazebnik, "Iterative Quantization: A Procrustean Approach to
        Learning Binary Codes", CVPR 2011): PCA to K dimensions, V (N, K), then an orthogonal
        rotation R minimising the quantisation loss ||B - V R||_F^2 by alternating B = sign(V R)
        and R = the orthogonal Procrustes solution (SVD of B^T V), 50 iterations, R initialised
        as a random orthogonal matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group
from sklearn.decomposition import PCA

from models.arch.base import HashHead, HashOutput
from utils.errors import ConfigError, TrainingError


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"fit needs features (N, D), got shape {x.shape}")
    return x


def _sign(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0, else -1 (the project's binarisation, never 0)."""
    return np.where(x >= 0, 1.0, -1.0)


class LinearHashHead(HashHead):
    """features (B, D) -> HashOutput(features, codes = (features - mean) @ projection (B, K)).

    Subclasses implement :meth:`fit_projection`; :meth:`fit` stores its result in the buffers.
    """

    method = "linear"
    mean: torch.Tensor  # buffers (D,), (D, K), () bool, registered in __init__
    projection: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, in_features: int, nbit: int):
        super().__init__(in_features, nbit)
        self.register_buffer("mean", torch.zeros(self.in_features))
        self.register_buffer("projection", torch.zeros(self.in_features, self.nbit))
        self.register_buffer("fitted", torch.tensor(False))

    def max_nbit(self, n_train: int) -> int | None:
        """The largest nbit the method can produce from n_train features of width D (None = any)."""
        return None

    def check_nbit(self, n_train: int) -> None:
        limit = self.max_nbit(n_train)
        if limit is not None and self.nbit > limit:
            raise ConfigError(
                f"{self.method.upper()} projects onto principal directions, of which there are at "
                f"most min(features D = {self.in_features}, training items N = {n_train}) = "
                f"{limit}; got model.nbit={self.nbit}: use model.nbit <= {limit} or a backbone "
                "with more features"
            )

    def fit_projection(
        self, x: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """x (N, D) float64 -> (mean (D,), projection (D, K), info dict of numbers/lists)."""
        raise NotImplementedError

    def fit(self, features: torch.Tensor | np.ndarray, seed: int) -> dict[str, Any]:
        """Fit the buffers on training features (N, D) (tensor or array); returns fit info."""
        x = _as_float64(features)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"fit: features have width {x.shape[1]}, the head expects {self.in_features}"
            )
        self.check_nbit(x.shape[0])
        if not np.isfinite(x).all():
            raise TrainingError(
                f"{self.method.upper()}: the training features contain NaN or "
                "infinite values; check the backbone and the input data"
            )
        mean, projection, info = self.fit_projection(x, int(seed))
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.projection.copy_(torch.as_tensor(projection, dtype=self.projection.dtype))
        self.fitted.fill_(True)
        return info

    def forward(self, features: torch.Tensor) -> HashOutput:
        if not bool(self.fitted):
            raise TrainingError(
                f"The {self.method.upper()} projection has not been fitted: "
                "train it with main_v2.py (closed form) or load its checkpoint"
            )
        codes = (features - self.mean.to(features.dtype)) @ self.projection.to(features.dtype)
        return HashOutput(features=features, codes=codes)


class LSHHead(LinearHashHead):
    """Random hyperplanes: projection (D, K) with i.i.d. N(0, 1) entries drawn from ``seed``.

    Charikar's SimHash uses hyperplanes through the origin. With ``center`` (default) the
    features are first centred by their training mean, as the LSH baselines of the hashing
    literature run on zero-centred data: backbone features after a ReLU are all >= 0, and
    uncentred hyperplanes then give strongly unbalanced bits.
    """

    method = "lsh"

    def __init__(self, in_features: int, nbit: int, center: bool = True):
        super().__init__(in_features, nbit)
        self.center = bool(center)

    def fit_projection(
        self, x: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        mean = x.mean(axis=0) if self.center else np.zeros(x.shape[1])
        return mean, rng.standard_normal((x.shape[1], self.nbit)), {}


class PCAHHead(LinearHashHead):
    """projection = the top-K principal directions (D, K) of the centred training features
    (scikit-learn's PCA, full SVD; the sign of each direction is sklearn's deterministic choice)."""

    method = "pcah"

    def max_nbit(self, n_train: int) -> int:
        return min(self.in_features, n_train)

    def fit_projection(
        self, x: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        pca = PCA(n_components=self.nbit, svd_solver="full").fit(x)
        return (
            pca.mean_,
            pca.components_.T,
            {"explained_variance_ratio": float(pca.explained_variance_ratio_.sum())},
        )


class ITQHead(LinearHashHead):
    """PCA to K dimensions, then the ITQ rotation: projection = W_pca (D, K) @ R (K, K).

    Args:
        iterations: alternating-minimisation steps (50, as Gong & Lazebnik).
    After :meth:`fit`, ``quantization_losses`` holds ||B - V R||_F^2 before the first step and
    after each step (non-increasing: each half-step minimises the same loss).
    """

    method = "itq"

    def __init__(self, in_features: int, nbit: int, iterations: int = 50):
        super().__init__(in_features, nbit)
        if int(iterations) < 0:
            raise ValueError(f"ITQ: iterations must be >= 0, got {iterations}")
        self.iterations = int(iterations)
        self.quantization_losses: list[float] = []
        self.rotation: np.ndarray | None = None

    def max_nbit(self, n_train: int) -> int:
        return min(self.in_features, n_train)

    @staticmethod
    def random_rotation(k: int, seed: int) -> np.ndarray:
        """A Haar-random orthogonal (k, k) matrix drawn from ``seed``."""
        if k == 1:
            return np.ones((1, 1))
        return np.asarray(ortho_group.rvs(k, random_state=np.random.default_rng(seed)))

    def rotate(self, v: np.ndarray, seed: int) -> tuple[np.ndarray, list[float]]:
        """ITQ's alternating minimisation on PCA-projected data v (N, K) -> (R, losses)."""
        rotation = self.random_rotation(v.shape[1], seed)

        def quantization_loss(b: np.ndarray, r: np.ndarray) -> float:
            return float(np.sum((b - v @ r) ** 2))

        losses = [quantization_loss(_sign(v @ rotation), rotation)]
        for _ in range(self.iterations):
            codes = _sign(v @ rotation)  # fix R, best B
            rotation, _ = orthogonal_procrustes(v, codes)  # fix B, best orthogonal R: SVD of V^T B
            losses.append(quantization_loss(codes, rotation))
        return rotation, losses

    def fit_projection(
        self, x: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        pca = PCA(n_components=self.nbit, svd_solver="full").fit(x)
        v = pca.transform(x)  # (x - mean) @ components^T, (N, K)
        rotation, losses = self.rotate(v, seed)
        self.rotation, self.quantization_losses = rotation, losses
        return (
            pca.mean_,
            pca.components_.T @ rotation,
            {
                "quantization_loss": losses[-1],
                "quantization_loss_initial": losses[0],
                "quantization_losses": losses,
            },
        )
