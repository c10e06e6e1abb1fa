"""Seeding. Each epoch reseeds from (seed, epoch), so a resumed run replays the same random
numbers as an uninterrupted one without storing generator states.

Any Python integer is a valid seed (negative, or above 2**32 / 2**64), and seeds that differ by
a multiple of 2**32 no longer share their random numbers. Parts in [0, 2**32) feed numpy's SeedSequence as they are (the values
of every earlier run are unchanged); a tuple with any other part is hashed first (SHA-256, a
256-bit entropy), because SeedSequence would split a large integer into 32-bit words and so map
``(s + 2**32 * e,)`` and ``(s, e)`` to the same entropy, and a mask to 32 bits would map s and
s + 2**32 to one seed.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

_WORD = 2**32


def _entropy(parts: tuple[int, ...]) -> list[int] | int:
    if all(0 <= p < _WORD for p in parts):
        return list(parts)
    digest = hashlib.sha256(("derive_seed" + repr(parts)).encode()).digest()
    return int.from_bytes(digest, "little")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (e.g. run seed and epoch)."""
    parts = tuple(int(p) for p in parts)
    state = np.random.SeedSequence(_entropy(parts)).generate_state(2, np.uint64)
    return int(state[0]) >> 1


def run_seed(seed: int) -> int:
    """The seed the generators get for a run's ``seed``: itself in [0, 2**32) (every earlier run
    keeps its numbers), else a hash of it, since torch's CPU generator and numpy keep only 32 bits
    of a seed (seed s and s + 2**32 would give the same run)."""
    seed = int(seed)
    return seed if 0 <= seed < _WORD else derive_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); ``seed`` in [0, 2**63) (see run_seed)."""
    random.seed(seed)
    np.random.seed(seed % _WORD)
    torch.manual_seed(seed)
