"""The phases of a SQuAD run, one kept example (or one batch of questions) at a time:

1. ``answer_batch``: greedy answers through the SAE splice (and without it, for comparison), official EM/F1,
   the correct-sample filter, and for kept questions the GradSAE scores and the Baseline
   (``gradsae.influence.influence`` on the generated token ids), stored as ranked ``LatentSet``s.
2. ``perturb_example``: one batch of variant rows — the unedited control and each distinct zeroed set.
3. ``steer_example``: zero the example's own set, inject its partner's set; scored against the partner's answers.

``run_variants`` builds and runs such a batch for one prompt (rows differ only in their latent edits, so
blocks 0..L run once); ``gradsae explain`` uses it too.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import torch

from .. import memory
from . import data as sq
from .config import SquadConfig, parse_clamp, resolve_stop
from .records import AnswerRecord, Cell, CellKey, EditRecord, LatentSet, RankedLatent
from .summary import overlap


# ---------------------------------------------------------------------------------------------
# Variant batches (perturbation, steering, explain)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One row's latent edit: ``zero`` latents set to 0 at every position of every forward call; ``inject``
    (latent, value) pairs set at the ``at`` positions of ``run_variants`` (applied after the zeroing)."""

    zero: tuple[int, ...] = ()
    inject: tuple[tuple[int, float], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.zero or self.inject)


@dataclass
class VariantRun:
    """Raw generated texts: ``control`` (the unedited row) and one per variant key; ``rows`` = batch size."""

    control: str
    texts: dict
    rows: int


def run_variants(
    model,
    tok,
    sae,
    prompt: str,
    variants: Mapping[Hashable, Variant],
    *,
    layer=None,
    error: str = "none",
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    at: str = "all",
    use_cache: bool = True,
) -> VariantRun:
    """Greedy answers for one prompt under every variant, as one batch: row 0 unedited, then one row per
    distinct non-empty variant (identical variants share a row; an empty variant is the control row)."""
    from ..generate import generate_edited
    from ..splice import RowEdit

    uniq = list(dict.fromkeys(v for v in variants.values() if v))
    R = len(uniq) + 1
    device = sae.W_dec.device
    keep = torch.ones(R, sae.d_sae, device=device)
    rows: list = [None]
    for i, v in enumerate(uniq, 1):
        if v.zero:
            keep[i, list(v.zero)] = 0.0
        rows.append(RowEdit(set=dict(v.inject), at=at) if v.inject else None)

    def zero_sets(H):  # [R, T, C]: each row's zeroed latents at every position of every forward call
        return H * keep[:, None, :].to(H.dtype)

    gen = generate_edited(
        model,
        tok,
        sae,
        [prompt] * R,
        rows,
        layer=layer,
        error=error,
        latent_fn=zero_sets if any(v.zero for v in uniq) else None,
        max_new_tokens=max_new_tokens,
        stop=stop,
        use_cache=use_cache,
        fix="use fewer --ks, --methods or --sets (one row each), or a shorter prompt",
    )
    row_of = {v: i + 1 for i, v in enumerate(uniq)}
    return VariantRun(
        gen.texts[0], {key: gen.texts[row_of[v]] if v else gen.texts[0] for key, v in variants.items()}, R
    )


# ---------------------------------------------------------------------------------------------
# The run context
# ---------------------------------------------------------------------------------------------


class RunContext:
    """What one run needs: model, tokenizer, SAE, layer, prompt builder, decoding settings."""

    def __init__(self, cfg: SquadConfig, model, tok, sae, layer, builder: sq.PromptBuilder):
        self.cfg, self.model, self.tok, self.sae, self.layer, self.builder = cfg, model, tok, sae, layer, builder
        self.stop = resolve_stop(cfg.stop, builder)
        self.extract = builder.default_extract if cfg.extract == "auto" else cfg.extract
        self.device = sae.W_dec.device

    def answer(self, raw: str) -> str:
        return sq.extract_answer(raw, self.extract, self.cfg.answer_regex)

    def generate(
        self, prompts: Sequence[str], edits=None, latent_fn=None, same_prompt: bool = False, spliced: bool = True
    ):
        """Greedy answers (raw texts, answer token ids) per row, through the splice unless ``spliced`` is
        False. ``same_prompt``: every row is one prompt with its own edits, so blocks 0..L run once."""
        from ..generate import encode_prompts, greedy_generate
        from ..influence import answer_ids
        from ..splice import Splice

        batch = encode_prompts(self.tok, list(prompts), device=self.device)
        cache = self.cfg.kv_cache
        kw = dict(max_new_tokens=self.cfg.max_new_tokens, stop=self.stop, use_cache=cache)
        if not spliced:
            gen = greedy_generate(self.model, self.tok, batch, **kw)
        else:
            with Splice(
                self.model, self.sae, layer=self.layer, error=self.cfg.error, edits=edits, latent_fn=latent_fn
            ) as s:
                gen = greedy_generate(
                    self.model, self.tok, batch, splice=s, shared_trunk=cache and same_prompt and len(prompts) > 1, **kw
                )
        return gen.texts, [answer_ids(self.tok, t, self.stop) for t in gen.tokens]

    def variants(self, prompt: str, variants: Mapping[Hashable, Variant], at: str = "all") -> VariantRun:
        c = self.cfg
        return run_variants(
            self.model,
            self.tok,
            self.sae,
            prompt,
            variants,
            layer=self.layer,
            error=c.error,
            max_new_tokens=c.max_new_tokens,
            stop=self.stop,
            at=at,
            use_cache=c.kv_cache,
        )


