"""TopK vs g-SAE vs E2E (the g-SAE paper's Table 1, §4.2–4.4) from `gradsae train` results folders.

Every SAE in the given runs is evaluated on held-out text with `gradsae eval` (results cached per SAE in
``--out-root``; a rerun skips finished ones), then SAEs that differ only in their seed are grouped and each
metric is reported as the mean over seeds with a 95% Student-t interval (``n/a`` with one seed: no interval
can be claimed). A verdict "A < B" is printed only where the intervals of two architectures do not overlap.

    # the paper's design (a GPU run; on 2 CPU cores 5M tokens of this grid take days):
    gradsae train --data WIKI00..03 --layers 14 --architectures topk,gsae,e2e --k 32 --seeds 0,1,2 \
        --max-tokens 5000000 --out RUN_SEEDS
    gradsae train --data WIKI00..03 --layers 14 --architectures topk,gsae,e2e --k 3,5,10,64 --seeds 0 \
        --max-tokens 5000000 --out RUN_L0
    gradsae cache --data wiki-04.jsonl.gz --layers 14 --max-shards 2 --out HELDOUT
    python benchmarks/bench_sae_comparison.py --run RUN_SEEDS,RUN_L0 --heldout HELDOUT

Metrics: NMSE, L_added = (L(x̂) − L(x)) / L(x), KL, dead latents by both rules (never active on the held-out
tokens; the paper's "none in 5 consecutive batches" at the end of training), median activation density,
decoder max-cosine mean, and the steering effect (Δp on each latent's associated tokens, higher is better) and
its specificity (probability added to all other tokens, lower is better) at every α. Figures: density CDFs,
decoder max-cosine histograms, steering over α (PNG beside the JSON).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from _common import write_out

METRICS = {  # name -> (path in eval.json's eval_result_metrics, lower is better)
    "NMSE": (("reconstruction_quality", "nmse"), True),
    "L_added": (("model_performance_preservation", "l_added"), True),
    "ce_loss_score": (("model_performance_preservation", "ce_loss_score"), False),
    "KL": (("model_behavior_preservation", "kl_div_with_sae"), True),
    "kl_div_score": (("model_behavior_preservation", "kl_div_score"), False),
    "dead (held-out)": (("misc", "dead_frac"), True),
    "dead (5 batches, train)": (("misc", "dead_frac_train_5batches"), True),
    "median density": (("sparsity", "density_median"), None),
    "L_added (gradient selection)": (("gradient", "model_performance_preservation", "l_added"), True),
    "NMSE (gradient selection)": (("gradient", "reconstruction_quality", "nmse"), True),
    "decoder max-cos": (("decoder", "max_cos_mean"), None),
}


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval (None for one value; gradsae.stats)."""
    from gradsae.stats import t_interval

    m = sum(values) / len(values)
    ci = t_interval(values)
    return m, None if ci is None else (ci[1] - ci[0]) / 2


def _get(ev: dict, path: tuple[str, ...]):
    """A metric of eval.json: (section, key) of the main selection, or (selection, section, key)."""
    metrics = (
        ev["eval_result_metrics"] if len(path) == 2 else ev.get("eval_result_metrics_by_selection", {}).get(path[0])
    )
    v = (metrics or {}).get(path[-2], {}).get(path[-1])
    return None if v is None else float(v)


def find_saes(run: Path) -> list[Path]:
    """The SAE folders a `gradsae train` results folder holds (snapshots excluded)."""
    return sorted(p.parent for p in run.rglob("cfg.json") if "snapshots" not in p.relative_to(run).parts)


def _same_eval(ev: dict, args) -> bool:
    """An eval.json made on the same held-out cache and settings as this benchmark would make."""
    c = ev.get("eval_config", {})
    return (
        Path(str(c.get("cache", ""))).expanduser().resolve() == Path(args.heldout).expanduser().resolve()
        and c.get("holdout_shards") == args.holdout_shards
        and c.get("n_seqs") == args.n_seqs
        and c.get("steer_latents") == args.steer_latents
    )


