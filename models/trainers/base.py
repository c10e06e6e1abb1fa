"""The one training engine. A method's trainer subclasses :class:`Trainer` and implements
``training_step(batch) -> dict of named scalar tensors`` (the total under "loss").

The engine owns: data loaders, the epoch loop, optimiser and scheduler steps, device moves,
the progress bar, TensorBoard scalars, periodic evaluation with the retrieval engine, model
selection on a validation split, atomic checkpoints and exact resume.

Run directory (design.md §6): config.yaml, train_history.json, test_history.json,
checkpoints/{last,best}.pt, metrics.json, TensorBoard events, codes/ when asked.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.base import TransformedSplit, is_feature_split, split_validation
from utils.checkpoint import (
    load_checkpoint,
    read_json,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from utils.config import progress_bars
from utils.errors import CheckpointError, ConfigError, TrainingError
from utils.resources import resolve_workers
from utils.retrieval import retrieval_report
from utils.seed import derive_seed, seed_everything

log = logging.getLogger(__name__)


def _map_key(R: int) -> str:
    return f"mAP@{'all' if int(R) == -1 else int(R)}"


class Trainer:
    """Base training engine.

    Subclasses set ``views`` (1 = one image per item, 2 = two augmented views) and implement
    :meth:`training_step`. They may extend :meth:`check_setup` with method-specific checks.
    """

    views: int = 1

    def __init__(self, cfg: DictConfig, model, criterion, data, train_transform,
                 eval_transform, logdir: str | Path, device: torch.device):
        self.cfg = cfg
        # CNN backbones on CUDA run faster on NHWC tensors (tensor cores); inputs follow
        self.channels_last = device.type == "cuda" and any(
            isinstance(m, torch.nn.Conv2d) for m in model.backbone.modules())
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
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
        self.num_workers = resolve_workers(cfg.get("num_workers", 0))
        self.R = int(cfg.dataset.R)
        self.select_on = str(cfg.get("select_on", "val"))
        self.zero_relevant = str(cfg.get("zero_relevant", "count"))
        self.show_bars = progress_bars(cfg.get("progress", "auto"))
        self.precision = resolve_precision(cfg.get("precision", "auto"), device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "16-mixed")
        self.validation = split_validation(data.train, cfg.get("val_size", 0.1),
                                           derive_seed(int(cfg.dataset.source.get("split_seed", 0) or 0), 7))
        self.optimizer = None
        self.scheduler = None
        self.start_epoch = 0
        self.best: dict[str, Any] = {"metric": -math.inf, "epoch": None}
        self.train_history: list[dict] = []
        self.test_history: list[dict] = []
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
        n_train = len(self.data.train)
        if n_train < self.batch_size:
            raise ConfigError(f"The training split has {n_train} items, fewer than one batch "
                              f"(batch_size={self.batch_size}); every batch is full-size "
                              "(drop_last), so lower batch_size")
        views = int(getattr(self.train_transform, "views", 1))
        if views != self.views:
            raise ConfigError(f"model={self.cfg.model.name} trains on {self.views} view(s) per "
                              f"image but transforms gives {views}: use the method's own "
                              "transforms (drop the transforms= override)")
        if self.select_on not in ("val", "query", "last"):
            raise ConfigError(f"select_on must be val, query or last, got {self.select_on!r}")
        if self.zero_relevant not in ("count", "skip"):
            raise ConfigError(f"zero_relevant must be count or skip, got {self.zero_relevant!r}")
        if self.views > 1 and is_feature_split(self.data.train):
            raise ConfigError(f"model={self.cfg.model.name} learns from {self.views} augmented "
                              f"views of each image, but dataset={self.cfg.dataset.name} holds "
                              "one precomputed vector per item, so the views would be identical "
                              "(trivial positives): train it on images (e.g. dataset=cifar10; a "
                              "frozen backbone caches augmented views), or pick a one-view method")
        if self.select_on == "val" and self.validation is None:
            raise ConfigError("select_on=val needs a validation split: set val_size > 0, or "
                              "select_on=last")

    # ------------------------------------------------------------------ helpers
    def to_device(self, images):
        if isinstance(images, (list, tuple)):
            return [self.to_device(view) for view in images]
        if self.channels_last and images.dim() == 4:
            return images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return images.to(self.device, non_blocking=True)

    def _dataset(self, split, transform):
        return TransformedSplit(split, transform)

    def train_loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator()
        generator.manual_seed(derive_seed(int(self.cfg.seed), epoch, 1))
        return DataLoader(self._dataset(self.data.train, self.train_transform),
                          batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, generator=generator,
                          pin_memory=self.device.type == "cuda")

    def eval_loader(self, split) -> DataLoader:
        return DataLoader(self._dataset(split, self.eval_transform),
                          batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def autocast(self):
        """The mixed-precision context of ``precision`` (a no-op for 32)."""
        dtype = {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @torch.no_grad()
    def encode(self, split, desc: str = "encode") -> torch.Tensor:
        """Continuous codes (N, K) of a split, in split order, on the CPU."""
        self.model.eval()
        codes = []
        for images, _, _ in tqdm(self.eval_loader(split), desc=desc, leave=False,
                                 disable=not self.show_bars):
            with self.autocast():
                codes.append(self.model.encode(self.to_device(images)).float().cpu())
        return torch.cat(codes)

    def retrieve(self, query_codes, db_codes, query_labels, db_labels, **kwargs) -> dict:
        """retrieval_report with this run's zero_relevant rule; on CUDA the codes go back to the
        GPU, where the engine's torch backend scores them (numba kernels on the CPU)."""
        if self.device.type == "cuda":
            query_codes, db_codes = query_codes.to(self.device), db_codes.to(self.device)
        return retrieval_report(query_codes, db_codes, query_labels, db_labels,
                                zero_relevant=self.zero_relevant, **kwargs)

    def report(self, query_codes, db_codes, query_labels, db_labels, R=None) -> dict:
        return self.retrieve(query_codes, db_codes, query_labels, db_labels,
                             R=self.R if R is None else R, ks=tuple(self.cfg.ks),
                             radius=int(self.cfg.radius), pr_curve=False)

    def evaluate(self) -> dict[str, float]:
        """Query-vs-database metrics of the current model."""
        query = self.encode(self.data.query, "encode queries")
        database = self.encode(self.data.database, "encode database")
        return self.report(query, database, self.data.query.labels, self.data.database.labels)

    def evaluate_validation(self) -> float:
        """mAP@R of validation queries against the rest of the training split."""
        val_queries, val_database = self.validation
        query = self.encode(val_queries, "encode validation")
        database = self.encode(val_database, "encode validation db")
        self.validation_codes = (query, database)  # reused by the diagnostics of this evaluation
        report = self.retrieve(query, database, val_queries.labels, val_database.labels,
                               R=self.R, ks=(1,), radius=0, pr_curve=False)
        return report[_map_key(self.R)]

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.logdir / "checkpoints"

    def training_state(self, epoch: int) -> dict:
        return {"model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.scaler.state_dict(),
                "epoch": epoch,
                "best_metric": float(self.best["metric"]),
                "best_epoch": -1 if self.best["epoch"] is None else int(self.best["epoch"])}

    def resume_from(self, logdir: str | Path) -> None:
        """Continue the run in ``logdir`` from checkpoints/last.pt; histories are cut back to
        the checkpoint's epoch so that the continued run equals an uninterrupted one. A run
        killed before its first checkpoint (e.g. during feature extraction) starts at epoch 0."""
        path = Path(logdir) / "checkpoints" / "last.pt"
        if not path.exists():
            if (Path(logdir) / "metrics.json").exists():
                raise CheckpointError(f"{logdir} is a finished run but {path} is missing: "
                                      "restore it, or start a new run (nothing was changed)")
            log.warning("%s has no checkpoint yet (stopped during its first epoch): training "
                        "from the start", logdir)
            self.train_history, self.test_history = [], []
            return
        state = load_checkpoint(path, self.device)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):  # 16-mixed: the loss scale goes on where it was
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = int(state["epoch"])
        self.best = {"metric": float(state["best_metric"]),
                     "epoch": None if state["best_epoch"] < 0 else int(state["best_epoch"])}
        keep = lambda rows: [r for r in rows if r["epoch"] <= self.start_epoch]  # noqa: E731
        self.train_history = keep(read_json(self.logdir / "train_history.json", []))
        self.test_history = keep(read_json(self.logdir / "test_history.json", []))
        log.info("Resumed %s at epoch %d", logdir, self.start_epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self, optimizer, scheduler, resume: str | Path | None = None) -> dict[str, Any]:
        """Train for the configured epochs; returns the final metrics (also metrics.json)."""
        from torch.utils.tensorboard import SummaryWriter

        self.optimizer, self.scheduler = optimizer, scheduler
        if resume:
            self.resume_from(resume)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.logdir, self.checkpoint_dir):  # left by a writer that was killed
            remove_stale_temporaries(folder)
        writer = SummaryWriter(log_dir=str(self.logdir))
        key = _map_key(self.R)
        if self.select_on == "query":
            log.warning("select_on=query: the best checkpoint is chosen on the test queries, "
                        "as in the paper; its numbers are optimistic")
        started = time.time()
        final: dict[str, float] = {}
        try:
            for epoch in range(self.start_epoch, self.epochs):
                row = {"epoch": epoch + 1}
                for i, group in enumerate(self.optimizer.param_groups):
                    row[f"lr/{group.get('name', i)}"] = group["lr"]
                epoch_started = time.time()
                row.update({f"train_{k}": v for k, v in self.train_one_epoch(epoch).items()})
                if not self.show_bars:  # a log file or a cluster job: one line per epoch
                    log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs,
                             ", ".join(f"{k[len('train_'):]} {v:.4f}" for k, v in row.items()
                                       if k.startswith("train_")), time.time() - epoch_started)
                self.scheduler.step()
                for name, value in row.items():
                    if name != "epoch":
                        writer.add_scalar(name if name.startswith("lr/") else
                                          "train/" + name[len("train_"):], value, epoch + 1)
                self.train_history.append(row)

                last_epoch = epoch + 1 == self.epochs
                interval = int(self.cfg.eval_interval)
                if last_epoch or (interval > 0 and (epoch + 1) % interval == 0):
                    metrics = self.evaluate_epoch(epoch + 1, writer, key)
                    if last_epoch:
                        final = metrics
                write_json(self.train_history, self.logdir / "train_history.json")
                write_json(self.test_history, self.logdir / "test_history.json")
                save_checkpoint(self.training_state(epoch + 1), self.checkpoint_dir / "last.pt")
        finally:
            writer.close()
        if not final:  # resumed a finished run: report its final evaluation again
            final = self.evaluate()
        return self.write_metrics(final, time.time() - started, key)

    def evaluate_epoch(self, epoch: int, writer, key: str) -> dict[str, float]:
        """Evaluate on the queries (and the validation split), record the row in
        test_history and TensorBoard, update best.pt; returns the query metrics."""
        metrics = self.evaluate()
        test_row = {"epoch": epoch, **metrics}
        if self.validation is not None:
            test_row[f"val_{key}"] = self.evaluate_validation()
        self.test_history.append(test_row)
        for name, value in test_row.items():
            if name != "epoch":
                writer.add_scalar(f"eval/{name}", value, epoch)
        from utils.diagnostics import log_diagnostics  # code diagnostics (TensorBoard diag/)

        log_diagnostics(self, writer, epoch, getattr(self, "validation_codes", None))
        log.info("epoch %d: %s %.4f%s", epoch, key, metrics[key],
                 f", val {test_row[f'val_{key}']:.4f}" if self.validation else "")
        self.update_best(test_row, epoch, key)
        return metrics

    def update_best(self, test_row: dict, epoch: int, key: str) -> None:
        score = {"val": test_row.get(f"val_{key}"), "query": test_row[key],
                 "last": float(epoch)}[self.select_on]
        if score is not None and score > self.best["metric"]:  # strict: the earliest wins ties
            self.best = {"metric": float(score), "epoch": epoch}
            save_checkpoint({"model": self.model.trainable_state_dict(), "epoch": epoch,
                             "selected_on": self.select_on, "metric": float(score)},
                            self.checkpoint_dir / "best.pt")

    def write_metrics(self, final: dict, seconds: float, key: str) -> dict:
        best_row = next((r for r in self.test_history if r["epoch"] == self.best["epoch"]), None)
        metrics = {"last": {"epoch": self.epochs, **final},
                   "best": None if best_row is None else
                   {"selected_on": self.select_on, **best_row},
                   "main_metric": key,
                   "train_seconds": seconds,
                   "split_sizes": {"train": len(self.data.train), "query": len(self.data.query),
                                   "database": len(self.data.database),
                                   "validation": 0 if self.validation is None
                                   else len(self.validation[0])}}
        write_json(metrics, self.logdir / "metrics.json")
        return metrics

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        seed_everything(derive_seed(int(self.cfg.seed), epoch))
        self.model.train()
        self.criterion.train()
        sums: dict[str, float] = {}
        count = 0
        loader = self.train_loader(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not self.show_bars)
        for step, batch in enumerate(bar):
            with self.autocast():
                terms = self.training_step(batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise TrainingError(f"The loss became {loss.item()} at epoch {epoch + 1}, step "
                                    f"{step + 1}: lower optim.lr or check the input data; the "
                                    "last good checkpoint is checkpoints/last.pt")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # the identity unless precision=16-mixed
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
        raise CheckpointError(f"The checkpoint does not fit this model ({str(error).splitlines()[0]});"
                              " was it written with another model, backbone or nbit?") from None
    if missing:
        raise CheckpointError(f"The checkpoint lacks {len(missing)} model tensors (e.g. "
                              f"{missing[0]}); was it written with another model?")
