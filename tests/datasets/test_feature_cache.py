"""The frozen-backbone feature cache (datasets/feature_cache.py): hits, misses on every key
component, crash safety and resume, equality with the live frozen backbone, view banks, val.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose_run, val_config
from datasets import feature_cache as fc
from models.backbone.simple import Identity, Tiny
from utils.errors import ConfigError

BASE = ["backbone=tiny", "dataset=digits", "model.nbit=16", "epochs=1", "batch_size=64"]


@pytest.fixture
def calls(monkeypatch):
    """Counts the images that go through Tiny.forward (the backbone under test)."""
    counter = {"images": 0, "fail_after": None}
    original = Tiny.forward

    def forward(self, images):
        if counter["fail_after"] is not None and counter["images"] >= counter["fail_after"]:
            raise RuntimeError("simulated kill")
        counter["images"] += images.shape[0]
        return original(self, images)

    monkeypatch.setattr(Tiny, "forward", forward)
    return counter


def with_cache(overrides) -> list[str]:
    """The tests' compose switches the cache off unless told: these tests use the default, auto."""
    overrides = list(overrides)
    if not any(o.startswith("feature_cache=") for o in overrides):
        overrides.append("feature_cache=auto")
    return overrides


def build(tmp_path: Path, *overrides: str, name: str = "run"):
    from utils.compose.experiment import build_trainer

    cfg = compose_run(with_cache([*BASE, *overrides]), tmp_path, name)
    return build_trainer(cfg, tmp_path / name), cfg


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "feature_cache" / "digits").glob("*.npz"))


def test_hit_does_not_call_the_backbone(tmp_path, calls):
    trainer, _ = build(tmp_path, "model=sdc")
    n_train, n_q, n_db = (
        len(trainer.data.train),
        len(trainer.data.query),
        len(trainer.data.database),
    )
    # query + database (eval) + train (train transform); the train items' eval-transform
    # features (validation) are rows of the database's: train = database in digits
    assert calls["images"] == n_q + n_db + n_train
    assert isinstance(trainer.model.backbone, Identity)
    assert isinstance(trainer.data.train, fc.CachedSplit)
    assert len(cache_files(tmp_path)) == 3
    calls["images"] = 0
    again, _ = build(tmp_path, "model=sdc", name="again")
    assert calls["images"] == 0
    for split in ("train", "query", "database"):
        a, b = getattr(trainer.data, split), getattr(again.data, split)
        for kind in a.features:
            np.testing.assert_array_equal(a.features[kind], b.features[kind])


@pytest.mark.parametrize(
    "change, expected",
    [
        # split content: other queries -> every split differs (train = database here)
        ("dataset.source.queries_per_class=19", "all"),
        ("backbone.seed=1", "all"),  # backbone weights
        ("transforms.interpolation=bicubic", "train"),  # train transform config only
        ("feature_cache_dtype=float16", "all"),  # stored dtype
    ],
)
def test_miss_on_each_key_component(tmp_path, calls, change, expected):
    build(tmp_path, "model=sdc")
    calls["images"] = 0
    trainer, _ = build(tmp_path, "model=sdc", change, name="changed")
    n_train = len(trainer.data.train)
    if expected == "all":
        assert calls["images"] == len(trainer.data.query) + len(trainer.data.database) + n_train
    else:
        assert calls["images"] == n_train


def test_miss_on_view_index_only_new_views(tmp_path, calls):
    trainer, _ = build(tmp_path, "model=sdc_simclr", "feature_cache_views=2")
    n_train = len(trainer.data.train)
    assert trainer.data.train.features["train"].shape[:2] == (1, 2)
    calls["images"] = 0
    trainer, _ = build(tmp_path, "model=sdc_simclr", "feature_cache_views=3", name="more")
    assert calls["images"] == n_train  # only view 2 is new
    assert trainer.data.train.features["train"].shape[:2] == (1, 3)


def test_weights_fingerprint_sees_one_changed_value():
    a, b = Tiny(seed=0), Tiny(seed=0)
    assert fc.weights_fingerprint(a) == fc.weights_fingerprint(b)
    with torch.no_grad():
        b.fc.bias[3] += 1e-6
    assert fc.weights_fingerprint(a) != fc.weights_fingerprint(b)