def group_key(ev: dict, meta: dict) -> tuple:
    """SAEs that differ only in their seed share a key. A result file's arm (its name's prefix: ``klmse`` and
    ``mseft`` for the two fine-tunes) stands for the architecture, so a fine-tune is not grouped as a fresh SAE."""
    c = ev["sae_cfg"]
    return (
        c["hook_name"],
        meta.get("arm") or c["architecture"],
        c["k"],
        c["d_sae"],
        c.get("beta") if c["architecture"] == "gsae" else None,
        meta.get("model_tokens"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="", help="comma list of `gradsae train` results folders")
    ap.add_argument("--heldout", default="", help="`gradsae cache` folder of held-out text (with --grad)")
    ap.add_argument(
        "--results",
        default="",
        help="instead of --run/--heldout: a folder of committed per-SAE result files "
        "(benchmarks/gsae_study.py writes docs/results/gsae/<arch>-k<k>-s<seed>.json); nothing is evaluated",
    )
    ap.add_argument("--holdout-shards", type=int, default=2)
    ap.add_argument("--n-seqs", type=int, default=64)
    ap.add_argument("--steer-latents", type=int, default=64)
    ap.add_argument("--out-root", default="benchmarks/out/sae_comparison")
    ap.add_argument("--json", default="benchmarks/out/sae_comparison.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.results:
        evals = load_results(Path(args.results))
    elif args.run and args.heldout:
        evals = evaluate_runs(args)
    else:
        ap.error("give --results DIR, or --run and --heldout")
    report(evals, args)


def with_saebench_scores(ev: dict, ref: dict | None) -> dict:
    """``ev`` with SAEBench's ``ce_loss_score`` and ``kl_div_score`` for every selection that lacks them, from the
    SAE-independent zero-ablation reference (``gsae_study.py reference``) when it was measured on the same
    sequences (the clean CE agrees to 1e-5); left out otherwise."""
    from gradsae.training.evals import saebench_score

    if ref is None:
        return ev
    sections = [ev.get("eval_result_metrics", {}), *ev.get("eval_result_metrics_by_selection", {}).values()]
    for m in sections:
        perf, beh = m.get("model_performance_preservation"), m.get("model_behavior_preservation")
        if not perf or not beh or "ce_loss_score" in perf:
            continue
        if abs(perf["ce_loss_without_sae"] - ref["ce_loss_without_sae"]) > 1e-5 * ref["ce_loss_without_sae"]:
            continue  # other sequences: the reference does not apply
        ce_z, kl_z = ref["ce_loss_with_ablation"], ref["kl_div_with_ablation"]
        perf["ce_loss_score"] = saebench_score(ce_z - perf["ce_loss_with_sae"], ce_z - perf["ce_loss_without_sae"])
        beh["kl_div_score"] = saebench_score(kl_z - beh["kl_div_with_sae"], kl_z)
    return ev


def load_results(folder: Path) -> list[tuple[dict, dict, str]]:
    """(eval.json, SAE metadata, name) of every result file in ``folder`` (not its subfolders), with SAEBench's
    scores derived where the file predates them (``reference/zero-ablation-L*.json`` beside the files)."""
    out = []
    refs = {
        int(p.stem.split("-L")[-1]): json.loads(p.read_text()) for p in folder.glob("reference/zero-ablation-L*.json")
    }
    for p in sorted(folder.glob("*.json")):
        rec = json.loads(p.read_text())
        ev = with_saebench_scores(rec["eval"], refs.get(rec.get("layer")))
        arm = p.name.split("-k")[0] if "-k" in p.name else None
        out.append((ev, {"seed": rec["seed"], "model_tokens": rec["training_tokens"], "arm": arm}, p.name))
    if not out:
        raise SystemExit(f"no result files in {folder}")
    return out


def evaluate_runs(args) -> list[tuple[dict, dict, str]]:
    """Evaluate every SAE of the --run folders on --heldout (cached per SAE in --out-root)."""
    from gradsae.saes import load_sae
    from gradsae.training.evals import EvalConfig, run as run_eval

    root = Path(args.out_root)
    evals = []
    for run in [Path(r) for r in args.run.split(",") if r]:
        for folder in find_saes(run):
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run.name}_{folder.relative_to(run).as_posix()}")
            out = root / slug
            beside = folder / "eval.json"  # a bundled SAE's own eval, if made with these settings
            if (out / "eval.json").exists():
                ev = json.loads((out / "eval.json").read_text())
            elif beside.exists() and _same_eval(json.loads(beside.read_text()), args):
                ev = json.loads(beside.read_text())
            else:
                ev = run_eval(
                    EvalConfig(
                        sae=str(folder),
                        cache=args.heldout,
                        holdout_shards=args.holdout_shards,
                        n_seqs=args.n_seqs,
                        steer_latents=args.steer_latents,
                        out=str(out),
                        threads=args.threads,
                    )
                )
            meta = load_sae(folder).cfg.metadata or {}
            evals.append((ev, meta, str(folder)))
    return evals


def report(evals: list[tuple[dict, dict, str]], args) -> dict:
    """Group SAEs that differ only in their seed; mean and 95% t interval per metric; verdicts; figures."""
    groups = defaultdict(list)
    for ev, meta, folder in evals:
        groups[group_key(ev, meta)].append((ev, meta, folder))
    rows = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        hook, arch, k, d_sae, beta, tokens = key
        row = {
            "hook": hook,
            "architecture": arch,
            "k": k,
            "d_sae": d_sae,
            "beta": beta,
            "train_tokens": tokens,
            "seeds": sorted(m.get("seed") for _, m, _ in members),
            "folders": [f for _, _, f in members],
        }
        for name, (path, _) in METRICS.items():
            vals = [v for v in (_get(ev, path) for ev, _, _ in members) if v is not None]
            row[name] = mean_ci(vals) if vals else None
        st = [ev["eval_result_metrics"].get("steering") for ev, _, _ in members]
        if all(st):
            row["alphas"] = st[0]["alphas"]
            row["steer_assoc"] = [mean_ci([s["assoc_mean"][i] for s in st]) for i in range(len(row["alphas"]))]
            row["steer_other"] = [mean_ci([s["other_mean"][i] for s in st]) for i in range(len(row["alphas"]))]
        row["distributions"] = next(
            (d["distributions"] for d in members[0][0].get("eval_result_details", []) if "distributions" in d), None
        )
        rows.append(row)

    def fmt(mc):
        if mc is None:
            return "–"
        m, h = mc
        return f"{m:.4f}" + (f" ± {h:.4f}" if h is not None else " (1 seed)")

    cols = list(METRICS)
    print("| layer | arch | k | tokens | seeds | " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|" + "---|" * len(cols))
    for r in rows:
        print(
            f"| {r['hook'].split('.')[1]} | {r['architecture']} | {r['k']} | {r['train_tokens']} | "
            f"{len(r['seeds'])} | " + " | ".join(fmt(r[c]) for c in cols) + " |"
        )
    if any("alphas" in r for r in rows):
        print("\nsteering: Δp on associated tokens / probability added to other tokens, per α")
        for r in rows:
            if "alphas" in r:
                print(
                    f"  layer {r['hook'].split('.')[1]} {r['architecture']} k={r['k']}: "
                    + "  ".join(
                        f"α={a:g}: {fmt(sa)} / {fmt(so)}"
                        for a, sa, so in zip(r["alphas"], r["steer_assoc"], r["steer_other"])
                    )
                )
    verdicts = compare(rows)
    for v in verdicts:
        print(v)
    result = {"args": vars(args), "rows": rows, "verdicts": verdicts}
    write_out(args.json, result)
    plot(rows, Path(args.json).with_suffix(""))
    return result


def compare(rows: list[dict]) -> list[str]:
    """Pairwise verdicts between architectures at the same layer, k and tokens: only where 95% intervals
    separate; otherwise 'not enough evidence'."""
    out = []
    by = defaultdict(dict)
    for r in rows:
        by[(r["hook"], r["k"], r["train_tokens"])][r["architecture"]] = r
    for (hook, k, tokens), archs in by.items():
        names = sorted(archs)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                for metric, (_, lower) in METRICS.items():
                    if lower is None or archs[a][metric] is None or archs[b][metric] is None:
                        continue
                    (ma, ha), (mb, hb) = archs[a][metric], archs[b][metric]
                    if ha is None or hb is None:
                        verdict = "not enough evidence (one seed: no interval)"
                    elif ma + ha < mb - hb:
                        verdict = f"{a} lower ({ma:.4f} ± {ha:.4f} vs {mb:.4f} ± {hb:.4f})"
                    elif mb + hb < ma - ha:
                        verdict = f"{b} lower ({mb:.4f} ± {hb:.4f} vs {ma:.4f} ± {ha:.4f})"
                    else:
                        verdict = "not enough evidence (95% intervals overlap)"
                    out.append(f"{hook} k={k}: {metric}, {a} vs {b}: {verdict}")
    return out


def plot(rows: list[dict], stem: Path) -> None:
    from gradsae.io import atomic_write_bytes
    from gradsae.viz.plots import figure_png, pyplot

    plt = pyplot()
    import numpy as np

    stem.parent.mkdir(parents=True, exist_ok=True)
    label = {id(r): f"{r['architecture']} k={r['k']} ({r['hook'].split('.')[1]})" for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        d = r.get("distributions")
        if not d:
            continue
        edges = np.array(d["density_log10_edges"])
        counts = np.array(d["density_log10_counts"], dtype=float)
        total = counts.sum() + d["dead"]
        axes[0].step(edges[1:], (d["dead"] + np.cumsum(counts)) / total, where="post", label=label[id(r)])
        cedges = np.array(d["max_cos_edges"])
        axes[1].step(cedges[:-1], np.array(d["max_cos_counts"]), where="post", label=label[id(r)])
    axes[0].set(
        xlabel="log10 activation density", ylabel="fraction of latents (CDF, dead at left)", title="density CDF (§4.3)"
    )
    axes[1].set(
        xlabel="max cosine to another decoder row", ylabel="latents", title="decoder cosines (§4.4)", xlim=(0, 1)
    )
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(f"{stem}_distributions.png", figure_png(fig, dpi=110))
    frontier(rows, stem, plt)
    if any("alphas" in r for r in rows):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for r in rows:
            if "alphas" not in r:
                continue
            for ax, key in zip(axes, ("steer_assoc", "steer_other")):
                m = [v[0] for v in r[key]]
                h = [v[1] or 0.0 for v in r[key]]
                ax.errorbar(r["alphas"], m, yerr=h, marker="o", capsize=3, label=label[id(r)])
        axes[0].set(xlabel="α", ylabel="Δp on associated tokens", title="steering effect (higher is better)")
        axes[1].set(xlabel="α", ylabel="probability added to other tokens", title="specificity (lower is better)")
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_write_bytes(f"{stem}_steering.png", figure_png(fig, dpi=110))


def frontier(rows: list[dict], stem: Path, plt) -> None:
    """The paper's Fig. 4 (middle, right): NMSE and L_added against L0 (= k), one line per arm that has more than
    one k, mean over seeds with its 95% interval as error bars. Written only when some arm has several k."""
    from gradsae.io import atomic_write_bytes
    from gradsae.viz.plots import figure_png

    lines = defaultdict(list)
    for r in rows:
        lines[(r["hook"], r["architecture"], r["train_tokens"])].append(r)
    lines = {key: sorted(rs, key=lambda r: r["k"]) for key, rs in lines.items() if len(rs) > 1}
    if not lines:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ks = sorted({r["k"] for rs in lines.values() for r in rs})
    panels = [(axes[0], "NMSE", "NMSE", "-"), (axes[1], "L_added", "L_added", "-")]
    panels.append((axes[1], "L_added", "L_added (gradient selection)", "--"))  # the g-SAE as trained
    colour = {key: f"C{i}" for i, key in enumerate(lines)}  # one colour per arm in both panels
    for (hook, arch, tokens), rs in lines.items():
        for ax, _, metric, style in panels:
            pts = [(r["k"], r[metric]) for r in rs if r.get(metric) is not None]
            if not pts:
                continue
            how = " gradient sel." if "gradient" in metric else ""
            ax.errorbar(
                [k for k, _ in pts],
                [m for _, (m, _) in pts],
                yerr=[h or 0.0 for _, (_, h) in pts],
                marker="o",
                linestyle=style,
                color=colour[(hook, arch, tokens)],
                capsize=3,
                label=f"{arch}{how} ({hook.split('.')[1]}, {tokens / 1e6:.2g}M tokens, {len(rs[0]['seeds'])} seeds)",
            )
    for ax, name in ((axes[0], "NMSE"), (axes[1], "L_added")):
        ax.set(xscale="log", xlabel="L0 (k)", ylabel=name, title=f"{name} against L0 (g-SAE paper Fig. 4; 95% CI)")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(f"{stem}_frontier.png", figure_png(fig, dpi=110))


if __name__ == "__main__":
    main()
