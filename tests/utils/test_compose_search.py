"""utils/compose/search.py without a trained run: command-line settings, item ids, query codes,
query folders."""

import numpy as np
import pytest
from PIL import Image

from datasets.base import ArrayImageSplit, FeatureSplit, FileImageSplit
from utils.compose.search import image_mode, item_ids, load_query_codes, parse_settings, query_files
from utils.errors import ConfigError, DataError

SPEC = {"index": (str, ...), "k": (int, 10), "progress": (bool, True), "nprobe": (int, None)}


def test_parse_settings():
    assert parse_settings(["index=a=b", "k=3"], SPEC) == {
        "index": "a=b",
        "k": 3,
        "progress": True,
        "nprobe": None,
    }
    assert parse_settings(["index=x", "progress=false", "nprobe=null"], SPEC)["progress"] is False
    for args, match in (
        (["k=3"], "missing setting index="),
        (["index=x", "k=three"], "k must be an integer, got 'three'"),
        (["index=x", "K=3"], "unknown setting 'K'; valid keys: index, k"),
        (["index=x", "--k", "3"], "argument '--k' is not key=value"),
        (["index=x", "progress=yes"], "progress must be true or false"),
        (["index=null"], "setting index needs a value"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_settings(args, SPEC)


def test_item_ids_paths_where_the_dataset_has_them(tmp_path):
    paths = []
    for i, mode in enumerate(["RGB", "RGB"]):
        Image.new(mode, (5, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    ids, kind = item_ids(FileImageSplit(paths, np.array([0, 1])))
    assert kind == "path" and ids.tolist() == [str(p) for p in paths]
    assert image_mode(FileImageSplit(paths, np.array([0, 1]))) == "RGB"
    pool = ArrayImageSplit(np.zeros((6, 8, 8), np.uint8), np.arange(6))
    ids, kind = item_ids(pool.subset([4, 2, 5]))
    assert kind == "index" and ids.tolist() == [0, 1, 2]  # positions in the database split
    assert image_mode(pool) == "L"
    assert image_mode(FeatureSplit(np.zeros((3, 4), np.float32), np.arange(3))) is None


def test_load_query_codes(tmp_path):
    u = np.array([[0.5, -1, 0, 2, -3, 1, 1, -1, 0.1, -0.2, 3, 0]], np.float32)  # 12 bits
    expected = np.array([[0b10110110, 0b10110000]], np.uint8)
    np.savez(tmp_path / "c.npz", codes=u)
    np.testing.assert_array_equal(load_query_codes(tmp_path / "c.npz", 12), expected)
    np.savez(tmp_path / "v.npz", query_codes=u, database_codes=u)  # val.py's codes file
    np.testing.assert_array_equal(load_query_codes(tmp_path / "v.npz", 12), expected)
    np.savez(tmp_path / "p.npz", packed=expected | np.array([[0, 0b1111]], np.uint8))
    np.testing.assert_array_equal(load_query_codes(tmp_path / "p.npz", 12), expected)  # padding
    cases = [
        ("u.npz", {"codes": u.astype(np.uint8)}, "is uint8, which would be read as"),
        ("w.npz", {"codes": u[:, :8]}, "has shape (1, 8) but the index holds 12-bit"),
        ("q.npz", {"packed": expected[:, :1]}, "'packed' must be (Q, 2) uint8"),
        ("n.npz", {"other": u}, "holds none of the arrays 'codes'"),
        ("nan.npz", {"codes": u * np.nan}, "contain NaN or inf"),
    ]
    for name, arrays, match in cases:
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=match.replace("(", "\\(").replace(")", "\\)")):
            load_query_codes(tmp_path / name, 12)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read query codes"):
        load_query_codes(tmp_path / "bad.npz", 12)


def test_query_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("z.png", "a.jpg", "b/c.png", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.png").write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in query_files(tmp_path)] == [
        "a.jpg",
        "b/c.png",
        "z.png",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        query_files(tmp_path / "empty")
