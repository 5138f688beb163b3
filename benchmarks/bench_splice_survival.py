"""How many questions survive the paper's reconstruction-only splice (``--error none``), per SAE: the issue-11
curve of "questions still answered" against an SAE's training tokens, k, width and layer.

    python benchmarks/bench_splice_survival.py --sae smollm2/topk/L9,/path/to/run/L14/topk_k128 --limit 150

Definitions follow ``gradsae perturb`` (same prompts, decoding, answer extraction and F1, from the package's
``RunContext``): among the first ``--limit`` answerable questions of the SQuAD dev subset,

* ``plain``: questions the model without the SAE answers with F1 ≥ 0.9;
* ``kept of plain``: those the spliced model (``--error none``: the model sees only the reconstruction at the
  SAE's layer) also answers with F1 ≥ 0.9, and that count over ``plain`` — the issue's target is ≥ 0.5.

The plain model's answers are computed once and cached in ``--out-root/plain.json``; each SAE then answers only
the ``plain`` questions, so one SAE costs ~plain/limit of a ``gradsae perturb`` answer phase. ``--check FOLDER``
compares the kept set with a ``gradsae perturb --error none`` results folder of the first SAE (they must agree).
Per-SAE results are cached in ``--out-root`` too (a rerun skips SAEs already measured); the table is printed
and written as JSON, with a Wilson 95% interval for each fraction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

from gradsae.saes import DEFAULT_SAE
from _common import DEV, write_out


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of k successes in n trials, rounded to 3 places (gradsae.stats)."""
    from gradsae.stats import wilson_interval

    ci = wilson_interval(k, n)
    return None if ci is None else (round(ci[0], 3), round(ci[1], 3))


