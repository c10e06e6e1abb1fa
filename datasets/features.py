"""Precomputed feature datasets: one ``.npz`` with features and labels of the three splits.

Used with the identity backbone: each item is a ``(D,)`` float32 feature vector instead of an
image, and image transforms are skipped (see :class:`datasets.base.TransformedSplit`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from datasets.base import FeatureSplit, HashingData
from utils.errors import DataError

SPLITS = ("train", "query", "database")
ARRAYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("features", "labels"))


def feature_splits(path) -> HashingData:
    """Load ``path`` (.npz) with arrays ``{train,query,database}_{features,labels}``.

    Array shapes: ``*_features`` ``(N, D)`` (cast to float32; the same D for all splits),
    ``*_labels`` ``(N,)`` int class ids or ``(N, C)`` 0/1 multi-hot (the same kind for all).

    Returns:
        HashingData of :class:`FeatureSplit`; ``split_indices`` is None.
    """
    path = Path(path)
    expected = ", ".join(ARRAYS)
    if not path.is_file():
        raise DataError(
            f"Feature file {path} not found: pass dataset.source.path=... pointing at an .npz with arrays {expected}."
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [name for name in ARRAYS if name not in f.files]
            if missing:
                raise DataError(
                    f"Feature file {path} lacks the arrays {', '.join(missing)}: save all of {expected}."
                )
            arrays = {name: f[name] for name in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(
            f"Feature file {path} is not a readable .npz ({type(err).__name__}: {err}): re-create it with numpy.savez."
        ) from err

    splits = {}
    for split in SPLITS:
        features, labels = arrays[f"{split}_features"], arrays[f"{split}_labels"]
        if features.ndim != 2 or labels.ndim not in (1, 2) or len(features) != len(labels):
            raise DataError(
                f"Feature file {path}: {split}_features {features.shape} and {split}_labels {labels.shape} "
                "do not match: save features as (N, D) and labels as (N,) or (N, C)."
            )
        splits[split] = FeatureSplit(features, labels)
    if (
        len({s.dim for s in splits.values()}) > 1
        or len({s.labels.shape[1:] for s in splits.values()}) > 1
    ):
        raise DataError(
            f"Feature file {path}: the splits differ in feature dimension or label format: save them consistently."
        )
    return HashingData(splits["train"], splits["query"], splits["database"], split_indices=None)
