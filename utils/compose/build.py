"""Build every component of a run from its config (the only place that calls instantiate).

Each builder turns one config group into an object; the trainer receives built objects.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig
from torch import nn

from models.arch.base import HashModel
from utils.errors import ConfigError, settings_of, user_error_in

log = logging.getLogger(__name__)


def instantiate(node, **kwargs):
    """hydra.utils.instantiate that lets a UserError raised by a constructor through as is."""
    try:
        return hydra_instantiate(node, **kwargs)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is not None:
            raise user_error from None
        raise


def build_data(cfg: DictConfig):
    """The dataset's train / query / database splits (datasets.base.HashingData); with
    ``subset: N`` (``+debug=fast``) each split keeps a seeded random N of its items."""
    data = instantiate(cfg.dataset.source)
    size = cfg.get("subset")
    if size is None:
        return data
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"subset must be null or a positive integer, got {size!r}")
    parts = {}
    for i, name in enumerate(("train", "query", "database")):
        split = getattr(data, name)
        if len(split) > size:
            keep = np.random.RandomState(i).choice(len(split), size, replace=False)
            split = split.subset(np.sort(keep))
        parts[name] = split
    log.info(
        "subset=%d: train %d, query %d, database %d items (a quick try, not a result)",
        size,
        *(len(parts[k]) for k in ("train", "query", "database")),
    )
    return type(data)(**parts)


def build_backbone(cfg: DictConfig) -> nn.Module:
    backbone = instantiate(cfg.backbone)
    if not hasattr(backbone, "features_size"):
        raise ConfigError(f"backbone {cfg.backbone.get('_target_')} has no features_size")
    return backbone


def build_model(cfg: DictConfig, backbone: nn.Module | None = None) -> HashModel:
    """Backbone + the method's head; the backbone is frozen when backbone_lr_scale == 0."""
    nbit = cfg.model.nbit
    if not isinstance(nbit, int) or nbit < 1:
        raise ConfigError(f"model.nbit must be a positive integer, got {nbit!r}")
    backbone = backbone if backbone is not None else build_backbone(cfg)
    with settings_of("model.head"):
        head = instantiate(cfg.model.head, in_features=backbone.features_size, nbit=nbit)
    if head.input_kind == "tokens" and not getattr(backbone, "has_tokens", False):
        raise ConfigError(
            f"model={cfg.model.name} reads patch tokens but the backbone "
            f"{cfg.backbone._target_} has none: use backbone=vit_b16 "
            "(or backbone=tiny in tests)"
        )
    return HashModel(backbone, head, frozen_backbone=float(cfg.backbone_lr_scale) == 0)


def build_criterion(cfg: DictConfig) -> nn.Module:
    with settings_of("model.loss"):
        return instantiate(cfg.model.loss)


def build_train_transform(cfg: DictConfig):
    return instantiate(cfg.transforms)


def build_eval_transform(cfg: DictConfig):
    from datasets.transforms import eval_transform

    return eval_transform(cfg.dataset.resize, cfg.dataset.crop)


def build_optimizer(cfg: DictConfig, model: HashModel) -> torch.optim.Optimizer:
    """Two parameter groups as the reference: head (lr) and backbone (lr * backbone_lr_scale);
    the backbone group is left out when the scale is 0 (frozen)."""
    groups = [{"params": [p for p in model.head.parameters() if p.requires_grad], "name": "head"}]
    scale = float(cfg.backbone_lr_scale)
    if scale > 0:
        groups.append(
            {
                "params": [p for p in model.backbone.parameters() if p.requires_grad],
                "lr": float(cfg.optim.lr) * scale,
                "name": "backbone",
            }
        )
    if not groups[0]["params"]:
        raise ConfigError(f"model={cfg.model.name} has no trainable parameters")
    return instantiate(cfg.optim, _partial_=True)(groups)  # tensors never pass through OmegaConf


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return instantiate(cfg.scheduler, _partial_=True)(optimizer)


def trainer_class(cfg: DictConfig):
    return get_class(cfg.model.trainer)
