"""scikit-learn's bundled 8x8 digits: the no-download dataset of the out-of-the-box demo."""

from __future__ import annotations

import numpy as np

from datasets.base import ArrayImageSplit, HashingData
from utils.errors import ConfigError


def load_digits_pool() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(1797, 8, 8)`` uint8 images in 0..255 and ``(1797,)`` int64 labels.

    Source: ``sklearn.datasets.load_digits`` (UCI optical digits, pixel values 0..16), scaled
    by 255/16 and rounded.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def digits_splits(
    queries_per_class: int = 20, train="database", split_seed: int = 42
) -> HashingData:
    """Query / database / train splits of the 8x8 digits (protocol "standard" of CIFAR-10, scaled down).

    Protocol: for each class c = 0..9 in order, the pool indices of class c (ascending) are
    shuffled with one ``np.random.RandomState(split_seed)``; the first ``queries_per_class``
    go to the query set and the rest to the database. Splits are concatenated class after
    class. With the defaults: 200 queries, 1,597 database items, train = database (1,597).

    Args:
        queries_per_class: queries drawn per class (20 -> 200 queries).
        train: ``"database"`` (train = database, as CIFAR-10 "q10k_train_all") or a positive
            int n (train = the first n of each class's shuffled database items, train ⊂ db).
        split_seed: seed of the split RNG.

    Returns:
        HashingData of :class:`ArrayImageSplit` (PIL 'L' 8x8 images, int64 labels) with
        ``split_indices`` into the 1,797-image pool.
    """
    images, labels = load_digits_pool()
    counts = np.bincount(labels)
    if not 0 < int(queries_per_class) < counts.min():
        raise ConfigError(
            f"digits queries_per_class={queries_per_class} is invalid: "
            f"use an integer between 1 and {counts.min() - 1} (the smallest class has {counts.min()} images)."
        )
    if train != "database" and not (
        isinstance(train, int) and 0 < train <= counts.min() - queries_per_class
    ):
        raise ConfigError(
            f"digits train={train!r} is invalid: use 'database' or a number of training images per "
            f"class between 1 and {counts.min() - queries_per_class}."
        )

    rng = np.random.RandomState(split_seed)
    query, database, train_idx = [], [], []
    for c in range(len(counts)):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        query.append(idx[:queries_per_class])
        database.append(idx[queries_per_class:])
        if train != "database":
            train_idx.append(idx[queries_per_class : queries_per_class + train])
    split = {"query": np.concatenate(query), "database": np.concatenate(database)}
    split["train"] = split["database"] if train == "database" else np.concatenate(train_idx)

    pool = ArrayImageSplit(images, labels)
    return HashingData(
        train=pool.subset(split["train"]),
        query=pool.subset(split["query"]),
        database=pool.subset(split["database"]),
        split_indices=split,
    )
