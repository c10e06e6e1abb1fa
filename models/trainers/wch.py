"""WCH's training step (methods.md §4.6): each view goes through the backbone separately to its
patch tokens (under no_grad when the backbone is frozen), then the head's ``train_forward`` runs
the cross-attention, the pair weights and the hash function on both views jointly. Evaluation is
the engine's default: one view, ``model.encode`` = the head's plain ``forward``."""

from __future__ import annotations

import torch

from models.trainers.base import Trainer
from utils import distributed
from utils.errors import ConfigError


class WCHTrainer(Trainer):
    views = 2

    def check_setup(self) -> None:
        super().check_setup()
        if not hasattr(self.model.head, "train_forward"):
            raise ConfigError(
                f"model={self.cfg.model.name} uses WCHTrainer, whose head needs "
                "train_forward(tokens1, tokens2): use models.arch.wch.WCHHead"
            )
        if self.batch_size < 2:
            raise ConfigError(
                "WCH weighs every image against the other images of the batch, "
                f"so batch_size must be at least 2; got {self.batch_size}"
            )

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.frozen_backbone:
            with torch.no_grad():
                return self.model.backbone_input(images)
        return self.model.backbone_input(images)

    # the head weighs every image of the batch against the others, so under torchrun the
    # tokens of the global batch go through it (on every rank) and the loss needs no gather
    loss_blocks = 0

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        view1, view2 = self.to_device(batch[0])
        tokens1 = distributed.all_gather_rows(self.tokens(view1))
        tokens2 = distributed.all_gather_rows(self.tokens(view2))
        h1, h2, weighted = self.model.head.train_forward(tokens1, tokens2)
        return self.loss(h1, h2, weighted)
