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

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .config import opt
from .distributed import Dist
from .errors import GradsaeError
from .formats import DEFAULT_SAE
from .options import SAE_HELP, ModelOptions, start

log = logging.getLogger(__name__)

SCHEMA = "gradsae.dashboard/1"

# Histogram: fixed log-spaced edges so histograms from different ranks/resumes add up exactly.
HIST_LO = -3.0  # log10 of the lowest edge
HIST_PER_DECADE = 8
HIST_BINS = 7 * HIST_PER_DECADE  # 1e-3 .. 1e4; below/above are clamped into the first/last bin
BAND_BINS = 4  # histogram bins per reservoir band (a half decade)
N_BANDS = HIST_BINS // BAND_BINS
EMPTY_GID = torch.iinfo(torch.int64).max


@dataclass(kw_only=True)
class DashboardConfig(ModelOptions):
    """Build a dashboard for an SAE: per latent its top-activating contexts, random contexts from lower
    activation bands, top-influence contexts (grad x act on the next-token loss), density and histogram,
    promoted/suppressed tokens and decoder neighbours; writes dashboard.json and a self-contained
    dashboard.html. Resumable (rerun the same command), mergeable across torchrun ranks."""

    sae: str = opt(DEFAULT_SAE, SAE_HELP)
    data: list[str] = opt(
        ["sample"],
        "corpus: files/folders (.txt, .jsonl, .json, optionally .gz), hf:NAME, or 'sample' (the bundled sample text)",
    )
    text_field: str = opt("text", "field holding the text in .jsonl/.json records")
    out: str = opt("dashboard", "output folder (dashboard.json, dashboard.html, state/)")
    max_tokens: int = opt(200_000, "corpus tokens read (whole rows of --context-length)")
    influence_tokens: int = opt(
        20_000,
        "tokens (the first rows) that also get the influence pass (whole model + "
        "one backward, several times the activation-only cost on a CPU); -1 = all, "
        "0 = none",
        low=-1,
    )
    context_length: int = opt(128, "tokens per row (BOS included)")
    batch_size: int = opt(8, "rows per forward pass")
    skip_first: int = opt(
        1,
        "positions at the start of each row left out of every statistic (BOS / "
        "attention sink, which SAEs are usually not trained on)",
    )
    n_top: int = opt(8, "top-activating contexts kept per latent")
    n_band: int = opt(1, "random contexts kept per latent and half-decade activation band")
    n_influence: int = opt(5, "top-influence contexts kept per latent")
    left: int = opt(10, "window: tokens before the maximum")
    right: int = opt(4, "window: tokens after the maximum")
    n_predictions: int = opt(5, "model's top next-token predictions kept at each influence maximum")
    n_promoted: int = opt(8, "promoted and suppressed tokens per latent")
    n_neighbours: int = opt(6, "decoder neighbours per latent")
    error: str = opt(
        "keep",
        "splice error term in the influence pass: keep (the model's own output; "
        "gradients through the reconstruction) or none (the model sees the reconstruction)",
        choices=("keep", "none"),
    )
    layer: str = opt("", "block index or hook name; default: the SAE's own hook")
    checkpoint_every: int = opt(25, "batches between state checkpoints")
    html_latents: int = opt(0, "cards in dashboard.html: 0 = every latent that fired, N = the N most frequent")
    seed: int = opt(0, "seed of the random band samples")
    render: str = opt(
        "",
        "only (re)write OUT/dashboard.html from this dashboard.json(.gz) or SAE name (no model, "
        "no corpus), e.g. for the dashboards shipped with the bundled SAEs",
    )


# ---------------------------------------------------------------------------------------------
# Heaps: top-N per row of a [R, N] table, ties broken by the global token id (so merges are exact)
# ---------------------------------------------------------------------------------------------


@dataclass
class Heap:
    """R independent top-N lists (R = latents, or latents x bands).

    Attributes:
        score: [R, N] float64, sorted descending; -inf marks an empty slot.
        gid: [R, N] int64 global token id (row * T + position) of each entry; EMPTY_GID when empty.
        data: name -> [R, N, ...] payload (window token ids, activations, ...).
    """

    score: torch.Tensor
    gid: torch.Tensor
    data: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, rows: int, n: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype, float]]) -> "Heap":
        """``shapes``: name -> (trailing shape, dtype, fill value)."""
        return cls(
            torch.full((rows, n), -math.inf, dtype=torch.float64),
            torch.full((rows, n), EMPTY_GID, dtype=torch.int64),
            {k: torch.full((rows, n, *s), fill, dtype=dt) for k, (s, dt, fill) in shapes.items()},
        )


