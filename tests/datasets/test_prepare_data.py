"""scripts/prepare_data.py on miniature copies of the official ImageNet, NUS-WIDE and COCO formats.

Every list file is read back line by line and checked against the rules of datasets/prepare.py:
split sizes, disjointness, label vectors recomputed from the source files, determinism for a seed.
"""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from datasets.listfile import list_file_splits
from datasets.prepare import IMAGENET100_CLASSES, Prepared, read_class_list
from utils.errors import DataError

from conftest import REPO  # isort: skip
from dataset_test_utils import write_image  # isort: skip  (tests/datasets is on sys.path)


def load_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_data", REPO / "scripts" / "prepare_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = load_script()


def run(args, capsys):
    """Run the script's main; returns (printed text, Prepared)."""
    result = SCRIPT.main([str(a) for a in args])
    return capsys.readouterr().out, result


def refused(args, capsys) -> str:
    """Run the script expecting the one-sentence refusal (exit status 2); returns the message."""
    with pytest.raises(SystemExit) as exit_:
        SCRIPT.main([str(a) for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def read_list(path: Path) -> list[tuple[str, list[int]]]:
    rows = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        rows.append((tokens[0], [int(t) for t in tokens[1:]]))
    return rows


def outputs(out: Path) -> dict[str, bytes]:
    return {
        name: (out / name).read_bytes()
        for name in ("train.txt", "test.txt", "database.txt", "classes.txt")
    }


# ----------------------------------------------------------------------------------------------
# ImageNet100

WNIDS = ["n01000001", "n01000002", "n01000003"]  # a 3-class list for the miniature


def make_imagenet(root: Path, train_per_class=5, val_per_class=2, wnids=WNIDS) -> Path:
    """ImageNet-1k class-folder layout: train/<wnid>/<wnid>_<k>.JPEG, val/<wnid>/ILSVRC2012_val_<n>.JPEG."""
    n = 0
    for c, wnid in enumerate(wnids):
        for k in range(train_per_class):
            write_image(
                root / "train" / wnid / f"{wnid}_{k + 1}.JPEG", size=(8, 8), seed=c * 100 + k
            )
        for _ in range(val_per_class):
            n += 1
            write_image(
                root / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG", size=(8, 8), seed=10_000 + n
            )
    return root


@pytest.fixture
def imagenet(tmp_path):
    source = make_imagenet(tmp_path / "ILSVRC2012")
    classes = tmp_path / "classes.txt"
    classes.write_text("# three classes\n" + "\n".join(WNIDS) + "\n")
    return source, classes, tmp_path / "data"


def test_the_committed_class_list_is_the_reference_100_in_sorted_order():
    wnids = read_class_list(IMAGENET100_CLASSES)
    assert len(wnids) == 100 and wnids == sorted(wnids)  # reference ids = sorted positions
    # spot checks against lines of the reference's train.txt (see the file's header)
    assert wnids[33] == "n02256656" and wnids[0] == "n01514668" and wnids[99] == "n13044778"


def test_imagenet100_rules_line_by_line(imagenet, capsys):
    source, classes, data = imagenet
    out = data / "imagenet100"
    printed, _ = run(
        [
            "imagenet100",
            "--source",
            source,
            "--out",
            out,
            "--classes",
            classes,
            "--train-per-class",
            2,
        ],
        capsys,
    )
    train, query, db = (read_list(out / f) for f in ("train.txt", "test.txt", "database.txt"))
    assert (len(train), len(query), len(db)) == (6, 6, 15)
    for rows, part in ((train, "train"), (query, "val"), (db, "train")):
        for path, label in rows:
            image = (
                data / path
            )  # relative to the data folder (the source lies outside it: absolute)
            assert image.is_file() and image.parent.parent.name == part
            assert label == [WNIDS.index(image.parent.name)]  # the class id of its wnid folder
    assert {p for p, _ in train} <= {
        p for p, _ in db
    }  # training images are drawn from the database
    assert not {p for p, _ in query} & {p for p, _ in db}  # queries are the validation images
    assert sorted(p for p, _ in db) == sorted(str(p) for p in (source / "train").rglob("*.JPEG"))
    assert np.bincount([l[0] for _, l in train]).tolist() == [2, 2, 2]
    assert (out / "classes.txt").read_text().split() == WNIDS
    assert re.search(r"train +6 images +images per class 2\.\.2", printed)
    assert re.search(r"database +15 images +images per class 5\.\.5", printed)
    # the list files load as the dataset config reads them
    loaded = list_file_splits(data, "imagenet100")
    assert loaded.sizes() == {"train": 6, "query": 6, "database": 15}
    assert loaded.query[0][0].size == (8, 8)


def test_imagenet100_is_deterministic_for_a_seed(imagenet, capsys):
    source, classes, data = imagenet
    common = ["imagenet100", "--source", source, "--classes", classes, "--train-per-class", 2]
    run([*common, "--out", data / "a"], capsys)
    run([*common, "--out", data / "b"], capsys)
    run([*common, "--out", data / "c", "--seed", 7], capsys)
    assert outputs(data / "a") == outputs(data / "b")
    assert outputs(data / "a")["train.txt"] != outputs(data / "c")["train.txt"]
    assert outputs(data / "a")["database.txt"] == outputs(data / "c")["database.txt"]


def test_imagenet100_with_the_reference_lists_uses_their_images_where_they_exist(
    imagenet, tmp_path, capsys
):
    source, classes, data = imagenet
    ref = tmp_path / "reference"
    ref.mkdir()
    ref_train = [
        "data/imagenet/image/n01000001_3.JPEG 0",
        "data/imagenet/image/n01000003_1.JPEG 2",
        "data/imagenet/image/n01000002_99.JPEG 1",
    ]  # the last is not in the source
    ref_test = ["data/imagenet/val_image/ILSVRC2012_val_00000004.JPEG 1"]
    (ref / "train.txt").write_text("\n".join(ref_train) + "\n")
    (ref / "test.txt").write_text("\n".join(ref_test) + "\n")
    out = data / "imagenet100"
    printed, _ = run(
        [
            "imagenet100",
            "--source",
            source,
            "--out",
            out,
            "--classes",
            classes,
            "--reference-lists",
            ref,
        ],
        capsys,
    )
    train, query = read_list(out / "train.txt"), read_list(out / "test.txt")
    assert [(Path(p).name, l) for p, l in train] == [
        ("n01000001_3.JPEG", [0]),
        ("n01000003_1.JPEG", [2]),
    ]
    assert [(Path(p).name, l) for p, l in query] == [("ILSVRC2012_val_00000004.JPEG", [1])]
    assert len(read_list(out / "database.txt")) == 15
    assert (
        "train.txt of the reference: 3 lines, 2 found in the source, 1 absent (left out)" in printed
    )
    # a reference line whose class id disagrees with the class list is refused
    (ref / "train.txt").write_text("data/imagenet/image/n01000001_3.JPEG 2\n")
    err = refused(
        [
            "imagenet100",
            "--source",
            source,
            "--out",
            out,
            "--classes",
            classes,
            "--reference-lists",
            ref,
        ],
        capsys,
    )
    assert "line 1 gives n01000001_3.JPEG class 2, but the class list" in err


def test_imagenet100_default_class_list_needs_all_100_folders(tmp_path, capsys):
    source = make_imagenet(
        tmp_path / "in1k",
        train_per_class=2,
        val_per_class=1,
        wnids=read_class_list(IMAGENET100_CLASSES),
    )
    printed, result = run(
        [
            "imagenet100",
            "--source",
            source,
            "--out",
            tmp_path / "data" / "imagenet100",
            "--train-per-class",
            1,
        ],
        capsys,
    )
    assert (
        result.labels["train"].tolist() == list(range(100)) and len(result.paths["database"]) == 200
    )
    assert "classes from " + str(IMAGENET100_CLASSES) in printed
    (source / "train" / "n01514668").rename(source / "train" / "n01440764")
    err = refused(["imagenet100", "--source", source, "--out", tmp_path / "x"], capsys)
    assert "train lacks 1 of the 100 classes (n01514668)" in err


def test_imagenet100_refuses_other_sources_and_skips_bad_files(imagenet, tmp_path, capsys):
    source, classes, data = imagenet
    err = refused(
        ["imagenet100", "--source", tmp_path, "--out", data / "x", "--classes", classes], capsys
    )
    assert re.fullmatch(
        r"error: .* is not an ImageNet-1k folder: expected <source>/train/<wnid>/\*\.JPEG and <source>/val/<wnid>/\*\.JPEG .*\.",
        err,
    )
    flat = make_imagenet(tmp_path / "flat")
    for f in (flat / "val").rglob("*.JPEG"):
        f.rename(flat / "val" / f.name)
    for d in (flat / "val").iterdir():
        if d.is_dir():
            d.rmdir()
    err = refused(
        ["imagenet100", "--source", flat, "--out", data / "x", "--classes", classes], capsys
    )
    assert (
        "val lacks 3 of the 3 classes" in err
        and "sort the validation images into class folders" in err
    )
    (source / "train" / WNIDS[0] / "broken.JPEG").write_bytes(b"not a jpeg")
    (source / "train" / WNIDS[0] / "readme.txt").write_text("x")
    printed, result = run(
        [
            "imagenet100",
            "--source",
            source,
            "--out",
            data / "y",
            "--classes",
            classes,
            "--train-per-class",
            2,
        ],
        capsys,
    )
    assert "skipped 2 file(s) in train/ that are not readable images" in printed
    assert len(result.paths["database"]) == 15


# ----------------------------------------------------------------------------------------------
# NUS-WIDE

# 8 concepts over 24 images, 4 kept; the frequencies (the test checks them) put sky, water and
# animal first and grass and person level: the tie is broken by name, so grass is kept.
CONCEPTS = ["animal", "beach", "cars", "grass", "person", "sky", "toy", "water"]


def nuswide_labels() -> np.ndarray:
    rng = np.random.RandomState(3)
    labels = np.zeros((24, len(CONCEPTS)), np.uint8)
    wanted = {
        "sky": 14,
        "water": 12,
        "animal": 12,
        "grass": 11,
        "person": 11,
        "beach": 3,
        "cars": 2,
        "toy": 5,
    }
    for j, name in enumerate(CONCEPTS):
        labels[rng.permutation(24)[: wanted[name]], j] = 1
    labels[20] = 0
    labels[20, CONCEPTS.index("toy")] = 1  # an image with none of the kept concepts
    labels[21] = 0  # an image with no concept at all
    return labels


KEPT = ["animal", "grass", "sky", "water"]  # 4 most frequent, ties broken by name, alphabetical


def make_nuswide(root: Path, labels: np.ndarray, missing=(5,), windows=True) -> list[str]:
    """ImageList/Imagelist.txt (the official Windows paths, or paths relative to Flickr/) +
    Groundtruth/AllLabels/Labels_*.txt, images under Flickr/<category>/."""
    entries = []
    for i in range(len(labels)):
        category = ["actor", "beach"][i % 2]
        prefix = "C:\\ImageData\\Flickr\\" if windows else ""
        entries.append(f"{prefix}{category}\\{i:04d}_{1000 + i}.jpg")
        if i not in missing:
            write_image(root / "Flickr" / category / f"{i:04d}_{1000 + i}.jpg", size=(8, 8), seed=i)
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(entries) + "\r\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for j, name in enumerate(CONCEPTS):
        (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text(
            "\n".join(str(v) for v in labels[:, j]) + "\n"
        )
    return entries


@pytest.mark.parametrize(
    "windows", [True, False], ids=["official-windows-paths", "paths-under-flickr"]
)
def test_nuswide_rules_line_by_line(tmp_path, capsys, windows):
    labels = nuswide_labels()
    counts = {c: int(k) for c, k in zip(CONCEPTS, labels.sum(0))}
    top = sorted(CONCEPTS, key=lambda c: (-counts[c], c))[:4]
    assert sorted(top) == KEPT  # the miniature really has this ranking
    data = tmp_path / "data"
    source = data / "NUS-WIDE"  # inside the data folder: paths are written relative to it
    make_nuswide(source, labels, windows=windows)
    out = data / "nuswide"
    args = [
        "nuswide",
        "--source",
        source,
        "--out",
        out,
        "--concepts",
        4,
        "--queries-per-concept",
        1,
        "--train-per-concept",
        2,
    ]
    printed, _ = run(args, capsys)
    assert (out / "classes.txt").read_text().split() == KEPT
    columns = [CONCEPTS.index(c) for c in KEPT]
    expected_pool = {
        i for i in range(24) if labels[i, columns].any() and i != 5
    }  # 5 is missing on disk
    rows = {name: read_list(out / f"{name}.txt") for name in ("train", "test", "database")}
    seen = {}
    for name, split in rows.items():
        for path, vector in split:
            assert path.startswith("NUS-WIDE/Flickr/") and (data / path).is_file()
            i = int(Path(path).stem.split("_")[0])
            assert (
                vector == labels[i, columns].tolist()
            )  # the label files' values for the kept concepts
            assert sum(vector) >= 1
            seen.setdefault(name, []).append(i)
    assert (len(rows["test"]), len(rows["train"])) == (4, 8)  # 1 and 2 per concept
    assert set(seen["test"]) | set(seen["database"]) == expected_pool
    assert not set(seen["test"]) & set(seen["database"])
    assert set(seen["train"]) <= set(seen["database"])
    assert len(set(seen["train"])) == 8 and len(set(seen["test"])) == 4  # no image drawn twice
    for j in columns:  # every concept has its share of queries and training images
        assert (
            sum(labels[i, j] for i in seen["test"]) >= 1
            and sum(labels[i, j] for i in seen["train"]) >= 2
        )
    assert "skipped 1 listed image(s) that are missing or unreadable" in printed
    assert (
        f"{len(expected_pool) + 1} images have at least one of them, {len(expected_pool)} of these are on disk"
        in printed
    )
    loaded = list_file_splits(data, "nuswide")
    assert loaded.database.labels.shape == (len(expected_pool) - 4, 4)
    # deterministic for a seed
    first = outputs(out)
    run(args, capsys)
    assert outputs(out) == first
    run([*args, "--seed", 1], capsys)
    assert outputs(out)["test.txt"] != first["test.txt"]


def test_nuswide_refuses_other_sources(tmp_path, capsys):
    err = refused(["nuswide", "--source", tmp_path, "--out", tmp_path / "out"], capsys)
    assert (
        "is not a NUS-WIDE download: expected ImageList/Imagelist.txt and Groundtruth/AllLabels/Labels_<concept>.txt"
        in err
    )
    labels = nuswide_labels()
    make_nuswide(tmp_path / "nus", labels)
    (tmp_path / "nus" / "Groundtruth" / "AllLabels" / "Labels_sky.txt").write_text("0\n1\n")
    err = refused(
        ["nuswide", "--source", tmp_path / "nus", "--out", tmp_path / "out", "--concepts", 4],
        capsys,
    )
    assert "Labels_sky.txt does not hold one 0/1 value per line" in err


# ----------------------------------------------------------------------------------------------
# MS-COCO

CATEGORY_IDS = [1, 3, 7]  # gaps, as COCO's 80 ids in 1..90
# image id -> category ids of its annotations (empty: no annotation)
TRAIN = {11: [1], 12: [3, 3], 13: [1, 7], 14: [], 15: [7], 16: [1, 3, 7], 17: [3], 18: [1]}
VAL = {21: [7], 22: [], 23: [1, 3], 24: [3], 25: [1]}


def make_coco(root: Path, year="2014", missing=()):
    (root / "annotations").mkdir(parents=True)
    for part, images in (("train", TRAIN), ("val", VAL)):
        anns, ann_id = [], 0
        for image_id, cats in images.items():
            for cat in cats:
                ann_id += 1
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat,
                        "iscrowd": 0,
                        "bbox": [0, 0, 1, 1],
                    }
                )
            if image_id not in missing:
                write_image(
                    root / f"{part}{year}" / f"COCO_{part}{year}_{image_id:012d}.jpg",
                    size=(8, 8),
                    seed=image_id,
                )
        doc = {
            "info": {},
            "images": [
                {"id": i, "file_name": f"COCO_{part}{year}_{i:012d}.jpg"}
                for i in reversed(list(images))
            ],
            "annotations": anns,
            "categories": [{"id": c, "name": f"cat{c}"} for c in reversed(CATEGORY_IDS)],
        }
        (root / "annotations" / f"instances_{part}{year}.json").write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_rules_line_by_line(tmp_path, capsys, year):
    source = make_coco(tmp_path / "coco_download", year, missing=(18,))
    data = tmp_path / "data"
    out = data / "coco"
    args = ["coco", "--source", source, "--out", out, "--queries", 3, "--train", 4]
    printed, _ = run(args, capsys)
    assert (out / "classes.txt").read_text().split() == ["cat1", "cat3", "cat7"]  # by category id
    truth = {**TRAIN, **VAL}
    pool = {i for i, cats in truth.items() if cats and i != 18}  # labelled and on disk
    rows = {name: read_list(out / f"{name}.txt") for name in ("train", "test", "database")}
    ids = {}
    for name, split in rows.items():
        for path, vector in split:
            image_id = int(Path(path).stem.split("_")[-1])
            assert (
                Path(path).is_absolute() and Path(path).is_file()
            )  # source outside the data folder
            assert f"/{'train' if image_id < 20 else 'val'}{year}/" in path
            assert vector == [int(c in truth[image_id]) for c in CATEGORY_IDS]
            ids.setdefault(name, []).append(image_id)
    assert (len(rows["test"]), len(rows["train"]), len(rows["database"])) == (3, 4, len(pool) - 3)
    assert set(ids["test"]) | set(ids["database"]) == pool and not set(ids["test"]) & set(
        ids["database"]
    )
    assert set(ids["train"]) <= set(ids["database"])
    assert f"instances {year}: 13 images, 3 categories" in printed
    assert "11 images have at least one label, 10 of these are on disk" in printed
    first = outputs(out)
    run(args, capsys)
    assert outputs(out) == first


def test_coco_refuses_other_sources(tmp_path, capsys):
    err = refused(["coco", "--source", tmp_path, "--out", tmp_path / "out"], capsys)
    assert (
        "is not an MS-COCO download: expected annotations/instances_train2014.json and annotations/instances_val2014.json"
        in err
    )
    source = make_coco(tmp_path / "coco")
    (source / "annotations" / "instances_val2014.json").write_text('{"images": []}')
    err = refused(["coco", "--source", source, "--out", tmp_path / "out"], capsys)
    assert "instances_val2014.json is not a COCO instances file" in err
    (source / "annotations" / "instances_val2014.json").write_text("{broken")
    err = refused(["coco", "--source", source, "--out", tmp_path / "out"], capsys)
    assert "is not readable JSON" in err


def test_nothing_is_written_when_a_line_cannot_be_formatted(tmp_path):
    prepared = Prepared(
        "x",
        {"train": ["a.jpg"], "query": ["b.jpg"], "database": ["my photo.jpg"]},
        {k: np.zeros(1, np.int64) for k in ("train", "query", "database")},
        ["c0"],
    )
    with pytest.raises(DataError, match="'my photo.jpg' contains whitespace"):
        prepared.write(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    prepared.paths["database"] = ["c.jpg"]
    assert [p.name for p in prepared.write(tmp_path / "out")] == [
        "train.txt",
        "test.txt",
        "database.txt",
        "classes.txt",
    ]
    assert (tmp_path / "out" / "database.txt").read_text() == "c.jpg 0\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classes.txt",
        "database.txt",
        "test.txt",
        "train.txt",
    ]
