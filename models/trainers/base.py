"""The one training engine. A method's trainer subclasses :class:`Trainer` and implements
``training_step(batch) -> dict of named scalar tensors`` (the total under "loss").

The engine owns the data loaders, the epoch loop, optimiser, scheduler and loss-scaler steps,
device moves and mixed precision, and exact resume. It hands the run's files (histories,
TensorBoard, checkpoints, model selection, metrics.json) to :class:`utils.recording.RunRecorder`
and scores codes with :func:`models.trainers.evaluation.evaluate_retrieval`, the evaluation
val.py uses too. config.yaml is written by the composing layer (utils/compose/experiment.py),
codes/ by ``val.py save_codes=true``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from datasets.base import TransformedSplit, is_feature_split, split_validation
from models.layers.global_batchnorm import global_batchnorm
from models.trainers.evaluation import RetrievalSettings, evaluate_retrieval
from utils import distributed
from utils.checkpoint import load_checkpoint
from utils.config import progress_bars
from utils.errors import CheckpointError, ConfigError, TrainingError
from utils.recording import SELECT_ON, RunRecorder
from utils.resources import choose_workers
from utils.seed import derive_seed, seed_everything

log = logging.getLogger(__name__)


class Trainer:
    """Base training engine.

    Subclasses set ``views`` (1 = one image per item, 2 = two augmented views) and implement
    :meth:`training_step`, which hands the tensors its loss reads to :meth:`loss`. They may
    extend :meth:`check_setup` with method-specific checks.
    """

    views: int = 1
    #: The tensors a training step passes to :meth:`loss` stack this many blocks of the rank's
    #: items along their rows (2 for ``[view 1; view 2]``), 0 when they already hold the global
    #: batch (see :meth:`loss`).
    loss_blocks: int = 1

    def __init__(
        self,
        cfg: DictConfig,
        model,
        criterion,
        data,
        train_transform,
        eval_transform,
        logdir: str | Path,
        device: torch.device,
    ):
        self.cfg = cfg
        # CNN backbones on CUDA run faster on NHWC tensors (tensor cores); inputs follow
        self.channels_last = device.type == "cuda" and any(
            isinstance(m, torch.nn.Conv2d) for m in model.backbone.modules()
        )
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if distributed.world_size() > 1:  # batch statistics of the global batch (torchrun)
            model = global_batchnorm(model, device)
        self.model = model.to(device)
        self.criterion = criterion.to(device)
        self.data = data
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.logdir = Path(logdir)
        self.device = device
        self.epochs = int(cfg.epochs)
        self.batch_size = int(cfg.batch_size)
        self.eval_batch_size = int(cfg.get("eval_batch_size") or cfg.batch_size)
        self.num_workers = choose_workers(cfg.get("num_workers", "auto"), model.head_only)
        self.settings = RetrievalSettings.from_config(cfg)
        self.select_on = str(cfg.get("select_on", "val"))
        self.show_bars = progress_bars(cfg.get("progress", "auto")) and distributed.is_main()
        self.world_size = distributed.world_size()
        self.precision = resolve_precision(cfg.get("precision", "auto"), device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "16-mixed")
        self.validation = split_validation(
            data.train,
            cfg.get("val_size", 0.1),
            derive_seed(int(cfg.dataset.source.get("split_seed", 0) or 0), 7),
        )
        self.optimizer = None
        self.scheduler = None
        self.start_epoch = 0
        self.recorder = RunRecorder(
            logdir, self.select_on, self.settings.main_key, writes=distributed.is_main()
        )
        self.validation_codes: tuple[torch.Tensor, torch.Tensor] | None = None
        self.check_setup()

    # ------------------------------------------------------------------ method hooks
    def training_step(self, batch) -> dict[str, torch.Tensor]:
        """One batch -> {"loss": scalar to minimise, other named terms to log}."""
        raise NotImplementedError

    def check_setup(self) -> None:
        """Reject settings the method cannot use, each with one clear sentence."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size={self.batch_size} is the global batch, split evenly "
                f"over the {self.world_size} processes of this torchrun launch: "
                f"use a multiple of {self.world_size}"
            )
        n_train = len(self.data.train)
        if n_train < self.batch_size:
            raise ConfigError(
                f"The training split has {n_train} items, fewer than one batch "
                f"(batch_size={self.batch_size}); every batch is full-size "
                "(drop_last), so lower batch_size"
            )
        views = int(getattr(self.train_transform, "views", 1))
        if views != self.views:
            raise ConfigError(
                f"model={self.cfg.model.name} trains on {self.views} view(s) per "
                f"image but transforms gives {views}: use the method's own "
                "transforms (drop the transforms= override)"
            )
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be val, query or last, got {self.select_on!r}")
        if self.settings.zero_relevant not in ("count", "skip"):
            raise ConfigError(
                f"zero_relevant must be count or skip, got {self.settings.zero_relevant!r}"
            )
        if self.views > 1 and is_feature_split(self.data.train):
            raise ConfigError(
                f"model={self.cfg.model.name} learns from {self.views} augmented "
                f"views of each image, but dataset={self.cfg.dataset.name} holds "
                "one precomputed vector per item, so the views would be identical "
                "(trivial positives): train it on images (e.g. dataset=cifar10; a "
                "frozen backbone caches augmented views), or pick a one-view method"
            )
        if self.select_on == "val" and self.validation is None:
            raise ConfigError(
                "select_on=val needs a validation split: set val_size > 0, or select_on=last"
            )

    # ------------------------------------------------------------------ helpers
    def to_device(self, images):
        if isinstance(images, (list, tuple)):
            return [self.to_device(view) for view in images]
        if self.channels_last and images.dim() == 4:
            return images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return images.to(self.device, non_blocking=True)

    def transformed(self, split, transform) -> TransformedSplit:
        """``split`` read through ``transform`` (a torch Dataset of (image(s), label, index))."""
        return TransformedSplit(split, transform)

    def train_loader(self, epoch: int) -> DataLoader:
        """This epoch's shuffled full batches of ``batch_size`` (seeded from (seed, epoch)); under
        torchrun each rank loads its slice of every global batch. A random transform draws the
        augmentation of item i from a seed of (seed, epoch, i), so the views do not depend on
        the batch order, the loader workers or the number of processes."""
        generator = torch.Generator()
        generator.manual_seed(derive_seed(int(self.cfg.seed), epoch, 1))
        dataset = TransformedSplit(
            self.data.train,
            self.train_transform,
            item_seed=derive_seed(int(self.cfg.seed), epoch, 2),
        )
        # the sampler and batcher DataLoader(shuffle=True, drop_last=True) builds, same RNG use
        batches = BatchSampler(
            RandomSampler(dataset, generator=generator), self.batch_size, drop_last=True
        )
        return DataLoader(
            dataset,
            batch_sampler=distributed.RankSlices(batches),
            num_workers=self.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def eval_loader(self, split) -> DataLoader:
        return DataLoader(
            self.transformed(split, self.eval_transform),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def autocast(self):
        """The mixed-precision context of ``precision`` (a no-op for 32)."""
        dtype = {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """The criterion on the global batch.

        Under torchrun each tensor (rows: ``loss_blocks`` blocks of this rank's items) is first
        gathered from every rank with :func:`utils.distributed.all_gather_rows`, keeping the
        single-process row order, because every loss here couples the rows of a batch: SDC
        pairs rows and sorts the batch's similarities against its Beta targets, UGH and BiHalf
        pair row k with row k + M/2, NT-Xent (SDC-SimCLR, CIBHash) takes its negatives from the
        other rows, NSH ranks every row against the batch, WCH weighs every image against the
        others (its trainer gathers the tokens before the head and sets ``loss_blocks = 0``).
        BiHalf's per-batch median is taken in its layer (models/layers/bihalf.py gathers too).
        """
        if self.loss_blocks and self.world_size > 1:
            tensors = tuple(distributed.all_gather_rows(t, self.loss_blocks) for t in tensors)
        return self.criterion(*tensors)

    @torch.no_grad()
    def encode(self, split, desc: str = "encode") -> torch.Tensor:
        """Continuous codes (N, K) of a split, in split order, on the CPU. Under torchrun each
        rank encodes a contiguous shard and the shards are gathered on every rank."""
        self.model.eval()
        if self.world_size > 1:
            start, stop = distributed.shard_bounds(len(split))
            shard = self._encode(split.subset(np.arange(start, stop)), desc)
            return distributed.gather_shards(shard.to(self.device), len(split)).cpu()
        return self._encode(split, desc)

    def _encode(self, split, desc: str) -> torch.Tensor:
        codes = [torch.zeros(0, int(self.cfg.model.nbit))]  # an empty shard is (0, K)
        for images, _, _ in tqdm(
            self.eval_loader(split), desc=desc, leave=False, disable=not self.show_bars
        ):
            with self.autocast():
                codes.append(self.model.encode(self.to_device(images)).float().cpu())
        return torch.cat(codes)

    def evaluate(self) -> dict[str, float]:
        """Query-vs-database metrics of the current model."""
        return evaluate_retrieval(
            self.encode, self.data.query, self.data.database, self.settings, self.device
        ).metrics

    def evaluate_validation(self) -> float:
        """mAP@R of the validation queries against the rest of the training split; the codes
        stay in ``validation_codes`` for the diagnostics of this evaluation."""
        settings = RetrievalSettings(self.settings.R, zero_relevant=self.settings.zero_relevant)
        result = evaluate_retrieval(
            self.encode,
            *self.validation,
            settings,
            self.device,
            names=("validation", "validation db"),
        )
        self.validation_codes = (result.query_codes, result.database_codes)
        return result.metrics[self.settings.main_key]

    # ------------------------------------------------------------------ checkpoints
    def training_state(self, epoch: int) -> dict:
        """What last.pt holds besides the selection state (which the recorder adds)."""
        return {
            "model": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "epoch": epoch,
        }

    def resume_from(self, logdir: str | Path) -> None:
        """Continue the run in ``logdir`` from checkpoints/last.pt (histories cut back to its
        epoch, so that the continued run equals an uninterrupted one). A run killed before its
        first checkpoint (e.g. during feature extraction) starts at epoch 0."""
        path = Path(logdir) / "checkpoints" / "last.pt"
        if not path.exists():
            if (Path(logdir) / "metrics.json").exists():
                raise CheckpointError(
                    f"{logdir} is a finished run but {path} is missing: "
                    "restore it, or start a new run (nothing was changed)"
                )
            log.warning(
                "%s has no checkpoint yet (stopped during its first epoch): training "
                "from the start",
                logdir,
            )
            return
        state = load_checkpoint(path, self.device)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):  # 16-mixed: the loss scale goes on where it was
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = self.recorder.restore(state)
        log.info("Resumed %s at epoch %d", logdir, self.start_epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self, optimizer, scheduler, resume: str | Path | None = None) -> dict[str, Any]:
        """Train for the configured epochs; returns the final metrics (also metrics.json)."""
        self.optimizer, self.scheduler = optimizer, scheduler
        distributed.broadcast_module(self.model)  # every rank starts from rank 0's weights
        if resume:
            self.resume_from(resume)
        if self.select_on == "query":
            log.warning(
                "select_on=query: the best checkpoint is chosen on the test queries, "
                "as in the paper; its numbers are optimistic"
            )
        started = time.time()
        final: dict[str, float] = {}
        self.recorder.open()
        try:
            for epoch in range(self.start_epoch, self.epochs):
                row: dict[str, Any] = {"epoch": epoch + 1}
                for i, group in enumerate(self.optimizer.param_groups):
                    row[f"lr/{group.get('name', i)}"] = group["lr"]
                epoch_started = time.time()
                row.update({f"train_{k}": v for k, v in self.train_one_epoch(epoch).items()})
                if not self.show_bars:  # a log file or a cluster job: one line per epoch
                    log.info(
                        "epoch %d/%d: %s (%.1f s)",
                        epoch + 1,
                        self.epochs,
                        ", ".join(
                            f"{k[len('train_') :]} {v:.4f}"
                            for k, v in row.items()
                            if k.startswith("train_")
                        ),
                        time.time() - epoch_started,
                    )
                self.scheduler.step()
                self.recorder.add_train_row(row)
                interval = int(self.cfg.eval_interval)
                if epoch + 1 == self.epochs:
                    final = self.evaluate_epoch(epoch + 1)
                elif interval > 0 and (epoch + 1) % interval == 0:
                    self.evaluate_epoch(epoch + 1)
                self.recorder.save(self.training_state(epoch + 1))
        finally:
            self.recorder.close()
        if not final:  # resumed a finished run: report its final evaluation again
            final = self.evaluate()
        return self.write_metrics(final, time.time() - started)

    def evaluate_epoch(self, epoch: int) -> dict[str, float]:
        """Evaluate on the queries (and the validation split), record the row (history,
        TensorBoard, diagnostics), let the recorder update best.pt; returns the query metrics."""
        key = self.settings.main_key
        metrics = self.evaluate()
        test_row = {"epoch": epoch, **metrics}
        if self.validation is not None:
            test_row[f"val_{key}"] = self.evaluate_validation()
        self.recorder.add_test_row(test_row)
        if self.recorder.tensorboard is not None:
            from utils.diagnostics import log_diagnostics  # code diagnostics (TensorBoard diag/)

            log_diagnostics(self, self.recorder.tensorboard, epoch, self.validation_codes)
        log.info(
            "epoch %d: %s %.4f%s",
            epoch,
            key,
            metrics[key],
            f", val {test_row[f'val_{key}']:.4f}" if self.validation else "",
        )
        self.recorder.select(test_row, self.model.trainable_state_dict)
        return metrics

    def write_metrics(self, final: dict, seconds: float) -> dict:
        sizes = {name: len(getattr(self.data, name)) for name in ("train", "query", "database")}
        sizes["validation"] = 0 if self.validation is None else len(self.validation[0])
        return self.recorder.write_metrics(final, self.epochs, seconds, sizes)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        seed_everything(derive_seed(int(self.cfg.seed), epoch))
        self.model.train()
        self.criterion.train()
        sums: dict[str, float] = {}
        count = 0
        loader = self.train_loader(epoch)
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, disable=not self.show_bars
        )
        for step, batch in enumerate(bar):
            with self.autocast():
                terms = self.training_step(batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {loss.item()} at epoch {epoch + 1}, step "
                    f"{step + 1}: lower optim.lr or check the input data; the "
                    "last good checkpoint is checkpoints/last.pt"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # the identity unless precision=16-mixed
            distributed.average_gradients(self.model.parameters())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            rows = len(batch[1])
            count += rows
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * rows
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items()})
        return {name: total / max(count, 1) for name, total in sums.items()}


PRECISIONS = ("32", "bf16", "16-mixed")


def resolve_precision(setting, device: torch.device) -> str:
    """``precision``: auto = bf16 on a CUDA GPU that supports it, else 32 (CPU, MPS, older
    GPUs); 32 | bf16 (autocast, no loss scaling) | 16-mixed (float16 autocast + GradScaler)."""
    value = str(setting).lower()
    if value == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "32"
    value = {"32-true": "32", "fp32": "32", "bf16-mixed": "bf16"}.get(value, value)
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be auto, {', '.join(PRECISIONS)}, got {setting!r}")
    return value


def load_model_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load a (possibly head-only) state dict, with one clear error if it does not fit."""
    expected = model.trainable_state_dict().keys()
    missing = [k for k in expected if k not in state]
    try:
        model.load_state_dict(state, strict=not model.frozen_backbone)
    except RuntimeError as error:
        raise CheckpointError(
            f"The checkpoint does not fit this model ({str(error).splitlines()[0]});"
            " was it written with another model, backbone or nbit?"
        ) from None
    if missing:
        raise CheckpointError(
            f"The checkpoint lacks {len(missing)} model tensors (e.g. "
            f"{missing[0]}); was it written with another model?"
        )
