"""Backbones without pretrained weights: ``identity`` (precomputed features) and ``tiny`` (tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone.base import Backbone
from utils.errors import ConfigError


class Identity(Backbone):
    """Inputs are already features: (B, ...) -> (B, features_size) by ``flatten(1)``.

    ``features_size`` comes from the dataset config (``${dataset.features_size}``, e.g. 64 for
    the 8x8 digits); an input of another size is a configuration error.
    """

    reads_features = True  # its inputs are feature vectors already (nothing to cache)

    def __init__(self, features_size: int):
        super().__init__()
        self.features_size = int(features_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flatten(1)
        if x.shape[1] != self.features_size:
            raise ConfigError(
                f"backbone identity expects {self.features_size} values per item (dataset.features_size), "
                f"got {x.shape[1]}: fix dataset.features_size or pick an image backbone"
            )
        return x


class Tiny(Backbone):
    """A small deterministic network for tests; runs on any (B, C, H, W) input in [0, 1].

    forward: mean over channels - 0.5 -> adaptive avgpool 4x4 -> flatten (16)
    -> Linear(16, features_size) -> ReLU -> (B, features_size).
    forward_tokens: mean over channels - 0.5 -> adaptive avgpool 8x8 -> the 4x4 grid of 2x2
    patches (B, 16, 4) -> Linear(4, token_dim) -> (B, 16, token_dim), so tokens point in
    different directions (a stand-in for ViT patch tokens in WCH tests).
    The weights are drawn from a generator seeded with ``seed``, independent of the global RNG.
    """

    has_tokens = True

    def __init__(self, features_size: int = 32, token_dim: int = 16, seed: int = 0):
        super().__init__()
        self.features_size = int(features_size)
        self.fc = nn.Linear(16, self.features_size)
        self.token_embed = nn.Linear(4, token_dim)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (self.fc, self.token_embed):
                bound = layer.in_features**-0.5
                layer.weight.copy_(
                    (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
                )
                layer.bias.copy_(
                    (torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound
                )

    @staticmethod
    def _grey(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ConfigError(
                f"backbone tiny needs images of shape (B, C, H, W), got {tuple(images.shape)}"
            )
        return images.mean(dim=1, keepdim=True) - 0.5  # (B, 1, H, W), centred

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = F.adaptive_avg_pool2d(self._grey(images), 4).flatten(1)  # (B, 16)
        return F.relu(self.fc(grid))

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        grid = F.adaptive_avg_pool2d(self._grey(images), 8)  # (B, 1, 8, 8)
        patches = F.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)  # (B, 16, 4)
        return self.token_embed(patches)
