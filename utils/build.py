"""Build every component of a run from its config (the only place that calls instantiate).

Each builder turns one config group into an object; the trainer receives built objects.
"""

from __future__ import annotations

import logging
import os

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


def _backend_available(kind: str) -> bool:
    """Whether torch can use devices of type ``kind`` ("cuda", "mps", "xpu", ...) here."""
    if kind == "cpu":
        return True
    if kind == "mps":
        return bool(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)
    return bool(getattr(module, "is_available", lambda: False)())


def resolve_device(name: str | None) -> torch.device:
    """"auto" -> CUDA when available, else Apple's MPS when available, else CPU; any other name
    is checked: an unknown or unavailable device is one ConfigError sentence."""
    if name in (None, "auto"):
        for kind in ("cuda", "mps"):
            if _backend_available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name} is not a device name: use device=auto, cpu, cuda, "
                          "cuda:<index> or mps") from None
    if not _backend_available(device.type):
        raise ConfigError(f"device={name} but {device.type.upper()} is not available here: use "
                          "device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s): pick another index or use device=auto")
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parallel_jobs() -> int:
    """How many jobs of a Hydra sweep run side by side on this machine: the joblib launcher's
    n_jobs (-1 = one per core), else 1 (sequential sweeps, single runs, SLURM jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return 1
        launcher = HydraConfig.get().launcher
    except Exception:  # no Hydra run around this process
        return 1
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return available_cores() if n_jobs < 0 else max(1, n_jobs)


def choose_threads(setting, head_only: bool) -> tuple[int, str]:
    """Intra-op threads for torch (the numba retrieval kernels follow torch's count) and why.

    An explicit ``threads=N`` always wins. ``auto``: one thread when only a hashing head trains
    (cached features, a feature dataset: small matrix products that gain nothing from a second
    thread and lose badly on a busy machine: SDC on digits, 20 epochs, 5.3 s with 1 thread vs
    5.4 s with 2 on a quiet 2-core machine, 14.0 s vs 37.8 s beside two busy processes;
    docs/scaling.md, scripts/bench_threads.py), else every core this job may use: the cores
    divided among the parallel jobs of a joblib sweep, and never more than an OMP_NUM_THREADS
    set by the user.
    """
    if setting not in (None, "auto"):
        try:
            threads = int(setting)
        except (TypeError, ValueError):
            threads = 0
        if threads < 1:
            raise ConfigError(f"threads must be auto or a positive integer, got {setting!r}")
        return threads, "threads setting"
    if head_only:
        return 1, "auto: a hashing head on precomputed features"
    jobs = parallel_jobs()
    threads = max(1, available_cores() // jobs)
    why = f"auto: {available_cores()} cores" + (f" / {jobs} parallel jobs" if jobs > 1 else "")
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and 0 < int(limit) < threads:
        threads, why = int(limit), "auto, capped by OMP_NUM_THREADS"
    return threads, why


def resolve_workers(value) -> int:
    """num_workers: an int, or "auto" = min(8, CPUs - 1)."""
    if value in (None, "auto"):
        return max(0, min(8, (os.cpu_count() or 1) - 1))
    return int(value)


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
    log.info("subset=%d: train %d, query %d, database %d items (a quick try, not a result)",
             size, *(len(parts[k]) for k in ("train", "query", "database")))
    return type(data)(**parts)


def split_validation(train_split, val_size: float | int, seed: int):
    """Carve a labelled validation set out of the training split for model selection.

    Returns (val_queries, val_database) or None when val_size == 0. The validation queries are a
    seeded random subset of the training split (val_size: a fraction < 1 or a count); their
    database is the rest of the training split. Training still uses the whole training split:
    the methods are unsupervised, and these labels are only used to choose the checkpoint.
    """
    n = len(train_split)
    count = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if count <= 0:
        return None
    if count >= n:
        raise ConfigError(f"val_size={val_size} leaves no validation database out of {n} "
                          "training items: use a smaller val_size")
    order = np.random.RandomState(seed % 2**32).permutation(n)
    return train_split.subset(np.sort(order[:count])), train_split.subset(np.sort(order[count:]))


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
        raise ConfigError(f"model={cfg.model.name} reads patch tokens but the backbone "
                          f"{cfg.backbone._target_} has none: use backbone=vit_b16 "
                          "(or backbone=tiny in tests)")
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
        groups.append({"params": [p for p in model.backbone.parameters() if p.requires_grad],
                       "lr": float(cfg.optim.lr) * scale, "name": "backbone"})
    if not groups[0]["params"]:
        raise ConfigError(f"model={cfg.model.name} has no trainable parameters")
    return instantiate(cfg.optim, _partial_=True)(groups)  # tensors never pass through OmegaConf


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    return instantiate(cfg.scheduler, _partial_=True)(optimizer)


def trainer_class(cfg: DictConfig):
    return get_class(cfg.model.trainer)
