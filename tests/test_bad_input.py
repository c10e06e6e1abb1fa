"""Each bad input ends with one clear message, a non-zero exit and nothing half-written."""

import json
from pathlib import Path

import pytest

from conftest import compose_run, run_cli, val_config
from utils.errors import CheckpointError, ConfigError, TrainingError


def fails(args, tmp_path, script="main_v2.py"):
    result = run_cli(script, [*args, "progress=false", "num_workers=0"] if script == "main_v2.py"
                     else args, tmp_path, check=False)
    assert result.returncode != 0
    return result.stderr


def test_unknown_model_and_dataset_names(tmp_path):
    assert "model/nope" in fails(["model=nope"], tmp_path)
    assert "dataset/nope" in fails(["dataset=nope"], tmp_path)


def test_misspelt_key(tmp_path):
    assert "epocs" in fails(["epocs=3"], tmp_path)


def test_missing_data_folder_names_the_ways_out(tmp_path):
    stderr = fails(["dataset=cifar10", "backbone=tiny", f"data_dir={tmp_path / 'nowhere'}",
                    "dataset.source.download=false"], tmp_path)
    assert stderr.startswith("error: ") and "data_dir" in stderr
    assert "Traceback" not in stderr


def test_offline_pretrained_weights_name_the_alternatives(tmp_path, monkeypatch):
    from utils import build
    from utils.errors import UserError

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    cfg = compose_run(["dataset=cifar10"], tmp_path)
    with pytest.raises(UserError) as error:
        build.build_backbone(cfg)
    message = str(error.value)
    assert "efficientnet_lite0" in message and "pretrained=false" in message


def test_nbit_below_one(tmp_path):
    assert "model.nbit" in fails(["model.nbit=0"], tmp_path)


def test_dataset_smaller_than_one_batch(tmp_path):
    stderr = fails(["batch_size=5000"], tmp_path)
    assert "fewer than one batch" in stderr and "batch_size" in stderr


def test_odd_batch_for_sdc(tmp_path):
    assert "batch_size must be even" in fails(["batch_size=63"], tmp_path)


def test_two_view_method_given_one_view_transform(tmp_path):
    stderr = fails(["model=sdc_simclr", "transforms=no_augmentation", "backbone=tiny"], tmp_path)
    assert "view" in stderr


def test_val_on_a_folder_with_no_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    stderr = fails([f"logdir={empty}"], tmp_path, script="val.py")
    assert stderr.startswith("error: No run in")


def test_truncated_checkpoint(tmp_path):
    from utils.experiment import train, validate

    train(compose_run(["epochs=1"], tmp_path))
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        validate(val_config(tmp_path / "run", "checkpoint=best"))
    assert not (tmp_path / "run" / "eval_best.json").exists()


def test_nan_loss_stops_and_names_the_step(tmp_path, monkeypatch):
    import torch

    from models.loss.sdc import SDCLoss
    from utils.experiment import train

    calls = {"n": 0}
    original = SDCLoss.forward

    def poisoned(self, features, codes):
        calls["n"] += 1
        terms = original(self, features, codes)
        if calls["n"] == 30:
            terms["loss"] = terms["loss"] * torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(SDCLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, step 6"):
        train(compose_run(["epochs=3"], tmp_path))
    # the checkpoint of epoch 1 is intact and loadable; no metrics.json pretends success
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert json.loads((tmp_path / "run" / "train_history.json").read_text())[-1]["epoch"] == 1


def test_bad_select_on(tmp_path):
    from utils.experiment import train

    with pytest.raises(ConfigError, match="select_on"):
        train(compose_run(["select_on=test"], tmp_path))
