"""Frozen-backbone feature cache: compute backbone features once, train and evaluate heads from them.

When the backbone is frozen and deterministic (eval mode, no dropout or drop-connect), every
forward of an image through it gives the same vector, so the engine may compute the features
of the training, query and database images once, keep them on disk, and train the hashing head
from them. :func:`apply_feature_cache` (called by ``utils.compose.experiment.build_trainer``, so that
main_v2.py and val.py see the same features) returns the cached splits, their pass-through
transforms and the feature size; the composer puts them in place of the image splits and the
backbone before the trainer is built; no method's code changes. The backbone runs through the
engine ``feature_extractor`` chooses (``utils/feature_extractor.py``: OpenVINO on a CPU by default).

What is cached (one *entry* = the features ``(N, D)`` of one split under one transform):

- query and database splits: the eval transform (bicubic resize + centre crop);
- the training split: its train transform (SDC/UGH/BiHalf: NoAugmentation, a *bilinear* resize,
  which differs from the eval transform) and, for validation and the closed-form baselines
  (which read the training split through the eval transform), the eval transform as well;
- a random train transform (two-view methods): a *bank* of ``V`` augmented views per image
  (``feature_cache_views``, default 8), one entry per view index ``v``; view ``v`` of item ``i``
  is drawn with torch's RNG seeded from ``(v, i)``, so the bank does not depend on the run's seed
  or on the order of extraction. Each training step draws ``views`` *different* views per image
  (without replacement) with torch's RNG, which the engine reseeds from (seed, epoch), so a
  resumed run draws what an uninterrupted one draws. This approximates fresh augmentation: a
  method sees at most V distinct augmentations of each image instead of a new one every epoch.

The cache key (SHA-256 of the JSON of its parts; the parts are stored inside the file and
re-checked on load) covers: the dataset name and split name, a fingerprint of the split's items
(class, labels, file paths and sizes / array positions and a hash of the pixel pool / features),
the backbone config (``_target_`` and arguments) and a hash of its weights (the whole state_dict),
the transform config, the view index (and pipeline of a two-view transform), the stored dtype,
the engine that ran the backbone (torch, openvino, onnxruntime: a cache never mixes them) and a
format version. Files: ``<feature_cache_dir>/<dataset>/<split>-<kind>-<key>.npz``
(default ``<data_dir>/feature_cache``).

Crash safety: extraction writes shards of ``SHARD`` items into ``<entry>.partial/`` (each shard
written to a temporary file and renamed), skips finished shards when it starts again, and writes
the final file by temporary file + rename, so a killed run never leaves a file that is read as
complete, and the next run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.base import (
    ArrayImageSplit,
    FeatureSplit,
    FileImageSplit,
    HashingData,
    ImageSplit,
    is_deterministic,
    is_feature_split,
)
from utils import distributed
from utils.checkpoint import (
    remove_stale_temporaries,
    state_fingerprint,
    write_npy,
    write_npz,
    write_text,
)
from utils.config import progress_bars
from utils.errors import ConfigError, DataError
from utils.feature_extractor import TorchExtractor, build_extractor, resolve_engine
from utils.resources import choose_workers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHARD = 4096  # items per resumable shard
AUG_SEED = 20240601  # base seed of the augmented-view banks (fixed: banks are shared by all runs)
DTYPES = {"float32": np.float32, "float16": np.float16}


# ---------------------------------------------------------------------------- fingerprints
def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


_POOL_HASHES: dict[int, tuple[Any, str]] = {}


def _array_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (memoised per object: pools are shared)."""
    memo = _POOL_HASHES.get(id(array))
    if memo is not None and memo[0] is array:
        return memo[1]
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    digest = h.hexdigest()
    _POOL_HASHES[id(array)] = (array, digest)
    return digest


