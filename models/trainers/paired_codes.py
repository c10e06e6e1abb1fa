"""The training step of UGH and BiHalf (methods.md §4.3-4.4): one view, loss(x, h, b), where
the loss pairs row k with row k + B/2 of the batch (:func:`models.loss.ugh.halves_cosine_mse`).

Both configs (model=ugh, model=bihalf) use :class:`PairedCodesTrainer`; they differ only in the
head (sign vs bi-half layer) and the loss (with or without the quantisation term).
"""

from __future__ import annotations

import torch

from models.trainers.base import Trainer
from utils.errors import ConfigError


class PairedCodesTrainer(Trainer):
    """One view per image (M = B rows); the loss gets (features, codes, binary codes) and pairs
    the rows of each batch."""

    views = 1

    def check_setup(self) -> None:
        super().check_setup()
        # An odd batch is fine (its last row is left out of the pairs, as the reference), but a
        # batch of one has no pair, and bi-half cannot split one row into halves.
        if self.batch_size < 2:
            raise ConfigError(
                f"model={self.cfg.model.name} pairs row k with row k + B/2 of each "
                "batch (and bi-half needs at least two rows per bit), so batch_size "
                f"must be at least 2; got {self.batch_size}"
            )

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        output = self.model(self.to_device(batch[0]))
        return self.loss(output.features, output.codes, output.extra["binary"])