def test_stored_key_parts_are_rechecked(tmp_path, calls):
    build(tmp_path, "model=sdc")
    path = next(p for p in cache_files(tmp_path) if p.name.startswith("query-"))
    with np.load(path) as stored:
        features, parts = stored["features"], json.loads(str(stored["parts"]))
    parts["weights"] = "something else"  # a file whose name matches but whose content does not
    np.savez(path, features=features, parts=np.array(json.dumps(parts)))
    calls["images"] = 0
    trainer, _ = build(tmp_path, "model=sdc", name="again")
    assert calls["images"] == len(trainer.data.query)


def test_killed_extraction_is_never_used_and_resumes(tmp_path, calls, monkeypatch):
    monkeypatch.setattr(fc, "SHARD", 256)
    clean, _ = build(tmp_path / "clean", "model=sdc")
    reference = clean.data.database.features["eval"]
    n_q = len(clean.data.query)
    calls["images"] = 0
    calls["fail_after"] = n_q + 600  # query done, database killed inside its third shard
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(tmp_path, "model=sdc", "eval_batch_size=100")
    names = [p.name for p in cache_files(tmp_path)]
    assert any(n.startswith("query-") for n in names)
    assert not any(n.startswith("database-") for n in names)  # nothing complete to be trusted
    partial = next((tmp_path / "data" / "feature_cache" / "digits").glob("database-*.partial"))
    assert len(list(partial.glob("*.npy"))) == 2  # two finished shards of 256
    calls["images"], calls["fail_after"] = 0, None
    resumed, _ = build(tmp_path, "model=sdc", "eval_batch_size=100", name="resumed")
    n_db, n_train = len(resumed.data.database), len(resumed.data.train)
    assert calls["images"] == (n_db - 512) + n_train  # the database resumed at shard 3
    assert not partial.exists()
    np.testing.assert_allclose(
        resumed.data.database.features["eval"], reference, rtol=1e-6, atol=1e-7
    )


def test_training_from_cache_equals_live_backbone(tmp_path):
    from utils.compose.experiment import train

    runs = {}
    for mode in ("off", "on"):
        cfg = compose_run(
            [*BASE, "model=sdc", "epochs=2", "eval_interval=1", f"feature_cache={mode}"],
            tmp_path,
            mode,
        )
        runs[mode] = train(cfg)
        runs[mode]["history"] = json.loads((tmp_path / mode / "train_history.json").read_text())
    for live, cached in zip(runs["off"]["history"], runs["on"]["history"]):
        for key in ("train_loss", "train_rec", "train_quan"):
            if key in live:
                assert cached[key] == pytest.approx(live[key], rel=1e-5, abs=1e-7), key
    key = runs["on"]["main_metric"]
    # the losses above are the exact check; a code within float noise of 0 may flip its sign
    # (features computed in other batch shapes), which moves mAP@100 of 200 queries slightly
    assert runs["on"]["last"][key] == pytest.approx(runs["off"]["last"][key], abs=5e-3)
    # checkpoints hold the head only, with or without the cache
    live_ckpt = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)
    cached_ckpt = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)
    assert live_ckpt["model"].keys() == cached_ckpt["model"].keys()
    assert not any(k.startswith("backbone.") for k in cached_ckpt["model"])


def test_same_loss_on_first_batches(tmp_path):
    """Batch by batch: the cached trainer's step gives the live trainer's loss."""
    from utils.compose.experiment import build_trainer

    losses = {}
    for mode in ("off", "on"):
        cfg = compose_run([*BASE, "model=ugh", f"feature_cache={mode}"], tmp_path, mode)
        trainer = build_trainer(cfg, tmp_path / mode)
        torch.manual_seed(0)
        batches = iter(trainer.train_loader(0))
        losses[mode] = [
            float(trainer.training_step(next(batches))["loss"].detach()) for _ in range(3)
        ]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-5)


def test_views_are_distinct_and_drawn_without_replacement():
    V, D = 5, 3
    bank = torch.arange(V, dtype=torch.float32)[None, :, None].expand(1, V, D).clone()
    view = fc.CachedView("train", views=2)
    torch.manual_seed(0)
    seen = set()
    for _ in range(300):
        a, b = view({"train": bank})
        assert a[0] != b[0]
        seen.add((int(a[0]), int(b[0])))
    assert len(seen) == V * (V - 1)  # every ordered pair of different views occurs
    # the draws follow torch's RNG, which the engine reseeds per epoch: resume replays them
    torch.manual_seed(7)
    first = [tuple(int(v[0]) for v in view({"train": bank})) for _ in range(20)]
    torch.manual_seed(7)
    assert first == [tuple(int(v[0]) for v in view({"train": bank})) for _ in range(20)]
    # asymmetric two-view transform: one view from each pipeline's bank
    two = torch.stack([bank[0], bank[0] + 100])
    a, b = view({"train": two})
    assert a[0] < 100 <= b[0]


