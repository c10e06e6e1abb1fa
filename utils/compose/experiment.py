"""What main_v2.py and val.py do, as plain functions (so tests can call them directly)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from utils import distributed, resources
from utils.checkpoint import load_checkpoint, one_trainer, read_json, write_json, write_npz
from utils.compose import build
from utils.config import load_run_config, save_config, to_plain
from utils.errors import CheckpointError, ConfigError, UserError
from utils.seed import run_seed, seed_everything

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, logdir: str | Path):
    """Everything a run needs, built from its resolved config."""
    seed_everything(run_seed(cfg.seed))
    device = resources.resolve_device(cfg.device)
    if distributed.active() and device.type == "cuda":  # torchrun: one GPU per process
        device = torch.device("cuda", distributed.local_rank())
    data = build.build_data(cfg)
    model = build.build_model(cfg)
    criterion = build.build_criterion(cfg)
    trainer_cls = build.trainer_class(cfg)
    train_transform, eval_transform = (
        build.build_train_transform(cfg),
        build.build_eval_transform(cfg),
    )
    # Frozen deterministic backbone: train and evaluate the head from cached features
    # (feature_cache=auto|on|off; datasets/feature_cache.py).
    from datasets.feature_cache import apply_feature_cache, live_backbone_engine

    threads_setting = cfg.get("threads", "auto")
    torch.set_num_threads(
        resources.choose_threads(threads_setting, head_only=False)[0]
    )  # extraction
    cached = apply_feature_cache(
        cfg,
        model,
        data,
        train_transform,
        eval_transform,
        device,
        closed_form=bool(getattr(trainer_cls, "closed_form", False)),
    )
    if cached is not None:
        data, train_transform, eval_transform = (
            cached.data,
            cached.train_transform,
            cached.eval_transform,
        )
        model = model.use_cached_features(cached.features_size).to(device)
    threads, why = resources.choose_threads(threads_setting, head_only=model.head_only)
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, why)
    if cached is None:
        engine = live_backbone_engine(cfg, model, data, eval_transform, device)
        if engine is not None:
            model.run_frozen_backbone_with(engine)
    return trainer_cls(cfg, model, criterion, data, train_transform, eval_transform, logdir, device)


# What a resumed run may change: how long it trains, how often it evaluates, where it runs and
# what it prints. Everything else would make the continued run a different experiment.
RESUME_OVERRIDABLE = ("epochs", "eval_interval", "device", "progress", "num_workers", "threads")


def override_keys(overrides: list[str] | None) -> list[str]:
    """Config keys set by command-line overrides (``key=value``, ``+key=``, ``~key``), without
    Hydra's own ``hydra.*`` settings."""
    keys = []
    for item in overrides or []:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra.") and key != "hydra":
            keys.append(key)
    return keys


