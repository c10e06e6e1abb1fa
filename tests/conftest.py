"""Shared test fixtures: config composition, the repo root, the shared data folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_DATA_DIR = Path(tempfile.gettempdir()) / "hashing-tests-data"  # feature caches of test runs
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower end-to-end tests (still CPU-only)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without a GPU")
    config.addinivalue_line("markers", "data: needs ../shared/data; skipped when it is absent")


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose a config exactly as main_v2.py would, without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import utils.config  # noqa: F401  (resolvers)

    overrides = list(overrides or [])
    if config_name == "train" and not any(o.startswith("data_dir=") for o in overrides):
        # data_dir defaults to ${hydra:runtime.cwd}/data, unset outside a Hydra run
        overrides.append(f"data_dir={TEST_DATA_DIR}")
    if config_name == "train" and not any(o.startswith("feature_cache=") for o in overrides):
        # method tests drive the live backbone; the cache has its own tests that switch it on
        overrides.append("feature_cache=off")
    if config_name == "train" and not any(o.startswith("feature_extractor=") for o in overrides):
        # the cache tests count calls of the eager backbone and compare with it exactly; the
        # engines have their own tests (tests/utils/test_feature_extractor.py)
        overrides.append("feature_extractor=torch")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def run_cli(
    script: str, args: list[str], cwd: Path, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from ``cwd``; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    result = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture
def repo() -> Path:
    return REPO


def compose_run(overrides: list[str], tmp_path: Path, name: str = "run"):
    """A composed training config ready for utils.compose.experiment.train, writing under tmp_path."""
    from omegaconf import open_dict

    cfg = compose(
        [
            f"logdir={tmp_path / name}",
            f"data_dir={tmp_path / 'data'}",
            "progress=false",
            "num_workers=0",
            *overrides,
        ]
    )
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def val_config(logdir: Path, *overrides: str):
    """A composed val.py config for ``logdir``."""
    from omegaconf import open_dict

    cfg = compose([f"logdir={logdir}", "progress=false", *overrides], config_name="val")
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
