"""The sparse autoencoder: one ``SAE`` class for every architecture gradsae reads or trains.

Shapes: ``x [..., D]`` model activations, ``h [..., C]`` latent activations,
``W_enc [D, C]``, ``b_enc [C]``, ``W_dec [C, D]``, ``b_dec [D]`` (SAELens names and orientation).

Architectures (``cfg.architecture``) are declared in the registry ``gradsae.saes.architectures``; built in:

- ``relu``      h = relu(pre)                                  (SAELens "standard")
- ``jumprelu``  h = relu(pre) * (pre > threshold)              (Gemma Scope)
- ``topk``      keep the k largest of relu(pre)                (Gao et al.)
- ``batchtopk`` trained with a batch-level TopK; inference is JumpReLU with the learned threshold
- ``gsae``      TopK whose *selection* may use the gradient of the model loss (Olmo et al.):
                K = TopK(z + beta/s * z * |W_dec @ grad_x L|), values kept are relu(z).
                Without a gradient it is plain TopK (what generation uses).
- ``e2e``       TopK at inference; *trained* end to end (Braun et al. 2024): to minimise the KL divergence
                between the model's output with x and with the reconstruction (``gradsae train``).

where ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from . import architectures
from .architectures import gsae_selection_score  # noqa: F401  (re-exported: the g-SAE's score)
from ..errors import GradsaeError
from ..hooks import parse_hook_name
from . import formats

ARCHITECTURES = architectures.BUILT_IN  # architectures.REGISTRY also holds any registered later


@dataclass
class SAEConfig:
    d_in: int
    """Model hidden size D."""
    d_sae: int
    """Number of latents C."""
    architecture: str = "relu"
    """A registered architecture (``gradsae.saes.architectures``): relu, jumprelu, topk, batchtopk, gsae, e2e, ..."""
    k: int | None = None
    """Active latents per token for topk / batchtopk / gsae / e2e."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from x before encoding (SAELens convention)."""
    hook_name: str = ""
    """Where the SAE reads, e.g. blocks.9.hook_resid_post (any name hooks.parse_hook_name knows)."""
    hook_name_out: str = ""
    """Transcoders: where the output is written (``blocks.L.hook_mlp_out``); "" for an SAE, which writes where it
    reads."""
    d_out: int | None = None
    """Transcoders: the output's width (None: d_in)."""
    skip_connection: bool = False
    """Transcoders: the output also gets the affine skip term x @ W_skip (W_skip [d_in, d_out])."""
    model_name: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    norm_scaling_factor: float | None = None
    """If set, x is multiplied by it before encoding and x_hat divided by it after decoding."""
    beta: float = 0.0
    """g-SAE: weight of the gradient term in the selection score."""
    beta_mode: str = "rms"
    """g-SAE: 'raw' uses beta as in the paper; 'rms' divides the gradient term by a running RMS
    of |W_dec @ grad| (buffer grad_scale), so beta is scale-free."""
    context_size: int | None = None
    prepend_bos: bool = True
    dataset_path: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else (training config, provenance, eval numbers)."""

    def __post_init__(self):
        if (self.d_out is not None or self.skip_connection) and not self.hook_name_out:
            raise GradsaeError("a transcoder (d_out or skip_connection set) needs hook_name_out, where it writes")
        if self.hook_name_out and self.apply_b_dec_to_input:
            raise GradsaeError(
                "a transcoder cannot subtract b_dec (of its output) from its input: apply_b_dec_to_input"
            )
        if self.beta_mode not in ("rms", "raw"):
            raise GradsaeError(f"beta_mode={self.beta_mode!r}: use 'rms' or 'raw'")
        if architectures.get(self.architecture).needs_k and not self.k:
            raise GradsaeError(f"a {self.architecture} SAE needs k (active latents per token) in its config")
        s = self.norm_scaling_factor
        if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise GradsaeError(
                f"norm_scaling_factor={s!r} must be a positive finite number (the factor activations "
                "were multiplied by in training): fix or remove it"
            )
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise GradsaeError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")

    @property
    def layer(self) -> int | None:
        return parse_hook_name(self.hook_name) if self.hook_name else None

    @property
    def is_transcoder(self) -> bool:
        return bool(self.hook_name_out)

    @property
    def out_dim(self) -> int:
        """Width of the output: d_out for a transcoder, else d_in."""
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SparseCode(NamedTuple):
    """A TopK code: ``values [N, K]`` and ``indices [N, K]`` (long)."""

    values: torch.Tensor
    indices: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Pure functions (tested on toy tensors)
# ---------------------------------------------------------------------------------------------


def topk_code(score: torch.Tensor, values: torch.Tensor, k: int) -> SparseCode:
    """Pick the k largest ``score`` entries per row, keep ``relu(values)`` there. [N, C] -> SparseCode [N, K]."""
    idx = score.topk(k, dim=-1, sorted=False).indices
    return SparseCode(values.gather(-1, idx).relu(), idx)


def densify(code: SparseCode, d_sae: int) -> torch.Tensor:
    """SparseCode [N, K] -> dense [N, C]."""
    out = code.values.new_zeros(*code.values.shape[:-1], d_sae)
    return out.scatter(-1, code.indices, code.values)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


class SAE(nn.Module):
    """A sparse autoencoder with SAELens names: ``encode``, ``decode``, ``W_enc``, ``W_dec``, ``cfg``."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, C, O = cfg.d_in, cfg.d_sae, cfg.out_dim
        dtype = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(D, C, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(C, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(C, O, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(O, dtype=dtype))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(D, O, dtype=dtype))
        self.arch = architectures.get(cfg.architecture)
        for name in self.arch.params:
            setattr(self, name, nn.Parameter(torch.zeros(C, dtype=dtype)))
        for name in self.arch.buffers:
            self.register_buffer(name, torch.ones((), dtype=torch.float32))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def init_random(cls, cfg: SAEConfig, seed: int = 0, x_sample: torch.Tensor | None = None) -> "SAE":
        """Random unit-norm decoder rows, encoder = decoder transpose (Gao et al.), b_dec from data if given."""
        sae = cls(cfg)
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(cfg.d_sae, cfg.out_dim, generator=g)
        W = W / W.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(W)
            sae.W_enc.copy_(
                W.T if cfg.out_dim == cfg.d_in else torch.randn(cfg.d_in, cfg.d_sae, generator=g) / cfg.d_in**0.5
            )
            if x_sample is not None:
                sae.b_dec.copy_(x_sample.float().median(dim=0).values)
        return sae

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: str | None = None) -> "SAE":
        """Load any supported format or bundled name (see ``gradsae.saes.formats.load_sae``)."""
        return formats.load_sae(name_or_path, device=device, dtype=dtype)

    load_from_disk = from_pretrained

    def save(self, path: str | Path) -> Path:
        """Write the SAELens folder format (cfg.json + sae_weights.safetensors): ``saes.saelens.save_saelens``."""
        return formats.SAVERS["saelens"](self, path)

    save_model = save

    # ---- properties ---------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def layer(self) -> int | None:
        return self.cfg.layer

    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    # ---- math ---------------------------------------------------------------------------
    def _scale_in(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.norm_scaling_factor
        return x if s is None else x * s

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., C] for x [..., D]."""
        x = self._scale_in(x.to(self.W_enc.dtype))
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def project_grad(self, grad_x: torch.Tensor) -> torch.Tensor:
        """The model-loss gradient in latent space: ``grad_x @ W_dec.T`` [..., D] -> [..., C]."""
        return grad_x.to(self.W_dec.dtype) @ self.W_dec.T

    def encode_sparse(self, x: torch.Tensor, grad_x: torch.Tensor | None = None) -> SparseCode:
        """TopK-family encoding as (values, indices) [..., K]; ``grad_x`` [..., D] is used by g-SAE only."""
        cfg = self.cfg
        if not self.arch.sparse:
            raise GradsaeError(f"encode_sparse needs a TopK-family SAE, not {cfg.architecture!r}")
        z = self.encode_pre(x)
        score = z
        if self.arch.score is not None:
            glat = None if grad_x is None else self.project_grad(grad_x)
            score = self.arch.score(z, glat, cfg.beta, self.grad_score_scale())
        return topk_code(score, z, cfg.k)

    def grad_score_scale(self) -> float | torch.Tensor:
        """What divides the gradient term of the selection score: the running RMS kept in ``grad_scale``
        (beta_mode rms), else 1 (the paper's raw beta)."""
        return self.grad_scale if self.cfg.beta_mode == "rms" and hasattr(self, "grad_scale") else 1.0

    def encode(self, x: torch.Tensor, grad_x: torch.Tensor | None = None) -> torch.Tensor:
        """Latent activations h [..., C] for x [..., D].

        ``grad_x`` (the gradient of the model loss w.r.t. x, [..., D]) only matters for g-SAEs.
        """
        if self.arch.sparse:
            return densify(self.encode_sparse(x, grad_x), self.d_sae)
        pre = self.encode_pre(x)
        if "threshold" in self.arch.params:  # jumprelu, and batchtopk at inference
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat [..., D] from latents h [..., C] (a transcoder: [..., d_out], without the skip
        term, which ``skip`` gives)."""
        x_hat = h.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        s = self.cfg.norm_scaling_factor
        return x_hat if s is None else x_hat / s

    def decode_delta(self, dh: torch.Tensor) -> torch.Tensor:
        """Change of the reconstruction [..., D] for a change of latents dh [..., C] (decode is affine):
        decode(h + dh) - decode(h), without the bias and in one matmul."""
        d = dh.to(self.W_dec.dtype) @ self.W_dec
        s = self.cfg.norm_scaling_factor
        return d if s is None else d / s

    def digest(self) -> str:
        """sha256 of every tensor (names, shapes, values as float32): which SAE this is, whatever file it came from
        and whatever dtype it was loaded in (a float16 file gives the same digest loaded as float16 or float32)."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu()
            h.update(f"{name}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """A skip transcoder's affine term x @ W_skip [..., d_out] for its input x [..., D]; None without one."""
        return x.to(self.W_skip.dtype) @ self.W_skip if self.cfg.skip_connection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): the reconstruction, or a transcoder's output (skip term included)."""
        out = self.decode(self.encode(x))
        s = self.skip(x)
        return out if s is None else out + s

    # ---- helpers ------------------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    def describe(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k else ""
        if c.is_transcoder:
            skip = ", skip" if c.skip_connection else ""
            return (
                f"Transcoder({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.out_dim}{k}{skip}, "
                f"{c.hook_name or '?'} -> {c.hook_name_out})"
            )
        return f"SAE({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, hook={c.hook_name or '?'})"

    def __repr__(self) -> str:
        return self.describe()
