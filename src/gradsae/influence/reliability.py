"""How far to trust a latent's grad x act: the second-order term of zeroing it.

Zeroing latent c at the scored positions moves H along v_c (v_c[n, c] = -H[n, c] there, 0 elsewhere). The change
of the target is, to second order,

    Δ_c ≈ g · v_c + ½ v_cᵀ ∇²T v_c,       g = ∂T/∂H,

where g · v_c is (minus) GradSAE's grad x act summed over positions. The quadratic term of every latent at once
comes from Hessian-vector products along random-sign mixtures of the directions (Hutchinson): with r ∈ {±1}^C,
z = Σ_c r_c v_c and u = ∇²T z, E[r_c · v_c · u] = v_cᵀ ∇²T v_c, because the cross terms r_c r_d (c ≠ d) average to
zero. So one forward, one backward with its graph kept and ``samples`` Hessian-vector products (double backwards)
give a corrected estimate Δ1 + ½q for every latent, and a flag where the two orders disagree by more than
``tolerance``: the latents whose first-order score should be checked by exact ablation. One example at a time.

The cross terms make that estimate noisy when many latents are active. ``latents=[...]`` instead takes the exact
quadratic term of each listed latent (e.g. the top K by |grad x act|), the example repeated as K rows, each row
differentiated along its own latent's direction: one forward of K rows, one backward and one double backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GradsaeError
from ..splice import Splice
from .inputs import Packed, forward_target


@dataclass
class Reliability:
    """Per latent [C], for one example, on the scale of the target's change when the latent is zeroed."""

    first: torch.Tensor
    """g · v_c: the first-order change (= -grad x act summed over the scored positions)."""
    quadratic: torch.Tensor
    """The estimate of v_cᵀ ∇²T v_c."""
    corrected: torch.Tensor
    """first + quadratic / 2."""
    flagged: torch.Tensor
    """[C] bool: active latents whose half quadratic term exceeds ``tolerance`` × |first| (and an absolute floor)."""


