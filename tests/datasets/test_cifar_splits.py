"""The CIFAR-10 protocols, tested on a fake 60,000-label pool (6,000 per class: 5,000 official
train + 1,000 official test), and the split cache of cifar10_splits."""

import numpy as np
import pytest

import datasets.cifar as cifar
from datasets.base import ArrayImageSplit
from datasets.cifar import PROTOCOL_ALIASES, cifar10_splits, cifar_protocol_split, resolve_protocol
from utils.errors import ConfigError, DataError


def fake_pool():
    labels = np.concatenate([np.tile(np.arange(10), 5000), np.tile(np.arange(10), 1000)])
    is_train = np.arange(60000) < 50000
    return labels, is_train


LABELS, IS_TRAIN = fake_pool()

# protocol: (query, database, train, train inside database)
EXPECTED = {
    "standard": (1000, 59000, 5000, True),
    "disjoint": (1000, 54000, 5000, False),
    "q10k": (10000, 50000, 5000, True),
    "q10k_train_all": (10000, 50000, 50000, True),
    "official_5k": (10000, 50000, 5000, True),
    "official": (10000, 50000, 50000, True),
}


@pytest.fixture(scope="module")
def splits():
    return {name: cifar_protocol_split(LABELS, IS_TRAIN, name, 42) for name in EXPECTED}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_sizes_and_relations(splits, name):
    split = splits[name]
    n_query, n_db, n_train, train_in_db = EXPECTED[name]
    assert (len(split["query"]), len(split["database"]), len(split["train"])) == (
        n_query,
        n_db,
        n_train,
    )
    for key in split:
        assert split[key].dtype == np.int64
        assert len(np.unique(split[key])) == len(split[key])  # no duplicates
        assert np.array_equal(
            np.bincount(LABELS[split[key]], minlength=10), np.full(10, len(split[key]) // 10)
        )
    assert len(np.intersect1d(split["query"], split["database"])) == 0
    assert len(np.intersect1d(split["query"], split["train"])) == 0
    assert np.isin(split["train"], split["database"]).all() == train_in_db
    if name == "disjoint":
        assert len(np.intersect1d(split["train"], split["database"])) == 0
        all_idx = np.concatenate([split["query"], split["train"], split["database"]])
        assert np.array_equal(np.sort(all_idx), np.arange(60000))
    else:
        assert np.array_equal(
            np.sort(np.concatenate([split["query"], split["database"]])), np.arange(60000)
        )


@pytest.mark.parametrize("name", ["official", "official_5k"])
def test_official_protocols_follow_origin(splits, name):
    assert not IS_TRAIN[splits[name]["query"]].any()
    assert IS_TRAIN[splits[name]["database"]].all()


def test_train_is_first_500_of_db_per_class(splits):
    split = splits["standard"]
    db = split["database"].reshape(10, 5900)
    assert np.array_equal(split["train"], db[:, :500].ravel())
    assert np.array_equal(splits["q10k_train_all"]["train"], splits["q10k_train_all"]["database"])


def test_concatenated_class_after_class(splits):
    assert np.array_equal(LABELS[splits["standard"]["query"]], np.repeat(np.arange(10), 100))


def test_per_class_shuffle_uses_one_seeded_random_state():
    rng = np.random.RandomState(7)
    expected = []
    for c in range(10):
        idx = np.flatnonzero(LABELS == c)
        rng.shuffle(idx)
        expected.append(idx[:100])
    split = cifar_protocol_split(LABELS, IS_TRAIN, "standard", 7)
    assert np.array_equal(split["query"], np.concatenate(expected))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_determinism_by_seed(splits, name):
    again = cifar_protocol_split(LABELS, IS_TRAIN, name, 42)
    other = cifar_protocol_split(LABELS, IS_TRAIN, name, 43)
    for key in ("train", "query", "database"):
        assert np.array_equal(again[key], splits[name][key])
    assert not all(np.array_equal(other[key], splits[name][key]) for key in other)


def test_numeric_aliases(splits):
    for number, name in PROTOCOL_ALIASES.items():
        assert resolve_protocol(number) == name
        assert resolve_protocol(str(number)) == name
    alias = cifar_protocol_split(LABELS, IS_TRAIN, 1, 42)
    assert np.array_equal(alias["query"], splits["standard"]["query"])


@pytest.mark.parametrize("bad", ["bogus", 7, "", None, True])
def test_unknown_protocol(bad):
    with pytest.raises(ConfigError) as err:
        resolve_protocol(bad)
    for name in EXPECTED:
        assert name in str(err.value)
    assert "(11)" in str(err.value)


def test_too_few_images_per_class():
    labels = np.repeat(np.arange(10), 50)
    with pytest.raises(DataError, match="needs 600"):
        cifar_protocol_split(labels, np.ones(500, bool), "standard", 42)


def test_split_cache(tmp_path, monkeypatch):
    images = np.zeros((60000, 2, 2, 3), np.uint8)
    fake = (ArrayImageSplit(images, LABELS), IS_TRAIN, list(cifar.CIFAR10_CLASSES))
    monkeypatch.setattr(cifar, "read_python_batches_pool", lambda root, download: fake)

    data = cifar10_splits(tmp_path, protocol=11, split_seed=42, download=False)
    assert data.sizes() == {"train": 5000, "query": 1000, "database": 54000}
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["disjoint_42.npz"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached split should have been used")

    monkeypatch.setattr(cifar, "cifar_protocol_split", must_not_run)
    cached = cifar10_splits(tmp_path, protocol="disjoint", split_seed=42, download=False)
    for key in ("train", "query", "database"):
        assert np.array_equal(cached.split_indices[key], data.split_indices[key])
        assert np.array_equal(getattr(cached, key).labels, LABELS[data.split_indices[key]])

    # A cache written for another pool (different labels) is ignored and rewritten.
    monkeypatch.undo()
    shuffled = np.random.RandomState(0).permutation(LABELS)
    fake2 = (ArrayImageSplit(images, shuffled), IS_TRAIN, list(cifar.CIFAR10_CLASSES))
    monkeypatch.setattr(cifar, "read_python_batches_pool", lambda root, download: fake2)
    other = cifar10_splits(tmp_path, protocol="disjoint", split_seed=42, download=False)
    assert np.array_equal(np.bincount(shuffled[other.split_indices["query"]]), np.full(10, 100))