def split_fingerprint(split: ImageSplit) -> str:
    """A checksum of the list of items of ``split``: its class, labels, and what identifies each
    item (file path and size; position in the pixel pool and a hash of the pool; the features)."""
    h = hashlib.sha256(type(split).__name__.encode())
    h.update(_array_hash(np.asarray(split.labels)).encode())
    if isinstance(split, FileImageSplit):
        h.update(split.mode.encode())
        for path in split.paths:
            path = str(path)
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            h.update(f"{path}\0{size}\n".encode())
    elif isinstance(split, ArrayImageSplit):
        h.update(_array_hash(split.index).encode())
        h.update(_array_hash(split.images).encode())
    elif isinstance(split, FeatureSplit):
        h.update(_array_hash(split.features).encode())
    else:
        raise ConfigError(
            f"feature_cache cannot fingerprint a {type(split).__name__} split: "
            "set feature_cache=off"
        )
    return h.hexdigest()


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and values of the whole state_dict."""
    return state_fingerprint(module.state_dict())


def cache_key(parts: dict) -> str:
    return _sha(json.dumps(parts, sort_keys=True, default=str))[:20]


# ---------------------------------------------------------------------------- storage
def load_entry(path: Path, parts: dict) -> np.ndarray | None:
    """The stored features when ``path`` is a complete entry with exactly these key parts."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if json.loads(str(stored["parts"])) != json.loads(json.dumps(parts, default=str)):
                log.warning("feature cache %s: key parts differ, recomputing", path)
                return None
            features = stored["features"]
    except Exception as error:  # truncated / unreadable: a cache is derived data, recompute it
        log.warning(
            "feature cache file %s is damaged (%s: %s): recomputing it",
            path,
            error.__class__.__name__,
            error,
        )
        return None
    if features.shape[0] != parts["items"]:
        return None
    return features


def _read_shard(path: Path, rows: int) -> np.ndarray | None:
    """A finished shard of ``rows`` features, or None when it is missing or damaged (then it is
    deleted and extracted again; shards are written atomically, so damage comes from outside)."""
    if not path.is_file():
        return None
    try:
        shard = np.load(path, allow_pickle=False)
        if shard.ndim == 2 and shard.shape[0] == rows:
            return shard
    except (OSError, ValueError) as error:
        log.warning("feature cache shard %s is damaged (%s): extracting it again", path, error)
    path.unlink(missing_ok=True)
    return None


class _Items(Dataset):
    """Items ``[start, stop)`` of a split through ``transform``; with ``seed`` set, torch's RNG is
    seeded from (seed, view, i) before transforming item i (reproducible augmented views)."""

    def __init__(
        self,
        split: ImageSplit,
        transform: Callable,
        start: int,
        stop: int,
        seed: tuple[int, int] | None,
    ):
        self.split, self.transform, self.start, self.stop, self.seed = (
            split,
            transform,
            start,
            stop,
            seed,
        )

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int):
        i = self.start + int(j)
        if self.seed is not None:
            from utils.seed import derive_seed

            # the CPU generator only (what CPU transforms draw from): the CUDA generators are
            # neither used here nor saved by extract()'s fork_rng(devices=[])
            torch.random.default_generator.manual_seed(derive_seed(self.seed[0], self.seed[1], i))
        return self.transform(self.split.load(i))


@dataclass(frozen=True)
class _Extraction:
    """One cache entry to extract: ``split`` through ``transform`` and ``run`` (images
    ``(B, C, H, W)`` -> features ``(B, D)`` on the CPU), in shards of ``SHARD`` items written to
    ``<path>.partial/``, then merged into ``path`` under the key ``parts``."""

    split: ImageSplit
    run: Callable
    transform: Callable
    path: Path
    parts: dict
    batch_size: int
    num_workers: int
    view_seed: tuple[int, int] | None
    progress: bool
    desc: str

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    @property
    def shards(self) -> list[tuple[int, int]]:
        """(start, stop) of every shard."""
        n = len(self.split)
        return [(s, min(s + SHARD, n)) for s in range(0, n, SHARD)]


