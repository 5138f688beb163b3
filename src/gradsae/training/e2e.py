"""End-to-end SAEs (Braun et al. 2024, "Identifying functionally important features with end-to-end
sparse dictionary learning"), the g-SAE paper's third arm.

An E2E SAE is a TopK SAE whose loss is not the reconstruction error but the KL divergence between the
model's next-token distributions with the original activation and with the reconstruction:

    L = mean over positions of KL(p(· | x) ‖ p(· | x̂))  +  recon_coef · ‖x − x̂‖² / ‖x‖²

(the second term is optional, ``--e2e-recon-coef``; Braun et al.'s "e2e+ds" adds downstream
reconstruction terms instead, which we do not). ``--e2e-balance`` sets the weight once, at the first step, so that
the reconstruction term is ``--e2e-recon-coef`` times the KL term then (the KL + MSE fine-tune of Karvonen 2025,
"A short finetune is all you need", started from a trained TopK SAE with ``--init-from``).

The gradient reaches the SAE through every block above
its layer; the blocks below are not run again (``splice.skip_trunk`` returns the given activation).
Positions before ``drop_first`` keep the model's own activation, as at evaluation.
"""

from __future__ import annotations

import torch

from ..saes.sae import SAE
from .grid import SAESpec, StepStats, auxk_loss, decode_sparse, encode_train, fired_counts
from ..capture import autocast


def tail_logits(model, layer: int, ids: torch.Tensor, Z: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """Logits [B, T, V] of the model when block ``layer`` outputs Z [B, T, D] (blocks 0..layer not run)."""
    from ..splice import skip_trunk

    with skip_trunk(model, layer, Z, Z.shape[0]), autocast(str(ids.device), dtype):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def kl_per_position(logp_clean: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ other) per position. logp_clean [..., V] log-probabilities, logits [..., V] -> [...]."""
    logp = logits.float().log_softmax(-1)
    return (logp_clean.exp() * (logp_clean - logp)).sum(-1)


def clean_logprobs(
    model, layer: int, ids: torch.Tensor, Z: torch.Tensor, drop_first: int, dtype: str = "float32"
) -> torch.Tensor:
    """log p(· | x) [B, T - drop_first, V] from Z [B, T, D] at block ``layer`` (no gradient)."""
    with torch.no_grad():
        return tail_logits(model, layer, ids, Z, dtype)[:, drop_first:].float().log_softmax(-1)


def e2e_loss(
    model,
    sae: SAE,
    spec: SAESpec,
    ids: torch.Tensor,
    Z: torch.Tensor,
    norm: float,
    logp_clean: torch.Tensor,
    drop_first: int,
    recon_coef: float,
    dead: torch.Tensor,
    auxk_coef: float,
    auxk_k: int,
    dtype: str = "float32",
    mean_fn=None,
    balance=None,
) -> tuple[torch.Tensor, StepStats]:
    """The E2E loss of ``sae`` on the rows ids [B, T] whose block-``layer`` activation is Z [B, T, D].

    ``norm`` is the layer's scalar s (the SAE works on s·x); ``logp_clean`` from ``clean_logprobs``.
    ``balance(kl, nmse) -> weight``, if given, replaces ``recon_coef`` (the caller fixes it at its first step)."""
    B, T, D = Z.shape
    x = Z[:, drop_first:].reshape(-1, D) * norm  # [N, D] normalised
    z, code, _ = encode_train(sae, spec, x, None, 1.0)
    x_hat = decode_sparse(code, sae.W_dec, sae.b_dec)
    Z_hat = torch.cat([Z[:, :drop_first], (x_hat / norm).reshape(B, T - drop_first, D)], dim=1)
    with torch.enable_grad():
        logits = tail_logits(model, spec.layer, ids, Z_hat, dtype)[:, drop_first:]
    kl = kl_per_position(logp_clean, logits).mean()
    err = x - x_hat
    mse = err.pow(2).sum(-1).mean()
    x2 = x.pow(2).sum(-1).mean().detach()
    if balance is not None:
        recon_coef = balance(kl.detach(), (mse / x2).detach())
    loss = kl + (recon_coef * mse / x2 if recon_coef > 0 else 0.0)
    aux = x.new_zeros(())
    if auxk_coef > 0 and bool(dead.any()):
        e = err.detach()
        denom = e.pow(2).sum(-1).mean()
        denom = mean_fn(denom) if mean_fn is not None else denom
        aux = auxk_loss(z, e, dead, sae.W_dec, auxk_k, denom)
        loss = loss + auxk_coef * aux
    return loss, StepStats(
        mse=mse.detach(),
        x2=x2,
        aux=aux.detach(),
        l0=(code.values > 0).sum(-1).float().mean(),
        fired=fired_counts(code, sae.d_sae),
        kl=kl.detach(),
    )
