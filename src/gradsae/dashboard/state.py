"""The dashboard's mergeable state: fixed-size heaps, histograms and their update from one batch's
evidence (pure tensor math, tested without a model)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import schema
from ..errors import GradsaeError


SCHEMA = "gradsae.dashboard/1"

# Histogram: fixed log-spaced edges so histograms from different ranks/resumes add up exactly.
HIST_LO = -3.0  # log10 of the lowest edge
HIST_PER_DECADE = 8
HIST_BINS = 7 * HIST_PER_DECADE  # 1e-3 .. 1e4; below/above are clamped into the first/last bin
BAND_BINS = 4  # histogram bins per reservoir band (a half decade)
N_BANDS = HIST_BINS // BAND_BINS
EMPTY_GID = torch.iinfo(torch.int64).max

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


_HEAPS = ("top", "band", "infl")
# the JSON part of a saved state
_META_SCHEMA = schema.Required(
    {
        "d_sae": schema.INT,
        "n_tokens": schema.INT,
        "n_influence_tokens": schema.INT,
        "rows_done": schema.INT,
        "fingerprint": str,
    }
)


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
        for name in _HEAPS:
            h: Heap = getattr(self, name)
            out[f"{name}.score"], out[f"{name}.gid"] = h.score, h.gid
            out.update({f"{name}.data.{k}": v for k, v in h.data.items()})
        return out

    def save(self, path: Path, fingerprint: str) -> None:
        from ..io import write_safetensors

        meta = {
            "d_sae": self.d_sae,
            "n_tokens": self.n_tokens,
            "n_influence_tokens": self.n_influence_tokens,
            "rows_done": self.rows_done,
            "fingerprint": fingerprint,
        }
        write_safetensors(path, self.tensors(), metadata={"state": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path, fingerprint: str | None = None) -> "DashboardState":
        """The state saved at ``path``; one line if it is damaged or (``fingerprint``) made with other settings."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["state"])
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # truncated / foreign file
            raise GradsaeError(
                f"{path}: unreadable dashboard state ({type(e).__name__}): delete it to start over"
            ) from None
        schema.check(meta, _META_SCHEMA, str(path))
        need = ("count", "act_sum", "hist", *(f"{h}.{x}" for h in _HEAPS for x in ("score", "gid")))
        missing = [k for k in need if k not in t]
        if missing:
            raise GradsaeError(f"{path}: dashboard state without {missing[0]!r}: delete it to start over")
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
