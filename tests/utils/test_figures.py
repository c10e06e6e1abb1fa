"""Figures and TensorBoard diagnostics end to end on digits: valid PNGs of the expected size,
the numbers behind them against the retrieval engine and saved codes, plots=false writes
nothing, feature datasets skip the grid, scripts/plot.py and summarize.py --plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, compose_run, val_config
from utils import diagnostics as dg
from utils import plots

QUICK = ["epochs=2", "eval_interval=1", "model.nbit=16", "num_workers=0"]
RUN_FILES = {
    "pr_curve_best.png",
    "precision_at_k_best.png",
    "distance_histogram_best.png",
    "training_curves.png",
    "retrieval_grid_best.png",
    "figure_data_best.json",
}


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path, size: tuple[float, float] | None = None):
    """A valid PNG (decodes fully), of width x height inches at plots.DPI when given."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        if size is not None:
            assert image.size == (int(size[0] * plots.DPI), int(size[1] * plots.DPI))  # truncated
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 0, f"{path} is blank"


# --------------------------------------------------------------------------------------------
# Drawing functions: valid images of the expected size
# --------------------------------------------------------------------------------------------


def test_each_drawing_is_a_png_of_the_expected_size(tmp_path):
    pr = {"radius": [0, 1, 2], "precision": [0.9, 0.7, 0.5], "recall": [0.1, 0.5, 1.0]}
    pk = {"k": [1, 10, 100], "precision": [0.9, 0.8, 0.5]}
    hist = {"label": "x", "same": [5, 3, 1], "diff": [1, 3, 5], "overlap": 0.4}
    curves = {"loss": {"loss": ([1, 2], [1.0, 0.5])}, "map": {"mAP@10": ([2], [0.4])}}
    grid = [{"query": 0, "retrieved": [1, 2], "correct": [True, False], "distance": [0, 3]}]
    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    cases = [
        (plots.pr_curve([("a", pr), ("b", pr)], "t"), (plots.COLUMN, 2.6)),
        (plots.precision_at_k([("a", pk)], "t"), (plots.COLUMN, 2.6)),
        (plots.distance_histograms([hist], "t"), (plots.COLUMN, 2.4)),
        (plots.distance_histograms([hist] * 5, "t"), (plots.PAGE, 1.75 * 2 + 0.35)),
        (plots.training_curves([("a", curves)], "t"), (plots.COLUMN * 2, 2.4)),
        (
            plots.retrieval_grid(grid, [img], [[img, img[..., 0]]], ["q"], "t"),
            (plots.PAGE, plots.PAGE / 3.6 + 0.45),
        ),
        (
            plots.map_vs_bits(
                {"A": {"nbit": [16, 32], "mean": [0.3, 0.4], "std": [0.01, 0]}}, "t", "mAP@1000"
            ),
            (plots.COLUMN, 2.6),
        ),
    ]
    for i, (fig, size) in enumerate(cases):
        path = plots.save(fig, tmp_path / f"{i}.png")
        assert_png(path, size)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.png" for i in range(len(cases))]


# --------------------------------------------------------------------------------------------
# val.py plots=true / plots=false
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from utils.compose.experiment import train

    tmp = tmp_path_factory.mktemp("fig")
    train(compose_run(QUICK, tmp, "sdc"))
    return tmp / "sdc"


def test_plots_false_writes_nothing(digits_run):
    from utils.compose.experiment import validate

    before = sorted(p.relative_to(digits_run) for p in digits_run.rglob("*"))
    result = validate(val_config(digits_run, "plots=false"))
    after = sorted(p.relative_to(digits_run) for p in digits_run.rglob("*"))
    assert "figures" not in result and not (digits_run / "plots").exists()
    assert set(after) - set(before) <= {Path("eval_best.json")}