def quadratic_terms(g: torch.Tensor, leaf: torch.Tensor, v: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """[C] the mean over sign patterns of r_c Σ_n v[n, c] (∇²T z)[n, c], z = v * r.

    g [T, C] = ∂T/∂leaf with its graph kept; leaf [1, T, C]; v [T, C] the directions; signs [S, C] in {±1}."""
    q = torch.zeros(v.shape[-1], dtype=torch.float32, device=v.device)
    for r in signs:
        z = v * r.to(v.dtype)
        (u,) = torch.autograd.grad((g * z).sum(), leaf, retain_graph=True)
        q += (r.float() * (v.float() * u[0].float()).sum(0)).to(q.device)
    return q / signs.shape[0]


def reliability(
    model,
    sae,
    packed: Packed,
    target: str,
    positions: str,
    error: str = "none",
    *,
    samples: int = 16,
    tolerance: float = 0.2,
    seed: int = 0,
    signs: torch.Tensor | None = None,
    keep_first: int = 0,
    latents=None,
) -> Reliability:
    """First-order change, quadratic term, corrected estimate and flag of every latent for one example.
    ``signs`` [S, C] overrides the random sign patterns (all 2^C of them make the estimate exact)."""
    if packed.ids.shape[0] != 1:
        raise GradsaeError("the reliability check runs one example at a time")
    if samples < 1:
        raise GradsaeError(f"--reliability-samples {samples}: give at least 1")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mask = packed.score_mask(positions, target)[0]
    # the math attention kernel: the fused ones (flash, memory-efficient) have no double backward
    with Splice(model, sae, error=error, grad=True, keep_first=keep_first) as s, torch.enable_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            tv = forward_target(model, packed, target, s)
        leaf = s.latents
        (g,) = torch.autograd.grad(tv.sum(), leaf, create_graph=True)
        H = leaf.detach()[0]
        v = -(H * mask[:, None].to(H.dtype))  # [T, C]: zero each latent at the scored positions
        first = (g[0].detach().float() * v.float()).sum(0)
        if latents is None:
            if signs is None:
                gen = torch.Generator().manual_seed(seed)
                signs = torch.randint(0, 2, (samples, H.shape[-1]), generator=gen) * 2 - 1
            q = quadratic_terms(g[0], leaf, v, signs.to(H.device))
    if latents is not None:
        q = torch.zeros(H.shape[-1], dtype=torch.float32, device=H.device)
        if len(latents):
            q[torch.as_tensor(list(latents))] = quadratic_rows(
                model, sae, packed, target, mask, error, latents, keep_first
            )
    active = (v != 0).any(0)
    if latents is not None:  # only the listed latents are checked
        listed = torch.zeros_like(active)
        listed[torch.as_tensor(list(latents), dtype=torch.long)] = True
        active = active & listed
    half = 0.5 * q
    floor = 1e-3 * float(first.abs().max()) if active.any() else 0.0
    flagged = active & (half.abs() > tolerance * first.abs()) & (half.abs() > floor)
    return Reliability(first.cpu(), q.cpu(), (first + half).cpu(), flagged.cpu())


def exact_changes(
    model,
    sae,
    packed: Packed,
    target: str,
    positions: str,
    error: str,
    latents,
    *,
    batch: int = 16,
    keep_first: int = 0,
) -> torch.Tensor:
    """[len(latents)] the target's true change when each latent is zeroed at the scored positions (re-run,
    ``batch`` ablations per forward): what ``--verify flagged`` compares the two estimates with."""
    from ..splice import RowEdit

    mask = packed.score_mask(positions, target)[0]
    pos = mask.nonzero().flatten()
    lo, hi = int(pos.min()), int(pos.max()) + 1
    with torch.no_grad(), Splice(model, sae, error=error, keep_first=keep_first) as s:
        full = float(forward_target(model, packed, target, s)[0])
    out = []
    latents = [int(c) for c in latents]
    for a in range(0, len(latents), batch):
        part = latents[a : a + batch]
        rows = [RowEdit(zero=[c], at=lo, until=hi) for c in part]
        with torch.no_grad(), Splice(model, sae, error=error, edits=rows, keep_first=keep_first) as s:
            out.append(forward_target(model, packed.repeat(len(part)), target, s).float().cpu() - full)
    return torch.cat(out) if out else torch.zeros(0)


def quadratic_rows(
    model, sae, packed: Packed, target: str, mask: torch.Tensor, error: str, latents, keep_first=0, rows: int = 8
) -> torch.Tensor:
    """[K] v_cᵀ ∇²T v_c exactly for each listed latent: the example repeated, row k differentiated along latent
    latents[k]'s direction (rows are independent, so one double backward gives every row's own term); ``rows``
    latents per pass bound the memory (a double backward keeps the whole graph of every row)."""
    lat = [int(c) for c in latents]
    parts = [
        _quadratic_rows(model, sae, packed, target, mask, error, lat[a : a + rows], keep_first)
        for a in range(0, len(lat), rows)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def _quadratic_rows(model, sae, packed: Packed, target: str, mask: torch.Tensor, error: str, latents, keep_first):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    lat = torch.as_tensor(list(latents), dtype=torch.long)
    K = lat.numel()
    with Splice(model, sae, error=error, grad=True, keep_first=keep_first) as s, torch.enable_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            tv = forward_target(model, packed.repeat(K), target, s)
        leaf = s.latents  # [K, T, C]
        (g,) = torch.autograd.grad(tv.sum(), leaf, create_graph=True)
        H = leaf.detach()
        V = torch.zeros_like(H)
        rows = torch.arange(K, device=H.device)
        V[rows, :, lat.to(H.device)] = -(H[rows, :, lat.to(H.device)] * mask[None, :].to(H.dtype))
        (u,) = torch.autograd.grad((g * V).sum(), leaf)
    return (V.float() * u.float()).sum((1, 2))
