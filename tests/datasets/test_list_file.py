import numpy as np
import pytest
import torch
from PIL import Image

from datasets.listfile import list_file_splits, parse_list_file
from utils.errors import DataError

from dataset_test_utils import write_image  # isort: skip  (tests/datasets is on sys.path)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_single_label(tmp_path):
    f = write(tmp_path / "a.txt", "img/x.jpg 3\n\nimg/y.jpg 0\n  img/z.jpg   12  \n")
    paths, labels = parse_list_file(f)
    assert paths == ["img/x.jpg", "img/y.jpg", "img/z.jpg"]
    assert labels.dtype == np.int64 and labels.tolist() == [3, 0, 12]


def test_multi_hot(tmp_path):
    f = write(tmp_path / "a.txt", "x.jpg 0 1 0 1\ny.jpg 1 0 0 0\n")
    paths, labels = parse_list_file(f)
    assert labels.dtype == np.float32 and labels.shape == (2, 4)
    assert labels.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt not found") as err:
        parse_list_file(tmp_path / "nope.txt")
    assert "relative/path label" in str(err.value)


@pytest.mark.parametrize(
    "text, lineno, what",
    [
        ("x.jpg 1\ny.jpg\n", 2, "no label"),
        ("x.jpg 1\ny.jpg 2\nz.jpg cat\n", 3, "non-integer"),
        ("x.jpg 1.5\n", 1, "non-integer"),
        ("x.jpg 0 1 0\ny.jpg 0 2 0\n", 2, "other than 0/1"),
        ("x.jpg 0 1 0\ny.jpg 0 1 0 1\n", 2, "same multi-hot length"),
        ("x.jpg 0 1 0\ny.jpg 2\n", 2, "mixes single-label and multi-hot"),
        ("x.jpg 2\ny.jpg 0 1\n", 2, "mixes single-label and multi-hot"),
        ("x.jpg -1\n", 1, "negative"),
    ],
)
def test_malformed_lines(tmp_path, text, lineno, what):
    f = write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError) as err:
        parse_list_file(f)
    assert f"bad.txt line {lineno}" in str(err.value) and what in str(err.value)


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="no entries"):
        parse_list_file(write(tmp_path / "e.txt", "\n\n"))


@pytest.fixture
def listed(tmp_path):
    for name in ("a", "b", "c"):
        write_image(tmp_path / "images" / f"{name}.png", size=(20, 10), mode="L")
    write(tmp_path / "ds" / "train.txt", "images/a.png 0 1\nimages/b.png 1 1\n")
    write(tmp_path / "ds" / "test.txt", "images/c.png 1 0\n")
    write(
        tmp_path / "ds" / "database.txt", "images/a.png 0 1\nimages/b.png 1 1\nimages/c.png 1 0\n"
    )
    return tmp_path


def test_list_file_splits(listed):
    data = list_file_splits(listed, "ds")
    assert data.sizes() == {"train": 2, "query": 1, "database": 3}
    assert data.split_indices is None
    img, label, i = data.database[2]
    assert (
        isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 10)
    )  # converted to RGB
    assert label.dtype == torch.float32 and label.tolist() == [1.0, 0.0] and i == 2


def test_image_root(listed, tmp_path_factory):
    other = tmp_path_factory.mktemp("lists")
    for name in ("train.txt", "test.txt", "database.txt"):
        write(other / "ds" / name, (listed / "ds" / name).read_text())
    data = list_file_splits(other, "ds", image_root=listed)
    assert data.query.load(0).size == (20, 10)
    default = list_file_splits(other, "ds")
    with pytest.raises(DataError, match="images/c.png"):  # not under root: names the file
        default.query.load(0)


def test_missing_database_list(listed):
    (listed / "ds" / "database.txt").unlink()
    with pytest.raises(DataError, match="database.txt not found"):
        list_file_splits(listed, "ds")


def test_splits_disagree_on_format(listed):
    write(listed / "ds" / "test.txt", "images/c.png 1\n")
    with pytest.raises(DataError, match="disagree"):
        list_file_splits(listed, "ds")
