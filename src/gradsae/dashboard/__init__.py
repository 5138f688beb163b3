"""``gradsae dashboard``: what each SAE latent means, from one streaming pass over a corpus.

Per latent c the pass keeps, in fixed-size tensors (never a dense [tokens x C] array):

- **top contexts**: the rows where H[:, c] peaks (at most one context per row), a window of tokens around
  the maximum with the latent's activation on every token of it;
- **band samples**: a seeded random sample of activating tokens in every half-decade activation band
  (bottom-R by a hash key of (seed, token, latent): a reservoir that is exact under resume and merge), shown
  as the "lower quantile" examples with their percentile;
- **influence contexts** (output side): where g[n, c] = H[n, c] · ∂(Σ_m log p(x_{m+1} | x_≤m)) / ∂H[n, c]
  (GradSAE grad × act on the next-token log-likelihood of the row) is largest, with g on every window token,
  the model's top next-token predictions at the maximum and how the latent's direct path moved their
  log-probabilities (see ``moved_logprobs``);
- activation count, sum and a fixed log-spaced histogram (density, mean, percentiles);
- from the weights alone: promoted / suppressed tokens (W_U · W_dec[c]) and decoder neighbours by cosine.

Everything in ``DashboardState`` is mergeable (``merge_states``): heaps break ties by the global token id,
so the result does not depend on batch order or on how rows were split across ``torchrun`` ranks (row i goes
to rank i mod WORLD_SIZE). The state is checkpointed atomically (safetensors) every N batches; a rerun of the
same command after a crash resumes from it and ends with the same result.

Shapes: B rows, T tokens per row, C latents, N heap size, W window length, P predictions kept.
"""

from __future__ import annotations

from .config import DashboardConfig
from .state import (
    BAND_BINS,
    BatchEvidence,
    DashboardState,
    EMPTY_GID,
    HIST_BINS,
    HIST_LO,
    HIST_PER_DECADE,
    Heap,
    N_BANDS,
    SCHEMA,
    _row_max_candidates,
    _windows,
    heap_push,
    hist_bin,
    merge_states,
    mix_key,
    update_state,
    window_index,
)
from .model_pass import _RESULT_KEYS, batch_evidence, build_state, corpus_rows, fingerprint
from .cards import (
    check_dashboard,
    Context,
    DASHBOARD_FILES,
    DEFINITIONS,
    Dashboard,
    DashboardMeta,
    InfluenceContext,
    LatentRecord,
    Neighbour,
    TokenMove,
    TokenScore,
    _percentile,
    _r,
    _rl,
    card_data,
    dashboard_from_json,
    finalize,
    find_dashboard,
    load_dashboard,
    moved_logprobs,
    resolve_dashboard,
    row_length,
    shrink,
)
from .command import run

__all__ = [
    "check_dashboard",
    "BAND_BINS",
    "BatchEvidence",
    "Context",
    "DASHBOARD_FILES",
    "DEFINITIONS",
    "Dashboard",
    "DashboardConfig",
    "DashboardMeta",
    "DashboardState",
    "EMPTY_GID",
    "HIST_BINS",
    "HIST_LO",
    "HIST_PER_DECADE",
    "Heap",
    "InfluenceContext",
    "LatentRecord",
    "N_BANDS",
    "Neighbour",
    "SCHEMA",
    "TokenMove",
    "TokenScore",
    "_RESULT_KEYS",
    "_percentile",
    "_r",
    "_rl",
    "_row_max_candidates",
    "_windows",
    "batch_evidence",
    "build_state",
    "card_data",
    "corpus_rows",
    "dashboard_from_json",
    "finalize",
    "find_dashboard",
    "fingerprint",
    "heap_push",
    "hist_bin",
    "load_dashboard",
    "merge_states",
    "mix_key",
    "moved_logprobs",
    "resolve_dashboard",
    "row_length",
    "run",
    "shrink",
    "update_state",
    "window_index",
]
