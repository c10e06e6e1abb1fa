"""scripts/bench_view_bank.py: the smoke run, and the assumption it rests on (a head trained
with the live backbone scores the same when evaluated from cached features)."""

import importlib.util

import pytest

from conftest import REPO

QUICK = [
    "model=cibhash",
    "backbone=tiny",
    "dataset=digits",
    "model.nbit=16",
    "num_workers=0",
    "epochs=1",
    "dataset.source.train=20",
    "batch_size=32",
    "progress=false",
]


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_view_bank", REPO / "scripts" / "bench_view_bank.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_setting(tmp_path, capsys):
    rows = _load().main(["--quick", "--data-dir", str(tmp_path / "data")])
    assert [r["setting"] for r in rows] == ["V=2", "fresh"]
    assert all(0.0 < r["map"] <= 1.0 and 0.0 < r["map_tie"] <= 1.0 for r in rows)
    out = capsys.readouterr().out
    assert "| fresh |" in out and "+0.0000" in out


def test_live_trained_head_scores_the_same_from_the_cache(tmp_path):
    from models.trainers.base import load_model_state
    from utils.compose.experiment import build_trainer

    bench = _load()
    base = [*QUICK, f"data_dir={tmp_path / 'data'}"]
    live_cfg = bench.compose([*base, "feature_cache=off", f"logdir={tmp_path / 'live'}"])
    live = build_trainer(live_cfg, tmp_path / "live")
    bench.train_head(live, live_cfg)
    # feature_extractor=torch: the eager features the live run saw, to the last bit (an engine's
    # differ by up to 1e-5, tests/utils/test_feature_extractor.py)
    cached = build_trainer(
        bench.compose(
            [
                *base,
                "feature_cache=on",
                "feature_cache_views=2",
                "feature_extractor=torch",
                f"logdir={tmp_path / 'cached'}",
            ]
        ),
        tmp_path / "cached",
    )
    assert type(cached.model.backbone).__name__ == "Identity"  # really reads the cache
    load_model_state(cached.model, live.model.trainable_state_dict())
    expected, got = live.evaluate(), cached.evaluate()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
