"""The options every command that runs a model or an SAE shares, declared once.

``RuntimeOptions`` (device, dtype, threads, progress) is composed into each command's config dataclass, so
``--device auto`` means the same thing everywhere: CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else
the CPU. ``start(cfg, command)`` resolves it once at the start of a command, applies the thread count, prints
the device actually used (once, on rank 0) and returns a ``Runtime`` record whose ``as_config()`` goes into
the results folder's config.json.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass

from .config import check_values, opt
from .errors import GradsaeError

DEVICE_HELP = "auto (CUDA when present; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N or mps"
DTYPES = ("float32", "bfloat16", "float16")
SAE_HELP = "SAE folder/file, bundled name or saelens:<release>/<id>"
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def post_init_chain(cls, self) -> None:
    """Call the next ``__post_init__`` in the MRO after ``cls`` (so option mixins validate cooperatively)."""
    nxt = getattr(super(cls, self), "__post_init__", None)
    if nxt is not None:
        nxt()


def check_finite(
    name: str, value: float, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    """One line for NaN/Inf or a number outside [low, high] (``low_open``: strictly above low)."""
    flag = f"--{name.replace('_', '-')}"
    if not math.isfinite(value):
        raise GradsaeError(f"{flag} {value}: give a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise GradsaeError(f"{flag} {value}: must be {'above' if low_open else 'at least'} {low}")
    if high is not None and value > high:
        raise GradsaeError(f"{flag} {value}: must be at most {high}")


@dataclass(kw_only=True)
class RuntimeOptions:
    """Where and how a command runs: the device, the model's dtype, CPU threads and progress bars."""

    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("float32", "model dtype: float32, bfloat16 or float16", choices=DTYPES)
    threads: int = opt(
        0, "torch CPU threads per process (0: torch's default, divided among the processes of a torchrun launch)"
    )
    progress: bool = opt(True, "show progress bars")
    memory_limit_gb: float = opt(
        0.0,
        "plan for this much device memory: refuse work estimated to need more, and size --batch-size auto to it "
        "(0: 90%% of the memory free once the weights are loaded)",
        low=0,
    )

    def __post_init__(self):
        dev = str(self.device).strip().lower()
        if not _DEVICE_RE.fullmatch(dev):
            raise GradsaeError(f"--device {self.device!r}: use {DEVICE_HELP}")
        self.device = dev
        if self.dtype not in DTYPES:
            raise GradsaeError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.threads < 0:
            raise GradsaeError(f"--threads {self.threads}: give 0 (torch's default) or a positive count")
        check_values(self)  # every field's declared range, and no NaN/Inf, in every command's config
        post_init_chain(RuntimeOptions, self)


@dataclass(frozen=True)
class Runtime:
    """The device, dtype and thread count a command actually runs with (resolved from ``RuntimeOptions``)."""

    device: str
    dtype: str
    threads: int
    device_name: str

    def announce(self, command: str) -> None:
        """Print the device once (rank 0), when the command's real work begins: after every check of its input,
        so that bad input stays one line."""
        key = (self.device, self.dtype, self.threads)  # a command that runs another (demo -> experiment) prints once
        if key in _announced or int(os.environ.get("RANK", "0")) != 0:
            return
        _announced.add(key)
        where = self.device if self.device_name in ("CPU", self.device) else f"{self.device} ({self.device_name})"
        extra = f", {self.threads} CPU threads" if self.device == "cpu" else ""
        print(f"gradsae {command}: running on {where}, {self.dtype}{extra}", file=sys.stderr)

    def as_config(self) -> dict:
        """What results folders record beside the options (the options say 'auto'; this says what it was)."""
        return {
            "device_used": self.device,
            "device_name": self.device_name,
            "dtype_used": self.dtype,
            "threads_used": self.threads,
        }


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda:LOCAL_RANK`` under torchrun, ``cuda`` otherwise when CUDA is present, else ``cpu``;
    explicit ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked against the machine."""
    import torch

    if device in (None, "auto", ""):
        if not torch.cuda.is_available():
            return "cpu"
        local = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local)}" if local is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else "cuda"
    device = str(device).strip().lower()
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if not torch.cuda.is_available():
            raise GradsaeError(f"device {device!r} asked for but CUDA is not available: use --device cpu or auto")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise GradsaeError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                "CUDA device(s), cuda:0 onwards"
            )
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise GradsaeError("device 'mps' asked for but Apple's MPS is not available: use --device cpu or auto")
        return device
    if device == "cpu":
        return device
    raise GradsaeError(f"unknown device {device!r}: use {DEVICE_HELP}")


def default_threads() -> int:
    """torch's default thread count shared among the processes of a torchrun launch on this machine."""
    import torch

    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, torch.get_num_threads() // procs) if procs > 1 else torch.get_num_threads()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU" if device == "cpu" else device


_announced: set[tuple[str, str, int]] = set()


def start(opts: RuntimeOptions, command: str) -> Runtime:
    """Resolve the device and apply the thread count: the start of a command (``Runtime.announce`` prints the
    device once the work begins)."""
    import torch

    from . import memory

    device = resolve_device(opts.device)
    memory.set_limit(opts.memory_limit_gb)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(default_threads())
    return Runtime(device, opts.dtype, torch.get_num_threads(), device_name(device))


@dataclass(kw_only=True)
class ModelOptions(RuntimeOptions):
    """The model a command loads, with the runtime options it runs under."""

    model: str = opt("smollm2", "model: 'smollm2' (bundled), a Hugging Face id or folder, or a .gguf file")
