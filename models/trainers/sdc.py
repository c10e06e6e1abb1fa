"""SDC's training step (methods.md §4.1-4.2): one forward over all rows, loss on (x, v).

Two views (SDC-SimCLR) are concatenated along the batch as [view 1; view 2] so one forward pass
shares BatchNorm statistics across the views, as the reference does.
"""

from __future__ import annotations

import torch

from models.trainers.base import Trainer
from utils.errors import ConfigError


class SDCTrainer(Trainer):
    views = 1

    def check_setup(self) -> None:
        super().check_setup()
        if self.batch_size % 2:
            raise ConfigError(
                f"SDC pairs the samples of a batch, so batch_size must be even; "
                f"got {self.batch_size}"
            )

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        images = self.to_device(batch[0])
        if isinstance(images, list):
            images = torch.cat(images)
        output = self.model(images)
        return self.loss(output.features, output.codes)


class SDCSimCLRTrainer(SDCTrainer):
    """Same step on two augmented views (M = 2B rows, four-block calibration pairs)."""

    views = 2
    loss_blocks = 2  # the loss reads [view 1; view 2]
