"""Atomic writes: a write that fails half-way leaves the previous file intact and no temp file."""

import json

import numpy as np
import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint, write_json, write_npz
from utils.errors import CheckpointError


class Boom(Exception):
    pass


def test_checkpoint_round_trip_and_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "epoch": 1}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))

    def half_then_fail(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial")
        raise Boom

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(Boom):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_write_npz_round_trip_and_failure_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "codes" / "last.npz"
    write_npz(path, query_codes=np.eye(3, dtype=np.float32), labels=np.arange(3))
    with np.load(path) as saved:
        assert np.array_equal(saved["query_codes"], np.eye(3))
        assert np.array_equal(saved["labels"], np.arange(3))

    def fail(handle, **arrays):
        handle.write(b"PK partial")
        raise Boom

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(Boom):
        write_npz(tmp_path / "other.npz", a=np.zeros(2))
    assert not (tmp_path / "other.npz").exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_write_json_is_indented_and_complete(tmp_path):
    write_json({"a": [1, 2]}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2]}
