"""How well does grad × act (one backward) predict the exact effect of ablating a latent?

For QA examples (context + question, teacher-forced gold answer) with the bundled model and SAE:
Spearman correlation and top-10 overlap between each method's per-latent score and exact ablation
(zero the latent at every scored position, re-run), over the latents ablated (top-N by |grad|, top-N by
activation and N random active ones per example). Methods: GradSAE grad × act, integrated gradients, and
the activation Baseline, and the second-order corrected estimate (``influence/reliability.py``: one backward with
its graph kept and ``--reliability-samples`` double backwards) with the latents it flags. Also where the
first-order approximation fails: error by activation size, and by how saturated the target is.

    python benchmarks/bench_influence_fidelity.py --n 30

Each example's result is appended to ``OUT.examples.jsonl`` as it ends (with the settings it was made with); a
rerun with the same settings skips the examples already there, so a killed run resumes, and ``--n`` can grow.
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import pearsonr, spearmanr

from _common import mean, qa_examples, short_prompt, table, write_out

from gradsae.io import JsonlLog

from gradsae import load_model, load_sae
from gradsae.saes import DEFAULT_SAE
from gradsae.influence import Example, influence
from gradsae.influence.inputs import join_ids, pack
from gradsae.influence.reliability import reliability


def top_overlap(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, k: int = 10) -> float:
    ta = set(idx[a[idx].argsort(descending=True)[:k]].tolist())
    tb = set(idx[b[idx].argsort(descending=True)[:k]].tolist())
    return len(ta & tb) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--sae", default=DEFAULT_SAE)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--target", default="logprob")
    ap.add_argument("--exact-latents", type=int, default=40)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument(
        "--error",
        default="none",
        choices=["none", "keep"],
        help="SAE error term: none (the model sees only the reconstruction; targets stay far from "
        "saturation) or keep (the model's own output; many targets near p = 1)",
    )
    ap.add_argument("--reliability-samples", type=int, default=16, help="with --hutchinson")
    ap.add_argument(
        "--hutchinson",
        action="store_true",
        help="estimate every latent's second-order term from random-sign products (default: the ablated latents' "
        "exact terms, the example as one row per latent)",
    )
    ap.add_argument("--reliability-tolerance", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/influence_fidelity.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model, tok = load_model(args.model)
    sae = load_sae(args.sae)
    settings = {k: v for k, v in vars(args).items() if k not in ("n", "out")}
    settings["sae_sha256"] = sae.digest()
    log = JsonlLog(str(args.out) + ".examples.jsonl")
    done = {r["row"]["id"]: r for r in log.records() if r.get("settings") == settings}
    records = []
    t0 = time.perf_counter()
    for i, ex in enumerate(qa_examples(n=args.n, seed=args.seed)):
        if ex["id"] in done:
            records.append(done[ex["id"]])
            continue
        torch.manual_seed(args.seed + i)
        e = [Example(short_prompt(ex), ex["answers"][0], id=ex["id"])]
        kw = dict(target=args.target, aggregation="signed", error=args.error)
        grad = influence(model, tok, sae, e, **kw)[0]
        exact = influence(model, tok, sae, e, method="exact", exact_latents=args.exact_latents, seed=args.seed, **kw)[0]
        ig = influence(model, tok, sae, e, method="ig", ig_steps=args.ig_steps, **kw)[0]
        idx = torch.as_tensor(exact.meta["ablated"])
        ex_s, gr_s, ig_s, base = exact.scores[idx], grad.scores[idx], ig.scores[idx], grad.baseline[idx]
        packed = pack(tok, [join_ids(tok, e[0].prompt, e[0].output)], sae.W_dec.device)
        rel = reliability(
            model, sae, packed, args.target, "all", args.error, tolerance=args.reliability_tolerance,
            samples=args.reliability_samples, seed=args.seed, latents=None if args.hutchinson else idx.tolist(),
        )  # fmt: skip
        n_pos = float(packed.score_mask("all", args.target)[0].sum())
        second = -rel.corrected / n_pos  # on the scale of the mean-aggregated scores, like exact
        so_s, flagged = second[idx], rel.flagged[idx]
        row = {
            "id": ex["id"],
            "latents": int(idx.numel()),
            "p(Y)": float(torch.tensor(exact.target_value).exp()),
            "rho_grad": float(spearmanr(gr_s, ex_s).statistic),
            "rho_ig": float(spearmanr(ig_s, ex_s).statistic),
            "rho_base": float(spearmanr(base, ex_s).statistic),
            "rho_second": float(spearmanr(so_s, ex_s).statistic),
            "r_grad": float(pearsonr(gr_s, ex_s).statistic),
            "r_second": float(pearsonr(so_s, ex_s).statistic),
            "top10_second": top_overlap(second, exact.scores, idx),
            "flagged": int(flagged.sum()),
            "top10_grad": top_overlap(grad.scores, exact.scores, idx),
            "top10_ig": top_overlap(ig.scores, exact.scores, idx),
            "top10_base": top_overlap(grad.baseline, exact.scores, idx),
        }
        # first-order error by activation quartile (within this example)
        q = torch.quantile(base, torch.tensor([0.25, 0.5, 0.75]))
        bucket = torch.bucketize(base, q)
        err = (gr_s - ex_s).abs() / ex_s.abs().clamp_min(1e-6 * ex_s.abs().max())
        err2 = (so_s - ex_s).abs() / ex_s.abs().clamp_min(1e-6 * ex_s.abs().max())
        rec = {
            "settings": settings,
            "row": row,
            "buckets": {
                str(b): [float(err[bucket == b].median()), float(err2[bucket == b].median())]
                for b in range(4)
                if (bucket == b).any()
            },
            "flag_err": float(err[flagged].median()) if flagged.any() else None,
            "calm_err": float(err[~flagged].median()) if (~flagged).any() else None,
        }
        log.append(rec)
        records.append(rec)
        print(
            f"[{i + 1}/{args.n}] {ex['id'][:10]} latents={row['latents']} rho grad={row['rho_grad']:.3f} "
            f"ig={row['rho_ig']:.3f} base={row['rho_base']:.3f}  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    rows = [r["row"] for r in records]
    per_bucket = {b: [r["buckets"][str(b)][0] for r in records if str(b) in r["buckets"]] for b in range(4)}
    per_bucket2 = {b: [r["buckets"][str(b)][1] for r in records if str(b) in r["buckets"]] for b in range(4)}
    flag_err = [r["flag_err"] for r in records if r["flag_err"] is not None]
    calm_err = [r["calm_err"] for r in records if r["calm_err"] is not None]
    sat = [(r["p(Y)"], r["rho_grad"]) for r in rows]
    summary = {
        k: mean([r[k] for r in rows])
        for k in ("rho_grad", "rho_ig", "rho_base", "rho_second", "r_grad", "r_second", "top10_grad", "top10_ig")
        + ("top10_base", "top10_second", "flagged")
    }
    buckets = [
        {
            "activation quartile": f"Q{b + 1}",
            "median rel. error grad vs exact": mean(per_bucket[b]),
            "second order vs exact": mean(per_bucket2[b]),
        }
        for b in range(4)
    ]
    flag_split = {
        "median rel. error of grad x act, flagged latents": mean(flag_err),
        "... latents not flagged": mean(calm_err),
        "mean flagged of the ablated latents": summary["flagged"],
        "backward passes per example": (
            f"1 + {args.reliability_samples} double" if args.hutchinson else "1 + 1 double, one row per ablated latent"
        ),
    }
    saturation = []
    for lo, hi in ((0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.01)):
        rs = [r for p, r in sat if lo <= p < hi]
        saturation.append(
            {
                "p(Y)": f"[{lo:g}, {min(hi, 1):g}" + (")" if hi <= 1 else "]"),
                "examples": len(rs),
                "mean rho_grad": mean(rs),
            }
        )
    print("\nFidelity against exact ablation (mean over examples)")
    print(
        table(
            [
                {"method": m, "Spearman": summary[f"rho_{k}"], "top-10 overlap": summary[f"top10_{k}"]}
                for m, k in (
                    ("GradSAE grad x act", "grad"),
                    ("second-order corrected", "second"),
                    ("integrated gradients", "ig"),
                    ("Baseline (mean activation)", "base"),
                )
            ],
            ["method", "Spearman", "top-10 overlap"],
        )
    )
    print("\nFirst-order error by activation size")
    print(table(buckets, ["activation quartile", "median rel. error grad vs exact", "second order vs exact"]))
    print(f"\nPearson with exact: grad x act {summary['r_grad']:.3f}, second-order corrected {summary['r_second']:.3f}")
    print("\nThe reliability flag")
    for k, v in flag_split.items():
        print(f"  {k}: {v if isinstance(v, str) else (f'{v:.3f}' if v is not None else '-')}")
    print("\nBy target saturation")
    print(table(saturation, ["p(Y)", "examples", "mean rho_grad"]))
    write_out(
        args.out,
        {
            "args": vars(args),
            "summary": summary,
            "buckets": buckets,
            "reliability_flag": flag_split,
            "saturation": saturation,
            "examples": rows,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
