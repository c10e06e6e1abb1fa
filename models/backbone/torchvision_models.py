"""torchvision backbones: VGG16, ResNet50 and ViT-B/16 (methods.md §3).

All take [0, 1] images (B, C, H, W), C in {1, 3}, and normalise them with the ImageNet mean/std
inside ``forward``. ``pretrained=True`` loads torchvision's IMAGENET1K_V1 weights (downloaded on
first use; offline this raises UserError), ``pretrained=False`` gives a random init and never
touches the network.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import (
    ResNet50_Weights,
    VGG16_Weights,
    ViT_B_16_Weights,
    resnet50,
    vgg16,
    vit_b_16,
)

from models.backbone.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, ImageNormalize
from models.backbone.pretrained import load_torchvision_state_dict
from utils.errors import ConfigError


class VGG16(Backbone):
    """VGG16 fc7 features (Simonyan & Zisserman, ICLR 2015), as in the reference.

    images (B, C, H, W) in [0, 1] -> conv features -> adaptive avgpool 7x7 -> flatten (25088)
    -> Linear(25088, 4096) -> ReLU -> Linear(4096, 4096) -> ReLU -> (B, 4096), non-negative.
    fc8 (the 1000-way classifier) is dropped; with ``remove_dropout`` the two Dropout layers are too,
    so the network is deterministic in train mode as well.
    """

    def __init__(self, pretrained: bool = True, remove_dropout: bool = True):
        super().__init__()
        state_dict = (
            load_torchvision_state_dict(VGG16_Weights.IMAGENET1K_V1, "vgg16")
            if pretrained
            else None
        )
        net = vgg16(weights=None)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        self.normalize = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD, "vgg16")
        self.features = net.features
        self.avgpool = net.avgpool
        # classifier = [Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear(4096, 1000)]: keep up to fc7's ReLU.
        fc = list(net.classifier.children())[:6]
        if remove_dropout:
            fc = [m for m in fc if not isinstance(m, nn.Dropout)]
        self.fc = nn.Sequential(*fc)
        self.features_size = 4096

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self.normalize(images)))
        return self.fc(torch.flatten(x, 1))


class ResNet50(Backbone):
    """ResNet50 global-average-pooled features (He et al., CVPR 2016): (B, C, H, W) -> (B, 2048), >= 0.

    With ``set_eval_mode`` the network always runs in eval mode, as in the reference: every
    forward (and every ``.train()``) puts it back in eval mode, so BatchNorm uses and never updates
    its running statistics, even while the rest of the model trains.
    """

    def __init__(self, pretrained: bool = True, set_eval_mode: bool = False):
        super().__init__()
        state_dict = (
            load_torchvision_state_dict(ResNet50_Weights.IMAGENET1K_V1, "resnet50")
            if pretrained
            else None
        )
        net = resnet50(weights=None)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        net.fc = nn.Identity()  # conv1 ... layer4 -> global avgpool -> flatten
        self.normalize = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD, "resnet50")
        self.net = net
        self.set_eval_mode = set_eval_mode
        self.features_size = 2048
        if set_eval_mode:
            self.net.eval()

    def train(self, mode: bool = True) -> ResNet50:
        super().train(mode)
        if self.set_eval_mode:
            self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.set_eval_mode:
            self.net.eval()
        return self.net(self.normalize(images))


class ViTB16(Backbone):
    """ViT-B/16 (Dosovitskiy et al., ICLR 2021), torchvision's ImageNet-1k weights, 224x224 input.

    ``forward_tokens``: (B, C, 224, 224) -> (B, 196, 768) patch tokens after the final LayerNorm,
    CLS token excluded. ``forward``: (B, 768), ``pool="mean"`` = mean of those patch tokens (the
    reference's HF 'avg' pooler), ``pool="cls"`` = the CLS token after the final LayerNorm.
    Deviation: the reference uses HuggingFace's in21k ViT-B/16; torchvision's weights need no extra
    library. Dropout rates are 0, so the output is deterministic.
    """

    has_tokens = True
    image_size = 224

    def __init__(self, pretrained: bool = True, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ConfigError(f"backbone.pool must be 'mean' or 'cls', got {pool!r}")
        state_dict = (
            load_torchvision_state_dict(ViT_B_16_Weights.IMAGENET1K_V1, "vit_b16")
            if pretrained
            else None
        )
        net = vit_b_16(weights=None)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        net.heads = nn.Identity()  # the 1000-way head is never used
        self.normalize = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD, "vit_b16")
        self.net = net
        self.pool = pool
        self.features_size = net.hidden_dim

    def _all_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, 224, 224) -> (B, 1 + 196, 768): [CLS; patches] after the encoder's final LayerNorm."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(
                f"backbone vit_b16 needs {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}: resize or crop the images to {self.image_size}"
            )
        x = self.net._process_input(self.normalize(images))  # patchify + project: (B, 196, 768)
        cls = self.net.class_token.expand(x.shape[0], -1, -1)
        return self.net.encoder(torch.cat([cls, x], dim=1))  # + pos-emb, blocks, final LayerNorm

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self._all_tokens(images)[:, 1:]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self._all_tokens(images)
        return tokens[:, 1:].mean(dim=1) if self.pool == "mean" else tokens[:, 0]