def extract(
    split: ImageSplit,
    backbone: nn.Module | Callable,
    transform: Callable,
    path: Path,
    parts: dict,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    view_seed: tuple[int, int] | None = None,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Features ``(N, D)`` of ``split`` through ``transform`` and ``backbone`` (an ``nn.Module``,
    run eagerly in eval mode without grad, or an extractor of ``utils/feature_extractor.py``:
    images ``(B, C, H, W)`` -> ``(B, D)`` CPU tensor), stored at ``path`` (see the module
    docstring); loads them when already complete.

    Processes that need the same entry at once (the jobs of a parallel sweep) take turns on a
    file lock ``<path>.lock``: the first extracts, the others wait and then load its file. The
    operating system releases the lock when its holder dies, so a crashed extractor blocks no
    one; the next holder resumes from its finished shards.

    Under torchrun every rank calls it for the same entries in the same order: rank 0 takes the
    lock, each rank extracts every world-th shard, rank 0 merges them (see
    :func:`_extract_together`).
    """
    run = TorchExtractor(backbone, device) if isinstance(backbone, nn.Module) else backbone
    job = _Extraction(
        split, run, transform, path, parts, batch_size, num_workers, view_seed, progress, desc
    )
    if distributed.active():
        return _extract_together(job)
    features = load_entry(path, parts)
    if features is None:
        lock = FileLock(str(path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("feature cache: another process is extracting %s; waiting for it", path.name)
            lock.acquire()
        try:
            features = load_entry(path, parts)  # finished by the process we waited for
            if features is None:
                return _extract_locked(job)
        finally:
            lock.release()
    if job.partial.exists():  # killed between the final rename and the clean-up
        shutil.rmtree(job.partial, ignore_errors=True)
    return features


def _extract_together(job: _Extraction) -> np.ndarray:
    """extract() on the ranks of a torchrun launch: rank 0 holds the entry's file lock (other
    jobs wait as usual) and decides for all whether the entry is missing; then rank r extracts
    the shards k with k % world == r into ``<path>.partial/``, rank 0 merges them after a
    barrier, and every rank loads the merged file after another. A killed launch leaves its
    finished shards, which the next one skips, whatever its number of processes."""
    lock = FileLock(str(job.path) + ".lock") if distributed.is_main() else None
    if lock is not None:
        lock.acquire()
    try:
        missing = lock is not None and load_entry(job.path, job.parts) is None
        if missing:  # rank 0 alone prepares the folder the ranks then write their shards into
            _prepare_partial(job)
        if distributed.broadcast_object(missing):
            world, rank = distributed.world_size(), distributed.rank()
            _extract_shards(
                replace(job, progress=job.progress and rank == 0),
                owned=lambda k: k % world == rank,
                prepare=False,
            )
            distributed.barrier()
            if lock is not None:
                _extract_locked(replace(job, progress=False))  # every shard is there: a merge
    finally:
        if lock is not None:
            lock.release()
    distributed.barrier()
    features = load_entry(job.path, job.parts)
    if features is None:
        raise DataError(
            f"feature cache {job.path} was not written by rank 0 of this launch: check "
            "that every process sees the same file system"
        )
    return features


def _extract_locked(job: _Extraction) -> np.ndarray:
    """extract() under the entry's lock: extract the shards ``<path>.partial/`` lacks, merge."""
    n = len(job.split)
    dtype = DTYPES[job.parts["dtype"]]
    started = time.time()
    pieces, computed = _extract_shards(job)
    shards = job.shards
    features = np.concatenate([pieces[a] for a, _ in shards]) if shards else np.zeros((0, 0), dtype)
    if features.shape[0] != n:
        raise DataError(
            f"feature cache {job.partial} holds {features.shape[0]} rows for {n} items: "
            "delete that folder and run again"
        )
    write_npz(
        job.path,
        features=features,
        parts=np.array(json.dumps(job.parts, sort_keys=True, default=str)),
    )
    shutil.rmtree(job.partial, ignore_errors=True)
    if computed:
        seconds = time.time() - started
        log.info(
            "feature cache: %d images of %s in %.1f s (%.1f images/s, %s) -> %s",
            computed,
            job.desc,
            seconds,
            computed / max(seconds, 1e-9),
            job.parts.get("engine", "torch"),
            job.path,
        )
    return features


def _prepare_partial(job: _Extraction) -> None:
    """``<path>.partial/`` with its parts.json, without the temporaries of a killed writer."""
    job.partial.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(job.partial)
    write_text(job.partial / "parts.json", json.dumps(job.parts, sort_keys=True, default=str))