def test_val_plots_writes_every_figure_with_the_engine_numbers(digits_run):
    from utils.compose.experiment import validate

    result = validate(val_config(digits_run, "plots=true", "save_codes=true"))
    out = digits_run / "plots"
    assert {p.name for p in out.iterdir()} == RUN_FILES
    sizes = {
        "pr_curve_best.png": (plots.COLUMN, 2.6),
        "precision_at_k_best.png": (plots.COLUMN, 2.6),
        "distance_histogram_best.png": (plots.COLUMN, 2.4),
        "training_curves.png": (plots.COLUMN * 2, 2.4),
        "retrieval_grid_best.png": (plots.PAGE, plots.PAGE / 11.6 * 10 + 0.45),
    }
    for name, size in sizes.items():
        assert_png(out / name, size)
    data = json.loads((out / "figure_data_best.json").read_text())
    assert data["meta"] == {
        "dataset": "digits",
        "method": "sdc",
        "nbit": 16,
        "checkpoint": "best",
        "epoch": result["epoch"],
        "logdir": str(digits_run.resolve()),
    }
    # PR points: the engine's curve of the same evaluation (eval_best.json)
    assert data["pr_curve"] == json.loads((digits_run / "eval_best.json").read_text())["pr_curve"]
    with np.load(digits_run / "codes" / "best.npz") as codes:
        q, g = codes["query_codes"], codes["database_codes"]
        ql, dl = codes["query_labels"], codes["database_labels"]
    same, diff = dg.pair_distance_histograms(q, g, ql, dl)
    assert data["distance_histogram"]["same"] == same.tolist()
    assert data["distance_histogram"]["diff"] == diff.tolist()
    assert sum(same) + sum(diff) == len(q) * len(g)
    assert (
        data["precision_at_k"]["precision"][data["precision_at_k"]["k"].index(10)] == result["P@10"]
    )
    # the grid: one query per class (digits: 10 classes), top-10 by (distance, index)
    rows = data["retrieval_grid"]
    assert sorted(ql[[r["query"] for r in rows]].tolist()) == list(range(10))
    assert rows == dg.retrieval_grid_rows(q, g, ql, dl, [r["query"] for r in rows], 10)
    # training curves: every loss term of train_history.json, the query and validation mAP
    history = json.loads((digits_run / "train_history.json").read_text())
    assert set(data["training_curves"]["loss"]) == {"loss", "rec", "quan"}
    assert data["training_curves"]["loss"]["rec"][1] == [r["train_rec"] for r in history]
    assert set(data["training_curves"]["map"]) == {"mAP@100", "mAP_tie@100", "val_mAP@100"}
    assert data["notes"] == []


def test_feature_dataset_skips_the_grid_with_a_note(tmp_path, capsys):
    from utils.compose.experiment import train, validate

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 80), ("query", 10), ("database", 50)):
        arrays[f"{split}_labels"] = rng.integers(0, 3, n)
        arrays[f"{split}_features"] = rng.normal(size=(n, 8)) + arrays[f"{split}_labels"][:, None]
    np.savez(tmp_path / "f.npz", **arrays)
    train(
        compose_run(
            [
                "model=lsh",
                "dataset=features",
                f"dataset.source.path={tmp_path}/f.npz",
                "dataset.features_size=8",
                "dataset.nclass=3",
                "dataset.R=20",
                "model.nbit=8",
                "num_workers=0",
            ],
            tmp_path,
        )
    )
    result = validate(val_config(tmp_path / "run", "plots=true"))
    names = {p.name for p in (tmp_path / "run" / "plots").iterdir()}
    assert names == RUN_FILES - {"retrieval_grid_best.png"}
    assert result["figures"]["notes"] == [
        "retrieval grid skipped: the dataset holds precomputed features, no images"
    ]
    assert "retrieval grid skipped" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# scripts/plot.py and summarize.py --plot
# --------------------------------------------------------------------------------------------


def test_plot_script_compares_runs(digits_run, tmp_path):
    from utils.compose.experiment import train

    train(compose_run([*QUICK, "model=ugh"], tmp_path, "ugh"))
    files = _load_script("plot").main(
        [str(digits_run), str(tmp_path / "ugh"), "--out", str(tmp_path / "cmp")]
    )
    compare = {p.name for p in (tmp_path / "cmp").iterdir()}
    assert compare == {
        "compare_distance_histogram.png",
        "compare_pr_curve.png",
        "compare_precision_at_k.png",
        "compare_training_curves.png",
    }
    assert {p.name for p in (tmp_path / "ugh" / "plots").iterdir()} == RUN_FILES
    assert_png(tmp_path / "cmp" / "compare_distance_histogram.png", (plots.PAGE, 2.1))
    assert_png(tmp_path / "cmp" / "compare_pr_curve.png", (plots.COLUMN, 2.6))
    assert len(files) == 2 * 5 + 4


def test_plot_script_rejects_a_folder_that_is_no_run(tmp_path):
    from utils.errors import UserError

    with pytest.raises(UserError, match="not a run directory"):
        _load_script("plot").main([str(tmp_path)])


def test_summarize_plot_draws_map_against_bits(tmp_path):
    from utils.compose.experiment import train

    for nbit in (8, 16):
        for seed in (1, 2):
            train(
                compose_run(
                    ["model=lsh", f"model.nbit={nbit}", f"seed={seed}", "num_workers=0"],
                    tmp_path / "sweep",
                    f"{nbit}_{seed}",
                )
            )
    rows = [
        _load_script("summarize").load_run(tmp_path / "sweep" / f"{n}_{s}", "last")
        for n in (8, 16)
        for s in (1, 2)
    ]
    _load_script("summarize").main([str(tmp_path / "sweep"), "--plot"])
    assert_png(tmp_path / "sweep" / "plots" / "map_vs_bits.png", (plots.COLUMN, 2.6))
    data = dg.map_by_bits(rows)["lsh"]
    maps16 = [r["map"] for r in rows if r["nbit"] == 16]
    assert data["mean"][1] == pytest.approx(np.mean(maps16))
    assert data["std"][1] == pytest.approx(np.std(maps16, ddof=1))


