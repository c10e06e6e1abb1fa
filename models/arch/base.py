"""The model wrapper every method uses: a backbone followed by a method's hashing head.

Shapes: images (B, C, H, W) in [0, 1] (or (B, D) features when the backbone is the identity or
the features come from the cache) -> backbone -> features (B, D) -> head -> HashOutput.
The retrieval code of every method is ``HashOutput.codes`` (B, K), continuous; it is binarised
as b = +1 where u >= 0 else -1 by the retrieval engine, never with a zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from models.backbone.base import Backbone


@dataclass
class HashOutput:
    """What a model returns.

    features: (B, D) backbone features (the similarity source of most unsupervised losses).
    codes:    (B, K) continuous codes used for retrieval (sign at evaluation).
    extra:    method-specific tensors the loss needs (e.g. ``binary``: straight-through codes).
    """

    features: torch.Tensor
    codes: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class HashHead(nn.Module):
    """Base class of hashing heads: ``forward(features (B, D)) -> HashOutput``.

    ``input_kind`` says what the head reads from the backbone: "features" (B, D) or
    "tokens" (B, P, d) for token-level methods.
    """

    input_kind: str = "features"

    def __init__(self, in_features: int, nbit: int):
        super().__init__()
        self.in_features = int(in_features)
        self.nbit = int(nbit)


class HashModel(nn.Module):
    """Backbone + head. When ``frozen_backbone`` the backbone has no gradients and always runs
    in eval mode (so BatchNorm statistics and dropout never change), whatever ``train()`` says.
    """

    def __init__(self, backbone: nn.Module, head: HashHead, frozen_backbone: bool):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen_backbone = bool(frozen_backbone)
        # what computes a frozen backbone's features instead of the module (an inference engine,
        # run_frozen_backbone_with); None = the module itself
        self.frozen_backbone_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.frozen_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> HashModel:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    @property
    def head_only(self) -> bool:
        """Whether only the head computes: a frozen backbone that reads precomputed features
        (cached features, a feature dataset), so training is small matrix products on rows of a
        tensor in memory (the threads and loader workers are chosen by it, utils/resources.py)."""
        return self.frozen_backbone and bool(getattr(self.backbone, "reads_features", False))

    def run_frozen_backbone_with(self, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Compute the frozen backbone's features with ``runner`` instead of the module:
        ``(B, C, H, W) images -> (B, D)`` float32 features, e.g. an OpenVINO extractor
        (utils/feature_extractor.py, checked within 1e-4 of the module). The module stays (its
        weights are what the runner was converted from); checkpoints do not change."""
        if not self.frozen_backbone or self.head.input_kind != "features":
            raise ValueError("only a frozen backbone that feeds the head features can be replaced")
        self.frozen_backbone_runner = runner

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone output in the form the head reads (features or tokens)."""
        if self.frozen_backbone_runner is not None:
            return self.frozen_backbone_runner(images).to(images.device)
        # casts for mypy only: torch types a submodule as Tensor | Module and its call as Any
        if self.head.input_kind == "tokens":
            return cast(Backbone, self.backbone).forward_tokens(images)
        return cast(torch.Tensor, self.backbone(images))

    def forward(self, images: torch.Tensor) -> HashOutput:
        if self.frozen_backbone:
            with torch.no_grad():
                inputs = self.backbone_input(images)
        else:
            inputs = self.backbone_input(images)
        return cast(HashOutput, self.head(inputs))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, ...) images -> (B, K) continuous retrieval codes (call in eval mode)."""
        return self.forward(images).codes

    def use_cached_features(self, features_size: int) -> HashModel:
        """Replace the frozen backbone by an identity over ``features_size`` inputs: the feature
        cache (datasets/feature_cache.py) has computed its outputs; the head is unchanged."""
        from models.backbone.simple import Identity

        self.backbone = Identity(int(features_size))
        self.frozen_backbone = True
        self.frozen_backbone_runner = None
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State to checkpoint: everything but a frozen backbone (rebuilt from its weights)."""
        state = self.state_dict()
        if self.frozen_backbone:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state
