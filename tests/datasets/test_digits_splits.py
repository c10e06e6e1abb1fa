import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from datasets.digits import digits_splits
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def data():
    return digits_splits()


def test_sizes_and_disjointness(data):
    assert data.sizes() == {"train": 1597, "query": 200, "database": 1597}
    idx = data.split_indices
    assert len(np.intersect1d(idx["query"], idx["database"])) == 0
    assert np.array_equal(idx["train"], idx["database"])  # train = database
    assert np.array_equal(np.sort(np.concatenate([idx["query"], idx["database"]])), np.arange(1797))


def test_twenty_queries_per_class(data):
    assert np.array_equal(np.bincount(data.query.labels), np.full(10, 20))


def test_labels_and_pixels_match_sklearn(data):
    bunch = load_digits()
    for name in ("train", "query", "database"):
        split, idx = getattr(data, name), data.split_indices[name]
        assert split.labels.dtype == np.int64
        assert np.array_equal(split.labels, bunch.target[idx])
    img = data.query.load(3)
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (8, 8)
    expected = np.rint(bunch.images[data.split_indices["query"][3]] * 255 / 16)
    assert np.array_equal(np.asarray(img), expected.astype(np.uint8))


def test_item_format(data):
    img, label, i = data.query[5]
    assert isinstance(img, Image.Image)
    assert label.dtype == torch.long and label.ndim == 0 and int(label) == data.query.labels[5]
    assert i == 5


def test_seed_determinism():
    a, b, c = digits_splits(split_seed=1), digits_splits(split_seed=1), digits_splits(split_seed=2)
    assert np.array_equal(a.split_indices["query"], b.split_indices["query"])
    assert not np.array_equal(a.split_indices["query"], c.split_indices["query"])


def test_train_subset_per_class():
    data = digits_splits(train=50)
    assert len(data.train) == 500
    assert np.isin(data.split_indices["train"], data.split_indices["database"]).all()


@pytest.mark.parametrize(
    "kwargs", [{"queries_per_class": 0}, {"queries_per_class": 500}, {"train": "all"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        digits_splits(**kwargs)
