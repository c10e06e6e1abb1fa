"""Splits of a hashing dataset and the containers the training engine consumes.

A dataset *source* (``datasets.digits.digits_splits``, ``datasets.cifar.cifar10_splits``, ...)
returns a :class:`HashingData`: three :class:`ImageSplit` objects (train, query, database) that
load raw items lazily and know nothing about transforms. The engine wraps each split in a
:class:`TransformedSplit` with the transform it wants (train augmentation, or the eval transform).

Dataset item (design.md §4): ``(image, label, index)`` where

- ``image`` is a float tensor ``(C, H, W)``, a list of such tensors for two-view transforms,
  or a 1-D float32 feature vector ``(D,)`` for precomputed-feature datasets;
- ``label`` is a ``torch.long`` scalar class id (single-label) or a float32 multi-hot vector
  ``(C,)`` with values in {0, 1} (multi-label);
- ``index`` is the int position of the item in its split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from utils.errors import ConfigError, DataError


class ImageSplit(torch.utils.data.Dataset):
    """One split (train / query / database) of a hashing dataset, without transforms.

    Subclasses implement :meth:`load` and :meth:`subset`.

    Attributes:
        labels: ``(N,)`` int64 class ids (single-label) or ``(N, C)`` float32 multi-hot {0, 1}.
    """

    labels: np.ndarray

    def __init__(self, labels: np.ndarray):
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels.astype(np.int64, copy=False)
        elif labels.ndim == 2:
            labels = labels.astype(np.float32, copy=False)
        else:
            raise ValueError(f"labels must be (N,) or (N, C), got shape {labels.shape}")
        self.labels = labels

    @property
    def multilabel(self) -> bool:
        """True when labels are ``(N, C)`` multi-hot vectors."""
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int):
        """The raw item ``i``: a PIL image (RGB or L), or a ``(D,)`` float32 tensor for features."""
        raise NotImplementedError

    def subset(self, indices) -> ImageSplit:
        """A split of the same kind holding items ``indices`` (in that order)."""
        raise NotImplementedError

    def label(self, i: int) -> torch.Tensor:
        """Label of item ``i``: long scalar (single-label) or float32 ``(C,)`` (multi-label)."""
        if self.multilabel:
            return torch.tensor(self.labels[i], dtype=torch.float32)
        return torch.tensor(int(self.labels[i]), dtype=torch.long)

    def __getitem__(self, i: int):
        i = int(i)
        return self.load(i), self.label(i), i


class ArrayImageSplit(ImageSplit):
    """Images held in memory as one uint8 array (e.g. CIFAR-10 python batches, sklearn digits).

    Args:
        images: the whole pool, ``(M, H, W)`` uint8 (grey, PIL mode 'L') or ``(M, H, W, 3)``
            uint8 (RGB). Shared, never copied, by subsets.
        labels: labels of this split's items, ``(N,)`` or ``(N, C)``.
        index: ``(N,)`` positions of this split's items in ``images``; default ``arange(M)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None):
        super().__init__(labels)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 (M,H,W) or (M,H,W,3), got {images.dtype} {images.shape}"
            )
        self.images = images
        self.index = np.arange(len(images)) if index is None else np.asarray(index, dtype=np.int64)
        if len(self.index) != len(self.labels):
            raise ValueError("index and labels must have the same length")

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[self.index[i]])

    def subset(self, indices) -> ArrayImageSplit:
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayImageSplit(self.images, self.labels[indices], self.index[indices])


class FileImageSplit(ImageSplit):
    """Images read lazily from files, converted to ``mode`` (RGB by default, as the reference).

    Args:
        paths: ``N`` image file paths.
        labels: ``(N,)`` or ``(N, C)``.
        mode: PIL mode every image is converted to.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, mode: str = "RGB"):
        super().__init__(labels)
        # A numpy string array (not a list of str objects) so DataLoader workers do not
        # copy the pages through reference counting.
        self.paths = (
            np.asarray([str(p) for p in paths]) if len(paths) else np.asarray([], dtype=str)
        )
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels must have the same length")
        self.mode = mode

    def load(self, i: int) -> Image.Image:
        path = str(self.paths[i])
        try:
            with Image.open(path) as img:
                return img.convert(self.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(
                f"Cannot read image {path} ({type(err).__name__}: {err}): "
                "replace the file or remove it from the dataset."
            ) from err

    def subset(self, indices) -> FileImageSplit:
        indices = np.asarray(indices, dtype=np.int64)
        return FileImageSplit(self.paths[indices], self.labels[indices], self.mode)


class FeatureSplit(ImageSplit):
    """Precomputed feature vectors; :meth:`load` returns a ``(D,)`` float32 tensor.

    Args:
        features: ``(N, D)`` float32.
        labels: ``(N,)`` or ``(N, C)``.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        super().__init__(labels)
        self.features = np.asarray(features, dtype=np.float32)
        if self.features.ndim != 2 or len(self.features) != len(self.labels):
            raise ValueError(
                f"features must be (N, D) with N = {len(self.labels)}, got {self.features.shape}"
            )

    @property
    def dim(self) -> int:
        """Feature dimension ``D``."""
        return self.features.shape[1]

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.features[i].copy())

    def subset(self, indices) -> FeatureSplit:
        indices = np.asarray(indices, dtype=np.int64)
        return FeatureSplit(self.features[indices], self.labels[indices])


