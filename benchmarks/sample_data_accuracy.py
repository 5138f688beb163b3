"""How many of the bundled sample questions does the bundled model answer correctly (F1 ≥ 0.9)?

    python benchmarks/sample_data_accuracy.py [--model smollm2] [--sae NAME] [--template fewshot]
                                              [--out benchmarks/out/sample_data_accuracy.json]

The prompt is ``gradsae.squad.data.PromptBuilder`` (default ``fewshot``: the exemplar context of
bundled/data/fewshot.json with its five Q/A pairs), greedy decoding, the answer cut at the first newline,
official SQuAD 1.1 EM/F1 (``gradsae.squad.data.em_f1``). Prints one line per question, then the share with
F1 ≥ 0.9 (the correct-sample filter the demo applies) and how many contexts keep ≥ 2 questions (local
steering needs a partner question on the same context). With --sae the SAE is spliced in (error term
dropped), as the demo runs it.
"""

from __future__ import annotations

import argparse
import collections
import time
from importlib import resources

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default="", help="splice this SAE (bundled name or folder)")
    ap.add_argument("--data", default="", help="SQuAD JSON (default: the bundled sample_qa.json)")
    ap.add_argument("--fewshot-data", default="", help="few-shot exemplars (default: the bundled fewshot.json)")
    ap.add_argument("--template", default="fewshot")
    ap.add_argument(
        "--keep-first",
        type=int,
        default=0,
        help="leave the first N positions unspliced (the attention sink); use --batch-size 1 with it, "
        "since positions count from the start of the left-padded batch",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions (0 = all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/sample_data_accuracy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import gradsae
    from gradsae.io import write_json
    from gradsae.squad.data import PromptBuilder, em_f1, extract_answer, fewshot_exemplars, load_questions

    data_dir = resources.files("gradsae") / "bundled" / "data"
    qa_path, fs_path = data_dir / "sample_qa.json", data_dir / "fewshot.json"
    exs = load_questions(args.data or str(qa_path), limit=args.limit or None)
    model, tok = gradsae.load_model(args.model)
    ctx, pairs = fewshot_exemplars(args.fewshot_data or str(fs_path), exclude_contexts={e.context for e in exs})
    build = PromptBuilder(args.template, tok, ctx, pairs)
    sae = gradsae.load_sae(args.sae) if args.sae else None
    t0 = time.perf_counter()
    rows = []
    for i in range(0, len(exs), args.batch_size):
        chunk = exs[i : i + args.batch_size]
        batch = gradsae.encode_prompts(tok, [build(e.context, e.question) for e in chunk])
        if sae is not None:
            kw = {"keep_first": args.keep_first} if args.keep_first else {}
            with gradsae.Splice(model, sae, **kw) as s:
                gen = gradsae.greedy_generate(model, tok, batch, args.max_new_tokens, build.default_stop, splice=s)
        else:
            gen = gradsae.greedy_generate(model, tok, batch, args.max_new_tokens, build.default_stop)
        for e, text in zip(chunk, gen.texts):
            pred = extract_answer(text, build.default_extract)
            em, f1 = em_f1(pred, e.answers)
            rows.append(
                {
                    "id": e.id,
                    "context_id": e.context_id,
                    "question": e.question,
                    "gold": e.answers,
                    "pred": pred,
                    "em": em,
                    "f1": f1,
                }
            )
            print(f"{e.id:8s} F1={f1:4.2f}  gold={e.answers[0]!r:36s} pred={pred!r}", flush=True)
    secs = time.perf_counter() - t0
    n = len(rows)
    kept = sum(r["f1"] >= 0.9 for r in rows)
    per_ctx = collections.Counter(r["context_id"] for r in rows if r["f1"] >= 0.9)
    summary = {
        "model": args.model,
        "sae": args.sae or None,
        "keep_first": args.keep_first,
        "template": args.template,
        "n_questions": n,
        "n_contexts": len({r["context_id"] for r in rows}),
        "em": round(100 * sum(r["em"] for r in rows) / n, 1),
        "f1": round(100 * sum(r["f1"] for r in rows) / n, 1),
        "kept_f1_ge_0.9": kept,
        "kept_share": round(kept / n, 3),
        "contexts_with_2plus_kept": sum(v >= 2 for v in per_ctx.values()),
        "seconds": round(secs, 1),
    }
    print(
        "\n| model | SAE | template | questions | EM | F1 | F1 ≥ 0.9 | contexts with ≥ 2 kept |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {args.model} | {args.sae or 'none'}{f' (keep first {args.keep_first})' if args.keep_first else ''} "
        f"| {args.template} | {n} | {summary['em']:.1f} | {summary['f1']:.1f} "
        f"| {kept} ({100 * kept / n:.0f}%) | {summary['contexts_with_2plus_kept']} of {summary['n_contexts']} |"
    )
    write_json(args.out, {"summary": summary, "rows": rows})
    print(f"wrote {args.out} ({secs:.0f} s)")


if __name__ == "__main__":
    main()
