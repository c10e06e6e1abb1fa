"""Image-list datasets (ImageNet100, NUS-WIDE, MS-COCO) in the reference's list-file format.

Layout (methods.md §5.1): ``root/folder/{train,test,database}.txt``, one image per line,
whitespace-separated:

- ``relative/path label``        -- single-label, an integer class id >= 0;
- ``relative/path 0 1 0 ... 1``  -- multi-label, a 0/1 multi-hot vector (same length on every line).

Blank lines are ignored. Paths are resolved against ``image_root`` (default ``root``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import FileImageSplit, HashingData
from utils.errors import DataError

LAYOUT = "lines 'relative/path label' or 'relative/path 0 1 0 ...' (multi-hot)"


def parse_list_file(path) -> tuple[list[str], np.ndarray]:
    """Parse one list file.

    Returns:
        ``(paths, labels)``: the relative paths as written, and ``(N,)`` int64 class ids or
        ``(N, C)`` float32 multi-hot labels.

    Raises:
        DataError: missing/empty file, or a malformed line (named with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"List file {path} not found: create it with {LAYOUT}, or fix data_dir / the dataset folder."
        )
    paths, labels = [], []
    width = None  # number of label tokens, fixed by the first line
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            where = f"{path} line {lineno}"
            if len(tokens) < 2:
                raise DataError(f"{where} has no label: write {LAYOUT}.")
            try:
                values = [int(t) for t in tokens[1:]]
            except ValueError:
                raise DataError(
                    f"{where} has a non-integer label {' '.join(tokens[1:])!r}: write {LAYOUT}."
                ) from None
            if width is None:
                width = len(values)
            elif len(values) != width:
                if 1 in (width, len(values)):
                    raise DataError(
                        f"{where} mixes single-label and multi-hot lines: use one format for the whole file."
                    )
                raise DataError(
                    f"{where} has {len(values)} labels but earlier lines have {width}: give every line the same multi-hot length."
                )
            if width == 1 and values[0] < 0:
                raise DataError(
                    f"{where} has a negative class id {values[0]}: class ids start at 0."
                )
            if width > 1 and any(v not in (0, 1) for v in values):
                raise DataError(
                    f"{where} has a multi-hot value other than 0/1: write each label as 0 or 1."
                )
            paths.append(tokens[0])
            labels.append(values)
    if not paths:
        raise DataError(f"List file {path} has no entries: fill it with {LAYOUT}.")
    if width == 1:
        return paths, np.asarray(labels, dtype=np.int64)[:, 0]
    return paths, np.asarray(labels, dtype=np.float32)


def list_file_splits(
    root,
    folder: str,
    train: str = "train.txt",
    query: str = "test.txt",
    database: str = "database.txt",
    image_root=None,
) -> HashingData:
    """Splits read from list files ``root/folder/{train,query,database}`` (methods.md §5.1).

    Args:
        root: data folder holding ``folder``.
        folder: dataset subfolder with the list files (e.g. ``imagenet100``).
        train, query, database: list file names.
        image_root: folder the image paths are relative to; default ``root``.
            Deviation: the reference resolved them against the process cwd (env ROOTDIR).

    Returns:
        HashingData of :class:`FileImageSplit` (RGB images, opened lazily); ``split_indices``
        is None (there is no common pool).
    """
    root = Path(root)
    image_root = root if image_root is None else Path(image_root)
    splits = {}
    for key, name in (("train", train), ("query", query), ("database", database)):
        file = root / folder / name
        paths, labels = parse_list_file(file)
        splits[key] = (file, FileImageSplit([image_root / p for p in paths], labels))
    shapes = {key: split.labels.shape[1:] for key, (_, split) in splits.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(
            f"{file} has {f'{s[0]}-hot' if s else 'single'} labels"
            for (file, _), s in zip(splits.values(), shapes.values())
        )
        raise DataError(
            f"The list files disagree on the label format ({described}): use one format for all splits."
        )
    return HashingData(
        splits["train"][1], splits["query"][1], splits["database"][1], split_indices=None
    )
