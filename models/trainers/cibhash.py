"""CIBHash's training step (methods.md §4.5): two augmented views, loss(p_i, p_j, z_i, z_j)."""

from __future__ import annotations

import torch

from models.trainers.base import Trainer
from utils.errors import ConfigError


class CIBHashTrainer(Trainer):
    """Two views per image; view i of image k is the positive of view j of image k."""

    views = 2

    def check_setup(self) -> None:
        super().check_setup()
        if self.batch_size < 2:
            raise ConfigError(
                "CIBHash's NT-Xent takes its negatives from the other images of "
                f"the batch, so batch_size must be at least 2; got {self.batch_size}"
            )

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        view_i, view_j = self.to_device(batch[0])
        n = view_i.shape[0]
        # The reference runs one forward per view; one forward over [view i; view j] gives the
        # same numbers because no layer mixes rows: the head has no BatchNorm, and a frozen
        # backbone runs in eval mode (VGG16 has no BN at all). Only a fine-tuned backbone with
        # BatchNorm in train mode would see 2B-row instead of B-row batch statistics.
        output = self.model(torch.cat([view_i, view_j]))
        prob, codes = output.extra["prob"], output.codes
        return self.loss(prob[:n], prob[n:], codes[:n], codes[n:])
