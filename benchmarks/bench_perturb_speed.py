"""Speed of the perturbation step: our batched, KV-cached run vs the authors' approach.

For each kept example (answered with F1 ≥ 0.9 through the SAE splice) and every distinct zeroed latent
set of the perturbation grid (Baseline/GradSAE × TopK/BottomK × K, plus the unedited control):

    ours      one batch of rows (``RowEdit(zero=set, at="all")`` per row), one KV-cached greedy generation
              whose prompt pass runs blocks 0..L once for all rows (``gradsae.squad.phases.perturb_example``)
    official  each variant as its own generation, batch of 1, *no* KV cache (the full sequence is re-run
              at every step: ``greedy_generate(use_cache=False)``), as the GradSAE authors' code does
    cached    each variant as its own batch-of-1 generation *with* the KV cache (separates the two effects)

Same examples, same edits, same splice, same decoding rule; the predictions must be identical. Reports
seconds, generated tokens and the speed ratios measured in this one run. The ratio grows with the number
of generated tokens (the authors' loop re-runs the whole sequence once per new token): ``--stop auto``
stops at the few-shot answer's newline (short answers); ``--stop none`` decodes as the authors' code
does, until EOS or ``--max-new-tokens`` (their limit is 50).

    python benchmarks/bench_perturb_speed.py [--n 3] [--stop auto|none] [--out benchmarks/out/perturb_speed.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from _common import DEV, table, write_out

from gradsae.saes import DEFAULT_SAE
from gradsae import RowEdit, Splice, encode_prompts, greedy_generate, load_model, load_sae
from gradsae.squad import data as sq
from gradsae.squad import phases
from gradsae.squad.config import PerturbConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default=DEFAULT_SAE)
    ap.add_argument("--data", default=str(DEV), help="SQuAD JSON (default: the shared dev subset)")
    ap.add_argument(
        "--fewshot-data",
        default=str(DEV.parent / "train-v1.1-notre-dame.json"),
        help="SQuAD JSON with the few-shot exemplars",
    )
    ap.add_argument("--n", type=int, default=3, help="kept examples to time")
    ap.add_argument("--scan", type=int, default=40, help="questions to answer while looking for kept ones")
    ap.add_argument("--min-f1", type=float, default=0.9, help="correct-sample filter (0 keeps everything)")
    ap.add_argument("--ks", default="1,10,20,30,50%")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument(
        "--stop",
        default="auto",
        help="decoding rule of the timed runs: auto (newline etc.) or none "
        "(EOS or --max-new-tokens, as the authors' code)",
    )
    ap.add_argument("--error", default="keep", choices=["none", "keep"], help="SAE error term (all three runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/perturb_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    sae = load_sae(args.sae)
    qas = sq.load_questions(args.data, limit=args.scan)
    ctx_text, pairs = sq.fewshot_exemplars(args.fewshot_data, exclude_contexts=[q.context for q in qas])
    builder = sq.PromptBuilder("fewshot", tok, ctx_text, pairs)
    cfg = PerturbConfig(
        sae=args.sae,
        model=args.model,
        data=args.data,
        min_f1=args.min_f1,
        ks=args.ks.split(","),
        max_new_tokens=args.max_new_tokens,
        error=args.error,
    )
    ctx = phases.RunContext(cfg, model, tok, sae, None, builder)  # finds kept examples with the usual stops
    tctx = phases.RunContext(dataclasses.replace(cfg, stop=args.stop), model, tok, sae, None, builder)  # timed runs

    kept: list[tuple[phases.AnswerRecord, str]] = []
    for i in range(0, len(qas), 8):
        chunk = qas[i : i + 8]
        for q, r in zip(chunk, phases.answer_batch(ctx, chunk)):
            if r.kept:
                kept.append((r, builder(q.context, q.question)))
        if len(kept) >= args.n:
            break
    kept = kept[: args.n]
    if not kept:
        raise SystemExit(f"no question among the first {args.scan} was answered with F1 >= {args.min_f1}")

    rows, agree_all, t_ours, t_off, t_cached = [], True, 0.0, 0.0, 0.0
    for rec, prompt in kept:
        t0 = time.perf_counter()
        ours = phases.perturb_example(tctx, rec, prompt).to_json()
        dt_ours = time.perf_counter() - t0
        # the same distinct sets, in the same order as perturb_example builds them
        variants = {}
        for m in cfg.methods:
            for side in cfg.sets:
                for k in cfg.ks:
                    variants[f"{m}/{side}/{k}"] = tuple(sorted(rec.sets.ids(m, side, k, rec.n_active_last)))
        distinct = [()] + list(dict.fromkeys(v for v in variants.values() if v))
        preds, new_tokens = {}, []
        dt_off = dt_cached = 0.0
        for use_cache in (False, True):
            for lat in distinct:
                batch = encode_prompts(tok, [prompt])
                t0 = time.perf_counter()
                with Splice(
                    model, sae, error=args.error, edits=[RowEdit(zero=list(lat), at="all")] if lat else None
                ) as s:
                    gen = greedy_generate(
                        model, tok, batch, args.max_new_tokens, tctx.stop, splice=s, use_cache=use_cache
                    )
                dt = time.perf_counter() - t0
                if use_cache:
                    dt_cached += dt
                else:
                    dt_off += dt
                    preds[lat] = tctx.answer(gen.texts[0])
                    new_tokens.append(len(gen.tokens[0]))
        same = (
            all(ours["cells"][key]["prediction"] == preds[lat] for key, lat in variants.items())
            and ours["control"]["prediction"] == preds[()]
        )
        agree_all &= same
        t_ours += dt_ours
        t_off += dt_off
        t_cached += dt_cached
        rows.append(
            {
                "id": rec.id,
                "prompt_tokens": len(tok(prompt)["input_ids"]),
                "cells": len(variants),
                "rows": len(distinct),
                "mean_new_tokens": round(sum(new_tokens) / len(new_tokens), 2),
                "ours_s": dt_ours,
                "official_s": dt_off,
                "cached_b1_s": dt_cached,
                "speedup": dt_off / dt_ours,
                "identical": same,
            }
        )
        print(
            f"{rec.id}: ours {dt_ours:.1f}s, official {dt_off:.1f}s, batch-1 cached {dt_cached:.1f}s, identical={same}",
            flush=True,
        )

    total = {
        "ours_s": t_ours,
        "official_s": t_off,
        "cached_b1_s": t_cached,
        "speedup_vs_official": t_off / t_ours,
        "speedup_vs_cached_b1": t_cached / t_ours,
        "identical_predictions": agree_all,
        "n_examples": len(rows),
    }
    print()
    print(
        table(
            rows,
            [
                "id",
                "prompt_tokens",
                "cells",
                "rows",
                "mean_new_tokens",
                "ours_s",
                "official_s",
                "cached_b1_s",
                "speedup",
                "identical",
            ],
        )
    )
    print(
        f"\ntotal: ours {t_ours:.1f}s vs official (no KV cache, one variant at a time) {t_off:.1f}s -> "
        f"{t_off / t_ours:.1f}x faster; vs batch-1 with KV cache {t_cached:.1f}s -> {t_cached / t_ours:.1f}x; "
        f"identical predictions: {agree_all}"
    )
    write_out(args.out, {"config": vars(args), "sae": args.sae, "rows": rows, "total": total})


if __name__ == "__main__":
    main()
