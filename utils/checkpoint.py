"""Atomic file writing (every file the framework writes goes through :func:`atomic_write`) and
safe loading of checkpoints, JSON files and run artefacts.

A file is written to a temporary file in the same folder, flushed and fsynced, then renamed over
the target, so a killed process leaves either the old file or the new one, never a half-written
one. A failed write (no space left on the device, a read-only folder) removes the temporary file,
keeps the previous file intact and ends in one :class:`~utils.errors.UserError` sentence. Loading
uses ``torch.load(..., weights_only=True)`` (no pickled code runs) and turns a truncated or foreign
file into one CheckpointError sentence naming the file and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from filelock import FileLock, Timeout

from utils.errors import CheckpointError, UserError

TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>"; see remove_stale_temporaries


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file, which is fsynced and
    renamed over ``path``. On an OSError (e.g. ENOSPC) the temporary file is removed, the old
    ``path`` stays as it was, and a UserError says which file could not be written and why."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"Cannot create the folder {path.parent} ({error.strerror or error}): "
            "check the path and its permissions"
        ) from None
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        reason = error.strerror or str(error) or error.__class__.__name__
        previous = "the previous version is intact" if path.exists() else "nothing was written"
        raise UserError(
            f"Could not write {path} ({reason}); {previous}: free some space or "
            "fix the folder's permissions, then run again (resume=<run dir> "
            "continues a training run)"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_folder(finished: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap the folder ``finished`` (a sibling of ``target`` whose files were written with this
    module's writers) in as ``target``; the previous ``target`` is moved aside, then deleted. A
    process killed between the two renames leaves ``.<target>.old<pid>`` and no ``target``."""
    import shutil

    finished, target = Path(finished), Path(target)
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(finished, target)
    except OSError as error:
        raise UserError(
            f"Could not replace the folder {target} ({error.strerror or error}): "
            "check the disk and the folder's permissions, then run again"
        ) from None
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files that a killed writer left in ``folder`` (never read)."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".*{TMP_MARK}*"):
            stale.unlink(missing_ok=True)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically with torch.save."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist; train first or pass "
            "checkpoint=last / checkpoint=best of a finished run"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle error, unsupported global...
        raise CheckpointError(
            f"Checkpoint {path} is truncated or not a checkpoint of this "
            f"project ({error.__class__.__name__}); restore it from a copy, "
            "or delete the run directory and train again"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"Checkpoint {path} has no model state; it was not written by this project"
        )
    return state


def state_fingerprint(state) -> str:
    """SHA-256 (hex) over the names, shapes, dtypes and values of a state dict's tensors, in the
    mapping's order (the feature-cache key; the search index's model check sorts first)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode())


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indent 1, like the reference's history files)."""
    write_bytes(path, json.dumps(data, indent=1).encode())


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """Write arrays to an uncompressed .npz atomically (no half-written file after a kill)."""
    import numpy as np

    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def write_npy(path: str | os.PathLike, array) -> None:
    """Write one array to a .npy file atomically."""
    import numpy as np

    atomic_write(path, lambda handle: np.save(handle, array))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path`` (``default`` when there is no such file); a damaged file is one
    CheckpointError sentence naming it."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error.__class__.__name__}: {error}); restore "
            "it from a copy, or delete the run directory and train "
            "again"
        ) from None


@contextmanager
def one_trainer(logdir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run folder's lock ``<logdir>/.train.lock`` while a process trains in it: a second
    process (a resume started while the run still trains, a run folder given twice) stops with
    one sentence instead of interleaving its checkpoints with the first's. The operating system
    releases the lock when its holder dies, so a killed run can be resumed at once."""
    if not enabled:
        yield
        return
    lock = FileLock(str(Path(logdir) / ".train.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{logdir} is being trained by another process right now: wait for it to "
            "finish or stop it, then resume=<run dir> continues it"
        ) from None
    try:
        yield
    finally:
        lock.release()
