"""Seeding. Each epoch reseeds from (seed, epoch), so a resumed run replays the same random
numbers as an uninterrupted one without storing generator states."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (e.g. run seed and epoch)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]) >> 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
