import numpy as np
import pytest
import torch

from datasets.base import TransformedSplit, is_feature_split
from datasets.features import ARRAYS, feature_splits
from datasets.transforms import NoAugmentation, SimCLRViews
from utils.errors import DataError


def arrays(multilabel=False):
    rng = np.random.RandomState(0)
    out = {}
    for split, n in (("train", 6), ("query", 2), ("database", 5)):
        out[f"{split}_features"] = rng.randn(n, 4)  # float64: cast to float32 on load
        out[f"{split}_labels"] = rng.randint(0, 2, (n, 3)) if multilabel else rng.randint(0, 3, n)
    return out


def test_round_trip(tmp_path):
    src = arrays()
    np.savez(tmp_path / "f.npz", **src)
    data = feature_splits(tmp_path / "f.npz")
    assert data.sizes() == {"train": 6, "query": 2, "database": 5}
    assert is_feature_split(data.train) and data.train.dim == 4
    x, label, i = data.database[4]
    assert x.dtype == torch.float32 and x.shape == (4,)
    assert torch.allclose(x, torch.tensor(src["database_features"][4], dtype=torch.float32))
    assert label.dtype == torch.long and int(label) == src["database_labels"][4] and i == 4


def test_multilabel(tmp_path):
    np.savez(tmp_path / "f.npz", **arrays(multilabel=True))
    data = feature_splits(tmp_path / "f.npz")
    assert data.query.labels.dtype == np.float32 and data.query[0][1].shape == (3,)


def test_transforms_are_skipped(tmp_path):
    np.savez(tmp_path / "f.npz", **arrays())
    data = feature_splits(tmp_path / "f.npz")
    x, _, _ = TransformedSplit(data.train, NoAugmentation(None, None))[1]
    assert torch.equal(x, data.train.load(1))
    views, _, _ = TransformedSplit(data.train, SimCLRViews(crop=None))[1]
    assert isinstance(views, list) and len(views) == 2 and torch.equal(views[0], views[1])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        feature_splits(tmp_path / "absent.npz")


@pytest.mark.parametrize("missing", ["query_labels", "database_features"])
def test_missing_array(tmp_path, missing):
    src = arrays()
    del src[missing]
    np.savez(tmp_path / "f.npz", **src)
    with pytest.raises(DataError, match=missing):
        feature_splits(tmp_path / "f.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "f.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable"):
        feature_splits(tmp_path / "f.npz")


def test_inconsistent_shapes(tmp_path):
    src = arrays()
    src["query_features"] = np.zeros((2, 5))
    np.savez(tmp_path / "f.npz", **src)
    with pytest.raises(DataError, match="feature dimension"):
        feature_splits(tmp_path / "f.npz")
    src = arrays()
    src["train_labels"] = src["train_labels"][:3]
    np.savez(tmp_path / "f.npz", **src)
    with pytest.raises(DataError, match="train_features"):
        feature_splits(tmp_path / "f.npz")


def test_array_names():
    assert len(ARRAYS) == 6 and "train_features" in ARRAYS and "database_labels" in ARRAYS
