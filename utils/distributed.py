"""One run on several processes: ``torchrun --nproc_per_node=N main_v2.py <overrides>``.

torchrun starts N copies of main_v2.py with RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address in their environment; :func:`init` joins them into one process group (NCCL for CUDA
tensors and gloo for CPU tensors on a GPU machine, gloo alone on a CPU machine, so the tests
run it on two CPU processes). Without torchrun (WORLD_SIZE unset or 1) every function here is
the single-process identity and nothing is initialised.

What the engine does with it (models/trainers/base.py):

- ``batch_size`` stays the global batch: each rank trains on its slice of every global batch of
  the single-process order (:class:`RankSlices`), so the batches do not depend on the number of
  processes.
- The losses see the global batch: the tensors a loss reads are gathered from every rank with
  :func:`all_gather_rows`, whose backward sums the gradients of the rows over the ranks; each
  rank's gradients are then averaged over the ranks (:func:`average_gradients`, what
  DistributedDataParallel does after backward). Every rank computes the same loss on the same
  global batch, so its gradient equals the single-process one up to the order of float sums.
- Evaluation encodes a contiguous shard of each split per rank and gathers the codes
  (:func:`gather_shards`), in split order, for one retrieval report.
- Only rank 0 writes files and logs (:func:`is_main`).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

#: How long a rank waits for the others (extraction of a large feature cache on rank 0 of a
#: merge, a slow file system) before the collective fails instead of hanging for ever.
TIMEOUT = datetime.timedelta(minutes=60)


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group of a torchrun launch (no-op otherwise or when already joined)."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def prepare_launch(argv: list[str]) -> list[str]:
    """Before Hydra composes main_v2.py's config under torchrun: join the process group, give
    every rank rank 0's launch time (so all compose one run folder, configs/train.yaml's
    ``run_time``), and keep the ranks other than 0 from writing Hydra's files and logs.
    Returns the command-line arguments to compose with; unchanged without torchrun."""
    if not launched():
        return argv
    if any(arg in ("-m", "--multirun") for arg in argv):
        raise SystemExit(
            "error: torchrun trains one run on several processes; a sweep (-m) "
            "runs its jobs through a launcher instead: drop torchrun or -m"
        )
    init()
    atexit.register(dist.destroy_process_group)
    from utils.config import RUN_TIME_ENV

    os.environ[RUN_TIME_ENV] = broadcast_object(datetime.datetime.now().isoformat())
    if rank() != 0:
        argv = [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return argv


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0, the one process that writes files and logs (always true without torchrun)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _AllGatherRows(torch.autograd.Function):
    """Concatenation of every rank's ``(n, ...)`` rows in rank order; backward: the gradient of
    the whole ``(world * n, ...)`` result, summed over the ranks, cut to this rank's rows."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.n, ctx.rank = rows.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every rank's rows
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_rows(rows: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """The global batch of a per-rank tensor, with gradients (identity without torchrun).

    rows: ``(blocks * n, ...)``, this rank's ``n`` items stacked ``blocks`` times (e.g. the two
    views ``[view 1; view 2]`` of a two-view method). Each block is gathered separately, so the
    result ``(blocks * world * n, ...)`` is ``[block 1 of rank 0, rank 1, ...; block 2 of rank 0,
    ...]``: the row order of the single-process run whose batch is the ranks' batches in rank
    order. Every rank needs the same ``n``.
    """
    if not active():
        return rows
    if blocks == 1:
        return _AllGatherRows.apply(rows)
    return torch.cat([_AllGatherRows.apply(block) for block in rows.chunk(blocks)])


def own_rows(whole: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a result computed on the rows of :func:`all_gather_rows` (one block):
    ``(world * n, ...)`` -> ``(n, ...)``, rows ``[rank * n, (rank + 1) * n)``."""
    n = whole.shape[0] // world_size()
    return whole[rank() * n : (rank() + 1) * n]


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over the ranks (in one flat buffer), as DistributedDataParallel does
    after backward; a parameter without a gradient counts as zero."""
    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset : offset + size].view_as(p).clone()
        offset += size


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the start of training, and BatchNorm
    statistics after each step, as DistributedDataParallel's broadcast_buffers)."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def shard_bounds(n: int, which: int | None = None) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of ``n`` items that rank ``which`` (default: this rank)
    holds; the first ``n % world`` ranks get one item more."""
    which = rank() if which is None else which
    base, extra = divmod(n, world_size())
    start = which * base + min(which, extra)
    return start, start + base + (1 if which < extra else 0)


def gather_shards(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The ``(n, ...)`` whole of the per-rank shards ``rows`` (rank r holds
    ``shard_bounds(n)`` of rank r), in item order, on every rank (no gradients)."""
    if not active():
        return rows
    sizes = [shard_bounds(n, r) for r in range(world_size())]
    longest = max(stop - start for start, stop in sizes)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[: stop - start] for part, (start, stop) in zip(parts, sizes)])


class RankSlices(torch.utils.data.Sampler[list[int]]):
    """This rank's part of every global batch of ``batches`` (a batch sampler of the global
    batch): rows ``[rank * b, (rank + 1) * b)`` of each, ``b = global batch / world``. With
    one process it yields the global batches unchanged."""

    def __init__(self, batches: torch.utils.data.BatchSampler):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        world, me = world_size(), rank()
        for batch in self.batches:
            size = len(batch) // world
            yield batch[me * size : (me + 1) * size]

    def __len__(self) -> int:
        return len(self.batches)
