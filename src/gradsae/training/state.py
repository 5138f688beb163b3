"""Everything that changes while training, in one checkpoint: ``TrainState`` (+ the SAEs and optimisers).

One safetensors file, replaced atomically (temp file, fsync, rename): tensors (weights, Adam moments,
dead-latent counters, the corpus reader's pending tokens) as tensors, everything else as JSON in its
metadata. No pickle. A run killed at any moment restarts from the last checkpoint; because every random
choice of the trainer is a seeded function of (seed, fill index, rank), there is no RNG state to carry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import schema
from ..errors import GradsaeError
from ..io import write_safetensors

STATE_VERSION = 1

# the JSON part of a checkpoint (TrainState's scalars)
STATE_OPTIONAL = {"e2e_coef": [schema.NUM]}  # keys a later gradsae added: absent from older checkpoints
STATE_SCHEMA = schema.Required(
    {
        "step": schema.INT,
        "tokens": schema.INT,
        "sae_tokens": schema.INT,
        "norm": schema.MapOf(schema.NUM, nullable=False),
        "grad_rms": [schema.NUM],
        "grad_ema_n": [schema.INT],
        "reader": {"epoch": schema.INT, "docs": schema.INT},
        "config": dict,
    }
)


@dataclass
class DeadLatents:
    """Per-latent firing history of one SAE, for the two dead-latent rules.

    * ours (Gao et al.): a latent is dead when it has not fired in the last ``window`` training tokens;
    * the g-SAE paper's: dead when it has not fired in ``n`` (= 5) consecutive batches.
    """

    last_fired: torch.Tensor
    """[C] long: SAE tokens seen when the latent last fired (0: never)."""
    quiet_batches: torch.Tensor
    """[C] long: consecutive batches without firing, up to now."""

    @classmethod
    def fresh(cls, d_sae: int) -> "DeadLatents":
        return cls(torch.zeros(d_sae, dtype=torch.long), torch.zeros(d_sae, dtype=torch.long))

    def update(self, fired: torch.Tensor, tokens_after: int) -> None:
        """fired [C]: firing counts of one (global) batch; ``tokens_after``: SAE tokens seen after it."""
        on = fired.cpu() > 0
        self.last_fired[on] = tokens_after
        self.quiet_batches = torch.where(on, torch.zeros_like(self.quiet_batches), self.quiet_batches + 1)

    def dead_by_tokens(self, tokens_now: int, window: int) -> torch.Tensor:
        """[C] bool; nothing counts as dead before ``window`` tokens have been seen."""
        if tokens_now < window:
            return torch.zeros_like(self.last_fired, dtype=torch.bool)
        return (tokens_now - self.last_fired) >= window

    def dead_by_batches(self, n: int = 5) -> torch.Tensor:
        """[C] bool: no firing in the last ``n`` consecutive batches (g-SAE paper, n = 5)."""
        return self.quiet_batches >= n


@dataclass
class TrainState:
    """The position and running statistics of a run (weights and Adam state live in the modules)."""

    step: int = 0
    """Steps done (always at a shuffle-fill boundary when saved)."""
    tokens: int = 0
    """Model tokens (rows × context length, all processes) consumed."""
    sae_tokens: int = 0
    """Tokens each SAE has trained on (all processes): the clock of the dead-latent window."""
    norm: dict[str, float] = field(default_factory=dict)
    """Per layer (as a string key) the scalar s with E‖s·x‖² = D."""
    grad_rms: list[float] = field(default_factory=list)
    """Per SAE: EMA of the mean square of W_dec ∇ₓL (g-SAE β scale); 0 until initialised."""
    grad_ema_n: list[int] = field(default_factory=list)
    reader: dict = field(default_factory=dict)
    """Corpus position (epoch, documents consumed); its pending tokens are the tensor ``reader_pending``."""
    reader_pending: torch.Tensor | None = None
    dead: list[DeadLatents] = field(default_factory=list)
    e2e_coef: list[float] = field(default_factory=list)
    """Per SAE: the reconstruction weight ``--e2e-balance`` fixed at the first step (empty until then)."""
    config: dict = field(default_factory=dict)
    """The fingerprint of the run's config (a resume with another config is refused)."""

    # ---- checkpoint file ------------------------------------------------------------------
    def save(self, path: str | Path, saes: list, opts: list) -> Path:
        """Write the checkpoint tensor by tensor (``io.write_safetensors``): the weights and Adam moments are not
        copied to the host all at once, whatever the device."""
        tensors: dict[str, torch.Tensor] = {}
        for j, (sae, opt) in enumerate(zip(saes, opts)):
            for name, t in sae.state_dict().items():
                tensors[f"sae.{j}.{name}"] = t.detach()
            for pid, st in opt.state_dict()["state"].items():
                for key, t in st.items():
                    tensors[f"opt.{j}.{pid}.{key}"] = torch.as_tensor(t).detach()
            tensors[f"dead.{j}.last_fired"] = self.dead[j].last_fired
            tensors[f"dead.{j}.quiet_batches"] = self.dead[j].quiet_batches
        if self.reader_pending is not None:
            tensors["reader.pending"] = self.reader_pending
        scalars = {k: v for k, v in asdict(self).items() if k not in ("dead", "reader_pending")}
        meta = {"gradsae_train_state": json.dumps(scalars), "version": str(STATE_VERSION)}
        return write_safetensors(path, tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, saes: list, opts: list) -> "TrainState":
        """Read a checkpoint into ``saes`` / ``opts`` (built with the run's config) and return the state."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise GradsaeError(f"cannot read the checkpoint {path} ({e}): delete it to start over") from None
        if meta.get("version") != str(STATE_VERSION) or "gradsae_train_state" not in meta:
            raise GradsaeError(f"{path} is not a checkpoint of this gradsae version: delete it or use another --out")
        try:
            scalars = json.loads(meta["gradsae_train_state"])
        except (json.JSONDecodeError, RecursionError):
            raise GradsaeError(f"{path} has damaged metadata: delete it to start over") from None
        schema.check(scalars, STATE_SCHEMA, str(path))
        schema.check(scalars, STATE_OPTIONAL, str(path))
        n = len(saes)
        if len(scalars["grad_rms"]) != n or len(scalars["grad_ema_n"]) != n or f"dead.{n - 1}.last_fired" not in t:
            raise GradsaeError(f"{path} holds a different grid of SAEs: use another --out or delete that folder")
        try:
            cls._load_modules(t, saes, opts)
        except (RuntimeError, ValueError, KeyError) as e:  # shapes or keys that are not this grid's
            raise GradsaeError(
                f"{path} does not fit this run's SAEs ({type(e).__name__}): use another --out or delete that folder"
            ) from None
        dead = [DeadLatents(t[f"dead.{j}.last_fired"], t[f"dead.{j}.quiet_batches"]) for j in range(n)]
        fields = {**STATE_SCHEMA.fields, **STATE_OPTIONAL}
        known = {k: v for k, v in scalars.items() if k in fields}  # not keys a later gradsae added
        return cls(**known, dead=dead, reader_pending=t.get("reader.pending"))

    @staticmethod
    def _load_modules(t: dict, saes: list, opts: list) -> None:
        """The SAEs' weights and the optimisers' moments from the checkpoint's tensors ``t``."""
        with torch.no_grad():
            for j, (sae, opt) in enumerate(zip(saes, opts)):
                dev = sae.W_dec.device
                sae.load_state_dict(
                    {k[len(f"sae.{j}.") :]: v.to(dev) for k, v in t.items() if k.startswith(f"sae.{j}.")}
                )
                sd = opt.state_dict()
                state: dict[int, dict] = {}
                for k, v in t.items():
                    if k.startswith(f"opt.{j}."):
                        _, _, pid, key = k.split(".", 3)
                        state.setdefault(int(pid), {})[key] = v
                sd["state"] = state
                opt.load_state_dict(sd)
