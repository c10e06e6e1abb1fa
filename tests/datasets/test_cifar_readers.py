"""CIFAR-10 pool readers: image folders, python batches (faked), offline download, shared copy."""

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from datasets.cifar import (
    CIFAR10_CLASSES,
    cifar10_splits,
    has_image_folders,
    read_image_folder_pool,
    read_python_batches_pool,
)
from utils.errors import DataError

from dataset_test_utils import extract_shared_cifar, write_image  # isort: skip  (tests/datasets is on sys.path)


@pytest.fixture(scope="module")
def shared_cifar_root(tmp_path_factory):
    yield from extract_shared_cifar(tmp_path_factory)


@pytest.fixture
def folder_tree(tmp_path):
    """tmp/train/{cat,ant,bee}/ with 3 images each, tmp/test/ with 2 each (written out of order)."""
    for part, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(["cat", "ant", "bee"]):
            for j in reversed(range(n)):
                write_image(tmp_path / part / name / f"{j:04d}.jpg", seed=10 * c + j)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_pool(folder_tree):
    assert has_image_folders(folder_tree)
    pool, is_train, classes = read_image_folder_pool(folder_tree)
    assert classes == ["ant", "bee", "cat"]  # sorted folder names
    assert len(pool) == 15
    assert np.array_equal(pool.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2])
    assert np.array_equal(is_train, [True] * 9 + [False] * 6)
    names = [p.split("/")[-3:] for p in pool.paths]
    assert names[:3] == [["train", "ant", f"{j:04d}.jpg"] for j in range(3)]  # sorted by name
    assert names[9] == ["test", "ant", "0000.jpg"]
    img = pool.load(4)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    sub = pool.subset([14, 0])
    assert np.array_equal(sub.labels, [2, 0]) and sub.paths[1] == pool.paths[0]


def test_unreadable_image_names_the_file(folder_tree):
    bad = folder_tree / "train" / "ant" / "0001.jpg"
    bad.write_bytes(b"this is not a jpeg")
    pool, _, _ = read_image_folder_pool(folder_tree)
    with pytest.raises(DataError, match="0001.jpg"):
        pool[1]
    truncated = folder_tree / "train" / "bee" / "0000.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="bee/0000.jpg"):
        pool.load(3)


def test_missing_image_names_the_file(folder_tree):
    pool, _, _ = read_image_folder_pool(folder_tree)
    (folder_tree / "test" / "cat" / "0001.jpg").unlink()
    with pytest.raises(DataError, match="cat/0001.jpg"):
        pool.load(14)


def test_mismatched_class_folders(folder_tree):
    (folder_tree / "test" / "dog").mkdir()
    with pytest.raises(DataError, match="differ"):
        read_image_folder_pool(folder_tree)


def test_small_tree_is_rejected_by_the_protocol(folder_tree):
    with pytest.raises(DataError, match="3 classes"):
        cifar10_splits(folder_tree, download=False)


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10: 'on disk' only when present is True."""

    present = False
    offline_error = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def __init__(self, root, train=True, download=False):
        if not self.present:
            if download:
                raise self.offline_error
            raise RuntimeError(
                "Dataset not found or corrupted. You can use download=True to download it"
            )
        n = 50 if train else 10
        self.data = np.full((n, 32, 32, 3), 1 if train else 2, np.uint8)
        self.targets = list(np.arange(n) % 10)
        self.classes = list(CIFAR10_CLASSES)


def test_offline_download_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DataError, match="download failed") as err:
        cifar10_splits(tmp_path / "cifar10", download=True)
    assert "cifar-10-batches-py" in str(err.value) and "data_dir" in str(err.value)


def test_offline_oserror_is_a_data_error(tmp_path, monkeypatch):
    class Offline(FakeCIFAR10):
        offline_error = OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="download failed"):
        cifar10_splits(tmp_path, download=True)


def test_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DataError, match="download is off"):
        cifar10_splits(tmp_path, download=False)


def test_python_batches_pool(tmp_path, monkeypatch):
    class Present(FakeCIFAR10):
        present = True

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Present)
    pool, is_train, classes = read_python_batches_pool(tmp_path, download=False)
    assert len(pool) == 60 and is_train.sum() == 50 and classes == list(CIFAR10_CLASSES)
    assert (
        np.asarray(pool.load(0)).max() == 1 and np.asarray(pool.load(55)).max() == 2
    )  # train then test
    img, label, i = pool[55]
    assert (
        img.mode == "RGB" and img.size == (32, 32) and label.dtype == torch.long and int(label) == 5
    )


@pytest.mark.data
def test_shared_cifar10_copy(shared_cifar_root):
    data = cifar10_splits(shared_cifar_root, protocol="standard", download=False)
    assert data.sizes() == {"train": 5000, "query": 1000, "database": 59000}
    assert np.array_equal(np.unique(data.database.labels), np.arange(10))
    assert (shared_cifar_root / "splits" / "standard_42.npz").is_file()
    img, label, _ = data.query[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    _, _, classes = read_image_folder_pool(shared_cifar_root)
    assert tuple(classes) == CIFAR10_CLASSES
