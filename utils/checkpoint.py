"""Atomic checkpoint and JSON writing, safe loading.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target, so a killed process leaves either the old file or the new one, never a
half-written one. Loading uses ``torch.load(..., weights_only=True)`` (no pickled code runs) and
turns a truncated or foreign file into one CheckpointError sentence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically with torch.save."""
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; train first or pass "
                              "checkpoint=last / checkpoint=best of a finished run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle error, unsupported global...
        raise CheckpointError(f"Checkpoint {path} is truncated or not a checkpoint of this "
                              f"project ({error.__class__.__name__}); delete it and retrain "
                              "or resume from an intact run") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"Checkpoint {path} has no model state; it was not written by "
                              "this project")
    return state


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indent 1, like the reference's history files)."""
    text = json.dumps(data, indent=1).encode()
    _atomic_write(Path(path), lambda handle: handle.write(text))


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """Write arrays to an uncompressed .npz atomically (no half-written file after a kill)."""
    import numpy as np

    _atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())