def _answers(ctx, qas, batch_size: int, spliced: bool) -> dict[str, float]:
    """F1 per question id, batch by batch, through the splice or not."""
    from gradsae.squad import data as sq

    f1s = {}
    for i in range(0, len(qas), batch_size):
        chunk = qas[i : i + batch_size]
        texts, _ = ctx.generate([ctx.builder(q.context, q.question) for q in chunk], spliced=spliced)
        for q, raw in zip(chunk, texts):
            f1s[q.id] = sq.em_f1(ctx.answer(raw), q.answers)[1]
    return f1s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", default=DEFAULT_SAE, help="comma list of SAEs (bundled names or folders)")
    ap.add_argument("--data", default=str(DEV), help="SQuAD JSON/JSONL (default: the shared dev subset)")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--out-root", default="benchmarks/out/splice_survival")
    ap.add_argument("--json", default="benchmarks/out/splice_survival.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", default="", help="a `gradsae perturb --error none` folder of the first SAE")
    args = ap.parse_args()

    import torch

    from gradsae.saes import load_sae
    from gradsae.io import atomic_write_text
    from gradsae.model import load_model
    from gradsae.splice import check_compatible
    from gradsae.squad import data as sq
    from gradsae.squad.config import PerturbConfig
    from gradsae.squad.phases import RunContext
    from gradsae.squad.run import make_prompt_builder

    torch.set_num_threads(args.threads)
    cfg = PerturbConfig(model=args.model, data=args.data, limit=args.limit, error="none", device="cpu")
    model, tok = load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    qas = sq.load_questions(cfg.data, limit=cfg.limit or None, seed=cfg.seed, shuffle=cfg.shuffle)
    builder = make_prompt_builder(cfg, tok, qas)
    root = Path(args.out_root)
    key = hashlib.sha256(json.dumps([args.model, args.data, args.limit, [q.id for q in qas]]).encode()).hexdigest()[:16]

    plain_path = root / f"plain-{key}.json"
    if plain_path.exists():
        plain_f1 = json.loads(plain_path.read_text())
    else:  # RunContext wants an SAE; the unspliced pass does not use it
        ctx = RunContext(cfg, model, tok, load_sae(args.sae.split(",")[0], device="cpu"), None, builder)
        t0 = time.perf_counter()
        plain_f1 = _answers(ctx, qas, cfg.batch_size, spliced=False)
        atomic_write_text(plain_path, json.dumps(plain_f1))
        print(f"plain model: {len(qas)} questions in {time.perf_counter() - t0:.0f} s", flush=True)
    plain = [q for q in qas if sq.is_correct(plain_f1[q.id], cfg.min_f1)]

    rows = []
    for spec in [s for s in args.sae.split(",") if s]:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.strip("/"))[-80:]
        cached = root / f"{name}-{key}.json"
        if cached.exists():
            rows.append(json.loads(cached.read_text()))
            continue
        sae = load_sae(spec, device="cpu")
        check_compatible(model, sae, None)
        ctx = RunContext(cfg, model, tok, sae, None, builder)
        t0 = time.perf_counter()
        f1 = _answers(ctx, plain, cfg.batch_size, spliced=True)
        kept = sorted(q.id for q in plain if sq.is_correct(f1[q.id], cfg.min_f1))
        meta = sae.cfg.metadata or {}
        row = {
            "sae": spec,
            "layer": sae.cfg.hook_name,
            "k": sae.cfg.k,
            "d_sae": sae.d_sae,
            "architecture": sae.cfg.architecture,
            "train_tokens": meta.get("model_tokens") or meta.get("train_tokens"),
            "questions": len(qas),
            "plain": len(plain),
            "kept_of_plain": len(kept),
            "fraction": round(len(kept) / len(plain), 3) if plain else None,
            "ci95": wilson(len(kept), len(plain)),
            "kept_ids": kept,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_text(cached, json.dumps(row))
        rows.append(row)
        print(f"{spec}: {len(kept)} of {len(plain)} ({row['seconds']} s)", flush=True)

    if args.check:
        from gradsae.squad.records import read_records

        ans = [r for (task, _), r in read_records(Path(args.check)).items() if task == "answer" and r.ok]
        ref = sorted(
            r.id
            for r in ans
            if r.unspliced is not None and sq.is_correct(r.unspliced.f1, cfg.min_f1) and sq.is_correct(r.f1, cfg.min_f1)
        )
        same = ref == rows[0]["kept_ids"]
        print(
            f"check against {args.check}: perturb kept {len(ref)}, this benchmark {len(rows[0]['kept_ids'])}: "
            f"{'identical sets' if same else 'DIFFERENT sets'}"
        )
        if not same:
            sys.exit(1)

    print("| SAE | layer | k | d_sae | training tokens | plain model F1 ≥ 0.9 | spliced too | fraction [95% CI] |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ci = r["ci95"]
        print(
            f"| {r['sae']} | {r['layer']} | {r['k']} | {r['d_sae']} | {r['train_tokens']} | {r['plain']} | "
            f"{r['kept_of_plain']} | {r['fraction']} [{ci[0]}, {ci[1]}] |"
            if ci
            else f"| {r['sae']} | … | 0 |"
        )
    write_out(args.json, {"args": vars(args), "rows": rows})
    plot_curve(rows, Path(args.json).with_suffix(".png"))


def plot_curve(rows: list[dict], path: Path) -> None:
    """Fraction kept (Wilson 95% bars) against training tokens, one line per layer x architecture x k."""
    from gradsae.io import atomic_write_bytes
    from gradsae.viz.plots import figure_png, pyplot

    plt = pyplot()

    lines: dict[str, list[dict]] = {}
    for r in rows:
        if r["train_tokens"] and r["ci95"]:
            lines.setdefault(
                f"{r['layer'].split('.')[1] if '.' in r['layer'] else r['layer']} {r['architecture']} k={r['k']}", []
            ).append(r)
    if not lines:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["train_tokens"])
        x = [r["train_tokens"] for r in rs]
        y = [r["fraction"] for r in rs]
        err = [[r["fraction"] - r["ci95"][0] for r in rs], [r["ci95"][1] - r["fraction"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"layer {label}")
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="target (half)")
    ax.set(
        xscale="log",
        xlabel="training tokens",
        ylim=(0, 1),
        ylabel="kept of the plain model's correct answers",
        title="reconstruction-only splice (--error none)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, figure_png(fig, dpi=110))


if __name__ == "__main__":
    main()
