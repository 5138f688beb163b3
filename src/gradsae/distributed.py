"""The one torch.distributed helper: a process group when launched by ``torchrun`` (WORLD_SIZE > 1), else a
single process with the same interface, so callers never branch on "am I distributed"; and the collectives the
trainer needs (each a no-op in one process)."""

from __future__ import annotations

import datetime
import os

import torch


class Dist:
    """Rank, world size and a barrier; ``close()`` destroys the group only if this object created it."""

    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self._own = False
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                # torch._dynamo (imported by the first torch.optim optimizer) keeps references to a process group
                # that exists when it is imported, so destroy_process_group would not free it: its gloo threads
                # then outlive the interpreter and abort the process at exit ("terminate called without an
                # active exception"). Imported first, it holds none.
                import torch._dynamo  # noqa: F401

                # nccl for CUDA, gloo otherwise; a long timeout because rank 0 may merge and summarise for minutes
                backend = "nccl" if str(device).startswith(("cuda", "auto")) and torch.cuda.is_available() else "gloo"
                if backend == "nccl":  # one GPU per process: the one torchrun's LOCAL_RANK names
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
                self._own = True

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._own:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._own = False

    def __enter__(self) -> "Dist":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Collectives (one process: no-ops), for data-parallel training
# ---------------------------------------------------------------------------------------------


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor, mean: bool) -> torch.Tensor:
    """A copy of t summed (or averaged) over processes."""
    world = rank_world()[1]
    t = t.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(t)
        if mean:
            t /= world
    return t


def all_min(x: int, device: str = "cpu") -> int:
    """The smallest of every process's ``x`` (e.g. a batch size each rank sized to its own free memory)."""
    if rank_world()[1] == 1:
        return x
    t = torch.tensor([x], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def global_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce(t, mean=True)


def average_grads(params: list[torch.Tensor]) -> None:
    """Average .grad over processes (what DistributedDataParallel does), one flat all-reduce."""
    world = rank_world()[1]
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        g.copy_(flat[off : off + g.numel()].view_as(g))
        off += g.numel()


def broadcast(params: list[torch.Tensor]) -> None:
    """Rank 0's values into every process's tensors."""
    if rank_world()[1] > 1:
        for p in params:
            torch.distributed.broadcast(p.data, 0)