def _extract_shards(
    job: _Extraction,
    owned: Callable[[int], bool] = lambda k: True,
    prepare: bool = True,
) -> tuple[dict[int, np.ndarray | None], int]:
    """Extract the shards ``k`` (of ``SHARD`` items) with ``owned(k)`` that ``<path>.partial/``
    lacks, each written to its own file; returns {shard start: features or None (another
    rank's, not read)} and the number of images computed. ``prepare``: create the folder first
    (False where rank 0 did it for all ranks)."""
    dtype = DTYPES[job.parts["dtype"]]
    if prepare:
        _prepare_partial(job)
    shards = job.shards
    pieces = {
        start: _read_shard(job.partial / f"{start:09d}.npy", stop - start) if owned(k) else None
        for k, (start, stop) in enumerate(shards)
    }
    computed = 0
    torch_threads = torch.get_num_threads()
    if getattr(job.run, "own_threads", False):
        # the engine has its own thread pool; torch only decodes and resizes here, per image,
        # which beside busy processes is 16x slower with 2 threads than with 1 (docs/extraction.md)
        torch.set_num_threads(1)
    bar = tqdm(
        total=len(job.split),
        initial=sum(len(p) for p in pieces.values() if p is not None),
        desc=job.desc,
        unit="img",
        disable=not job.progress,
        smoothing=0.1,
    )
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for k, (start, stop) in enumerate(shards):
                if pieces[start] is not None or not owned(k):
                    continue
                loader = DataLoader(
                    _Items(job.split, job.transform, start, stop, job.view_seed),
                    batch_size=job.batch_size,
                    shuffle=False,
                    num_workers=job.num_workers,
                )
                chunk = []
                for images in loader:
                    chunk.append(job.run(images).float().cpu().numpy().astype(dtype))
                    computed += len(images)
                    bar.update(len(images))
                pieces[start] = np.concatenate(chunk)
                write_npy(job.partial / f"{start:09d}.npy", pieces[start])
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)
    return pieces, computed


# ---------------------------------------------------------------------------- cached splits
class CachedSplit(ImageSplit):
    """A split whose items are cached backbone features, one array per transform *kind*.

    ``features[kind]`` is ``(N, D)`` (a deterministic transform) or ``(P, V, N, D)`` (a bank of V
    augmented views for each of P pipelines of a random transform). :meth:`load` returns the dict
    ``{kind: (D,) or (P, V, D) tensor}`` of one item; a :class:`CachedView` transform picks from it.
    """

    def __init__(self, features: dict[str, np.ndarray], labels: np.ndarray):
        super().__init__(labels)
        self.features = features
        for kind, array in features.items():
            if array.shape[-2] != len(self.labels):
                raise ValueError(
                    f"cached {kind} features hold {array.shape[-2]} rows for "
                    f"{len(self.labels)} labels"
                )

    def load(self, i: int) -> dict[str, torch.Tensor]:
        return {
            kind: torch.from_numpy(np.asarray(array[..., i, :], dtype=np.float32))
            for kind, array in self.features.items()
        }

    def subset(self, indices) -> CachedSplit:
        indices = np.asarray(indices, dtype=np.int64)
        return CachedSplit(
            {k: np.take(a, indices, axis=-2) for k, a in self.features.items()},
            self.labels[indices],
        )


class CachedView:
    """The pass-through transform of cached features: kind ``"eval"``/``"train"`` of the item.

    For a bank ``(P, V, D)`` it returns ``views`` vectors: with one pipeline (P = 1), ``views``
    different view indices drawn without replacement from V; with P = views pipelines (an
    asymmetric two-view transform), one random view of each pipeline. Randomness: torch's RNG
    (reseeded by the engine every epoch, and per worker by the DataLoader).
    """

    def __init__(self, kind: str, views: int = 1):
        self.kind = kind
        self.views = int(views)

    def __call__(self, item: dict[str, torch.Tensor]):
        x = item[self.kind]
        if x.dim() == 1:
            return x if self.views == 1 else [x.clone() for _ in range(self.views)]
        pipelines, banks = x.shape[0], x.shape[1]
        if pipelines == 1:
            picks = torch.randperm(banks)[: self.views]
            chosen = [x[0, int(v)] for v in picks]
        else:
            chosen = [x[p, int(torch.randint(banks, ()))] for p in range(pipelines)]
        return chosen[0] if self.views == 1 else chosen

    def __repr__(self) -> str:
        return f"CachedView(kind={self.kind!r}, views={self.views})"


