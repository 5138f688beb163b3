"""Completeness curves (Marks et al. 2024, "Sparse Feature Circuits" §3): keep only the N highest-ranked latents
of an SAE (the error term kept, every other latent ablated at every position) and measure how much of the target
is recovered,

    fraction(N) = (m(N) - m(none)) / (m(all) - m(none)),

m(all) the target with every latent (the clean model: the error term is kept), m(none) with every latent ablated.
Rankings: GradSAE (|grad x act| score), Baseline (mean activation), random (a seeded permutation of the latents
active in the example). Ablation: ``zero``, or ``mean`` (each latent set to a given mean activation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import GradsaeError
from ..saes.sae import SAE
from ..splice import RowEdit, Splice
from .inputs import forward_target, join_ids, pack
from .methods import influence
from .options import InfluenceOptions
from .records import Example

RANKINGS = ("gradsae", "activation", "random")


@dataclass
class Curves:
    """Per ranking, the fraction recovered [n_examples, len(ns)] (NaN where m(all) = m(none))."""

    ns: list[int]
    fraction: dict[str, torch.Tensor]
    ablation: str

    def auc(self) -> dict[str, torch.Tensor]:
        """Per ranking, each example's area under its curve on the N grid (the mean fraction) [n_examples]."""
        return {r: f.mean(1) for r, f in self.fraction.items()}


def orders(scores: torch.Tensor, baseline: torch.Tensor, active: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Latent orders [C] per ranking: by |score|, by mean activation, and a seeded permutation of the active
    latents (then the inactive ones)."""
    g = torch.Generator().manual_seed(seed)
    act = active.nonzero().flatten().cpu()
    rest = (~active).nonzero().flatten().cpu()
    rand = torch.cat([act[torch.randperm(act.numel(), generator=g)], rest])
    return {
        "gradsae": scores.abs().argsort(descending=True, stable=True).cpu(),
        "activation": baseline.argsort(descending=True, stable=True).cpu(),
        "random": rand,
    }


def _edit(keep: torch.Tensor, d_sae: int, ablation: str, means: torch.Tensor | None) -> RowEdit:
    """Every latent but ``keep`` ablated at every position."""
    drop = torch.ones(d_sae, dtype=torch.bool)
    drop[keep] = False
    idx = drop.nonzero().flatten().tolist()
    if ablation == "zero":
        return RowEdit(zero=idx, at=0)
    return RowEdit(set={c: float(means[c]) for c in idx}, at=0)


def completeness(
    model,
    tok,
    sae: SAE,
    examples: Sequence[Example],
    ns: Sequence[int],
    opts: InfluenceOptions | None = None,
    *,
    ablation: str = "zero",
    means: torch.Tensor | None = None,
    seed: int = 0,
    rows_per_forward: int = 16,
) -> Curves:
    """Completeness curves of every ranking over ``ns`` for each example (outputs given). ``means`` [C]: the
    mean activations ``mean`` ablation sets (e.g. over a corpus)."""
    if ablation not in ("zero", "mean"):
        raise GradsaeError(f"ablation {ablation!r}: use zero or mean")
    if ablation == "mean" and (means is None or means.shape != (sae.d_sae,)):
        raise GradsaeError("mean ablation needs the latents' mean activations [d_sae]")
    if not ns or min(ns) < 0:
        raise GradsaeError("give the numbers N of latents kept, each >= 0")
    opts = dataclasses.replace((opts or InfluenceOptions()).influence_options(), error="keep", method="grad")
    device = sae.W_dec.device
    out = {r: torch.full((len(examples), len(ns)), float("nan")) for r in RANKINGS}
    for i, ex in enumerate(examples):
        if not ex.output:
            raise GradsaeError(f"example {ex.id or i!r} has no output: completeness scores a given output")
        res = influence(model, tok, sae, [ex], opts)[0]
        packed = pack(tok, [join_ids(tok, ex.prompt, ex.output)], device)
        with torch.no_grad(), Splice(model, sae, error="keep", capture=True) as s:
            forward_target(model, packed, opts.target, s)
            active = (s.latents[0] > 0).any(0)
        order = orders(res.scores, res.baseline, active, seed + i)
        rows = [_edit(torch.zeros(0, dtype=torch.long), sae.d_sae, ablation, means)]  # m(none)
        rows += [_edit(order[r][:n], sae.d_sae, ablation, means) for r in RANKINGS for n in ns]
        values = []
        for a in range(0, len(rows), rows_per_forward):
            part = rows[a : a + rows_per_forward]
            with torch.no_grad(), Splice(model, sae, error="keep", edits=part) as s:
                values.append(forward_target(model, packed.repeat(len(part)), opts.target, s).float().cpu())
        v = torch.cat(values)
        none, full = float(v[0]), float(res.target_value)
        if abs(full - none) < 1e-6:
            continue  # the SAE's latents do not move the target here: no fraction to recover
        frac = (v[1:] - none) / (full - none)
        for j, r in enumerate(RANKINGS):
            out[r][i] = frac[j * len(ns) : (j + 1) * len(ns)]
    return Curves(list(ns), out, ablation)
