"""Every config in every group composes; every method instantiates with the tiny backbone."""

import pytest

from conftest import REPO, compose

GROUPS = ["model", "dataset", "backbone", "transforms", "optim", "scheduler"]
CHOICES = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((REPO / "configs" / group).glob("*.yaml"))
]
METHODS = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))


@pytest.mark.parametrize("group,name", CHOICES, ids=[f"{g}={n}" for g, n in CHOICES])
def test_every_config_composes(group, name):
    extra = [] if group == "backbone" else ["backbone=tiny"]
    cfg = compose([f"{group}={name}", *extra])
    assert cfg[group] is not None
    assert cfg.model.name and cfg.model.nbit >= 1


@pytest.mark.parametrize("method", METHODS)
def test_every_method_instantiates_with_the_tiny_backbone(method):
    from utils.compose import build

    cfg = compose([f"model={method}", "backbone=tiny", "dataset=digits"])
    model = build.build_model(cfg)
    criterion = build.build_criterion(cfg)
    assert model.head.nbit == cfg.model.nbit
    assert callable(criterion)
    assert build.trainer_class(cfg) is not None


def test_default_run_is_sdc_on_digits_with_identity_backbone():
    cfg = compose([])
    assert (cfg.model.name, cfg.dataset.name, cfg.model.nbit) == ("sdc", "digits", 64)
    assert cfg.backbone._target_.endswith("Identity") and cfg.backbone.features_size == 64


def test_paper_command_uses_frozen_vgg16_and_paper_values():
    cfg = compose(["model=sdc", "dataset=cifar10", "model.nbit=64"])
    assert cfg.backbone._target_.endswith("VGG16") and cfg.backbone_lr_scale == 0
    assert (cfg.optim.lr, cfg.epochs, cfg.batch_size, cfg.dataset.R) == (1e-4, 100, 64, 1000)
    assert cfg.scheduler.step_size == 80
    assert (cfg.dataset.crop, cfg.dataset.source.protocol) == (224, "standard")


def test_calc_resolver_follows_epochs_and_rejects_code():
    from omegaconf import OmegaConf

    from utils.config import safe_calc
    from utils.errors import ConfigError

    assert compose(["epochs=10"]).scheduler.step_size == 8
    assert safe_calc("1 / 64") == 0.015625
    for bad in ["__import__('os').system('true')", "open('x')", "(1).__class__"]:
        with pytest.raises(ConfigError):
            safe_calc(bad)
    assert OmegaConf.create({"a": "${calc:'2 * 3'}"}).a == 6


def test_misspelt_key_fails_with_hydras_message():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="epocs"):
        compose(["epocs=3"])


EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_and_names_its_source(name):
    text = (REPO / "configs" / "experiment" / f"{name}.yaml").read_text()
    assert "Source:" in text.splitlines()[1], "the second line names the preset's source"
    cfg = compose([f"+experiment={name}"])
    method = name.split("_cifar10")[0].replace("_finetune", "")
    assert cfg.model.name == method
    assert cfg.dataset.name == "cifar10" and cfg.backbone._target_.endswith("VGG16")
    assert cfg.dataset.source.protocol == "standard" and cfg.model.nbit == 64
    assert cfg.backbone_lr_scale == (1 if "finetune" in name else 0)  # wins over the method's 0
    assert cfg.epochs == 100 and cfg.batch_size == 64


def test_presets_cover_the_reference_fine_tuned_settings():
    assert {
        "ugh_finetune_cifar10_vgg16",
        "bihalf_finetune_cifar10_vgg16",
        "cibhash_finetune_cifar10_vgg16",
        "sdc_cifar10_vgg16",
        "sdc_simclr_cifar10_vgg16",
    } <= set(EXPERIMENTS)


def test_debug_fast_preset_trims_every_split_reproducibly(tmp_path):
    from utils.compose import build
    from utils.errors import ConfigError

    cfg = compose(["+debug=fast", f"data_dir={tmp_path}"])
    assert cfg.epochs == 1 and str(cfg.feature_cache).lower() in ("off", "false")
    data, again = build.build_data(cfg), build.build_data(cfg)
    assert data.sizes() == {"train": 512, "query": 200, "database": 512}  # 200 queries fit
    assert list(data.train.index) == list(again.train.index)
    assert len(set(data.train.labels.tolist())) == 10  # a random subset, not the first class
    with pytest.raises(ConfigError, match="subset"):
        build.build_data(compose(["subset=0", f"data_dir={tmp_path}"]))