def answer_rows(cfg: SquadConfig, model, sae, layer, longest: int, n: int, device: str) -> int:
    """Questions per answer batch: ``--batch-size`` checked against the memory estimate of the longest prompt
    (``longest`` tokens) answered and scored (``auto``: the most that fit)."""
    from ..splice import splice_point

    shape = memory.ModelShape.of(model)
    lat = memory.sae_shape(sae)
    new = cfg.max_new_tokens
    layers = [splice_point(model, sae, layer)[0]]

    def passes(b: int) -> list[memory.Pass]:
        return [
            memory.generation(lat, b, longest, new),
            memory.scoring(shape, lat, b, longest + new, new, layers),
        ]

    return memory.plan_rows("the answer phase", passes, shape, requested=cfg.batch_size, most=n, device=device)


def _kmax(cfg: SquadConfig, n_active_last: int) -> int:
    from ..influence import resolve_k

    ks = list(cfg.ks) + list(getattr(cfg, "steer_ks", []) or []) + ["50%"]
    return max(resolve_k(k, n_active_last) for k in ks)


# ---------------------------------------------------------------------------------------------
# 1. answer + filter + rankings
# ---------------------------------------------------------------------------------------------


def answer_batch(ctx: RunContext, qas: Sequence[sq.QA]) -> list[AnswerRecord]:
    """Phase 1 for a batch: answer (with and without the splice), score, filter, and for kept examples store
    the ranked latent sets."""
    from ..influence import Example, bracket_index, influence

    t0 = time.perf_counter()
    prompts = [ctx.builder(q.context, q.question) for q in qas]
    texts, ids = ctx.generate(prompts)
    # with the error term kept the spliced model computes x̂ + (x − x̂) = x (up to rounding): no second pass
    plain = texts if ctx.cfg.error == "keep" else ctx.generate(prompts, spliced=False)[0]
    recs = []
    for q, raw, oid, raw0 in zip(qas, texts, ids, plain):
        pred, pred0 = ctx.answer(raw), ctx.answer(raw0)
        em, f1 = sq.em_f1(pred, q.answers)
        em0, f10 = sq.em_f1(pred0, q.answers)
        recs.append(
            AnswerRecord(
                id=q.id,
                context_id=q.context_id,
                question=q.question,
                golds=list(q.answers),
                prediction=pred,
                raw=raw,
                em=em,
                f1=round(f1, 6),
                kept=sq.is_correct(f1, ctx.cfg.min_f1)
                and bool(oid)
                and (
                    # the authors' filter: without a '[' token their target does not exist
                    ctx.cfg.target != "bracket" or bracket_index(ctx.tok, oid) is not None
                ),
                unspliced=Cell(prediction=pred0, em=em0, f1=round(f10, 6)),
            )
        )
    kept = [i for i, r in enumerate(recs) if r.kept]
    if kept:
        c = ctx.cfg
        infs = influence(
            ctx.model,
            ctx.tok,
            ctx.sae,
            [Example(prompts[i], id=qas[i].id) for i in kept],
            c.influence_options(),
            layer=ctx.layer,
            batch_size=c.batch_size,
            keep_per_token=0,
            output_ids=[ids[i] for i in kept],
        )
        for i, inf in zip(kept, infs):
            kmax = _kmax(c, inf.n_active_last)

            def ranked(idx, score):
                return [
                    RankedLatent(
                        int(j),
                        round(float(score[j]), 7 if score is inf.scores else 6),
                        round(float(inf.baseline[j]), 6),
                    )
                    for j in idx
                ]

            recs[i].n_active_last, recs[i].n_active_any = inf.n_active_last, inf.active_any
            recs[i].sets = LatentSet(
                {
                    "gradsae": {
                        "top": ranked(inf.top(kmax), inf.scores),
                        "bottom": ranked(inf.bottom(kmax), inf.scores),
                    },
                    "baseline": {
                        "top": ranked(inf.top(kmax, baseline=True), inf.baseline),
                        "bottom": ranked(inf.bottom(kmax, baseline=True), inf.baseline),
                    },
                }
            )
    dt = (time.perf_counter() - t0) / len(qas)
    for r in recs:
        r.seconds = round(dt, 3)
    return recs