def resume_config(cfg: DictConfig, overrides: list[str] | None) -> tuple[DictConfig, dict]:
    """The saved config of the run ``cfg.resume`` with the overrides a resumed run may change
    applied; returns (config, {key: [saved value, new value]}). Any other override is refused
    with one sentence listing it: a resumed run continues the saved experiment."""
    run_dir = Path(cfg.resume)
    saved = load_run_config(run_dir)
    keys = [k for k in override_keys(overrides) if k not in ("resume", "logdir")]
    refused = [k for k in keys if k not in RESUME_OVERRIDABLE]
    if refused:
        raise ConfigError(
            f"resume={run_dir} continues the saved run, so these overrides would "
            f"be ignored: {', '.join(refused)}; only {', '.join(RESUME_OVERRIDABLE)} "
            "can change on resume (start a new run to change anything else)"
        )
    changed = {}
    with open_dict(saved):
        for key in keys:
            new = OmegaConf.select(cfg, key)
            old = OmegaConf.select(saved, key)
            if new != old:
                changed[key] = [old, new]
                OmegaConf.update(saved, key, new, merge=False)
        saved.logdir = str(run_dir.resolve())
        saved.resume = str(run_dir.resolve())
    # every file the resume reads is checked before config.yaml records a change
    for name in ("train_history.json", "test_history.json"):
        read_json(run_dir / name)
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        trained = int(load_checkpoint(last).get("epoch", 0))
        if int(saved.epochs) < trained:
            raise ConfigError(
                f"epochs={saved.epochs} is below the {trained} epochs that {last} "
                f"has already trained: pass epochs >= {trained}"
            )
    return saved, changed


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """main_v2.py: train one run into cfg.logdir (or continue cfg.resume in place).

    ``overrides``: the command-line overrides (main_v2.py passes Hydra's); with ``resume`` only
    those in RESUME_OVERRIDABLE are allowed, applied, logged and recorded in config.yaml.
    """
    changed: dict = {}
    if cfg.get("resume"):
        cfg, changed = resume_config(cfg, overrides)
    else:
        cfg = to_plain(cfg)
    logdir = Path(cfg.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under torchrun only rank 0 writes
    with one_trainer(logdir, enabled=main):
        return _train_in(cfg, changed, logdir, main)


def _train_in(cfg: DictConfig, changed: dict, logdir: Path, main: bool) -> dict[str, Any]:
    """train() once the run folder is this process's (see utils.checkpoint.one_trainer)."""
    started = time.time()
    if main and not cfg.get("resume"):  # before the extraction, so a run killed there resumes
        save_config(cfg, logdir / "config.yaml")
    trainer = build_trainer(cfg, logdir)
    sizes = {k: len(getattr(trainer.data, k)) for k in ("train", "query", "database")}
    log.info(
        "%s on %s (%s): train %d, query %d, database %d, device %s",
        cfg.model.name,
        cfg.dataset.name,
        cfg.backbone._target_,
        sizes["train"],
        sizes["query"],
        sizes["database"],
        trainer.device,
    )
    if changed and main:
        log.info(
            "resume with changed settings: %s (the scheduler keeps its saved settings)",
            ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()),
        )
        record = {k: v for k, v in cfg.items() if k != "resume"}
        save_config(OmegaConf.create(record), logdir / "config.yaml")
    if getattr(trainer, "closed_form", False):  # LSH / PCAH / ITQ: fitted, not optimised
        optimizer = scheduler = None
    else:
        optimizer = build.build_optimizer(cfg, trainer.model)
        scheduler = build.build_scheduler(cfg, optimizer)
    metrics = trainer.fit(optimizer, scheduler, resume=cfg.get("resume"))
    metrics["wall_seconds"] = time.time() - started
    if main:
        write_json(metrics, logdir / "metrics.json")
        print_metrics(metrics, logdir)
    return metrics


def print_metrics(metrics: dict, logdir: Path) -> None:
    """The few numbers a user reads first; everything else is in metrics.json."""
    key = metrics["main_metric"]
    last = metrics["last"]
    shown = [key, "mAP_tie@" + key.split("@")[1], "P@10", "HitRate@10", "P_radius@2", "R_radius@2"]
    lines = ["final: " + ", ".join(f"{k} {last[k]:.4f}" for k in shown if k in last)]
    if metrics.get("best"):
        best = metrics["best"]
        lines.append(
            f"best checkpoint (epoch {best['epoch']}, chosen on {best['selected_on']}):"
            f" {key} {best[key]:.4f}"
        )
    lines.append(f"time: {metrics.get('wall_seconds', metrics['train_seconds']):.1f} s")
    lines.append(f"run directory: {logdir}")
    print("\n".join(lines))


def run_checkpoint(logdir: Path, name: str) -> tuple[Path, dict]:
    """``<logdir>/checkpoints/<name>.pt`` (name: best | last), loaded; one sentence when the
    name is wrong or no evaluation chose a best model yet."""
    if name not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last, got {name!r}")
    path = Path(logdir) / "checkpoints" / f"{name}.pt"
    if name == "best" and not path.exists() and (path.parent / "last.pt").exists():
        raise CheckpointError(
            f"{path} does not exist (no evaluation chose a best model yet): pass checkpoint=last"
        )
    return path, load_checkpoint(path)


