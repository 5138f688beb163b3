"""GradSAE influence: which SAE latents drive the model's output (Shu et al. 2025, §2 and appendix A).

The influence of latent c at token n on the output Y is the change of a target when H[n, c] is zeroed,

    g[n, c] = target(H) - target(H with H[n, c] = 0)  ≈  ∂target/∂H[n, c] · H[n, c]      (first order)

so one forward and one backward pass score every latent at every position.

The modules, by concept:
    ``rules.py``    pure functions (tested on toy tensors): ``target_from_logits`` (the scalar per row that
                    "p(Y|H)" stands for), ``aggregate`` (per-token g [B, T, C] -> per-latent score [B, C]),
                    ``resolve_k``, ``top_latents``, ``bottom_latents`` (the TopK / BottomK sets, paper eq. 4-5)
    ``options.py``  ``InfluenceOptions``, the flags every scoring command shares
    ``records.py``  ``Example`` in, ``Influence`` out
    ``inputs.py``   the teacher-forced batch and its target, token texts, outputs to explain, promoted tokens
    ``methods.py``  ``influence(model, tok, sae, examples, opts)`` with methods

    ``grad``   grad × act from one forward + backward per batch (the paper's method);
    ``exact``  zero each active latent at the scored positions and re-run (many latents per batched forward);
    ``ig``     integrated gradients along α·H, α ∈ (0, 1], m steps (batched as rows).

Choices and their defaults (paper text vs the authors' code, see docs/influence.md):

=============  ==================  ===========================================================================
option         default             alternatives
=============  ==================  ===========================================================================
target         ``logprob``         ``prob``, ``logit``, ``first`` (p of the first output token), ``bracket`` (p of
                                   the token at the last output step containing ``[``: the authors' code)
aggregation    ``relu-mean``       ``mean`` (signed mean, keep g_c > 0: the paper's text)
positions      ``all``             ``prompt``
=============  ==================  ===========================================================================

``logprob`` is log p(Y|X, H) of the whole teacher-forced output. Per example it ranks latents exactly as
``prob`` does (∂p = p·∂log p, a positive per-example factor), but its scale does not collapse when p is small.
"""

from .inputs import answer_ids, bracket_index, generate_outputs, promoted_tokens, token_texts
from .methods import influence
from .options import InfluenceOptions
from .records import Example, Influence
from .rules import (
    AGGREGATIONS,
    BRACKET,
    ERRORS,
    METHODS,
    POSITIONS,
    TARGETS,
    aggregate,
    bottom_latents,
    check_k,
    resolve_k,
    target_from_logits,
    top_latents,
)

__all__ = [
    "AGGREGATIONS",
    "BRACKET",
    "ERRORS",
    "METHODS",
    "POSITIONS",
    "TARGETS",
    "Example",
    "Influence",
    "InfluenceOptions",
    "aggregate",
    "answer_ids",
    "bottom_latents",
    "bracket_index",
    "check_k",
    "generate_outputs",
    "influence",
    "promoted_tokens",
    "resolve_k",
    "target_from_logits",
    "token_texts",
    "top_latents",
]
