"""Each bad input ends with one clear message, a non-zero exit and nothing half-written."""

import json
from pathlib import Path

import pytest

from conftest import REPO, compose_run, run_cli, val_config
from utils.errors import CheckpointError, ConfigError, TrainingError, UserError


def fails(args, tmp_path, script="main_v2.py"):
    result = run_cli(
        script,
        [*args, "progress=false", "num_workers=0"] if script == "main_v2.py" else args,
        tmp_path,
        check=False,
    )
    assert result.returncode != 0
    return result.stderr


def test_unknown_model_and_dataset_names(tmp_path):
    assert "model/nope" in fails(["model=nope"], tmp_path)
    assert "dataset/nope" in fails(["dataset=nope"], tmp_path)


def test_misspelt_key(tmp_path):
    assert "epocs" in fails(["epocs=3"], tmp_path)


def test_missing_data_folder_names_the_ways_out(tmp_path):
    stderr = fails(
        [
            "dataset=cifar10",
            "backbone=tiny",
            f"data_dir={tmp_path / 'nowhere'}",
            "dataset.source.download=false",
        ],
        tmp_path,
    )
    assert stderr.startswith("error: ") and "data_dir" in stderr
    assert "Traceback" not in stderr


def test_offline_pretrained_weights_name_the_alternatives(tmp_path, monkeypatch):
    from utils.compose import build
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


def test_a_loss_setting_the_loss_refuses_is_one_sentence_naming_model_loss(tmp_path):
    # The loss raises a plain ValueError; building it from the config words it for the user.
    result = run_cli(
        "main_v2.py", ["model.loss.rec_type=l3", "progress=false"], tmp_path, check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Bad setting under model.loss: SDC loss: rec_type 'l3' is not one of l1, l2, hinge"
    ]


def test_a_head_setting_the_head_refuses_names_model_head(tmp_path):
    from utils.compose import build

    cfg = compose_run(
        ["model=wch", "backbone=tiny", "dataset=digits", "model.head.tau_w=0"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"^Bad setting under model\.head: WCH: tau_w .* > 0"):
        build.build_model(cfg)


def test_two_view_method_given_one_view_transform(tmp_path):
    stderr = fails(["model=sdc_simclr", "transforms=no_augmentation", "backbone=tiny"], tmp_path)
    assert "view" in stderr


def test_val_on_a_folder_with_no_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    stderr = fails([f"logdir={empty}"], tmp_path, script="val.py")
    assert stderr.startswith("error: No run in")


def test_truncated_checkpoint(tmp_path):
    from utils.compose.experiment import train, validate

    train(compose_run(["epochs=1"], tmp_path))
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        validate(val_config(tmp_path / "run", "checkpoint=best"))
    assert not (tmp_path / "run" / "eval_best.json").exists()


def test_nan_loss_stops_and_names_the_step(tmp_path, monkeypatch):
    import torch

    from models.loss.sdc import SDCLoss
    from utils.compose.experiment import train

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
    from utils.compose.experiment import train

    with pytest.raises(ConfigError, match="select_on"):
        train(compose_run(["select_on=test"], tmp_path))


# ---------------------------------------------------------------------------- broken run files
def small_run(tmp_path):
    from utils.compose.experiment import train

    train(
        compose_run(
            [
                "dataset.source.train=20",
                "batch_size=40",
                "model.nbit=8",
                "epochs=2",
                "eval_interval=1",
            ],
            tmp_path,
        )
    )
    return tmp_path / "run"


def snapshot(run: Path) -> dict:
    """The run's files except logs that only grow (main_v2.log, TensorBoard events) and the
    per-invocation Hydra records under .hydra/resumed_*."""
    return {
        p.relative_to(run): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file()
        and "events.out" not in p.name
        and p.suffix != ".log"
        and "resumed_" not in str(p)
    }


@pytest.mark.parametrize(
    "damaged, words",
    [
        ("checkpoints/last.pt", "checkpoints/last.pt is truncated"),
        ("config.yaml", "config.yaml is not a readable config"),
        ("train_history.json", "train_history.json is damaged"),
    ],
)
def test_resume_of_a_damaged_run_names_the_file_and_changes_nothing(damaged, words, tmp_path):
    from utils.compose.experiment import train

    run = small_run(tmp_path)
    path = run / damaged
    if damaged == "config.yaml":
        path.write_text("model: [unclosed\n  - nbit: 3\n")
    else:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = snapshot(run)
    result = run_cli("main_v2.py", [f"resume={run}", "epochs=3"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(run) == before  # no retrain over the user's run, nothing rewritten
    with pytest.raises(UserError, match=words.split()[0].replace(".", r"\.")):
        train(compose_run([f"resume={run}"], tmp_path, "again"))


def test_val_of_a_run_with_a_damaged_config_is_one_sentence(tmp_path):
    run = small_run(tmp_path)
    (run / "config.yaml").write_bytes(b"\x00\x01 not yaml: [")
    stderr = fails([f"logdir={run}"], tmp_path, script="val.py")
    assert stderr.startswith("error: ") and "config.yaml" in stderr and "Traceback" not in stderr


def test_finished_run_without_last_checkpoint_is_not_retrained(tmp_path):
    from utils.compose.experiment import train

    run = small_run(tmp_path)
    (run / "checkpoints" / "last.pt").unlink()
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="finished run but .*last.pt is missing"):
        train(compose_run([f"resume={run}"], tmp_path, "again"))
    assert snapshot(run) == before


def test_no_space_left_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from utils.compose.experiment import train

    original = torch.save

    def disk_full_at_epoch_2(obj, handle, *args, **kwargs):
        if "last.pt" in str(handle.name) and obj.get("epoch") == 2:
            handle.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_2)
    with pytest.raises(UserError) as error:
        train(
            compose_run(
                [
                    "dataset.source.train=20",
                    "batch_size=40",
                    "model.nbit=8",
                    "epochs=3",
                    "eval_interval=1",
                ],
                tmp_path,
            )
        )
    message = str(error.value)
    assert "last.pt (No space left on device); the previous version is intact" in message
    assert "resume=" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_every_file_writer_goes_through_the_atomic_helper():
    # one helper for every file the framework writes: no other module opens files for writing
    from scripts.import_graph import project_files  # the project's code, no tests, no venv

    offenders = []
    for path in project_files():
        if path.name == "checkpoint.py":
            continue
        text = path.read_text()
        for needle in (
            ".write_text(",
            ".write_bytes(",
            "open(tmp",
            '"wb")',
            "os.replace(",
            "np.save(",
            "np.savez(",
            "torch.save(",
        ):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []


def test_a_required_value_left_unset_is_one_sentence(tmp_path):
    # dataset=features needs its features_size and its file: ??? in the config
    stderr = fails(["dataset=features"], tmp_path)
    assert (
        stderr.startswith("error: dataset.features_size has no value") and "Traceback" not in stderr
    )
    stderr = fails(["dataset=features", "dataset.features_size=12"], tmp_path)
    assert stderr.startswith("error: dataset.source.path has no value")
    assert "dataset.source.path=<value>" in stderr and "Traceback" not in stderr
