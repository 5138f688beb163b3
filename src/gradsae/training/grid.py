"""The SAEs of a training run and the math of one SAE step (pure functions, tested on toy tensors).

A run trains a *grid*: every ``layer × architecture × k × β (g-SAE only) × d_sae × seed`` combination
is one SAE, and all of them learn from the same model pass. Per step and SAE (``local_loss``):

1. x is already normalised by one scalar s per layer (E‖s·x‖² = D, stored in the SAE);
2. z = (x − b_dec) W_enc + b_enc; TopK selects the k largest z, a g-SAE the k largest of
   z + β/σ · z ∘ |W_dec ∇ₓL| (``gsae_selection_score``) and keeps relu(z) there;
3. x̂ is decoded from the K active rows only (embedding-bag), loss = ‖x − x̂‖² (+ AuxK over dead latents);
4. (in the trainer) W_dec's gradient loses its part parallel to the rows, Adam steps, rows renormalised.

E2E SAEs share 2–4 but their loss is the KL divergence of the model's output (see ``e2e.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..saes import architectures

from ..errors import GradsaeError
from ..saes.sae import SAE, SparseCode, topk_code


@dataclass(frozen=True)
class SAESpec:
    """One SAE of the grid."""

    name: str
    """Folder name of the trained SAE, e.g. ``topk_k32`` or ``L14/gsae_k32_b0.5``."""
    layer: int
    """Block whose output the SAE reads."""
    architecture: str
    """A trainable registered architecture (topk, gsae, e2e, ...)."""
    k: int
    beta: float
    """g-SAE gradient weight (0 for the others)."""
    d_sae: int
    seed: int
    """Initialisation seed of this SAE (the ``--seeds`` value)."""

    @property
    def arch(self) -> architectures.Architecture:
        return architectures.get(self.architecture)

    @property
    def needs_grad(self) -> bool:
        return self.arch.training.needs_grad


def build_grid(
    layers: list[int], archs: list[str], ks: list[int], betas: list[float], d_saes: list[int], seeds: list[int]
) -> list[SAESpec]:
    """Every combination, in a fixed order. Name parts that do not vary are left out of the names."""
    trainable = architectures.trainable()
    for arch in archs:
        if arch not in trainable:
            raise GradsaeError(f"cannot train architecture {arch!r}: use {', '.join(trainable)}")
    if not archs or not ks or not d_saes or not seeds or not layers:
        raise GradsaeError("nothing to train: give --architectures, --k, --d-sae, --seeds and --layers")
    beta_archs = [a for a in archs if architectures.get(a).training.uses_beta]
    if beta_archs and not betas:
        raise GradsaeError(f"a {beta_archs[0]} SAE needs --beta (e.g. --beta 0.5)")
    for k in ks:
        for d in d_saes:
            if not 0 < k <= d:
                raise GradsaeError(f"--k {k} must be between 1 and --d-sae {d}")
    out = []
    for layer in layers:
        for arch in archs:
            uses_beta = architectures.get(arch).training.uses_beta
            for k in ks:
                for b in betas if uses_beta else [0.0]:
                    for d in d_saes:
                        for s in seeds:
                            name = f"{arch}_k{k}" + (f"_b{b:g}" if uses_beta else "")
                            name += f"_c{d}" if len(d_saes) > 1 else ""
                            name += f"_s{s}" if len(seeds) > 1 else ""
                            if len(layers) > 1:
                                name = f"L{layer}/{name}"
                            out.append(SAESpec(name, layer, arch, k, float(b), d, s))
    return out


def init_seed(run_seed: int, spec: SAESpec) -> int:
    """SAEs with the same (layer, d_sae, seed) start from the same weights whatever their architecture
    or k, so that comparisons within a grid are not confounded by the initialisation."""
    return (run_seed * 1_000_003 + spec.seed * 10_007 + spec.layer * 101) % (2**63)


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm. x [N, D] -> [D]."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def lr_at(step: int, total: int, lr: float, warmup: int, decay_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, constant, linear decay to 0 over the last ``decay_frac``."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    d0 = int(total * (1 - decay_frac))
    if decay_frac > 0 and step >= d0:
        f *= max(0.0, (total - step) / max(1, total - d0))
    return lr * f


def remove_parallel_grad(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Project out of G [C, D] the component along each (unit) row of W [C, D] (Gao et al.)."""
    return G - (G * W).sum(-1, keepdim=True) * W


