"""GradSAE influence: which SAE latents drive the model's output (Shu et al. 2025, §2 and appendix A).

The influence of latent c at token n on the output Y is the change of a target when H[n, c] is zeroed,

    g[n, c] = target(H) - target(H with H[n, c] = 0)  ≈  ∂target/∂H[n, c] · H[n, c]      (first order)

so one forward and one backward pass score every latent at every position.

Pure functions (tested on toy tensors):
    ``target_from_logits``  the scalar per row that "p(Y|H)" stands for
    ``aggregate``           per-token g [B, T, C] -> per-latent score [B, C]
    ``resolve_k``, ``top_latents``, ``bottom_latents``   the TopK / BottomK sets (paper eq. 4-5)

Model plumbing: ``influence(model, tok, sae, examples, opts)`` (``InfluenceOptions``) with methods

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

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .config import opt
from .errors import GradsaeError
from .generate import encode_prompts, greedy_generate, position_ids
from .hooks import unembedding
from .saes.sae import SAE
from .splice import RowEdit, Splice, run_trunk, skip_trunk

TARGETS = ("logprob", "prob", "logit", "first", "bracket")
BRACKET = "["  # the authors' answer opener: "Result = [[ label ]]"
AGGREGATIONS = ("relu-mean", "mean", "signed")
POSITIONS = ("all", "prompt")
METHODS = ("grad", "exact", "ig")
ERRORS = ("none", "keep")


@dataclass(kw_only=True)
class InfluenceOptions:
    """How influence is computed: the flags every scoring command shares (``gradsae influence``, ``explain``,
    the SQuAD experiments inherit them), passed whole to ``influence``."""

    target: str = opt(
        "logprob",
        "what p(Y|H) means: logprob (log p of the whole output), prob, logit, first "
        "(p of the first output token), bracket (the authors' code: p of the last output token "
        "that contains '[')",
        choices=TARGETS,
    )
    aggregation: str = opt(
        "relu-mean",
        "per-token -> per-latent: relu-mean (authors' code), mean (paper text: signed mean, keep g_c > 0) or signed",
        choices=AGGREGATIONS,
    )
    positions: str = opt("all", "positions scored: all (prompt + output) or prompt", choices=POSITIONS)
    method: str = opt("grad", "grad (grad x act), exact (ablation) or ig (integrated gradients)", choices=METHODS)
    error: str = opt(
        "none", "splice error term: none (paper: the model sees the reconstruction) or keep", choices=ERRORS
    )
    ig_steps: int = opt(16, "integrated-gradient steps (--method ig)")
    exact_latents: int = opt(
        0,
        "exact: ablate only the top-N by |grad|, top-N by activation and N random "
        "active latents (0 = every active latent)",
    )
    seed: int = opt(0, "seed (random candidates for --method exact)")

    def __post_init__(self):
        if self.exact_latents is None:  # the library's old spelling of "all"
            self.exact_latents = 0
        for name, allowed in (
            ("target", TARGETS),
            ("aggregation", AGGREGATIONS),
            ("positions", POSITIONS),
            ("method", METHODS),
            ("error", ERRORS),
        ):
            if getattr(self, name) not in allowed:
                raise GradsaeError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.ig_steps < 1:
            raise GradsaeError(f"--ig-steps {self.ig_steps}: integrated gradients need at least 1 step")
        if self.exact_latents < 0:
            raise GradsaeError(f"--exact-latents {self.exact_latents}: give 0 (all) or a positive count")

    def influence_options(self) -> "InfluenceOptions":
        """Only these fields (a command config that inherits them carries many more)."""
        return InfluenceOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(InfluenceOptions)})


# ---------------------------------------------------------------------------------------------
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


def _order(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Indices sorted by score, ties broken by the lower latent index (deterministic)."""
    key = -scores if descending else scores
    return torch.sort(key, stable=True).indices