# ---------------------------------------------------------------------------- engine hook
def _pipelines(transform) -> list[Callable]:
    """The single-view pipelines of a random transform (one bank each)."""
    if int(getattr(transform, "views", 1)) == 1:
        return [transform]
    first, second = getattr(transform, "first", None), getattr(transform, "second", None)
    if first is None or second is None:
        raise ConfigError(
            f"feature_cache cannot split the two-view transform {transform!r} into "
            "its pipelines: set feature_cache=off"
        )
    return [first] if first is second else [first, second]


def why_not_applicable(cfg: DictConfig, model, data: HashingData) -> str | None:
    """None when the feature cache applies, else the reason (one clause)."""
    if float(cfg.backbone_lr_scale) != 0 or not getattr(model, "frozen_backbone", False):
        return f"the backbone is trained (backbone_lr_scale={cfg.backbone_lr_scale}); set backbone_lr_scale=0"
    backbone = model.backbone
    if not getattr(backbone, "deterministic", False):
        return f"the backbone {cfg.backbone._target_} is not deterministic in eval mode"
    if model.head.input_kind != "features":
        return f"model={cfg.model.name} reads {model.head.input_kind}, not one feature vector per image"
    if (
        getattr(backbone, "reads_features", False)
        or isinstance(backbone, nn.Identity)
        or any(
            is_feature_split(s) or isinstance(s, CachedSplit)
            for s in (data.train, data.query, data.database)
        )
    ):
        return "the dataset already yields feature vectors (nothing to cache)"
    return None


def rows_within(sub: ImageSplit, sup: ImageSplit) -> np.ndarray | None:
    """Rows of ``sup`` that hold the items of ``sub`` (same files, or same pool positions of the
    same pixel array) when all of them are there, else None. Train is part of the database in
    most protocols: its eval-transform features are then taken from the database's."""
    if isinstance(sub, FileImageSplit) and isinstance(sup, FileImageSplit) and sub.mode == sup.mode:
        lookup = {str(p): i for i, p in enumerate(sup.paths)}
        keys: list = [str(p) for p in sub.paths]
    elif (
        isinstance(sub, ArrayImageSplit)
        and isinstance(sup, ArrayImageSplit)
        and sub.images is sup.images
    ):
        lookup = {int(j): i for i, j in enumerate(sup.index)}
        keys = [int(j) for j in sub.index]
    else:
        return None
    rows = [lookup.get(k) for k in keys]
    if any(r is None for r in rows):
        return None
    rows = np.asarray(rows, dtype=np.int64)
    return rows if np.array_equal(sup.labels[rows], sub.labels) else None


def cache_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.get("feature_cache_dir") or Path(str(cfg.data_dir)) / "feature_cache")


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


@dataclass
class CachedFeatures:
    """What :func:`apply_feature_cache` computed, for the composer to use in place of the live
    backbone: the three splits as :class:`CachedSplit` objects (``data``), the pass-through
    transforms, ``features_size`` D (the composer replaces the model's backbone by an identity
    over D features: ``HashModel.use_cached_features``) and the ``engine`` that extracted them."""

    data: HashingData
    train_transform: CachedView
    eval_transform: CachedView
    features_size: int
    engine: str


def _example_batch(split: ImageSplit, transform, count: int = 2) -> torch.Tensor:
    """The first ``count`` items of ``split`` through ``transform``: ``(B, C, H, W)``, what an
    engine converts the backbone for and checks it against eager torch on."""
    return torch.stack([transform(split.load(i)) for i in range(min(count, len(split)))])