def test_bank_views_differ_and_training_draws_from_them(tmp_path):
    trainer, _ = build(tmp_path, "model=sdc_simclr", "feature_cache_views=3")
    bank = trainer.data.train.features["train"][0]  # (V, N, D)
    assert not np.allclose(bank[0], bank[1]) and not np.allclose(bank[1], bank[2])
    (first, second), _, index = next(iter(trainer.train_loader(0)))
    for row in range(4):
        i = int(index[row])
        picks = [
            int(np.argmin(np.abs(bank[:, i] - x[row].numpy()).sum(1))) for x in (first, second)
        ]
        assert picks[0] != picks[1]
        for v, x in zip(picks, (first, second)):
            np.testing.assert_array_equal(bank[v, i], x[row].numpy())


def test_val_reproduces_cached_training_metrics(tmp_path):
    from utils.compose.experiment import train, validate

    cfg = compose_run(with_cache([*BASE, "model=sdc", "epochs=2", "eval_interval=1"]), tmp_path)
    metrics = train(cfg)
    assert isinstance(
        torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"], dict
    )
    for checkpoint in ("last", "best"):
        result = validate(val_config(tmp_path / "run", f"checkpoint={checkpoint}"))
        for key, value in metrics[checkpoint].items():
            if isinstance(value, float) and not key.startswith("val_"):
                assert result[key] == value, key


def test_on_where_it_cannot_apply_says_why(tmp_path):
    with pytest.raises(ConfigError, match="backbone is trained"):
        build(tmp_path, "model=sdc", "backbone_lr_scale=1", "feature_cache=on")
    with pytest.raises(ConfigError, match="already yields feature vectors"):
        build(tmp_path, "model=sdc", "backbone=identity", "feature_cache=on")
    trainer, _ = build(tmp_path, "model=sdc", "backbone_lr_scale=1", name="auto")
    assert isinstance(trainer.model.backbone, Tiny)  # auto: silently the live backbone
    trainer, _ = build(tmp_path, "model=sdc", "feature_cache=off", name="off")
    assert isinstance(trainer.model.backbone, Tiny) and not cache_files(tmp_path)


def test_closed_form_fits_on_eval_transform_features(tmp_path, calls):
    from utils.compose.experiment import train

    metrics = {}
    for mode in ("off", "on"):
        cfg = compose_run([*BASE, "model=pcah", f"feature_cache={mode}"], tmp_path, mode)
        metrics[mode] = train(cfg)
    key = metrics["on"]["main_metric"]
    assert metrics["on"]["last"][key] == pytest.approx(metrics["off"]["last"][key], abs=1e-6)


@pytest.mark.data
def test_shared_cifar10_few_hundred_images(tmp_path_factory, tmp_path, calls):
    from dataset_test_utils import extract_shared_cifar
    from omegaconf import open_dict

    from conftest import compose
    from datasets.base import HashingData
    from datasets.cifar import read_image_folder_pool
    from utils.compose import build as builders

    gen = extract_shared_cifar(tmp_path_factory)
    root = next(gen)
    try:
        pool, _, _ = read_image_folder_pool(root)
        rng = np.random.RandomState(0)
        picks = rng.choice(len(pool), 300, replace=False)
        data = HashingData(
            train=pool.subset(picks[:200]),
            query=pool.subset(picks[200:250]),
            database=pool.subset(picks[:250]),
        )
        cfg = compose(
            [
                "dataset=cifar10",
                "backbone=tiny",
                "model=sdc",
                "dataset.resize=32",
                "dataset.crop=32",
                f"data_dir={tmp_path}",
                "progress=false",
                "num_workers=0",
                "feature_cache=on",
            ]
        )
        with open_dict(cfg):
            del cfg["hydra"]

        def apply(split_data):
            model = builders.build_model(cfg)
            return fc.apply_feature_cache(
                cfg,
                model,
                split_data,
                builders.build_train_transform(cfg),
                builders.build_eval_transform(cfg),
                torch.device("cpu"),
            )

        cached = apply(data).data
        assert calls["images"] == 50 + 250 + 200  # train eval features = database rows
        assert cached.database.features["eval"].shape == (250, 32)
        live = Tiny(features_size=32).eval()
        x = torch.stack([builders.build_eval_transform(cfg)(data.query.load(i)) for i in range(5)])
        np.testing.assert_allclose(
            cached.query.features["eval"][:5], live(x).detach().numpy(), rtol=1e-5, atol=1e-6
        )
        calls["images"] = 0
        apply(data)
        assert calls["images"] == 0
        other = HashingData(
            train=data.train, query=pool.subset(picks[250:300]), database=data.database
        )
        apply(other)
        assert calls["images"] == 50  # only the changed query split
    finally:
        gen.close()