def top_latents(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The K highest-scoring latents among those with a positive score (paper eq. 4). [C] -> [≤K]."""
    order = _order(scores, descending=True)
    order = order[scores[order] > 0]
    return order[:k]


def bottom_latents(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The K lowest *non-zero* positive scores (paper eq. 5; zero-score latents would make masking a no-op)."""
    order = _order(scores, descending=False)
    order = order[scores[order] > 0]
    return order[:k]


# ---------------------------------------------------------------------------------------------
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
        order = _order(self.baseline, descending=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, order.numel() + 1)
        return rank

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


@dataclass
class _Packed:
    """A teacher-forced batch: ``ids``/``mask`` [B, T] left-padded; outputs are each row's last M_b tokens."""

    ids: torch.Tensor
    mask: torch.Tensor
    n_prompt: list[int]
    n_out: list[int]
    lengths: list[int]
    picks: list[int] | None = None  # per row, the output token the ``bracket`` target is (0-based)

    @property
    def T(self) -> int:
        return self.ids.shape[1]

    def repeat(self, n: int) -> "_Packed":
        """Row 0 repeated n times (IG steps, batched ablations)."""
        return _Packed(
            self.ids.expand(n, -1),
            self.mask.expand(n, -1),
            self.n_prompt * n,
            self.n_out * n,
            self.lengths * n,
            self.picks * n if self.picks is not None else None,
        )

    def out_block(self, M: int):
        """Output ids and mask right-aligned in a [B, M] block (M = max output length); with ``picks`` the mask
        marks only each row's picked token."""
        B = self.ids.shape[0]
        out_ids = self.ids[:, self.T - M :]
        out_mask = torch.zeros(B, M, dtype=torch.long, device=self.ids.device)
        for b, m in enumerate(self.n_out):
            if m and self.picks is not None:
                out_mask[b, M - m + self.picks[b]] = 1
            elif m:
                out_mask[b, M - m :] = 1
        return out_ids, out_mask

    def score_mask(self, positions: str, target: str) -> torch.Tensor:
        """[B, T] the positions whose influence is aggregated: every input position that can affect the
        target (``all``), or the prompt only (``prompt``; also what ``first`` can depend on)."""
        B, T = self.ids.shape
        mask = torch.zeros(B, T, dtype=torch.bool, device=self.ids.device)
        for b in range(B):
            start = T - self.lengths[b]
            if target == "bracket" and self.picks is not None and positions == "all":
                end = start + self.n_prompt[b] + self.picks[b]  # the positions the authors' forward pass had
            else:
                end = T - 1 if positions == "all" and target != "first" else start + self.n_prompt[b]
            mask[b, start:end] = True
        return mask


# ---------------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------------


def _join_ids(tok, prompt: str, output: str) -> tuple[list[int], list[int]]:
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    if output and not output[:1].isspace() and prompt and not prompt[-1:].isspace():
        output = " " + output  # joined as text would be: "Answer:" + " Paris"
    o = tok(output, add_special_tokens=False)["input_ids"] if output else []
    return p, o


def answer_ids(tok, generated: Sequence[int], stop: Sequence[str] = ("\n",)) -> list[int]:
    """The generated tokens up to the first one that contains a stop string after some content."""
    out: list[int] = []
    for t in generated:
        text = tok.decode(out + [t]).lstrip()
        if any(s in text for s in stop):
            break
        out.append(t)
    return out


def token_texts(tok, ids: Sequence[int], max_pending: int = 8) -> list[str]:
    """Each token's text, one per token. A character split over several tokens (emoji and many scripts in
    byte-level BPE) is shown whole on the token that completes it, the tokens before it show "" — never
    the replacement character U+FFFD that decoding a lone byte gives."""
    out: list[str] = []
    start = 0  # first token whose text is not shown yet
    for i in range(len(ids)):
        piece = tok.decode([int(t) for t in ids[start : i + 1]])
        incomplete = piece.endswith("\ufffd") and i + 1 < len(ids) and i + 1 - start < max_pending
        if incomplete:
            out.append("")
            continue
        out.append(piece)
        start = i + 1
    return out


def bracket_index(tok, out_ids: Sequence[int]) -> int | None:
    """Index of the last output token whose text contains ``[`` (the authors' target step), or None."""
    idx = [m for m, t in enumerate(out_ids) if BRACKET in tok.decode([int(t)])]
    return idx[-1] if idx else None


def _pack(tok, pairs: Sequence[tuple[list[int], list[int]]], device, picks: list[int] | None = None) -> _Packed:
    seqs = [p + o for p, o in pairs]
    T = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s) :] = torch.as_tensor(s)
        mask[b, T - len(s) :] = 1
    return _Packed(
        ids.to(device),
        mask.to(device),
        [len(p) for p, _ in pairs],
        [len(o) for _, o in pairs],
        [len(s) for s in seqs],
        picks,
    )