def live_backbone_engine(cfg: DictConfig, model, data: HashingData, eval_transform, device):
    """The inference engine that runs a frozen backbone at every step when its features are not
    cached (``feature_cache=off``: fresh augmentation, the exact method), or None to keep the
    module. Only on the CPU, for a frozen deterministic backbone that feeds the head features,
    and when ``feature_extractor`` resolves to an engine (``auto``: OpenVINO); the engine is
    checked on two training images within 1e-4 of the module, and falls back like the cache's
    (one log line). EfficientNet-Lite0 at 224 px on 2 cores: 6x eager (docs/extraction.md)."""
    if (
        device.type != "cpu"
        or not model.frozen_backbone
        or model.head_only
        or model.head.input_kind != "features"
        or not getattr(model.backbone, "deterministic", False)
    ):
        return None
    setting = cfg.get("feature_extractor", "torch")  # saved before the engines: eager torch
    engine, _ = resolve_engine(setting, device)
    if engine == "torch":
        return None
    extractor = build_extractor(
        model.backbone, setting, device, _example_batch(data.train, eval_transform)
    )
    if extractor.name == "torch":  # the engine fell back (its log line says why)
        return None
    log.info("frozen backbone: runs through %s at every step (feature_cache=off)", extractor.name)
    return extractor


