"""What crosses the module boundary: ``Example`` (a prompt and the output to explain) and ``Influence`` (every
latent's score on one example)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rules import bottom_latents, rank_of, resolve_k, top_latents


# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Example:
    """A prompt and (optionally) the output whose influence we explain; without one it is generated."""

    prompt: str
    output: str | None = None
    id: str = ""


@dataclass
class Influence:
    """Influence of every latent on one example's output.

    Attributes:
        scores: [C] the method's per-latent score (GradSAE g_c; for ``exact`` Δtarget/N; for ``ig`` IG mean).
        baseline: [C] mean activation over the same positions (the paper's Baseline).
        active_last: [A] latents active at the last prompt token (defines K = 50%).
        active_any: number of latents active at any scored position.
        token_ids / tokens: the scored sequence (prompt + output), without padding.
        n_prompt: prompt length in tokens.
        per_token_latents: [P] latents whose per-token influence is kept (the top P by score).
        per_token: [T, P] g[n, c] for those latents (for heatmaps); None for ``exact``.
        target_value: the target at the unedited latents.
    """

    id: str
    prompt: str
    output: str
    token_ids: list[int]
    tokens: list[str]
    n_prompt: int
    scores: torch.Tensor
    baseline: torch.Tensor
    active_last: torch.Tensor
    active_any: int
    per_token_latents: torch.Tensor
    per_token: torch.Tensor | None
    target_value: float
    meta: dict = field(default_factory=dict)

    @property
    def n_active_last(self) -> int:
        return int(self.active_last.numel())

    def top(self, k: int | str, baseline: bool = False) -> torch.Tensor:
        return top_latents(self.baseline if baseline else self.scores, resolve_k(k, self.n_active_last))

    def bottom(self, k: int | str, baseline: bool = False) -> torch.Tensor:
        return bottom_latents(self.baseline if baseline else self.scores, resolve_k(k, self.n_active_last))

    def baseline_rank(self) -> torch.Tensor:
        """[C] 1-based rank of each latent under the Baseline ordering (ties by index)."""
        return rank_of(self.baseline)

    def to_json(self, top: int = 20, promoted: dict[int, list[str]] | None = None) -> dict:
        """A JSON-ready summary: top and bottom latents with score, activation and baseline rank, per-token
        influence of the kept latents, and the tokens each top latent's decoder direction promotes."""
        rank = self.baseline_rank()

        def rows(idx):
            return [
                {
                    "latent": int(c),
                    "score": float(self.scores[c]),
                    "mean_activation": float(self.baseline[c]),
                    "baseline_rank": int(rank[c]),
                    **({"promotes": promoted.get(int(c), [])} if promoted else {}),
                }
                for c in idx
            ]

        return {
            "id": self.id,
            "prompt": self.prompt,
            "output": self.output,
            "tokens": self.tokens,
            "n_prompt": self.n_prompt,
            "target_value": self.target_value,
            "n_active_last": self.n_active_last,
            "n_active_any": self.active_any,
            "top": rows(top_latents(self.scores, top)),
            "bottom": rows(bottom_latents(self.scores, top)),
            "baseline_top": rows(top_latents(self.baseline, top)),
            "per_token": None
            if self.per_token is None
            else {
                "latents": self.per_token_latents.tolist(),
                "values": [[round(float(v), 6) for v in row] for row in self.per_token.T],
            },
            "meta": self.meta,
        }
