"""NSH's training step (methods.md §4.7): the two views are concatenated along the batch as
[view 1; view 2] (M = 2B rows) and go through the model in one forward pass; the loss reads the
codes b and the latents z. Evaluation uses the codes b of a single view (engine default)."""

from __future__ import annotations

import torch

from models.trainers.base import Trainer
from utils.errors import ConfigError


class NSHTrainer(Trainer):
    views = 2
    loss_blocks = 2  # the loss reads the codes and latents of [view 1; view 2]

    def check_setup(self) -> None:
        super().check_setup()
        m = int(getattr(self.criterion, "m", 0))
        if self.batch_size <= m:
            raise ConfigError(
                f"NSH takes the top m={m} ranks of each batch as positives and the "
                f"rest as negatives, so batch_size must exceed {m}; got "
                f"{self.batch_size}"
            )

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        view1, view2 = self.to_device(batch[0])
        output = self.model(torch.cat([view1, view2]))
        return self.loss(output.codes, output.extra["latent"])