def heap_push(h: Heap, score: torch.Tensor, gid: torch.Tensor, data: dict[str, torch.Tensor]) -> Heap:
    """Merge candidates [R, M] into the heap [R, N]: keep the N highest scores per row (ties: lower gid)."""
    N = h.score.shape[1]
    S = torch.cat([h.score, score.to(torch.float64)], 1)
    G = torch.cat([h.gid, gid.to(torch.int64)], 1)
    o1 = torch.sort(G, dim=1, stable=True).indices
    o2 = torch.sort(-S.gather(1, o1), dim=1, stable=True).indices
    order = o1.gather(1, o2)[:, :N]  # [R, N]
    out = {}
    for k, v in h.data.items():
        both = torch.cat([v, data[k].to(v.dtype)], 1)
        idx = order.view(*order.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
        out[k] = both.gather(1, idx)
    return Heap(S.gather(1, order), G.gather(1, order), out)


def mix_key(seed: int, gid: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random key in [0, 2^31) per (seed, token, latent): the reservoir priority.
    31-bit masks keep every product inside int64."""
    m = 0x7FFFFFFF
    x = (gid * 0x9E3779B1 + latent * 0x85EBCA77 + (seed + 1) * 0xC2B2AE3D) & m
    for mult in (0x7FEB352D, 0x846CA68B):
        x = x ^ (x >> 16)
        x = (x * mult) & m
    return x ^ (x >> 15)


def hist_bin(act: torch.Tensor) -> torch.Tensor:
    """Histogram bin of positive activations (clamped into [0, HIST_BINS))."""
    b = torch.floor((torch.log10(act.double()) - HIST_LO) * HIST_PER_DECADE)
    return b.clamp(0, HIST_BINS - 1).long()


def window_index(t: torch.Tensor, T: int, left: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of a window around t [M] -> (clamped positions [M, W], valid mask [M, W])."""
    pos = t[:, None] + torch.arange(-left, right + 1, device=t.device)[None]
    valid = (pos >= 0) & (pos < T)
    return pos.clamp(0, T - 1), valid


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class DashboardState:
    """Everything the pass keeps (all mergeable).

    Attributes:
        d_sae: C.
        n_tokens: tokens counted (positions after ``skip_first``).
        n_influence_tokens: of those, tokens that had the influence pass.
        rows_done: rows this state has seen (per rank: its own rows).
        count: [C] int64 tokens where the latent is active (> 0).
        act_sum: [C] float64 sum of its activations.
        hist: [C, HIST_BINS] int64 activation histogram (log-spaced: bin i starts at
            10 ** (HIST_LO + i / HIST_PER_DECADE)).
        top: Heap over C: data ``ids`` [W] int32, ``acts`` [W] float32.
        band: Heap over C * N_BANDS (row c * N_BANDS + band): score = -mix_key, data ``ids``, ``acts``,
            ``value`` [] float32.
        infl: Heap over C: data ``ids``, ``infl`` [W] g per window token, ``acts`` [W], ``pred`` [P] int32
            model's top next-token ids at the maximum, ``pred_logp`` [P], ``next`` [] int32 the actual next
            token, ``next_logp`` [].
    """

    d_sae: int
    n_tokens: int
    n_influence_tokens: int
    rows_done: int
    count: torch.Tensor
    act_sum: torch.Tensor
    hist: torch.Tensor
    top: Heap
    band: Heap
    infl: Heap

    @classmethod
    def new(cls, d_sae: int, n_top: int, n_band: int, n_influence: int, window: int, n_pred: int) -> "DashboardState":
        W, P, f32, i32 = window, n_pred, torch.float32, torch.int32
        ctx = {"ids": ((W,), i32, -1), "acts": ((W,), f32, 0.0)}
        return cls(
            d_sae,
            0,
            0,
            0,
            torch.zeros(d_sae, dtype=torch.int64),
            torch.zeros(d_sae, dtype=torch.float64),
            torch.zeros(d_sae, HIST_BINS, dtype=torch.int64),
            Heap.empty(d_sae, n_top, ctx),
            Heap.empty(d_sae * N_BANDS, n_band, {**ctx, "value": ((), f32, 0.0)}),
            Heap.empty(
                d_sae,
                n_influence,
                {
                    **ctx,
                    "infl": ((W,), f32, 0.0),
                    "pred": ((P,), i32, -1),
                    "pred_logp": ((P,), f32, 0.0),
                    "next": ((), i32, -1),
                    "next_logp": ((), f32, 0.0),
                },
            ),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"count": self.count, "act_sum": self.act_sum, "hist": self.hist}
        for name in ("top", "band", "infl"):
            h: Heap = getattr(self, name)
            out[f"{name}.score"], out[f"{name}.gid"] = h.score, h.gid
            out.update({f"{name}.data.{k}": v for k, v in h.data.items()})
        return out

    def save(self, path: Path, fingerprint: str) -> None:
        from safetensors.torch import save

        from .io import atomic_write_bytes

        meta = {
            "d_sae": self.d_sae,
            "n_tokens": self.n_tokens,
            "n_influence_tokens": self.n_influence_tokens,
            "rows_done": self.rows_done,
            "fingerprint": fingerprint,
        }
        atomic_write_bytes(
            path, save({k: v.contiguous() for k, v in self.tensors().items()}, metadata={"state": json.dumps(meta)})
        )

    @classmethod
    def load(cls, path: Path, fingerprint: str | None = None) -> "DashboardState":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["state"])
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # truncated / foreign file
            raise GradsaeError(
                f"{path}: unreadable dashboard state ({type(e).__name__}): delete it to start over"
            ) from None
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            raise GradsaeError(
                f"{path} was written with other settings (SAE, corpus, sizes or seed): use another "
                "--out, or delete its state/ folder to start over"
            )

        def heap(name):
            pre = f"{name}.data."
            return Heap(
                t[f"{name}.score"], t[f"{name}.gid"], {k[len(pre) :]: v for k, v in t.items() if k.startswith(pre)}
            )

        return cls(
            meta["d_sae"],
            meta["n_tokens"],
            meta["n_influence_tokens"],
            meta["rows_done"],
            t["count"],
            t["act_sum"],
            t["hist"],
            heap("top"),
            heap("band"),
            heap("infl"),
        )


def merge_states(a: DashboardState, b: DashboardState) -> DashboardState:
    """The state of the union of the two token sets (e.g. two torchrun ranks). Exact and symmetric for
    the heaps (ties broken by global token id); counts and histograms add."""
    if a.d_sae != b.d_sae or a.top.score.shape != b.top.score.shape or a.infl.score.shape != b.infl.score.shape:
        raise GradsaeError("cannot merge dashboard states built with different SAEs or sizes")
    return DashboardState(
        a.d_sae,
        a.n_tokens + b.n_tokens,
        a.n_influence_tokens + b.n_influence_tokens,
        a.rows_done + b.rows_done,
        a.count + b.count,
        a.act_sum + b.act_sum,
        a.hist + b.hist,
        heap_push(a.top, b.top.score, b.top.gid, b.top.data),
        heap_push(a.band, b.band.score, b.band.gid, b.band.data),
        heap_push(a.infl, b.infl.score, b.infl.gid, b.infl.data),
    )


# ---------------------------------------------------------------------------------------------
# One batch (pure tensor code, tested on toy tensors)
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchEvidence:
    """What one batch contributes.

    Attributes:
        ids: [B, T] token ids.
        rows: [B] global row index of each row.
        H: [B, T, C] latent activations (positions before ``skip_first`` already zeroed).
        g: [B, T, C] influence grad x act, or None (activation-only batch).
        pred: [B, T, P] the model's top next-token ids (with g).
        pred_logp: [B, T, P] their log-probabilities.
        next_logp: [B, T] log-probability of the actual next token (last position: 0).
        n_tokens: positions counted (B * (T - skip_first)).
    """

    ids: torch.Tensor
    rows: torch.Tensor
    H: torch.Tensor
    n_tokens: int
    g: torch.Tensor | None = None
    pred: torch.Tensor | None = None
    pred_logp: torch.Tensor | None = None
    next_logp: torch.Tensor | None = None


def _row_max_candidates(X: torch.Tensor, rows: torch.Tensor, T: int):
    """Per row and latent the maximum of X [B, T, C] -> score [C, B] (-inf where <= 0), b, t [C, B], gid."""
    B, _, C = X.shape
    mx, arg = X.max(1)  # [B, C]
    score = mx.T.double().masked_fill(mx.T <= 0, -math.inf)
    b = torch.arange(B, device=X.device)[None].expand(C, B)
    t = arg.T
    gid = rows.to(X.device)[b] * T + t
    return score, b, t, gid


def _windows(
    ids: torch.Tensor, X: torch.Tensor, b: torch.Tensor, t: torch.Tensor, c: torch.Tensor, left: int, right: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window token ids [M, W] (-1 outside the row) and X[b, pos, c] [M, W] (0 outside) for M entries."""
    T = ids.shape[1]
    pos, valid = window_index(t, T, left, right)
    wid = ids[b[:, None], pos].to(torch.int32).masked_fill(~valid, -1)
    wx = X[b[:, None], pos, c[:, None]].float().masked_fill(~valid, 0.0)
    return wid, wx


def update_state(st: DashboardState, ev: BatchEvidence, *, left: int, right: int, seed: int) -> DashboardState:
    """Fold one batch into the state (vectorised over rows, positions and latents; updates ``st`` in place
    and returns it)."""
    ids, H = ev.ids, ev.H
    B, T, C = H.shape
    W = left + right + 1
    st.n_tokens += ev.n_tokens
    st.rows_done += B
    # density and histogram from the sparse (token, latent) pairs
    bb, tt, cc = torch.nonzero(H > 0, as_tuple=True)
    act = H[bb, tt, cc]
    st.count += torch.bincount(cc, minlength=C).to(torch.int64)
    st.act_sum.index_add_(0, cc, act.double())
    hb = hist_bin(act)
    st.hist.view(-1).index_add_(0, cc * HIST_BINS + hb, torch.ones_like(hb))
    # top-activating contexts: at most one per row and latent
    score, b, t, gid = _row_max_candidates(H, ev.rows, T)
    cidx = torch.arange(C, device=H.device)[:, None].expand(C, B)
    wid, wx = _windows(ids, H, b.reshape(-1), t.reshape(-1), cidx.reshape(-1), left, right)
    st.top = heap_push(st.top, score, gid, {"ids": wid.view(C, B, W), "acts": wx.view(C, B, W)})
    # band reservoirs: per (latent, band) the R active tokens with the smallest hash key
    R = st.band.score.shape[1]
    if act.numel():
        pgid = ev.rows.to(H.device)[bb] * T + tt
        key = mix_key(seed, pgid, cc)
        group = cc * N_BANDS + hb // BAND_BINS
        o = torch.sort(key, stable=True).indices
        o = o[torch.sort(group[o], stable=True).indices]  # by group, then key
        gs = group[o]
        rank = torch.arange(gs.numel(), device=H.device) - torch.searchsorted(gs, gs, right=False)
        keep = o[rank < R]
        kr = rank[rank < R]
        rows_, slot = group[keep], kr
        nr = C * N_BANDS
        cand_score = torch.full((nr, R), -math.inf, dtype=torch.float64)
        cand_gid = torch.full((nr, R), EMPTY_GID, dtype=torch.int64)
        cand_score[rows_, slot] = -key[keep].double()
        cand_gid[rows_, slot] = pgid[keep]
        wid, wx = _windows(ids, H, bb[keep], tt[keep], cc[keep], left, right)
        data = {
            "ids": torch.full((nr, R, W), -1, dtype=torch.int32),
            "acts": torch.zeros(nr, R, W),
            "value": torch.zeros(nr, R),
        }
        data["ids"][rows_, slot] = wid
        data["acts"][rows_, slot] = wx
        data["value"][rows_, slot] = act[keep].float()
        st.band = heap_push(st.band, cand_score, cand_gid, data)
    # influence contexts (output side)
    if ev.g is not None:
        st.n_influence_tokens += ev.n_tokens
        score, b, t, gid = _row_max_candidates(ev.g, ev.rows, T)
        bf, tf, cf = b.reshape(-1), t.reshape(-1), cidx.reshape(-1)
        wid, wg = _windows(ids, ev.g, bf, tf, cf, left, right)
        _, wx = _windows(ids, H, bf, tf, cf, left, right)
        nxt = torch.where(tf + 1 < T, ids[bf, (tf + 1).clamp(max=T - 1)], torch.full_like(tf, -1))
        P = st.infl.data["pred"].shape[2]
        st.infl = heap_push(
            st.infl,
            score,
            gid,
            {
                "ids": wid.view(C, B, W),
                "infl": wg.view(C, B, W),
                "acts": wx.view(C, B, W),
                "pred": ev.pred[bf, tf].to(torch.int32).view(C, B, P),
                "pred_logp": ev.pred_logp[bf, tf].view(C, B, P),
                "next": nxt.to(torch.int32).view(C, B),
                "next_logp": ev.next_logp[bf, tf].view(C, B),
            },
        )
    return st


# ---------------------------------------------------------------------------------------------
# The model side of one batch
# ---------------------------------------------------------------------------------------------


def batch_evidence(
    model,
    sae,
    layer: int,
    ids: torch.Tensor,
    rows: torch.Tensor,
    *,
    skip_first: int,
    influence: bool,
    error: str = "keep",
    n_pred: int = 5,
) -> BatchEvidence:
    """Latents (and, with ``influence``, grad x act on the rows' next-token log-likelihood) for ids [B, T].

    Activation-only batches stop the forward pass after block ``layer``; influence batches run the whole
    model with the SAE spliced in (``error``) and one backward pass from Σ_m log p(x_{m+1} | x_≤m).
    """
    from .splice import ResidualCapture, Splice

    B, T = ids.shape
    n_tok = B * max(T - skip_first, 0)
    dev = sae.W_dec.device
    if not influence:
        with torch.no_grad(), ResidualCapture(model, [layer], stop=True) as cap:
            cap.run(input_ids=ids, use_cache=False)
            H = sae.encode(cap.acts[layer].to(sae.W_dec.dtype)).float()
        H[:, :skip_first] = 0
        return BatchEvidence(ids, rows, H, n_tok)
    with Splice(model, sae, layer=layer, error=error, grad=True) as s:
        logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
        V = logits.shape[-1]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1).to(logits.device), reduction="sum"
        )
        (-nll).backward()  # target: Σ log p(next token); rows are independent
        Hl = s.latents
        g = (Hl.grad * Hl).detach().float()
        H = Hl.detach().float()
    with torch.no_grad():
        lg = logits.detach().float()
        lse = lg.logsumexp(-1)  # [B, T]
        top = lg.topk(n_pred, dim=-1)
        pred_logp = top.values - lse[..., None]
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], 1).to(lg.device)
        next_logp = lg.gather(-1, nxt[..., None]).squeeze(-1) - lse
        next_logp[:, -1] = 0.0
    del logits, lg
    H[:, :skip_first] = 0
    g[:, :skip_first] = 0
    return BatchEvidence(
        ids, rows, H.to(dev), n_tok, g.to(dev), top.indices.to(dev), pred_logp.to(dev), next_logp.to(dev)
    )


# ---------------------------------------------------------------------------------------------
# Records (dashboard.json)
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    """A window of tokens around one token of the corpus.

    Attributes:
        ids: [W] token ids (-1 outside the row); their text is ``Dashboard.tokens[id]``.
        acts: [W] the latent's activation on each window token.
        at: index in the window of the token this context was chosen for.
        value: the activation there (for band samples too).
        row / pos: where it is in the corpus stream (row index, position in the row).
        percentile: for band samples, the activation's percentile among the latent's active tokens.
    """

    ids: list[int]
    acts: list[float]
    at: int
    value: float
    row: int
    pos: int
    percentile: float | None = None


@dataclass
class TokenMove:
    """A next token and how the latent's direct path moved its log-probability at one position.

    Attributes:
        id: token id.
        logp: the model's log p(token | context) at that position.
        dlogp: first-order change of that log-probability caused by the latent, see ``moved_logprobs``.
    """

    id: int
    logp: float
    dlogp: float


@dataclass
class InfluenceContext(Context):
    """A context chosen for the latent's influence (``value`` = g at the chosen token).

    Attributes:
        infl: [W] g = H · ∂(Σ log p(next))/∂H on each window token.
        act: the activation at the chosen token.
        next: the actual next token after the chosen one, with its log p and Δ log p (None at a row end).
        moved: the model's top next-token predictions at the chosen token with their Δ log p, largest |Δ| first.
    """

    infl: list[float] = field(default_factory=list)
    act: float = 0.0
    next: TokenMove | None = None
    moved: list[TokenMove] = field(default_factory=list)


@dataclass
class TokenScore:
    id: int
    value: float


@dataclass
class Neighbour:
    latent: int
    cos: float


@dataclass
class LatentRecord:
    """Everything the dashboard knows about one latent (see docs/dashboard.md for each field)."""

    latent: int
    count: int
    density: float
    mean_act: float
    max_act: float
    hist_lo: int
    hist: list[int]
    top: list[Context]
    bands: list[Context]
    influence: list[InfluenceContext]
    promoted: list[TokenScore]
    suppressed: list[TokenScore]
    neighbours: list[Neighbour]
    max_influence: float = 0.0


@dataclass
class DashboardMeta:
    schema: str
    model: str
    sae: str
    hook: str
    d_sae: int
    data: list[str]
    n_tokens: int
    n_influence_tokens: int
    left: int
    right: int
    hist_lo_log10: float
    hist_per_decade: int
    seconds: float
    config: dict
    definitions: dict[str, str]


@dataclass
class Dashboard:
    meta: DashboardMeta
    tokens: dict[int, str]
    latents: list[LatentRecord]

    def __post_init__(self):
        self._by_latent = {r.latent: r for r in self.latents}

    def latent(self, c: int) -> LatentRecord | None:
        return self._by_latent.get(int(c))

    def token(self, i: int) -> str:
        return "" if i < 0 else self.tokens.get(int(i), f"<{i}>")

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "meta": asdict(self.meta),
            "tokens": {str(k): v for k, v in self.tokens.items()},
            "latents": [asdict(r) for r in self.latents],
        }


DEFINITIONS = {
    "density": "share of counted tokens (positions after skip_first) where the latent is > 0",
    "top": "contexts (at most one per row) where the activation is highest",
    "bands": "a seeded random active token from each half-decade activation band (reservoir by hash key), with "
    "its percentile among the latent's active tokens: the typical, weaker activations",
    "influence": "g[n, c] = H[n, c] * d(sum_m log p(x_{m+1} | x_<=m)) / dH[n, c] on the row (GradSAE grad x act "
    "on the next-token log-likelihood); contexts where g is largest, i.e. where the latent helps the "
    "model predict the text most",
    "dlogp": "first-order change of log p(v) at the chosen position from the latent's direct path (logit lens, "
    "final norm treated as a positive scale): act * (s_v - sum_w p~_w s_w), s = W_U . W_dec[c], p~ the "
    "model's top predictions renormalised; its sign and ranking are meaningful, its scale approximate",
    "promoted": "tokens with the largest W_U . W_dec[c] (suppressed: the smallest)",
    "neighbours": "latents whose decoder rows have the highest cosine similarity with W_dec[c]",
    "hist": "counts of active tokens in log-spaced bins; bin i covers "
    "[10^(lo + i/per_decade), 10^(lo + (i+1)/per_decade))",
}


def _r(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else 0.0


def _rl(xs, digits: int = 3) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in xs]


def moved_logprobs(
    act: torch.Tensor, s_tok: torch.Tensor, s_pred: torch.Tensor, pred_logp: torch.Tensor
) -> torch.Tensor:
    """Direct-path first-order Δ log p of tokens at one position.

    Args:
        act: [...] the latent's activation at the position.
        s_tok: [..., K] W_U[v] · W_dec[c] for the tokens asked about.
        s_pred: [..., P] the same for the model's top-P predictions there.
        pred_logp: [..., P] their log-probabilities (renormalised over the P to approximate E_p[s]).
    Returns:
        [..., K] act · (s_v - Σ_w p~_w s_w).
    """
    p = pred_logp.softmax(-1)
    return act[..., None] * (s_tok - (p * s_pred).sum(-1, keepdim=True))


def _percentile(hist_row: torch.Tensor, value: float) -> float:
    total = int(hist_row.sum())
    if total == 0:
        return 0.0
    b = int(hist_bin(torch.tensor([value])))
    below = int(hist_row[:b].sum()) + 0.5 * int(hist_row[b])
    return 100.0 * below / total


def finalize(
    st: DashboardState, model, tok, sae, meta: DashboardMeta, *, n_promoted: int = 8, n_neighbours: int = 6
) -> Dashboard:
    """Turn a state into records (weights-only parts computed here: promoted tokens and neighbours)."""
    from .hooks import unembedding

    C = st.d_sae
    left = meta.left
    W_U = unembedding(model).detach().float().cpu()  # [V, D]
    W_dec = sae.W_dec.detach().float().cpu()  # [C, D]
    # promoted / suppressed, in chunks of latents ([C, V] would be large)
    pro_v, pro_i, sup_v, sup_i = [], [], [], []
    for s in range(0, C, 512):
        logits = W_dec[s : s + 512] @ W_U.T
        a, b = logits.topk(n_promoted, -1), (-logits).topk(n_promoted, -1)
        pro_v.append(a.values), pro_i.append(a.indices), sup_v.append(-b.values), sup_i.append(b.indices)
    pro_v, pro_i, sup_v, sup_i = (torch.cat(x) for x in (pro_v, pro_i, sup_v, sup_i))
    unit = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2.0)
    nb = cos.topk(min(n_neighbours, max(C - 1, 1)), -1)
    # Δ log p for the influence contexts: s = W_U[v] · W_dec[c] for predictions and the next token
    ih = st.infl
    pred = ih.data["pred"].long()  # [C, N, P]
    nxt = ih.data["next"].long()  # [C, N]
    s_pred = torch.einsum("cnpd,cd->cnp", W_U[pred.clamp_min(0)], W_dec)
    s_next = torch.einsum("cnd,cd->cn", W_U[nxt.clamp_min(0)], W_dec)
    act_at = ih.data["acts"][:, :, left]
    d_pred = moved_logprobs(act_at, s_pred, s_pred, ih.data["pred_logp"])
    d_next = moved_logprobs(act_at, s_next[..., None], s_pred, ih.data["pred_logp"])[..., 0]
    used: set[int] = set()
    mean = st.act_sum / st.count.clamp_min(1)
    records = []
    T = row_length(meta)

    def ctxs(h: Heap, row: int) -> list[tuple[int, float, int]]:
        """(slot, score, gid) of the filled slots of one heap row."""
        return [
            (j, sc, g) for j, (sc, g) in enumerate(zip(h.score[row].tolist(), h.gid[row].tolist())) if math.isfinite(sc)
        ]

    for c in range(C):
        top = []
        for j, sc, gid in ctxs(st.top, c):
            ids = st.top.data["ids"][c, j].tolist()
            used.update(ids)
            top.append(Context(ids, _rl(st.top.data["acts"][c, j].tolist()), left, _r(sc), gid // T, gid % T))
        top_gids = {int(g) for g in st.top.gid[c].tolist()}
        bands = []
        for band in range(N_BANDS):
            row = c * N_BANDS + band
            for j, sc, gid in ctxs(st.band, row):
                if gid in top_gids:
                    continue
                ids = st.band.data["ids"][row, j].tolist()
                used.update(ids)
                v = float(st.band.data["value"][row, j])
                bands.append(
                    Context(
                        ids,
                        _rl(st.band.data["acts"][row, j].tolist()),
                        left,
                        _r(v),
                        gid // T,
                        gid % T,
                        percentile=round(_percentile(st.hist[c], v), 1),
                    )
                )
        bands.sort(key=lambda x: -x.value)
        infl = []
        for j, sc, gid in ctxs(ih, c):
            ids = ih.data["ids"][c, j].tolist()
            used.update(ids)
            P = pred.shape[2]
            moves = [
                TokenMove(
                    int(pred[c, j, p]), _r(float(ih.data["pred_logp"][c, j, p]), 3), _r(float(d_pred[c, j, p]), 3)
                )
                for p in range(P)
                if int(pred[c, j, p]) >= 0
            ]
            moves.sort(key=lambda m: -abs(m.dlogp))
            used.update(m.id for m in moves)
            nx = int(nxt[c, j])
            nmove = (
                TokenMove(nx, _r(float(ih.data["next_logp"][c, j]), 3), _r(float(d_next[c, j]), 3)) if nx >= 0 else None
            )
            if nx >= 0:
                used.add(nx)
            infl.append(
                InfluenceContext(
                    ids,
                    _rl(ih.data["acts"][c, j].tolist()),
                    left,
                    _r(sc),
                    gid // T,
                    gid % T,
                    infl=_rl(ih.data["infl"][c, j].tolist()),
                    act=_r(float(act_at[c, j])),
                    next=nmove,
                    moved=moves,
                )
            )
        h = st.hist[c]
        nz = torch.nonzero(h).flatten()
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.numel() else (0, 0)
        promoted = [TokenScore(int(i), _r(float(v), 3)) for v, i in zip(pro_v[c], pro_i[c])]
        suppressed = [TokenScore(int(i), _r(float(v), 3)) for v, i in zip(sup_v[c], sup_i[c])]
        used.update(t.id for t in promoted + suppressed)
        records.append(
            LatentRecord(
                latent=c,
                count=int(st.count[c]),
                density=_r(float(st.count[c]) / max(st.n_tokens, 1)),
                mean_act=_r(float(mean[c])),
                max_act=top[0].value if top else 0.0,
                hist_lo=lo,
                hist=h[lo:hi].tolist(),
                top=top,
                bands=bands,
                influence=infl,
                promoted=promoted,
                suppressed=suppressed,
                neighbours=[Neighbour(int(i), _r(float(v), 3)) for v, i in zip(nb.values[c], nb.indices[c])],
                max_influence=infl[0].value if infl else 0.0,
            )
        )
    used.discard(-1)
    tokens = {i: tok.decode([i]) for i in sorted(used)}
    meta.n_tokens, meta.n_influence_tokens = st.n_tokens, st.n_influence_tokens
    return Dashboard(meta, tokens, records)


def row_length(meta: DashboardMeta) -> int:
    """T, to split a global token id (row * T + position)."""
    return int(meta.config["context_length"])


# ---------------------------------------------------------------------------------------------
# Reading dashboards back, and finding the one of an SAE
# ---------------------------------------------------------------------------------------------

DASHBOARD_FILES = ("dashboard.json", "dashboard.json.gz")


def dashboard_from_json(obj: dict, where: str = "dashboard") -> Dashboard:
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise GradsaeError(f"{where} is not a gradsae dashboard ({SCHEMA}): rebuild it with gradsae dashboard")

    def ctx(d: dict) -> Context:
        return Context(**d)

    def ictx(d: dict) -> InfluenceContext:
        d = dict(d)
        d["next"] = TokenMove(**d["next"]) if d.get("next") else None
        d["moved"] = [TokenMove(**m) for m in d.get("moved", [])]
        return InfluenceContext(**d)

    lats = []
    for r in obj["latents"]:
        r = dict(r)
        r["top"] = [ctx(x) for x in r["top"]]
        r["bands"] = [ctx(x) for x in r["bands"]]
        r["influence"] = [ictx(x) for x in r["influence"]]
        r["promoted"] = [TokenScore(**x) for x in r["promoted"]]
        r["suppressed"] = [TokenScore(**x) for x in r["suppressed"]]
        r["neighbours"] = [Neighbour(**x) for x in r["neighbours"]]
        lats.append(LatentRecord(**r))
    m = dict(obj["meta"])
    m.pop("schema", None)
    return Dashboard(DashboardMeta(schema=SCHEMA, **m), {int(k): v for k, v in obj["tokens"].items()}, lats)


def load_dashboard(path: str | Path) -> Dashboard:
    """Read dashboard.json (or .json.gz, or a folder holding one)."""
    import gzip

    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / n for n in DASHBOARD_FILES if (p / n).is_file()]
        if not found:
            raise GradsaeError(f"no dashboard.json in {p}: build one with gradsae dashboard --out {p}")
        p = found[0]
    if not p.is_file():
        raise GradsaeError(f"no dashboard at {p}: build one with gradsae dashboard, or drop --dashboard")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        obj = json.loads(raw)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GradsaeError(
            f"{p}: unreadable dashboard ({type(e).__name__}): rebuild it with gradsae dashboard"
        ) from None
    return dashboard_from_json(obj, str(p))


def find_dashboard(sae_spec: str | Path) -> Path | None:
    """The dashboard file next to an SAE (bundled name or folder), or None."""
    from .formats import bundled_saes

    spec = str(sae_spec)
    folder = bundled_saes().get(spec)
    if folder is None:
        p = Path(spec).expanduser()
        folder = p if p.is_dir() else p.parent if p.is_file() else None
    if folder is None:
        return None
    for n in DASHBOARD_FILES:
        if (folder / n).is_file():
            return folder / n
    return None


def resolve_dashboard(option: str, sae_spec: str) -> Dashboard | None:
    """What ``--dashboard`` means on explain / influence: a path, '' = find it next to the SAE, 'none' = off."""
    if option.strip().lower() == "none":
        return None
    if option:
        return load_dashboard(option)
    found = find_dashboard(sae_spec)
    return load_dashboard(found) if found else None


def card_data(dash: Dashboard, c: int, n_contexts: int = 3) -> dict | None:
    """A compact, self-describing card for one latent (tokens as text) for JSON outputs."""
    r = dash.latent(c)
    if r is None:
        return None

    def text(ctx: Context) -> dict:
        return {
            "tokens": [dash.token(i) for i in ctx.ids if i >= 0],
            "at": ctx.at - sum(1 for i in ctx.ids[: ctx.at] if i < 0),
            "value": ctx.value,
        }

    return {
        "latent": r.latent,
        "density": r.density,
        "mean_act": r.mean_act,
        "max_act": r.max_act,
        "top": [text(x) for x in r.top[:n_contexts]],
        "influence": [dict(text(x), next=dash.token(x.next.id) if x.next else None) for x in r.influence[:n_contexts]],
        "promoted": [dash.token(t.id) for t in r.promoted],
        "suppressed": [dash.token(t.id) for t in r.suppressed],
        "neighbours": [n.latent for n in r.neighbours],
    }


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------

_RESULT_KEYS = (
    "sae",
    "model",
    "data",
    "text_field",
    "max_tokens",
    "influence_tokens",
    "context_length",
    "skip_first",
    "n_top",
    "n_band",
    "n_influence",
    "left",
    "right",
    "n_predictions",
    "error",
    "layer",
    "seed",
    "dtype",
)


def fingerprint(cfg: DashboardConfig, world: int) -> str:
    """What a resumed state must agree on (batch size, checkpointing and output options do not matter)."""
    d = {k: getattr(cfg, k) for k in _RESULT_KEYS}
    d["world"] = world
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check(cfg: DashboardConfig) -> None:
    for name in (
        "max_tokens",
        "context_length",
        "batch_size",
        "n_top",
        "n_influence",
        "n_band",
        "n_predictions",
        "checkpoint_every",
    ):
        if getattr(cfg, name) < 1:
            raise GradsaeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: give at least 1")
    for name in ("left", "right", "skip_first", "n_promoted", "n_neighbours", "html_latents"):
        if getattr(cfg, name) < 0:
            raise GradsaeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: give 0 or more")
    if cfg.skip_first >= cfg.context_length - 1:
        raise GradsaeError(f"--skip-first {cfg.skip_first} leaves no tokens in rows of {cfg.context_length}: lower it")


def corpus_rows(
    cfg: DashboardConfig, tok, prepend_bos: bool, rank: int = 0, world: int = 1, skip: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """(global row index, ids [T]) of this rank's rows within the budget, after its first ``skip`` rows."""
    from .corpus import iter_documents, iter_token_rows

    n_rows = max(1, cfg.max_tokens // cfg.context_length)
    mine = 0
    for i, row in enumerate(
        iter_token_rows(iter_documents(cfg.data, cfg.text_field), tok, cfg.context_length, prepend_bos)
    ):
        if i >= n_rows:
            break
        if i % world != rank:
            continue
        mine += 1
        if mine <= skip:
            continue
        yield i, torch.from_numpy(row.astype("int64"))


def build_state(
    cfg: DashboardConfig,
    model,
    tok,
    sae,
    layer: int,
    *,
    rank: int = 0,
    world: int = 1,
    state_path: Path | None = None,
    stop_after: int | None = None,
) -> DashboardState:
    """Stream this rank's rows into a state, resuming from ``state_path`` when it exists and checkpointing
    into it every ``checkpoint_every`` batches. ``stop_after`` (tests) stops after that many batches."""
    from tqdm.auto import tqdm

    fp = fingerprint(cfg, world)
    W = cfg.left + cfg.right + 1
    if state_path is not None and state_path.is_file():
        st = DashboardState.load(state_path, fp)
        log.info("resuming from %s (%d rows done)", state_path, st.rows_done)
    else:
        st = DashboardState.new(sae.d_sae, cfg.n_top, cfg.n_band, cfg.n_influence, W, cfg.n_predictions)
    n_rows = max(1, cfg.max_tokens // cfg.context_length)
    n_mine = len(range(rank, n_rows, world))
    infl_rows = n_rows if cfg.influence_tokens < 0 else cfg.influence_tokens // cfg.context_length
    bar = tqdm(
        total=n_mine * cfg.context_length,
        initial=st.rows_done * cfg.context_length,
        unit="tok",
        unit_scale=True,
        desc=f"dashboard{'' if world == 1 else f' rank {rank}'}",
        disable=not cfg.progress or rank != 0,
    )
    prepend_bos = bool(getattr(sae.cfg, "prepend_bos", True))
    batch: list[tuple[int, torch.Tensor]] = []
    n_batches = 0

    def flush():
        nonlocal st, n_batches
        # influence rows come first in the stream; a batch is split so each part is all-or-nothing
        for part in ([r for r in batch if r[0] < infl_rows], [r for r in batch if r[0] >= infl_rows]):
            if not part:
                continue
            ids = torch.stack([r[1] for r in part]).to(sae.W_dec.device)
            rows = torch.tensor([r[0] for r in part], dtype=torch.int64)
            ev = batch_evidence(
                model,
                sae,
                layer,
                ids,
                rows,
                skip_first=cfg.skip_first,
                influence=part[0][0] < infl_rows,
                error=cfg.error,
                n_pred=cfg.n_predictions,
            )
            ev.ids, ev.rows = ev.ids.cpu(), rows
            for name in ("H", "g", "pred", "pred_logp", "next_logp"):
                v = getattr(ev, name)
                if v is not None:
                    setattr(ev, name, v.cpu())
            st = update_state(st, ev, left=cfg.left, right=cfg.right, seed=cfg.seed)
        bar.update(len(batch) * cfg.context_length)
        batch.clear()
        n_batches += 1
        if state_path is not None and n_batches % cfg.checkpoint_every == 0:
            st.save(state_path, fp)

    for item in corpus_rows(cfg, tok, prepend_bos, rank, world, skip=st.rows_done):
        batch.append(item)
        if len(batch) == cfg.batch_size:
            flush()
            if stop_after is not None and n_batches >= stop_after:
                bar.close()
                return st
    if batch:
        flush()
    bar.close()
    if state_path is not None:
        st.save(state_path, fp)
    return st


def run(cfg: DashboardConfig) -> Dashboard | None:
    from .dashboard_html import write_dashboard_page
    from .formats import load_sae
    from .io import atomic_write_text, output_lock
    from .model import load_model, model_name
    from .splice import check_compatible

    _check(cfg)
    if cfg.render:
        found = find_dashboard(cfg.render)
        dash = load_dashboard(found if found is not None else cfg.render)
        with output_lock(cfg.out):
            page = write_dashboard_page(Path(cfg.out) / "dashboard.html", dash, max_latents=cfg.html_latents)
        print(f"wrote {page}")
        return dash
    rt = start(cfg, "dashboard")
    ranks = Dist("cpu")  # gloo: the ranks only meet at barriers, whatever device the model is on
    out = Path(cfg.out)
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    sae = load_sae(cfg.sae, device=str(next(model.parameters()).device), dtype="float32")
    layer = check_compatible(model, sae, cfg.layer or None)
    state_dir = out / "state"
    lock_dir = out if ranks.world == 1 else out / "state" / f"rank{ranks.rank}"
    try:
        with output_lock(lock_dir):
            st = build_state(
                cfg,
                model,
                tok,
                sae,
                layer,
                rank=ranks.rank,
                world=ranks.world,
                state_path=state_dir / f"rank{ranks.rank}.safetensors",
            )
        ranks.barrier()
        if ranks.rank != 0:
            return None
        for r in range(1, ranks.world):
            st = merge_states(
                st, DashboardState.load(state_dir / f"rank{r}.safetensors", fingerprint(cfg, ranks.world))
            )
    finally:
        ranks.close()
    if st.n_tokens == 0:
        raise GradsaeError(
            f"the corpus {cfg.data} gave no rows of {cfg.context_length} tokens: add data or lower --context-length"
        )
    meta = DashboardMeta(
        schema=SCHEMA,
        model=model_name(model),
        sae=cfg.sae,
        hook=sae.cfg.hook_name or str(layer),
        d_sae=sae.d_sae,
        data=list(cfg.data),
        n_tokens=st.n_tokens,
        n_influence_tokens=st.n_influence_tokens,
        left=cfg.left,
        right=cfg.right,
        hist_lo_log10=HIST_LO,
        hist_per_decade=HIST_PER_DECADE,
        seconds=round(time.perf_counter() - t0, 1),
        config={**asdict(cfg), "runtime": rt.as_config()},
        definitions=DEFINITIONS,
    )
    dash = finalize(st, model, tok, sae, meta, n_promoted=cfg.n_promoted, n_neighbours=cfg.n_neighbours)
    with output_lock(out):
        # compact separators: an indented file of 4096 latents is three times larger
        atomic_write_text(out / "dashboard.json", json.dumps(dash.to_json(), ensure_ascii=False, separators=(",", ":")))
        write_dashboard_page(out / "dashboard.html", dash, max_latents=cfg.html_latents)
    alive = sum(1 for r in dash.latents if r.count)
    print(
        f"dashboard: {st.n_tokens} tokens ({st.n_influence_tokens} with influence), {alive}/{sae.d_sae} latents "
        f"active, {meta.seconds:.0f} s -> {out / 'dashboard.json'}, {out / 'dashboard.html'}"
    )
    return dash


def shrink(
    dash: Dashboard, *, n_top: int = 5, n_bands: int = 2, n_influence: int = 3, n_moved: int = 3, digits: int = 2
) -> Dashboard:
    """A smaller copy for shipping: fewer contexts per latent, band samples below the 90th percentile only,
    values rounded to ``digits`` significant digits, and the token table cut to the ids still used."""
    import copy

    def rl(xs):
        return [0 if v == 0 else float(f"{v:.{digits}g}") for v in xs]

    d = copy.deepcopy(dash)
    used: set[int] = set()
    for r in d.latents:
        r.top = r.top[:n_top]
        r.bands = [b for b in r.bands if (b.percentile or 0) < 90][:n_bands]
        r.influence = r.influence[:n_influence]
        for c in r.top + r.bands + r.influence:
            c.acts = rl(c.acts)
            used.update(c.ids)
        for c in r.influence:
            c.infl = rl(c.infl)
            c.moved = c.moved[:n_moved]
            used.update(m.id for m in c.moved)
            if c.next:
                used.add(c.next.id)
        used.update(t.id for t in r.promoted + r.suppressed)
    d.tokens = {i: t for i, t in d.tokens.items() if i in used}
    return Dashboard(d.meta, d.tokens, d.latents)