def validate(vcfg: DictConfig) -> dict[str, Any]:
    """val.py: rebuild a run from its directory, load a checkpoint, recompute the metrics."""
    logdir = Path(vcfg.logdir)
    cfg = load_run_config(logdir)
    with open_dict(cfg):
        cfg.logdir = str(logdir.resolve())
        cfg.progress = vcfg.progress
        if vcfg.R is not None:
            cfg.dataset.R = int(vcfg.R)
        if vcfg.data_dir is not None:
            old = str(cfg.data_dir)
            cfg.data_dir = str(vcfg.data_dir)
            # data paths were resolved at training time: move them to the new data_dir
            cfg.dataset.source = OmegaConf.create(
                _replace_prefix(OmegaConf.to_container(cfg.dataset.source), old, cfg.data_dir)
            )
        if vcfg.protocol is not None:
            if "protocol" not in cfg.dataset.source:
                raise ConfigError(
                    f"protocol={vcfg.protocol}: dataset {cfg.dataset.name} has no "
                    "named split protocols (only cifar10 has them); drop "
                    "protocol="
                )
            cfg.dataset.source.protocol = vcfg.protocol
        if vcfg.get("zero_relevant") is not None:
            cfg.zero_relevant = str(vcfg.zero_relevant)
        if vcfg.batch_size is not None:
            cfg.eval_batch_size = int(vcfg.batch_size)
        if vcfg.ks is not None:
            cfg.ks = list(vcfg.ks)
        if vcfg.radius is not None:
            cfg.radius = int(vcfg.radius)
        cfg.device = vcfg.device
    name = str(vcfg.checkpoint)
    _, state = run_checkpoint(logdir, name)
    trainer = build_trainer(cfg, logdir)
    from models.trainers.base import load_model_state

    load_model_state(trainer.model, state["model"])
    from models.trainers.evaluation import RetrievalSettings, evaluate_retrieval

    evaluation = evaluate_retrieval(
        trainer.encode,
        trainer.data.query,
        trainer.data.database,
        RetrievalSettings.from_config(cfg, pr_curve=bool(vcfg.pr_curve)),
        trainer.device,
    )
    report, query, database = evaluation.metrics, evaluation.query_codes, evaluation.database_codes
    result = {"checkpoint": name, "epoch": int(state.get("epoch", -1)), **report}
    write_json(result, logdir / f"eval_{name}.json")
    if vcfg.save_codes:
        codes_dir = logdir / "codes"
        codes_dir.mkdir(exist_ok=True)
        write_npz(
            codes_dir / f"{name}.npz",
            query_codes=query.numpy(),
            database_codes=database.numpy(),
            query_labels=trainer.data.query.labels,
            database_labels=trainer.data.database.labels,
        )
    if vcfg.get("plots"):  # PNG figures and their numbers in <logdir>/plots/ (utils/figures.py)
        from utils.figures import write_run_plots

        raw = build.build_data(cfg)  # the images (the trainer's splits may be cached features)
        result["figures"] = write_run_plots(
            cfg,
            query,
            database,
            trainer.data.query.labels,
            trainer.data.database.labels,
            name,
            result["epoch"],
            logdir,
            grid_images=lambda rows: grid_images(raw, rows, trainer.data),
            class_names=raw.classes,
        )
    print(
        f"{logdir} [{name}, epoch {result['epoch']}]: "
        + ", ".join(
            f"{k} {v:.4f}"
            for k, v in report.items()
            if isinstance(v, float) and (k.startswith(("mAP", "P@", "HitRate")))
        )
    )
    print(f"written to {logdir / f'eval_{name}.json'}")
    return result


def grid_images(raw, rows: list[dict], evaluated):
    """Thumbnails of the retrieval grid's rows from the dataset ``raw`` (its images), or
    ``(None, why not)`` for a feature dataset or when its splits differ from the ``evaluated``
    ones (labels compared)."""
    from datasets.base import is_feature_split
    from utils.figures import thumbnail

    if is_feature_split(raw.query) or is_feature_split(raw.database):
        return None, "retrieval grid skipped: the dataset holds precomputed features, no images"
    if not (
        np.array_equal(raw.query.labels, np.asarray(evaluated.query.labels))
        and np.array_equal(raw.database.labels, np.asarray(evaluated.database.labels))
    ):
        return None, "retrieval grid skipped: the rebuilt splits differ from the evaluated ones"
    queries = [thumbnail(raw.query.load(r["query"])) for r in rows]
    retrieved = [[thumbnail(raw.database.load(i)) for i in r["retrieved"]] for r in rows]
    return (queries, retrieved), None


def _replace_prefix(node: Any, old: str, new: str) -> Any:
    """Every string path in ``node`` that lies in folder ``old`` moved to folder ``new`` (a
    prefix only at a path boundary: moving /data leaves /data2/x alone)."""
    if isinstance(node, dict):
        return {k: _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    old, new = old.rstrip("/"), new.rstrip("/")
    if isinstance(node, str) and (node == old or node.startswith(old + "/")):
        return new + node[len(old) :]
    return node