def _forward_target(model, packed: _Packed, target: str, splice: Splice | None = None) -> torch.Tensor:
    """Run the teacher-forced batch and return the target per row [B] (keeps only the logits needed)."""
    if splice is not None:
        splice.offset, splice.prompt_len = 0, packed.T
        splice.row_start = (packed.mask == 0).sum(1)
    M = max(max(packed.n_out), 1)
    kw = dict(input_ids=packed.ids, attention_mask=packed.mask, position_ids=position_ids(packed.mask))
    try:
        logits = model(**kw, logits_to_keep=M + 1).logits
    except TypeError:
        logits = model(**kw).logits
    logits = logits[:, -(M + 1) : -1].float()  # logits[:, j] predicts the j-th of the last M tokens
    out_ids, out_mask = packed.out_block(M)
    return target_from_logits(logits, out_ids, out_mask, target)


def promoted_tokens(model, tok, sae: SAE, latents: Sequence[int], n: int = 8) -> dict[int, list[str]]:
    """The n tokens each latent's decoder direction promotes most: top of W_U · W_dec[c] (logit lens)."""
    if not len(latents):
        return {}
    W_U = unembedding(model)
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)
    dirs = sae.W_dec[idx].to(W_U.device, W_U.dtype)  # [K, D]
    top = (dirs @ W_U.T).topk(n, dim=-1).indices  # [K, n]
    return {int(c): [tok.decode([int(t)]) for t in row] for c, row in zip(idx.tolist(), top.tolist())}


def generate_outputs(
    model,
    tok,
    sae: SAE,
    prompts: Sequence[str],
    *,
    layer=None,
    error: str = "none",
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    keep_first: int = 0,
) -> list[list[int]]:
    """Greedy answers through the splice, as token ids cut at the stop string."""
    device = sae.W_dec.device
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        batch = encode_prompts(tok, prompts[i : i + batch_size], device=device)
        with Splice(model, sae, layer=layer, error=error, keep_first=keep_first) as s:
            gen = greedy_generate(model, tok, batch, max_new_tokens=max_new_tokens, stop=stop, splice=s)
        out.extend(answer_ids(tok, t, stop) for t in gen.tokens)
    return out


def influence(
    model,
    tok,
    sae: SAE,
    examples: Sequence[Example | tuple | str],
    opts: InfluenceOptions | None = None,
    *,
    layer=None,
    batch_size: int = 4,
    exact_batch: int = 32,
    keep_per_token: int = 10,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    output_ids: Sequence[list[int]] | None = None,
    keep_first: int = 0,
    **option_overrides,
) -> list[Influence]:
    """Score every latent for each example.

    Args:
        examples: ``Example``s, (prompt, output) pairs or prompts (outputs are then generated greedily
            through the splice).
        opts: target, aggregation, positions, method, error, ig_steps, exact_latents, seed (see
            ``InfluenceOptions``); keyword arguments of the same names override single fields.
        batch_size: examples per forward+backward (``grad``); scores do not depend on it.
        exact_batch: ablated latents per batched forward (``exact``).
        keep_per_token: P, how many top latents keep their per-token influence (heatmaps).
        output_ids: already tokenised outputs (e.g. from generation), overriding ``Example.output``.
        keep_first: leave each row's first N real tokens unspliced (attention sink), see ``Splice``.
    """
    opts = (opts or InfluenceOptions()).influence_options()
    if option_overrides:
        unknown = set(option_overrides) - {f.name for f in dataclasses.fields(InfluenceOptions)}
        if unknown:
            raise TypeError(f"influence() got unexpected keyword arguments {sorted(unknown)}")
        opts = dataclasses.replace(opts, **option_overrides)
    if batch_size < 1:
        raise GradsaeError(f"--batch-size {batch_size}: give at least 1")
    exs = [e if isinstance(e, Example) else Example(*e) if isinstance(e, tuple) else Example(e) for e in examples]
    for i, e in enumerate(exs):
        if not e.id:
            e.id = str(i)
    device = sae.W_dec.device
    t0 = time.perf_counter()
    pairs = []
    todo = [i for i, e in enumerate(exs) if e.output is None] if output_ids is None else []
    generated = (
        dict(
            zip(
                todo,
                generate_outputs(
                    model,
                    tok,
                    sae,
                    [exs[i].prompt for i in todo],
                    layer=layer,
                    error=opts.error,
                    max_new_tokens=max_new_tokens,
                    stop=stop,
                    batch_size=batch_size,
                    keep_first=keep_first,
                ),
            )
        )
        if todo
        else {}
    )
    for i, e in enumerate(exs):
        if output_ids is not None:
            pairs.append((tok(e.prompt, add_special_tokens=True)["input_ids"], list(output_ids[i])))
        elif i in generated:
            pairs.append((tok(e.prompt, add_special_tokens=True)["input_ids"], generated[i]))
        else:
            pairs.append(_join_ids(tok, e.prompt, e.output))
        if not pairs[-1][1]:
            raise GradsaeError(f"example {e.id!r} has an empty output: give --output or raise --max-new-tokens")
    picks = None
    if opts.target == "bracket":
        picks = [bracket_index(tok, o) for _, o in pairs]
        missing = [exs[i].id for i, m in enumerate(picks) if m is None]
        if missing:
            raise GradsaeError(
                f"example {missing[0]!r}: no output token contains '[', so the 'bracket' target (the "
                "authors' answer opener) is undefined: use --template official, or another --target"
            )
    t_gen = time.perf_counter() - t0
    results: list[Influence] = []
    step = batch_size if opts.method == "grad" else 1
    run = _RunSettings(layer=layer, keep=keep_per_token, keep_first=keep_first, exact_batch=exact_batch)
    for start in range(0, len(exs), step):
        chunk = list(range(start, min(start + step, len(exs))))
        packed = _pack(tok, [pairs[i] for i in chunk], device, [picks[i] for i in chunk] if picks else None)
        if opts.method == "grad":
            res = _grad_scores(model, sae, packed, opts, run)
        elif opts.method == "ig":
            res = [_ig_scores(model, sae, packed, opts, run)]
        else:
            res = [_exact_scores(model, sae, packed, opts, run)]
        for i, r in zip(chunk, res):
            extra = r.pop("meta_extra", {})
            p, o = pairs[i]
            ids = p + o
            results.append(
                Influence(
                    id=exs[i].id,
                    prompt=exs[i].prompt,
                    output=tok.decode(o, skip_special_tokens=True).strip(),
                    token_ids=ids,
                    tokens=token_texts(tok, ids),
                    n_prompt=len(p),
                    **r,
                    meta={
                        "target": opts.target,
                        "aggregation": opts.aggregation,
                        "positions": opts.positions,
                        "method": opts.method,
                        "error": opts.error,
                        "layer": sae.cfg.hook_name if layer is None else layer,
                        "ig_steps": opts.ig_steps if opts.method == "ig" else None,
                        "seed": opts.seed,
                        "keep_first": keep_first,
                        **extra,
                    },
                )
            )
    elapsed = time.perf_counter() - t0
    for r in results:
        r.meta["seconds_total"] = round(elapsed, 3)
        r.meta["seconds_generation"] = round(t_gen, 3)
    return results


