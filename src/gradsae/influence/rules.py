"""The pure rules of GradSAE influence (tested on toy tensors): the target, the aggregation over tokens, the K rules
and the TopK / BottomK sets (paper eq. 4-5)."""

from __future__ import annotations

import math

import torch

from ..errors import GradsaeError


TARGETS = ("logprob", "prob", "logit", "first", "bracket")
BRACKET = "["  # the authors' answer opener: "Result = [[ label ]]"
AGGREGATIONS = ("relu-mean", "mean", "signed")
POSITIONS = ("all", "prompt")
METHODS = ("grad", "exact", "ig")
ERRORS = ("none", "keep")


# Pure functions
# ---------------------------------------------------------------------------------------------


def target_from_logits(
    logits: torch.Tensor, out_ids: torch.Tensor, out_mask: torch.Tensor, target: str
) -> torch.Tensor:
    """The scalar target per row.

    Args:
        logits: [B, M, V], logits[b, m] predicts output token m of row b (teacher forced).
        out_ids: [B, M] output token ids (right-aligned; padding where out_mask is 0).
        out_mask: [B, M] 1 for real output tokens.
        target: ``logprob`` Σ log p(y_m), ``prob`` Π p(y_m), ``logit`` Σ logit(y_m), ``first`` p(y_first),
            ``bracket`` Π p(y_m) over the marked tokens — the caller marks one, the last output token that
            contains ``[`` (the authors' target: the softmax probability of the greedy token at that step).
    Returns:
        [B].
    """
    if target not in TARGETS:
        raise GradsaeError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    m = out_mask.to(logits.dtype)
    picked_logit = logits.gather(-1, out_ids[..., None]).squeeze(-1)  # [B, M]
    if target == "logit":
        return (picked_logit * m).sum(-1)
    logp = picked_logit - logits.logsumexp(-1)  # [B, M]
    if target == "first":
        first = out_mask.long().argmax(-1)  # index of the first real output token
        return logp.gather(-1, first[:, None]).squeeze(-1).exp()
    total = (logp * m).sum(-1)
    return total.exp() if target in ("prob", "bracket") else total


def aggregate(g: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Per-latent score from per-token influence.

    Args:
        g: [B, T, C] per-token scores g[n, c] (or activations, for the Baseline).
        mask: [B, T] positions to average over.
        how: ``relu-mean`` mean_n max(g[n, c], 0) (official code); ``mean`` mean_n g[n, c] then scores ≤ 0
            become 0 (paper text: only positive influence counts); ``signed`` the plain mean (for analysis,
            e.g. comparing with signed ablation effects; selection still keeps positive scores only).
    Returns:
        [B, C].
    """
    if how not in AGGREGATIONS:
        raise GradsaeError(f"unknown aggregation {how!r}: use one of {', '.join(AGGREGATIONS)}")
    m = mask.to(g.dtype)[..., None]
    n = m.sum(1).clamp_min(1)
    if how == "relu-mean":
        return (g.clamp_min(0) * m).sum(1) / n
    mean = (g * m).sum(1) / n
    return mean if how == "signed" else mean.clamp_min(0)


def check_k(k: int | str) -> int | float:
    """A K value read and checked: an integer >= 1, or a percentage in (0, 100] returned as a fraction
    (``"50%"`` -> 0.5). Anything else is a one-line error."""
    s = str(k).strip()
    bad = f"cannot use K={k!r}: give an integer >= 1 or a percentage in (0, 100], e.g. 10 or 50%"
    if s.endswith("%"):
        try:
            p = float(s[:-1])
        except ValueError:
            raise GradsaeError(bad) from None
        if not (math.isfinite(p) and 0 < p <= 100):
            raise GradsaeError(bad)
        return p / 100
    try:
        n = int(s)
    except ValueError:
        raise GradsaeError(bad) from None
    if n < 1:
        raise GradsaeError(bad)
    return n


def resolve_k(k: int | str, n_active_last: int) -> int:
    """K as an int; ``"50%"`` (any ``"p%"``) is that share of the latents active at the last prompt token
    (paper §3.1.2), rounded down as the authors' code does (``n // 2``), but at least 1: their code would
    take an empty set when one latent is active, and masking nothing measures nothing."""
    v = check_k(k)
    if isinstance(v, float):
        return max(1, int(math.floor(n_active_last * v + 1e-9)))
    return v


def ranking_order(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Indices sorted by score, ties broken by the lower latent index (deterministic)."""
    key = -scores if descending else scores
    return torch.sort(key, stable=True).indices


def rank_of(values: torch.Tensor) -> torch.Tensor:
    """[C] 1-based rank of each value, largest first (ties by index, as ``ranking_order``)."""
    order = ranking_order(values, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, order.numel() + 1, device=order.device)
    return rank


def top_latents(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The K highest-scoring latents among those with a positive score (paper eq. 4). [C] -> [≤K]."""
    order = ranking_order(scores, descending=True)
    order = order[scores[order] > 0]
    return order[:k]


def bottom_latents(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The K lowest *non-zero* positive scores (paper eq. 5; zero-score latents would make masking a no-op)."""
    order = ranking_order(scores, descending=False)
    order = order[scores[order] > 0]
    return order[:k]


# ---------------------------------------------------------------------------------------------
