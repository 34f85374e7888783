"""torch.distributed for runs launched by torchrun: who this process is, and the few collectives flowerid uses.

torchrun starts one process per GPU (or CPU share) on each machine and tells each
its place through environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Without them this module reports a
world of one and every collective is a no-op, so the same code runs alone exactly
as before and torch is imported only when there is a job to join. The process
group uses NCCL when the job runs on CUDA, gloo on CPUs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import FlowerIdError, UsageError

T = TypeVar("T")


class DistributedError(FlowerIdError):
    """Another process of a torchrun job failed or cannot be reached."""


@dataclass(frozen=True)
class World:
    """This process's place in a job: global rank, job size, rank and process count on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device_for(self, device: str) -> str:
        """The device this process computes on: under torchrun a CUDA device is the process's own GPU
        (cuda:LOCAL_RANK); otherwise `device` as it is."""
        return f"cuda:{self.local_rank}" if self.distributed and device.startswith("cuda") else device

    def label(self) -> str:
        return f"rank {self.rank} of {self.size}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a whole number; is this a torchrun job?") from None


def world() -> World:
    """This process's World, from torchrun's environment; a world of one without it."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", 1 if size == 1 else size)
    local_rank = _env_int("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < max(1, local_size):
        raise UsageError(f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={size} do not fit together")
    return World(rank, size, local_rank, local_size)


def shard(n: int, rank: int, size: int) -> range:
    """The indices 0..n-1 that `rank` of `size` handles: every size-th, starting at rank.

    Strided, so each shard samples every category of a sorted list alike, and never
    padded: each index belongs to exactly one rank (DistributedSampler instead repeats
    indices to even the shards out).
    """
    return range(rank, n, size)


def shard_list(items: Sequence[T], w: World) -> list[T]:
    return [items[i] for i in shard(len(items), w.rank, w.size)]


def _dist():
    import torch.distributed as dist

    return dist


def init(device: str = "cpu") -> World:
    """Join the torchrun job's process group (once); a world of one joins nothing."""
    w = world()
    if not w.distributed:
        return w
    dist = _dist()
    if not dist.is_initialized():
        if device.startswith("cuda"):
            import torch

            gpus = torch.cuda.device_count()
            if w.local_size > gpus:  # every process sees the same count, so every one stops here alike
                raise UsageError(
                    f"torchrun started {w.local_size} processes on this machine, which has {gpus} "
                    f"GPU{'s' * (gpus != 1)}: start one per GPU (--nproc_per_node {gpus}), or train on the "
                    "CPUs with --device cpu"
                )
            torch.cuda.set_device(w.local_rank)
        try:
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        except Exception as exc:
            raise DistributedError(
                f"{w.label()} could not join the torchrun job ({_first_line(exc)}); check --rdzv-endpoint "
                "(or MASTER_ADDR/MASTER_PORT) and that the port is open between the machines"
            ) from None
    return w


def shutdown() -> None:
    """Leave the process group, if this process joined one.

    Never imports: a Ctrl-C in the first second can leave torch half-imported, and importing it again
    then fails with a traceback instead of the interrupted message (exit 130).
    """
    dist = sys.modules.get("torch.distributed")
    is_initialized = getattr(dist, "is_initialized", None)
    if is_initialized is None:
        return
    try:
        joined = dist.is_available() and is_initialized()
    except Exception:  # a half-initialised module: no group was joined through it
        return
    if joined:
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lost(exc: BaseException) -> DistributedError:
    w = world()
    return DistributedError(
        f"{w.label()}: lost the other processes of the torchrun job ({_first_line(exc)}); one of them failed, "
        "see its message above. Run the same command again: what was finished is reused"
    )


def _joined() -> bool:
    if not world().distributed:
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait until every process of the job gets here."""
    if _joined():
        try:
            _dist().barrier()
        except RuntimeError as exc:  # DistBackendError and gloo's connection errors
            raise _lost(exc) from None


def gather(obj: T) -> list[T] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); [obj] alone."""
    if not _joined():
        return [obj]
    dist = _dist()
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    try:
        dist.gather_object(obj, out, dst=0)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return out


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not _joined():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return out


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of `values` over the job (float64): counts and loss sums for metrics."""
    if not _joined():
        return [float(v) for v in values]
    import torch

    dist = _dist()
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    try:
        dist.all_reduce(t)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return [float(v) for v in t.cpu()]


def all_max(value: int) -> int:
    """The largest `value` over the job."""
    return int(max(all_gather(int(value))))
