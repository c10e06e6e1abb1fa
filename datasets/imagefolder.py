"""Any image collection in class folders, split by a named, seeded protocol like CIFAR-10's.

Layouts (torchvision's folder conventions, ``torchvision.datasets.folder``):

- one folder:  ``root/<class>/<image>``;
- two folders: ``root/train/<class>/<image>`` and ``root/test/<class>/<image>`` (the same classes).

Classes are the sub-folder names in sorted order, class ids 0..nclass-1 (``find_classes``); files
are collected by ``make_dataset`` (sorted, sub-folders followed) and kept when their extension is
one of ``IMG_EXTENSIONS`` and PIL recognises their header. Every other file (a stray text file, a
corrupt image, an unsupported format) is listed in one warning and left out: a collection gathered
from the web or copied between machines often carries a few such files, and refusing the whole
collection for them would only make the user delete them by hand. The split is computed on the kept
files, so it is the same on every run with the same folder. An image whose header is fine but whose
data is truncated is found only when it is decoded; then the run stops with one sentence naming it
(``FileImageSplit.load``).

Split protocols (per class, after one seeded per-class shuffle as in ``datasets.cifar``):

- ``standard``: ``queries_per_class`` queries; every other image is in the database; the training
  set is the first ``train_per_class`` images of the database (train ⊂ database) -- CIFAR-10's
  ``standard`` (methods.md §5.2) and the HashNet/DeepHash convention of the paper's other datasets.
- ``disjoint``: ``queries_per_class`` queries, the next ``train_per_class`` images for training,
  the rest database (CIFAR-10's ``disjoint``).

With two folders the queries are drawn from ``test/`` (``queries_per_class: null`` takes all of it,
CIFAR-10's ``official`` protocol) and the training images from ``train/``; test images not drawn as
queries join the database after the train images. ``train_per_class: null`` makes train = database.
Split indices are cached like CIFAR-10's, in ``split_cache`` (``<data_dir>/splits/imagefolder``
from the config) rather than inside the collection: a ``splits/`` folder there would be taken for a
class, and the collection may be read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.base import FileImageSplit, HashingData
from datasets.cifar import _load_cached_split, _save_split
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROTOCOLS = {
    "standard": "per class: queries_per_class queries, the rest database, train = the first train_per_class of the database",
    "disjoint": "per class: queries_per_class queries, the next train_per_class train, the rest database",
}
SHOWN_REJECTS = 10  # files named in the warning; the rest are counted


def extension_problem(path: str) -> str | None:
    """Why ``path`` is not an image by its extension (torchvision's ``IMG_EXTENSIONS``), or None."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    if has_file_allowed_extension(path, IMG_EXTENSIONS):
        return None
    return f"not an image extension ({' '.join(IMG_EXTENSIONS)})"


def image_header_problem(path: str) -> str | None:
    """Why ``path`` is not a usable image (``None`` when it is): its extension, then its header.

    Only the header is read (``Image.open`` is lazy), so a folder of 60,000 JPEGs is checked in
    seconds; see the module docstring for truncated images.
    """
    problem = extension_problem(path)
    if problem is not None:
        return problem
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (parsed from the header)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as err:
        return f"unreadable ({type(err).__name__})"
    return None


def scan_class_folders(
    folder, class_to_idx: dict[str, int] | None = None, check_images: bool = True
):
    """The image files of ``folder/<class>/...`` with torchvision's class discovery.

    Args:
        folder: the folder holding one sub-folder per class.
        class_to_idx: fixed class ids (e.g. those of another folder); default: sorted folder names.
        check_images: also reject files whose header PIL cannot read (else extension only).

    Returns:
        ``(paths, labels, classes, rejected)``: ``N`` sorted file paths, ``(N,)`` int64 class ids,
        the class names in id order, and ``[(path, reason), ...]`` for the files left out.
    """
    from torchvision.datasets.folder import find_classes, make_dataset

    folder = Path(folder)
    if class_to_idx is None:
        try:
            _, class_to_idx = find_classes(folder)
        except FileNotFoundError:
            raise DataError(
                f"{folder} has no class sub-folders: lay the images out as {folder}/<class>/<image>."
            ) from None
    rejected = []

    def keep(path: str) -> bool:
        problem = image_header_problem(path) if check_images else extension_problem(path)
        if problem is not None:
            rejected.append((path, problem))
        return problem is None

    samples = make_dataset(str(folder), class_to_idx, is_valid_file=keep, allow_empty=True)
    classes = sorted(class_to_idx, key=class_to_idx.get)
    counts = np.bincount([c for _, c in samples], minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"{folder} has class folders without any readable image ({', '.join(empty[:5])}"
            f"{', ...' if len(empty) > 5 else ''}): add images or remove those folders."
        )
    paths = [p for p, _ in samples]
    labels = np.asarray([c for _, c in samples], dtype=np.int64)
    return paths, labels, classes, rejected


def warn_rejected(rejected: list[tuple[str, str]], root) -> None:
    """One warning listing the files left out (the first :data:`SHOWN_REJECTS`, then a count)."""
    if not rejected:
        return
    shown = "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in rejected[:SHOWN_REJECTS])
    more = f"; and {len(rejected) - SHOWN_REJECTS} more" if len(rejected) > SHOWN_REJECTS else ""
    log.warning(
        "Skipped %d file(s) under %s that are not readable images: %s%s",
        len(rejected),
        root,
        shown,
        more,
    )


def per_class_split(
    labels,
    from_test,
    queries_per_class: int | None,
    train_per_class: int | None,
    disjoint: bool,
    split_seed: int = 42,
    class_names=None,
) -> dict[str, np.ndarray]:
    """Per-class query / train / database indices of a labelled pool.

    For each class c = 0..C-1 in order, the pool indices of class c (ascending) are shuffled with
    one ``np.random.RandomState(split_seed)`` -- the same draw as ``datasets.cifar``, so with
    ``from_test`` all False this reproduces CIFAR-10's ``standard`` (100, 500), ``disjoint``
    (100, 500, disjoint), ``q10k`` (1000, 500) and ``q10k_train_all`` (1000, None); with
    ``from_test`` = official test images, ``(None, None)`` reproduces ``official``.

    Per class, with ``idx`` its shuffled indices:

    - queries: the first ``queries_per_class`` of ``idx[from_test]`` when the class has test-pool
      images, else of ``idx`` (``None``: all test-pool images);
    - ``rest``: the class's non-query indices, train-pool ones first (shuffled order kept);
    - disjoint: train = ``rest[:train_per_class]``, database = the others;
      else database = ``rest``, train = ``rest[:train_per_class]`` (``None``: train = database).

    Args:
        labels: ``(M,)`` int class ids 0..C-1.
        from_test: ``(M,)`` bool, True for images of a separate test pool (two-folder layout).
        queries_per_class, train_per_class: sizes per class (see above).
        disjoint: keep the training images out of the database.
        split_seed: seed of the per-class shuffle.
        class_names: names for the error messages (default: the ids).

    Returns:
        ``{"train", "query", "database"} -> (N,) int64`` pool indices, concatenated class after class.

    Raises:
        DataError: a class too small for the sizes asked (naming the class and what it has).
    """
    labels = np.asarray(labels, dtype=np.int64)
    from_test = np.asarray(from_test, dtype=bool)
    if labels.ndim != 1 or labels.shape != from_test.shape:
        raise ValueError("labels and from_test must be 1-D arrays of the same length")
    nclass = int(labels.max()) + 1 if len(labels) else 0
    name = (lambda c: class_names[c]) if class_names is not None else str
    rng = np.random.RandomState(split_seed)
    out = {"train": [], "query": [], "database": []}
    for c in range(nclass):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_part, train_part = idx[from_test[idx]], idx[~from_test[idx]]
        pool = test_part if len(test_part) else idx
        if queries_per_class is None:
            if not len(test_part):
                raise DataError(
                    f"Class {name(c)!r} has no test images, so queries_per_class=null (all test images) gives it no query: give queries_per_class a number."
                )
            n_query = len(test_part)
        else:
            n_query = int(queries_per_class)
        if len(pool) < n_query:
            where = "test images" if len(test_part) else "images"
            raise DataError(
                f"Class {name(c)!r} has {len(pool)} {where}, fewer than queries_per_class={n_query}: lower queries_per_class."
            )
        query = pool[:n_query]
        if len(test_part):
            rest = np.concatenate([train_part, test_part[n_query:]])
        else:
            rest = idx[n_query:]
        n_train = len(rest) if train_per_class is None else int(train_per_class)
        needed = n_train + (1 if disjoint else 0)  # a disjoint split must leave a database
        if len(rest) < max(needed, 1):
            raise DataError(
                f"Class {name(c)!r} has {len(rest)} images left after its {n_query} queries, too few for "
                f"train_per_class={train_per_class}{' plus a database' if disjoint else ''}: lower train_per_class or queries_per_class."
            )
        train = rest[:n_train]
        database = rest[n_train:] if disjoint else rest
        for key, part in (("train", train), ("query", query), ("database", database)):
            out[key].append(part)
    return {
        key: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        for key, parts in out.items()
    }


def _split_digest(paths, labels, from_test, settings: str) -> str:
    """Fingerprint of the pool (files, labels, origin) and of the split settings."""
    h = hashlib.sha1(settings.encode())
    h.update("\n".join(paths).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(from_test, dtype=bool).tobytes())
    return h.hexdigest()


def image_folder_splits(
    root,
    protocol: str = "standard",
    queries_per_class: int | None = 100,
    train_per_class: int | None = 500,
    split_seed: int = 42,
    check_images: bool = True,
    split_cache=None,
) -> HashingData:
    """Train / query / database splits of ``root/<class>/*`` or ``root/{train,test}/<class>/*``.

    Args:
        root: the collection (see the module docstring for the two layouts).
        protocol: ``standard`` (train ⊂ database) or ``disjoint``.
        queries_per_class: queries per class (from ``test/`` with two folders; ``null`` = all of it).
        train_per_class: training images per class (``null`` = train = database).
        split_seed: seed of the per-class shuffle.
        check_images: read every image header once to leave out unreadable files (see above).
        split_cache: folder of the split cache (one .npz per collection and settings); None = no cache.

    Returns:
        HashingData of :class:`FileImageSplit` (RGB) with ``split_indices`` into the pool
        (one folder: its files; two folders: train files then test files).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"Unknown image-folder protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}."
        )
    for key, value in (
        ("queries_per_class", queries_per_class),
        ("train_per_class", train_per_class),
    ):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (1 if key == "queries_per_class" else 0)
        ):
            raise ConfigError(
                f"{key}={value!r} is invalid: give a positive number of images per class, or null."
            )
    if protocol == "disjoint" and train_per_class is None:
        raise ConfigError(
            "protocol=disjoint with train_per_class=null would leave no database: give train_per_class a number."
        )
    if root is None:
        raise ConfigError(
            "dataset=imagefolder needs the collection's folder: pass dataset.root=<folder>."
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} not found: set dataset.root to a folder laid out as <root>/<class>/<image> or <root>/{{train,test}}/<class>/<image>."
        )
    two_folders = (root / "train").is_dir() and (root / "test").is_dir()
    if two_folders:
        paths, labels, classes, rejected = scan_class_folders(
            root / "train", check_images=check_images
        )
        test_classes = sorted(p.name for p in os.scandir(root / "test") if p.is_dir())
        if test_classes != classes:
            missing = sorted(set(classes) ^ set(test_classes))
            raise DataError(
                f"{root}/train and {root}/test hold different classes ({', '.join(missing[:5])} in only one): give both the same class folders."
            )
        t_paths, t_labels, _, t_rejected = scan_class_folders(
            root / "test", {c: i for i, c in enumerate(classes)}, check_images
        )
        from_test = np.r_[np.zeros(len(paths), bool), np.ones(len(t_paths), bool)]
        paths, labels, rejected = paths + t_paths, np.r_[labels, t_labels], rejected + t_rejected
    else:
        if queries_per_class is None:
            raise ConfigError(
                f"queries_per_class=null (the whole test folder) needs {root}/train and {root}/test folders: give a number of queries per class."
            )
        paths, labels, classes, rejected = scan_class_folders(root, check_images=check_images)
        from_test = np.zeros(len(paths), bool)
    warn_rejected(rejected, root)

    settings = f"{protocol} {queries_per_class} {train_per_class} {split_seed}"
    digest = _split_digest(paths, labels, from_test, settings)
    cache = None
    if split_cache is not None:
        where = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
        cache = (
            Path(split_cache)
            / f"{root.name}-{where}_{protocol}_q{queries_per_class}_t{train_per_class}_{split_seed}.npz"
        )
    split = _load_cached_split(cache, digest) if cache is not None else None
    if split is None:
        split = per_class_split(
            labels,
            from_test,
            queries_per_class,
            train_per_class,
            protocol == "disjoint",
            split_seed,
            classes,
        )
        if cache is not None:
            _save_split(cache, split, digest)
    log.info(
        "Image folder %s: %d classes found (%s), %d images%s; %s split: train %d, query %d, database %d",
        root,
        len(classes),
        "train/ + test/" if two_folders else "one folder",
        len(paths),
        f" ({len(rejected)} skipped)" if rejected else "",
        protocol,
        len(split["train"]),
        len(split["query"]),
        len(split["database"]),
    )
    pool = FileImageSplit(paths, labels)
    return HashingData(
        pool.subset(split["train"]),
        pool.subset(split["query"]),
        pool.subset(split["database"]),
        split_indices=split,
        classes=classes,
    )
