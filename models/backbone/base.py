"""What every backbone shares: the interface attributes and the input normalisation.

A backbone is an ``nn.Module`` that maps images to one feature vector per image:

- ``features_size: int`` -- D, the width of ``forward``'s output;
- ``forward(images) -> (B, D)`` float features. ``images`` is a float tensor (B, C, H, W) with values
  in [0, 1], *not* normalised: each backbone normalises inside ``forward``;
- ``has_tokens: bool``; token models also implement ``forward_tokens(images) -> (B, P, d)``
  (patch tokens after the final norm, without the CLS token; used by WCH);
- ``deterministic: bool`` -- in eval mode the output depends only on the input (so features of
  a frozen backbone may be cached);
- ``reads_features: bool`` -- the inputs are feature vectors already (``identity``).

Freezing is the engine's job (``requires_grad_(False)`` + ``eval()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from utils.errors import ConfigError

# ImageNet channel statistics used by every torchvision classification model
# (torchvision.transforms._presets.ImageClassification defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: defaults of the interface attributes (see the module docstring)."""

    features_size: int
    has_tokens: bool = False
    deterministic: bool = True
    reads_features: bool = False

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no token sequence (has_tokens=False)")


class ImageNormalize(nn.Module):
    """[0, 1] images (B, C, H, W) -> (B, 3, H, W) normalised with a per-channel mean and std.

    A 1-channel (grey) input is repeated to 3 channels first, as the pretrained image models
    expect RGB. Any other channel count than 1 or 3 is a configuration error.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], name: str):
        super().__init__()
        self.name = name
        # Not persistent: constants, kept out of state dicts and checkpoints.
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(
                f"backbone {self.name} needs images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}: "
                "use an image dataset with this backbone, or backbone=identity for feature vectors"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