@dataclass(frozen=True)
class _RunSettings:
    """The per-call settings the scoring helpers need besides ``InfluenceOptions``."""

    layer: int | str | None
    keep: int  # P latents whose per-token influence is kept
    keep_first: int
    exact_batch: int


def _finish(
    g: torch.Tensor,
    H: torch.Tensor,
    mask: torch.Tensor,
    packed: _Packed,
    aggregation: str,
    keep: int,
    b: int,
    score: torch.Tensor | None = None,
) -> dict:
    """Per-example result from per-token g [T, C], activations H [T, C] and its mask [T]."""
    T = packed.T
    lo = T - packed.lengths[b]
    scores = aggregate(g[None], mask[None], aggregation)[0] if score is None else score
    baseline = aggregate(H[None], mask[None], "relu-mean")[0]
    last = lo + packed.n_prompt[b] - 1
    active_last = torch.nonzero(H[last] > 0).flatten().cpu()
    keep_idx = top_latents(scores, keep)
    per_token = g[lo:, keep_idx].detach().cpu() if g is not None else None
    return dict(
        scores=scores.detach().cpu(),
        baseline=baseline.detach().cpu(),
        active_last=active_last,
        active_any=int(((H > 0) & mask[:, None]).any(0).sum()),
        per_token_latents=keep_idx.cpu(),
        per_token=per_token,
    )


def _grad_scores(
    model, sae, packed: _Packed, opts: InfluenceOptions, run: _RunSettings, aggregation: str | None = None
) -> list[dict]:
    mask = packed.score_mask(opts.positions, opts.target)
    with Splice(model, sae, layer=run.layer, error=opts.error, grad=True, keep_first=run.keep_first) as s:
        with torch.enable_grad():
            tv = _forward_target(model, packed, opts.target, s)
            tv.sum().backward()  # rows are independent, so each row gets its own gradient
        H, G = s.latents.detach(), s.latents.grad
    out = []
    for b in range(packed.ids.shape[0]):
        g = (G[b] * H[b]).float()  # [T, C]
        r = _finish(g, H[b].float(), mask[b], packed, aggregation or opts.aggregation, run.keep, b)
        r["target_value"] = float(tv[b].detach())
        out.append(r)
    return out