def test_rows_within_finds_train_items_in_the_database_only_when_all_are_there():
    from datasets.base import ArrayImageSplit

    pool = np.zeros((10, 4, 4), dtype=np.uint8)
    labels = np.arange(10) % 3
    database = ArrayImageSplit(pool, labels[2:], np.arange(2, 10))
    inside = ArrayImageSplit(pool, labels[[5, 3]], np.array([5, 3]))
    np.testing.assert_array_equal(fc.rows_within(inside, database), [3, 1])
    outside = ArrayImageSplit(pool, labels[[5, 1]], np.array([5, 1]))
    assert fc.rows_within(outside, database) is None
    other_pool = ArrayImageSplit(pool.copy(), labels[[5]], np.array([5]))
    assert fc.rows_within(other_pool, database) is None


def test_bad_feature_cache_value(tmp_path):
    with pytest.raises(ConfigError, match="auto, on or off"):
        build(tmp_path, "model=sdc", "feature_cache=maybe")


def test_same_config_with_other_weights_is_a_miss(tmp_path, calls, monkeypatch):
    # two weight files behind one identical backbone config (as when a checkpoint file is
    # replaced in place): the key must see the weights, not just the config
    first, _ = build(tmp_path, "model=sdc")
    original_init = Tiny.__init__

    def other_weights(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        with torch.no_grad():
            self.fc.weight.mul_(-1.0)

    monkeypatch.setattr(Tiny, "__init__", other_weights)
    calls["images"] = 0
    second, _ = build(tmp_path, "model=sdc", name="other")
    assert calls["images"] == len(second.data.query) + len(second.data.database) + len(
        second.data.train
    )
    assert len([p for p in cache_files(tmp_path) if p.name.startswith("query-")]) == 2
    assert not np.allclose(first.data.query.features["eval"], second.data.query.features["eval"])


def test_damaged_cache_file_is_named_and_recomputed(tmp_path, calls, caplog):
    import logging

    first, _ = build(tmp_path, "model=sdc")
    path = next(p for p in cache_files(tmp_path) if p.name.startswith("query-"))
    path.write_bytes(path.read_bytes()[:200])
    calls["images"] = 0
    with caplog.at_level(logging.WARNING):
        again, _ = build(tmp_path, "model=sdc", name="again")
    assert f"feature cache file {path} is damaged" in caplog.text
    assert calls["images"] == len(again.data.query)  # only the damaged entry
    np.testing.assert_array_equal(
        again.data.query.features["eval"], first.data.query.features["eval"]
    )


def test_damaged_shard_of_a_killed_extraction_is_extracted_again(tmp_path, calls, monkeypatch):
    monkeypatch.setattr(fc, "SHARD", 256)
    clean, _ = build(tmp_path / "clean", "model=sdc")
    n_q = len(clean.data.query)
    calls["images"] = 0
    calls["fail_after"] = n_q + 600  # the database killed inside its third shard
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(tmp_path, "model=sdc", "eval_batch_size=100")
    partial = next((tmp_path / "data" / "feature_cache" / "digits").glob("database-*.partial"))
    shard = sorted(partial.glob("*.npy"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # damaged from outside
    (partial / ".000000000.npy.tmp-99999").write_bytes(b"left by a killed writer")
    calls["images"], calls["fail_after"] = 0, None
    resumed, _ = build(tmp_path, "model=sdc", "eval_batch_size=100", name="resumed")
    n_db, n_train = len(resumed.data.database), len(resumed.data.train)
    assert calls["images"] == (n_db - 256) + n_train  # shard 1 kept; shard 2 and the rest redone
    np.testing.assert_allclose(
        resumed.data.database.features["eval"],
        clean.data.database.features["eval"],
        rtol=1e-6,
        atol=1e-7,
    )


def test_view_banks_seed_the_cpu_generator_only(tmp_path, monkeypatch):
    # extract() saves and restores the CPU generator only (fork_rng(devices=[])), so seeding
    # the CUDA generators there would change a CUDA run's random numbers behind its back
    seeded, inside = [], {"extract": False}
    original_extract = fc.extract

    def watched_extract(*args, **kwargs):
        inside["extract"] = True
        try:
            return original_extract(*args, **kwargs)
        finally:
            inside["extract"] = False

    def record(seed):
        if inside["extract"]:
            seeded.append(seed)

    monkeypatch.setattr(fc, "extract", watched_extract)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", record)
    monkeypatch.setattr(torch.cuda, "manual_seed", record)
    trainer, _ = build(tmp_path, "model=cibhash", "feature_cache_views=2")
    assert trainer.data.train.features["train"].shape[:2] == (1, 2)  # the banks were extracted
    assert seeded == []
    # and the CPU generator is as it was before extraction
    torch.manual_seed(123)
    state = torch.get_rng_state()
    fc.extract(
        trainer.data.query,
        Identity(trainer.data.query.features["eval"].shape[1]),
        fc.CachedView("eval"),
        tmp_path / "x.npz",
        {"items": len(trainer.data.query), "dtype": "float32"},
        torch.device("cpu"),
        view_seed=(1, 2),
        progress=False,
    )
    assert torch.equal(torch.get_rng_state(), state)


def _build_in_process(root: Path, name: str, *kill_after: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "helpers" / "build_cached.py"),
            str(root),
            name,
            *map(str, kill_after),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_racing_for_one_cache_extract_it_once(tmp_path):
    # the first racer extracts slowly (0.2 s a batch); the second starts once the first is
    # inside an extraction, so without the lock both would extract the same entries
    cache = tmp_path / "data" / "feature_cache" / "digits"
    racers = [_build_in_process(tmp_path, "job0", 0, 0.2)]
    deadline = time.time() + 240
    while not list(cache.glob("*.partial")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(cache.glob("*.partial")), "the first racer never started extracting"
    racers.append(_build_in_process(tmp_path, "job1"))
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    # one extraction of query (200) + database (1,597) + train (200, train transform) in all
    assert sorted(r["images"] for r in results) == [0, 200 + 1597 + 200]
    assert results[0]["sum"] == results[1]["sum"]
    assert len(list(cache.glob("database-*.npz"))) == 1 and not list(cache.glob("*.partial"))


@pytest.mark.slow
def test_a_crashed_extractor_does_not_block_the_next(tmp_path):
    # batches of 64: query = 4 batches, database shard 1 (256) = 4 more: killed in shard 2
    crashed = _build_in_process(tmp_path, "crashed", 10)
    crashed.communicate(timeout=300)
    assert crashed.returncode == -signal.SIGKILL
    follower = _build_in_process(tmp_path, "follower")
    out, err = follower.communicate(timeout=300)  # would hang if the lock outlived its holder
    assert follower.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["images"] == (1597 - 256) + 200


def test_a_rank_extracts_only_its_own_shards_and_rank_0_merges_them(tmp_path, monkeypatch):
    """torchrun's sharded extraction, one rank at a time: rank 1 of 2 computes the odd shards,
    rank 0 the even ones, and the merge of the two equals a one-process extraction."""
    monkeypatch.setattr(fc, "SHARD", 100)
    from datasets.base import ArrayImageSplit

    pixels = np.random.RandomState(0).randint(0, 256, (450, 4, 4)).astype(np.uint8)
    split = ArrayImageSplit(pixels, np.zeros(450, np.int64))
    seen: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return batch.flatten(1) * 2

    def transform(image):
        return torch.tensor(np.array(image), dtype=torch.float32)[None] / 255

    parts = {"dtype": "float32", "split": "x"}
    path = tmp_path / "x.npz"
    job = fc._Extraction(split, run, transform, path, parts, 64, 0, None, False, "x")
    pieces, computed = fc._extract_shards(job, owned=lambda k: k % 2 == 1)
    assert computed == 100 + 100 and sorted(k for k, v in pieces.items() if v is not None) == [
        100,
        300,
    ]
    pieces, computed = fc._extract_shards(job, owned=lambda k: k % 2 == 0)
    assert computed == 100 + 100 + 50
    seen.clear()
    merged = fc._extract_locked(job)
    assert seen == []  # every shard was there: only a merge
    expected = np.stack([transform(split.load(i)).flatten() * 2 for i in range(450)])
    np.testing.assert_array_equal(merged, expected)
    assert not path.with_name("x.npz.partial").exists()
