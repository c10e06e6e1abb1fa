"""CIFAR-10 for hashing: a 60,000-image pool split by a named, seeded protocol (methods.md §5.2).

The pool is the official train set (50,000) followed by the official test set (10,000), with a
flag of origin. It is read from, in this order:

1. an image-folder copy ``root/train/<class>/*`` and ``root/test/<class>/*`` (e.g. the shared
   ``cifar10-jpg.tar.gz`` extracted): class ids = sorted folder names, files sorted by name
   within each class, pool = train files then test files;
2. the official python batches ``root/cifar-10-batches-py`` (via torchvision);
3. a torchvision download into ``root`` when ``download`` is true.

Split indices are cached in ``root/splits/{protocol}_{split_seed}.npz``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from datasets.base import ArrayImageSplit, FileImageSplit, HashingData
from utils.checkpoint import write_npz
from utils.errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Named protocols, and the reference's numeric `ep` values as aliases (methods.md §5.2).
# Sizes are query / database / train for CIFAR-10.
PROTOCOLS = {
    "standard": "per class: 100 query, the other 5,900 database, train = first 500 of the database (1,000 / 59,000 / 5,000)",
    "disjoint": "per class: 100 query, next 500 train, the other 5,400 database (1,000 / 54,000 / 5,000)",
    "q10k": "per class: 1,000 query, the other 5,000 database, train = first 500 of the database (10,000 / 50,000 / 5,000)",
    "q10k_train_all": "per class: 1,000 query, the other 5,000 database, train = database (10,000 / 50,000 / 50,000)",
    "official_5k": "query = official test, database = official train, train = 500 random per class from the database (10,000 / 50,000 / 5,000)",
    "official": "query = official test, database = official train = train (10,000 / 50,000 / 50,000)",
}
PROTOCOL_ALIASES = {
    1: "standard",
    11: "disjoint",
    2: "q10k",
    3: "q10k_train_all",
    4: "official_5k",
    5: "official",
}

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
}


def resolve_protocol(protocol) -> str:
    """Canonical protocol name for a name or a numeric alias (int or digit string)."""
    key = protocol
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool) and key in PROTOCOL_ALIASES:
        return PROTOCOL_ALIASES[key]
    if isinstance(key, str) and key in PROTOCOLS:
        return key
    valid = ", ".join(f"{name} ({num})" for num, name in PROTOCOL_ALIASES.items())
    raise ConfigError(f"Unknown CIFAR-10 protocol {protocol!r}: use one of {valid}.")


def cifar_protocol_split(
    labels, is_official_train, protocol="standard", split_seed: int = 42
) -> dict[str, np.ndarray]:
    """Split a CIFAR pool into train / query / database indices by a named protocol.

    Per-class shuffle: for each class c = 0..nclass-1 in order, the pool indices of class c
    (ascending) are shuffled with one ``np.random.RandomState(split_seed)``. This reproduces the
    reference's split, which shuffled with the global numpy RNG seeded with 42 just before
    (provided nothing else drew from it in between). Each split is then concatenated class
    after class; see :data:`PROTOCOLS` for what each protocol takes per class.

    Args:
        labels: ``(M,)`` int class ids of the pool.
        is_official_train: ``(M,)`` bool, True for images of the official train set.
        protocol: a name of :data:`PROTOCOLS` or a numeric alias of :data:`PROTOCOL_ALIASES`.
        split_seed: seed of the split RNG.

    Returns:
        ``{"train", "query", "database"} -> (N,) int64`` pool indices.
    """
    name = resolve_protocol(protocol)
    labels = np.asarray(labels, dtype=np.int64)
    is_official_train = np.asarray(is_official_train, dtype=bool)
    if labels.shape != is_official_train.shape or labels.ndim != 1:
        raise ValueError("labels and is_official_train must be 1-D arrays of the same length")

    rng = np.random.RandomState(split_seed)
    shuffled = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        shuffled.append(idx)

    n_query = 100 if name in ("standard", "disjoint") else 1000
    n_train = 500
    out = {"train": [], "query": [], "database": []}
    for c, idx in enumerate(shuffled):
        if name in ("official", "official_5k"):
            query, database = idx[~is_official_train[idx]], idx[is_official_train[idx]]
            needed, have = n_train, len(database)
        else:
            needed, have = n_query + n_train, len(idx)
        if have < needed:
            raise DataError(
                f"CIFAR class {c} has only {have} usable images but protocol {name!r} needs {needed}: "
                "use the complete CIFAR-10 (5,000 train + 1,000 test images per class)."
            )
        if name == "official":
            train = database
        elif name == "official_5k":
            # Deviation: the reference drew these 500 with torch.randperm; we use the split RNG.
            train = database[rng.permutation(len(database))[:n_train]]
        elif name == "disjoint":
            query, train, database = (
                idx[:n_query],
                idx[n_query : n_query + n_train],
                idx[n_query + n_train :],
            )
        else:
            query, database = idx[:n_query], idx[n_query:]
            train = database if name == "q10k_train_all" else database[:n_train]
        out["train"].append(train)
        out["query"].append(query)
        out["database"].append(database)
    return {key: np.concatenate(parts).astype(np.int64) for key, parts in out.items()}


# ----------------------------------------------------------------------------------------------
# Pool readers


def has_image_folders(root) -> bool:
    """True when ``root/train/<class>/`` and ``root/test/<class>/`` folders exist."""
    root = Path(root)
    return all(
        (root / part).is_dir() and any(p.is_dir() for p in (root / part).iterdir())
        for part in ("train", "test")
    )


def _image_files(folder: Path) -> list[str]:
    return sorted(
        entry.path
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
    )


def read_image_folder_pool(root) -> tuple[FileImageSplit, np.ndarray, list[str]]:
    """Read ``root/{train,test}/<class>/*`` as one pool.

    Returns:
        ``(pool, is_official_train, classes)``: a :class:`FileImageSplit` (RGB) of the train
        files then the test files, a ``(M,)`` bool origin flag, and the sorted class names.
    """
    root = Path(root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if classes != test_classes:
        raise DataError(
            f"The class folders of {root / 'train'} and {root / 'test'} differ: "
            "give both the same <class>/ subfolders."
        )
    paths, labels, is_train = [], [], []
    for part in ("train", "test"):
        for c, name in enumerate(classes):
            files = _image_files(root / part / name)
            paths += files
            labels += [c] * len(files)
            is_train += [part == "train"] * len(files)
    if not paths:
        raise DataError(
            f"No image files found under {root}/train/<class>/ and {root}/test/<class>/: add the images or fix data_dir."
        )
    return FileImageSplit(paths, np.asarray(labels, dtype=np.int64)), np.asarray(is_train), classes


def read_python_batches_pool(
    root, download: bool = True
) -> tuple[ArrayImageSplit, np.ndarray, list[str]]:
    """Read the official python batches from ``root`` (downloading them if allowed).

    Returns:
        ``(pool, is_official_train, classes)``: an :class:`ArrayImageSplit` over the
        ``(60000, 32, 32, 3)`` uint8 array (train then test), the origin flag, the class names.
    """
    from torchvision.datasets import CIFAR10

    hint = (
        f"put cifar-10-batches-py/ or train/<class>/ and test/<class>/ image folders under {root} "
        "(or pass data_dir=... pointing at a folder whose cifar10/ holds them)"
    )
    parts = []
    for train in (True, False):
        try:
            parts.append(CIFAR10(str(root), train=train, download=False))
            continue
        except RuntimeError:  # not there (or corrupted): download if allowed
            if not download:
                raise DataError(
                    f"CIFAR-10 not found under {root} and download is off: {hint}."
                ) from None
        try:
            parts.append(CIFAR10(str(root), train=train, download=True))
        except Exception as err:  # network, disk or archive errors all mean the same to the user
            raise DataError(
                f"CIFAR-10 not found under {root} and the download failed (offline?) "
                f"({type(err).__name__}: {err}): {hint}."
            ) from err
    images = np.concatenate([parts[0].data, parts[1].data])
    labels = np.concatenate([np.asarray(parts[0].targets), np.asarray(parts[1].targets)]).astype(
        np.int64
    )
    is_train = np.arange(len(labels)) < len(parts[0].data)
    return ArrayImageSplit(images, labels), is_train, list(parts[0].classes)


# ----------------------------------------------------------------------------------------------
# Split cache


def _pool_digest(labels: np.ndarray, is_train: np.ndarray) -> str:
    """Fingerprint of a pool's labels and origin flags: a cache from another pool is ignored."""
    h = hashlib.sha1(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(is_train, dtype=bool).tobytes())
    return h.hexdigest()


def _load_cached_split(path: Path, digest: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["pool_digest"]) != digest:
                return None
            return {key: f[key].astype(np.int64) for key in ("train", "query", "database")}
    except (OSError, KeyError, ValueError):
        return None  # absent or damaged: regenerate (the split is deterministic)


def _save_split(path: Path, split: dict[str, np.ndarray], digest: str) -> None:
    """Write atomically; a read-only or full root just skips the cache (the split is recomputed)."""
    try:
        write_npz(path, pool_digest=np.asarray(digest), **split)
    except UserError as error:
        log.info("split cache not written: %s", error)


def cifar10_splits(
    root, protocol="standard", split_seed: int = 42, download: bool = True
) -> HashingData:
    """CIFAR-10 train / query / database splits by a named protocol (methods.md §5.2).

    Args:
        root: folder with ``train/<class>/`` + ``test/<class>/`` image folders, or with (or to
            receive) the official ``cifar-10-batches-py/``.
        protocol: one of :data:`PROTOCOLS` or a numeric alias (1, 11, 2, 3, 4, 5).
        split_seed: seed of the per-class shuffle (42 reproduces the reference).
        download: allow torchvision to download the python batches when nothing is on disk.

    Returns:
        HashingData whose splits yield 32x32 RGB PIL images and int64 labels, with
        ``split_indices`` into the 60,000-image pool (official train, then official test).
    """
    name = resolve_protocol(protocol)
    root = Path(root)
    if has_image_folders(root):
        pool, is_train, classes = read_image_folder_pool(root)
    else:
        pool, is_train, classes = read_python_batches_pool(root, download=download)
    if len(classes) != 10:
        raise DataError(
            f"{root} holds {len(classes)} classes, CIFAR-10 needs 10: point root at a CIFAR-10 copy."
        )

    digest = _pool_digest(pool.labels, is_train)
    cache = root / "splits" / f"{name}_{split_seed}.npz"
    split = _load_cached_split(cache, digest)
    if split is None:
        split = cifar_protocol_split(pool.labels, is_train, name, split_seed)
        _save_split(cache, split, digest)
    return HashingData(
        train=pool.subset(split["train"]),
        query=pool.subset(split["query"]),
        database=pool.subset(split["database"]),
        split_indices=split,
        classes=list(classes),
    )
