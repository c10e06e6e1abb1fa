"""The trainer of the closed-form baselines LSH, PCAH and ITQ: no epochs, no optimiser.

``fit`` encodes the training split once through the frozen backbone (eval transform, no
augmentation, eval mode, no gradients), fits the head's projection on those features
(``head.fit(features, seed)``), then evaluates once with the engine's evaluation and records
the run with the engine's :class:`utils.recording.RunRecorder`: train_history.json (one row:
fit time and the head's fit statistics), test_history.json, TensorBoard scalars,
checkpoints/last.pt and best.pt (the model state holds the fitted buffers), metrics.json.

The engine skips building an optimiser and a scheduler for trainers with ``closed_form = True``
(a head without trainable parameters would make build_optimizer fail); ``fit`` receives None.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.trainers.base import Trainer
from utils.errors import ConfigError
from utils.seed import derive_seed

log = logging.getLogger(__name__)


class ClosedFormTrainer(Trainer):
    views = 1
    closed_form = True

    def check_setup(self) -> None:
        super().check_setup()
        head = self.model.head
        if not callable(getattr(head, "fit", None)):
            raise ConfigError(
                f"model={self.cfg.model.name} uses the closed-form trainer, whose "
                "head needs fit(features, seed): use a models.arch.linear_hash head"
            )
        if not self.model.frozen_backbone:
            raise ConfigError(
                f"model={self.cfg.model.name} is fitted in closed form on frozen "
                "backbone features and never trains the backbone: set "
                "backbone_lr_scale=0"
            )
        if hasattr(head, "check_nbit"):  # PCAH / ITQ: nbit <= min(D, N), before any work
            head.check_nbit(len(self.data.train))

    @torch.no_grad()
    def train_features(self) -> torch.Tensor:
        """Backbone features (N, D) of the training split, in split order, float64 on the CPU."""
        self.model.eval()
        features = []
        for images, _, _ in tqdm(
            self.eval_loader(self.data.train),
            desc="encode train",
            leave=False,
            disable=not self.show_bars,
        ):
            features.append(self.model.backbone_input(self.to_device(images)).double().cpu())
        return torch.cat(features)

    def fit(
        self, optimizer=None, scheduler=None, resume: str | Path | None = None
    ) -> dict[str, Any]:
        """Fit the projection, evaluate once, write the run's artefacts; returns the metrics.

        ``optimizer`` and ``scheduler`` are ignored (None from the engine). ``resume`` refits:
        the fit is deterministic given the seed, so the result equals the original run's.
        """
        if resume:
            log.info(
                "%s is fitted in closed form: resuming refits it from scratch", self.cfg.model.name
            )
        epoch = self.epochs
        started = time.time()
        self.recorder.open()
        try:
            features = self.train_features()
            fit_started = time.time()
            info = self.model.head.fit(features, seed=derive_seed(int(self.cfg.seed), 11))
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_items": int(features.shape[0]),
                "fit_seconds": time.time() - fit_started,
            }
            for name, value in info.items():
                if isinstance(value, (list, tuple)):  # a per-iteration curve: TensorBoard only
                    for step, item in enumerate(value):
                        self.recorder.scalar(f"fit/{name}", float(item), step)
                else:
                    row[f"train_{name}"] = float(value)
            self.recorder.add_train_row(row)
            metrics = self.evaluate_epoch(epoch)  # the recorder writes checkpoints/best.pt
            self.recorder.save(
                {"model": self.model.trainable_state_dict(), "epoch": epoch, "closed_form": True}
            )
        finally:
            self.recorder.close()
        return self.write_metrics(metrics, time.time() - started)