def _ig_scores(model, sae, packed: _Packed, opts: InfluenceOptions, run: _RunSettings) -> dict:
    """IG[n, c] = H[n, c] · mean_α ∂target/∂H[n, c] at α·H (scored positions scaled; others untouched)."""
    if packed.ids.shape[0] != 1:
        raise GradsaeError("integrated gradients run one example at a time")
    layer, target, error, steps = run.layer, opts.target, opts.error, opts.ig_steps
    mask = packed.score_mask(opts.positions, target)  # [1, T]
    alphas = (torch.arange(1, steps + 1, dtype=torch.float32) / steps).to(packed.ids.device)
    rep = packed.repeat(steps)
    scale = torch.where(mask, alphas[:, None], torch.ones(()))  # [m, T]

    def path(H):
        return H * scale[:, :, None].to(H.dtype)

    with Splice(model, sae, layer=layer, error=error, grad=True, latent_fn=path, keep_first=run.keep_first) as s:
        with torch.enable_grad():
            tv = _forward_target(model, rep, target, s)
            tv.sum().backward()
        G = s.latents.grad  # [m, T, C]
    with torch.no_grad(), Splice(model, sae, layer=layer, error=error, capture=True, keep_first=run.keep_first) as s:
        full = float(_forward_target(model, packed, target, s)[0])
        H = s.latents[0]
    g = (G.mean(0) * H).float()
    r = _finish(g, H.float(), mask[0], packed, opts.aggregation, run.keep, 0)
    r["target_value"] = full
    return r


@torch.no_grad()
def _exact_scores(model, sae, packed: _Packed, opts: InfluenceOptions, run: _RunSettings) -> dict:
    """Δtarget when one latent is zeroed at all scored positions, divided by their number N (so it is on the
    scale of the ``mean`` aggregation of grad × act, whose first-order sum it approximates). Blocks 0..L
    run once; each chunk of ablations runs only the blocks above L."""
    if packed.ids.shape[0] != 1:
        raise GradsaeError("exact ablation runs one example at a time")
    layer, target, error, keep_first = run.layer, opts.target, opts.error, run.keep_first
    n_cand, chunk, seed = opts.exact_latents or None, run.exact_batch, opts.seed
    mask = packed.score_mask(opts.positions, target)[0]
    with Splice(model, sae, layer=layer, error=error, capture=True, keep_first=keep_first) as s:
        full = _forward_target(model, packed, target, s)[0]
        H = s.latents[0].float()
    L = s.layer
    trunk = run_trunk(
        model,
        L,
        input_ids=packed.ids,
        attention_mask=packed.mask,
        position_ids=position_ids(packed.mask),
        use_cache=False,
    )
    active = torch.nonzero(((H > 0) & mask[:, None]).any(0)).flatten()
    if n_cand is not None and active.numel() > 3 * n_cand:
        grad_res = _grad_scores(model, sae, packed, opts, dataclasses.replace(run, keep=1), aggregation="mean")[0]
        base = aggregate(H[None], mask[None], "relu-mean")[0]
        by_grad = active[grad_res["scores"].to(active.device)[active].abs().argsort(descending=True)[:n_cand]]
        by_act = active[base[active].argsort(descending=True)[:n_cand]]
        g = torch.Generator().manual_seed(seed)
        rand = active[torch.randperm(active.numel(), generator=g)[:n_cand].to(active.device)]
        active = torch.unique(torch.cat([by_grad, by_act, rand]))
    pos = torch.nonzero(mask).flatten()
    lo, hi = int(pos.min()), int(pos.max()) + 1
    n = float(mask.sum())
    scores = torch.zeros(sae.d_sae)
    for i in range(0, active.numel(), chunk):
        lat = active[i : i + chunk].tolist()
        rows = [RowEdit(zero=[c], at=lo, until=hi) for c in lat]
        rep = packed.repeat(len(lat))
        with (
            skip_trunk(model, L, trunk, len(lat)),
            Splice(model, sae, layer=layer, error=error, edits=rows, keep_first=keep_first) as s,
        ):
            tv = _forward_target(model, rep, target, s)
        scores[torch.as_tensor(lat)] = ((full - tv) / n).float().cpu()
    r = _finish(None, H, mask, packed, opts.aggregation, run.keep, 0, score=scores.to(H.device))
    r["target_value"] = float(full)
    r["meta_extra"] = {"exact_latents_ablated": int(active.numel()), "ablated": active.tolist()}
    return r
