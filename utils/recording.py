"""What a run leaves in its folder, written by one small class (design.md §6).

    <logdir>/train_history.json      one row per epoch: "epoch", "lr/<group>", "train_<term>"
    <logdir>/test_history.json       one row per evaluation: "epoch", the query metrics,
                                     "val_<main metric>" when a validation split chooses best.pt
    <logdir>/events.out.tfevents.*   TensorBoard: train/<term>, lr/<group>, eval/<metric>, diag/...
    <logdir>/checkpoints/last.pt     the trainer's full state after the last finished epoch
    <logdir>/checkpoints/best.pt     the model of the selected epoch (select_on: val|query|last)
    <logdir>/metrics.json            the final metrics of the last and of the best model

Every file goes through utils.checkpoint's atomic writers. The histories are written before
last.pt, so a run killed in between has rows past its checkpoint, which :meth:`RunRecorder.restore`
drops: a resumed run then equals an uninterrupted one.

``writes=False`` (the ranks other than 0 of a distributed run) keeps the same bookkeeping in
memory (so every rank selects the same best epoch) and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.checkpoint import read_json, remove_stale_temporaries, save_checkpoint, write_json

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

SELECT_ON = ("val", "query", "last")


class RunRecorder:
    """Histories, TensorBoard scalars, checkpoints and metrics.json of one run.

    Args:
        logdir: the run folder.
        select_on: what chooses best.pt: "val" (validation mAP), "query" (the test queries, as
            the papers do), "last" (the last evaluated epoch).
        main_key: the main metric's name, e.g. "mAP@1000".
        writes: False on the ranks that must not write (see the module docstring).
    """

    def __init__(self, logdir: str | Path, select_on: str, main_key: str, writes: bool = True):
        self.logdir = Path(logdir)
        self.checkpoint_dir = self.logdir / "checkpoints"
        self.select_on = select_on
        self.main_key = main_key
        self.writes = writes
        self.train_history: list[dict[str, Any]] = []
        self.test_history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"metric": -math.inf, "epoch": None}
        self.tensorboard: SummaryWriter | None = None

    # ------------------------------------------------------------------ open / close
    def open(self) -> None:
        """Create the folders, remove temporaries left by a killed writer, open TensorBoard."""
        if not self.writes:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.logdir, self.checkpoint_dir):
            remove_stale_temporaries(folder)
        self.tensorboard = SummaryWriter(log_dir=str(self.logdir))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)

    # ------------------------------------------------------------------ rows
    def add_train_row(self, row: dict[str, Any]) -> None:
        """One epoch's row: ``epoch``, ``lr/<group>``, ``train_<term>`` (TensorBoard train/<term>)."""
        for name, value in row.items():
            if name != "epoch":
                self.scalar(
                    name if name.startswith("lr/") else "train/" + name.removeprefix("train_"),
                    value,
                    row["epoch"],
                )
        self.train_history.append(row)

    def add_test_row(self, row: dict[str, Any]) -> None:
        """One evaluation's row: ``epoch`` and its metrics (TensorBoard eval/<metric>)."""
        for name, value in row.items():
            if name != "epoch":
                self.scalar(f"eval/{name}", value, row["epoch"])
        self.test_history.append(row)

    # ------------------------------------------------------------------ model selection
    def select(self, test_row: dict[str, Any], model_state: Callable[[], dict]) -> bool:
        """Keep the model of this evaluation in best.pt when its score beats the best so far
        (strictly: the earliest epoch wins ties); returns whether it did."""
        epoch = int(test_row["epoch"])
        score = {
            "val": test_row.get(f"val_{self.main_key}"),
            "query": test_row[self.main_key],
            "last": float(epoch),
        }[self.select_on]
        if score is None or not score > self.best["metric"]:
            return False
        self.best = {"metric": float(score), "epoch": epoch}
        if self.writes:
            save_checkpoint(
                {
                    "model": model_state(),
                    "epoch": epoch,
                    "selected_on": self.select_on,
                    "metric": float(score),
                },
                self.checkpoint_dir / "best.pt",
            )
        return True

    def best_fields(self) -> dict[str, Any]:
        """The selection state a checkpoint carries so that a resume continues it."""
        return {
            "best_metric": float(self.best["metric"]),
            "best_epoch": -1 if self.best["epoch"] is None else int(self.best["epoch"]),
        }

    # ------------------------------------------------------------------ persistence
    def save(self, state: dict[str, Any]) -> None:
        """Both histories, then checkpoints/last.pt (``state`` plus the selection state)."""
        if not self.writes:
            return
        write_json(self.train_history, self.logdir / "train_history.json")
        write_json(self.test_history, self.logdir / "test_history.json")
        save_checkpoint({**state, **self.best_fields()}, self.checkpoint_dir / "last.pt")

    def restore(self, state: dict[str, Any]) -> int:
        """Continue from a last.pt ``state``: the selection state, and the histories cut back to
        its epoch (rows written after it belong to the epoch that was interrupted). Returns
        the epoch."""
        epoch = int(state["epoch"])
        self.best = {
            "metric": float(state["best_metric"]),
            "epoch": None if state["best_epoch"] < 0 else int(state["best_epoch"]),
        }
        self.train_history = [
            r for r in read_json(self.logdir / "train_history.json", []) if r["epoch"] <= epoch
        ]
        self.test_history = [
            r for r in read_json(self.logdir / "test_history.json", []) if r["epoch"] <= epoch
        ]
        return epoch

    def write_metrics(
        self, final: dict[str, Any], epochs: int, seconds: float, split_sizes: dict[str, int]
    ) -> dict[str, Any]:
        """metrics.json: the last model's metrics, the selected checkpoint's row, the main
        metric's name, the training time and the split sizes; returns it."""
        best_row = next((r for r in self.test_history if r["epoch"] == self.best["epoch"]), None)
        metrics = {
            "last": {"epoch": epochs, **final},
            "best": None if best_row is None else {"selected_on": self.select_on, **best_row},
            "main_metric": self.main_key,
            "train_seconds": seconds,
            "split_sizes": split_sizes,
        }
        if self.writes:
            write_json(metrics, self.logdir / "metrics.json")
        return metrics