def apply_feature_cache(
    cfg: DictConfig,
    model,
    data: HashingData,
    train_transform,
    eval_transform,
    device: torch.device,
    closed_form: bool = False,
) -> CachedFeatures | None:
    """Compute (or load) the frozen backbone's features when ``cfg.feature_cache`` allows it.

    Returns None when the cache does not apply (``auto``, ``off``), else :class:`CachedFeatures`:
    the three splits as :class:`CachedSplit` objects, :class:`CachedView` pass-through transforms
    (with the train transform's ``views``) and the feature size. The model is not changed: the
    composer swaps its backbone. ``feature_cache=on`` where it cannot apply is a ConfigError
    saying why. ``closed_form``: the trainer reads the training split through the eval transform
    (LSH / PCAH / ITQ). The backbone runs through ``cfg.feature_extractor``
    (utils/feature_extractor.py) with torch's current thread count; only entries that are
    missing are extracted, so a complete cache converts nothing.
    """
    mode = str(cfg.get("feature_cache", "auto")).lower()
    if mode in ("false", "off", "0", "none"):
        return None
    if mode not in ("auto", "on", "true", "1"):
        raise ConfigError(f"feature_cache must be auto, on or off, got {cfg.feature_cache!r}")
    reason = why_not_applicable(cfg, model, data)
    if reason is not None:
        if mode != "auto":
            raise ConfigError(
                f"feature_cache=on cannot apply: {reason} (or set feature_cache=auto)"
            )
        log.info("feature cache not used: %s", reason)
        return None

    dtype = str(cfg.get("feature_cache_dtype", "float32"))
    if dtype not in DTYPES:
        raise ConfigError(f"feature_cache_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    n_views = int(cfg.get("feature_cache_views", 8))
    views = int(getattr(train_transform, "views", 1))
    backbone = model.backbone.to(device)
    # a config saved before feature_extractor existed ran torch: it keeps running torch (its
    # numbers stay; its cache files, keyed without an engine, are extracted once more)
    setting = cfg.get("feature_extractor", "torch")
    engine, _ = resolve_engine(setting, device)
    extractor = None  # built on the first missing entry (converting costs seconds)

    def ensure_extractor(example: torch.Tensor) -> None:
        nonlocal extractor
        if extractor is None:
            extractor = build_extractor(backbone, setting, device, example)
            if extractor.name != engine:  # the engine fell back: these features are not its
                raise EngineFallback(extractor.name)

    def run(images: torch.Tensor) -> torch.Tensor:
        ensure_extractor(images)
        return extractor(images)

    root = cache_dir_of(cfg) / str(cfg.dataset.name)
    root.mkdir(parents=True, exist_ok=True)
    eval_cfg = {
        "_target_": "datasets.transforms.eval_transform",
        "resize": cfg.dataset.resize,
        "crop": cfg.dataset.crop,
        "interpolation": "bicubic",
    }
    train_cfg = _plain(cfg.transforms)
    batch = int(cfg.get("eval_batch_size") or cfg.batch_size)
    workers = choose_workers(cfg.get("num_workers", "auto"), head_only=False)  # images to decode
    progress = progress_bars(cfg.get("progress", "auto"))
    weights = weights_fingerprint(backbone)
    prints = {
        name: split_fingerprint(getattr(data, name)) for name in ("train", "query", "database")
    }

    def compute() -> tuple[CachedSplit, CachedSplit, CachedSplit]:
        common = {
            "version": FORMAT_VERSION,
            "dataset": str(cfg.dataset.name),
            "backbone": _plain(cfg.backbone),
            "weights": weights,
            "dtype": dtype,
            "engine": engine,
        }

        def entry(
            name: str,
            split: ImageSplit,
            transform,
            tcfg,
            fingerprint: str,
            view=None,
            pipeline=None,
            seed=None,
        ) -> np.ndarray:
            parts = {
                **common,
                "split": name,
                "items": len(split),
                "split_fingerprint": fingerprint,
                "transform": tcfg,
                "view": view,
                "pipeline": pipeline,
                "aug_seed": None if view is None else AUG_SEED,
            }
            tag = "eval" if tcfg is eval_cfg else "train"
            suffix = "" if view is None else f"-p{pipeline}v{view}"
            path = root / f"{name}-{tag}{suffix}-{cache_key(parts)}.npz"
            if extractor is None and not path.is_file() and len(split):
                # a miss: convert now, so a fallback writes nothing under the engine's key (the
                # example goes through the eval transform, which draws nothing from the RNG)
                ensure_extractor(_example_batch(split, eval_transform))
            return extract(
                split,
                run,
                transform,
                path,
                parts,
                device,
                batch,
                workers,
                view_seed=seed,
                progress=progress,
                desc=f"{cfg.dataset.name} {name} {tag}{suffix}",
            )

        query = CachedSplit(
            {"eval": entry("query", data.query, eval_transform, eval_cfg, prints["query"])},
            data.query.labels,
        )
        database = CachedSplit(
            {
                "eval": entry(
                    "database", data.database, eval_transform, eval_cfg, prints["database"]
                )
            },
            data.database.labels,
        )
        train_features: dict[str, np.ndarray] = {}
        needs_eval = closed_form or float(cfg.get("val_size", 0) or 0) > 0
        if needs_eval:
            rows = rows_within(data.train, data.database)
            train_features["eval"] = (
                database.features["eval"][rows]
                if rows is not None
                else entry("train", data.train, eval_transform, eval_cfg, prints["train"])
            )
        if not closed_form:
            if is_deterministic(train_transform) and views == 1:
                train_features["train"] = entry(
                    "train", data.train, train_transform, train_cfg, prints["train"]
                )
            else:
                if n_views < views:
                    raise ConfigError(
                        f"feature_cache_views={n_views} cannot give {views} "
                        "different views per image: set feature_cache_views >= 2"
                    )
                banks = []
                for p, pipeline in enumerate(_pipelines(train_transform)):
                    banks.append(
                        np.stack(
                            [
                                entry(
                                    "train",
                                    data.train,
                                    pipeline,
                                    train_cfg,
                                    prints["train"],
                                    view=v,
                                    pipeline=p,
                                    seed=(AUG_SEED + p, v),
                                )
                                for v in range(n_views)
                            ]
                        )
                    )
                train_features["train"] = np.stack(banks)  # (P, V, N, D)
        return query, database, CachedSplit(train_features, data.train.labels)

    try:
        query, database, train = compute()
    except EngineFallback as fallback:  # auto, and the engine could not run this backbone
        engine = fallback.engine
        query, database, train = compute()

    cached = HashingData(
        train=train, query=query, database=database, split_indices=data.split_indices
    )
    train_view = CachedView("eval" if closed_form else "train", views)
    log.info(
        "feature cache: %s (D=%d, %s), training from %s features",
        root,
        backbone.features_size,
        engine,
        train_view.kind,
    )
    return CachedFeatures(
        cached, train_view, CachedView("eval", 1), int(backbone.features_size), engine
    )


class EngineFallback(Exception):
    """Raised inside apply_feature_cache when ``auto``'s engine fell back to torch on the first
    missing entry: the entries are then keyed and extracted again as torch's."""

    def __init__(self, engine: str):
        super().__init__(engine)
        self.engine = engine
