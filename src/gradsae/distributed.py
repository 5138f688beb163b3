"""The one torch.distributed helper: a process group when launched by ``torchrun`` (WORLD_SIZE > 1), else a
single process with the same interface, so callers never branch on "am I distributed"."""

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