def decode_sparse(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """x̂ = Σ_k values[n,k] W_dec[indices[n,k]] + b_dec via embedding_bag. [N, K] -> [N, D]."""
    return F.embedding_bag(code.indices, W_dec, per_sample_weights=code.values, mode="sum") + b_dec


def decode_dense(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Same as ``decode_sparse`` through a dense [N, C] @ [C, D] product."""
    h = code.values.new_zeros(code.values.shape[0], W_dec.shape[0]).scatter(-1, code.indices, code.values)
    return h @ W_dec + b_dec


@dataclass
class StepStats:
    """Detached per-SAE numbers of one step (tensors, so they can be all-reduced before use)."""

    mse: torch.Tensor
    """Σ‖x − x̂‖² / N (normalised units)."""
    x2: torch.Tensor
    """Σ‖x‖² / N, for NMSE = mse / x2."""
    aux: torch.Tensor
    """AuxK loss (0 when no latent is dead)."""
    l0: torch.Tensor
    fired: torch.Tensor
    """[C] long: how many tokens of the batch each latent fired on."""
    glat_ms: torch.Tensor | None = None
    """g-SAE: mean square of W_dec ∇ₓL over the batch (feeds the running RMS σ)."""
    kl: torch.Tensor | None = None
    """E2E: mean KL(clean ‖ reconstructed) per position."""


def encode_train(
    sae: SAE, spec: SAESpec, x: torch.Tensor, g: torch.Tensor | None, grad_scale: float
) -> tuple[torch.Tensor, SparseCode, torch.Tensor | None]:
    """Training-time encoder. x [N, D] normalised, g [N, D] or None -> (z [N, C], code [N, K], W_dec g or None).

    The selection is computed without gradient (TopK is piecewise constant); values keep the graph."""
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    glat = None
    with torch.no_grad():
        score = z.detach()
        if spec.arch.score is not None:
            glat = None if g is None else g @ sae.W_dec.T
            score = spec.arch.score(score, glat, spec.beta, grad_scale)
    return z, topk_code(score, z, spec.k), glat


def auxk_loss(
    z: torch.Tensor,
    err: torch.Tensor,
    dead: torch.Tensor,
    W_dec: torch.Tensor,
    auxk_k: int,
    err_norm: torch.Tensor,
    decode=decode_sparse,
) -> torch.Tensor:
    """AuxK (Gao et al.): reconstruct the residual err [N, D] from the top ``auxk_k`` dead latents.

    z [N, C], dead [C] bool, err_norm: mean ‖err‖² (a scalar, averaged over processes under DDP)."""
    kk = min(auxk_k, int(dead.sum()))
    aidx = z.masked_fill(~dead, float("-inf")).topk(kk, dim=-1).indices
    acode = SparseCode(z.gather(-1, aidx).relu(), aidx)
    e_hat = decode(acode, W_dec, torch.zeros(W_dec.shape[1], dtype=W_dec.dtype, device=W_dec.device))
    return (e_hat - err).pow(2).sum(-1).mean() / err_norm.clamp_min(1e-12)


def fired_counts(code: SparseCode, d_sae: int) -> torch.Tensor:
    """How many rows each latent is active (value > 0) on. code [N, K] -> [C] long."""
    fired = torch.zeros(d_sae, dtype=torch.long, device=code.indices.device)
    return fired.scatter_add_(0, code.indices.flatten(), (code.values.flatten() > 0).long())


def local_loss(
    sae: SAE,
    spec: SAESpec,
    x: torch.Tensor,
    g: torch.Tensor | None,
    dead: torch.Tensor,
    grad_scale: float,
    auxk_coef: float,
    auxk_k: int,
    decoder: str = "sparse",
    mean_fn=None,
) -> tuple[torch.Tensor, StepStats]:
    """Reconstruction loss (+ AuxK) of a TopK / g-SAE on x [N, D] (normalised), g [N, D] dL/dx or None.

    ``mean_fn`` averages a detached scalar over processes (identity in one process)."""
    decode = decode_sparse if decoder == "sparse" else decode_dense
    z, code, glat = encode_train(sae, spec, x, g, grad_scale)
    x_hat = decode(code, sae.W_dec, sae.b_dec)
    err = x - x_hat
    mse = err.pow(2).sum(-1).mean()
    loss = mse
    aux = x.new_zeros(())
    if auxk_coef > 0 and bool(dead.any()):
        e = err.detach()
        denom = e.pow(2).sum(-1).mean()
        denom = mean_fn(denom) if mean_fn is not None else denom
        aux = auxk_loss(z, e, dead, sae.W_dec, auxk_k, denom, decode)
        loss = loss + auxk_coef * aux
    stats = StepStats(
        mse=mse.detach(),
        x2=x.pow(2).sum(-1).mean().detach(),
        aux=aux.detach(),
        l0=(code.values > 0).sum(-1).float().mean(),
        fired=fired_counts(code, sae.d_sae),
        glat_ms=None if glat is None else glat.pow(2).mean(),
    )
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Memory estimate (before the first step)
# ---------------------------------------------------------------------------------------------


def estimate_bytes(
    specs: list[SAESpec],
    D: int,
    tokens: int,
    buffer_tokens: int,
    n_grad_layers: int,
    n_layers: int,
    e2e_logits: int = 0,
    host: bool = False,
) -> int:
    """Bytes a step needs besides the model: per SAE weights + grads + 2 Adam moments (float32); the
    largest SAE's transient [N, C] tensors (pre-activations, scores, AuxK) during its step; the Adam step's own
    temporaries (torch's foreach Adam allocates the square roots of the second moments, one copy of the SAE's
    weights, and a [C, D] temporary); the shuffle
    buffer (x and dL/dx, pooled and permuted copies); E2E logits ([B, T, V] ×4 with their gradient); and,
    when the device is the host (``host``), the checkpoint's one tensor in flight (``io.write_safetensors``
    writes the state tensor by tensor)."""
    per_sae = [(2 * D * s.d_sae + s.d_sae + D) * 4 for s in specs]  # one float32 copy of an SAE's weights
    params = sum(4 * p for p in per_sae)
    transient = max(4 * tokens * s.d_sae * 4 for s in specs)
    buffer = 4 * buffer_tokens * D * (n_layers + n_grad_layers) * 2
    adam_step = max(p + 4 * D * s.d_sae for p, s in zip(per_sae, specs))
    checkpoint = max(4 * D * s.d_sae for s in specs) if host else 0
    return params + transient + adam_step + buffer + 4 * e2e_logits * 4 + checkpoint