# ---------------------------------------------------------------------------------------------
# 2. perturbation, 3. steering
# ---------------------------------------------------------------------------------------------


def _grid_keys(cfg: SquadConfig, ks: Sequence[str]) -> list[CellKey]:
    return [CellKey(m, side, k) for m in cfg.methods for side in cfg.sets for k in ks]


def perturb_example(ctx: RunContext, rec: AnswerRecord, prompt: str) -> EditRecord:
    """Phase 2 for one kept example: one batch (control + every distinct zeroed set) through one generation."""
    t0 = time.perf_counter()
    variants = {
        key: Variant(zero=tuple(sorted(rec.sets.ids(key.method, key.side, key.k, rec.n_active_last))))
        for key in _grid_keys(ctx.cfg, ctx.cfg.ks)
    }
    run = ctx.variants(prompt, variants)
    cells = {}
    for key, v in variants.items():
        p = ctx.answer(run.texts[key])
        em, f1 = sq.em_f1(p, rec.golds)
        cells[key] = Cell(prediction=p, em=em, f1=round(f1, 6), k=len(v.zero))
    p0 = ctx.answer(run.control)
    em, f1 = sq.em_f1(p0, rec.golds)
    return EditRecord(
        task="perturb",
        id=rec.id,
        rows=run.rows,
        cells=cells,
        control=Cell(prediction=p0, em=em, f1=round(f1, 6), agree=p0 == rec.prediction),
        seconds=round(time.perf_counter() - t0, 3),
    )


def steer_example(ctx: RunContext, rec: AnswerRecord, partner: AnswerRecord | None, prompt: str) -> EditRecord:
    """Phase 3 for one kept example: zero its own set at every position, set the partner's set to the
    partner's values (``--inject``, ``--clamp``) at ``--at`` positions; score against the partner's golds."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    if partner is None:
        return EditRecord(task="steer", id=rec.id, partner=None, cells={}, seconds=0.0)
    clamp = parse_clamp(cfg.clamp)
    variants, overlaps = {}, {}
    for key in _grid_keys(cfg, cfg.steer_ks or cfg.ks):
        own = tuple(sorted(rec.sets.ids(key.method, key.side, key.k, rec.n_active_last)))
        par = partner.sets.take(key.method, key.side, key.k, partner.n_active_last)
        vals = {}
        for e in par:
            v = e.score if cfg.inject == "score" else e.activation
            vals[e.latent] = min(max(v, clamp[0]), clamp[1]) if clamp else v
        variants[key] = Variant(zero=own, inject=tuple(sorted(vals.items())))
        overlaps[key] = overlap(own, [e.latent for e in par])
    run = ctx.variants(prompt, variants, at=cfg.at)
    cells = {}
    for key, v in variants.items():
        p = ctx.answer(run.texts[key])
        em, f1 = sq.em_f1(p, partner.golds)
        cells[key] = Cell(
            prediction=p,
            em=em,
            f1=round(f1, 6),
            own_f1=round(sq.em_f1(p, rec.golds)[1], 6),
            k=len(v.zero),
            overlap=overlaps[key],
        )
    p0 = ctx.answer(run.control)
    em, f1 = sq.em_f1(p0, partner.golds)
    return EditRecord(
        task="steer",
        id=rec.id,
        partner=partner.id,
        rows=run.rows,
        cells=cells,
        control=Cell(prediction=p0, em=em, f1=round(f1, 6)),
        seconds=round(time.perf_counter() - t0, 3),
    )


def pick_partner(
    qid: str, context_id: str, kept: Sequence[tuple[str, str, str]], question: str, seed: int
) -> str | None:
    """A seeded partner for example ``qid``: another kept example with the same context and a different
    question. ``kept`` is [(id, context_id, question)]. The choice depends only on (seed, qid, candidates),
    not on the order examples are processed in (so sharded and resumed runs agree)."""
    cands = sorted(i for i, c, q in kept if c == context_id and i != qid and q.strip() != question.strip())
    if not cands:
        return None
    return random.Random(f"{seed}:{qid}").choice(cands)