# --------------------------------------------------------------------------------------------
# TensorBoard diagnostics written by the engine
# --------------------------------------------------------------------------------------------


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_engine_logs_diagnostics_that_match_the_validation_codes(digits_run):
    from models.trainers.base import load_model_state
    from utils.checkpoint import load_checkpoint
    from utils.compose.experiment import build_trainer
    from utils.config import load_run_config

    acc = _events(digits_run)
    scalars = {t for t in acc.Tags()["scalars"] if t.startswith("diag/")}
    assert {
        "diag/hamming_overlap",
        "diag/bit_balance_mean_abs_dev",
        "diag/quantisation_gap",
        "diag/bit_correlation_mean_abs",
        "diag/distinct_code_share",
        "diag/calibration_gap",
    } <= scalars
    assert {
        "diag/hamming_same_class",
        "diag/hamming_diff_class",
        "diag/bit_balance",
        "diag/calibration_code_similarity",
        "diag/calibration_target",
    } <= set(acc.Tags()["histograms"])
    assert [e.step for e in acc.Scalars("diag/hamming_overlap")] == [1, 2]
    # recompute the last evaluation's numbers from last.pt (epoch 2)
    cfg = load_run_config(digits_run)
    trainer = build_trainer(cfg, digits_run)
    load_model_state(
        trainer.model, load_checkpoint(digits_run / "checkpoints" / "last.pt")["model"]
    )
    vq, vdb = trainer.validation
    q, g = trainer.encode(vq), trainer.encode(vdb)
    same, diff = dg.pair_distance_histograms(q, g, vq.labels, vdb.labels)
    logged = acc.Scalars("diag/hamming_overlap")[-1].value
    assert logged == pytest.approx(dg.histogram_overlap(same, diff), abs=1e-6)
    hist = acc.Histograms("diag/hamming_same_class")[-1].histogram_value
    assert list(hist.bucket) == same.tolist() and hist.num == same.sum()
    gap = acc.Scalars("diag/quantisation_gap")[-1].value
    assert gap == pytest.approx(dg.quantisation_gap(torch.cat([q, g])), abs=1e-6)


@pytest.mark.parametrize(
    "overrides, expect_diag", [(["model=lsh"], True), (["model=ugh", "diagnostics=false"], False)]
)
def test_diagnostics_for_closed_form_and_switched_off(tmp_path, overrides, expect_diag):
    from utils.compose.experiment import train

    train(compose_run([*QUICK, *overrides], tmp_path))
    acc = _events(tmp_path / "run")
    diag = [t for t in acc.Tags()["scalars"] + acc.Tags()["histograms"] if t.startswith("diag/")]
    assert bool(diag) == expect_diag
    if expect_diag:  # LSH has no calibration hook
        assert "diag/hamming_overlap" in diag and "diag/calibration_gap" not in diag


def test_plot_script_cli_exits_with_one_sentence(tmp_path):
    from conftest import run_cli

    result = run_cli("scripts/plot.py", [str(tmp_path)], tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path} is not a run directory (no config.yaml):"
        " pass the folders main_v2.py printed"
    )


def test_sdc_calibration_view_from_the_feature_cache_equals_the_live_backbone(tmp_path):
    """With a frozen backbone the heads train from cached features; the calibration view must
    see the same backbone features (HashOutput.features) as the live model would."""
    from models.trainers.base import load_model_state
    from utils.checkpoint import load_checkpoint
    from utils.compose.experiment import build_trainer, train

    base = ["backbone=tiny", "epochs=1", "eval_interval=1", "model.nbit=16", "num_workers=0"]
    train(compose_run([*base, "feature_cache=on"], tmp_path))
    logged = _events(tmp_path / "run").Scalars("diag/calibration_gap")[-1].value
    live_cfg = compose_run([*base, "feature_cache=off"], tmp_path, "live")
    live = build_trainer(live_cfg, tmp_path / "live")
    load_model_state(
        live.model, load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    )
    sims, targets = dg.calibration_pairs(live, live.validation[0])
    assert len(sims) == 2 * 32  # 160 validation queries: two batches of 64, 32 pairs each
    assert logged == pytest.approx(float((sims - targets).abs().mean()), abs=1e-4)


def test_documented_figures_are_small_valid_pngs():
    figures = sorted((REPO / "docs" / "figures").glob("*.png"))
    assert figures, "docs/results.md shows figures from docs/figures/"
    for path in figures:
        assert path.stat().st_size < 200 * 1024, path
        assert_png(path)
        assert path.name in (REPO / "docs" / "results.md").read_text(), path
