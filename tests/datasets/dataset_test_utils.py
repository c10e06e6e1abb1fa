"""Helpers of the dataset tests: small generated images and the shared CIFAR-10 copy.

Not a conftest.py: other test modules do ``from conftest import ...`` and must get tests/conftest.py.
"""

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def write_image(path: Path, size=(32, 32), mode="RGB", seed=0) -> Path:
    """Write a random image (format from the suffix) and return its path."""
    rng = np.random.RandomState(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def extract_shared_cifar(tmp_path_factory):
    """The shared cifar10-jpg.tar.gz extracted once (the caller picks the fixture scope), removed afterwards.

    Extracted into RAM (/dev/shm) when available: 60,000 small files are created and deleted
    in about a second there, against tens of seconds on a busy disk.
    """
    if not SHARED_CIFAR.is_file():
        pytest.skip(
            f"shared CIFAR-10 copy not found at {SHARED_CIFAR} (a user's clone has no ../shared)"
        )
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30:
        root = Path(tempfile.mkdtemp(prefix="test-cifar10-", dir=shm))
    else:
        root = tmp_path_factory.mktemp("cifar10")
    try:
        if shutil.which("tar"):  # GNU tar is several times faster than Python's tarfile here
            subprocess.run(["tar", "-xzf", str(SHARED_CIFAR), "-C", str(root)], check=True)
        else:
            with tarfile.open(SHARED_CIFAR) as tar:
                tar.extractall(root, filter="data")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
