"""TopK vs g-SAE at equal d_sae and k on the same tokens (the g-SAE paper's Table 1 / Fig. 4-5 in spirit).

Trains (or reuses) a grid of SAEs with `gradsae train` from one activation cache, evaluates each with
`gradsae eval`'s functions on the cache's held-out shard, prints a table and writes JSON:
NMSE, L_added, KL, dead fraction and the §4.2 steering effect (probability moved onto each latent's
associated tokens, and onto all other tokens). A g-SAE appears twice: with gradient-aware selection (cached
clean-model dL/dx) and with plain TopK selection (what generation uses).

    python benchmarks/bench_gsae_vs_topk.py --k 32 --beta 0.5,1,2  # the bundled pair + a small beta sweep
    python benchmarks/bench_gsae_vs_topk.py --k 16,32,64         # a k sweep (3x the training time)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gradsae.io import write_json


def main(argv=None) -> dict:
    from gradsae import load_model, load_sae
    from gradsae.training.cache import ActivationCache, default_cache
    from gradsae.training.evals import EvalConfig, evaluate
    from gradsae.training.train import TrainConfig, run as train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="", help="activation cache (default: gradsae cache's default folder)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--k", default="32", help="comma-separated k values")
    ap.add_argument("--beta", default="0.5", help="comma-separated g-SAE beta values (beta-mode rms)")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-out", default="", help="training folder (reused/resumed if it exists)")
    ap.add_argument("--n-seqs", type=int, default=64, help="held-out sequences for CE / KL")
    ap.add_argument("--steer-latents", type=int, default=64)
    ap.add_argument("--steer-contexts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "gsae_vs_topk.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ks = [int(k) for k in a.k.split(",")]
    betas = [float(b) for b in a.beta.split(",")]
    cache_path = a.cache or str(default_cache())
    tcfg = TrainConfig(
        cache=cache_path,
        out=a.train_out,
        architectures=["topk", "gsae"],
        k=ks,
        beta=betas,
        d_sae=[a.d_sae],
        epochs=a.epochs,
        batch_tokens=a.batch_size,
        seed=a.seed,
        threads=a.threads,
    )
    run_dir = train(tcfg)
    model, _ = load_model(a.model)
    cache = ActivationCache(cache_path)
    rows = []
    for k in ks:
        for name in [f"topk_k{k}"] + [f"gsae_k{k}_b{b:g}" for b in betas]:
            sae = load_sae(run_dir / name)
            ecfg = EvalConfig(
                sae=str(run_dir / name),
                model=a.model,
                cache=cache_path,
                out=str(run_dir / name / "eval"),
                n_seqs=a.n_seqs,
                steer_latents=a.steer_latents,
                steer_contexts=a.steer_contexts,
                seed=a.seed,
                threads=a.threads,
            )
            res = evaluate(model, sae, cache, ecfg)
            st = res["eval_result_metrics"].get("steering", {})
            for sel, m in res["eval_result_metrics_by_selection"].items():
                rows.append(
                    {
                        "k": k,
                        "sae": name.split("_k")[0] + name[name.rfind("_b") :] * name.startswith("gsae"),
                        "selection": sel,
                        "l0": m["sparsity"]["l0"],
                        "nmse": m["reconstruction_quality"]["nmse"],
                        "l_added": m["model_performance_preservation"]["l_added"],
                        "kl": m["model_behavior_preservation"]["kl_div_with_sae"],
                        "dead_frac": m["misc"]["dead_frac"],
                        "dead_frac_train": sae.cfg.metadata.get("dead_frac_train"),
                        "steer_alphas": st.get("alphas"),
                        "steer_assoc": st.get("assoc_mean"),
                        "steer_other": st.get("other_mean"),
                    }
                )
    hdr = (
        f"{'k':>3} {'SAE':<9} {'selection':<9} {'L0':>5} {'NMSE':>7} {'L_added':>8} {'KL':>7} {'dead':>6} "
        f"{'dead(train)':>11}  steering assoc / other per alpha"
    )
    print(hdr)
    for r in rows:
        steer = "  ".join(
            f"{al:g}:{sa:.4f}/{so:.4f}"
            for al, sa, so in zip(r["steer_alphas"] or [], r["steer_assoc"] or [], r["steer_other"] or [])
        )
        dt = r["dead_frac_train"]
        print(
            f"{r['k']:>3} {r['sae']:<9} {r['selection']:<9} {r['l0']:5.1f} {r['nmse']:7.4f} {r['l_added']:8.4f} "
            f"{r['kl']:7.4f} {r['dead_frac']:6.3f} {dt if dt is None else round(dt, 3)!s:>11}  {steer}"
        )
    result = {"config": vars(a), "train_dir": str(run_dir), "cache": cache_path, "rows": rows}
    write_json(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
