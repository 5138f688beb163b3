"""What a dashboard holds per latent (the card data model other pages import): records, ``finalize``
from a state, reading dashboards back, finding the one of an SAE, and ``shrink`` for shipping."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import GradsaeError
from .schema import check_dashboard_json
from .state import DashboardState, Heap, N_BANDS, SCHEMA, hist_bin


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
        texts: [W] each token's text, only where the window holds a character split over several tokens
            (byte-level BPE: emoji, many scripts), shown whole on the token that completes it; None elsewhere
            (the text is then ``Dashboard.tokens[id]``).
    """

    ids: list[int]
    acts: list[float]
    at: int
    value: float
    row: int
    pos: int
    percentile: float | None = None
    texts: list[str] | None = None

    def text(self, dash: "Dashboard", j: int) -> str:
        """The text of window token j."""
        return self.texts[j] if self.texts else dash.token(self.ids[j])


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
    sae_sha256: str = ""
    """``SAE.digest()`` of the SAE the dashboard describes (empty in dashboards from before it was recorded)."""


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
            "latents": [_drop_empty_texts(asdict(r)) for r in self.latents],
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
    from ..hooks import unembedding

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
    _whole_characters(records, tokens, tok)
    meta.n_tokens, meta.n_influence_tokens = st.n_tokens, st.n_influence_tokens
    return Dashboard(meta, tokens, records)


def _whole_characters(records: list[LatentRecord], tokens: dict[int, str], tok) -> None:
    """Give the contexts that hold a character split over several tokens their own per-token texts
    (``influence.token_texts``): decoded one by one, each piece would show U+FFFD. The pieces of a character
    cut by the window's edge show nothing."""
    from ..influence import token_texts

    split = {i for i, t in tokens.items() if "\ufffd" in t}
    if not split:
        return
    for r in records:
        for c in (*r.top, *r.bands, *r.influence):
            if any(i in split for i in c.ids):
                texts = iter(token_texts(tok, [i for i in c.ids if i >= 0]))
                # a piece of a character the window edge cut off is no character: shown as nothing
                c.texts = [_no_orphan(next(texts)) if i >= 0 else "" for i in c.ids]


def _no_orphan(text: str) -> str:
    """Drop the replacement characters of bytes whose character began or ends outside the window (the corpus
    was valid text: inside such a window U+FFFD only ever stands for such a cut-off piece)."""
    return text.replace("\ufffd", "")


def _drop_empty_texts(record: dict) -> dict:
    """A latent record as JSON, without ``texts: null`` on every context (most have none)."""
    for key in ("top", "bands", "influence"):
        for c in record.get(key, []):
            if c.get("texts") is None:
                c.pop("texts", None)
    return record


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
    check_dashboard_json(obj, where)

    def ctx(d: dict) -> Context:
        return Context(**d)

    def ictx(d: dict) -> InfluenceContext:
        d = dict(d)
        d["next"] = TokenMove(**d["next"]) if d.get("next") else None
        d["moved"] = [TokenMove(**m) for m in d.get("moved", [])]
        return InfluenceContext(**d)

    try:
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
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GradsaeError(
            f"{where} is damaged ({type(e).__name__}: {str(e)[:80]}): rebuild it with gradsae dashboard"
        ) from None


def check_dashboard(dash: Dashboard, sae, where: str = "--dashboard") -> None:
    """One line when ``dash`` describes another SAE than ``sae``: its weights' digest when the dashboard recorded
    it, else its width and hook."""
    m = dash.meta
    if m.sae_sha256 and m.sae_sha256 != sae.digest():
        raise GradsaeError(f"{where} describes another SAE ({m.sae}, other weights): give that SAE's dashboard")
    if m.d_sae != sae.d_sae or (m.hook and sae.cfg.hook_name and m.hook != sae.cfg.hook_name):
        raise GradsaeError(
            f"{where} describes an SAE with {m.d_sae} latents at {m.hook}, this one has {sae.d_sae} at "
            f"{sae.cfg.hook_name}: give this SAE's dashboard"
        )


def load_dashboard(path: str | Path, option: str = "--dashboard") -> Dashboard:
    """Read dashboard.json (or .json.gz, or a folder holding one); ``option`` names the flag that gave the path
    in messages."""
    import gzip

    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / n for n in DASHBOARD_FILES if (p / n).is_file()]
        if not found:
            raise GradsaeError(f"no dashboard.json in {p}: build one with gradsae dashboard --out {p}")
        p = found[0]
    if not p.is_file():
        raise GradsaeError(f"no dashboard at {p}: build one with gradsae dashboard, or drop {option}")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        obj = json.loads(raw)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise GradsaeError(
            f"{p}: unreadable dashboard ({type(e).__name__}): rebuild it with gradsae dashboard"
        ) from None
    return dashboard_from_json(obj, str(p))


def find_dashboard(sae_spec: str | Path) -> Path | None:
    """The dashboard file next to an SAE (bundled name or folder), or None."""
    from ..saes import bundled_saes

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
