"""Completeness curves (Marks et al. 2024): keep the N highest-ranked latents of the SAE (error term kept, every
other latent ablated at every position) and measure the fraction of the target recovered,
(m(N) - m(none)) / (m(all) - m(none)), for the GradSAE ranking (|grad x act|), the Baseline (mean activation)
and random active latents; zero and mean ablation (means: the SAE's mean activation over the benchmark's own
tokens). Two sets: SQuAD questions (context + question -> the gold answer) and held-out prose (wiki-04: the next
8 tokens after 48). Per N the mean fraction with a 95% t-interval over examples; per ranking the area under the
curve (mean over the N grid); GradSAE vs Baseline from the paired AUC differences: a verdict only where the
interval excludes 0.

    python benchmarks/bench_completeness.py --n 20 --prose 20
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import SHARED, qa_examples, short_prompt, table, write_out

from gradsae import load_model, load_sae
from gradsae.corpus import iter_documents
from gradsae.influence import Example
from gradsae.influence.completeness import RANKINGS, completeness
from gradsae.influence.inputs import forward_target, join_ids, pack
from gradsae.splice import Splice
from gradsae.stats import t_interval
from gradsae.viz.plots import figure_png, pyplot

PROSE = SHARED / "data" / "wikipedia" / "wiki-04.jsonl.gz"


def prose_examples(tok, n: int, prompt_tokens: int = 48, output_tokens: int = 8) -> list[Example]:
    """n held-out prose snippets: the first ``prompt_tokens`` tokens of a document, then the next ``output_tokens``."""
    out = []
    for doc in iter_documents(str(PROSE)):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= prompt_tokens + output_tokens:
            out.append(
                Example(
                    tok.decode(ids[:prompt_tokens]),
                    tok.decode(ids[prompt_tokens : prompt_tokens + output_tokens]),
                    id=f"wiki{len(out)}",
                )
            )
        if len(out) == n:
            break
    return out


def mean_activations(model, tok, sae, examples: list[Example]) -> torch.Tensor:
    """[C] the SAE's mean activation over every token of the examples (what mean ablation sets)."""
    total, count = torch.zeros(sae.d_sae), 0
    for ex in examples:
        packed = pack(tok, [join_ids(tok, ex.prompt, ex.output)], sae.W_dec.device)
        with torch.no_grad(), Splice(model, sae, error="keep", capture=True) as s:
            forward_target(model, packed, "logprob", s)
        total += s.latents[0].float().sum(0).cpu()
        count += s.latents.shape[1]
    return total / max(count, 1)


def summarise(name: str, curves, ns: list[int]) -> dict:
    rows, out = [], {"set": name, "ablation": curves.ablation, "ns": ns, "rankings": {}}
    auc = curves.auc()
    for r in RANKINGS:
        f = curves.fraction[r]
        ok = ~torch.isnan(f).any(1)
        per_n = [
            {"n": n, "mean": float(f[ok, j].mean()), "ci95": t_interval(f[ok, j].tolist())} for j, n in enumerate(ns)
        ]
        a = auc[r][ok].tolist()
        out["rankings"][r] = {
            "per_n": per_n,
            "auc": sum(a) / max(len(a), 1),
            "auc_ci95": t_interval(a),
            "n_examples": len(a),
        }
        rows.append(
            {
                "ranking": r,
                "examples": len(a),
                "AUC": out["rankings"][r]["auc"],
                **{f"N={n}": p["mean"] for n, p in zip(ns, per_n)},
            }
        )
    ok = ~torch.isnan(auc["gradsae"]) & ~torch.isnan(auc["activation"])
    diff = (auc["gradsae"][ok] - auc["activation"][ok]).tolist()
    ci = t_interval(diff)
    verdict = "not enough evidence"
    if ci is not None and ci[0] > 0:
        verdict = "GradSAE's ranking recovers more of the target than the activation Baseline's"
    elif ci is not None and ci[1] < 0:
        verdict = "the activation Baseline's ranking recovers more of the target than GradSAE's"
    out["gradsae_minus_activation_auc"] = {"mean": sum(diff) / max(len(diff), 1), "ci95": ci, "verdict": verdict}
    print(f"\n{name}, {curves.ablation} ablation (fraction of the target recovered)")
    print(table(rows, ["ranking", "examples", "AUC", *[f"N={n}" for n in ns]]))
    print(f"GradSAE - Baseline AUC: {out['gradsae_minus_activation_auc']['mean']:.3f}, 95% CI {ci}: {verdict}")
    return out


def plot(results: list[dict]) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for r, style in zip(RANKINGS, ("-", "--", ":")):
            per = res["rankings"][r]["per_n"]
            x = [max(p["n"], 0.5) for p in per]
            y = [p["mean"] for p in per]
            ax.plot(x, y, style, marker="o", ms=3, label=r)
            lo = [p["ci95"][0] if p["ci95"] else p["mean"] for p in per]
            hi = [p["ci95"][1] if p["ci95"] else p["mean"] for p in per]
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xscale("log")
        ax.set_title(f"{res['set']}, {res['ablation']} ablation", fontsize=9)
        ax.set_xlabel("latents kept (N)")
        ax.set_ylabel("fraction of target recovered")
        ax.axhline(1, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    return figure_png(fig, tight=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default="smollm2/topk/L14")
    ap.add_argument("--n", type=int, default=20, help="SQuAD questions")
    ap.add_argument("--prose", type=int, default=20, help="held-out prose snippets")
    ap.add_argument("--ns", default="0,1,2,5,10,20,50,100,200")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/completeness.json")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    sae = load_sae(args.sae)
    ns = [int(x) for x in args.ns.split(",")]
    sets = {
        "SQuAD": [Example(short_prompt(e), e["answers"][0], id=e["id"]) for e in qa_examples(n=args.n, seed=args.seed)],
        "held-out prose": prose_examples(tok, args.prose),
    }
    t0 = time.perf_counter()
    results = []
    for name, exs in sets.items():
        if not exs:
            continue
        means = mean_activations(model, tok, sae, exs)
        for ablation in ("zero", "mean"):
            curves = completeness(model, tok, sae, exs, ns, ablation=ablation, means=means, seed=args.seed)
            results.append(summarise(name, curves, ns))
    meta = {"model": args.model, "sae": args.sae, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1)}
    write_out(args.out, {"meta": meta, "results": results})
    png = args.out.rsplit(".", 1)[0] + ".png"
    with open(png, "wb") as f:
        f.write(plot(results))
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
