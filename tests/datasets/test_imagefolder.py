"""dataset=imagefolder: class discovery, bad files, split protocols, and a run through main_v2.py."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from datasets.cifar import cifar_protocol_split
from datasets.imagefolder import image_folder_splits, per_class_split
from utils.errors import ConfigError, DataError

from conftest import run_cli  # isort: skip
from dataset_test_utils import extract_shared_cifar, write_image  # isort: skip  (tests/datasets is on sys.path)

CLASSES = ["cat", "dog", "fox"]


def make_folder(root: Path, per_class=6, suffixes=(".jpg", ".png")) -> Path:
    """root/<class>/<i><suffix>: ``per_class`` small random images per class, formats alternating."""
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            write_image(
                root / name / f"{i:02d}{suffixes[i % len(suffixes)]}",
                size=(12, 10),
                seed=10 * c + i,
            )
    return root


def add_bad_files(root: Path) -> list[str]:
    """A corrupt JPEG and a stray text file inside class folders; returns their relative paths."""
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (root / "cat" / "notes.txt").write_text("taken on holiday\n")
    return ["dog/broken.jpg", "cat/notes.txt"]


def paths_of(split):
    return [str(p) for p in split.paths]


def class_of(path) -> str:
    return Path(path).parent.name


def test_one_folder_standard_split_sizes_labels_and_membership(tmp_path):
    root = make_folder(tmp_path / "photos")
    data = image_folder_splits(root, queries_per_class=2, train_per_class=3)
    assert data.classes == CLASSES  # sorted folder names = class ids 0..2
    assert data.sizes() == {"query": 6, "database": 12, "train": 9}
    for split in (data.train, data.query, data.database):
        for path, label in zip(split.paths, split.labels):
            assert CLASSES[label] == class_of(path)  # the label is the folder's class id
    query, db, train = (set(paths_of(s)) for s in (data.query, data.database, data.train))
    assert not query & db and len(query | db) == 18  # every image is a query or in the database
    assert train <= db  # standard: train drawn from the database
    for split, per_class in ((data.query, 2), (data.train, 3), (data.database, 4)):
        assert np.bincount(split.labels).tolist() == [per_class] * 3
    item = data.query[0]
    assert item[0].mode == "RGB" and item[0].size == (12, 10) and item[2] == 0


def test_disjoint_protocol_keeps_train_out_of_the_database(tmp_path):
    root = make_folder(tmp_path / "photos")
    data = image_folder_splits(root, protocol="disjoint", queries_per_class=2, train_per_class=3)
    assert data.sizes() == {"query": 6, "train": 9, "database": 3}
    sets = [set(paths_of(s)) for s in (data.query, data.train, data.database)]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 18


def test_split_is_seeded_and_cached(tmp_path):
    root = make_folder(tmp_path / "photos")
    cache = tmp_path / "data" / "splits"
    first = image_folder_splits(
        root, queries_per_class=2, train_per_class=3, split_seed=1, split_cache=cache
    )
    (cached,) = cache.glob("photos-*_standard_q2_t3_1.npz")
    assert sorted(p.name for p in root.iterdir()) == CLASSES  # nothing written into the collection
    again = image_folder_splits(
        root, queries_per_class=2, train_per_class=3, split_seed=1, split_cache=cache
    )
    uncached = image_folder_splits(root, queries_per_class=2, train_per_class=3, split_seed=1)
    other = image_folder_splits(
        root, queries_per_class=2, train_per_class=3, split_seed=2, split_cache=cache
    )
    for split in ("query", "train", "database"):
        assert (
            paths_of(getattr(first, split))
            == paths_of(getattr(again, split))
            == paths_of(getattr(uncached, split))
        )
    assert paths_of(first.query) != paths_of(other.query)
    # a cache written for another file list is not trusted: one more image changes the split
    write_image(root / "cat" / "99.jpg", seed=99)
    grown = image_folder_splits(
        root, queries_per_class=2, train_per_class=3, split_seed=1, split_cache=cache
    )
    assert grown.sizes()["database"] == 13


def test_corrupt_image_and_stray_text_file_are_listed_in_one_warning_and_skipped(tmp_path, caplog):
    root = make_folder(tmp_path / "photos")
    bad = add_bad_files(root)
    with caplog.at_level(logging.WARNING, logger="datasets.imagefolder"):
        data = image_folder_splits(root, queries_per_class=2, train_per_class=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Skipped 2 file(s)" in warnings[0]
    for name in bad:
        assert name in warnings[0]
    assert "unreadable" in warnings[0] and "not an image extension" in warnings[0]
    every = set(paths_of(data.query)) | set(paths_of(data.database))
    assert len(every) == 18 and not any(p.endswith(("broken.jpg", "notes.txt")) for p in every)


def test_without_header_check_a_corrupt_image_stops_the_run_at_load_with_one_sentence(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=3)
    add_bad_files(root)
    data = image_folder_splits(root, queries_per_class=1, train_per_class=1, check_images=False)
    split = (
        data.query if any(p.endswith("broken.jpg") for p in paths_of(data.query)) else data.database
    )
    i = [p.endswith("broken.jpg") for p in paths_of(split)].index(True)
    with pytest.raises(DataError, match=r"Cannot read image .*broken\.jpg"):
        split.load(i)


def test_two_folders_take_queries_from_test_and_train_from_train(tmp_path):
    root = tmp_path / "photos"
    make_folder(root / "train", per_class=5)
    make_folder(root / "test", per_class=3)
    data = image_folder_splits(root, queries_per_class=2, train_per_class=4)
    assert data.sizes() == {"query": 6, "database": 18, "train": 12}
    assert all("/test/" in p for p in paths_of(data.query))
    assert all("/train/" in p for p in paths_of(data.train))
    # the test image of each class not drawn as a query joins the database
    assert sum("/test/" in p for p in paths_of(data.database)) == 3
    everything = image_folder_splits(root, queries_per_class=None, train_per_class=None)
    assert everything.sizes() == {"query": 9, "database": 15, "train": 15}  # CIFAR-10 "official"
    assert sorted(paths_of(everything.query)) == sorted(
        str(p) for p in (root / "test").rglob("*.*") if p.parent.name in CLASSES
    )


@pytest.mark.parametrize(
    "protocol, q, t, disjoint, official",
    [
        ("standard", 100, 500, False, False),
        ("disjoint", 100, 500, True, False),
        ("q10k", 1000, 500, False, False),
        ("q10k_train_all", 1000, None, False, False),
        ("official", None, None, False, True),
    ],
)
def test_per_class_split_reproduces_the_cifar_protocols(protocol, q, t, disjoint, official):
    """Oracle: datasets.cifar's own split on a synthetic pool (10 classes x 1,600, 300 test each)."""
    rng = np.random.RandomState(0)
    labels = rng.permutation(np.repeat(np.arange(10), 1600))
    is_train = np.ones(len(labels), bool)
    for c in range(10):
        is_train[np.flatnonzero(labels == c)[:300]] = False
    expected = cifar_protocol_split(labels, is_train, protocol, split_seed=42)
    from_test = ~is_train if official else np.zeros(len(labels), bool)
    got = per_class_split(labels, from_test, q, t, disjoint, split_seed=42)
    for key in ("train", "query", "database"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_too_small_classes_and_bad_settings_end_in_one_sentence(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=3)
    with pytest.raises(
        DataError,
        match=r"Class 'cat' has 3 images, fewer than queries_per_class=5: lower queries_per_class\.",
    ):
        image_folder_splits(root, queries_per_class=5, train_per_class=1)
    with pytest.raises(
        DataError, match=r"Class 'cat' has 1 images left after its 2 queries.*lower train_per_class"
    ):
        image_folder_splits(root, queries_per_class=2, train_per_class=2)
    with pytest.raises(ConfigError, match="Unknown image-folder protocol 'foo'"):
        image_folder_splits(root, protocol="foo")
    with pytest.raises(ConfigError, match="needs .*/train and .*/test folders"):
        image_folder_splits(root, queries_per_class=None)
    with pytest.raises(ConfigError, match="would leave no database"):
        image_folder_splits(root, protocol="disjoint", train_per_class=None)
    with pytest.raises(ConfigError, match="queries_per_class=0 is invalid"):
        image_folder_splits(root, queries_per_class=0)
    with pytest.raises(
        ConfigError, match=r"needs the collection's folder: pass dataset.root=<folder>\."
    ):
        image_folder_splits(None)
    with pytest.raises(DataError, match="not found: set dataset.root"):
        image_folder_splits(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.jpg")
    with pytest.raises(DataError, match="has no class sub-folders"):
        image_folder_splits(tmp_path / "flat")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folders without any readable image \(empty\)"):
        image_folder_splits(root, queries_per_class=1, train_per_class=1)


def test_train_and_test_with_different_classes_are_refused(tmp_path):
    root = tmp_path / "photos"
    make_folder(root / "train", per_class=3)
    make_folder(root / "test", per_class=2)
    write_image(root / "test" / "owl" / "a.jpg")
    with pytest.raises(DataError, match=r"different classes \(owl in only one\)"):
        image_folder_splits(root, queries_per_class=1, train_per_class=1)


@pytest.mark.data
def test_the_real_cifar10_folder_gives_cifar10s_official_split(tmp_path_factory):
    """Oracle on real data: the shared CIFAR-10 JPEG folder (train/ + test/) as an image folder,
    all test images as queries and train = database, equals datasets.cifar's "official" protocol."""
    from datasets.cifar import cifar10_splits

    for root in extract_shared_cifar(tmp_path_factory):
        data = image_folder_splits(root, queries_per_class=None, train_per_class=None)
        assert data.sizes() == {"train": 50000, "query": 10000, "database": 50000}
        reference = cifar10_splits(root, protocol="official", download=False)
        for split in ("train", "query", "database"):
            assert paths_of(getattr(data, split)) == paths_of(getattr(reference, split)), split
            np.testing.assert_array_equal(
                getattr(data, split).labels, getattr(reference, split).labels
            )


@pytest.mark.slow
def test_main_v2_trains_and_evaluates_on_an_image_folder(tmp_path):
    """End to end: main_v2.py dataset=imagefolder on a generated folder with a corrupt image and
    a stray text file, backbone=tiny, two epochs."""
    root = make_folder(tmp_path / "photos", per_class=8)
    add_bad_files(root)
    result = run_cli(
        "main_v2.py",
        [
            "dataset=imagefolder",
            f"dataset.root={root}",
            "dataset.source.queries_per_class=2",
            "dataset.source.train_per_class=6",
            "dataset.resize=16",
            "dataset.crop=16",
            "backbone=tiny",
            "model.nbit=16",
            "epochs=2",
            "eval_interval=1",
            "batch_size=6",
            "progress=false",
            "num_workers=0",
            f"data_dir={tmp_path / 'data'}",
        ],
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert re.search(r"Skipped 2 file\(s\) under .*photos.*dog/broken\.jpg", output), output[-2000:]
    assert (
        "3 classes found (one folder), 24 images (2 skipped); standard split: train 18, query 6, database 18"
        in output
    )
    logdir = Path(re.search(r"run directory: (.+)", result.stdout).group(1).strip())
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert 0.0 < metrics["last"][metrics["main_metric"]] <= 1.0
