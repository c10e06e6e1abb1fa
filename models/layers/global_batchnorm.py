"""Batch normalisation over the global batch of a torchrun launch.

In training mode a BatchNorm layer normalises with the statistics of its batch, so under
torchrun each rank would use the statistics of its slice (B / world rows) instead of the batch
one process sees. On CUDA, torch's :class:`torch.nn.SyncBatchNorm` combines the statistics of
the ranks. On the CPU, which SyncBatchNorm does not support, two hooks on each BatchNorm layer
gather the input rows of every rank (with gradients) before it and keep this rank's rows after
it: the same numbers as one process, at the cost of normalising the global batch on every rank
(cheap for the hashing heads' BatchNorm1d). Either way the state-dict keys stay those of the
plain model, so checkpoints load into one process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utils import distributed


def _gather_rows(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if not module.training or distributed.world_size() == 1:
        return None
    return (distributed.all_gather_rows(args[0]), *args[1:])


def _keep_own_rows(
    module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
) -> torch.Tensor | None:
    if not module.training or distributed.world_size() == 1:
        return None
    return distributed.own_rows(output)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer normalising over the global batch (see the module
    docstring): SyncBatchNorm on CUDA, the gathering hooks elsewhere."""
    if device.type == "cuda":
        converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]
        return converted
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.register_forward_pre_hook(_gather_rows)
            layer.register_forward_hook(_keep_own_rows)
    return module
