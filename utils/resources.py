"""Where a run executes: its device, its CPU cores, torch's thread count, its loader workers.

A leaf module (torch, os and Hydra's run-time config only), so that the trainers, the feature
cache and the benchmarks can share it without importing the composing layer (utils/compose/).
"""

from __future__ import annotations

import os

import torch

from utils.errors import ConfigError


def _backend_available(kind: str) -> bool:
    """Whether torch can use devices of type ``kind`` ("cuda", "mps", "xpu", ...) here."""
    if kind == "cpu":
        return True
    if kind == "mps":
        return bool(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)
    return bool(getattr(module, "is_available", lambda: False)())


def resolve_device(name: str | None) -> torch.device:
    """ "auto" -> CUDA when available, else Apple's MPS when available, else CPU; any other name
    is checked: an unknown or unavailable device is one ConfigError sentence."""
    if name in (None, "auto"):
        for kind in ("cuda", "mps"):
            if _backend_available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device={name} is not a device name: use device=auto, cpu, cuda, cuda:<index> or mps"
        ) from None
    if not _backend_available(device.type):
        raise ConfigError(
            f"device={name} but {device.type.upper()} is not available here: use "
            "device=auto or device=cpu"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"device={name} but this machine has {torch.cuda.device_count()} CUDA "
            "device(s): pick another index or use device=auto"
        )
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parallel_jobs() -> int:
    """How many jobs of a Hydra sweep run side by side on this machine: the joblib launcher's
    n_jobs (-1 = one per core), else 1 (sequential sweeps, single runs, SLURM jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return 1
        launcher = HydraConfig.get().launcher
    except Exception:  # no Hydra run around this process
        return 1
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return available_cores() if n_jobs < 0 else max(1, n_jobs)


def sharing_jobs() -> int:
    """How many processes share this machine's cores: the parallel jobs of a joblib sweep times
    the processes a torchrun launch starts on this machine (LOCAL_WORLD_SIZE)."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return parallel_jobs() * max(1, local_processes)


def cores_per_job() -> int:
    """The cores one job (one process) may use: this process's cores divided among the
    ``sharing_jobs``."""
    return max(1, available_cores() // sharing_jobs())


def _explicit_count(name: str, setting, minimum: int) -> int | None:
    """None for ``auto``, else the setting as an integer >= ``minimum`` (one ConfigError
    sentence otherwise)."""
    if setting in (None, "auto"):
        return None
    try:
        count = int(setting)
    except (TypeError, ValueError):
        count = minimum - 1
    if count < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ConfigError(f"{name} must be auto or {kind} integer, got {setting!r}")
    return count


def choose_threads(setting, head_only: bool) -> tuple[int, str]:
    """Intra-op threads for torch (the numba retrieval kernels follow torch's count) and why.

    An explicit ``threads=N`` always wins. ``auto``: one thread when only a hashing head trains
    (cached features, a feature dataset: small matrix products that gain nothing from a second
    thread and lose badly on a busy machine: SDC on digits, 20 epochs, 5.3 s with 1 thread vs
    5.4 s with 2 on a quiet 2-core machine, 14.0 s vs 37.8 s beside two busy processes;
    docs/scaling.md, scripts/bench_threads.py), else every core this job may use
    (``cores_per_job``), and never more than an OMP_NUM_THREADS set by the user.
    """
    explicit = _explicit_count("threads", setting, minimum=1)
    if explicit is not None:
        return explicit, "threads setting"
    if head_only:
        return 1, "auto: a hashing head on precomputed features"
    threads, sharers = cores_per_job(), sharing_jobs()
    why = f"auto: {available_cores()} cores" + (
        f" / {sharers} parallel jobs" if sharers > 1 else ""
    )
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and 0 < int(limit) < threads:
        threads, why = int(limit), "auto, capped by OMP_NUM_THREADS"
    return threads, why


def choose_workers(setting, head_only: bool) -> int:
    """Data-loading worker processes: an explicit number wins; ``auto`` = none for a head on
    precomputed features (an item is a row of a tensor in memory: a worker would only add its
    start-up every epoch and the copies between processes, and take a core from the other jobs
    of a parallel sweep; docs/scaling.md), else the job's cores less the one that trains, at
    most 8 (images to decode and augment)."""
    explicit = _explicit_count("num_workers", setting, minimum=0)
    if explicit is not None:
        return explicit
    if head_only:
        return 0
    return max(0, min(8, cores_per_job() - 1))
