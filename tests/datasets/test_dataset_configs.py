"""Every configs/dataset/*.yaml and configs/transforms/*.yaml loads, composes (in the root
config, as main_v2.py does) and builds."""

import inspect

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from conftest import REPO, compose  # tests/conftest.py

CONFIGS = REPO / "configs"
DATASETS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml"))
TRANSFORMS = sorted(p.stem for p in (CONFIGS / "transforms").glob("*.yaml"))
DATASET_KEYS = {"name", "nclass", "multiclass", "R", "resize", "crop", "features_size", "source"}


def compose_with(dataset, transforms="no_augmentation"):
    return compose(
        [f"dataset={dataset}", f"transforms={transforms}", "data_dir=/nonexistent", "backbone=tiny"]
    )


def test_expected_files_exist():
    assert {
        "digits",
        "cifar10",
        "imagenet100",
        "nuswide",
        "coco",
        "features",
        "imagefolder",
    } <= set(DATASETS)
    assert {"no_augmentation", "cibhash", "simclr", "mocov2"} <= set(TRANSFORMS)


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_config(name):
    assert isinstance(
        OmegaConf.load(CONFIGS / "dataset" / f"{name}.yaml"), DictConfig
    )  # plain YAML
    cfg = compose_with(name).dataset  # with packages and `defaults` includes applied
    assert DATASET_KEYS <= set(cfg.keys())
    assert isinstance(cfg.name, str) and cfg.name
    if name == "imagefolder":
        assert cfg.nclass is None  # found from the class folders when the data is built
    else:
        assert isinstance(cfg.nclass, int) and cfg.nclass > 0
    assert isinstance(cfg.multiclass, bool)
    assert isinstance(cfg.R, int) and (cfg.R > 0 or cfg.R == -1)
    # The source's arguments are exactly parameters of its factory (no misspelt key).
    source = OmegaConf.to_container(cfg.source, resolve=False)
    factory = get_method(source.pop("_target_"))
    inspect.signature(factory).bind(**source)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_yaml_loads(name):
    raw = OmegaConf.load(CONFIGS / "transforms" / f"{name}.yaml")
    assert "_target_" in raw or "defaults" in raw


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_config_builds(name, dataset):
    cfg = compose_with(dataset, name)
    assert "_target_" in cfg.transforms
    transform = instantiate(cfg.transforms)
    assert transform.views in (1, 2) and callable(transform)


def test_simclr_is_cibhash():
    assert (
        compose_with("cifar10", "simclr").transforms
        == compose_with("cifar10", "cibhash").transforms
    )


def test_cifar_root_interpolates_data_dir():
    assert compose_with("cifar10").dataset.source.root == "/nonexistent/cifar10"


def test_digits_source_builds():
    data = instantiate(compose_with("digits").dataset.source)
    assert data.sizes() == {"train": 1597, "query": 200, "database": 1597}