def is_feature_split(split: ImageSplit) -> bool:
    """True when ``split`` yields feature vectors, for which image transforms are skipped."""
    return isinstance(split, FeatureSplit)


@dataclass
class HashingData:
    """The three splits of a hashing dataset.

    Attributes:
        train, query, database: the splits.
        split_indices: ``{"train", "query", "database"} -> (N,) int64`` indices into the
            source pool (for logging / saving), or None when the source has no common pool
            (e.g. list files).
        classes: the class names in id order when the source knows them (image folders), else None.
    """

    train: ImageSplit
    query: ImageSplit
    database: ImageSplit
    split_indices: dict[str, np.ndarray] | None = None
    classes: list[str] | None = None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "query": len(self.query), "database": len(self.database)}


def is_deterministic(transform: Callable | None) -> bool:
    """Whether ``transform`` draws nothing from the RNG: it says so with a true ``deterministic``
    attribute (the eval pipeline and NoAugmentation); any other transform counts as random."""
    return bool(getattr(transform, "deterministic", False))


class TransformedSplit(torch.utils.data.Dataset):
    """A split with a transform applied: items ``(transform(split.load(i)), label, i)``.

    If ``transform`` returns a list/tuple of views, the image is that list (the default collate
    then gives a list of ``B x C x H x W`` tensors). ``transform=None`` returns the raw item.
    For feature splits the transform is skipped; when the transform has ``views > 1`` the
    feature vector is repeated into that many (identical) views so two-view methods still get
    a list.

    ``item_seed``: when set, a random transform (one without a true ``deterministic``
    attribute) of item i runs with torch's RNG seeded from
    ``(item_seed, i)`` (and the caller's RNG state restored afterwards), so a random
    augmentation of an item does not depend on which items were drawn before it, in which
    loader worker or on which process of a distributed run.
    """

    def __init__(self, split: ImageSplit, transform: Callable | None, item_seed: int | None = None):
        self.split = split
        self.transform = transform
        self.item_seed = item_seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        i = int(i)
        item = self.split.load(i)
        if self.transform is not None:
            if is_feature_split(self.split):
                views = int(getattr(self.transform, "views", 1))
                if views > 1:
                    item = [item.clone() for _ in range(views)]
            elif self.item_seed is None or is_deterministic(self.transform):
                item = self.transform(item)
            else:
                item = self._seeded_transform(item, i)
            if isinstance(item, tuple):
                item = list(item)
        return item, self.split.label(i), i

    def _seeded_transform(self, item, i: int):
        """The transform with torch's CPU RNG seeded for item i, the RNG state restored after
        (torch.manual_seed would also reseed every accelerator: 60x slower per item)."""
        assert self.item_seed is not None and self.transform is not None
        saved = torch.get_rng_state()
        # an odd multiplier makes the seeds of the items of one epoch distinct
        torch.default_generator.manual_seed((self.item_seed ^ (i * _ITEM_SEED_STEP)) % 2**63)
        try:
            return self.transform(item)
        finally:
            torch.set_rng_state(saved)


_ITEM_SEED_STEP = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd


def split_validation(train_split, val_size: float | int, seed: int):
    """Carve a labelled validation set out of the training split for model selection.

    Returns (val_queries, val_database) or None when val_size == 0. The validation queries are a
    seeded random subset of the training split (val_size: a fraction < 1 or a count); their
    database is the rest of the training split. Training still uses the whole training split:
    the methods are unsupervised, and these labels are only used to choose the checkpoint.
    """
    n = len(train_split)
    count = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if count <= 0:
        return None
    if count >= n:
        raise ConfigError(
            f"val_size={val_size} leaves no validation database out of {n} "
            "training items: use a smaller val_size"
        )
    order = np.random.RandomState(seed % 2**32).permutation(n)
    return train_split.subset(np.sort(order[:count])), train_split.subset(np.sort(order[count:]))
