"""The engine's bookkeeping around the losses and the metrics: model selection, resume, the
validation split, batch-size limits, seeds, devices, progress output, zero_relevant, resume
overrides. Each test is built so that the wrong behaviour it names makes it fail."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import compose_run, run_cli, val_config
from utils.errors import ConfigError

SMALL = ["dataset.source.train=20", "batch_size=40", "model.nbit=16", "eval_interval=1"]


def scripted(monkeypatch, val_scores=None, query_scores=None):
    """Replace the evaluation scores by fixed sequences, indexed by the number of evaluations
    already in test_history (restored on resume, so a resumed run continues the sequence)."""
    from models.trainers.base import Trainer

    if val_scores is not None:
        monkeypatch.setattr(
            Trainer, "evaluate_validation", lambda self: val_scores[len(self.recorder.test_history)]
        )
    if query_scores is not None:
        monkeypatch.setattr(
            Trainer,
            "evaluate",
            lambda self: {"mAP@100": query_scores[len(self.recorder.test_history)]},
        )


def interrupt_at_epoch(monkeypatch, epoch_index: int):
    from models.trainers.base import Trainer

    original = Trainer.train_one_epoch

    def interrupted(self, epoch):
        if epoch == epoch_index:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted)


def best_epoch(run) -> int:
    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"]


# ---------------------------------------------------------------------------- model selection
@pytest.mark.parametrize("select_on, expected", [("val", 1), ("query", 2), ("last", 3)])
def test_best_checkpoint_follows_the_selection_score(select_on, expected, tmp_path, monkeypatch):
    # validation prefers epoch 1, the queries epoch 2: each rule must pick its own
    scripted(monkeypatch, val_scores=[0.8, 0.2, 0.3], query_scores=[0.1, 0.9, 0.5])
    from utils.compose.experiment import train

    metrics = train(compose_run([*SMALL, "epochs=3", f"select_on={select_on}"], tmp_path))
    assert metrics["best"]["epoch"] == expected
    assert metrics["best"]["selected_on"] == select_on
    assert best_epoch(tmp_path / "run") == expected


def test_select_on_query_says_it_is_optimistic(tmp_path, monkeypatch, caplog):
    scripted(monkeypatch, val_scores=[0.8], query_scores=[0.1])
    from utils.compose.experiment import train

    with caplog.at_level(logging.WARNING):
        train(compose_run([*SMALL, "epochs=1", "select_on=query"], tmp_path))
    assert "optimistic" in caplog.text


def test_resume_keeps_the_best_metric_of_a_contested_run(tmp_path, monkeypatch):
    # best at epoch 2 (0.9); the epochs after the interruption score 0.7 and 0.8: a resume that
    # forgot the best metric would move best.pt to epoch 3, then 4
    scripted(monkeypatch, val_scores=[0.5, 0.9, 0.7, 0.8])
    from utils.compose.experiment import train

    overrides = [*SMALL, "epochs=4"]
    full = train(compose_run(overrides, tmp_path, "full"))
    assert full["best"]["epoch"] == 2
    interrupt_at_epoch(monkeypatch, 2)  # after two evaluations
    with pytest.raises(KeyboardInterrupt):
        train(compose_run(overrides, tmp_path, "broken"))
    monkeypatch.undo()
    scripted(monkeypatch, val_scores=[0.5, 0.9, 0.7, 0.8])
    resumed = train(compose_run([f"resume={tmp_path / 'broken'}"], tmp_path, "ignored"))
    assert resumed["best"] == full["best"]
    assert best_epoch(tmp_path / "broken") == 2


def test_resume_drops_history_rows_written_after_the_checkpoint(tmp_path, monkeypatch):
    # killed after the histories of epoch 3 were written but before last.pt of epoch 3
    import utils.recording as recording
    from utils.compose.experiment import train

    overrides = [*SMALL, "epochs=4"]
    train(compose_run(overrides, tmp_path, "full"))
    original = recording.save_checkpoint

    def dies_on_last_of_epoch_3(state, path):
        if str(path).endswith("last.pt") and state["epoch"] == 3:
            raise KeyboardInterrupt
        return original(state, path)

    monkeypatch.setattr(recording, "save_checkpoint", dies_on_last_of_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(compose_run(overrides, tmp_path, "broken"))
    monkeypatch.undo()
    broken = tmp_path / "broken"
    assert [r["epoch"] for r in json.loads((broken / "train_history.json").read_text())] == [
        1,
        2,
        3,
    ]
    train(compose_run([f"resume={broken}"], tmp_path, "ignored"))
    for name in ("train_history.json", "test_history.json"):
        rows = json.loads((broken / name).read_text())
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4], name
        assert rows == json.loads((tmp_path / "full" / name).read_text()), name


# ---------------------------------------------------------------------------- validation split
@pytest.mark.parametrize("val_size", [0.1, 37])
def test_validation_queries_are_not_in_their_database(val_size, tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose_run(["dataset.source.train=20", f"val_size={val_size}"], tmp_path)
    trainer = build_trainer(cfg, tmp_path / "run")
    queries, database = trainer.validation
    pool_label = dict(zip(trainer.data.train.index, trainer.data.train.labels))  # digits pool
    assert len(queries) == (20 if val_size == 0.1 else 37)
    assert not set(queries.index) & set(database.index)
    assert sorted([*queries.index, *database.index]) == sorted(pool_label)
    for split in (queries, database):
        assert [pool_label[i] for i in split.index] == list(split.labels)


# ---------------------------------------------------------------------------- batch size limits
def test_a_batch_as_large_as_the_training_split_works_and_one_more_item_does_not(tmp_path):
    from utils.compose.experiment import build_trainer

    # dataset.source.train=20 -> 200 training images
    trainer = build_trainer(
        compose_run(["dataset.source.train=20", "batch_size=200"], tmp_path), tmp_path / "run"
    )
    assert len(trainer.data.train) == 200
    with pytest.raises(ConfigError, match="fewer than one batch"):
        build_trainer(
            compose_run(["dataset.source.train=20", "batch_size=202"], tmp_path), tmp_path / "run2"
        )


def test_batch_of_201_for_200_items_is_refused(tmp_path):
    from utils.compose.experiment import build_trainer

    with pytest.raises(ConfigError, match="200 items, fewer than one batch"):
        build_trainer(
            compose_run(["dataset.source.train=20", "batch_size=201", "model=bihalf"], tmp_path),
            tmp_path / "run",
        )


# ---------------------------------------------------------------------------- seeds
def test_derive_seed_keeps_its_values_below_2_32_and_separates_larger_seeds():
    from utils.seed import derive_seed

    # values of the first implementation: every earlier run keeps its random numbers
    assert derive_seed(42, 3) == 9070686161206165030
    assert derive_seed(42, 3, 1) == 5430396998017525854
    assert derive_seed(2**32 - 1, 5) == 7339547851177579782
    for epoch in range(3):
        assert derive_seed(1, epoch) != derive_seed(1 + 2**32, epoch)
    assert derive_seed(-1, 0) != derive_seed(2**32 - 1, 0)
    assert derive_seed(5 + 2**32 * 7) != derive_seed(5, 7)  # no 32-bit word splitting
    assert all(0 <= derive_seed(s, 1) < 2**63 for s in (-5, 0, 2**70))


def test_seeds_2_32_apart_give_different_runs(tmp_path):
    from utils.compose.experiment import build_trainer

    heads, orders = [], []
    for seed in (1, 1 + 2**32):
        trainer = build_trainer(
            compose_run(["dataset.source.train=20", f"seed={seed}"], tmp_path),
            tmp_path / f"run{seed}",
        )
        heads.append(trainer.model.head.state_dict())
        orders.append(next(iter(trainer.train_loader(0)))[2])  # item indices of batch 1
    assert not all(torch.equal(a, b) for a, b in zip(heads[0].values(), heads[1].values()))
    assert not torch.equal(orders[0], orders[1])


# ---------------------------------------------------------------------------- devices
def test_unavailable_or_unknown_devices_are_one_sentence(monkeypatch):
    from utils.resources import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, words in [
        ("mps", "MPS is not available"),
        ("cuda", "CUDA is not available"),
        ("cuda:1", "CUDA is not available"),
        ("gpu0", "not a device name"),
    ]:
        with pytest.raises(ConfigError, match=words):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_then_mps(monkeypatch):
    from utils.resources import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_device_mps_on_the_command_line_is_one_line(tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = run_cli(
        "main_v2.py", ["device=mps", "epochs=1", f"data_dir={tmp_path}"], tmp_path, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: device=mps but MPS is not available here: use device=auto or device=cpu"
    )


# ---------------------------------------------------------------------------- progress output
def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path):
    args = [
        "epochs=3",
        "eval_interval=0",
        "dataset.source.train=20",
        "batch_size=20",
        f"data_dir={tmp_path / 'data'}",
    ]
    auto = run_cli("main_v2.py", args, tmp_path)  # stderr is a pipe, not a terminal
    assert "it/s" not in auto.stderr and "%|" not in auto.stderr  # no tqdm bar at all
    output = (auto.stdout + auto.stderr).splitlines()
    lines = [line for line in output if "epoch " in line and "/3:" in line]
    assert [line.split("epoch ")[1][:4] for line in lines] == ["1/3:", "2/3:", "3/3:"]
    assert all("loss " in line for line in lines)
    forced = run_cli("main_v2.py", [*args, "progress=true"], tmp_path)
    assert "it/s" in forced.stderr  # the bars are really what auto removed


def test_progress_setting_values(monkeypatch):
    from utils.config import progress_bars

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress_bars("auto") is True
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress_bars("auto") is False
    assert progress_bars(True) and progress_bars("true") and not progress_bars(False)


# ---------------------------------------------------------------------------- zero_relevant
def test_zero_relevant_is_a_setting_of_training_and_of_val(tmp_path):
    from utils.compose.experiment import train, validate

    metrics = train(
        compose_run(
            ["dataset.source.train=20", "epochs=1", "model.nbit=8", "dataset.R=1", "ks=[1]"],
            tmp_path,
        )
    )
    counted = metrics["last"]["mAP@1"]
    hit_rate = metrics["last"]["HitRate@1"]
    assert counted == pytest.approx(hit_rate) and 0 < counted < 1
    skipped = validate(val_config(tmp_path / "run", "checkpoint=last", "zero_relevant=skip"))
    # with R = 1, AP@1 is 1 for a query whose first item is relevant and 0 otherwise: skipping
    # the queries with none leaves only perfect ones
    assert skipped["mAP@1"] == 1.0
    again = validate(val_config(tmp_path / "run", "checkpoint=last"))
    assert again["mAP@1"] == counted
    with pytest.raises(ConfigError, match="zero_relevant"):
        train(
            compose_run(
                ["dataset.source.train=20", "epochs=1", "zero_relevant=drop"], tmp_path, "bad"
            )
        )


# ---------------------------------------------------------------------------- resume overrides
def test_resume_applies_and_records_the_safe_overrides(tmp_path):
    from utils.compose.experiment import train
    from utils.config import load_run_config

    train(compose_run([*SMALL, "epochs=2"], tmp_path))
    run = tmp_path / "run"
    overrides = [f"resume={run}", "epochs=5", "eval_interval=4"]
    resumed = train(compose_run(overrides, tmp_path, "x"), overrides=overrides)
    assert resumed["last"]["epoch"] == 5
    history = json.loads((run / "test_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 4, 5]  # every epoch with the old interval
    saved = load_run_config(run)
    assert saved.epochs == 5 and saved.eval_interval == 4 and "resume" not in saved


def test_resume_refuses_overrides_it_would_ignore(tmp_path):
    from utils.compose.experiment import train

    train(compose_run([*SMALL, "epochs=1"], tmp_path))
    run = tmp_path / "run"
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"ignored: model\.nbit, optim\.lr; only epochs"):
        train(
            compose_run([f"resume={run}"], tmp_path, "x"),
            overrides=[f"resume={run}", "model.nbit=32", "optim.lr=0.1", "epochs=5"],
        )
    with pytest.raises(ConfigError, match="epochs >= 1"):
        train(
            compose_run([f"resume={run}", "epochs=0"], tmp_path, "x"),
            overrides=[f"resume={run}", "epochs=0"],
        )
    assert (run / "config.yaml").read_text() == before


def test_resume_on_the_command_line_refuses_in_one_line(tmp_path):
    from utils.compose.experiment import train

    train(compose_run([*SMALL, "epochs=1"], tmp_path))
    result = run_cli("main_v2.py", [f"resume={tmp_path / 'run'}", "seed=3"], tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: resume=")
    assert "seed" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- val.py edges
def test_protocol_on_a_dataset_without_protocols_is_one_sentence(tmp_path):
    from utils.compose.experiment import train, validate

    train(compose_run(["dataset.source.train=20", "epochs=1", "model.nbit=8"], tmp_path))
    with pytest.raises(ConfigError, match="dataset digits has no named split protocols"):
        validate(val_config(tmp_path / "run", "checkpoint=last", "protocol=official"))


def test_data_dir_move_respects_path_boundaries():
    from utils.compose.experiment import _replace_prefix

    source = {
        "root": "/data/cifar10",
        "other": "/data2/cifar10",
        "same": "/data",
        "list": ["/data/a.txt", "/datasets/b.txt"],
        "n": 3,
    }
    moved = _replace_prefix(source, "/data", "/mnt/new")
    assert moved == {
        "root": "/mnt/new/cifar10",
        "other": "/data2/cifar10",
        "same": "/mnt/new",
        "list": ["/mnt/new/a.txt", "/datasets/b.txt"],
        "n": 3,
    }
    assert _replace_prefix(source, "/data/", "/mnt/new/")["root"] == "/mnt/new/cifar10"


# ---------------------------------------------------------------------------- two-view on features
def test_two_view_method_on_a_feature_dataset_is_refused(tmp_path):
    from utils.compose.experiment import build_trainer

    rng = np.random.RandomState(0)
    path = tmp_path / "feats.npz"
    np.savez(
        path,
        **{
            f"{s}_features": rng.randn(n, 12).astype(np.float32)
            for s, n in (("train", 64), ("query", 10), ("database", 64))
        },
        **{
            f"{s}_labels": rng.randint(0, 3, n)
            for s, n in (("train", 64), ("query", 10), ("database", 64))
        },
    )
    common = [
        "dataset=features",
        f"dataset.source.path={path}",
        "dataset.features_size=12",
        "dataset.nclass=3",
        "batch_size=16",
        "dataset.R=10",
    ]
    build_trainer(compose_run([*common, "model=sdc"], tmp_path), tmp_path / "ok")
    for method in ("cibhash", "sdc_simclr"):
        with pytest.raises(ConfigError, match="views would be identical"):
            build_trainer(compose_run([*common, f"model={method}"], tmp_path), tmp_path / method)


# ---------------------------------------------------------------------------- precision
def test_precision_setting():
    from models.trainers.base import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "32"
    assert resolve_precision("bf16-mixed", cpu) == "bf16" and resolve_precision(32, cpu) == "32"
    with pytest.raises(ConfigError, match="precision must be"):
        resolve_precision("8", cpu)


def test_auto_precision_is_bf16_on_a_gpu_that_has_it(monkeypatch):
    from models.trainers.base import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "32"


@pytest.mark.parametrize(
    "precision, dtype",
    [("32", torch.float32), ("bf16", torch.bfloat16), ("16-mixed", torch.float16)],
)
def test_training_step_runs_under_the_precision(precision, dtype, tmp_path, monkeypatch):
    from models.loss.sdc import SDCLoss
    from utils.compose.experiment import train

    seen = []
    original = SDCLoss.forward
    monkeypatch.setattr(
        SDCLoss,
        "forward",
        lambda self, features, codes: seen.append(codes.dtype) or original(self, features, codes),
    )
    train(compose_run([*SMALL, "epochs=1", f"precision={precision}"], tmp_path))
    assert seen and set(seen) == {dtype}
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    # 16-mixed keeps its loss scale for resume; the others have a disabled scaler
    assert bool(state["grad_scaler"]) == (precision == "16-mixed")


def test_channels_last_inputs_when_the_backbone_is_a_cnn(tmp_path):
    from utils.compose.experiment import build_trainer

    trainer = build_trainer(
        compose_run(["dataset.source.train=20", "backbone=tiny"], tmp_path), tmp_path / "run"
    )
    assert trainer.channels_last is False  # CPU: no conversion
    trainer.channels_last = True  # what CUDA with a Conv2d backbone sets
    images = trainer.to_device([torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)])
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in images)
    assert trainer.to_device(torch.rand(2, 5)).shape == (2, 5)  # features pass unchanged


def test_a_run_being_trained_is_not_resumed_by_a_second_process(tmp_path):
    # the first process is stood in for by a lock held here, as the running trainer holds it
    from filelock import FileLock

    from utils.compose.experiment import train
    from utils.errors import UserError

    train(compose_run([*SMALL, "epochs=1"], tmp_path, "run"))
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with FileLock(str(tmp_path / "run" / ".train.lock")):
        with pytest.raises(UserError, match="being trained by another process right now"):
            train(compose_run([f"resume={tmp_path / 'run'}", "epochs=2"], tmp_path, "x"))
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before
    again = [f"resume={tmp_path / 'run'}", "epochs=2"]
    resumed = train(compose_run(again, tmp_path, "x"), overrides=again)
    assert resumed["last"]["epoch"] == 2  # the lock is free again once its holder lets go
